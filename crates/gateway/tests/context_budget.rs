//! Context length as a budget, end to end: a real embedded model (SmolLM2)
//! whose tokenizer counts the prompt, a lane budget that holds every
//! interactive route short, one route that the policy grants a long
//! context, a family that caps it again, and a loopback mock as an upstream
//! whose prompt is estimated.

use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_gateway::routing::RoutingOptions;
use switchyard_gateway::{router, AppState};
use switchyard_router::{Policy, Prices};

#[path = "common/loopback.rs"]
mod loopback;

fn policy(mock: &str) -> Policy {
    Policy::from_toml(&format!(
        r#"
version = "budget.1"
default_route = "short"

[lanes.interactive]
context = {{ max_prompt_tokens = 64, max_total_tokens = 96, reason = "interactive answers stay fast on this CPU" }}

[[routes]]
name = "short"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public"]
ttft_timeout_ms = 30000
total_timeout_ms = 60000

[[routes]]
name = "long"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public"]
ttft_timeout_ms = 30000
total_timeout_ms = 60000
context = {{ max_prompt_tokens = 1500, reason = "the document route" }}

[[routes]]
name = "cloud"
backend = "upstream"
model = "gpt-mock"
url = "{mock}/v1"
allowed_classes = ["public"]
lane = "batch"
fallback = ["short"]
context = {{ max_prompt_tokens = 100, reason = "the vendor contract's prompt size" }}

[[routes]]
name = "dead"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public"]
lane = "batch"
fallback = ["short"]
retry = {{ ratio = 0.0, min_per_second = 0.0 }}

[categories]
dead = ["DEAD"]
docs = ["DOCS"]
memo = ["MEMO"]
cloud = ["CLOUD"]

[[families]]
name = "memo"
patterns = ["MEMO"]
context = {{ max_prompt_tokens = 120, reason = "memos are short by rule" }}

[[rules]]
id = "memo"
when = {{ family = "memo" }}
then = {{ action = "route", route = "long" }}

[[rules]]
id = "docs"
when = {{ categories = ["docs"] }}
then = {{ action = "route", route = "long" }}

[[rules]]
id = "dead"
when = {{ categories = ["dead"] }}
then = {{ action = "route", route = "dead" }}

[[rules]]
id = "cloud"
when = {{ categories = ["cloud"] }}
then = {{ action = "route", route = "cloud" }}
"#
    ))
    .unwrap()
}

async fn cloud(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "cloud"}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    }))
}

struct Setup {
    base: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let mock = loopback::serve(Router::new().route("/v1/chat/completions", post(cloud))).await;
        let engine = loopback::smollm2().await;
        let data = tempfile::tempdir().unwrap();
        let store = switchyard_store::Store::open(&data.path().join("s.db")).await.unwrap();
        let state = AppState::new(vec![engine])
            .with_policy(policy(&mock), Prices::default(), RoutingOptions::default())
            .unwrap()
            .with_store(store);
        let base = loopback::serve(router(Arc::new(state), 1 << 20)).await;
        Self { base, http: reqwest::Client::new(), _data: data }
    }

    async fn ask(&self, prompt: &str, max_tokens: Option<u32>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}], "temperature": 0});
        if let Some(m) = max_tokens {
            body["max_tokens"] = json!(m);
        }
        let resp = self.http.post(format!("{}/v1/chat/completions", self.base)).json(&body).send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap())
    }

    async fn execution(&self, headers: &reqwest::header::HeaderMap) -> Value {
        let id = headers["x-switchyard-request-id"].to_str().unwrap();
        let record: Value =
            self.http.get(format!("{}/admin/decisions/{id}", self.base)).send().await.unwrap().json().await.unwrap();
        record["execution"].clone()
    }
}

/// About 200 tokens of prose.
fn long_prompt(marker: &str) -> String {
    format!(
        "{marker} Summarise this in one line. {}",
        "The freight train left the yard at dawn and crossed the river. ".repeat(15)
    )
}

#[tokio::test]
async fn a_prompt_over_its_routes_budget_is_refused_naming_it_and_answered_where_a_route_grants_it() {
    let s = Setup::new().await;

    let (status, headers, body) = s.ask(&long_prompt(""), Some(8)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "context_budget_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for part in ["route short", "prompt budget of 64 tokens", "lane interactive", "interactive answers stay fast"] {
        assert!(message.contains(part), "`{part}` named in: {message}");
    }
    assert!(headers["x-switchyard-reason"].to_str().unwrap().ends_with("refused: over short's context budget"));
    let checked = s.execution(&headers).await;
    let check = &checked["context"][0];
    assert_eq!(
        (check["route"].as_str(), check["counted_by"].as_str(), check["fits"].as_bool()),
        (Some("short"), Some("tokenizer"), Some(false))
    );
    assert!(check["prompt_tokens"].as_u64().unwrap() > 150, "the tokenizer's count is recorded: {check}");

    // The same text on the route the policy grants a long context.
    let (status, headers, body) = s.ask(&long_prompt("DOCS"), Some(8)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-switchyard-route"], "long");
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let check = &s.execution(&headers).await["context"][0];
    assert_eq!(check["prompt_tokens"].as_u64(), Some(prompt_tokens), "the count before queueing is the engine's");
    assert_eq!(check["budget"]["prompt"]["source"], "route long");

    // One client's over-budget requests cost the route nothing: more of
    // them than its breaker's limit (5 in a row), and another client's
    // request that fits is still answered there.
    for _ in 0..6 {
        assert_eq!(s.ask(&long_prompt(""), Some(8)).await.0, StatusCode::BAD_REQUEST);
    }
    let (status, headers, body) = s.ask("Say hi.", Some(4)).await;
    assert_eq!((status, headers["x-switchyard-route"].to_str().unwrap()), (StatusCode::OK, "short"), "{body}");

    // A family holds the granted route tighter again.
    let (status, _, body) = s.ask(&long_prompt("MEMO"), Some(8)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("family memo: memos are short by rule"), "{body}");
}

#[tokio::test]
async fn a_total_budget_caps_an_open_completion_and_refuses_an_explicit_one_past_it() {
    let s = Setup::new().await;
    let prompt = "Write a long story about a train, at least 500 words.";
    let (status, headers, body) = s.ask(prompt, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let usage = &body["usage"];
    let total = usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(total, 96, "a long story runs until the budget's cut: {usage}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(s.execution(&headers).await["context"][0]["fits"], true);

    let (status, _, body) = s.ask(prompt, Some(90)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("plus max_tokens (90) is over the total budget of 96 tokens"), "{message}");
}

#[tokio::test]
async fn an_upstream_is_judged_by_the_estimate_and_a_fallback_over_its_budget_is_passed_over() {
    let s = Setup::new().await;
    let (status, headers, body) = s.ask("CLOUD hello", Some(4)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-switchyard-route"], "cloud");
    assert_eq!(s.execution(&headers).await["context"][0]["counted_by"], "estimate");

    // About 225 estimated tokens: over the cloud's 100, and the fallback's
    // (the interactive lane's) 64 too.
    let (status, headers, body) = s.ask(&long_prompt("CLOUD"), Some(4)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("the vendor contract's prompt size"), "{body}");
    assert_eq!(s.execution(&headers).await["context"].as_array().map(Vec::len), Some(1), "refused at the first route");

    // A dead route with no budget falls back to one whose budget the prompt
    // is over: that fallback is passed over, not sent the prompt.
    let (status, headers, body) = s.ask(&long_prompt("DEAD"), Some(4)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let execution = s.execution(&headers).await;
    let steps: Vec<(&str, &str)> = execution["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (st["route"].as_str().unwrap(), st["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("dead", "failed"), ("short", "skipped")], "{execution}");
    assert!(headers["x-switchyard-reason"].to_str().unwrap().contains("short skipped (over its context budget)"));
}
