//! Swapping the model behind a route with a real model (SmolLM2), with no
//! restart: the new one is loaded beside the old, the routing switches, an
//! answer streaming from the old one when the switch happens finishes
//! there, and the old one is unloaded once it has.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use switchyard_gateway::ops::models::{Loader, Models};
use switchyard_gateway::routing::RoutingOptions;
use switchyard_gateway::{router, AppState};
use switchyard_router::{Policy, Prices};

#[path = "common/loopback.rs"]
mod loopback;

fn policy(version: &str, model: &str) -> String {
    format!(
        r#"
version = "{version}"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "{model}"
allowed_classes = ["public", "internal", "regulated"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_swaps_its_model_with_no_restart_and_the_old_one_unloads_after_its_last_answer() {
    let engine = loopback::smollm2().await;
    let settings = engine.settings().clone();
    // The same weights under another name: a second model to swap to.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("smollm2-b.gguf");
    std::fs::copy(engine.path(), &copy).unwrap();
    let models = Models::new(vec![engine]).with_loader(
        Loader { settings, drafts: Default::default(), cache: switchyard_models::cache_dir() },
        Default::default(),
    );
    let store = switchyard_store::Store::open(&dir.path().join("s.db")).await.unwrap();
    let state = AppState { models: Arc::new(models), ..AppState::new(vec![]) }
        .with_policy(
            Policy::from_toml(&policy("swap.1", "smollm2-135m")).unwrap(),
            Prices::default(),
            RoutingOptions::default(),
        )
        .unwrap()
        .with_store(store.clone());
    let state = Arc::new(state);
    let old = Arc::downgrade(state.models.snapshot().get("smollm2-135m").unwrap());
    let base = loopback::serve(router(state.clone(), 1 << 20)).await;
    let http = reqwest::Client::new();

    // A long answer streaming from the old model while the swap happens
    // (slowed to 150 ms a token, so it outlasts the swap).
    let slow =
        http.put(format!("{base}/admin/faults/local")).body(r#"{"kind": "slow", "ms": 150}"#).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    let body = json!({"model": "auto", "stream": true, "max_tokens": 96, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from one to fifty in words."}]});
    let resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.headers()["x-switchyard-policy"].to_str().unwrap().split('+').next(), Some("swap.1"));
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(!first.is_empty());

    let v2 = policy("swap.2", copy.to_str().unwrap());
    let applied = http.put(format!("{base}/admin/policy")).body(v2).send().await.unwrap();
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());
    let listed: Value = http.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["smollm2-b"], "the old model left the set at the switch");
    assert!(old.upgrade().is_some(), "the old model still answers the stream it started");

    // The stream from the old model ends as it should.
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = chunks.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.contains("[DONE]") && !rest.contains("\"error\""), "{rest}");

    // New requests: the new model, under the new version.
    http.delete(format!("{base}/admin/faults/local")).send().await.unwrap();
    let whole =
        json!({"model": "auto", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]});
    let resp = http.post(format!("{base}/v1/chat/completions")).json(&whole).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["x-switchyard-policy"].to_str().unwrap().starts_with("swap.2+"));

    // Unloaded once its last answer ended (the scheduler may take a step).
    let mut unloaded = false;
    for _ in 0..50 {
        if old.upgrade().is_none() {
            unloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unloaded, "the old model is dropped after its last request");

    // The chain holds the load and the unload.
    let chain = store.chain(&Default::default()).await.unwrap();
    let changes: Vec<(String, String)> =
        chain.iter().map(|e| (e.change.object.clone(), e.change.action.clone())).collect();
    for want in [("model:smollm2-b", "load"), ("policy", "apply"), ("model:smollm2-135m", "unload")] {
        assert!(changes.iter().any(|(o, a)| o == want.0 && a == want.1), "{want:?} in {changes:?}");
    }
}
