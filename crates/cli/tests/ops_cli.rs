//! The operations commands against the real binary: a real SmolLM2 as the
//! local route and `switchyard bench mock` as the cloud, an operator's
//! key, `policy apply`, `policy history`, `rollback policy`, `faults`, and
//! the shipped local-node-failure game day (shortened) end to end.

mod common;

use std::process::{Command, Output};

use common::{start, start_logged, BIN};
use serde_json::Value;

fn switchyard(args: &[&str], key: &str) -> Output {
    Command::new(BIN).args(args).env("SWITCHYARD_API_KEY", key).output().expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One test at a time: each serves SmolLM2, and two llama.cpp servers
/// computing at once on a 2-core machine starve each other's threads (a CI
/// run saw the game day's local route miss its 10 s first-token timeout on
/// almost every request).
static ONE_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_server() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed holding it poisons it; the next may still run.
    ONE_SERVER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn an_operator_applies_rolls_back_and_breaks_the_local_route_under_a_game_day() {
    let _one = one_server();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let made = switchyard(&["keys", "create", "--tenant", "ops", "--role", "operator", "--data-dir", data], "");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key = text(&made.stdout).trim().to_string();

    let (mut mock, mock_url) =
        start(&["bench", "mock", "--port", "0", "--ttft-ms", "20", "--itl-ms", "5", "--chunks", "8"]);
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/gameday/policy.toml")).unwrap();
    // The mock prints its base URL, `/v1` included.
    let policy = shipped.replace("http://127.0.0.1:18100/v1", &mock_url);
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, &policy).unwrap();
    let log = dir.path().join("server.log");
    let (mut server, url) = start_logged(
        &["serve", "--policy", policy_file.to_str().unwrap(), "--port", "0", "--data-dir", data, "--parallel", "4"],
        Some(&log),
    );
    let log_tail = || {
        let all = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        format!("\nthe server's log, last lines:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    };

    // Apply a second version (the cloud first), read the history, roll back.
    let v2_file = dir.path().join("policy-2.toml");
    std::fs::write(
        &v2_file,
        policy.replace("gameday.1", "gameday.2").replace("default_route = \"local\"", "default_route = \"cloud\""),
    )
    .unwrap();
    let applied = switchyard(&["policy", "apply", v2_file.to_str().unwrap(), "--url", &url], &key);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert!(text(&applied.stdout).contains("applied: gameday.2+"), "{}", text(&applied.stdout));
    let tenant_try = switchyard(&["policy", "apply", v2_file.to_str().unwrap(), "--url", &url], "sy-00000000_00");
    assert!(!tenant_try.status.success() && text(&tenant_try.stderr).contains("401"), "{}", text(&tenant_try.stderr));
    let history = switchyard(&["policy", "history", "--url", &url], &key);
    let history = text(&history.stdout);
    assert!(
        history.contains("serving: gameday.2+") && history.contains("apply") && history.contains("start"),
        "{history}"
    );
    let back = switchyard(&["rollback", "policy", "--url", &url], &key);
    assert!(text(&back.stdout).contains("rolled back: gameday.1+"), "{}{}", text(&back.stdout), text(&back.stderr));

    // A fault by hand: set, listed, cleared.
    let set = switchyard(&["faults", "set", "cloud", "--kind", "error", "--status", "503", "--url", &url], &key);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let listed = text(&switchyard(&["faults", "list", "--url", &url], &key).stdout);
    assert!(listed.contains("\"route\":\"cloud\"") && listed.contains("\"status\":503"), "{listed}");
    assert!(switchyard(&["faults", "clear", "cloud", "--url", &url], &key).status.success());
    let unknown = switchyard(&["faults", "set", "nowhere", "--kind", "die", "--url", &url], &key);
    assert!(
        !unknown.status.success() && text(&unknown.stderr).contains("no route `nowhere`"),
        "{}",
        text(&unknown.stderr)
    );

    // The shipped local-node-failure game day, shortened.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/gameday/local-node-failure.toml"))
            .unwrap();
    let mut scenario: toml::Table = toml::from_str(&shipped).unwrap();
    scenario["traffic"]["duration_s"] = toml::Value::Float(12.0);
    scenario["traffic"]["stream_share"] = toml::Value::Float(0.5);
    scenario["faults"][0]["at_s"] = toml::Value::Float(3.0);
    scenario["faults"][0]["for_s"] = toml::Value::Float(5.0);
    let scenario_file = dir.path().join("gameday.toml");
    std::fs::write(&scenario_file, toml::to_string(&scenario).unwrap()).unwrap();
    let out = dir.path().join("report");
    let run = switchyard(
        &["gameday", "run", scenario_file.to_str().unwrap(), "--url", &url, "--out", out.to_str().unwrap()],
        &key,
    );
    let report = text(&run.stdout);
    assert!(run.status.success(), "{report}{}{}", text(&run.stderr), log_tail());
    assert!(report.contains("— PASS") && report.contains("fallbacks fired: local"), "{report}{}", log_tail());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("gameday.json")).unwrap()).unwrap();
    let r = &json["report"];
    assert_eq!(r["sent"]["failed_unstreamed"], 0, "{r}");
    assert!(r["answered_by"]["cloud"].as_u64().unwrap() >= 1, "{r}");
    let fault = &r["faults"][0];
    assert!(fault["answered_during_by"]["cloud"].as_u64().unwrap() >= 1, "{fault}");
    assert!(fault["recovery_s"].as_f64().is_some(), "the local route answered again: {fault}");
    assert!(r["breakers"].as_array().unwrap().iter().any(|b| b["route"] == "local" && b["open"] == true), "{r}");
    let html = std::fs::read_to_string(out.join("gameday.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("fault 1: die on local"), "the page has its timeline");
    // Every fault the day set was cleared.
    assert!(text(&switchyard(&["faults", "list", "--url", &url], &key).stdout).contains("no faults in force"));

    server.kill().unwrap();
    mock.kill().unwrap();
}

/// A small eval set in the versioned format: each item asks for a sentence about a word.
fn word_set(dir: &std::path::Path) -> std::path::PathBuf {
    use sha2::Digest;
    let set = dir.join("words");
    std::fs::create_dir_all(&set).unwrap();
    let words = ["apple", "river", "candle", "violet", "copper", "maple"];
    let items: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            serde_json::json!({"id": format!("word-{i}"), "family": "support", "difficulty": "routine", "data_class": "public",
                "messages": [{"role": "user", "content": format!("Write a sentence about the word {w}.")}],
                // Any word of three letters: SmolLM2 always writes some, the
                // filler never does. (Echoing the word back was left to the
                // model's greedy output, which differs between CPUs: on an
                // AVX2 machine it never echoed, both arms scored 0%, the
                // gate saw no drop and the rollout ran on.)
                "max_tokens": 8, "expect": {"type": "regex", "pattern": "[a-z]{3}"}, "review": false})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(set.join("items.jsonl"), &items).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(items.as_bytes()));
    let manifest = format!(
        "name = \"words\"\nversion = 1\ndescription = \"echo a word\"\nlicence = \"CC0-1.0\"\nitems = {}\nrelease_notes = \"test\"\n[files]\n\"items.jsonl\" = \"{sha}\"\n",
        words.len()
    );
    std::fs::write(set.join("manifest.toml"), manifest).unwrap();
    set
}

#[test]
fn a_worse_model_behind_the_same_route_is_rolled_back_by_the_canary_eval() {
    let _one = one_server();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let made = switchyard(&["keys", "create", "--tenant", "ops", "--role", "operator", "--data-dir", data], "");
    let key = text(&made.stdout).trim().to_string();
    let (mut mock, mock_url) =
        start(&["bench", "mock", "--port", "0", "--ttft-ms", "5", "--itl-ms", "1", "--chunks", "4"]);
    let route = |backend: &str| {
        format!("version = \"canary\"\ndefault_route = \"local\"\n[[routes]]\nname = \"local\"\n{backend}\nallowed_classes = [\"public\", \"internal\", \"regulated\"]\n")
    };
    let incumbent = dir.path().join("incumbent.toml");
    std::fs::write(&incumbent, route("backend = \"embedded\"\nmodel = \"smollm2-135m\"")).unwrap();
    // The same route, now answered by something that only emits filler.
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, route(&format!("backend = \"upstream\"\nmodel = \"filler\"\nurl = \"{mock_url}\"")))
        .unwrap();
    let (mut server, url) =
        start(&["serve", "--policy", incumbent.to_str().unwrap(), "--port", "0", "--data-dir", data]);
    let set = word_set(dir.path());

    let run = switchyard(
        &[
            "rollout",
            "start",
            candidate.to_str().unwrap(),
            "--canary",
            "10%",
            "--url",
            &url,
            // The online gate waits for more traffic than this test sends: the eval decides.
            "--min-requests",
            "1000",
            "--step-s",
            "600",
            "--eval-set",
            set.to_str().unwrap(),
            "--eval-sample",
            "6",
            "--min-items",
            "3",
            "--max-drop",
            "0.2",
            "--eval-every-s",
            "1",
        ],
        &key,
    );
    let out = text(&run.stdout);
    assert!(run.status.success(), "{out}{}", text(&run.stderr));
    assert!(out.contains("canary eval 1: 6 items: incumbent"), "{out}");
    assert!(out.contains("candidate 0.0%"), "{out}");
    assert!(out.contains("rollback") && out.contains("canary eval failed"), "{out}");
    let status = text(&switchyard(&["rollout", "status", "--url", &url], &key).stdout);
    assert!(status.contains("no rollout in progress; serving canary+") && status.contains("start"), "{status}");
    // Every step names the figures that caused it.
    assert!(status.contains("\"slices\""), "{status}");
    server.kill().unwrap();
    mock.kill().unwrap();
}
