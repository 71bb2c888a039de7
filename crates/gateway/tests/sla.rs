//! SLA compliance per route and family, read back from the records: a real
//! embedded model (SmolLM2) under two families with different end-to-end
//! SLAs, and a dead upstream whose family's error budget is spent.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::routing::RoutingOptions;
use switchyard_gateway::{router, AppState};
use switchyard_router::{Policy, Prices};

#[path = "common/loopback.rs"]
mod loopback;

const POLICY: &str = r#"
version = "sla.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public"]
ttft_timeout_ms = 30000
total_timeout_ms = 60000

[[routes]]
name = "dead"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public"]
retry = { ratio = 0.0, min_per_second = 0.0 }

[[families]]
name = "relaxed"
max_e2e_ms = 60000
max_error_rate = 0.05

[[families]]
name = "impossible"
max_e2e_ms = 1

[[families]]
name = "doomed"
max_error_rate = 0.1

[[rules]]
id = "doomed"
when = { family = "doomed" }
then = { action = "route", route = "dead" }
"#;

#[tokio::test]
async fn compliance_is_read_per_route_and_family_from_the_records() {
    let engine = loopback::smollm2().await;
    let data = tempfile::tempdir().unwrap();
    let store = switchyard_store::Store::open(&data.path().join("s.db")).await.unwrap();
    let state = AppState::new(vec![engine])
        .with_policy(Policy::from_toml(POLICY).unwrap(), Prices::default(), RoutingOptions::default())
        .unwrap()
        .with_store(store);
    let base = loopback::serve(router(Arc::new(state), 1 << 20)).await;
    let http = reqwest::Client::new();
    let ask = |family: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v1/chat/completions");
        async move {
            let body = json!({"model": "auto", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0});
            http.post(url).header("x-switchyard-family", family).json(&body).send().await.unwrap().status()
        }
    };
    for family in ["relaxed", "relaxed", "relaxed", "impossible", "impossible", "doomed", "doomed"] {
        let status = ask(family).await;
        assert_eq!(status.is_success(), family != "doomed", "{family}: {status}");
    }
    // The records' measured part is written as each answer ends.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let window: Value = http.get(format!("{base}/admin/sla?window_s=60")).send().await.unwrap().json().await.unwrap();
    let row = |route: &str, family: &str| {
        window["compliance"].as_array().unwrap().iter().find(|c| c["route"] == route && c["family"] == family).cloned()
    };
    let relaxed = row("local", "relaxed").unwrap_or_else(|| panic!("{window}"));
    assert_eq!((relaxed["requests"].as_u64(), relaxed["within_sla"].as_u64()), (Some(3), Some(3)), "{relaxed}");
    assert_eq!(relaxed["error_budget_met"], true);
    let impossible = row("local", "impossible").unwrap();
    assert_eq!(
        (impossible["requests"].as_u64(), impossible["within_sla_share"].as_f64()),
        (Some(2), Some(0.0)),
        "{impossible}"
    );
    let doomed = row("dead", "doomed").unwrap_or_else(|| panic!("{window}"));
    assert_eq!((doomed["failed"].as_u64(), doomed["error_rate"].as_f64()), (Some(2), Some(1.0)), "{doomed}");
    assert_eq!(doomed["error_budget_met"], false);
    assert_eq!(window["policy"].as_str().map(|p| p.starts_with("sla.1+")), Some(true));

    let bad = http.get(format!("{base}/admin/sla?window_s=0")).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
