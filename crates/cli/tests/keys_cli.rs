//! `switchyard keys` and a served binary that requires them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn keys_made_offline_guard_a_server_and_revocation_reaches_it_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let made = switchyard(&["keys", "create", "--tenant", "ops", "--role", "admin", "--data-dir", data]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key = text(&made.stdout).trim().to_string();
    assert!(key.starts_with("sy-") && key.len() == 76, "{key}");
    let bad = switchyard(&["keys", "create", "--tenant", "x", "--role", "root", "--data-dir", data]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--role"), "{}", text(&bad.stderr));
    let listed = switchyard(&["keys", "list", "--data-dir", data]);
    let listing = text(&listed.stdout);
    assert!(listing.contains(&key[3..11]) && listing.contains("admin") && !listing.contains(&key[12..]), "{listing}");
    let rotated = switchyard(&["keys", "rotate", &key[3..11], "--data-dir", data]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_key = text(&rotated.stdout).trim().to_string();
    assert_ne!(new_key, key);

    // An upstream-only policy loads no model.
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "version = \"k.1\"\ndefault_route = \"up\"\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"http://127.0.0.1:9/v1\"\nallowed_classes = [\"public\"]\n").unwrap();
    let mut server = Command::new(BIN)
        .args(["serve", "--policy", policy.to_str().unwrap(), "--port", "0", "--data-dir", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on "))
        .unwrap();
    let base = line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = |key: Option<&str>| {
        rt.block_on(async {
            let mut req = reqwest::Client::new().get(format!("{base}/v1/models"));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            req.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some(&key)), 401, "the rotated-out key");
    assert_eq!(status(Some(&new_key)), 200);
    let revoked = switchyard(&["keys", "revoke", &new_key[3..11], "--data-dir", data]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(Some(&new_key)), 401, "revoked in another process, refused within a second");
    assert_eq!(status(None), 401, "revoking the last key does not reopen the server");
    server.kill().unwrap();
    let _ = server.wait();
}

#[test]
fn an_open_server_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "version = \"k.1\"\ndefault_route = \"up\"\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"http://127.0.0.1:9/v1\"\nallowed_classes = [\"public\"]\n").unwrap();
    let out = switchyard(&[
        "serve",
        "--policy",
        policy.to_str().unwrap(),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--allow-unauthenticated"), "{}", text(&out.stderr));
}

#[test]
fn tenants_and_key_limits_are_set_offline_and_bad_limits_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let set = switchyard(&[
        "tenants",
        "set",
        "acme",
        "--tokens-per-day",
        "5000",
        "--cost-per-day-usd",
        "2.5",
        "--data-dir",
        data,
    ]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(text(&set.stdout).trim(), "acme: tokens/day=5000 usd/day=2.5");
    let listed = text(&switchyard(&["tenants", "list", "--data-dir", data]).stdout);
    assert!(listed.contains("acme") && listed.contains("tokens/day=5000"), "{listed}");
    for (flag, value) in [("--tokens-per-minute", "0"), ("--cost-per-day-usd", "-1"), ("--requests-per-minute", "-1")] {
        let bad =
            switchyard(&["keys", "create", "--tenant", "acme", "--role", "tenant", flag, value, "--data-dir", data]);
        assert!(!bad.status.success() && text(&bad.stderr).contains(flag), "{flag}: {}", text(&bad.stderr));
    }
    let made = switchyard(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "tenant",
        "--tokens-per-minute",
        "900",
        "--data-dir",
        data,
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let keys = text(&switchyard(&["keys", "list", "--data-dir", data]).stdout);
    assert!(keys.contains("tpm=900"), "{keys}");

    // A database that cannot be reached fails at start, naming the setting and not the URL's password.
    let nowhere = "postgres://me:s3cret@127.0.0.1:1/nope";
    for args in [&["keys", "list", "--database", nowhere][..], &["serve", "--database", nowhere, "--port", "0"][..]] {
        let out = switchyard(args);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains("`database`") && !err.contains("s3cret"), "{args:?}: {err}");
    }
}
