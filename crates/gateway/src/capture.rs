//! Seeing what an answer said after it was sent, without delaying it: the
//! body is copied as it streams past, and read once it ends. Shadow traffic
//! compares the text; `observe::answer` reads a reply's token counts.

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, PoisonError};

use futures::stream::{self, StreamExt};
use serde_json::Value;
use switchyard_wire::sse::SseDecoder;
use switchyard_wire::ChatReply;

/// Bytes of an answer kept for reading; the rest still reaches the client.
pub const CAPTURE_LIMIT: usize = 256 * 1024;

/// Calls `on_done(status, body)` once: when the body's last byte has been
/// handed to the connection (before the client can see the end), or when
/// the client abandons it (then with what was sent so far), so nothing
/// waits on a half-read stream.
pub fn tap(resp: Response, on_done: impl FnOnce(u16, Bytes) + Send + 'static) -> Response {
    struct Capture<F: FnOnce(u16, Bytes)> {
        on_done: Option<F>,
        status: u16,
        buf: BytesMut,
    }
    impl<F: FnOnce(u16, Bytes)> Capture<F> {
        fn finish(&mut self) {
            if let Some(f) = self.on_done.take() {
                f(self.status, self.buf.split().freeze());
            }
        }
    }
    impl<F: FnOnce(u16, Bytes)> Drop for Capture<F> {
        fn drop(&mut self) {
            self.finish();
        }
    }
    let (parts, body) = resp.into_parts();
    let capture =
        Arc::new(Mutex::new(Capture { on_done: Some(on_done), status: parts.status.as_u16(), buf: BytesMut::new() }));
    let at_end = capture.clone();
    let body = body
        .into_data_stream()
        .map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let mut c = capture.lock().unwrap_or_else(PoisonError::into_inner);
                let room = CAPTURE_LIMIT.saturating_sub(c.buf.len());
                c.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            chunk
        })
        .chain(
            stream::once(async move { at_end.lock().unwrap_or_else(PoisonError::into_inner).finish() })
                .filter_map(|()| async { None }),
        );
    Response::from_parts(parts, Body::from_stream(body))
}

/// What a body says, read leniently: the body itself, or each `data:`
/// event of a stream (`[DONE]` and anything else that is not JSON skipped).
fn replies(body: &[u8]) -> Vec<ChatReply> {
    if let Ok(whole) = ChatReply::from_slice(body) {
        return vec![whole];
    }
    SseDecoder::default().push(body).iter().filter_map(|d| ChatReply::from_json(d).ok()).collect()
}

/// Prompt and completion tokens one reply (or chunk) states, if any.
pub fn usage(r: &ChatReply) -> Option<(u32, u32)> {
    let n = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let usage = r.usage.as_ref().and_then(|u| u.prompt_tokens.zip(u.completion_tokens));
    // `prompt_n` counts only the prompt tokens evaluated; the cached rest
    // (`cache_n`) is part of the prompt too.
    let prompt = |t: &Value| n(&t["prompt_n"]).map(|p| p.saturating_add(n(&t["cache_n"]).unwrap_or(0)));
    usage.or_else(|| r.timings.as_ref().and_then(|t| prompt(t).zip(n(&t["predicted_n"]))))
}

/// The assistant's text in a chat completion (JSON) or a stream of chunks
/// (SSE): content, or a refusal; `None` if the body holds neither.
pub fn answer_text(body: &[u8]) -> Option<String> {
    replies(body)
        .iter()
        .filter_map(|r| r.choice().and_then(|c| c.part()).and_then(|p| p.content.clone().or_else(|| p.refusal.clone())))
        .reduce(|a, b| a + &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_reads_json_and_sse() {
        let json = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"4"}}]}"#;
        assert_eq!(answer_text(json).as_deref(), Some("4"));
        let sse = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"fo\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"ur\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(answer_text(sse).as_deref(), Some("four"));
        assert_eq!(answer_text(br#"{"error":{"message":"x"}}"#), None);
        assert_eq!(answer_text(b""), None);
    }

    #[test]
    fn usage_comes_from_usage_or_timings() {
        let whole = ChatReply::from_slice(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        );
        assert_eq!(whole.ok().as_ref().and_then(usage), Some((3, 5)));
        let last = ChatReply::from_json(r#"{"choices":[],"timings":{"prompt_n":7,"predicted_n":2}}"#);
        assert_eq!(last.ok().as_ref().and_then(usage), Some((7, 2)));
        assert_eq!(ChatReply::from_json(r#"{"choices":[]}"#).ok().as_ref().and_then(usage), None);
    }

    #[tokio::test]
    async fn the_tap_passes_the_body_through_and_reports_it_once_dropped() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let resp = tap(Response::new(Body::from("hello")), move |status, body| tx.send((status, body)).unwrap());
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"hello");
        assert_eq!(rx.await.unwrap(), (200, Bytes::from("hello")));

        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(tap(Response::new(Body::from("never read")), move |status, body| tx.send((status, body)).unwrap()));
        assert_eq!(rx.await.unwrap().1, Bytes::new(), "an abandoned body still reports, with what it saw");
    }
}
