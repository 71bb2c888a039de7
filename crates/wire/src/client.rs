//! One tolerant OpenAI client for the tools (bench, eval): [`post_chat`]
//! sends a chat completion request and hands back the status, the
//! `x-switchyard-*` headers, and the answer as one [`ChatReply`] or as a
//! stream of them, each stamped with when its bytes arrived.
//!
//! Nothing is buffered beyond what one read of the connection brings: a
//! chunk is stamped the moment its bytes come off the socket, so TTFT and
//! ITL measured from the stamps are the client's own view.

use std::collections::VecDeque;
use std::fmt;

use serde::Serialize;
use tokio::time::Instant;

pub use reqwest::StatusCode;

use crate::headers;
use crate::reply::ChatReply;
use crate::sse::SseDecoder;

/// The `x-switchyard-*` headers of an answer, when the server is a switchyard router.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchyardHeaders {
    pub route: Option<String>,
    /// A [`ResultLabel`](crate::ResultLabel) as sent.
    pub label: Option<String>,
    pub policy: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub handoff_id: Option<String>,
}

impl SwitchyardHeaders {
    pub fn from_headers(h: &reqwest::header::HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self {
            route: get(headers::ROUTE),
            label: get(headers::LABEL),
            policy: get(headers::POLICY),
            reason: get(headers::REASON),
            request_id: get(headers::REQUEST_ID),
            handoff_id: get(headers::HANDOFF_ID),
        }
    }
}

/// `POST {base_url}/chat/completions` with `body` as JSON and `headers`
/// added. Fails only when no answer came (connection refused, reset before
/// the headers); an error status is an answer, for the caller to judge.
pub async fn post_chat(
    client: &reqwest::Client,
    base_url: &str,
    headers: &[(String, String)],
    body: &impl Serialize,
) -> Result<ChatResponse, reqwest::Error> {
    let send = || {
        let mut req = client.post(format!("{}/chat/completions", base_url.trim_end_matches('/'))).json(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    // A kept-alive connection the server closed as the request went out
    // fails while sending, before any answer: sent again once, on a new
    // connection, as HTTP clients (the official `openai` one among them) do.
    // A refused connection or a timeout is the server's answer, not retried.
    let resp = match send().await {
        Err(e) if e.is_request() && !e.is_connect() && !e.is_timeout() => send().await?,
        other => other?,
    };
    Ok(ChatResponse { status: resp.status(), switchyard: SwitchyardHeaders::from_headers(resp.headers()), resp })
}

/// An answer whose headers have come; its body is read by one of the methods.
#[derive(Debug)]
pub struct ChatResponse {
    pub status: StatusCode,
    pub switchyard: SwitchyardHeaders,
    resp: reqwest::Response,
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed mid-body.
    Broken(reqwest::Error),
    /// The body (or one `data:` event of a stream) is not JSON.
    Malformed { text: String, error: serde_json::Error },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Broken(e) => write!(f, "stream broke: {e}"),
            ReadError::Malformed { text, error } => {
                write!(f, "malformed ({error}): {}", text.chars().take(120).collect::<String>())
            }
        }
    }
}

impl std::error::Error for ReadError {}

impl ChatResponse {
    /// The whole body as one completion.
    pub async fn completion(self) -> Result<ChatReply, ReadError> {
        let bytes = self.resp.bytes().await.map_err(ReadError::Broken)?;
        ChatReply::from_slice(&bytes)
            .map_err(|error| ReadError::Malformed { text: String::from_utf8_lossy(&bytes).into_owned(), error })
    }

    /// The body as a stream of server-sent events.
    pub fn chunks(self) -> ChunkStream {
        ChunkStream { body: self.resp, sse: SseDecoder::default(), ready: VecDeque::new(), done: false }
    }

    /// An error answer's message: `error.message` of an OpenAI error body,
    /// else the body's text.
    pub async fn error_message(self) -> String {
        let text = self.resp.text().await.unwrap_or_default();
        ChatReply::from_json(&text).ok().and_then(|r| r.error?.message).unwrap_or(text)
    }
}

/// One event of a stream, stamped with when the bytes that completed it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub reply: ChatReply,
    pub at: Instant,
}

/// The events of a streamed answer, read as they arrive.
pub struct ChunkStream {
    body: reqwest::Response,
    sse: SseDecoder,
    /// Events of the last read, not yet handed out, with that read's arrival time.
    ready: VecDeque<(String, Instant)>,
    done: bool,
}

impl fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStream")
            .field("ready", &self.ready.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ChunkStream {
    /// The next event, or `None` when the body has ended. `[DONE]` is not an
    /// event: it sets [`ChunkStream::done`], and reading goes on to the end.
    pub async fn next(&mut self) -> Option<Result<Chunk, ReadError>> {
        loop {
            if let Some((data, at)) = self.ready.pop_front() {
                if data == "[DONE]" {
                    self.done = true;
                    continue;
                }
                return Some(
                    ChatReply::from_json(&data)
                        .map(|reply| Chunk { reply, at })
                        .map_err(|error| ReadError::Malformed { text: data, error }),
                );
            }
            let bytes = match self.body.chunk().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return None,
                Err(e) => return Some(Err(ReadError::Broken(e))),
            };
            let at = Instant::now();
            self.ready.extend(self.sse.push(&bytes).into_iter().map(|d| (d, at)));
        }
    }

    /// Whether `[DONE]` has come.
    pub fn done(&self) -> bool {
        self.done
    }

    /// What did not end as an event: all of the body from a server that
    /// answered with plain JSON instead of a stream.
    pub fn rest(&self) -> &[u8] {
        self.sse.rest()
    }
}
