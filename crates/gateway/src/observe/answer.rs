//! Watching an answer as it is sent, once, for everyone who needs to know
//! how it went: the limiter (tokens as they stream, then the final charge),
//! the telemetry record (tokens, cost, timings, a client that left) and the
//! metrics (latency histograms, token and cost counters).
//!
//! Nothing here delays the answer: a streamed chunk is scanned for text
//! (a token) and parsed only when it can carry counts; a JSON answer is
//! copied (up to [`CAPTURE_LIMIT`]) and parsed once, after it was sent.
//! Everything is settled when the body is dropped, which happens whether
//! it ended or the client left.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use switchyard_router::Price;
use switchyard_store::{Measured, Recorder};
use switchyard_wire::sse::SseDecoder;
use switchyard_wire::{ChatReply, Timings};

use crate::capture::{self, CAPTURE_LIMIT};
use crate::limits::meter::{Meter, Settled};
use crate::observe::trace::Trace;

/// The price of the route that answered, put on the response by routing.
#[derive(Debug, Clone)]
pub struct Priced(pub Price);

/// Who is told how an answer went.
pub struct Watch {
    pub request_id: String,
    /// The route (or model) that answered, the metrics' label.
    pub route: String,
    /// When the request arrived.
    pub began: Instant,
    /// Charges the caller's limits, if it has any.
    pub meter: Option<Meter>,
    /// Writes the measured part of the request's record.
    pub recorder: Option<Recorder>,
    /// Records latency histograms and token and cost counters.
    pub metrics: bool,
    /// The request's root span, ended with the answer.
    pub trace: Trace,
}

impl Watch {
    pub fn wrap(self, resp: Response) -> Response {
        if self.meter.is_none() && self.recorder.is_none() && !self.metrics && !self.trace.is_on() {
            return resp;
        }
        let price = resp.extensions().get::<Priced>().map(|p| p.0.clone());
        let stream = resp.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (parts, body) = resp.into_parts();
        let watching = Watching {
            price,
            failed: !parts.status.is_success(),
            sse: stream.then(SseDecoder::default),
            whole: BytesMut::new(),
            produced: 0,
            first_token: None,
            last_token: None,
            gaps_ms: Vec::new(),
            usage: None,
            timings: None,
            ended: false,
            watch: self,
        };
        let body = Watched { inner: body.into_data_stream(), watching };
        Response::from_parts(parts, Body::from_stream(body))
    }
}

/// The body, passed through untouched while [`Watching`] looks at it.
struct Watched<S> {
    inner: S,
    watching: Watching,
}

impl<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) => self.watching.saw(bytes),
            Poll::Ready(None) => self.watching.ended = true,
            _ => {}
        }
        next
    }
}

/// An answer being sent; settled when dropped.
struct Watching {
    watch: Watch,
    price: Option<Price>,
    failed: bool,
    /// For streams; JSON answers are read whole at the end instead.
    sse: Option<SseDecoder>,
    whole: BytesMut,
    /// Chunks with text seen so far: a token each.
    produced: u64,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Between consecutive tokens, as the client got them.
    gaps_ms: Vec<f64>,
    /// Prompt and completion tokens as the answer reported them.
    usage: Option<(u32, u32)>,
    /// The engine's own clock, where the answer carries it.
    timings: Option<Timings>,
    /// The answer was sent whole: the body's last byte, or a stream's
    /// `[DONE]`, was handed to the connection. A stream's body may be
    /// dropped after its `[DONE]` before it is polled to its end (the
    /// client read the sentinel and closed): that is no disconnect.
    ended: bool,
}

impl Watching {
    fn saw(&mut self, bytes: &[u8]) {
        let Some(sse) = &mut self.sse else {
            let room = CAPTURE_LIMIT.saturating_sub(self.whole.len());
            self.whole.extend_from_slice(&bytes[..bytes.len().min(room)]);
            return;
        };
        let mut tokens = 0;
        for data in sse.push(bytes) {
            if data == "[DONE]" {
                self.ended = true;
                continue;
            }
            tokens += u64::from(has_text(&data));
            // Only the chunks that can carry counts are parsed: parsing every
            // chunk cost several microseconds each, per token streamed.
            if data.contains("\"usage\"") || data.contains("\"timings\"") {
                if let Ok(reply) = ChatReply::from_json(&data) {
                    self.usage = capture::usage(&reply).or(self.usage);
                    self.timings = reply.timings().or(self.timings.take());
                }
            }
        }
        if tokens > 0 {
            let now = Instant::now();
            match self.last_token {
                None => self.first_token = Some(now),
                Some(last) => self.gaps_ms.push(ms(now - last)),
            }
            // Tokens that arrived in one chunk reached the client at once.
            self.gaps_ms.extend(std::iter::repeat_n(0.0, tokens as usize - 1));
            self.last_token = Some(now);
            self.produced += tokens;
        }
        if let Some(meter) = &mut self.watch.meter {
            meter.progress(self.produced);
        }
    }

    /// What the record says the answer measured.
    fn measured(&mut self, total_ms: f64) -> Measured {
        let streamed = self.sse.is_some();
        // Never fewer completion tokens than were visibly streamed.
        let tokens = match self.usage {
            Some((prompt, completion)) => {
                (Some(prompt), Some(completion.max(u32::try_from(self.produced).unwrap_or(u32::MAX))))
            }
            None if streamed => (None, u32::try_from(self.produced).ok()),
            None => (None, None),
        };
        let cost = self
            .price
            .as_ref()
            .zip(self.usage)
            .map(|(p, _)| p.cost(tokens.0.unwrap_or(0), tokens.1.unwrap_or(0), total_ms));
        let t = self.timings.as_ref();
        self.gaps_ms.sort_by(f64::total_cmp);
        // Picked as the engine picks its own (`timings`), so the two agree.
        let p50 = self.gaps_ms.get(self.gaps_ms.len() / 2).copied();
        let p99 = self.gaps_ms.get(self.gaps_ms.len().saturating_sub(1) * 99 / 100).copied();
        let (ttft, itl_p50, itl_p99, itl_max) = if streamed {
            let ttft = self.first_token.map(|at| ms(at - self.watch.began));
            (ttft, p50, p99, self.gaps_ms.last().copied())
        } else {
            // A JSON answer arrives at once: only the engine saw its tokens.
            (t.map(|t| t.ttft_ms), t.map(|t| t.itl_p50_ms), t.map(|t| t.itl_p99_ms), t.map(|t| t.itl_max_ms))
        };
        Measured {
            prompt_tokens: tokens.0,
            cached_tokens: t.map(|t| t.cache_n),
            completion_tokens: tokens.1,
            cost_usd: cost.map(|c| c.usd),
            energy_wh: cost.and_then(|c| c.energy_wh),
            queue_ms: t.map(|t| t.queue_ms),
            prefill_ms: t.map(|t| t.prompt_ms),
            decode_ms: t.map(|t| t.predicted_ms),
            ttft_ms: ttft,
            itl_p50_ms: itl_p50,
            itl_p99_ms: itl_p99,
            itl_max_ms: itl_max,
            total_ms: Some(total_ms),
            disconnected: Some(!self.ended),
        }
    }

    fn observe(&self, m: &Measured) {
        let h = RouteMetrics::of(&self.watch.route);
        let seconds = |ms: Option<f64>| ms.map(|ms| ms / 1e3);
        for (histogram, value) in [
            (&h.duration, seconds(m.total_ms)),
            (&h.ttft, seconds(m.ttft_ms)),
            (&h.queue, seconds(m.queue_ms)),
            (&h.prefill, seconds(m.prefill_ms)),
            (&h.decode, seconds(m.decode_ms)),
        ] {
            if let Some(v) = value {
                histogram.record(v);
            }
        }
        for gap in &self.gaps_ms {
            h.itl.record(gap / 1e3);
        }
        h.prompt_tokens.increment(m.prompt_tokens.map_or(0, u64::from));
        h.completion_tokens.increment(m.completion_tokens.map_or(0, u64::from));
        // The `metrics` crate's counters count integers.
        h.cost_microusd.increment(m.cost_usd.map_or(0, |usd| (usd * 1e6).round() as u64));
    }
}

/// A route's metric handles, made once per route: finding a metric by
/// name and labels costs more than recording into it, and an answer
/// records nine. Routes are few (the policy's, the models', `none`).
struct RouteMetrics {
    duration: metrics::Histogram,
    ttft: metrics::Histogram,
    queue: metrics::Histogram,
    prefill: metrics::Histogram,
    decode: metrics::Histogram,
    itl: metrics::Histogram,
    prompt_tokens: metrics::Counter,
    completion_tokens: metrics::Counter,
    cost_microusd: metrics::Counter,
}

impl RouteMetrics {
    fn of(route: &str) -> Arc<Self> {
        static ALL: OnceLock<RwLock<HashMap<String, Arc<RouteMetrics>>>> = OnceLock::new();
        let all = ALL.get_or_init(RwLock::default);
        if let Some(h) = all.read().unwrap_or_else(PoisonError::into_inner).get(route) {
            return h.clone();
        }
        let label = || [("route", route.to_string())];
        let made = Arc::new(Self {
            duration: metrics::histogram!("switchyard_request_duration_seconds", &label()),
            ttft: metrics::histogram!("switchyard_time_to_first_token_seconds", &label()),
            queue: metrics::histogram!("switchyard_queue_seconds", &label()),
            prefill: metrics::histogram!("switchyard_prefill_seconds", &label()),
            decode: metrics::histogram!("switchyard_decode_seconds", &label()),
            itl: metrics::histogram!("switchyard_inter_token_latency_seconds", &label()),
            prompt_tokens: metrics::counter!("switchyard_prompt_tokens_total", &label()),
            completion_tokens: metrics::counter!("switchyard_completion_tokens_total", &label()),
            cost_microusd: metrics::counter!("switchyard_cost_microusd_total", &label()),
        });
        all.write().unwrap_or_else(PoisonError::into_inner).entry(route.to_string()).or_insert(made).clone()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let total_ms = ms(self.watch.began.elapsed());
        if self.sse.is_none() {
            if let Ok(reply) = ChatReply::from_slice(&self.whole) {
                self.usage = capture::usage(&reply);
                self.timings = reply.timings();
            }
        }
        if let Some(meter) = &self.watch.meter {
            meter.settle(&Settled {
                usage: self.usage,
                produced: self.produced,
                failed: self.failed,
                price: self.price.as_ref(),
                busy_ms: total_ms,
            });
        }
        if self.watch.recorder.is_none() && !self.watch.metrics && !self.watch.trace.is_on() {
            return;
        }
        let measured = self.measured(total_ms);
        self.trace(&measured);
        if self.watch.metrics {
            self.observe(&measured);
        }
        if let Some(recorder) = &self.watch.recorder {
            recorder.measured(std::mem::take(&mut self.watch.request_id), measured);
        }
    }
}

impl Watching {
    /// Ends the request's trace: the engine's stages, placed by its own
    /// clock counted back from now (its last token), then the root span.
    fn trace(&self, m: &Measured) {
        let trace = &self.watch.trace;
        if !trace.is_on() {
            return;
        }
        let now = SystemTime::now();
        if let Some(t) = &self.timings {
            let at =
                |ms: f64| now.checked_sub(Duration::from_secs_f64((t.total_ms - ms).max(0.0) / 1e3)).unwrap_or(now);
            let (queued, prefilled) = (t.queue_ms, t.queue_ms + t.prompt_ms);
            trace.span_between("queue", at(0.0), at(queued));
            trace.span_between("prefill", at(queued), at(prefilled));
            trace.span_between("decode", at(t.ttft_ms), at(t.ttft_ms + t.predicted_ms));
        }
        for (key, value) in
            [("switchyard.prompt_tokens", m.prompt_tokens), ("switchyard.completion_tokens", m.completion_tokens)]
        {
            if let Some(n) = value {
                trace.set(key, i64::from(n));
            }
        }
        if let Some(ttft) = m.ttft_ms {
            trace.set("switchyard.ttft_ms", ttft);
        }
        trace.set("switchyard.disconnected", !self.ended);
        trace.end_at(now);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Does a chunk's JSON carry text (`"content"` or `"refusal"` with a
/// non-empty string)? A scan, not a parse: the count it feeds is corrected
/// by the answer's `usage` at the end.
fn has_text(data: &str) -> bool {
    ["\"content\"", "\"refusal\""].iter().any(|field| {
        data.match_indices(field).any(|(at, f)| {
            let rest = data[at + f.len()..].trim_start();
            rest.strip_prefix(':').is_some_and(|v| {
                let v = v.trim_start();
                v.starts_with('"') && !v.starts_with("\"\"")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::has_text;

    #[test]
    fn text_is_found_without_parsing() {
        assert!(has_text(r#"{"choices":[{"delta":{"content":"hi"}}]}"#));
        assert!(has_text(r#"{"choices":[{"delta":{"content": "hi"}}]}"#), "spaces after the colon");
        assert!(has_text(r#"{"choices":[{"delta":{"refusal":"no"}}]}"#));
        assert!(!has_text(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#), "empty");
        assert!(!has_text(r#"{"choices":[{"delta":{"content":null}}]}"#), "null");
        assert!(!has_text(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#));
    }
}
