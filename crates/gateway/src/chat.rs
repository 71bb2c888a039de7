//! `POST /v1/chat/completions` against an embedded engine.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use switchyard_engine::{Engine, Event, EventStream, GenerateRequest, Piece, Summary};
use switchyard_wire::*;

use crate::error::ApiError;
use crate::resilience::gap_limited;
use crate::validate::{chat_params, ChatParams};
use crate::AppState;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-switchyard-request-id");

/// Parses the body with the path of any type error, so the client learns
/// which parameter was wrong, not just that something was.
fn parse(body: Result<Bytes, BytesRejection>) -> Result<ChatCompletionRequest, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError { status: rejection.status(), ..ApiError::invalid(None, format!("could not read the request body: {}", rejection.body_text())) }
            .with_code(if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "invalid_body" })
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::invalid(None, format!("We could not parse the JSON body of your request: {inner}")).with_code("invalid_json")
        } else {
            ApiError::invalid(Some(path.clone()), format!("Invalid type or value for `{path}`: {inner}")).with_code("invalid_type")
        }
    })
}

pub async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    // Time-ordered (v7): the decisions table is keyed by this id, and random
    // keys made every insert land on a random B-tree page. With a few
    // hundred thousand records that was most of the cost of recording.
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let mut resp = match handle(&state, &id, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::info!(request_id = %id, status = %e.status, code = ?e.code, "request refused: {}", e.message);
            e.into_response()
        }
    };
    resp.headers_mut().insert(REQUEST_ID_HEADER, HeaderValue::from_str(&id).expect("ascii id"));
    resp
}

async fn handle(state: &AppState, id: &str, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req = parse(body)?;
    if let Some(routing) = &state.routing {
        let params = chat_params(&req)?;
        return routing.serve(state, id, headers, &req, params).await;
    }
    let engine = state.engines.get(&req.model).ok_or_else(|| ApiError::model_not_found(&req.model, &state.model_ids()))?.clone();
    let params = chat_params(&req)?;
    embedded(engine, params, id, &req.model).await
}

/// Answers from an embedded engine, with no time limits (the unrouted path).
pub async fn embedded(engine: Arc<Engine>, params: ChatParams, id: &str, model: &str) -> Result<Response, ApiError> {
    Started::start(engine, params, Hold::default()).await?.respond(id, model, None).await
}

/// How much of an embedded answer to receive before committing to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hold {
    /// Fail (and cancel) if no first token arrives within this.
    pub ttft: Option<Duration>,
    /// Hold back this many tokens (a cascade judges them before anything is
    /// sent); `usize::MAX` holds the whole answer.
    pub tokens: usize,
    /// Fail if the held tokens take longer than this.
    pub total: Option<Duration>,
}

/// An embedded answer in progress: the events held back so far, and the
/// rest. Dropping it cancels the request (the engine frees the sequence).
pub struct Started {
    engine: Arc<Engine>,
    params: ChatParams,
    held: Vec<Event>,
    rest: EventStream,
}

impl Started {
    pub async fn start(engine: Arc<Engine>, params: ChatParams, hold: Hold) -> Result<Self, ApiError> {
        let began = tokio::time::Instant::now();
        // Tokenizing a long prompt is real work: keep it off the async workers.
        let (engine, params, submitted) = tokio::task::spawn_blocking(move || {
            let submitted = submit(&engine, &params);
            (engine, params, submitted)
        })
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?;
        let mut rest = submitted?;
        let mut held = Vec::new();
        let model = engine.id().to_string();
        let mut tokens = 0;
        while tokens < hold.tokens.max(usize::from(hold.ttft.is_some())) {
            let limit = match (held.is_empty(), hold.ttft, hold.total) {
                (true, Some(ttft), _) => Some((ttft, "no first token")),
                (_, _, Some(total)) => Some((total.saturating_sub(began.elapsed()), "answer not finished")),
                _ => None,
            };
            let next = match limit {
                None => rest.recv().await,
                Some((limit, what)) => tokio::time::timeout(limit, rest.recv())
                    .await
                    .map_err(|_| ApiError::timeout(format!("{what} from {model} within {} ms", limit.as_millis())))?,
            };
            let Some(event) = next else { break };
            let terminal = !matches!(event, Event::Token(_));
            tokens += usize::from(!terminal);
            held.push(event);
            if terminal {
                break;
            }
        }
        Ok(Self { engine, params, held, rest })
    }

    /// The text of the tokens held so far.
    pub fn held_text(&self) -> String {
        self.held.iter().filter_map(|e| if let Event::Token(p) = e { Some(p.text.as_str()) } else { None }).collect()
    }

    /// The logprobs of the tokens held so far.
    pub fn held_logprobs(&self) -> Vec<f64> {
        self.held.iter().filter_map(|e| if let Event::Token(p) = e { Some(p.logprob.logprob) } else { None }).collect()
    }

    /// Sends the answer: held events first, then the rest as it comes. With
    /// `gap`, a stream that goes quiet for longer ends with an error event.
    pub async fn respond(self, id: &str, model: &str, gap: Option<Duration>) -> Result<Response, ApiError> {
        let Self { engine, params, held, rest } = self;
        let rest = tokio_stream::wrappers::UnboundedReceiverStream::new(rest);
        let rest: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>> = match gap {
            None => Box::pin(rest),
            Some(limit) => {
                let message = format!("{model} produced no token for {} ms; the answer was cut off", limit.as_millis());
                Box::pin(gap_limited(rest, limit, move || Event::Error(message)))
            }
        };
        let events = stream::iter(held).chain(rest);
        let reply = Reply { id: id.to_string(), created: unix_now(), model: model.to_string(), fingerprint: engine.fingerprint(), params };
        if reply.params.stream {
            Ok(reply.stream(events).into_response())
        } else {
            reply.collect(events).await.map(|c| Json(c).into_response())
        }
    }
}

fn submit(engine: &Engine, p: &ChatParams) -> Result<EventStream, ApiError> {
    let messages: Vec<(&str, &str)> = p.messages.iter().map(|(r, c)| (*r, c.as_str())).collect();
    let prompt = engine.chat_prompt(&messages).map_err(|e| ApiError::invalid(Some("messages".into()), e.to_string()))?;
    Ok(engine.submit(GenerateRequest {
        prompt,
        max_tokens: p.max_tokens,
        sampling: p.sampling.clone(),
        stop: p.stop.clone(),
        top_logprobs: p.logprobs.unwrap_or(0),
        format: p.format.clone(),
    })?)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What every part of one answer shares.
pub(crate) struct Reply {
    id: String,
    created: i64,
    model: String,
    fingerprint: String,
    params: ChatParams,
}

impl Reply {
    fn logprobs(&self, pieces: &[Piece]) -> Option<ChoiceLogprobs> {
        self.params.logprobs.map(|_| ChoiceLogprobs { content: Some(pieces.iter().map(|p| p.logprob.clone()).collect()), refusal: None })
    }

    async fn collect(self, events: impl Stream<Item = Event>) -> Result<ChatCompletion, ApiError> {
        let mut text = String::new();
        let mut pieces = Vec::new();
        let mut events = std::pin::pin!(events);
        while let Some(ev) = events.next().await {
            match ev {
                Event::Token(p) => {
                    text.push_str(&p.text);
                    pieces.push(p);
                }
                Event::Error(e) => return Err(ApiError::internal(e)),
                Event::Done(summary) => {
                    return Ok(ChatCompletion {
                        id: self.id.clone(),
                        object: CHAT_COMPLETION_OBJECT.into(),
                        created: self.created,
                        model: self.model.clone(),
                        system_fingerprint: Some(self.fingerprint.clone()),
                        choices: vec![Choice {
                            index: 0,
                            message: AssistantMessage { role: Role::Assistant, content: Some(text), refusal: None },
                            logprobs: self.logprobs(&pieces),
                            finish_reason: Some(summary.finish_reason),
                        }],
                        usage: Some(Usage::new(summary.prompt_tokens, summary.completion_tokens)),
                        timings: Some(summary.timings),
                    });
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
            system_fingerprint: Some(self.fingerprint.clone()),
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
        if self.params.include_usage {
            let mut usage = self.chunk(vec![]);
            usage.usage = Some(Usage::new(s.prompt_tokens, s.completion_tokens));
            usage.timings = Some(s.timings);
            vec![last, usage]
        } else {
            last.timings = Some(s.timings);
            vec![last]
        }
    }

    /// SSE: role chunk, one chunk per token, closing chunks, `[DONE]`. If the
    /// client goes away, axum drops this stream and with it the engine's
    /// receiver, which frees the sequence at the next scheduler step.
    fn stream(self, events: impl Stream<Item = Event> + Send + 'static) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let first = self.delta(Delta { role: Some(Role::Assistant), content: Some(String::new()), refusal: None }, &[], None);
        let reply = Arc::new(self);
        let head = stream::iter([json_event(&first)]);
        let body = events.flat_map(move |ev| {
            let events: Vec<SseEvent> = match ev {
                Event::Token(p) => {
                    let delta = Delta { content: Some(p.text.clone()), ..Default::default() };
                    vec![json_event(&reply.delta(delta, std::slice::from_ref(&p), None))]
                }
                Event::Done(s) => {
                    let mut out: Vec<_> = reply.closing(s).iter().map(json_event).collect();
                    out.push(SseEvent::default().data("[DONE]"));
                    out
                }
                Event::Error(e) => vec![json_event(&ApiError::internal(e).body())],
            };
            stream::iter(events)
        });
        Sse::new(head.chain(body).map(Ok))
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).expect("wire types serialize"))
}
