//! The OpenAI envelope of every answer switchyard writes itself: a model's
//! tokens as a `chat.completion` or a stream of `chat.completion.chunk`s,
//! and the fixed replies no model wrote (refusals, handoff notices). The one
//! place these shapes are built; upstream answers pass through untouched.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use switchyard_engine::{Event, Piece, Summary};
use switchyard_wire::*;

use crate::backend::ChatRequest;
use crate::error::ApiError;

/// What an answer's stream carries: the model's events, or the gateway
/// cutting it off (a limit, a failure) with an error to show.
pub enum Item {
    Event(Event),
    Failed(ApiError),
}

/// What every part of one answer shares.
pub struct Envelope {
    id: String,
    created: i64,
    /// The model named in the answer.
    model: String,
    fingerprint: Option<String>,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

impl Envelope {
    pub fn new(req: &ChatRequest, model: &str) -> Self {
        Self {
            id: req.id.clone(),
            created: switchyard_wire::unix_secs(),
            model: model.to_string(),
            fingerprint: None,
            stream: req.params.stream,
            include_usage: req.params.include_usage,
            logprobs: req.params.logprobs.is_some(),
        }
    }

    pub fn with_fingerprint(mut self, fingerprint: String) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// The answer: SSE if the client asked for a stream, else the whole
    /// completion once the items end (failing with the first error).
    pub async fn answer(self, items: impl Stream<Item = Item> + Send + 'static) -> Result<Response, ApiError> {
        if self.stream {
            Ok(self.sse(items).into_response())
        } else {
            self.collect(items).await.map(|c| Json(c).into_response())
        }
    }

    /// A fixed answer that no model wrote: a refusal (`message.refusal` set,
    /// no content, as OpenAI shapes one) or a notice (`content`).
    pub fn fixed(&self, content: Option<&str>, refusal: Option<&str>) -> Response {
        let (content, refusal) = (content.map(str::to_string), refusal.map(str::to_string));
        if self.stream {
            let events = [
                self.delta(Delta { role: Some(Role::Assistant), refusal, content }, &[], None),
                self.delta(Delta::default(), &[], Some(FinishReason::Stop)),
            ];
            let mut body: String = events.iter().map(|c| format!("data: {}\n\n", to_json(c))).collect();
            body.push_str("data: [DONE]\n\n");
            return ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body).into_response();
        }
        Json(self.completion(
            AssistantMessage { role: Role::Assistant, content, refusal },
            None,
            FinishReason::Stop,
            Usage::new(0, 0),
            None,
        ))
        .into_response()
    }

    fn logprobs(&self, pieces: &[Piece]) -> Option<ChoiceLogprobs> {
        self.logprobs.then(|| ChoiceLogprobs {
            content: Some(pieces.iter().map(|p| p.logprob.clone()).collect()),
            refusal: None,
        })
    }

    fn completion(
        &self,
        message: AssistantMessage,
        logprobs: Option<ChoiceLogprobs>,
        finish: FinishReason,
        usage: Usage,
        timings: Option<Timings>,
    ) -> ChatCompletion {
        ChatCompletion {
            id: self.id.clone(),
            object: CHAT_COMPLETION_OBJECT.into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: vec![Choice { index: 0, message, logprobs, finish_reason: Some(finish) }],
            usage: Some(usage),
            timings,
        }
    }

    async fn collect(self, items: impl Stream<Item = Item>) -> Result<ChatCompletion, ApiError> {
        let mut text = String::new();
        let mut pieces = Vec::new();
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            match item {
                Item::Event(Event::Token(p)) => {
                    text.push_str(&p.text);
                    pieces.push(p);
                }
                Item::Event(Event::Error(e)) => return Err(ApiError::internal(e)),
                Item::Failed(e) => return Err(e),
                Item::Event(Event::Done(s)) => {
                    let message = AssistantMessage { role: Role::Assistant, content: Some(text), refusal: None };
                    let usage = Usage::new(s.prompt_tokens, s.completion_tokens);
                    return Ok(self.completion(
                        message,
                        self.logprobs(&pieces),
                        s.finish_reason,
                        usage,
                        Some(s.timings),
                    ));
                }
            }
        }
        Err(ApiError::internal("the engine ended the request without a result"))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: CHAT_COMPLETION_CHUNK_OBJECT.into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage: None,
            timings: None,
        }
    }

    fn delta(&self, delta: Delta, pieces: &[Piece], finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        let logprobs = if pieces.is_empty() { None } else { self.logprobs(pieces) };
        self.chunk(vec![ChunkChoice { index: 0, delta, logprobs, finish_reason }])
    }

    /// The closing chunks: `finish_reason`, then usage if asked; `timings`
    /// ride on the last one.
    fn closing(&self, s: Summary) -> Vec<ChatCompletionChunk> {
        let mut last = self.delta(Delta::default(), &[], Some(s.finish_reason));
        if self.include_usage {
            let mut usage = self.chunk(vec![]);
            usage.usage = Some(Usage::new(s.prompt_tokens, s.completion_tokens));
            usage.timings = Some(s.timings);
            vec![last, usage]
        } else {
            last.timings = Some(s.timings);
            vec![last]
        }
    }

    /// SSE: role chunk, one chunk per token, closing chunks, `[DONE]`; a
    /// failure ends it with an error event. If the client goes away, axum
    /// drops this stream and with it the model's events, which cancels the
    /// generation.
    fn sse(
        self,
        items: impl Stream<Item = Item> + Send + 'static,
    ) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let first =
            self.delta(Delta { role: Some(Role::Assistant), content: Some(String::new()), refusal: None }, &[], None);
        let this = Arc::new(self);
        let head = stream::iter([json_event(&first)]);
        let body = items.flat_map(move |item| {
            let events: Vec<SseEvent> = match item {
                Item::Event(Event::Token(p)) => {
                    let delta = Delta { content: Some(p.text.clone()), ..Default::default() };
                    vec![json_event(&this.delta(delta, std::slice::from_ref(&p), None))]
                }
                Item::Event(Event::Done(s)) => {
                    let mut out: Vec<_> = this.closing(s).iter().map(json_event).collect();
                    out.push(SseEvent::default().data("[DONE]"));
                    out
                }
                Item::Event(Event::Error(e)) => vec![json_event(&ApiError::internal(e).body())],
                Item::Failed(e) => vec![json_event(&e.body())],
            };
            stream::iter(events)
        });
        Sse::new(head.chain(body).map(Ok))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // The wire types are plain structs of strings and numbers: serializing
    // them cannot fail, and an empty body would show if it ever did.
    serde_json::to_string(value).unwrap_or_default()
}

fn json_event<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(to_json(value))
}
