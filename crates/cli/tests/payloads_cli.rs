//! Payloads a policy keeps, through the real binary: sealed on disk, the
//! decision replayed from them with `route explain --request-id` given the
//! key, a clear error without it or with the wrong one, and a server that
//! would keep encrypted payloads refusing to start without a key.

mod common;

use std::process::Command;

use common::{start, BIN};

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PROMPT: &str = "Draft a reply to the pelican-shaped invoice question";

#[tokio::test]
async fn encrypted_payloads_replay_with_the_key_and_only_with_it() {
    let (mut mock, upstream) =
        start(&["bench", "mock", "--port", "0", "--ttft-ms", "1", "--itl-ms", "0", "--chunks", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = \"keep.1\"\ndefault_route = \"up\"\n\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"{upstream}\"\nallowed_classes = [\"public\", \"internal\", \"regulated\"]\n\n[[protect.payloads]]\nkeep = \"encrypted\"\nretention_days = 7\n"
        ),
    )
    .unwrap();
    let (data, keys, wrong) = (dir.path().join("data"), dir.path().join("keys"), dir.path().join("wrong"));
    std::fs::write(&keys, format!("k1 {}\n", "ab".repeat(32))).unwrap();
    std::fs::write(&wrong, format!("k1 {}\n", "cd".repeat(32))).unwrap();
    let (policy, data, keys, wrong) =
        (policy.to_str().unwrap(), data.to_str().unwrap(), keys.to_str().unwrap(), wrong.to_str().unwrap());

    let refused = switchyard(&["serve", "--policy", policy, "--port", "0", "--data-dir", data]);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("payload-key-file"),
        "{}",
        text(&refused.stderr)
    );

    let (mut server, base) =
        start(&["serve", "--policy", policy, "--port", "0", "--data-dir", data, "--payload-key-file", keys]);
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let id = resp.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
    // Payloads are queued without waiting: the writer takes them within 100 ms.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    mock.kill().unwrap();
    let _ = mock.wait();

    for file in ["switchyard.db", "switchyard.db-wal"] {
        let bytes = std::fs::read(std::path::Path::new(data).join(file)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains("pelican-shaped"), "{file} holds the prompt in clear");
    }

    let explain = |extra: &[&str]| {
        let mut args = vec!["route", "explain", "--policy", policy, "--request-id", &id, "--data-dir", data];
        args.extend_from_slice(extra);
        Command::new(BIN)
            .args(&args)
            .env_remove("SWITCHYARD_PAYLOAD_KEY_FILE")
            .env_remove("SWITCHYARD_PAYLOAD_KEYS")
            .output()
            .unwrap()
    };
    let replayed = explain(&["--payload-key-file", keys]);
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(decision["route"], "up");
    assert!(
        text(&replayed.stderr).contains("the same rule and route under the same policy"),
        "{}",
        text(&replayed.stderr)
    );

    // The keys themselves from the environment, instead of a file.
    let args = ["route", "explain", "--policy", policy, "--request-id", &id, "--data-dir", data];
    let from_env = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_PAYLOAD_KEY_FILE")
        .env("SWITCHYARD_PAYLOAD_KEYS", format!("# rotated\nk0 {};k1 {}", "ef".repeat(32), "ab".repeat(32)))
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{}", text(&from_env.stderr));

    let without = explain(&[]);
    assert!(!without.status.success() && text(&without.stderr).contains("--payload-key-file"));
    let wrong = explain(&["--payload-key-file", wrong]);
    let why = text(&wrong.stderr);
    assert!(!wrong.status.success() && why.contains("does not open with key `k1`"), "{why}");
    let missing =
        switchyard(&["route", "explain", "--policy", policy, "--request-id", "chatcmpl-nope", "--data-dir", data]);
    assert!(text(&missing.stderr).contains("no payload kept for chatcmpl-nope"), "{}", text(&missing.stderr));
}
