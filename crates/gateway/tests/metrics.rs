//! `GET /metrics` after real traffic, parsed as Prometheus text: requests by
//! route, status and label, latency histograms, breaker gauges, limiter
//! decisions. The recorder is process-wide, so this file's routes have
//! names no other test uses.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::error::ApiError;
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};

const POLICY: &str = r#"
version = "metrics.1"
default_route = "metered"

[[routes]]
name = "metered"
backend = "embedded"
model = "m"
allowed_classes = ["public"]

[[routes]]
name = "metered-broken"
backend = "embedded"
model = "b"
allowed_classes = ["public"]
retry = { ratio = 0.0, min_per_second = 0.0 }
breaker = { consecutive_failures = 1, open_ms = 60000 }

[categories]
weapons = ['(?i)\bbomb\b']

[[rules]]
id = "refuse-weapons"
when = { categories = ["weapons"] }
then = { action = "refuse", message = "No." }
"#;

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let wanted = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        wanted.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_count_requests_time_answers_and_show_breakers() {
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    backends.insert("metered".into(), Arc::new(Scripted::always(Script::answer("fine thanks", -0.1))));
    let broken = Script::Fail(ApiError::bad_gateway("down on purpose"));
    backends.insert("metered-broken".into(), Arc::new(Scripted::always(broken)));
    let options = RoutingOptions { allow_force_route: true, ..RoutingOptions::default() };
    let routing =
        Routing::with_backends(Policy::from_toml(POLICY).unwrap(), Prices::default(), backends, options).unwrap();
    let base = common::listen(AppState::new(vec![]).with_routing(routing)).await;
    let http = reqwest::Client::new();
    let ask = |prompt: &str, force: Option<&str>| {
        let mut req = http.post(format!("{base}/v1/chat/completions")).json(
            &json!({"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": prompt == "stream"}),
        );
        if let Some(route) = force {
            req = req.header("x-switchyard-force-route", route);
        }
        req.send()
    };
    for _ in 0..2 {
        assert_eq!(ask("hello", None).await.unwrap().status(), StatusCode::OK);
    }
    let streamed = ask("stream", None).await.unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    assert_eq!(ask("how to build a bomb", None).await.unwrap().status(), StatusCode::OK, "a refusal is an answer");
    assert_eq!(ask("hello", Some("metered-broken")).await.unwrap().status(), StatusCode::BAD_GATEWAY);

    let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let answered = [("route", "metered"), ("status", "200"), ("label", "answered")];
    assert_eq!(sample(&text, "switchyard_requests_total", &answered), Some(3.0), "{text}");
    let refused = [("route", "refused"), ("status", "200"), ("label", "refused")];
    assert_eq!(sample(&text, "switchyard_requests_total", &refused), Some(1.0), "{text}");
    let failed = [("status", "502"), ("label", "error")];
    assert!(sample(&text, "switchyard_requests_total", &failed).is_some_and(|n| n >= 1.0), "{text}");
    let route = [("route", "metered")];
    assert_eq!(sample(&text, "switchyard_request_duration_seconds_count", &route), Some(3.0), "{text}");
    assert_eq!(sample(&text, "switchyard_time_to_first_token_seconds_count", &route), Some(3.0), "{text}");
    let tokens = sample(&text, "switchyard_inter_token_latency_seconds_count", &route);
    assert!(tokens.is_some_and(|n| n >= 1.0), "a gap per streamed token after the first: {text}");
    let completion = sample(&text, "switchyard_completion_tokens_total", &route);
    assert!(completion.is_some_and(|n| n >= 3.0), "{text}");
    assert!(sample(&text, "switchyard_prompt_tokens_total", &route).is_some_and(|n| n >= 3.0), "{text}");
    let slowest = [("route", "metered"), ("le", "60")];
    assert_eq!(sample(&text, "switchyard_request_duration_seconds_bucket", &slowest), Some(3.0), "buckets: {text}");
    assert_eq!(sample(&text, "switchyard_breaker_open", &[("route", "metered")]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "switchyard_breaker_open", &[("route", "metered-broken")]), Some(1.0), "{text}");
}
