//! Drift and cost alerts with a controllable clock: records written to a
//! real SQLite store at chosen times, rules judged as of chosen instants,
//! and notices received by a real webhook on loopback.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use switchyard_gateway::ops::alerts::{Alerts, Rule};
use switchyard_store::{DecisionRecord, Store};

type Seen = Arc<Mutex<Vec<Value>>>;

async fn receiver() -> (String, Seen) {
    async fn take(State(seen): State<Seen>, Json(body): Json<Value>) {
        seen.lock().unwrap().push(body);
    }
    let seen: Seen = Arc::default();
    let app = Router::new().route("/hook", post(take)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// `n` answered requests on `route` at `at_ms`, `failed` of them with a 502, each costing `cost`.
async fn write(store: &Store, route: &str, at_ms: i64, n: usize, failed: usize, cost: f64) {
    for i in 0..n {
        let id = format!("chatcmpl-{route}-{at_ms}-{i}");
        let (status, label) = if i < failed { (502, "error") } else { (200, "answered") };
        let mut r = DecisionRecord::new(id, "p.1".into(), route.into(), status, label.into());
        r.created_ms = at_ms;
        r.measured.cost_usd = Some(cost);
        store.record_decision(&r).await.unwrap();
    }
}

fn rules(text: &str) -> Vec<Rule> {
    #[derive(serde::Deserialize)]
    struct File {
        alerts: Vec<Rule>,
    }
    toml::from_str::<File>(text).unwrap().alerts
}

#[tokio::test]
async fn an_alert_fires_once_per_incident_to_the_webhook_and_sends_a_recovery_notice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).await.unwrap();
    let (url, seen) = receiver().await;
    let alerts = Alerts::new(
        rules(
            r#"
[[alerts]]
name = "cloud-errors"
metric = "error_rate"
route = "cloud"
window-s = 60
above = 0.10
min-requests = 10

[[alerts]]
name = "cloud-spend"
metric = "cost_per_day_usd"
route = "cloud"
window-s = 60
rise = 0.5
baseline-s = 600
min-requests = 10
"#,
        ),
        Some(url),
    );
    let t0 = 1_000_000_000_000;
    // A quiet baseline: ten minutes of healthy traffic at $0.001 a request.
    for m in 0..10 {
        write(&store, "cloud", t0 + m * 60_000, 20, 1, 0.001).await;
    }
    let at = t0 + 10 * 60_000;
    write(&store, "cloud", at + 10_000, 20, 1, 0.001).await;
    let r = alerts.tick(&store, "node-a", at + 60_000).await;
    assert_eq!(r[0].breached, Some(false), "{r:?}");
    assert_eq!(r[1].breached, Some(false), "{r:?}");
    assert!(seen.lock().unwrap().is_empty());

    // The next minute: a third fail, and each request costs five times as much.
    write(&store, "cloud", at + 70_000, 30, 10, 0.005).await;
    let r = alerts.tick(&store, "node-a", at + 120_000).await;
    assert_eq!((r[0].breached, r[1].breached), (Some(true), Some(true)), "{r:?}");
    // Still breached a little later: no second notice for the same incident.
    alerts.tick(&store, "node-a", at + 121_000).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let errors = seen.iter().find(|n| n["alert"] == "cloud-errors").unwrap();
        assert_eq!(errors["status"], "firing");
        assert!((errors["value"].as_f64().unwrap() - 10.0 / 30.0).abs() < 1e-9, "{errors}");
        assert_eq!(errors["node"], "node-a");
        let spend = seen.iter().find(|n| n["alert"] == "cloud-spend").unwrap();
        assert!(spend["value"].as_f64().unwrap() > spend["baseline"].as_f64().unwrap() * 1.5, "{spend}");
    }

    // Healthy again, and cheap: both resolve, once.
    write(&store, "cloud", at + 130_000, 30, 0, 0.001).await;
    alerts.tick(&store, "node-a", at + 180_000).await;
    alerts.tick(&store, "node-a", at + 181_000).await;
    let statuses: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|n| (n["alert"].as_str().unwrap().to_string(), n["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(statuses.len(), 4, "{statuses:?}");
    let has = |a: &str, s: &str| statuses.iter().any(|(x, y)| x == a && y == s);
    assert!(has("cloud-errors", "resolved") && has("cloud-spend", "resolved"));

    // With too few requests a rule is not judged, so nothing changes.
    let quiet = alerts.tick(&store, "node-a", at + 3_600_000).await;
    assert_eq!(quiet[0].breached, None);
}
