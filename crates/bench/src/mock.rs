//! A mock OpenAI-compatible server with known, injected timings: the first
//! content chunk `ttft` after the request, then one chunk every `itl`. The
//! bench measures it to show its own error (measured minus injected).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
pub struct Delays {
    pub ttft: Duration,
    pub itl: Duration,
    /// Content chunks per answer.
    pub chunks: u32,
}

/// Serves the mock on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, delays: Delays) -> std::io::Result<()> {
    axum::serve(listener, router(delays)).await
}

pub fn router(delays: Delays) -> Router {
    Router::new().route("/v1/chat/completions", post(move |body: Json<Value>| answer(delays, body)))
}

async fn answer(d: Delays, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("mock").to_string();
    if body["stream"] != true {
        tokio::time::sleep(d.ttft + d.itl * d.chunks.saturating_sub(1)).await;
        let text = "x ".repeat(d.chunks as usize);
        return Json(json!({"object": "chat.completion", "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": d.chunks, "total_tokens": d.chunks + 1}}))
        .into_response();
    }
    let chunk = move |i: u32| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]})
        ))
    };
    let tail = Bytes::from(format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": d.chunks}})
    ));
    // Deadlines from the request's arrival, so delays do not accumulate drift.
    let start = tokio::time::Instant::now();
    let events = futures::stream::iter(0..d.chunks)
        .then(move |i| {
            let bytes = chunk(i);
            async move {
                tokio::time::sleep_until(start + d.ttft + d.itl * i).await;
                Ok::<_, std::io::Error>(bytes)
            }
        })
        .chain(futures::stream::once(async move { Ok(tail) }));
    ([("content-type", "text/event-stream")], Body::from_stream(events)).into_response()
}
