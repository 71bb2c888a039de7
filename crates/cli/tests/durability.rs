//! An answered request always has its decision record, even when the
//! server is killed outright: the record is committed before the answer's
//! first byte (group commit). Run as the real binary, under load, then
//! `kill -9` (SIGKILL: no shutdown code runs).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answered_request_has_its_record_after_a_kill_9() {
    let (mut mock, upstream) =
        start(&["bench", "mock", "--port", "0", "--ttft-ms", "1", "--itl-ms", "0", "--chunks", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("version = \"kill.1\"\ndefault_route = \"up\"\n\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"{upstream}\"\nallowed_classes = [\"public\", \"internal\", \"regulated\"]\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut server, base) =
        start(&["serve", "--policy", policy.to_str().unwrap(), "--port", "0", "--data-dir", data.to_str().unwrap()]);

    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_millis(1500);
    let clients = (0..concurrency()).map(|_| {
        let (http, base, answered) = (http.clone(), base.clone(), answered.clone());
        tokio::spawn(async move {
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            while Instant::now() < until {
                let Ok(resp) = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await else { break };
                let id =
                    resp.headers().get("x-switchyard-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                // Answered: a 200 whose whole body arrived.
                if let (true, Some(id), Ok(_)) = (resp.status().is_success(), id, resp.bytes().await) {
                    answered.lock().unwrap().push(id);
                }
            }
        })
    });
    let load = futures::future::join_all(clients);
    // Kill mid-load, while requests are in flight.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    load.await;
    mock.kill().unwrap();
    let _ = mock.wait();

    let answered = answered.lock().unwrap().clone();
    // Throughput under group commit, for comparison with a server that only queues its records.
    eprintln!("durability: {} clients, {} requests answered in the 1 s before the kill", concurrency(), answered.len());
    assert!(answered.len() > 100, "the load ran: {} answered", answered.len());
    let store = switchyard_store::Store::open_read_only(&data.join("switchyard.db")).await.unwrap();
    let mut missing = Vec::new();
    for id in &answered {
        if store.decision(id).await.unwrap().is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Clients sending at once: 16, or `SWITCHYARD_DURABILITY_CLIENTS` (to
/// measure the cost of group commit at other concurrencies).
fn concurrency() -> usize {
    std::env::var("SWITCHYARD_DURABILITY_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}
