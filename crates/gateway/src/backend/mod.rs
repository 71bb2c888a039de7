//! Where a route's answer comes from: a model this process runs
//! ([`Embedded`]), any OpenAI-compatible API ([`Upstream`]), several of
//! those balanced ([`Pool`]), or, in tests, a
//! script (`Scripted`, with the `scripted` feature). [`crate::routing`] owns
//! one backend per route and never looks behind this trait; the unrouted
//! path drives an [`Embedded`] backend the same way.
//!
//! A backend only starts an answer. What every token answer shares (holding
//! tokens back for a cascade, the time limits, the OpenAI envelope) is done
//! once, in [`held`] and [`crate::envelope`].

mod embedded;
pub mod held;
pub mod pool;
#[cfg(feature = "scripted")]
pub mod scripted;
mod upstream;

use std::pin::Pin;
use std::time::Duration;

use axum::response::Response;
use futures::future::BoxFuture;
use futures::Stream;
use switchyard_engine::Event;
use switchyard_router::Route;
use switchyard_wire::ChatCompletionRequest;
use tokio::time::Instant;

pub use embedded::Embedded;
pub use pool::Pool;
pub use upstream::Upstream;

use crate::error::ApiError;
use crate::observe::trace::Trace;
use crate::validate::ChatParams;

/// One chat request as every route attempt sees it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// `chatcmpl-…`, also the `x-switchyard-request-id` header.
    pub id: String,
    /// The body as the client sent it: forwarded to upstreams (with the
    /// route's model), and its `model` is echoed in fixed replies.
    pub body: ChatCompletionRequest,
    /// The body checked and translated: what an engine runs.
    pub params: ChatParams,
    /// The request's root span (off unless traces are exported).
    pub trace: Trace,
}

impl ChatRequest {
    /// The same request answered whole (shadow copies are compared, never
    /// streamed).
    pub fn unstreamed(&self) -> Self {
        let mut body = self.body.clone();
        body.stream = Some(false);
        body.stream_options = None;
        Self {
            id: self.id.clone(),
            body,
            params: ChatParams { stream: false, include_usage: false, ..self.params.clone() },
            trace: self.trace.clone(),
        }
    }
}

/// The time limits of one attempt, counted from when it began.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No first token (or upstream response) within this: the attempt fails
    /// and the chain may go on.
    pub ttft: Option<Duration>,
    /// The whole answer ends within this. Before the answer is committed a
    /// breach fails the attempt (504); after, the stream ends with an error
    /// event that names the limit.
    pub total: Option<Duration>,
    /// A committed stream that sends nothing for longer ends with an error event.
    pub stall: Option<Duration>,
    began: Instant,
}

impl Limits {
    /// No limits: the unrouted path, where the client decides how long to wait.
    pub fn none() -> Self {
        Self { ttft: None, total: None, stall: None, began: Instant::now() }
    }

    /// A route's limits, its TTFT cut to a family's budget if that is lower.
    pub fn of_route(route: &Route, max_ttft_ms: Option<u64>) -> Self {
        let ttft = max_ttft_ms.map_or(route.ttft_timeout_ms, |cap| cap.min(route.ttft_timeout_ms));
        Self {
            ttft: Some(Duration::from_millis(ttft)),
            total: Some(Duration::from_millis(route.total_timeout_ms)),
            stall: Some(Duration::from_millis(route.stall_timeout_ms)),
            began: Instant::now(),
        }
    }

    /// When the answer must have ended.
    pub fn deadline(&self) -> Option<Instant> {
        self.total.map(|t| self.began + t)
    }

    /// The total limit's breach, as an error that names it.
    pub fn past_total(&self, who: &str) -> ApiError {
        let ms = self.total.map_or(0, |t| t.as_millis());
        ApiError::timeout(format!("{who} did not finish within the route's total limit of {ms} ms (total_timeout_ms)"))
    }
}

/// Token events as a model makes them. Dropping the stream cancels the
/// generation (an engine frees the sequence at its next step).
pub type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// An answer a backend has started.
pub enum Generation {
    /// A model's tokens, to be held, judged and wrapped by the gateway.
    Tokens {
        /// `system_fingerprint` of the answer.
        fingerprint: String,
        events: Events,
    },
    /// An upstream's answer, passed through byte for byte. Its status was a
    /// success and its first bytes are in, so nothing before this point can
    /// have reached the client.
    Proxied(Response),
}

/// A source of answers for one route.
pub trait Backend: Send + Sync {
    /// Starts answering `req`. Fails (with nothing sent) when the backend
    /// cannot: queue full, unreachable, an error status, no first byte
    /// within `limits.ttft`. An error's [`crate::error::Fault`] says whose
    /// fault it was.
    fn generate<'a>(&'a self, req: &'a ChatRequest, limits: Limits) -> BoxFuture<'a, Result<Generation, ApiError>>;

    /// This backend's logprob of each token of `answer` (at most the first
    /// 256) after `req`'s messages: a verify cascade's judge. Only a model
    /// this process runs can score; others refuse.
    fn score<'a>(&'a self, req: &'a ChatRequest, answer: String) -> BoxFuture<'a, Result<Vec<f64>, ApiError>>;

    /// How many tokens `req`'s prompt is for this backend's model, where
    /// this process holds its tokenizer; `None` elsewhere (an upstream),
    /// and a context budget then goes by [`prompt_estimate`].
    fn count_prompt<'a>(&'a self, _req: &'a ChatRequest) -> BoxFuture<'a, Option<u32>> {
        futures::FutureExt::boxed(async { None })
    }
}

/// About how many tokens a prompt is, before a tokenizer has seen it: a
/// token per 4 bytes of text and 4 per message. Limits charge this at
/// admission (the answer's `usage` corrects it), and upstream routes'
/// context budgets judge by it.
pub fn prompt_estimate(body: &ChatCompletionRequest) -> u64 {
    let text = |m: &switchyard_wire::ChatMessage| m.content.as_ref().and_then(|c| c.text().ok()).map_or(0, |t| t.len());
    body.messages.iter().map(|m| 4 + text(m) as u64 / 4).sum()
}
