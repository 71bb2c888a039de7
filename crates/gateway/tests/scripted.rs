//! The routing state machine on scripted backends (no model): breakers,
//! retries, fallbacks, cascades, verifier slots, time limits, forced routes
//! and panics, each in milliseconds. The same paths run against a real
//! model in `routing.rs`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::Backend;
use switchyard_gateway::error::{ApiError, CONTEXT_LENGTH_EXCEEDED};
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};

const ROUTES: &str = r#"
version = "scripted.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "fast-model"
allowed_classes = ["public", "internal", "regulated"]
fallback = ["big"]
ttft_timeout_ms = 2000
total_timeout_ms = 5000
retry = { ratio = 1.0, min_per_second = 0.0 }
breaker = { consecutive_failures = 1, open_ms = 300 }

[[routes]]
name = "big"
backend = "embedded"
model = "big-model"
allowed_classes = ["public", "internal", "regulated"]
ttft_timeout_ms = 2000
total_timeout_ms = 5000

[[routes]]
name = "alone"
backend = "embedded"
model = "alone-model"
allowed_classes = ["public", "internal", "regulated"]
retry = { ratio = 0.0, min_per_second = 0.0 }
breaker = { consecutive_failures = 1, open_ms = 300 }
ttft_timeout_ms = 400
total_timeout_ms = 400
stall_timeout_ms = 5000

[categories]
weapons = ['(?i)\bbomb\b']
self_harm = ['(?i)hurt myself']

[[rules]]
id = "refuse-weapons"
when = { categories = ["weapons"] }
then = { action = "refuse", message = "I can't help with that." }

[[rules]]
id = "handoff-self-harm"
when = { categories = ["self_harm"] }
then = { action = "handoff", message = "A person will get back to you." }
"#;

struct Server {
    base: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

async fn serve(rules: &str, backends: Vec<(&str, Arc<Scripted>)>, options: RoutingOptions) -> Server {
    let policy = Policy::from_toml(&format!("{ROUTES}\n{rules}")).unwrap();
    let mut map: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    for name in ["local", "big", "alone"] {
        map.insert(name.into(), Arc::new(Scripted::always(Script::answer("unused", -0.1))));
    }
    for (name, backend) in backends {
        map.insert(name.into(), backend);
    }
    let data = tempfile::tempdir().unwrap();
    let store = switchyard_store::Store::open(&data.path().join("s.db")).await.unwrap();
    let routing = Routing::with_backends(policy, Prices::default(), map, options).unwrap();
    let state = AppState::new(vec![]).with_routing(routing).with_store(store);
    let base = common::listen(state).await;
    Server { base, http: reqwest::Client::new(), _data: data }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Server {
    async fn ask(&self, prompt: &str, extra: Value, headers: &[(&str, &str)]) -> Answer {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let mut req = self.http.post(format!("{}/v1/chat/completions", self.base)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        Answer { status, headers, body: resp.text().await.unwrap() }
    }

    async fn decision(&self, a: &Answer) -> Value {
        let url = format!("{}/admin/decisions/{}", self.base, a.header("x-switchyard-request-id"));
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }
}

fn steps(record: &Value) -> Vec<String> {
    record["execution"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["route"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect()
}

fn too_long() -> ApiError {
    ApiError::invalid(Some("messages".into()), "the prompt is 9000 tokens; this model takes 2048")
        .with_code(CONTEXT_LENGTH_EXCEEDED)
}

fn unavailable() -> ApiError {
    ApiError::bad_gateway("scripted outage")
}

/// A prompt that does not fit the local context moves to the fallback with
/// a larger one, but costs the local route nothing: never retried there,
/// never a breaker failure, so other clients keep their local route.
#[tokio::test]
async fn over_long_prompts_never_open_a_breaker_or_spend_retries() {
    let local =
        Arc::new(Scripted::new(
            |n| if n < 10 { Script::Fail(too_long()) } else { Script::answer("local answer", -0.1) },
        ));
    let big = Arc::new(Scripted::always(Script::answer("big answer", -0.1)));
    let s = serve("", vec![("local", local.clone()), ("big", big.clone())], RoutingOptions::default()).await;
    for _ in 0..10 {
        let a = s.ask("a very long prompt", json!({}), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-route")), (StatusCode::OK, "big"), "{}", a.body);
        assert_eq!(steps(&s.decision(&a).await), ["local:failed", "big:answered"], "no same-route retry");
    }
    assert_eq!(local.calls(), 10, "one attempt each, no retry");
    let a = s.ask("a short prompt", json!({}), &[]).await;
    assert_eq!(a.header("x-switchyard-route"), "local", "ten over-long prompts left the breaker closed: {}", a.body);

    // With nowhere to go, the client hears why, as a 400.
    let alone = Arc::new(Scripted::always(Script::Fail(too_long())));
    let s = serve(ALONE, vec![("alone", alone.clone())], RoutingOptions::default()).await;
    for _ in 0..3 {
        let a = s.ask("long", json!({}), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.json()["error"]["code"], CONTEXT_LENGTH_EXCEEDED);
    }
    assert_eq!(alone.calls(), 3, "the breaker (1 failure opens it) never opened and nothing was retried");
}

/// Every other 4xx the request causes ends the chain at once: no retry, no
/// fallback, no breaker failure.
#[tokio::test]
async fn a_request_error_is_answered_as_is_and_costs_the_route_nothing() {
    let bad_format =
        ApiError::invalid(Some("response_format".into()), "bad schema").with_code("invalid_response_format");
    let local =
        Arc::new(Scripted::new(
            move |n| if n < 5 { Script::Fail(bad_format.clone()) } else { Script::answer("fine", -0.1) },
        ));
    let big = Arc::new(Scripted::always(Script::answer("big answer", -0.1)));
    let s = serve("", vec![("local", local.clone()), ("big", big.clone())], RoutingOptions::default()).await;
    for _ in 0..5 {
        let a = s.ask("hi", json!({}), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json()["error"]["code"], "invalid_response_format");
    }
    assert_eq!((local.calls(), big.calls()), (5, 0));
    assert_eq!(s.ask("hi", json!({}), &[]).await.header("x-switchyard-route"), "local");
}

/// The route's own failures: retried within budget, then the fallback; the
/// breaker opens after its consecutive failures, skips the route while
/// open, then lets one probe through and closes on its success.
#[tokio::test]
async fn route_failures_retry_fall_back_open_the_breaker_and_recover() {
    let local =
        Arc::new(Scripted::new(
            |n| if n < 2 { Script::Fail(unavailable()) } else { Script::answer("local again", -0.1) },
        ));
    let big = Arc::new(Scripted::always(Script::answer("big answer", -0.1)));
    let s = serve("", vec![("local", local.clone()), ("big", big.clone())], RoutingOptions::default()).await;
    let a = s.ask("hi", json!({}), &[]).await;
    assert_eq!(a.header("x-switchyard-route"), "big");
    assert_eq!(steps(&s.decision(&a).await), ["local:retried", "local:failed", "big:answered"]);
    assert!(
        a.header("x-switchyard-reason").contains("local retried; local failed (backend_error), fell back"),
        "{}",
        a.header("x-switchyard-reason")
    );
    // The failure (after its retry) opened it: skipped without a call.
    let a = s.ask("hi", json!({}), &[]).await;
    assert_eq!(steps(&s.decision(&a).await), ["local:skipped", "big:answered"]);
    assert_eq!(local.calls(), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let a = s.ask("hi", json!({}), &[]).await;
    assert_eq!((a.header("x-switchyard-route"), local.calls()), ("local", 3), "the probe succeeded");
    assert_eq!(s.ask("hi", json!({}), &[]).await.header("x-switchyard-route"), "local", "and closed the breaker");
}

/// A probe whose request is dropped mid-flight (the client hung up) must
/// not leave the breaker half-open: the route recovers within its open_ms.
#[tokio::test]
async fn a_dropped_probe_does_not_keep_the_route_out() {
    let alone = Arc::new(Scripted::new(|n| match n {
        0 => Script::Fail(unavailable()),
        1 => Script::Hang,
        _ => Script::answer("recovered", -0.1),
    }));
    let s = serve(ALONE, vec![("alone", alone.clone())], RoutingOptions::default()).await;
    let a = s.ask("hi", json!({}), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert_eq!(alone.calls(), 1, "no retry budget");
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The probe hangs; the client gives up on it.
    let probe = s.http.post(format!("{}/v1/chat/completions", s.base)).timeout(Duration::from_millis(200));
    let probe = probe.json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})).send().await;
    assert!(probe.is_err_and(|e| e.is_timeout()));
    assert_eq!(alone.calls(), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = s.ask("hi", json!({}), &[]).await;
    assert_eq!((a.status, a.header("x-switchyard-route")), (StatusCode::OK, "alone"), "{}", a.body);
    assert!(a.body.contains("recovered"));
}

const ALONE: &str = "[[rules]]\nid = \"all\"\nthen = { action = \"route\", route = \"alone\" }\n";

const CASCADE: &str = r#"
[[rules]]
id = "cascade"
then = { action = "cascade", fast = "local", escalate = "big", signal = "mean", threshold = -0.5, hold_tokens = 2 }
"#;

#[tokio::test]
async fn the_cascade_escalates_below_its_threshold_and_keeps_answers_above() {
    let local = Arc::new(Scripted::new(|n| {
        if n % 2 == 0 {
            Script::answer("an unsure answer here", -2.0)
        } else {
            Script::answer("a sure answer here", -0.1)
        }
    }));
    let big = Arc::new(Scripted::always(Script::answer("the big answer", -0.1)));
    let s = serve(CASCADE, vec![("local", local.clone()), ("big", big.clone())], RoutingOptions::default()).await;
    for stream in [false, true] {
        let a = s.ask("q", json!({"stream": stream}), &[]).await;
        assert_eq!(a.header("x-switchyard-route"), "big");
        assert!(!a.body.contains("unsure"), "nothing of the fast answer was sent: {}", a.body);
        assert!(a.body.contains("big"));
        let rec = s.decision(&a).await;
        assert_eq!(steps(&rec), ["local:escalated", "big:answered"]);
        assert_eq!(rec["execution"]["cascade"]["value"].as_f64(), Some(-2.0));
        let a = s.ask("q", json!({"stream": stream}), &[]).await;
        assert_eq!(a.header("x-switchyard-route"), "local");
        assert!(a.body.contains("sure"), "{}", a.body);
        if stream {
            assert!(a.body.trim_end().ends_with("data: [DONE]"), "held tokens and the rest all arrive: {}", a.body);
        }
    }
    assert_eq!(big.calls(), 2);
}

/// Verifies are bounded per model: past `max_verifies` at once, a cascade
/// escalates (or answers 429, as its rule says), never runs another.
#[tokio::test]
async fn verifies_past_the_bound_escalate_or_are_refused_as_the_rule_says() {
    let rule = CASCADE.replace("signal = \"mean\"", "signal = \"verify_mean\"");
    for (busy, expect) in [("escalate", StatusCode::OK), ("reject", StatusCode::TOO_MANY_REQUESTS)] {
        let local = Arc::new(Scripted::always(Script::answer("fast answer", -0.1)));
        let big = Arc::new(
            Scripted::always(Script::answer("big answer", -0.1)).scoring(|_| (Duration::from_millis(300), Ok(-0.1))),
        );
        let rule = rule.replace("hold_tokens = 2", &format!("hold_tokens = 2, when_verifier_busy = \"{busy}\""));
        let s = serve(
            &rule,
            vec![("local", local.clone()), ("big", big.clone())],
            RoutingOptions { max_verifies: 1, ..Default::default() },
        )
        .await;
        let answers = futures::future::join_all((0..4).map(|_| s.ask("q", json!({}), &[]))).await;
        assert_eq!(big.scoring_peak(), 1, "never more verifies at once than the bound");
        let kept = answers.iter().filter(|a| a.header("x-switchyard-route") == "local").count();
        assert_eq!(kept, 1, "the one verified answer was confident and kept");
        for a in answers.iter().filter(|a| a.header("x-switchyard-route") != "local") {
            assert_eq!(a.status, expect, "{busy}: {}", a.body);
            if expect == StatusCode::OK {
                assert_eq!(a.header("x-switchyard-route"), "big");
                let check = &s.decision(a).await["execution"]["cascade"];
                assert!(check["unjudged"].as_str().unwrap().contains("verifier slots busy"), "{check}");
            } else {
                assert_eq!(a.json()["error"]["code"], "verifier_busy");
                assert_eq!(a.header("retry-after"), "1");
            }
        }
    }
}

/// `total_timeout_ms` holds after the first token too: a whole answer fails
/// with a 504 naming the limit, a stream ends with an error event naming it.
#[tokio::test]
async fn the_total_limit_holds_on_embedded_answers_and_streams() {
    // 20 tokens 50 ms apart: never stalls, but takes 1 s against a 400 ms limit.
    let slow = Script::answer(&"word ".repeat(20), -0.1).paced(Duration::ZERO, Duration::from_millis(50));
    // A fresh server for each: a timeout is the route's fault, and opens its breaker.
    let alone = || vec![("alone", Arc::new(Scripted::always(slow.clone())))];
    let s = serve(ALONE, alone(), RoutingOptions::default()).await;
    let a = s.ask("q", json!({}), &[]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert!(
        a.json()["error"]["message"].as_str().unwrap().contains("total limit of 400 ms (total_timeout_ms)"),
        "{}",
        a.body
    );
    let s = serve(ALONE, alone(), RoutingOptions::default()).await;
    let a = s.ask("q", json!({"stream": true}), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("total limit of 400 ms (total_timeout_ms)"), "{}", a.body);
    assert!(!a.body.contains("[DONE]"), "the stream was cut off: {}", a.body);
}

/// Forcing a route is off unless the server allows it; allowed, it still
/// yields to the refuse and handoff rules.
#[tokio::test]
async fn a_forced_route_needs_permission_and_never_skips_safety_rules() {
    let s = serve("", vec![], RoutingOptions::default()).await;
    let a = s.ask("hi", json!({}), &[("x-switchyard-force-route", "big")]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(a.json()["error"]["param"], "x-switchyard-force-route");
    assert_eq!(a.json()["error"]["code"], "force_route_not_allowed");

    let s = serve("", vec![], RoutingOptions { allow_force_route: true, ..Default::default() }).await;
    let a = s.ask("hi", json!({}), &[("x-switchyard-force-route", "big")]).await;
    assert_eq!((a.status, a.header("x-switchyard-route")), (StatusCode::OK, "big"));
    let a = s.ask("How do I build a bomb?", json!({}), &[("x-switchyard-force-route", "big")]).await;
    assert_eq!((a.header("x-switchyard-route"), a.header("x-switchyard-label")), ("refused", "refused"), "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["refusal"], "I can't help with that.");
    let a = s.ask("I want to hurt myself", json!({}), &[("x-switchyard-force-route", "big")]).await;
    assert_eq!((a.header("x-switchyard-route"), a.header("x-switchyard-label")), ("handoff", "human-escalated"));
    assert!(a.header("x-switchyard-handoff-id").starts_with("handoff-"));
}

/// A panic in a handler becomes an OpenAI-shaped 500; the server goes on.
#[tokio::test]
async fn a_panicking_backend_gets_a_500_and_the_server_keeps_serving() {
    let alone = Arc::new(Scripted::new(|n| if n == 0 { Script::Panic } else { Script::answer("still here", -0.1) }));
    let s = serve(ALONE, vec![("alone", alone)], RoutingOptions::default()).await;
    let a = s.ask("q", json!({}), &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.json()["error"]["type"], "server_error", "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("internal error"));
    let a = s.ask("q", json!({}), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("still here"));
}

/// The same total limit on an upstream: a whole answer whose headers come
/// in time but whose body does not fails with a 504 (the headers and the
/// body no longer get a limit each); a stream is cut with an error event.
#[tokio::test]
async fn the_total_limit_holds_on_upstream_answers_and_streams() {
    use axum::response::IntoResponse;
    async fn slow(axum::Json(body): axum::Json<Value>) -> axum::response::Response {
        // Headers after 250 ms, then the body 250 ms later (or, streaming, a chunk every 50 ms for 1 s).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let stream = body["stream"] == true;
        let chunks = futures::stream::iter(0..20).then(move |i| async move {
            tokio::time::sleep(Duration::from_millis(if stream { 50 } else { 250 })).await;
            let text = if stream {
                format!("data: {}\n\n", json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]}))
            } else if i == 0 {
                json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"}}]}).to_string()
            } else {
                String::new()
            };
            Ok::<_, std::io::Error>(bytes::Bytes::from(text))
        });
        let chunks = chunks.take(if stream { 20 } else { 1 });
        let kind = if stream { "text/event-stream" } else { "application/json" };
        ([("content-type", kind)], axum::body::Body::from_stream(chunks)).into_response()
    }
    use futures::StreamExt;
    let mock = axum::Router::new().route("/v1/chat/completions", axum::routing::post(slow));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, mock).await.unwrap() });
    let policy = format!(
        "version = \"up.1\"\ndefault_route = \"up\"\n[[routes]]\nname = \"up\"\nbackend = \"upstream\"\nmodel = \"m\"\nurl = \"{upstream}\"\n\
         allowed_classes = [\"public\", \"internal\", \"regulated\"]\nttft_timeout_ms = 400\ntotal_timeout_ms = 400\n\
         retry = {{ ratio = 0.0, min_per_second = 0.0 }}\nbreaker = {{ consecutive_failures = 100 }}\n"
    );
    let routing = Routing::new(
        Policy::from_toml(&policy).unwrap(),
        Prices::default(),
        &Default::default(),
        RoutingOptions::default(),
    )
    .unwrap();
    let state = AppState::new(vec![]).with_routing(routing);
    let s =
        Server { base: common::listen(state).await, http: reqwest::Client::new(), _data: tempfile::tempdir().unwrap() };

    let a = s.ask("q", json!({}), &[]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert!(a.body.contains("total limit of 400 ms (total_timeout_ms)"), "{}", a.body);
    let a = s.ask("q", json!({"stream": true}), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("w0 ") && a.body.contains("total limit of 400 ms (total_timeout_ms)"), "{}", a.body);
    assert!(!a.body.contains("w19"), "the stream was cut off: {}", a.body);
}
