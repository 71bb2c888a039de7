//! A route over three real engine nodes (switchyard servers running
//! SmolLM2 on loopback): requests go to the node with the fewest in flight,
//! and when one node is killed mid-run its breaker takes it out and every
//! request is still answered by the others.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::start;

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_balances_over_engine_nodes_and_survives_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Killed(Vec::new());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(format!("node{i}"));
        let (child, base) = start(&[
            "serve",
            "--model",
            "smollm2-135m",
            "--port",
            "0",
            "--threads",
            "1",
            "--parallel",
            "2",
            "--ctx-size",
            "512",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        children.0.push(child);
        nodes.push(format!("{base}/v1"));
    }
    let policy = dir.path().join("policy.toml");
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    std::fs::write(
        &policy,
        format!(
            "version = \"nodes.1\"\ndefault_route = \"pool\"\n\n[[routes]]\nname = \"pool\"\nbackend = \"upstream\"\n\
             model = \"smollm2-135m\"\nurls = [{}]\nallowed_classes = [\"public\", \"internal\"]\n\
             ttft_timeout_ms = 20000\ntotal_timeout_ms = 60000\n[routes.breaker]\nconsecutive_failures = 1\nopen_ms = 60000\n",
            urls.join(", ")
        ),
    )
    .unwrap();
    let data = dir.path().join("gateway");
    let (gateway, base) =
        start(&["serve", "--policy", policy.to_str().unwrap(), "--port", "0", "--data-dir", data.to_str().unwrap()]);
    children.0.push(gateway);

    let http = reqwest::Client::new();
    // Three clients at once, twelve requests each; the second node is
    // killed once half are answered, with requests in flight on it.
    let answered: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let clients = (0..3).map(|_| {
        let (http, base, answered) = (http.clone(), base.clone(), answered.clone());
        tokio::spawn(async move {
            for _ in 0..12 {
                let body = serde_json::json!({
                    "model": "auto", "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hi."}]
                });
                let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
                let status = resp.status();
                let node = resp.headers().get("x-switchyard-backend").map(|v| v.to_str().unwrap().to_string());
                let text = resp.text().await.unwrap();
                assert_eq!(status, 200, "{text}");
                answered.lock().unwrap().push((Instant::now(), node.expect("the answering node is named")));
            }
        })
    });
    let load = futures::future::join_all(clients);
    let killer = async {
        while answered.lock().unwrap().len() < 18 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = children.0.remove(1);
        drop(Killed(vec![victim]));
        Instant::now()
    };
    let (done, killed_at) = tokio::join!(load, killer);
    for client in done {
        client.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert_eq!(answered.len(), 36, "every request answered");
    let mut before: HashMap<&str, usize> = HashMap::new();
    for (_, node) in &answered[..18] {
        *before.entry(node).or_default() += 1;
    }
    eprintln!("first 18 answers by node: {before:?}");
    for node in &nodes {
        assert!(before.get(node.as_str()).copied().unwrap_or(0) >= 3, "each node takes a share: {before:?}");
    }
    // (An answer the node sent just before it died may be counted a moment later.)
    let late = answered.iter().filter(|(at, node)| *at > killed_at + Duration::from_millis(100) && *node == nodes[1]);
    let late = late.count();
    assert_eq!(late, 0, "the killed node answers nothing after its death");
}
