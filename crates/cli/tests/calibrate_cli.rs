//! `switchyard calibrate` on synthetic eval records (the format `eval run`
//! writes), run as the real binary.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use switchyard_router::{Features, Policy};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/policy.example.toml");

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 200 items. The fast route is right exactly when its mean logprob is
/// above -1 (a known cut) and on non-code prompts; the strong route is
/// right on all but every tenth item.
fn write_records(path: &Path) {
    let mut lines = Vec::new();
    for i in 0..200 {
        let mean = -(i as f64) / 100.0;
        let code = i % 4 == 0;
        let prompt = if code { format!("```\nfn f{i}() {{}}\n```") } else { format!("Say hello to {i}") };
        let features = Features::of(&[prompt]);
        let fast_ok = mean > -1.0 && !code;
        let confidence = json!({"mean_logprob": mean, "min_window_logprob": mean - 0.5, "prompt_score": 0.5, "features": features});
        let base = json!({"item_id": format!("item-{i:03}"), "dataset": "synthetic", "dataset_version": "v1", "output": "...", "label": "pass", "timings": {}, "usage": {}, "cost": 0.0});
        let mut fast = base.clone();
        fast.as_object_mut().unwrap().extend(json!({"target": "route:local-fast", "route": "local-fast", "model": "qwen2.5-coder-0.5b", "correct": fast_ok, "confidence": confidence}).as_object().unwrap().clone());
        let mut strong = base;
        strong.as_object_mut().unwrap().extend(json!({"target": "route:local-strong", "route": "local-strong", "model": "qwen2.5-coder-1.5b", "correct": i % 10 != 0}).as_object().unwrap().clone());
        lines.push(fast.to_string());
        lines.push(strong.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn calibrating_a_cascade_writes_a_new_policy_with_threshold_and_curve() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("calibrated.toml");
    let run = switchyard(&[
        "calibrate", "--policy", EXAMPLE, "--rule", "code-cascade", "--records", records.to_str().unwrap(),
        "--fast", "route:local-fast", "--strong", "route:local-strong", "--min-retention", "0.95", "--out", out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("chosen: threshold") && stdout.contains("random routing") && stdout.contains("held out (5-fold"), "{stdout}");

    let new_text = std::fs::read_to_string(&out).unwrap();
    let p = Policy::from_toml(&new_text).unwrap();
    assert_eq!(p.version, "2026-11-25.1.cal");
    let cal = &p.calibration["code-cascade"];
    assert_eq!((cal.signal.as_str(), cal.items, cal.held_out), ("mean_logprob", 200, false));
    assert!(cal.retention >= 0.95, "{cal:?}");
    assert!(cal.escalation_rate < 1.0 && cal.quality > cal.random_quality, "better than random: {cal:?}");
    assert!(cal.curve.len() > 10 && cal.curve.len() <= 41);
    let cv = cal.cross_validated.unwrap();
    assert!(cv.quality > cv.random_quality, "held-out calibration beats random: {cv:?}");
    let rule = p.rules.iter().find(|r| r.id == "code-cascade").unwrap();
    let threshold = serde_json::to_value(&rule.then).unwrap()["threshold"].as_f64().unwrap();
    assert_eq!(threshold, cal.threshold);
    assert!(new_text.contains("# Code questions: answer locally"), "comments survive");
    let diff = switchyard(&["policy", "diff", EXAMPLE, out.to_str().unwrap()]);
    assert!(text(&diff.stdout).contains("~ rule code-cascade"), "{}", text(&diff.stdout));

    // The same records and target give the same policy.
    let again = dir.path().join("again.toml");
    let run = switchyard(&[
        "calibrate", "--policy", EXAMPLE, "--rule", "code-cascade", "--records", records.to_str().unwrap(),
        "--fast", "route:local-fast", "--strong", "route:local-strong", "--min-retention", "0.95", "--out", again.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), new_text);
}

#[test]
fn calibrating_difficulty_refits_the_prompt_model_on_held_out_folds() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("calibrated.toml");
    let run = switchyard(&[
        "calibrate", "--policy", EXAMPLE, "--rule", "difficulty", "--records", records.to_str().unwrap(),
        "--fast", "route:local-fast", "--strong", "route:local-strong", "--max-escalation", "0.6", "--out", out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let p = Policy::from_toml(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cal = &p.calibration["difficulty"];
    assert!(cal.held_out && cal.signal == "prompt_score");
    assert!(cal.escalation_rate <= 0.6);
    let score = |prompt: &str| p.difficulty.score(&Features::of(&[prompt.to_string()]));
    assert!(score("```\nfn f8() {}\n```") > score("Say hello to 8") + 0.2, "code prompts fail on the fast route: {:?}", p.difficulty);
}

#[test]
fn calibrate_explains_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("x.toml");
    let base = ["calibrate", "--policy", EXAMPLE, "--records", records.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let fail = |extra: &[&str]| {
        let o = switchyard(&[&base[..], extra].concat());
        assert!(!o.status.success());
        text(&o.stderr)
    };
    let pair = ["--fast", "route:local-fast", "--strong", "route:local-strong"];
    assert!(fail(&[&["--rule", "nope", "--min-retention", "0.9"][..], &pair].concat()).contains("--rule nope"));
    assert!(fail(&[&["--rule", "refuse-weapons", "--min-retention", "0.9"][..], &pair].concat()).contains("only `cascade` and `difficulty`"));
    assert!(fail(&["--rule", "code-cascade", "--min-retention", "0.9", "--fast", "route:x", "--strong", "route:local-strong"]).contains("only 0 items"));
    assert!(fail(&[&["--rule", "code-cascade", "--min-retention", "1.4"][..], &pair].concat()).contains("no threshold meets"));
    std::fs::write(&records, "{\"item_id\": 1}\n").unwrap();
    assert!(fail(&[&["--rule", "code-cascade", "--min-retention", "0.9"][..], &pair].concat()).contains("run.jsonl:1"));
    assert!(!out.exists(), "a failed calibration writes nothing");
}
