//! Charging an answer as it is sent: each streamed chunk with text is a
//! completion token, charged when it passes; when the answer ends (or the
//! client leaves), the answer's `usage` corrects the prompt estimate and
//! the count, and its cost at the route's price is charged. A stream cut
//! short has no `usage`: it is charged the estimate and what it produced.
//! An answer that failed without `usage` gives the estimate back.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use bytes::BytesMut;
use futures::StreamExt;
use switchyard_router::Price;
use switchyard_wire::sse::SseDecoder;
use switchyard_wire::ChatReply;

use super::{Limiter, Slot, Subject};

/// Completion tokens counted before they are charged: at most this many
/// are uncounted by other requests while a stream runs.
const CHARGE_EVERY: u64 = 8;
use crate::capture::{self, CAPTURE_LIMIT};

/// The price of the route that answered, put on the response by routing.
#[derive(Debug, Clone)]
pub struct Priced(pub Price);

/// What to charge an admitted request's answer to.
pub struct Meter {
    limiter: Arc<Limiter>,
    subjects: Vec<Subject>,
    /// Prompt tokens charged at admission.
    estimate: u64,
    began: Instant,
    /// The request's places in flight, held until the answer is sent or dropped.
    _slots: Vec<Slot>,
}

impl Meter {
    pub(super) fn new(limiter: Arc<Limiter>, subjects: Vec<Subject>, estimate: u64, slots: Vec<Slot>) -> Self {
        Self { limiter, subjects, estimate, began: Instant::now(), _slots: slots }
    }

    /// Wraps `resp`'s body so it is charged as it is sent, and holds the
    /// request's places in flight until the body is sent or dropped.
    pub fn wrap(self, resp: Response) -> Response {
        let price = resp.extensions().get::<Priced>().map(|p| p.0.clone());
        let stream = resp.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (parts, body) = resp.into_parts();
        let mut counting = Counting {
            meter: self,
            price,
            failed: !parts.status.is_success(),
            sse: stream.then(SseDecoder::default),
            whole: BytesMut::new(),
            produced: 0,
            charged: 0,
            usage: None,
        };
        let body = body.into_data_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                counting.saw(bytes);
            }
            chunk
        });
        Response::from_parts(parts, Body::from_stream(body))
    }
}

/// An answer being charged; the final charge is made when it is dropped,
/// which happens whether the body ended or the client left.
struct Counting {
    meter: Meter,
    price: Option<Price>,
    failed: bool,
    /// For streams; JSON answers are read whole at the end instead.
    sse: Option<SseDecoder>,
    whole: BytesMut,
    /// Completion tokens seen so far, and charged so far.
    produced: u64,
    charged: u64,
    /// Prompt and completion tokens as the answer reported them.
    usage: Option<(u32, u32)>,
}

impl Counting {
    fn saw(&mut self, bytes: &[u8]) {
        let Some(sse) = &mut self.sse else {
            let room = CAPTURE_LIMIT.saturating_sub(self.whole.len());
            self.whole.extend_from_slice(&bytes[..bytes.len().min(room)]);
            return;
        };
        let mut tokens = 0;
        for data in sse.push(bytes) {
            tokens += u64::from(has_text(&data));
            // Only the chunks that can carry counts are parsed: parsing every
            // chunk cost several microseconds each, per token streamed.
            if data.contains("\"usage\"") || data.contains("\"timings\"") {
                if let Some(usage) = ChatReply::from_json(&data).ok().as_ref().and_then(capture::usage) {
                    self.usage = Some(usage);
                }
            }
        }
        self.produced += tokens;
        // Charged a few at a time: each charge takes the limiter's lock.
        let uncharged = self.produced - self.charged;
        if uncharged >= CHARGE_EVERY {
            self.charged = self.produced;
            self.meter.limiter.charge(&self.meter.subjects, uncharged as i64, 0.0);
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        if self.sse.is_none() {
            self.usage = capture::tokens(&self.whole);
        }
        let estimate = i64::try_from(self.meter.estimate).unwrap_or(i64::MAX);
        let produced = i64::try_from(self.produced).unwrap_or(i64::MAX);
        // What was seen but not yet charged is charged with the rest.
        let charged = i64::try_from(self.charged).unwrap_or(i64::MAX);
        if self.usage.is_none() && self.failed && produced == 0 {
            self.meter.limiter.charge(&self.meter.subjects, -estimate, 0.0);
            return;
        }
        let as_u32 = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        // Never less than was visibly streamed, whatever the answer claims;
        // without `usage`, the estimate and what was streamed.
        let (prompt, completion) = match self.usage {
            Some((prompt, completion)) => (prompt, completion.max(as_u32(produced))),
            None => (as_u32(estimate), as_u32(produced)),
        };
        let busy_ms = self.meter.began.elapsed().as_secs_f64() * 1e3;
        let cost = self.price.as_ref().map_or(0.0, |p| p.cost(prompt, completion, busy_ms).usd);
        let tokens = i64::from(prompt) - estimate + i64::from(completion) - charged;
        self.meter.limiter.charge(&self.meter.subjects, tokens, cost);
    }
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
