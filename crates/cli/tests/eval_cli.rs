//! `switchyard eval` end to end: the real binary serving SmolLM2 on a
//! loopback port is the target; run, report, review and the compare gate,
//! whose failure path is tested against a scripted target known to pass.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_wire::ResultLabel;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--model",
            "smollm2-135m",
            "--port",
            "0",
            "--threads",
            "2",
            "--parallel",
            "2",
            "--ctx-size",
            "4096",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start switchyard");
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on "))
        .expect("switchyard listens");
    let url = line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    Server { child, base: format!("{url}/v1") }
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dataset(dir: &Path) {
    let item = |id: &str, q: &str, expect: Value, review: bool| {
        json!({"id": id, "family": "support", "difficulty": "routine", "data_class": "public",
               "messages": [{"role": "user", "content": q}], "max_tokens": 24, "expect": expect, "review": review})
    };
    let items = [
        item(
            "s-1",
            "What is the capital of France? Answer with one word.",
            json!({"type": "contains_all", "values": ["paris"]}),
            true,
        ),
        item("s-2", "Say hello.", json!({"type": "not_refusal"}), false),
        item("s-3", "Reply with exactly the word: banana", json!({"type": "regex", "pattern": "banana"}), false),
    ];
    let body: String = items.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("items.jsonl"), &body).unwrap();
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    std::fs::write(
        dir.join("manifest.toml"),
        format!(
            "name = \"mini\"\nversion = 1\ndescription = \"t\"\nlicence = \"CC0\"\nitems = 3\nrelease_notes = \"t\"\n[files]\n\"items.jsonl\" = \"{sha}\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn eval_runs_against_a_real_model_then_reports_reviews_and_gates() {
    let server = serve();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mini/v1");
    std::fs::create_dir_all(&data).unwrap();
    dataset(&data);
    let out = tmp.path().join("run");
    let args = [
        "eval",
        "run",
        "--dataset",
        data.to_str().unwrap(),
        "--target",
        "smollm2-135m",
        "--server",
        &server.base,
        "--out",
        out.to_str().unwrap(),
        "--no-cache",
    ];
    let o = run(&args, None);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let records: Vec<Value> = std::fs::read_to_string(out.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_ne!(r["label"], ResultLabel::Error.as_str(), "{r}");
        assert_eq!(r["model"], "smollm2-135m");
        assert!(r["confidence"]["mean_logprob"].as_f64().unwrap() < 0.0, "the real model's logprobs: {r}");
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0 && r["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(r["timings"]["predicted_n"].as_u64().unwrap() > 0);
    }
    for f in ["summary.json", "scorecard.md", "scorecard.html", "scorecard.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let summary: Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["dataset"].as_str(), summary["records"].as_u64()), (Some("mini@v1"), Some(3)));

    // Review: the flagged item gets a human verdict that the report then uses.
    let o = run(&["eval", "review", out.to_str().unwrap(), "--reviewer", "ana"], Some("f\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let review: Value =
        serde_json::from_str(std::fs::read_to_string(out.join("reviews.jsonl")).unwrap().trim()).unwrap();
    assert_eq!((review["item_id"].as_str(), review["pass"].as_bool()), (Some("s-1"), Some(false)));
    let report = tmp.path().join("report");
    let o = run(&["eval", "report", out.to_str().unwrap(), "--out", report.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let card: Value = serde_json::from_slice(&std::fs::read(report.join("scorecard.json")).unwrap()).unwrap();
    let all =
        card["slices"].as_array().unwrap().iter().find(|s| s["family"] == "all" && s["difficulty"] == "all").unwrap();
    let passed_by_model = records.iter().filter(|r| r["correct"] == true && r["item_id"] != "s-1").count();
    assert_eq!(all["passed"].as_u64().unwrap() as usize, passed_by_model, "s-1 counts as failed after review");

    // Compared with itself, nothing regressed (the failure path is tested
    // below, against a baseline that is known to pass).
    let same = run(
        &["eval", "compare", out.to_str().unwrap(), out.to_str().unwrap(), "--max-drop", "0.0", "--min-items", "1"],
        None,
    );
    assert!(same.status.success(), "{}{}", text(&same.stdout), text(&same.stderr));
}

/// The expected answer to each of [`dataset`]'s questions.
fn scripted_answer(question: &str) -> &'static str {
    if question.contains("capital of France") {
        "Paris"
    } else if question.contains("banana") {
        "banana"
    } else {
        "Hello!"
    }
}

/// A scripted OpenAI-compatible target that answers every item of
/// [`dataset`] right, as a stream; its base URL. Served until the test ends.
fn scripted_target() -> String {
    use axum::routing::post;
    use axum::{Json, Router};
    async fn answer(Json(body): Json<Value>) -> impl axum::response::IntoResponse {
        let question = body["messages"][0]["content"].as_str().unwrap_or_default();
        let chunk = json!({"object": "chat.completion.chunk", "model": "scripted",
                           "choices": [{"index": 0, "delta": {"role": "assistant", "content": scripted_answer(question)}, "finish_reason": "stop"}]});
        ([("content-type", "text/event-stream")], format!("data: {chunk}\n\ndata: [DONE]\n\n"))
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, Router::new().route("/v1/chat/completions", post(answer))).await.unwrap();
        });
    });
    base
}

#[test]
fn the_gate_fails_a_candidate_that_lost_quality() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mini/v1");
    std::fs::create_dir_all(&data).unwrap();
    dataset(&data);
    let eval_run = |target: &str, out: &Path| {
        let o = run(
            &[
                "eval",
                "run",
                "--dataset",
                data.to_str().unwrap(),
                "--target",
                target,
                "--out",
                out.to_str().unwrap(),
                "--no-cache",
            ],
            None,
        );
        assert!(
            o.status.success(),
            "{target}: a run gives records, not a crash: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let records: Vec<Value> = std::fs::read_to_string(out.join("records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        records
    };
    // The baseline passes every item, so the candidate has quality to lose.
    let baseline = tmp.path().join("baseline");
    let records = eval_run(&scripted_target(), &baseline);
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["correct"] == true), "the scripted target answers every item right: {records:?}");
    // The candidate, a dead target, answers nothing: a regression on every slice.
    let dead = tmp.path().join("dead");
    let records = eval_run("http://127.0.0.1:9/v1", &dead);
    assert!(records.iter().all(|r| r["label"] == ResultLabel::Error.as_str()), "{records:?}");

    let worse = run(
        &[
            "eval",
            "compare",
            baseline.to_str().unwrap(),
            dead.to_str().unwrap(),
            "--max-drop",
            "0.05",
            "--min-items",
            "1",
        ],
        None,
    );
    assert!(!worse.status.success(), "{}", text(&worse.stdout));
    assert!(
        text(&worse.stdout).contains("REGRESSION") && text(&worse.stderr).contains("quality dropped"),
        "{}",
        text(&worse.stdout)
    );
    // Below --min-items, a slice is shown but cannot fail the gate.
    let few = run(
        &[
            "eval",
            "compare",
            baseline.to_str().unwrap(),
            dead.to_str().unwrap(),
            "--max-drop",
            "0.05",
            "--min-items",
            "4",
        ],
        None,
    );
    assert!(
        few.status.success() && !text(&few.stdout).contains("REGRESSION"),
        "{}{}",
        text(&few.stdout),
        text(&few.stderr)
    );
    let same = run(
        &[
            "eval",
            "compare",
            baseline.to_str().unwrap(),
            baseline.to_str().unwrap(),
            "--max-drop",
            "0.0",
            "--min-items",
            "1",
        ],
        None,
    );
    assert!(same.status.success(), "{}{}", text(&same.stdout), text(&same.stderr));
}
