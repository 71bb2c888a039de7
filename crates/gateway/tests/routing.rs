//! Policy routing end to end: a real embedded model (SmolLM2) as the local
//! route, and a local mock speaking OpenAI's wire format as the "cloud",
//! with routes that fail in each way a fallback must handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_engine::{Engine, EngineSettings};
use switchyard_gateway::{router, AppState};
use switchyard_router::Policy;

/// What the mock upstream saw: hits per mode, last model and auth header.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    model: Option<String>,
    auth: Option<String>,
}

type Mock = Arc<Mutex<Seen>>;

async fn mock_chat(State(seen): State<Mock>, Path(mode): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    {
        let mut s = seen.lock().unwrap();
        *s.hits.entry(mode.clone()).or_default() += 1;
        s.model = body["model"].as_str().map(str::to_string);
        s.auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    }
    match mode.as_str() {
        "fail" | "flaky" => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}))).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({})).into_response()
        }
        _ if body["stream"] == true => {
            let chunk = |delta: Value, finish: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            let sse = [chunk(json!({"role": "assistant", "content": ""}), Value::Null), chunk(json!({"content": "cloud"}), Value::Null), chunk(json!({}), json!("stop"))]
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

fn policy(mock: &str) -> String {
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

[classes]
regulated = ["\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b"]

[categories]
weapons = ["\\bbomb\\b"]
breakme = ["BREAKME"]
slowme = ["SLOWME"]
deadme = ["DEADME"]
flakyme = ["FLAKYME"]

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, mock).await.unwrap() });

    let path = tokio::task::spawn_blocking(|| {
        switchyard_models::ModelSpec::parse("smollm2-135m")
            .unwrap()
            .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet)
            .unwrap()
    })
    .await
    .unwrap();
    let settings = EngineSettings { threads: 2, ctx_size: 2048, parallel: 2, ..Default::default() };
    let engine = tokio::task::spawn_blocking(move || Engine::load("smollm2-135m", &path, settings).unwrap()).await.unwrap();
    // The cloud route reads its API key from this variable.
    std::env::set_var("SWITCHYARD_TEST_CLOUD_KEY", "k-123");
    let mut state = AppState::new(vec![engine]).with_policy(Policy::from_toml(&policy(&mock_base)).unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    state.store = Some(switchyard_store::Store::open(&data.path().join("switchyard.db")).await.unwrap());
    let app = router(Arc::new(state), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Setup { base, seen, http: reqwest::Client::new(), _data: data }
}

impl Setup {
    async fn ask(&self, prompt: &str, extra: Value) -> (StatusCode, HeaderMap, String) {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let resp = self.http.post(format!("{}/v1/chat/completions", self.base)).json(&body).send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
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
    assert_eq!(header(&h, "x-switchyard-route"), "cloud");
    assert!(header(&h, "x-switchyard-policy").starts_with("test.1+"));
    assert!(header(&h, "x-switchyard-reason").contains("default route"));
    assert!(body.contains("cloud says hi"));
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
    assert_eq!((status, header(&h, "x-switchyard-route")), (StatusCode::OK, "refused"));
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
    let p = Policy::from_toml(&policy("http://127.0.0.1:9").replace("model = \"smollm2-135m\"", "model = \"not-loaded\"")).unwrap();
    std::env::set_var("SWITCHYARD_TEST_CLOUD_KEY", "k");
    let err = AppState::new(vec![]).with_policy(p).err().unwrap().to_string();
    assert!(err.contains("routes[0].model") && err.contains("not-loaded"), "{err}");
}
