//! The HTTP API on a real loopback port, with a real model (SmolLM2-135M).
//! Every bad input must get an OpenAI-shaped error with the right status,
//! and the server must stay healthy afterwards.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use switchyard_engine::{Engine, EngineSettings};
use switchyard_gateway::{router, AppState};

const MODEL: &str = "smollm2-135m";

struct Server {
    base: String,
    http: Client,
}

/// The SmolLM2 file, pulled and verified on first use.
async fn model_path() -> std::path::PathBuf {
    tokio::task::spawn_blocking(|| {
        switchyard_models::ModelSpec::parse(MODEL)
            .unwrap()
            .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet)
            .unwrap()
    })
    .await
    .unwrap()
}

async fn start(parallel: u32, max_queue: usize) -> Server {
    let path = model_path().await;
    let settings = EngineSettings { threads: 2, ctx_size: 512 * parallel, parallel, max_queue, ..Default::default() };
    let engine = tokio::task::spawn_blocking(move || Engine::load(MODEL, &path, settings).unwrap()).await.unwrap();
    let app = router(Arc::new(AppState::new(vec![engine])), 64 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { base, http: Client::builder().timeout(Duration::from_secs(120)).build().unwrap() }
}

impl Server {
    async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap())
    }

    async fn post(&self, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.post_raw(body.to_string()).await;
        (s, v)
    }

    async fn assert_healthy(&self) {
        let r = self.http.get(format!("{}/readyz", self.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (status, body) =
            self.post(json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

fn hello(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 8, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Asserts an OpenAI error body and returns it.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let err = &body["error"];
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(err.get("code").is_some() && err.get("param").is_some(), "{body}");
    if let Some(p) = param {
        assert_eq!(err["param"], p, "{body}");
    }
}

#[tokio::test]
async fn completion_has_openai_fields_timings_and_request_id() {
    let s = start(2, 8).await;
    let (status, headers, body) = s.post_raw(hello(json!({"logprobs": true, "top_logprobs": 2})).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers["x-switchyard-request-id"].to_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["system_fingerprint"].as_str().unwrap().contains(MODEL));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], "length");
    let lp = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 8);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let t = &body["timings"];
    for k in ["prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "queue_ms", "ttft_ms", "total_ms"] {
        assert!(t[k].is_number(), "timings.{k} missing: {t}");
    }
    assert_eq!(t["predicted_n"], 8);
}

#[tokio::test]
async fn stream_is_role_tokens_finish_usage_done() {
    let s = start(2, 8).await;
    let resp = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&hello(json!({"stream": true, "stream_options": {"include_usage": true}})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    assert!(usage["timings"]["ttft_ms"].is_number());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!content.is_empty());
}

#[tokio::test]
async fn models_health_and_unknown_paths() {
    let s = start(1, 4).await;
    let models: Value = s.http.get(format!("{}/v1/models", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(s.http.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), StatusCode::OK);
    let r = s.http.get(format!("{}/v1/nope", s.base)).send().await.unwrap();
    let status = r.status();
    assert_error(status, &r.json().await.unwrap(), StatusCode::NOT_FOUND, None);
}

#[tokio::test]
async fn bad_input_gets_openai_errors_and_the_server_stays_healthy() {
    let s = start(2, 8).await;
    let bad = StatusCode::BAD_REQUEST;

    let (st, _, b) = s.post_raw("{\"model\": \"smollm2-135m\", \"messages\": [").await;
    assert_error(st, &b, bad, None);
    assert_eq!(b["error"]["code"], "invalid_json");

    let (st, b) = s.post(hello(json!({"temperature": "hot"}))).await;
    assert_error(st, &b, bad, Some("temperature"));
    let (st, b) = s.post(json!({"model": MODEL, "messages": "hello"})).await;
    assert_error(st, &b, bad, Some("messages"));
    let (st, b) = s.post(json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})).await;
    assert_error(st, &b, bad, Some("messages[0].role"));
    let (st, b) = s.post(json!({"messages": [{"role": "user", "content": "hi"}]})).await;
    assert_error(st, &b, bad, None);

    let (st, b) = s.post(json!({"model": MODEL, "messages": []})).await;
    assert_error(st, &b, bad, Some("messages"));

    let (st, b) = s.post(hello(json!({"model": "gpt-9"}))).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(b["error"]["code"], "model_not_found");

    let long = "lorem ipsum ".repeat(400);
    let (st, b) = s.post(json!({"model": MODEL, "messages": [{"role": "user", "content": long}]})).await;
    assert_error(st, &b, bad, Some("messages"));
    assert_eq!(b["error"]["code"], "context_length_exceeded");

    for (field, value) in [("max_tokens", json!(0)), ("max_tokens", json!(-1)), ("max_completion_tokens", json!(0))] {
        let (st, b) = s.post(hello(json!({field: value}))).await;
        assert_error(st, &b, bad, Some(field));
    }

    for (field, value) in [
        ("n", json!(2)),
        ("temperature", json!(9)),
        ("top_logprobs", json!(5)),
        ("tools", json!([])),
        ("response_format", json!({"type": "xml"})),
    ] {
        let (st, b) = s.post(hello(json!({field: value}))).await;
        assert_error(st, &b, bad, None);
        assert!(b["error"]["param"].as_str().unwrap_or_default().starts_with(field), "{field}: {b}");
    }

    let huge = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(100 * 1024)}]});
    let (st, _, b) = s.post_raw(huge.to_string()).await;
    assert_error(st, &b, StatusCode::PAYLOAD_TOO_LARGE, None);

    s.assert_healthy().await;
}

#[tokio::test]
async fn client_vanishing_mid_stream_frees_its_slot() {
    // One slot: if an abandoned stream kept it, the next request would never run.
    let s = start(1, 4).await;
    for _ in 0..3 {
        let resp = s
            .http
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&hello(json!({"stream": true, "max_tokens": 400, "messages": [{"role": "user", "content": "Write a long story."}]})))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "));
        drop(body); // hang up mid-stream
    }
    s.assert_healthy().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    // One slot and one waiting place: of six requests sent at once, at most
    // two are admitted before the first finishes; the others are refused at
    // once instead of queueing without bound. (No timing: six concurrent
    // sends arrive long before 200 tokens are generated.)
    let s = start(1, 1).await;
    let body = hello(json!({"max_tokens": 200, "messages": [{"role": "user", "content": "Write a long story."}]}));
    let sends = (0..6).map(|_| s.http.post(format!("{}/v1/chat/completions", s.base)).json(&body).send());
    let replies = futures::future::join_all(sends).await;
    let mut refused = 0;
    for resp in replies {
        let resp = resp.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
            let body: Value = resp.json().await.unwrap();
            assert_error(StatusCode::TOO_MANY_REQUESTS, &body, StatusCode::TOO_MANY_REQUESTS, None);
        } else {
            assert_eq!(resp.status(), StatusCode::OK, "admitted requests are answered");
        }
    }
    assert!(refused >= 1, "a full queue refused nothing");
    s.assert_healthy().await;
}

#[tokio::test]
async fn several_models_each_with_its_own_scheduler() {
    let path = model_path().await;
    let engines = tokio::task::spawn_blocking(move || {
        let settings = EngineSettings { threads: 2, ctx_size: 512, parallel: 1, ..Default::default() };
        vec![Engine::load("fast", &path, settings.clone()).unwrap(), Engine::load("strong", &path, settings).unwrap()]
    })
    .await
    .unwrap();
    let app = router(Arc::new(AppState::new(engines)), 64 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = Server { base, http: Client::new() };

    let models: Value = s.http.get(format!("{}/v1/models", s.base)).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["fast", "strong"]);
    // Concurrent requests to both; each answers under its own id and fingerprint.
    let (a, b) = tokio::join!(s.post(hello(json!({"model": "fast"}))), s.post(hello(json!({"model": "strong"}))));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!((a.1["model"].as_str(), b.1["model"].as_str()), (Some("fast"), Some("strong")));
    assert!(a.1["system_fingerprint"].as_str().unwrap().contains("fast"));
}

/// `/metrics` shows each engine's slots, sequences running and requests
/// waiting, as they are when scraped.
#[tokio::test]
async fn metrics_show_an_engines_running_and_waiting_requests() {
    let s = start(1, 4).await;
    let gauge = |text: &str, name: &str| -> f64 {
        let prefix = format!("{name}{{model=\"{MODEL}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    let scrape = || async { s.http.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap() };
    let long = hello(
        json!({"stream": true, "max_tokens": 400, "messages": [{"role": "user", "content": "Write a long story."}]}),
    );
    let resp = s.http.post(format!("{}/v1/chat/completions", s.base)).json(&long).send().await.unwrap();
    let mut running = resp.bytes_stream();
    running.next().await.unwrap().unwrap();
    let waiting = tokio::spawn({
        let (http, base) = (s.http.clone(), s.base.clone());
        async move { http.post(format!("{base}/v1/chat/completions")).json(&hello(json!({"max_tokens": 4}))).send().await }
    });
    // The first chunk (the role) may leave before the story has a slot: wait for both.
    let mut text = scrape().await;
    for _ in 0..250 {
        let active = gauge(&text, "switchyard_engine_active_sequences");
        // The cache fills from the story's first step in its slot.
        let filling = gauge(&text, "switchyard_engine_kv_cache_usage_ratio") > 0.0;
        if active == 1.0 && gauge(&text, "switchyard_engine_queued_requests") == 1.0 && filling {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape().await;
    }
    assert_eq!(gauge(&text, "switchyard_engine_slots"), 1.0, "{text}");
    assert_eq!(gauge(&text, "switchyard_engine_active_sequences"), 1.0, "{text}");
    assert_eq!(gauge(&text, "switchyard_engine_queued_requests"), 1.0, "{text}");
    let kv = gauge(&text, "switchyard_engine_kv_cache_usage_ratio");
    assert!(kv > 0.0 && kv < 1.0, "the story's prompt and tokens hold part of the cache: {text}");
    drop(running);
    assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
    let mut idle = scrape().await;
    for _ in 0..250 {
        if gauge(&idle, "switchyard_engine_active_sequences") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle = scrape().await;
    }
    assert_eq!(gauge(&idle, "switchyard_engine_active_sequences"), 0.0, "{idle}");
    assert_eq!(gauge(&idle, "switchyard_engine_queued_requests"), 0.0, "{idle}");
    assert_eq!(gauge(&idle, "switchyard_engine_kv_cache_usage_ratio"), 0.0, "{idle}");
}
