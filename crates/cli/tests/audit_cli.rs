//! `switchyard audit`: changes made from the command line and a server's
//! start are in the chain; `audit verify` passes, then names the entry a
//! direct edit of the database broke, and `--head` catches a truncation.

mod common;

use std::process::Command;

use common::{start, BIN};

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs SQL on the SQLite file with Python's sqlite3 (what an intruder
/// with the file would use), not through switchyard.
fn tamper(db: &std::path::Path, sql: &str) {
    let script =
        format!("import sqlite3; c = sqlite3.connect({:?}); c.execute({sql:?}); c.commit()", db.to_str().unwrap());
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn changes_are_chained_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let made = switchyard(&["keys", "create", "--tenant", "acme", "--role", "tenant", "--data-dir", data]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key_id = &text(&made.stdout)[3..11];
    let set = switchyard(&["tenants", "set", "acme", "--requests-per-minute", "5", "--data-dir", data]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let revoked = switchyard(&["keys", "revoke", key_id, "--data-dir", data]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));

    // A server's start records what it serves before it serves.
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "version = \"a.1\"\ndefault_route = \"up\"\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"http://127.0.0.1:9/v1\"\nallowed_classes = [\"public\"]\n").unwrap();
    let (mut server, _) =
        start(&["serve", "--policy", policy.to_str().unwrap(), "--port", "0", "--data-dir", data, "--node-id", "n1"]);
    server.kill().unwrap();
    server.wait().unwrap();

    let log = text(&switchyard(&["audit", "log", "--data-dir", data]).stdout);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    for (line, (actor, action, object)) in lines.iter().zip([
        ("cli", "create", format!("key:{key_id}")),
        ("cli", "put", "tenant:acme".to_string()),
        ("cli", "revoke", format!("key:{key_id}")),
        ("server:n1", "load", "policy".to_string()),
    ]) {
        assert!(line.contains(actor) && line.contains(action) && line.contains(&object), "{line}");
    }
    let revoke: serde_json::Value = serde_json::from_str(
        text(&switchyard(&["audit", "log", "--object", "key:", "--jsonl", "--data-dir", data]).stdout)
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    let create: serde_json::Value = serde_json::from_str(
        text(&switchyard(&["audit", "log", "--object", "key:", "--jsonl", "--data-dir", data]).stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(revoke["before_sha256"], create["after_sha256"], "a change's before is the last change's after");

    let verified = switchyard(&["audit", "verify", "--data-dir", data]);
    assert!(
        verified.status.success() && text(&verified.stdout).starts_with("ok: 4 entries"),
        "{}",
        text(&verified.stdout)
    );
    let head = text(&switchyard(&["audit", "head", "--data-dir", data]).stdout);
    let head = head.split_whitespace().nth(1).unwrap().to_string();

    let db = std::path::Path::new(data).join("switchyard.db");
    tamper(&db, "DELETE FROM audit_chain WHERE id = 4");
    let cut = switchyard(&["audit", "verify", "--data-dir", data]);
    assert!(cut.status.success(), "a truncated chain is still a chain: {}", text(&cut.stderr));
    let cut = switchyard(&["audit", "verify", "--head", &head, "--data-dir", data]);
    assert!(!cut.status.success() && text(&cut.stderr).contains(&head), "{}", text(&cut.stderr));

    tamper(&db, "UPDATE audit_chain SET reason = 'nothing to see' WHERE id = 2");
    let edited = switchyard(&["audit", "verify", "--data-dir", data]);
    assert!(!edited.status.success() && text(&edited.stderr).contains("entry 2"), "{}", text(&edited.stderr));
}
