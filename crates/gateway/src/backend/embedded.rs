//! A model this process runs, through its continuous-batching scheduler.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use switchyard_engine::{Engine, EventStream, GenerateRequest, LlamaToken, ScoreError};

use super::{Backend, ChatRequest, Generation, Limits};
use crate::error::ApiError;
use crate::validate::ChatParams;

pub struct Embedded {
    engine: Arc<Engine>,
}

impl Embedded {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Backend for Embedded {
    fn generate<'a>(&'a self, req: &'a ChatRequest, _limits: Limits) -> BoxFuture<'a, Result<Generation, ApiError>> {
        async move {
            let (engine, params) = (self.engine.clone(), req.params.clone());
            // Tokenizing a long prompt is real work: keep it off the async workers.
            let events = tokio::task::spawn_blocking(move || submit(&engine, &params))
                .await
                .map_err(|e| ApiError::internal(format!("request task failed: {e}")))??;
            // The answer holds its engine: a model retired by a policy swap
            // is unloaded only after the last answer it started has ended.
            let held = self.engine.clone();
            let events = tokio_stream::wrappers::UnboundedReceiverStream::new(events).map(move |e| {
                let _engine = &held;
                e
            });
            Ok(Generation::Tokens { fingerprint: self.engine.fingerprint(), events: Box::pin(events) })
        }
        .boxed()
    }

    fn score<'a>(&'a self, req: &'a ChatRequest, answer: String) -> BoxFuture<'a, Result<Vec<f64>, ApiError>> {
        let (engine, messages) = (self.engine.clone(), req.params.messages.clone());
        async move {
            // A full queue or a stopped engine answers as it would a request.
            let failed = |engine: &Engine, e: ScoreError| match e {
                ScoreError::Submit(e) => ApiError::from(e),
                e => ApiError::internal(format!("scoring on {}: {e}", engine.id())),
            };
            // Queued in the engine beside its requests, so that an escalated
            // answer on this model finds the prompt's KV in its prefix cache.
            let scoring = tokio::task::spawn_blocking({
                let engine = engine.clone();
                move || {
                    let prompt = chat_prompt(&engine, &messages)?;
                    engine.submit_score(&prompt, &answer).map_err(|e| failed(&engine, e))
                }
            })
            .await
            .map_err(|e| ApiError::internal(format!("scoring task failed: {e}")))??;
            scoring.logprobs().await.map_err(|e| failed(&engine, e))
        }
        .boxed()
    }

    fn count_prompt<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Option<u32>> {
        let (engine, messages) = (self.engine.clone(), req.params.messages.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                // A prompt the template refuses fails on submit with its own error.
                chat_prompt(&engine, &messages).ok().map(|p| u32::try_from(p.len()).unwrap_or(u32::MAX))
            })
            .await
            .ok()
            .flatten()
        }
        .boxed()
    }
}

/// The messages through the model's chat template, as tokens.
fn chat_prompt(engine: &Engine, messages: &[(&'static str, String)]) -> Result<Vec<LlamaToken>, ApiError> {
    let messages: Vec<(&str, &str)> = messages.iter().map(|(r, c)| (*r, c.as_str())).collect();
    engine.chat_prompt(&messages).map_err(|e| ApiError::invalid(Some("messages".into()), e.to_string()))
}

fn submit(engine: &Engine, p: &ChatParams) -> Result<EventStream, ApiError> {
    let prompt = chat_prompt(engine, &p.messages)?;
    Ok(engine.submit(GenerateRequest {
        prompt,
        max_tokens: p.max_tokens,
        sampling: p.sampling.clone(),
        stop: p.stop.clone(),
        top_logprobs: p.logprobs.unwrap_or(0),
        format: p.format.clone(),
    })?)
}
