//! Policy routing end to end: a real embedded model (SmolLM2) as the local
//! route, and a local mock speaking OpenAI's wire format as the "cloud",
//! with routes that fail in each way a fallback must handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::routing::RoutingOptions;
use switchyard_gateway::{router, AppState};
use switchyard_router::{Policy, Prices};

#[path = "common/loopback.rs"]
mod loopback;

/// What the mock upstream saw: hits per mode, last model and auth header.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    model: Option<String>,
    auth: Option<String>,
}

type Mock = Arc<Mutex<Seen>>;

async fn mock_chat(
    State(seen): State<Mock>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    {
        let mut s = seen.lock().unwrap();
        *s.hits.entry(mode.clone()).or_default() += 1;
        s.model = body["model"].as_str().map(str::to_string);
        s.auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let sse = |parts: Vec<Result<Bytes, std::io::Error>>, pause_after_first: Duration| {
        let mut parts = parts.into_iter();
        let first = parts.next();
        let s = futures::stream::iter(first)
            .chain(
                futures::stream::once(tokio::time::sleep(pause_after_first))
                    .filter_map(|_| async { None::<Result<Bytes, std::io::Error>> }),
            )
            .chain(futures::stream::iter(parts));
        ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
    };
    match mode.as_str() {
        // First chunk at once, then silence longer than the route's stall limit.
        "stall" => {
            sse(vec![Ok(chunk(json!({"role": "assistant", "content": "partial"}), Value::Null)), Ok(chunk(json!({}), json!("stop")))], Duration::from_secs(5))
        }
        // The connection breaks after the first chunk.
        "cut" => sse(vec![Ok(chunk(json!({"role": "assistant", "content": "partial"}), Value::Null)), Err(std::io::Error::other("cut"))], Duration::ZERO),
        "malformed" if body["stream"] == true => ([("content-type", "text/event-stream")], "garbage\n\n").into_response(),
        "malformed" => ([("content-type", "application/json")], "{not json").into_response(),
        // Points at a working address; a gateway must not follow it.
        "moved" => (StatusCode::TEMPORARY_REDIRECT, [("location", "/ok/v1/chat/completions")]).into_response(),
        "fail" | "flaky" => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})))
                .into_response()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({})).into_response()
        }
        _ if body["stream"] == true => {
            let chunk = |delta: Value, finish: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            let sse = [
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "cloud"}), Value::Null),
                chunk(json!({}), json!("stop")),
            ]
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect::<String>()
                + "data: [DONE]\n\n";
            ([("content-type", "text/event-stream")], sse).into_response()
        }
        _ => Json(json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "cloud says hi"}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        }))
        .into_response(),
    }
}

fn policy(mock: &str, peer: &str) -> String {
    format!(
        r#"
version = "test.1"
default_route = "cloud"

[[routes]]
name = "local"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public", "internal", "regulated"]
ttft_timeout_ms = 30000
total_timeout_ms = 60000

# The same model again, as the escalation route that verifies "local".
[[routes]]
name = "local-verifier"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public", "internal", "regulated"]
ttft_timeout_ms = 30000
total_timeout_ms = 60000

[[routes]]
name = "cloud"
backend = "upstream"
model = "gpt-mock"
url = "{mock}/ok/v1"
api_key_env = "SWITCHYARD_TEST_CLOUD_KEY"
allowed_classes = ["public", "internal"]
fallback = ["local"]

[[routes]]
name = "broken"
backend = "upstream"
model = "m"
url = "{mock}/fail/v1"
allowed_classes = ["public"]
fallback = ["local"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}
breaker = {{ consecutive_failures = 3, open_ms = 60000 }}

[[routes]]
name = "flaky"
backend = "upstream"
model = "m"
url = "{mock}/flaky/v1"
allowed_classes = ["public"]
fallback = ["local"]
retry = {{ ratio = 0.5, min_per_second = 0.0 }}
breaker = {{ consecutive_failures = 1000, open_ms = 1 }}

# The local model, allowed no time for a first token: a shadow here must
# time out like any attempt on the route.
[[routes]]
name = "hasty"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public"]
ttft_timeout_ms = 1
total_timeout_ms = 1

[[routes]]
name = "slow"
backend = "upstream"
model = "m"
url = "{mock}/slow/v1"
allowed_classes = ["public"]
fallback = ["local"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}
ttft_timeout_ms = 300
total_timeout_ms = 600

[[routes]]
name = "dead"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public"]
fallback = ["local"]

[[routes]]
name = "stall"
backend = "upstream"
model = "m"
url = "{mock}/stall/v1"
allowed_classes = ["public"]
stall_timeout_ms = 300

[[routes]]
name = "cut"
backend = "upstream"
model = "m"
url = "{mock}/cut/v1"
allowed_classes = ["public"]

[[routes]]
name = "malformed"
backend = "upstream"
model = "m"
url = "{mock}/malformed/v1"
allowed_classes = ["public"]
fallback = ["local"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}

[[routes]]
name = "moved"
backend = "upstream"
model = "m"
url = "{mock}/moved/v1"
allowed_classes = ["public"]
fallback = ["local"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}

[[routes]]
name = "peer"
backend = "upstream"
model = "smollm2-135m"
url = "{peer}/v1"
allowed_classes = ["public"]

[classes]
regulated = ["\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b"]

[[families]]
name = "mirrored"

[[families]]
name = "mirrored-to-broken"

[[families]]
name = "mirrored-to-hasty"

[categories]
weapons = ["\\bbomb\\b"]
breakme = ["BREAKME"]
slowme = ["SLOWME"]
deadme = ["DEADME"]
flakyme = ["FLAKYME"]
handme = ["HANDME"]
stallme = ["STALLME"]
cutme = ["CUTME"]
malformedme = ["MALFORMEDME"]
peerme = ["PEERME"]
unsure = ["UNSURE"]
sure = ["\\bSURE\\b"]
verifyme = ["VERIFYME"]
localme = ["LOCALME"]

[[rules]]
id = "refuse-weapons"
when = {{ categories = ["weapons"] }}
then = {{ action = "refuse", message = "I can't help with that." }}

[[rules]]
id = "to-broken"
when = {{ categories = ["breakme"] }}
then = {{ action = "route", route = "broken" }}

[[rules]]
id = "to-slow"
when = {{ categories = ["slowme"] }}
then = {{ action = "route", route = "slow" }}

[[rules]]
id = "to-flaky"
when = {{ categories = ["flakyme"] }}
then = {{ action = "route", route = "flaky" }}

[[rules]]
id = "to-dead"
when = {{ categories = ["deadme"] }}
then = {{ action = "route", route = "dead" }}

[[rules]]
id = "handoff"
when = {{ categories = ["handme"] }}
then = {{ action = "handoff", message = "A person will get back to you." }}

[[rules]]
id = "to-stall"
when = {{ categories = ["stallme"] }}
then = {{ action = "route", route = "stall" }}

[[rules]]
id = "to-cut"
when = {{ categories = ["cutme"] }}
then = {{ action = "route", route = "cut" }}

[[rules]]
id = "to-malformed"
when = {{ categories = ["malformedme"] }}
then = {{ action = "route", route = "malformed" }}

[[rules]]
id = "to-peer"
when = {{ categories = ["peerme"] }}
then = {{ action = "route", route = "peer" }}

# Always escalates: no real answer has a mean logprob of -1e-9 or more.
[[rules]]
id = "cascade-escalates"
when = {{ categories = ["unsure"] }}
then = {{ action = "cascade", fast = "local", escalate = "cloud", threshold = -0.000000001, hold_tokens = 3 }}

# Never escalates: every answer is far above a mean logprob of -1000.
[[rules]]
id = "cascade-keeps"
when = {{ categories = ["sure"] }}
then = {{ action = "cascade", fast = "local", escalate = "cloud", threshold = -1000.0, hold_tokens = 3 }}

# Scored by the escalation model, and every real score is below -1e-9: escalates.
[[rules]]
id = "cascade-verified"
when = {{ categories = ["verifyme"] }}
then = {{ action = "cascade", fast = "local", escalate = "local-verifier", signal = "verify_mean", threshold = -0.000000001 }}

[[rules]]
id = "mirrored"
when = {{ family = "mirrored" }}
then = {{ action = "route", route = "local" }}
shadow = {{ route = "cloud", fraction = 1.0 }}

[[rules]]
id = "mirrored-to-broken"
when = {{ family = "mirrored-to-broken" }}
then = {{ action = "route", route = "local" }}
shadow = {{ route = "broken", fraction = 1.0 }}

[[rules]]
id = "mirrored-to-hasty"
when = {{ family = "mirrored-to-hasty" }}
then = {{ action = "route", route = "local" }}
shadow = {{ route = "hasty", fraction = 1.0 }}

[[rules]]
id = "plain-local"
when = {{ categories = ["localme"] }}
then = {{ action = "route", route = "local" }}
"#
    )
}

struct Setup {
    base: String,
    seen: Mock,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

async fn setup() -> Setup {
    let seen: Mock = Arc::default();
    let mock = Router::new().route("/{mode}/v1/chat/completions", post(mock_chat)).with_state(seen.clone());
    let mock_base = loopback::serve(mock).await;
    let engine = loopback::smollm2().await;
    // The cloud route reads its API key from this variable.
    std::env::set_var("SWITCHYARD_TEST_CLOUD_KEY", "k-123");
    // A second switchyard on loopback, serving the same model without a
    // policy: the "peer" route is a real OpenAI-compatible upstream.
    let peer_state = AppState::new(vec![engine]);
    let models = peer_state.models.clone();
    let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_base = format!("http://{}", peer_listener.local_addr().unwrap());
    let peer = router(Arc::new(peer_state), 1 << 20);
    tokio::spawn(async move { axum::serve(peer_listener, peer).await.unwrap() });
    let prices = Prices::from_toml(
        "[prices.cloud]\ninput_per_1m = 1000\noutput_per_1m = 2000\n[prices.smollm2-135m]\nhardware_per_hour = 3.6\nidle_watts = 10\nbusy_watts = 100\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = switchyard_store::Store::open(&data.path().join("switchyard.db")).await.unwrap();
    let state = AppState {
        models,
        routing: None,
        store: None,
        recorder: None,
        keys: None,
        limiter: Default::default(),
        created: 0,
        node: "test-node".into(),
        telemetry: true,
        traces: None,
        payload_keys: None,
    }
    .with_policy(
        Policy::from_toml(&policy(&mock_base, &peer_base)).unwrap(),
        prices,
        RoutingOptions { allow_force_route: true, ..Default::default() },
    )
    .unwrap()
    .with_store(store);
    let app = router(Arc::new(state), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Setup { base, seen, http: reqwest::Client::new(), _data: data }
}

impl Setup {
    async fn ask(&self, prompt: &str, extra: Value) -> (StatusCode, HeaderMap, String) {
        self.ask_with(prompt, extra, &[]).await
    }

    async fn ask_with(&self, prompt: &str, extra: Value, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let mut req = self.http.post(format!("{}/v1/chat/completions", self.base)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn decision(&self, h: &HeaderMap) -> Value {
        self.get(&format!("/admin/decisions/{}", header(h, "x-switchyard-request-id"))).await.1
    }

    fn hits(&self, mode: &str) -> usize {
        self.seen.lock().unwrap().hits.get(mode).copied().unwrap_or(0)
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test]
async fn routes_follow_policy_with_headers_boundaries_and_fallbacks() {
    let s = setup().await;

    // Public prompt: the default route, the cloud, with the route's model and key.
    let (status, h, body) = s.ask("Say hello.", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((header(&h, "x-switchyard-route"), header(&h, "x-switchyard-label")), ("cloud", "answered"));
    assert!(header(&h, "x-switchyard-policy").starts_with("test.1+"));
    assert!(header(&h, "x-switchyard-reason").contains("default route"));
    assert!(body.contains("cloud says hi"));
    // Priced per token: 3 prompt tokens at $1000/1M plus 3 completion tokens at $2000/1M.
    let rec = s.decision(&h).await;
    assert_eq!((rec["prompt_tokens"].as_u64(), rec["completion_tokens"].as_u64()), (Some(3), Some(3)));
    assert!((rec["cost_usd"].as_f64().unwrap() - 0.009).abs() < 1e-12, "{rec}");
    assert!(rec["energy_wh"].is_null());
    {
        let seen = s.seen.lock().unwrap();
        assert_eq!(seen.model.as_deref(), Some("gpt-mock"));
        assert_eq!(seen.auth.as_deref(), Some("Bearer k-123"));
    }

    // Streaming passes the upstream's SSE through.
    let (status, h, body) = s.ask("Say hello.", json!({"stream": true})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "cloud"));
    assert!(body.contains("\"content\":\"cloud\"") && body.trim_end().ends_with("data: [DONE]"), "{body}");

    // Regulated data never reaches the cloud: answered locally instead.
    let before = s.hits("ok");
    let (status, h, body) = s.ask("My SSN is 123-45-6789.", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&h, "x-switchyard-route"), "local");
    assert!(header(&h, "x-switchyard-reason").contains("instead of cloud"), "{h:?}");
    assert_eq!(s.hits("ok"), before, "the cloud saw a regulated prompt");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["model"], "smollm2-135m");

    // ... and the decision is on record under the request id.
    let id = header(&h, "x-switchyard-request-id");
    let rec: Value = s.http.get(format!("{}/admin/decisions/{id}", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(rec["route"], "local");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["decision"]["data_class"], "regulated");
    assert_eq!(rec["decision"]["excluded"], json!(["cloud"]));
    assert!(rec["policy_id"].as_str().unwrap().starts_with("test.1+"));
    // Its cost, from the engine's token counts and the model's hardware price.
    assert!(rec["prompt_tokens"].as_u64().unwrap() > 0 && rec["completion_tokens"].as_u64().unwrap() > 0, "{rec}");
    assert!(rec["cost_usd"].as_f64().unwrap() > 0.0 && rec["energy_wh"].as_f64().unwrap() > 0.0, "{rec}");
    // What served it, and the engine's own clock: queue, prefill, decode.
    assert_eq!(rec["model"], "smollm2-135m");
    assert!(rec["runtime"].as_str().unwrap().starts_with("llama.cpp"), "{rec}");
    for field in ["queue_ms", "prefill_ms", "decode_ms", "ttft_ms", "total_ms"] {
        assert!(rec[field].as_f64().is_some(), "{field}: {rec}");
    }
    assert!(rec["prefill_ms"].as_f64().unwrap() > 0.0, "a prompt takes time to read: {rec}");
    // The same prompt again finds all but its last token in the engine's KV
    // cache (the prefix cache): the answer's timings and the record say so.
    let (status, h, body) = s.ask("My SSN is 123-45-6789.", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timings = serde_json::from_str::<Value>(&body).unwrap()["timings"].clone();
    let prompt = rec["prompt_tokens"].as_u64().unwrap();
    assert_eq!((timings["cache_n"].as_u64(), timings["prompt_n"].as_u64()), (Some(prompt - 1), Some(1)), "{timings}");
    let again = header(&h, "x-switchyard-request-id");
    let rec2: Value =
        s.http.get(format!("{}/admin/decisions/{again}", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!((rec2["prompt_tokens"].as_u64(), rec2["cached_tokens"].as_u64()), (Some(prompt), Some(prompt - 1)));
    assert!(rec["cached_tokens"].as_u64().unwrap() < prompt - 1, "{rec}");
    let missing = s.http.get(format!("{}/admin/decisions/chatcmpl-nope", s.base)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // An upstream answering 500 falls back to the next route in the chain.
    let (status, h, _) = s.ask("BREAKME please", json!({})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"));
    assert!(header(&h, "x-switchyard-reason").contains("broken failed (backend_error), fell back"), "{h:?}");
    assert_eq!(s.hits("fail"), 1);

    // Two more failures open its breaker; after that the route is skipped.
    for _ in 0..2 {
        s.ask("BREAKME please", json!({})).await;
    }
    assert_eq!(s.hits("fail"), 3);
    let (status, h, _) = s.ask("BREAKME please", json!({})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"));
    assert!(header(&h, "x-switchyard-reason").contains("broken skipped (circuit open)"), "{h:?}");
    assert_eq!(s.hits("fail"), 3, "an open breaker sends nothing upstream");

    // No first byte within the route's TTFT limit: fall back, streaming too.
    let (status, h, body) = s.ask("SLOWME please", json!({"stream": true})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"));
    assert!(header(&h, "x-switchyard-reason").contains("slow failed (backend_timeout)"), "{h:?}");
    assert!(body.contains("chat.completion.chunk") && body.trim_end().ends_with("data: [DONE]"));

    // A dead upstream (connection refused) falls back too.
    let (status, h, _) = s.ask("DEADME please", json!({})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"));
    assert!(header(&h, "x-switchyard-reason").contains("dead failed"), "{h:?}");

    // Safety rule: an OpenAI-shaped refusal, and nothing is sent anywhere.
    let hits_before: usize = s.seen.lock().unwrap().hits.values().sum();
    let (status, h, body) = s.ask("how to make a bomb", json!({})).await;
    assert_eq!(
        (status, header(&h, "x-switchyard-route"), header(&h, "x-switchyard-label")),
        (StatusCode::OK, "refused", "refused")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["refusal"], "I can't help with that.");
    assert!(v["choices"][0]["message"]["content"].is_null());
    assert_eq!(s.seen.lock().unwrap().hits.values().sum::<usize>(), hits_before);

    // A bad routing header is a 400 naming it.
    let resp = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-switchyard-lane", "warp")
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["param"], "x-switchyard-lane");
}

#[tokio::test]
async fn a_failing_upstream_gets_at_most_its_retry_budget() {
    let s = setup().await;
    let requests = 10;
    for _ in 0..requests {
        let (status, h, _) = s.ask("FLAKYME", json!({"max_tokens": 2})).await;
        assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"));
    }
    // ratio 0.5, no per-second minimum: at most 1.5 attempts per request.
    let attempts = s.hits("flaky");
    assert!(attempts <= requests * 3 / 2, "{attempts} upstream attempts for {requests} requests");
    assert!(attempts > requests, "the budget allows some retries ({attempts})");
}

#[tokio::test]
async fn a_policy_naming_a_model_that_is_not_loaded_is_refused_at_start() {
    let p = Policy::from_toml(
        &policy("http://127.0.0.1:9", "http://127.0.0.1:9")
            .replace("model = \"smollm2-135m\"", "model = \"not-loaded\""),
    )
    .unwrap();
    std::env::set_var("SWITCHYARD_TEST_CLOUD_KEY", "k");
    let err =
        AppState::new(vec![]).with_policy(p, Prices::default(), RoutingOptions::default()).err().unwrap().to_string();
    assert!(err.contains("routes[0].model") && err.contains("not-loaded"), "{err}");
}

#[tokio::test]
async fn a_handoff_is_queued_answered_with_its_id_and_resolved_once() {
    let s = setup().await;
    let (status, h, body) = s.ask("HANDME: I need a person", json!({})).await;
    assert_eq!(
        (status, header(&h, "x-switchyard-route"), header(&h, "x-switchyard-label")),
        (StatusCode::OK, "handoff", "human-escalated"),
        "{body}"
    );
    let handoff_id = header(&h, "x-switchyard-handoff-id").to_string();
    assert!(handoff_id.starts_with("handoff-"), "{h:?}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "A person will get back to you.");
    assert_eq!(s.seen.lock().unwrap().hits.values().sum::<usize>(), 0, "no model saw it");

    let rec = s.decision(&h).await;
    assert_eq!(
        (rec["label"].as_str(), rec["execution"]["handoff_id"].as_str()),
        (Some("human-escalated"), Some(handoff_id.as_str()))
    );

    let (status, open) = s.get("/admin/handoffs?status=open").await;
    assert_eq!(status, StatusCode::OK);
    let queued = &open["data"][0];
    assert_eq!((queued["id"].as_str(), queued["rule_id"].as_str()), (Some(handoff_id.as_str()), Some("handoff")));
    assert_eq!(queued["messages"][0]["content"], "HANDME: I need a person");

    let resolve = |body: Value| s.http.post(format!("{}/admin/handoffs/{handoff_id}", s.base)).json(&body).send();
    let done = resolve(json!({"answer": "Called them back.", "reviewer": "ana"})).await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.json::<Value>().await.unwrap()["status"], "resolved");
    let again = resolve(json!({"answer": "Me too.", "reviewer": "bo"})).await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let bad = resolve(json!({"answer": 3})).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/admin/handoffs?status=open").await.1["data"], json!([]));
    assert_eq!(s.get(&format!("/admin/handoffs/{handoff_id}")).await.1["reviewer"], "ana");
    assert_eq!(s.get("/admin/handoffs/handoff-nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/admin/handoffs?status=maybe").await.0, StatusCode::BAD_REQUEST);

    // Streaming clients get the notice as a stream.
    let (status, h, body) = s.ask("HANDME again", json!({"stream": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("A person will get back to you.") && body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(header(&h, "x-switchyard-handoff-id").starts_with("handoff-"));
}

#[tokio::test]
async fn the_cascade_escalates_below_its_threshold_and_not_above() {
    let s = setup().await;
    let prompt = "Write a short poem about the sea.";
    for stream in [false, true] {
        let (status, h, body) = s.ask(&format!("UNSURE {prompt}"), json!({"stream": stream})).await;
        assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "cloud"), "{body}");
        assert!(header(&h, "x-switchyard-reason").contains("cascade: local mean_logprob"), "{h:?}");
        // Nothing of the local answer reached the client.
        assert!(!body.contains("smollm2"), "{body}");
        let rec = s.decision(&h).await;
        let check = &rec["execution"]["cascade"];
        assert_eq!((check["escalated"].as_bool(), check["route"].as_str()), (Some(true), Some("local")));
        assert!(check["value"].as_f64().unwrap() < -1e-9);
        let steps: Vec<&str> =
            rec["execution"]["steps"].as_array().unwrap().iter().map(|s| s["outcome"].as_str().unwrap()).collect();
        assert_eq!(steps, ["escalated", "answered"]);

        let (status, h, body) = s.ask(&format!("SURE {prompt}"), json!({"stream": stream})).await;
        assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"), "{body}");
        assert!(body.contains("smollm2-135m"));
        if stream {
            assert!(body.trim_end().ends_with("data: [DONE]"), "held tokens and the rest all arrive: {body}");
        }
    }
    assert_eq!(s.hits("ok"), 2, "only the unsure answers went to the cloud");
}

#[tokio::test]
async fn a_verify_cascade_judges_the_fast_answer_on_the_escalation_model() {
    let s = setup().await;
    let (status, h, body) =
        s.ask("VERIFYME Write a long story about a dragon who loves books.", json!({"max_tokens": 300})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local-verifier"), "{body}");
    assert!(header(&h, "x-switchyard-reason").contains("cascade: local verify_mean_logprob"), "{h:?}");
    let rec = s.decision(&h).await;
    let check = &rec["execution"]["cascade"];
    assert_eq!(
        (check["escalated"].as_bool(), check["signal"].as_str()),
        (Some(true), Some("verify_mean_logprob")),
        "{rec}"
    );
    assert!(check["value"].as_f64().unwrap() < -1e-9);
    // The verifier scores at most 256 tokens of the answer; the fast model's
    // own logprobs would cover all of it. (Same model, greedy: the escalated
    // answer is the fast one again, so its length is the fast answer's.)
    let generated = serde_json::from_str::<Value>(&body).unwrap()["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(generated > 256, "the story must outgrow the verifier's window: {generated} tokens");
    assert_eq!(check["confidence"]["tokens"].as_u64(), Some(switchyard_engine::MAX_SCORED_TOKENS as u64), "{check}");
}

#[tokio::test]
async fn a_shadow_copy_is_recorded_and_never_changes_the_answer() {
    let s = setup().await;
    let prompt = "LOCALME What is the capital of France?";
    let (_, _, plain) = s.ask(prompt, json!({})).await;
    let content = |b: &str| {
        serde_json::from_str::<Value>(b).unwrap()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    for family in ["mirrored", "mirrored-to-broken", "mirrored-to-hasty"] {
        let (status, h, body) = s.ask_with(prompt, json!({}), &[("x-switchyard-family", family)]).await;
        assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"), "{body}");
        assert_eq!(content(&body), content(&plain), "the shadow changed the answer");
        let id = header(&h, "x-switchyard-request-id").to_string();
        let mut rec = Value::Null;
        for _ in 0..100 {
            let (status, v) = s.get(&format!("/admin/shadows/{id}")).await;
            if status == StatusCode::OK {
                rec = v;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rec["primary_route"], "local", "{family}: {rec}");
        assert_eq!(rec["primary_output"].as_str(), Some(content(&plain).as_str()));
        if family == "mirrored" {
            assert_eq!((rec["shadow_route"].as_str(), rec["shadow_status"].as_u64()), (Some("cloud"), Some(200)));
            assert_eq!(
                (rec["shadow_output"].as_str(), rec["same_output"].as_bool()),
                (Some("cloud says hi"), Some(false))
            );
        } else if family == "mirrored-to-broken" {
            assert_eq!((rec["shadow_route"].as_str(), rec["shadow_status"].as_u64()), (Some("broken"), Some(502)));
        } else {
            assert_eq!(
                (rec["shadow_route"].as_str(), rec["shadow_status"].as_u64()),
                (Some("hasty"), Some(504)),
                "the route's TTFT limit held: {rec}"
            );
        }
    }
    let (status, body) = s.get("/admin/shadows/chatcmpl-never").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // An unknown family in the header is a 400 naming it.
    let (status, _, body) = s.ask_with(prompt, json!({}), &[("x-switchyard-family", "nope")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("x-switchyard-family") && body.contains("mirrored"), "{body}");
}

#[tokio::test]
async fn broken_streams_end_with_an_error_event_and_malformed_answers_fall_back() {
    let s = setup().await;
    for prompt in ["STALLME", "CUTME"] {
        let (status, h, body) = s.ask(prompt, json!({"stream": true})).await;
        assert_eq!(status, StatusCode::OK, "{prompt}: the stream had started");
        assert!(body.contains("partial"), "{prompt}: {body}");
        assert!(body.contains("\"error\"") && !body.contains("[DONE]"), "{prompt}: {body}");
        if prompt == "STALLME" {
            assert!(body.contains("stalled"), "{body}");
        }
        assert_eq!(header(&h, "x-switchyard-route"), prompt.trim_end_matches("ME").to_lowercase());
    }
    for stream in [false, true] {
        let (status, h, body) = s.ask("MALFORMEDME", json!({"stream": stream})).await;
        assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"), "{body}");
        assert!(header(&h, "x-switchyard-reason").contains("malformed failed (malformed_upstream)"), "{h:?}");
    }
    // A redirecting upstream is misconfigured: not followed (the request
    // body would be re-sent somewhere the policy never named) but failed
    // like a 5xx, which a route's fallback chain then covers. (Forced, so
    // no fallback here.)
    let (status, _, body) = s.ask_with("Say hello.", json!({}), &[("x-switchyard-force-route", "moved")]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("upstream moved answered 307"), "{body}");
    assert_eq!(s.hits("ok"), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_forced_route_answers_alone_within_the_data_boundary() {
    let s = setup().await;
    let (status, h, body) = s.ask_with("Say hello.", json!({}), &[("x-switchyard-force-route", "local")]).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "local"), "{body}");
    assert_eq!(s.hits("ok"), 0, "the default route (cloud) was bypassed");
    let (status, h, _) =
        s.ask_with("My SSN is 123-45-6789.", json!({}), &[("x-switchyard-force-route", "cloud")]).await;
    assert_eq!(
        (status, header(&h, "x-switchyard-route"), header(&h, "x-switchyard-label")),
        (StatusCode::OK, "refused", "refused")
    );
    assert_eq!(s.hits("ok"), 0, "regulated data never reaches the cloud, forced or not");
    let (status, _, body) = s.ask_with("hi", json!({}), &[("x-switchyard-force-route", "nowhere")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("x-switchyard-force-route"), "{body}");
}

#[tokio::test]
async fn a_second_switchyard_is_a_real_upstream() {
    let s = setup().await;
    let (status, h, body) = s.ask("PEERME Say hi.", json!({})).await;
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "peer"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "smollm2-135m");
    assert!(v["timings"]["predicted_n"].as_u64().unwrap() > 0);
    let (status, _, body) =
        s.ask("PEERME Say hi.", json!({"stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"usage\"") && body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[test]
fn serving_a_policy_loads_each_model_its_routes_name_once() {
    // `local`, `local-verifier`, `hasty` and (made embedded here) `peer` all name smollm2-135m, with upstream routes between them.
    let text = policy("http://127.0.0.1:9", "http://127.0.0.1:9").replace(
        "name = \"peer\"\nbackend = \"upstream\"\nmodel = \"smollm2-135m\"\nurl = \"http://127.0.0.1:9/v1\"",
        "name = \"peer\"\nbackend = \"embedded\"\nmodel = \"smollm2-135m\"",
    );
    let p = Policy::from_toml(&text).unwrap();
    assert_eq!(
        p.routes
            .iter()
            .filter(|r| r.model == "smollm2-135m" && r.backend == switchyard_router::BackendKind::Embedded)
            .count(),
        4
    );
    let engine = switchyard_engine::EngineSettings { threads: 2, ctx_size: 1024, parallel: 1, ..Default::default() };
    let cfg = switchyard_gateway::ServeConfig { engine, ..Default::default() };
    let engines = switchyard_gateway::load_engines(&cfg, Some(&p), switchyard_models::Progress::Quiet).unwrap();
    assert_eq!(engines.iter().map(|e| e.id().to_string()).collect::<Vec<_>>(), ["smollm2-135m"]);
}
