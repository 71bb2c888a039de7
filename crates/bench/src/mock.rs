//! A mock OpenAI-compatible server with known, injected timings: the first
//! content chunk `ttft` after the request, then one chunk every `itl`. The
//! bench measures it to show its own error (measured minus injected).
//!
//! Delays are kept by a timer thread of its own ([`PreciseTimer`]): tokio's
//! timer ticks in whole milliseconds and rounds every sleep up, which alone
//! made the first chunk ~1 ms late, as large as the error being measured.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

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
    /// Send `usage` with the answer, as OpenAI does when asked; without it a
    /// client has to count tokens itself.
    pub usage: bool,
}

/// Wakes tasks at given instants to within the OS's thread wake-up time
/// (tens of µs), from one thread that sleeps until the earliest deadline.
#[derive(Clone)]
pub struct PreciseTimer {
    tx: mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

impl PreciseTimer {
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<(Instant, oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("mock-timer".into())
            .spawn(move || {
                // Linux lets a sleeping thread wake up to 50 µs late by default; ask for 1 µs.
                // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
                #[expect(unsafe_code, reason = "prctl has no safe wrapper; see SAFETY")]
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong)
                };
                let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
                let mut wakers: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while let Some(&Reverse((at, id))) = due.peek() {
                        if at > now {
                            break;
                        }
                        due.pop();
                        if let Some(w) = wakers.remove(&id) {
                            let _ = w.send(());
                        }
                    }
                    let next = match due.peek() {
                        None => rx.recv().map_err(|_| ()),
                        Some(&Reverse((at, _))) => {
                            match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                                Ok(m) => Ok(m),
                                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                                Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                            }
                        }
                    };
                    let Ok((at, waker)) = next else { return };
                    seq += 1;
                    due.push(Reverse((at, seq)));
                    wakers.insert(seq, waker);
                }
            })
            .expect("spawn the mock's timer thread");
        Self { tx }
    }

    pub async fn sleep_until(&self, at: Instant) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((at, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Serves the mock on `listener` until the process ends, with
/// `TCP_NODELAY` on every connection as switchyard's gateway has it: without
/// it, a first chunk on a kept-alive connection waited behind Nagle's
/// algorithm for the client's delayed ACK of the headers, so any injected
/// TTFT below ~40 ms read as ~40 ms.
pub async fn serve(listener: tokio::net::TcpListener, delays: Delays) -> std::io::Result<()> {
    let listener = switchyard_wire::net::no_delay(listener, |e| eprintln!("mock: could not set TCP_NODELAY: {e}"));
    axum::serve(listener, router(delays)).await
}

pub fn router(delays: Delays) -> Router {
    let timer = PreciseTimer::start();
    Router::new().route("/v1/chat/completions", post(move |body: Json<Value>| answer(delays, timer.clone(), body)))
}

async fn answer(d: Delays, timer: PreciseTimer, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("mock").to_string();
    // Deadlines from the request's arrival, so delays do not accumulate drift.
    let start = Instant::now();
    if body["stream"] != true {
        timer.sleep_until(start + d.ttft + d.itl * d.chunks.saturating_sub(1)).await;
        let text = "x ".repeat(d.chunks as usize);
        let mut answer = json!({"object": "chat.completion", "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
        if d.usage {
            answer["usage"] = json!({"prompt_tokens": 1, "completion_tokens": d.chunks, "total_tokens": d.chunks + 1});
        }
        return Json(answer).into_response();
    }
    let chunk = move |i: u32| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]})
        ))
    };
    let usage = json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": d.chunks}});
    let tail = Bytes::from(if d.usage {
        format!("data: {usage}\n\ndata: [DONE]\n\n")
    } else {
        "data: [DONE]\n\n".to_string()
    });
    let events = futures::stream::iter(0..d.chunks)
        .then(move |i| {
            let (bytes, timer) = (chunk(i), timer.clone());
            async move {
                timer.sleep_until(start + d.ttft + d.itl * i).await;
                Ok::<_, std::io::Error>(bytes)
            }
        })
        .chain(futures::stream::once(async move { Ok(tail) }));
    ([("content-type", "text/event-stream")], Body::from_stream(events)).into_response()
}
