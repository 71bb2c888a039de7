//! The detectors measured on a labelled corpus (`datasets/pii/vN`):
//! precision and recall per detector, per split.
//!
//! A finding counts as a true positive when it overlaps a planted value of
//! the same detector; a finding that overlaps none is a false positive; a
//! planted value no finding of its detector overlaps is a miss. Negatives
//! plant nothing, so every finding in one is a false positive.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use switchyard_router::detect::{builtins, Detectors};

use crate::dataset::{open_jsonl, DatasetError, Manifest};

/// The targets for validated detectors (checksums, parses); the heuristic
/// ones are measured and reported as they are.
pub const MIN_PRECISION: f64 = 0.97;
pub const MIN_RECALL: f64 = 0.95;

#[derive(Debug, Clone, Deserialize)]
pub struct Span {
    pub detector: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PiiItem {
    pub id: String,
    pub split: String,
    pub kind: String,
    pub text: String,
    pub spans: Vec<Span>,
}

pub struct PiiSet {
    pub manifest: Manifest,
    pub items: Vec<PiiItem>,
}

impl PiiSet {
    pub fn open(dir: &Path) -> Result<Self, DatasetError> {
        let (manifest, items) = open_jsonl(dir)?;
        Ok(Self { manifest, items })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub planted: usize,
    pub found: usize,
    pub true_positives: usize,
    pub missed: usize,
}

impl Counts {
    pub fn precision(&self) -> Option<f64> {
        (self.found > 0).then(|| self.true_positives as f64 / self.found as f64)
    }

    pub fn recall(&self) -> Option<f64> {
        (self.planted > 0).then(|| (self.planted - self.missed) as f64 / self.planted as f64)
    }
}

/// One detector's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub detector: String,
    pub validated: bool,
    /// Split (`dev`, `test`) → counts; `all` is both.
    pub splits: BTreeMap<String, Counts>,
    /// For a validated detector over all items: are both targets met?
    pub meets_targets: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PiiReport {
    pub dataset: String,
    pub items: usize,
    pub rows: Vec<Row>,
    /// Findings in negative items, by detector: the look-alikes caught.
    pub false_positive_items: Vec<(String, String)>,
}

/// Scores every built-in detector on `set`.
pub fn score(set: &PiiSet, detectors: &Detectors) -> PiiReport {
    let mut counts: BTreeMap<(String, String), Counts> = BTreeMap::new();
    let mut false_positive_items = Vec::new();
    for item in &set.items {
        let findings = detectors.scan(&item.text);
        for split in [item.split.as_str(), "all"] {
            for span in &item.spans {
                let c = counts.entry((span.detector.clone(), split.to_string())).or_default();
                c.planted += 1;
                let hit = findings
                    .iter()
                    .any(|f| *f.detector == *span.detector && f.range.start < span.end && span.start < f.range.end);
                if !hit {
                    c.missed += 1;
                }
            }
            for f in &findings {
                let c = counts.entry((f.detector.to_string(), split.to_string())).or_default();
                c.found += 1;
                let planted = item
                    .spans
                    .iter()
                    .any(|s| *s.detector == *f.detector && f.range.start < s.end && s.start < f.range.end);
                if planted {
                    c.true_positives += 1;
                } else if split == "all" {
                    false_positive_items.push((f.detector.to_string(), item.id.clone()));
                }
            }
        }
    }
    let rows = builtins()
        .iter()
        .map(|b| {
            let splits: BTreeMap<String, Counts> = ["dev", "test", "all"]
                .into_iter()
                .map(|s| (s.to_string(), counts.get(&(b.name.to_string(), s.to_string())).copied().unwrap_or_default()))
                .collect();
            let all = splits.get("all").copied().unwrap_or_default();
            let meets_targets = b
                .validated
                .then(|| all.precision().unwrap_or(0.0) >= MIN_PRECISION && all.recall().unwrap_or(0.0) >= MIN_RECALL);
            Row { detector: b.name.to_string(), validated: b.validated, splits, meets_targets }
        })
        .collect();
    PiiReport {
        dataset: format!("{}@v{}", set.manifest.name, set.manifest.version),
        items: set.items.len(),
        rows,
        false_positive_items,
    }
}

impl PiiReport {
    /// A markdown table: precision and recall per detector, dev / test / all.
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.3}", v));
        let mut out = format!(
            "{} ({} items). Targets for validated detectors: precision >= {MIN_PRECISION}, recall >= {MIN_RECALL}.\n\n",
            self.dataset, self.items
        );
        out.push_str("| detector | kind | planted | found | precision dev | precision test | precision | recall dev | recall test | recall | targets |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            let get = |s: &str| r.splits.get(s).copied().unwrap_or_default();
            let (dev, test, all) = (get("dev"), get("test"), get("all"));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.detector,
                if r.validated { "validated" } else { "heuristic" },
                all.planted,
                all.found,
                pct(dev.precision()),
                pct(test.precision()),
                pct(all.precision()),
                pct(dev.recall()),
                pct(test.recall()),
                pct(all.recall()),
                match r.meets_targets {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "measured",
                }
            ));
        }
        out
    }

    /// Whether every validated detector meets both targets.
    pub fn targets_met(&self) -> bool {
        self.rows.iter().all(|r| r.meets_targets != Some(false))
    }
}
