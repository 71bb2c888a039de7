//! An answered request always has its decision record, even when the
//! server is killed outright: the record is committed before the answer's
//! first byte (group commit). Run as the real binary, under load, then
//! `kill -9` (SIGKILL: no shutdown code runs). What the killed process had
//! not yet measured is lost, and counted when it starts again.

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
    let serve = ["serve", "--policy", policy.to_str().unwrap(), "--port", "0", "--data-dir", data.to_str().unwrap()];
    let serve = [&serve[..], &["--node-id", "kill-node"]].concat();
    let (mut server, base) = start(&serve);

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
    drop(store);

    // Started again: the records left without measurements are counted and marked.
    let (mut again, base) = start(&serve);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let reported = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_telemetry_lost_at_start_total "))
        .map_or(0, |n| n.trim().parse::<u64>().unwrap());
    again.kill().unwrap();
    again.wait().unwrap();
    let store = switchyard_store::Store::open_read_only(&data.join("switchyard.db")).await.unwrap();
    let all =
        store.telemetry(&switchyard_store::TelemetryFilter { limit: 1_000_000, ..Default::default() }).await.unwrap();
    let lost = all.iter().filter(|r| r.measured_ms == Some(0)).count() as u64;
    let unmarked = all.iter().filter(|r| r.measured_ms.is_none()).count();
    eprintln!("durability: {} records, {lost} lost their measurements to the kill", all.len());
    assert_eq!(reported, lost, "the restart reports what it marked");
    assert_eq!(unmarked, 0, "every record is measured or marked lost");
    assert!(lost < all.len() as u64 / 2, "only the unflushed tail is lost: {lost} of {}", all.len());
}

/// Clients sending at once: 16, or `SWITCHYARD_DURABILITY_CLIENTS` (to
/// measure the cost of group commit at other concurrencies).
fn concurrency() -> usize {
    std::env::var("SWITCHYARD_DURABILITY_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}
