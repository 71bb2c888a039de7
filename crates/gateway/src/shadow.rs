//! Shadow traffic plumbing: capturing what the primary route sent the
//! client (without delaying it), and reading the answer text out of a JSON
//! or SSE body so two routes' answers can be compared.

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;

/// Bytes of an answer kept for comparison; the rest still reaches the client.
pub const CAPTURE_LIMIT: usize = 256 * 1024;

/// The sending half: what the primary route answered (route, status, body).
pub struct Primary(oneshot::Sender<(String, u16, Bytes)>);

impl Primary {
    pub fn channel() -> (Self, oneshot::Receiver<(String, u16, Bytes)>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }
}

/// Copies the body into the shadow task's channel as it streams past. The
/// copy is sent when the body is dropped (finished or abandoned by the
/// client), so the shadow record never waits on a half-read stream.
pub fn tap(resp: Response, route: String, primary: Primary) -> Response {
    struct Capture {
        tx: Option<Primary>,
        route: String,
        status: u16,
        buf: BytesMut,
    }
    impl Drop for Capture {
        fn drop(&mut self) {
            if let Some(Primary(tx)) = self.tx.take() {
                let _ = tx.send((std::mem::take(&mut self.route), self.status, self.buf.split().freeze()));
            }
        }
    }
    let (parts, body) = resp.into_parts();
    let mut capture = Capture { tx: Some(primary), route, status: parts.status.as_u16(), buf: BytesMut::new() };
    let body = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            let room = CAPTURE_LIMIT.saturating_sub(capture.buf.len());
            capture.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// The assistant's text in a chat completion (JSON) or a stream of chunks
/// (SSE); `None` if the body holds neither.
pub fn answer_text(body: &[u8]) -> Option<String> {
    let message_text = |m: &Value| m["content"].as_str().or_else(|| m["refusal"].as_str()).map(str::to_string);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return message_text(&v["choices"][0]["message"]);
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut out: Option<String> = None;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(chunk) = serde_json::from_str::<Value>(data) {
            if let Some(piece) = message_text(&chunk["choices"][0]["delta"]) {
                out.get_or_insert_with(String::new).push_str(&piece);
            }
        }
    }
    out
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

    #[tokio::test]
    async fn the_tap_passes_the_body_through_and_reports_it_once_dropped() {
        let (primary, rx) = Primary::channel();
        let resp = tap(Response::new(Body::from("hello")), "local".into(), primary);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"hello");
        assert_eq!(rx.await.unwrap(), ("local".to_string(), 200, Bytes::from("hello")));

        let (primary, rx) = Primary::channel();
        drop(tap(Response::new(Body::from("never read")), "local".into(), primary));
        assert_eq!(rx.await.unwrap().2, Bytes::new(), "an abandoned body still reports, with what it saw");
    }
}
