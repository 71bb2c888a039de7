//! The dataset check, the sandbox's limits, and the runner against a local
//! mock speaking OpenAI's streaming wire format, with faults.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_eval::dataset::{Dataset, DatasetError};
use switchyard_eval::runner::{run, RunOptions, Target};
use switchyard_eval::sandbox::Sandbox;

/// Writes a dataset of `items` with a correct manifest.
fn write_dataset(dir: &Path, items: &[Value]) {
    let body: String = items.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("items.jsonl"), &body).unwrap();
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    let manifest = format!(
        "name = \"mini\"\nversion = 1\ndescription = \"test\"\nlicence = \"CC0\"\nitems = {}\nrelease_notes = \"test\"\n[files]\n\"items.jsonl\" = \"{sha}\"\n",
        items.len()
    );
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
}

fn item(id: &str, expect: Value) -> Value {
    json!({"id": id, "family": "support", "difficulty": "routine", "data_class": "public",
           "messages": [{"role": "user", "content": format!("question {id}")}], "max_tokens": 16, "expect": expect, "review": false})
}

fn mini(dir: &Path) {
    write_dataset(
        dir,
        &[
            item("q-1", json!({"type": "exact", "value": "Paris"})),
            item("q-2", json!({"type": "exact", "value": "Rome"})),
        ],
    );
}

#[test]
fn the_shipped_dataset_matches_its_manifest() {
    let d = Dataset::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/eval/core/v1")).unwrap();
    assert_eq!((d.items.len(), d.label().as_str()), (200, "core@v1"));
    let edge = d.items.iter().filter(|i| i.difficulty == "edge").count();
    assert_eq!(edge, 40);
    assert!(d.items.iter().filter(|i| i.expect.wants_refusal()).count() >= 14);
}

#[test]
fn a_spread_subset_is_the_same_each_time_and_meets_every_family() {
    let open = || Dataset::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/eval/core/v1")).unwrap();
    let (mut a, mut b, all) = (open(), open(), open());
    a.spread(40);
    b.spread(40);
    let ids = |d: &Dataset| d.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!((a.items.len(), ids(&a)), (40, ids(&b)));
    let families = |d: &Dataset| d.items.iter().map(|i| i.family.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(families(&a), families(&all), "every family of the set is asked");
    let mut whole = open();
    whole.spread(500);
    assert_eq!(whole.items.len(), 200, "more than the set keeps the set");
}

#[test]
fn a_tampered_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    mini(dir.path());
    Dataset::open(dir.path()).unwrap();
    let items = dir.path().join("items.jsonl");
    let text = std::fs::read_to_string(&items).unwrap().replace("Paris", "Lyon");
    std::fs::write(&items, text).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, DatasetError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("new version"), "{err}");
    // A manifest whose counts disagree with its items is refused too.
    mini(dir.path());
    let m = dir.path().join("manifest.toml");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap() + "[counts]\n\"support.routine\" = 3\n").unwrap();
    assert!(Dataset::open(dir.path()).unwrap_err().to_string().contains("counts"));
}

#[test]
fn the_sandbox_passes_good_code_and_stops_bad_code() {
    let sb = Sandbox { memory_bytes: 512 << 20, ..Sandbox::new(Duration::from_secs(3)).unwrap() };
    assert!(sb.run_python("assert 1 + 1 == 2").passed);
    let failed = sb.run_python("assert 1 + 1 == 3");
    assert!(!failed.passed && failed.detail.contains("AssertionError"), "{failed:?}");

    // No network: not even to a server listening on this machine.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let net = sb.run_python(&format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"));
    assert!(!net.passed, "{net:?}");
    let raw = sb.run_python(&format!(
        "import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"
    ));
    assert!(!raw.passed, "the low-level socket module cannot connect either: {raw:?}");

    let slow = sb.run_python("while True:\n    pass");
    assert!(!slow.passed && (slow.detail.contains("timed out") || slow.detail.contains("limit")), "{slow:?}");
    let hog = sb.run_python("x = bytearray(2 << 30)");
    assert!(!hog.passed && hog.detail.contains("MemoryError"), "{hog:?}");
    // Children die with it.
    let start = std::time::Instant::now();
    let fork = sb.run_python("import subprocess, time\nsubprocess.Popen(['sleep', '30'])\ntime.sleep(30)");
    assert!(!fork.passed && start.elapsed() < Duration::from_secs(10), "{fork:?}");
}

/// The mock's behaviour is chosen by the request's model name.
async fn mock(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let question = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
    let chunk = |delta: Value, lp: f64| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": {"content": [{"token": "x", "logprob": lp, "bytes": null, "top_logprobs": []}]}, "finish_reason": null}]})
        ))
    };
    if body["stream"] != true {
        // The judge: non-streaming; its verdict is its model name's suffix.
        let verdict = if model.ends_with("pass") { "PASS" } else { "FAIL" };
        return Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]})).into_response();
    }
    let answer = match (model.as_str(), question.as_str()) {
        ("right", "question q-1") | ("half", "question q-1") => "Paris",
        ("right", _) => "Rome",
        _ => "London",
    };
    let done = Bytes::from(format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
    ));
    let parts: Vec<Result<Bytes, std::io::Error>> = match model.as_str() {
        "fail" => {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "boom", "type": "server_error"}})),
            )
                .into_response()
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            vec![]
        }
        "cut" => vec![Ok(chunk(json!({"content": "Par"}), -0.1)), Err(std::io::Error::other("cut"))],
        "garbage" => vec![Ok(Bytes::from("data: {not json\n\n"))],
        _ => vec![
            Ok(chunk(json!({"role": "assistant", "content": answer}), if answer == "London" { -2.5 } else { -0.05 })),
            Ok(done),
        ],
    };
    // A pause after the first chunk, so a cut stream is cut after the client has its headers.
    let mut parts = parts.into_iter();
    let first = futures::stream::iter(parts.next());
    let pause = futures::stream::once(tokio::time::sleep(Duration::from_millis(50))).filter_map(|()| async { None });
    ([("content-type", "text/event-stream")], Body::from_stream(first.chain(pause).chain(futures::stream::iter(parts))))
        .into_response()
}

async fn serve_mock() -> String {
    let app = Router::new().route("/v1/chat/completions", post(mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn options(cache: Option<&Path>) -> RunOptions {
    RunOptions {
        concurrency: 4,
        repeats: 1,
        seed: Some(7),
        temperature: 0.0,
        timeout: Duration::from_secs(2),
        logprobs: true,
        cache_dir: cache.map(Path::to_path_buf),
        difficulty: None,
        price: None,
        judge: None,
        progress: false,
    }
}

#[tokio::test]
async fn a_judge_grades_beside_machine_checks_and_never_alone() {
    let base = serve_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let judged = json!({"type": "all", "of": [{"type": "exact", "value": "Paris"}, {"type": "judge", "rubric": "names the city"}]});
    write_dataset(dir.path(), &[item("q-1", judged)]);
    let dataset = Dataset::open(dir.path()).unwrap();
    let sandbox = Sandbox::new(Duration::from_secs(3)).unwrap();
    let right = Target { label: "right".into(), base_url: base.clone(), model: "right".into(), headers: vec![] };
    let judge = |m: &str| Some(Target { label: m.into(), base_url: base.clone(), model: m.into(), headers: vec![] });
    let pass =
        run(&dataset, &right, &RunOptions { judge: judge("judge-pass"), ..options(None) }, sandbox.clone()).await;
    assert!(pass[0].correct, "{:?}", pass[0]);
    let fail =
        run(&dataset, &right, &RunOptions { judge: judge("judge-fail"), ..options(None) }, sandbox.clone()).await;
    assert!(!fail[0].correct && fail[0].scorer.contains("judge judge-fail: FAIL"), "{:?}", fail[0]);
    let none = run(&dataset, &right, &options(None), sandbox).await;
    assert!(none[0].correct, "without a judge the machine check decides");

    let alone = tempfile::tempdir().unwrap();
    write_dataset(alone.path(), &[item("q-1", json!({"type": "judge", "rubric": "good"}))]);
    assert!(Dataset::open(alone.path()).unwrap_err().to_string().contains("only check"));
}

#[tokio::test]
async fn the_runner_scores_answers_and_survives_broken_targets() {
    let base = serve_mock().await;
    let dir = tempfile::tempdir().unwrap();
    mini(dir.path());
    let dataset = Dataset::open(dir.path()).unwrap();
    let sandbox = Sandbox::new(Duration::from_secs(3)).unwrap();
    let target =
        |model: &str| Target { label: model.into(), base_url: base.clone(), model: model.into(), headers: vec![] };
    let cache = tempfile::tempdir().unwrap();

    let right = run(&dataset, &target("right"), &options(Some(cache.path())), sandbox.clone()).await;
    assert!(right.iter().all(|r| r.correct && r.label == "pass" && !r.cached), "{right:?}");
    let r = &right[0];
    assert_eq!((r.usage.as_ref().unwrap().prompt_tokens, r.confidence.mean_logprob), (5, Some(-0.05)));
    assert!(r.ttft_ms.is_some() && r.confidence.features.is_some());
    // Rerun: answered from the cache, same verdicts.
    let again = run(&dataset, &target("right"), &options(Some(cache.path())), sandbox.clone()).await;
    assert!(again.iter().all(|r| r.cached && r.correct));

    let half = run(&dataset, &target("half"), &options(None), sandbox.clone()).await;
    assert_eq!(half.iter().map(|r| r.correct).collect::<Vec<_>>(), [true, false]);
    assert_eq!(half[1].confidence.mean_logprob, Some(-2.5));
    assert!(half[1].scorer.contains("london"), "{}", half[1].scorer);

    for (model, why) in
        [("fail", "HTTP 500"), ("hang", "no complete answer"), ("cut", "stream broke"), ("garbage", "malformed chunk")]
    {
        let records = run(&dataset, &target(model), &options(None), sandbox.clone()).await;
        assert_eq!(records.len(), 2, "{model}: every item gets a record");
        for r in &records {
            assert_eq!((r.label.as_str(), r.correct), ("error", false), "{model}: {r:?}");
            assert!(r.error.as_deref().unwrap_or_default().contains(why), "{model}: {:?}", r.error);
        }
    }
    let dead =
        Target { label: "dead".into(), base_url: "http://127.0.0.1:9/v1".into(), model: "x".into(), headers: vec![] };
    let records = run(&dataset, &dead, &options(None), sandbox).await;
    assert!(records.iter().all(|r| r.label == "error" && r.error.as_deref().unwrap().contains("request failed")));
}
