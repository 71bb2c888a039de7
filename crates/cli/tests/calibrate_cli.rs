//! `switchyard calibrate` on synthetic eval records (the format `eval run`
//! writes), run as the real binary.

use std::path::Path;
use std::process::{Command, Output};

use switchyard_eval::record::{EvalRecord, RecordConfidence};
use switchyard_router::{Features, Policy};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/policy.example.toml");

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard")
}

/// `switchyard calibrate` of `rule` on `records`, fast vs strong route, writing `out`.
fn calibrate(records: &Path, rule: &str, target: &[&str], out: &Path) -> Output {
    calibrate_policy(Path::new(EXAMPLE), records, rule, target, out)
}

/// [`calibrate`] of another policy than the example.
fn calibrate_policy(policy: &Path, records: &Path, rule: &str, target: &[&str], out: &Path) -> Output {
    let mut args =
        vec!["calibrate", "--policy", policy.to_str().unwrap(), "--rule", rule, "--records", records.to_str().unwrap()];
    args.extend(["--fast", "route:local-fast", "--strong", "route:local-strong", "--out", out.to_str().unwrap()]);
    args.extend(target);
    switchyard(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The table headers of a policy file, in order.
fn headers(toml: &str) -> Vec<&str> {
    toml.lines().map(str::trim).filter(|l| l.starts_with('[')).collect()
}

/// A person reads routes, rules and the rest first, then the calibration
/// block: for each rule its record, its cross-validation, then its curve,
/// with nothing in between. Returns the headers before the block.
fn assert_calibration_last(toml: &str) -> Vec<&str> {
    let all = headers(toml);
    let is_calibration = |h: &&str| h.trim_start_matches('[').starts_with("calibration.");
    let first = all.iter().position(is_calibration).unwrap_or_else(|| panic!("no calibration block: {all:#?}"));
    let (before, block) = all.split_at(first);
    assert!(block.iter().all(is_calibration), "a table inside the calibration block: {all:#?}");
    // Each header as (rule, 0 record | 1 cross-validation | 2 curve point).
    let parts: Vec<(&str, u8)> = block
        .iter()
        .map(|h| {
            let path = h.trim_matches(|c| c == '[' || c == ']').trim_start_matches("calibration.");
            match path.rsplit_once('.') {
                Some((rule, "cross_validated")) => (rule, 1),
                Some((rule, "curve")) => (rule, 2),
                _ => (path, 0),
            }
        })
        .collect();
    for (i, &(rule, part)) in parts.iter().enumerate() {
        match parts[..i].last() {
            Some(&(previous, p)) if previous == rule => {
                assert!(part >= p && part > 0, "{rule}: record, cross-validation, curve: {block:#?}")
            }
            _ => {
                assert_eq!(part, 0, "{rule}: its record comes first: {block:#?}");
                assert!(!parts[..i].iter().any(|(r, _)| *r == rule), "{rule}: its tables together: {block:#?}");
            }
        }
    }
    before.to_vec()
}

/// 200 items, as `eval run` writes them (the same `EvalRecord` type, so
/// the two formats cannot drift apart). The fast route is right exactly
/// when its mean logprob is above -1 and the prompt is not code; the strong
/// route is right on all but every tenth item.
fn write_records(path: &Path) {
    let mut lines = Vec::new();
    for i in 0..200 {
        let mean = -(i as f64) / 100.0;
        let code = i % 4 == 0;
        let prompt = if code { format!("```\nfn f{i}() {{}}\n```") } else { format!("Say hello to {i}") };
        let base = EvalRecord {
            item_id: format!("item-{i:03}"),
            dataset: "synthetic".into(),
            dataset_version: 1,
            family: "code".into(),
            difficulty: "routine".into(),
            data_class: "public".into(),
            target: String::new(),
            route: None,
            model: None,
            repeat: 0,
            seed: None,
            output: "...".into(),
            refusal: None,
            correct: false,
            label: "fail".into(),
            scorer: String::new(),
            expects_refusal: false,
            refused: false,
            review: false,
            confidence: RecordConfidence { features: Some(Features::of(&[prompt])), ..Default::default() },
            ttft_ms: None,
            total_ms: None,
            timings: None,
            usage: None,
            cost: None,
            error: None,
            cached: false,
        };
        let fast = EvalRecord {
            target: "route:local-fast".into(),
            route: Some("local-fast".into()),
            correct: mean > -1.0 && !code,
            confidence: RecordConfidence {
                mean_logprob: Some(mean),
                min_window_logprob: Some(mean - 0.5),
                // The escalation model's verdict: the same ranking, on another scale.
                verify_mean_logprob: Some(2.0 * mean),
                prompt_score: Some(0.5),
                ..base.confidence.clone()
            },
            ..base.clone()
        };
        let strong = EvalRecord {
            target: "route:local-strong".into(),
            route: Some("local-strong".into()),
            correct: i % 10 != 0,
            ..base
        };
        lines.push(serde_json::to_string(&fast).unwrap());
        lines.push(serde_json::to_string(&strong).unwrap());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn calibrating_a_cascade_writes_a_new_policy_with_threshold_and_curve() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("calibrated.toml");
    let plot = dir.path().join("curve.html");
    let run = calibrate(&records, "code-cascade", &["--min-retention", "0.95", "--plot", plot.to_str().unwrap()], &out);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("chosen: threshold")
            && stdout.contains("random routing")
            && stdout.contains("held out (5-fold"),
        "{stdout}"
    );
    // The tenths in escalation order: in these records the least sure 100
    // items are the ones the fast route gets wrong.
    let tenths: Vec<Vec<f64>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("where escalation pays, by mean_logprob"))
        .skip(2)
        .take(10)
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(tenths.len(), 10, "{stdout}");
    assert!(tenths.iter().all(|t| t[2] == 20.0), "{tenths:?}");
    assert!(tenths[0][0] < tenths[9][1], "least sure first: {tenths:?}");
    let gained: f64 = tenths[..5].iter().map(|t| t[3]).sum();
    assert_eq!(gained, 90.0, "100 fast failures, 10 of them strong failures too: {tenths:?}");
    let drawn = std::fs::read_to_string(&plot).unwrap();
    assert!(drawn.contains("<polyline") && drawn.contains("chosen: threshold"), "{drawn}");

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
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert_eq!(assert_calibration_last(&new_text), headers(&example), "every other table where it was");
    assert!(
        headers(&new_text).iter().filter(|h| h.contains("calibration.code-cascade.curve")).count() == cal.curve.len()
    );
    let diff = switchyard(&["policy", "diff", EXAMPLE, out.to_str().unwrap()]);
    assert!(text(&diff.stdout).contains("~ rule code-cascade"), "{}", text(&diff.stdout));

    // The same records and target give the same policy.
    let again = dir.path().join("again.toml");
    let run = calibrate(&records, "code-cascade", &["--min-retention", "0.95"], &again);
    assert!(run.status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), new_text);
}

#[test]
fn a_verify_cascade_calibrates_on_the_escalation_models_scores() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let policy = dir.path().join("verify.toml");
    std::fs::write(
        &policy,
        std::fs::read_to_string(EXAMPLE).unwrap().replace("signal = \"mean\"", "signal = \"verify_mean\""),
    )
    .unwrap();
    let (plain, verify) = (dir.path().join("plain.toml"), dir.path().join("verified.toml"));
    assert!(calibrate(&records, "code-cascade", &["--min-retention", "0.95"], &plain).status.success());
    let run = calibrate_policy(&policy, &records, "code-cascade", &["--min-retention", "0.95"], &verify);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("on verify_mean_logprob"), "{}", text(&run.stdout));
    let cal = |path: &Path| {
        Policy::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap().calibration["code-cascade"].clone()
    };
    let (plain, verify) = (cal(&plain), cal(&verify));
    assert_eq!(verify.signal, "verify_mean_logprob");
    // The same ranking picks the same items, at a threshold on the verifier's scale.
    assert_eq!((verify.escalation_rate, verify.quality), (plain.escalation_rate, plain.quality));
    assert!((verify.threshold - 2.0 * plain.threshold).abs() < 1e-9, "{} vs {}", verify.threshold, plain.threshold);
}

#[test]
fn calibrating_difficulty_refits_the_prompt_model_on_held_out_folds() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("calibrated.toml");
    let run = calibrate(&records, "difficulty", &["--max-escalation", "0.6"], &out);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let p = Policy::from_toml(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cal = &p.calibration["difficulty"];
    assert!(cal.held_out && cal.signal == "prompt_score");
    assert!(cal.escalation_rate <= 0.6);
    let score = |prompt: &str| p.difficulty.score(&Features::of(&[prompt.to_string()]));
    assert!(
        score("```\nfn f8() {}\n```") > score("Say hello to 8") + 0.2,
        "code prompts fail on the fast route: {:?}",
        p.difficulty
    );
    // The refitted weights stay where the old ones were; the calibration block is last.
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert_eq!(assert_calibration_last(&std::fs::read_to_string(&out).unwrap()), headers(&example));

    // Calibrating a second rule of a calibrated policy keeps both records, last, one after the other.
    let twice = dir.path().join("twice.toml");
    let run = calibrate_policy(&out, &records, "code-cascade", &["--min-retention", "0.95"], &twice);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let twice = std::fs::read_to_string(&twice).unwrap();
    assert_eq!(assert_calibration_last(&twice), headers(&example));
    assert_eq!(
        Policy::from_toml(&twice).unwrap().calibration.keys().collect::<Vec<_>>(),
        ["code-cascade", "difficulty"]
    );
}

#[test]
fn the_shipped_calibrated_policies_keep_the_calibration_block_last() {
    for name in ["policy.local.toml", "policy.local-verify.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(name);
        let toml = std::fs::read_to_string(&path).unwrap();
        let before = assert_calibration_last(&toml);
        assert!(before.contains(&"[[routes]]") && before.contains(&"[[rules]]"), "{name}: {before:?}");
        Policy::from_toml(&toml).unwrap();
    }
}

#[test]
fn calibrate_explains_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run.jsonl");
    write_records(&records);
    let out = dir.path().join("x.toml");
    let base =
        ["calibrate", "--policy", EXAMPLE, "--records", records.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let fail = |extra: &[&str]| {
        let o = switchyard(&[&base[..], extra].concat());
        assert!(!o.status.success());
        text(&o.stderr)
    };
    let pair = ["--fast", "route:local-fast", "--strong", "route:local-strong"];
    assert!(fail(&[&["--rule", "nope", "--min-retention", "0.9"][..], &pair].concat()).contains("--rule nope"));
    assert!(fail(&[&["--rule", "refuse-weapons", "--min-retention", "0.9"][..], &pair].concat())
        .contains("only `cascade` and `difficulty`"));
    assert!(fail(&[
        "--rule",
        "code-cascade",
        "--min-retention",
        "0.9",
        "--fast",
        "route:x",
        "--strong",
        "route:local-strong"
    ])
    .contains("only 0 items"));
    assert!(fail(&[&["--rule", "code-cascade", "--min-retention", "1.4"][..], &pair].concat())
        .contains("no threshold meets"));
    std::fs::write(&records, "{\"item_id\": 1}\n").unwrap();
    assert!(fail(&[&["--rule", "code-cascade", "--min-retention", "0.9"][..], &pair].concat()).contains("run.jsonl:1"));
    assert!(!out.exists(), "a failed calibration writes nothing");
}
