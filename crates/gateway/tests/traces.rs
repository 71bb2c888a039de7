//! OpenTelemetry traces against a real OTLP/HTTP receiver on loopback that
//! decodes the protobuf: one trace per request, the client's
//! `traceparent` honoured and passed on to the upstream, a span per stage
//! under the root, in time order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use switchyard_gateway::backend::scripted::{Script, Scripted};
use switchyard_gateway::backend::{Backend, Upstream};
use switchyard_gateway::observe::trace::Tracing;
use switchyard_gateway::routing::{Routing, RoutingOptions};
use switchyard_gateway::AppState;
use switchyard_router::{Policy, Prices};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_trace_per_request_with_a_span_per_stage() {
    // The collector.
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let collector = serve(Router::new().route(
        "/v1/traces",
        post({
            let spans = spans.clone();
            move |headers: HeaderMap, body: Bytes| async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                for rs in req.resource_spans {
                    let resource = rs.resource.unwrap();
                    assert!(resource.attributes.iter().any(|a| a.key == "service.name"), "{resource:?}");
                    spans.lock().unwrap().extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
                }
                Json(json!({}))
            }
        }),
    ))
    .await;
    // The upstream: answers, and keeps the traceparent it was sent.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let upstream = serve(Router::new().route(
        "/v1/chat/completions",
        post({
            let seen = seen.clone();
            move |headers: HeaderMap| async move {
                let parent = headers.get("traceparent").map(|v| v.to_str().unwrap().to_string());
                seen.lock().unwrap().push(parent.unwrap_or_default());
                Json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))
            }
        }),
    ))
    .await;

    let policy = Policy::from_toml(&format!(
        r#"
version = "traces.1"
default_route = "tr-dead"

[[routes]]
name = "tr-dead"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}
fallback = ["tr-up"]

[[routes]]
name = "tr-up"
backend = "upstream"
model = "m"
url = "{upstream}/v1"
allowed_classes = ["public"]

[[routes]]
name = "tr-local"
backend = "embedded"
model = "s"
allowed_classes = ["public"]

[[rules]]
id = "batch-local"
when = {{ lane = "batch" }}
then = {{ action = "route", route = "tr-local" }}
"#
    ))
    .unwrap();
    let client = reqwest::Client::new();
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    for route in ["tr-dead", "tr-up"] {
        let r = policy.route(route).unwrap();
        backends.insert(route.into(), Arc::new(Upstream::new(r, r.upstream_urls()[0], client.clone()).unwrap()));
    }
    let paced = Script::answer("one two three", -0.1).paced(Duration::from_millis(10), Duration::from_millis(10));
    backends.insert("tr-local".into(), Arc::new(Scripted::always(paced)));
    let routing = Routing::with_backends(policy, Prices::default(), backends, RoutingOptions::default()).unwrap();
    let mut state = AppState::new(vec![]).with_routing(routing);
    state.traces = Some(Arc::new(Tracing::otlp(&collector, "trace-node", Duration::from_millis(100))));
    let base = common::listen(state).await;

    let ask = |lane: &str, parent: Option<String>| {
        let mut req = client.post(format!("{base}/v1/chat/completions")).header("x-switchyard-lane", lane).json(
            &json!({"model": "auto", "stream": lane == "batch", "messages": [{"role": "user", "content": "hi"}]}),
        );
        if let Some(p) = parent {
            req = req.header("traceparent", p);
        }
        req.send()
    };
    let resp = ask("interactive", Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))).await.unwrap();
    assert_eq!(resp.headers()["x-switchyard-route"], "tr-up");
    resp.bytes().await.unwrap();
    let resp = ask("batch", None).await.unwrap();
    assert_eq!(resp.headers()["x-switchyard-route"], "tr-local");
    assert!(resp.text().await.unwrap().ends_with("[DONE]\n\n"));

    let mut all = Vec::new();
    for _ in 0..100 {
        all = spans.lock().unwrap().clone();
        if all.iter().filter(|s| s.name == "chat.completions").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let roots: Vec<&Span> = all.iter().filter(|s| s.name == "chat.completions").collect();
    assert_eq!(roots.len(), 2, "a root span per request: {all:#?}");

    // The client's trace: its root is the client span's child.
    let root = roots.iter().find(|s| hex(&s.trace_id) == CLIENT_TRACE).expect("the client's trace id is kept");
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN);
    let children = |root: &Span| {
        let mut c: Vec<Span> = all.iter().filter(|s| s.parent_span_id == root.span_id).cloned().collect();
        c.sort_by_key(|s| s.start_time_unix_nano);
        c
    };
    let stages = children(root);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for stage in ["auth", "admit", "classify", "decide", "attempt", "fallback", "upstream", "record"] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    assert_eq!(names.iter().filter(|n| **n == "upstream").count(), 2, "one call per route tried: {names:?}");
    assert_eq!(names.iter().filter(|n| **n == "record").count(), 1, "recorded once: {names:?}");
    for s in &stages {
        assert_eq!(s.trace_id, root.trace_id);
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano, "{} starts inside its root", s.name);
        assert!(s.end_time_unix_nano <= root.end_time_unix_nano, "{} ends inside its root", s.name);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    let at = |name: &str| stages.iter().position(|s| s.name == name).unwrap();
    assert!(at("auth") < at("classify") && at("classify") < at("attempt") && at("attempt") < at("fallback"));
    // The upstream that answered was told the trace, with its call's span as the parent.
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "the dead route never answered");
    let answered = stages.iter().rfind(|s| s.name == "upstream").unwrap();
    assert_eq!(sent[0], format!("00-{CLIENT_TRACE}-{}-01", hex(&answered.span_id)));

    // A new trace for a request without a parent; the engine's stages from its clock.
    let root = roots.iter().find(|s| hex(&s.trace_id) != CLIENT_TRACE).unwrap();
    assert!(root.parent_span_id.is_empty(), "no parent");
    let names: Vec<String> = children(root).iter().map(|s| s.name.clone()).collect();
    for stage in ["queue", "prefill", "decode", "attempt", "record"] {
        assert!(names.iter().any(|n| n == stage), "{stage} missing from {names:?}");
    }
    let attr = |s: &Span, key: &str| s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone());
    assert!(attr(root, "switchyard.route").is_some() && attr(root, "http.response.status_code").is_some());
}
