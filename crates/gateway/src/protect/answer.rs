//! Answers on their way out: the output guard redacts what its detectors
//! find in the model's text, then the placeholders a redacted prompt got
//! are put back (so a value the caller sent comes back to them, and a
//! value the model made up does not get out).
//!
//! A JSON answer is rewritten whole; a stream is rewritten chunk by chunk,
//! each chunk's `delta.content` replaced by what the rewriters release.
//! Held text goes out with the chunk that carries `finish_reason` (or, if
//! none came, in one more chunk before `[DONE]`); a stream that breaks off
//! loses what was held rather than sending it unchecked.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use switchyard_router::detect::{Guard, Placeholders, Restorer};
use switchyard_router::Policy;
use switchyard_wire::sse::SseDecoder;

/// The largest JSON answer rewritten whole; a larger one breaks off with
/// an error rather than going out unchecked.
const JSON_LIMIT: usize = 16 << 20;

/// The rewriters one answer goes through.
pub struct Outbound {
    guard: Option<Guard>,
    restorer: Option<Restorer>,
}

impl Outbound {
    /// `None` when the answer goes out as it is.
    pub fn new(policy: &Policy, placeholders: Option<&Placeholders>) -> Option<Self> {
        let guard = policy
            .protect
            .as_ref()
            .and_then(|p| p.output.as_ref())
            .map(|(detectors, dfa)| Guard::new(detectors.clone(), dfa.clone()));
        let restorer = placeholders.filter(|p| !p.is_empty()).map(Placeholders::restorer);
        (guard.is_some() || restorer.is_some()).then_some(Self { guard, restorer })
    }

    fn push(&mut self, text: &str) -> String {
        let checked = match &mut self.guard {
            Some(g) => Cow::Owned(g.push(text)),
            None => Cow::Borrowed(text),
        };
        match &mut self.restorer {
            Some(r) => r.push(&checked),
            None => checked.into_owned(),
        }
    }

    fn finish(&mut self) -> String {
        let checked = self.guard.as_mut().map(Guard::finish).unwrap_or_default();
        let mut out = match &mut self.restorer {
            Some(r) => r.push(&checked),
            None => checked,
        };
        if let Some(r) = &mut self.restorer {
            out.push_str(&r.finish());
        }
        if let Some(g) = &mut self.guard {
            for detector in g.redacted.drain(..) {
                metrics::counter!("switchyard_output_redactions_total", "detector" => detector.to_string())
                    .increment(1);
            }
        }
        out
    }

    /// The answer, rewritten as it is sent.
    pub fn wrap(self, resp: Response) -> Response {
        if !resp.status().is_success() {
            return resp;
        }
        let stream = resp.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(CONTENT_LENGTH);
        let body = if stream {
            let mut state = Sse { outbound: self, decoder: SseDecoder::default(), template: None };
            Body::from_stream(body.into_data_stream().map(move |chunk| chunk.map(|bytes| state.rewrite(&bytes))))
        } else {
            let mut outbound = self;
            Body::from_stream(futures::stream::once(async move {
                let bytes = axum::body::to_bytes(body, JSON_LIMIT).await?;
                Ok::<_, axum::Error>(outbound.rewrite_json(bytes))
            }))
        };
        Response::from_parts(parts, body)
    }

    fn rewrite_json(&mut self, bytes: Bytes) -> Bytes {
        let Ok(mut reply) = serde_json::from_slice::<Value>(&bytes) else { return bytes };
        if let Some(choices) = reply.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                if let Some(content) = choice.pointer_mut("/message/content") {
                    if let Some(text) = content.as_str() {
                        let rewritten = self.push(text) + &self.finish();
                        *content = Value::String(rewritten);
                    }
                }
            }
        }
        serde_json::to_vec(&reply).map(Bytes::from).unwrap_or(bytes)
    }
}

/// A stream being rewritten.
struct Sse {
    outbound: Outbound,
    decoder: SseDecoder,
    /// The first chunk with choices: the shape of a chunk made to carry
    /// held text when no chunk finished the answer.
    template: Option<Value>,
}

impl Sse {
    fn rewrite(&mut self, bytes: &[u8]) -> Bytes {
        let mut out = String::new();
        for data in self.decoder.push(bytes) {
            self.event(&data, &mut out);
        }
        Bytes::from(out)
    }

    fn event(&mut self, data: &str, out: &mut String) {
        if data == "[DONE]" {
            let rest = self.outbound.finish();
            if let (false, Some(mut chunk)) = (rest.is_empty(), self.template.take()) {
                if let Some(choice) = chunk.pointer_mut("/choices/0").and_then(Value::as_object_mut) {
                    choice.insert("delta".into(), serde_json::json!({ "content": rest }));
                    choice.insert("finish_reason".into(), Value::Null);
                }
                out.push_str(&format!("data: {chunk}\n\n"));
            }
            out.push_str("data: [DONE]\n\n");
            return;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            out.push_str(&format!("data: {data}\n\n"));
            return;
        };
        if let Some(choice) = chunk.pointer_mut("/choices/0") {
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let content = choice.pointer("/delta/content").and_then(Value::as_str).map(str::to_string);
            let mut text = content.as_deref().map(|c| self.outbound.push(c)).unwrap_or_default();
            if finished {
                text.push_str(&self.outbound.finish());
            }
            if content.is_some() || !text.is_empty() {
                // A finishing chunk may come without a `delta`: held text
                // still goes out in it.
                if let Some(choice) = choice.as_object_mut() {
                    match choice.get_mut("delta").and_then(Value::as_object_mut) {
                        Some(delta) => {
                            delta.insert("content".into(), Value::String(text));
                        }
                        None => {
                            choice.insert("delta".into(), serde_json::json!({ "content": text }));
                        }
                    }
                }
            }
            if self.template.is_none() && !finished {
                self.template = Some(chunk.clone());
            }
        }
        out.push_str(&format!("data: {chunk}\n\n"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};
    use switchyard_router::detect::{Finding, Placeholders};

    use super::{Outbound, Sse};

    /// Held text goes out with the finishing chunk even when that chunk
    /// carries no `delta` at all, and a malformed choice is passed on.
    #[test]
    fn held_text_goes_out_with_a_finish_chunk_that_has_no_delta() {
        let mut p = Placeholders::default();
        let text = "mail bob@example.org";
        assert_eq!(p.redact(text, &[Finding { detector: Arc::from("email"), range: 5..20 }]), "mail [EMAIL_1]");
        let outbound = Outbound { guard: None, restorer: Some(p.restorer()) };
        let mut sse = Sse { outbound, decoder: Default::default(), template: None };
        let mut out = String::new();
        sse.event(&json!({"choices": [{"index": 0, "delta": {"content": "to [EMA"}}]}).to_string(), &mut out);
        sse.event(&json!({"choices": [{"index": 0, "finish_reason": "stop"}]}).to_string(), &mut out);
        sse.event(&json!({"choices": ["not an object"]}).to_string(), &mut out);
        sse.event("[DONE]", &mut out);
        let content: String = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_string))
            .collect();
        assert_eq!(content, "to [EMA", "a placeholder cut short at the finish is released as it came");
        assert!(out.ends_with("data: [DONE]\n\n") && out.contains("not an object"), "{out}");
    }
}
