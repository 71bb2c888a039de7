//! `switchyard safety calibrate`, `safety evaluate` and `safety check`
//! against the real binary on SmolLM2: a small safety set cut from
//! `datasets/safety/v1` (two categories), calibrated into a policy,
//! evaluated as written, served, and checked: every held-out prompt's live
//! label is the offline verdict.

mod common;

use std::process::Command;

use common::{start, BIN};
use sha2::{Digest, Sha256};
use switchyard_router::Policy;

const POLICY: &str = r#"version = "cli-safety.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public", "internal", "regulated"]

[[rules]]
id = "handoff-self-harm"
when = { unsafe = { above = 0.5, categories = ["self_harm"] } }
then = { action = "handoff", message = "A person will reach out." }

[[rules]]
id = "refuse-unsafe"
when = { unsafe = { above = 0.5 } }
then = { action = "refuse", message = "I can't help with that." }
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `datasets/safety/v1`'s violence and self-harm items (72 train, 48
/// held out) as a set in `dir/name`.
fn cut(dir: &std::path::Path, name: &str, split_of: impl Fn(usize, &str) -> String) -> std::path::PathBuf {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/safety/v1/items.jsonl")).unwrap();
    let items: String = shipped
        .lines()
        .filter(|l| l.contains(r#""category": "violence""#) || l.contains(r#""category": "self_harm""#))
        .enumerate()
        .map(|(i, l)| {
            let mut item: serde_json::Value = serde_json::from_str(l).unwrap();
            item["split"] = split_of(i, item["split"].as_str().unwrap()).into();
            format!("{item}\n")
        })
        .collect();
    let n = items.lines().count();
    assert_eq!(n, 120, "two categories of 60");
    let set = dir.join(name);
    std::fs::create_dir(&set).unwrap();
    std::fs::write(set.join("items.jsonl"), &items).unwrap();
    std::fs::write(
        set.join("manifest.toml"),
        format!(
            "name = \"safety-cut\"\nversion = 1\ndescription = \"two categories\"\nlicence = \"CC-BY-4.0\"\nitems = {n}\n\
             release_notes = \"test\"\n[files]\n\"items.jsonl\" = \"{}\"\n",
            hex::encode(Sha256::digest(items.as_bytes()))
        ),
    )
    .unwrap();
    set
}

#[test]
fn calibrate_writes_a_policy_whose_live_router_matches_its_offline_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let set = cut(dir.path(), "set", |_, split| split.to_string());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = dir.path().join("calibrated.toml");
    let scores = dir.path().join("scores.jsonl");
    let report = dir.path().join("report.html");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let ran = Command::new(BIN)
        .args(["safety", "calibrate", "--set", &path(&set), "--policy", &path(&policy), "--model", "smollm2-135m"])
        .args(["--max-tokens", "64", "--min-caught", "0.7", "--max-safe-refused", "0.3", "--out", &path(&out)])
        .args(["--scores", &path(&scores), "--report", &path(&report)])
        .output()
        .unwrap();
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{stdout}{}", text(&ran.stderr));
    assert!(stdout.contains("held-out split (48 prompts") && stdout.contains("self_harm"), "{stdout}");
    assert!(stdout.contains("out of fold on train (72 prompts"), "{stdout}");
    let calibrated = Policy::from_toml(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(calibrated.version, "cli-safety.1.safety");
    let safety = calibrated.safety.as_ref().unwrap();
    let cal = safety.file.calibration.as_ref().unwrap();
    assert_eq!((cal.items, safety.file.max_tokens, safety.head.classes.len()), (72, 64, 3));
    assert_eq!(cal.fitted_on, ["train"]);
    for rule in &calibrated.rules {
        assert_eq!(rule.when.unsafe_.as_ref().unwrap().above, cal.threshold, "every unsafe rule gets the threshold");
    }
    assert!(std::fs::read_to_string(&report).unwrap().contains("<svg"));
    assert_eq!(std::fs::read_to_string(&scores).unwrap().lines().count(), 48);

    // `evaluate` judges the written policy as it stands: on the held-out
    // split it gives each prompt calibrate's own score and verdict.
    let evaluated = dir.path().join("evaluated.jsonl");
    let ran = Command::new(BIN)
        .args(["safety", "evaluate", "--set", &path(&set), "--policy", &path(&out), "--split", "heldout"])
        .args(["--scores", &path(&evaluated)])
        .output()
        .unwrap();
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{stdout}{}", text(&ran.stderr));
    assert!(stdout.contains("`heldout` split") && stdout.contains("AUC"), "{stdout}");
    let lines = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (offline, again) = (lines(&scores), lines(&evaluated));
    assert_eq!(offline.len(), again.len());
    for (a, b) in offline.iter().zip(&again) {
        assert_eq!((&a["id"], &a["flagged"], &a["category"]), (&b["id"], &b["flagged"], &b["category"]));
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6, "{a} vs {b}");
    }
    let ran = Command::new(BIN)
        .args(["safety", "evaluate", "--set", &path(&set), "--policy", &path(&policy), "--split", "blind"])
        .output()
        .unwrap();
    assert!(!ran.status.success() && text(&ran.stderr).contains("no `blind` split"), "{}", text(&ran.stderr));

    // A second stage (the same model here: this checks the plumbing, the
    // gateway's test checks that its verdict decides), a threshold per
    // category: calibrate writes `[safety.second]` with its band and every
    // rule's `above_for`, and evaluate embeds only the prompts in the band
    // with it and flags, by the rules as written, what calibrate flagged.
    let staged = dir.path().join("staged.toml");
    let staged_scores = dir.path().join("staged-scores.jsonl");
    let ran = Command::new(BIN)
        .args(["safety", "calibrate", "--set", &path(&set), "--policy", &path(&policy), "--model", "smollm2-135m"])
        .args(["--max-tokens", "64", "--min-caught", "0.7", "--max-safe-refused", "0.3", "--out", &path(&staged)])
        .args(["--second-model", "smollm2-135m", "--second-keep", "0.95", "--threshold-per-category"])
        .args(["--scores", &path(&staged_scores)])
        .output()
        .unwrap();
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{stdout}{}", text(&ran.stderr));
    assert!(
        stdout.contains("second stage (smollm2-135m)") && stdout.contains("then smollm2-135m in its band"),
        "{stdout}"
    );
    let two = Policy::from_toml(&std::fs::read_to_string(&staged).unwrap()).unwrap();
    let safety = two.safety.as_ref().unwrap();
    let (second, cal) = (safety.second.as_ref().unwrap(), safety.file.calibration.as_ref().unwrap());
    let [from, to] = second.file.band;
    assert!(from < to && second.head.classes == safety.head.classes, "{:?}", second.file.band);
    assert!(cal.target.ends_with(",per_category"), "{}", cal.target);
    for rule in &two.rules {
        let u = rule.when.unsafe_.as_ref().unwrap();
        assert_eq!((u.above, &u.above_for), (cal.threshold, &cal.above_for), "every unsafe rule gets the thresholds");
    }
    for t in cal.above_for.values() {
        assert!(from <= *t && *t < to, "a category's threshold {t} outside the band {from}..{to}");
    }
    let judged = cal.second.unwrap().judged;
    assert!(judged > 0.0 && judged < 1.0, "{judged}");
    let staged_again = dir.path().join("staged-again.jsonl");
    let ran = Command::new(BIN)
        .args(["safety", "evaluate", "--set", &path(&set), "--policy", &path(&staged), "--split", "heldout"])
        .args(["--scores", &path(&staged_again)])
        .output()
        .unwrap();
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{stdout}{}", text(&ran.stderr));
    assert!(stdout.contains("the second stage (smollm2-135m) judges"), "{stdout}");
    let flags = |p: &std::path::Path| -> Vec<(serde_json::Value, serde_json::Value)> {
        lines(p).into_iter().map(|l| (l["id"].clone(), l["flagged"].clone())).collect()
    };
    assert_eq!(flags(&staged_scores), flags(&staged_again));

    let data = dir.path().join("data");
    let (mut server, url) = start(&["serve", "--policy", &path(&out), "--port", "0", "--data-dir", &path(&data)]);
    let checked = Command::new(BIN)
        .args(["safety", "check", "--set", &path(&set), "--url", &format!("{url}/v1"), "--model", "auto"])
        .args(["--max-tokens", "8", "--scores", &path(&scores)])
        .output()
        .unwrap();
    let _ = server.kill();
    let stdout = text(&checked.stdout);
    assert!(checked.status.success(), "{stdout}{}", text(&checked.stderr));
    assert!(stdout.contains("router vs offline verdicts: 48 of 48 agree"), "{stdout}");
}

/// A spent blind split can join the training split (`--fit-on`); the
/// held-out split never can, and `evaluate` says when its figures are
/// in-sample.
#[test]
fn calibrate_fits_on_the_splits_it_is_told_and_never_on_the_held_out_one() {
    let dir = tempfile::tempdir().unwrap();
    // A third of the training prompts moved to a `blind` split.
    let set = cut(dir.path(), "set", |i, split| if split == "train" && i % 3 == 0 { "blind" } else { split }.into());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let calibrate = |out: &std::path::Path, fit_on: &str| {
        Command::new(BIN)
            .args(["safety", "calibrate", "--set", &path(&set), "--policy", &path(&policy), "--model", "smollm2-135m"])
            .args(["--max-tokens", "64", "--min-caught", "0.7", "--max-safe-refused", "0.3", "--out", &path(out)])
            .args(["--fit-on", fit_on])
            .output()
            .unwrap()
    };
    let refused = dir.path().join("refused.toml");
    for (fit_on, says) in [
        ("train,heldout", "--fit-on: the held-out split is never fitted on"),
        ("train,blind2", "--fit-on: the set has no `blind2` split"),
        ("train,train", "--fit-on names `train` twice"),
    ] {
        let ran = calibrate(&refused, fit_on);
        assert!(!ran.status.success() && text(&ran.stderr).contains(says), "{fit_on}: {}", text(&ran.stderr));
    }
    assert!(!refused.exists());

    let out = dir.path().join("calibrated.toml");
    let ran = calibrate(&out, "train,blind");
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{stdout}{}", text(&ran.stderr));
    let blind = std::fs::read_to_string(set.join("items.jsonl")).unwrap().matches(r#""split":"blind""#).count();
    assert!(blind > 10, "{blind}");
    assert!(
        stdout.contains("out of fold on train + blind (72 prompts") && stdout.contains("held-out split (48 prompts")
    );
    let calibrated = Policy::from_toml(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cal = calibrated.safety.as_ref().unwrap().file.calibration.as_ref().unwrap();
    assert_eq!((cal.items, &cal.fitted_on), (72, &vec!["train".to_string(), "blind".to_string()]));
    for (split, in_sample) in [("blind", true), ("heldout", false)] {
        let ran = Command::new(BIN)
            .args(["safety", "evaluate", "--set", &path(&set), "--policy", &path(&out), "--split", split])
            .output()
            .unwrap();
        let (stdout, stderr) = (text(&ran.stdout), text(&ran.stderr));
        assert!(ran.status.success(), "{stdout}{stderr}");
        assert_eq!(stdout.contains("fitted on: in-sample"), in_sample, "{split}: {stdout}");
        assert_eq!(stderr.contains("its figures there are in-sample"), in_sample, "{split}: {stderr}");
    }
}
