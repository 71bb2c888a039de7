//! One telemetry record per chat request, routed or refused, on SQLite and
//! PostgreSQL: the decision part written before the answer, the measured
//! part (tokens, cost, timings, a client that left) once it ended; read
//! back through `GET /admin/telemetry` with its filters and exports.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::error::ApiError;
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};
use switchyard_store::Store;

const POLICY: &str = r#"
version = "telemetry.1"
default_route = "tel-flaky"

[[routes]]
name = "tel-flaky"
backend = "embedded"
model = "flaky"
allowed_classes = ["public"]
retry = { ratio = 0.0, min_per_second = 0.0 }
fallback = ["tel-local"]

[[routes]]
name = "tel-local"
backend = "embedded"
model = "m"
allowed_classes = ["public"]
"#;

async fn server(store: Store) -> String {
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    // Fails every other call, from the first: each failure falls back to tel-local.
    let flaky = Scripted::new(|n| match n % 2 {
        0 => Script::Fail(ApiError::bad_gateway("down on purpose")),
        _ => Script::answer("never used", -0.1),
    });
    backends.insert("tel-flaky".into(), Arc::new(flaky));
    let local = Scripted::always(
        Script::answer("one two three four five six", -0.1).paced(Duration::from_millis(5), Duration::from_millis(20)),
    );
    backends.insert("tel-local".into(), Arc::new(local));
    let prices = Prices::from_toml("[prices.tel-local]\ninput_per_1m = 1000\noutput_per_1m = 2000\n").unwrap();
    let routing =
        Routing::with_backends(Policy::from_toml(POLICY).unwrap(), prices, backends, RoutingOptions::default())
            .unwrap();
    common::listen(AppState::new(vec![]).with_routing(routing).with_store(store)).await
}

async fn records(http: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let resp = http.get(format!("{base}/admin/telemetry?{query}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_request_gets_one_record_with_its_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = vec![("sqlite", Store::open(&dir.path().join("t.db")).await.unwrap())];
    if let Some(url) = switchyard_store::testing::fresh_postgres().await {
        stores.push(("postgres", Store::connect(&url).await.unwrap()));
    }
    for (db, store) in stores {
        eprintln!("on {db}");
        let base = server(store).await;
        let http = reqwest::Client::new();
        let chat = |body: Value| http.post(format!("{base}/v1/chat/completions")).json(&body).send();
        let ask =
            |stream: bool| json!({"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});

        // Answered after a fallback (the first call to tel-flaky fails), as JSON.
        let resp = chat(ask(false)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let json_id = resp.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
        resp.bytes().await.unwrap();
        // Streamed (tel-flaky answers this time, and is not paced).
        let _ = chat(ask(true)).await.unwrap().bytes().await.unwrap();
        // Streamed from tel-local, paced: a fallback again.
        let resp = chat(ask(true)).await.unwrap();
        let stream_id = resp.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
        assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
        // A client that leaves after the first chunk.
        let _ = chat(ask(false)).await.unwrap().bytes().await; // tel-flaky's turn to answer
        let resp = chat(ask(true)).await.unwrap();
        let left_id = resp.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();
        let mut body = resp.bytes_stream();
        body.next().await.unwrap().unwrap();
        drop(body);
        // Refused before any decision: malformed JSON.
        let resp = http
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bad_id = resp.headers()["x-switchyard-request-id"].to_str().unwrap().to_string();

        // The measured part of the one that left lands once the server sees it gone.
        let mut all = Vec::new();
        for _ in 0..100 {
            all = records(&http, &base, "").await;
            let left = all.iter().find(|r| r["request_id"] == left_id.as_str());
            if left.is_some_and(|r| !r["measured_ms"].is_null()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(all.len(), 6, "{db}: one record per request: {all:#?}");
        let by_id = |id: &str| all.iter().find(|r| r["request_id"] == id).unwrap().clone();

        let r = by_id(&json_id);
        assert_eq!(
            (r["route"].as_str(), r["model"].as_str(), r["status"].as_u64()),
            (Some("tel-local"), Some("m"), Some(200))
        );
        assert_eq!(
            (r["fallbacks"].as_u64(), r["retries"].as_u64(), r["stream"].as_bool()),
            (Some(1), Some(0), Some(false))
        );
        assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
        assert_eq!((r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()), (Some(1), Some(6)), "{r}");
        // 1 prompt token at $1000/1M and 6 completion tokens at $2000/1M.
        assert!((r["cost_usd"].as_f64().unwrap() - 0.013).abs() < 1e-12, "{r}");
        assert!(r["total_ms"].as_f64().is_some() && r["queue_ms"].as_f64().is_some(), "{r}");
        assert_eq!(r["disconnected"], false);

        let r = by_id(&stream_id);
        assert_eq!((r["route"].as_str(), r["stream"].as_bool()), (Some("tel-local"), Some(true)));
        assert_eq!(r["completion_tokens"].as_u64(), Some(6), "{r}");
        // Paced 20 ms apart: the gateway's clock sees the gaps.
        let (p50, p99, max) =
            (r["itl_p50_ms"].as_f64().unwrap(), r["itl_p99_ms"].as_f64().unwrap(), r["itl_max_ms"].as_f64().unwrap());
        assert!(p50 >= 15.0 && p50 <= p99 && p99 <= max, "{r}");
        assert!(r["ttft_ms"].as_f64().unwrap() <= r["total_ms"].as_f64().unwrap(), "{r}");
        assert_eq!(r["disconnected"], false);

        let r = by_id(&left_id);
        assert_eq!(r["disconnected"], true, "{r}");
        assert!(r["completion_tokens"].as_u64().unwrap() < 6, "{r}");

        let r = by_id(&bad_id);
        assert_eq!(
            (r["status"].as_u64(), r["label"].as_str(), r["route"].as_str()),
            (Some(400), Some("refused"), Some("none"))
        );
        assert!(r["reason"].as_str().unwrap().contains("could not parse the JSON"), "{r}");
        assert!(r["policy_id"].as_str().unwrap().starts_with("telemetry.1"), "{r}");
        assert_eq!(r["disconnected"], false);

        // Filters and exports.
        assert_eq!(records(&http, &base, "status=400").await.len(), 1);
        assert_eq!(records(&http, &base, "label=refused").await.len(), 1);
        assert_eq!(records(&http, &base, "route=tel-local").await.len(), 3);
        assert_eq!(records(&http, &base, "route=tel-local&limit=2").await.len(), 2);
        let first = all[0]["created_ms"].as_i64().unwrap();
        assert_eq!(records(&http, &base, &format!("until_ms={first}")).await.len(), 0);
        let csv = http.get(format!("{base}/admin/telemetry?format=csv&route=tel-local")).send().await.unwrap();
        assert_eq!(csv.headers()["content-type"], "text/csv");
        let csv = csv.text().await.unwrap();
        assert_eq!(csv.lines().count(), 4, "a header and three rows: {csv}");
        assert!(csv.starts_with("request_id,created_ms,tenant,node,"));
        let jsonl =
            http.get(format!("{base}/admin/telemetry?format=jsonl")).send().await.unwrap().text().await.unwrap();
        assert_eq!(jsonl.lines().count(), 6);
        let bad = http.get(format!("{base}/admin/telemetry?format=xml")).send().await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let bad = http.get(format!("{base}/admin/telemetry?status=abc")).send().await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }
}
