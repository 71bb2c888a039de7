//! The offline policy tools, run as the real binary.

use std::process::{Command, Output};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/policy.example.toml");

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_prints_the_policy_id_or_names_the_broken_key() {
    let ok = switchyard(&["policy", "validate", EXAMPLE]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("ok: 2026-11-25.1+"));

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(EXAMPLE).unwrap().replace("escalate = \"cloud\"", "escalate = \"clod\""),
    )
    .unwrap();
    let bad = switchyard(&["policy", "validate", broken.to_str().unwrap()]);
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("rules[5].then.escalate") && err.contains("clod"), "{err}");
}

#[test]
fn diff_shows_the_changed_rule() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("new.toml");
    std::fs::write(&newer, std::fs::read_to_string(EXAMPLE).unwrap().replace("threshold = 0.6", "threshold = 0.7"))
        .unwrap();
    let out = switchyard(&["policy", "diff", EXAMPLE, newer.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("~ rule difficulty") && stdout.contains("0.7"), "{stdout}");
    assert!(!stdout.contains("route local-fast"), "unchanged routes are not listed: {stdout}");
}

#[test]
fn route_explain_replays_a_request_offline() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"model": "any", "messages": [{"role": "user", "content": "My SSN is 123-45-6789, what now?"}]}"#,
    )
    .unwrap();
    let run = || switchyard(&["route", "explain", "--policy", EXAMPLE, "--request", req.to_str().unwrap()]);
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["route"], "local-strong");
    assert_eq!(d["rule_id"], "regulated-stays-local");
    assert_eq!(d["data_class"], "regulated");
    assert_eq!(d["excluded"], serde_json::json!(["cloud"]));
    assert_eq!(run().stdout, out.stdout, "replay gives the same decision");
}

/// The flags carry what a request's headers would: a declared data class
/// and a forced route, so `explain` reproduces a header-carrying request.
#[test]
fn route_explain_takes_the_routing_headers_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"model": "any", "messages": [{"role": "user", "content": "Summarise the meeting notes."}]}"#,
    )
    .unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec!["route", "explain", "--policy", EXAMPLE, "--request", req.to_str().unwrap()];
        args.extend(extra);
        switchyard(&args)
    };
    let decision = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let d = decision(explain(&["--data-class", "regulated"]));
    assert_eq!((d["data_class"].as_str(), d["rule_id"].as_str()), (Some("regulated"), Some("regulated-stays-local")));
    let d = decision(explain(&["--force-route", "cloud"]));
    assert_eq!((d["route"].as_str(), d["rule_id"].as_str()), (Some("cloud"), None));
    let d = decision(explain(&["--force-route", "cloud", "--data-class", "regulated"]));
    assert_eq!(d["action"], "refuse", "the data boundary holds for a forced route: {d}");
    let bad = explain(&["--force-route", "nowhere"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--force-route nowhere"), "{}", text(&bad.stderr));
    let bad = explain(&["--data-class", "secret"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--data-class secret"), "{}", text(&bad.stderr));
}
