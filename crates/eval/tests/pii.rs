//! The detectors against the labelled corpus: every validated detector
//! meets its precision and recall targets on both splits together, and the
//! corpus is the one its manifest describes.

use std::path::Path;

use switchyard_eval::pii::{score, PiiSet};
use switchyard_router::detect::Detectors;

fn corpus() -> PiiSet {
    PiiSet::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/pii/v1")).unwrap()
}

#[test]
fn validated_detectors_meet_their_targets_on_the_corpus() {
    let report = score(&corpus(), &Detectors::all());
    println!("{}", report.table());
    assert!(report.targets_met(), "{}\nfalse positives: {:?}", report.table(), report.false_positive_items);
    // Every detector is planted in the corpus: none is measured on nothing.
    for row in &report.rows {
        assert!(row.splits["all"].planted >= 20, "{} has too few planted values", row.detector);
    }
}

#[test]
fn a_detector_that_finds_nothing_fails_the_targets() {
    let report = score(&corpus(), &Detectors::new(["email"], &[]).unwrap());
    assert!(!report.targets_met(), "with only the email detector on, the card detector's recall is 0");
}
