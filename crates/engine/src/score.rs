//! Teacher-forced scoring: the model's logprob of each token of a given
//! continuation, i.e. its verdict on an answer it did not write. A cascade
//! can ask the escalation model whether it would have written the fast
//! model's answer; where it would, escalating changes nothing.
//!
//! A scoring job runs in the scheduler like a request that generates
//! nothing: its prompt and the continuation are prefilled in a slot, with
//! logits read where the next token is a continuation token. It therefore
//! queues and batches with the other requests, and leaves its KV to the
//! prefix cache: when the verdict escalates, the escalated answer on the
//! same model finds its prompt already evaluated (one prefill per
//! escalation), and a verdict on an answer this model just gave reuses
//! that answer's prompt.

use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::request::{GenerateRequest, Job, Output};
use crate::{Engine, SubmitError};

/// Continuation tokens scored at most: the verdict is on how an answer
/// starts and what it commits to, and the logits kept per scored token are
/// a whole vocabulary each.
pub const MAX_SCORED_TOKENS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("nothing to score: the prompt or the continuation is empty")]
    Empty,
    #[error("prompt and continuation are {needed} tokens, more than this model's {n_ctx} per sequence")]
    ContextExceeded { n_ctx: u32, needed: usize },
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("llama.cpp failed while scoring: {0}")]
    Runtime(String),
}

/// A queued scoring job's result, to await or wait for.
#[derive(Debug)]
pub struct Scoring(oneshot::Receiver<Result<Vec<f64>, ScoreError>>);

impl Scoring {
    pub async fn logprobs(self) -> Result<Vec<f64>, ScoreError> {
        self.0.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Blocks the thread until the verdict is in; not for async code.
    pub fn wait(self) -> Result<Vec<f64>, ScoreError> {
        self.0.blocking_recv().unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> ScoreError {
    ScoreError::Submit(SubmitError::Stopped)
}

impl Engine {
    /// Queues the scoring of `continuation` (its first
    /// [`MAX_SCORED_TOKENS`] tokens) after `prompt` (from
    /// [`Engine::chat_prompt`]). Refused at once, like a request, when it
    /// cannot fit a sequence or the queue is full.
    pub fn submit_score(&self, prompt: &[LlamaToken], continuation: &str) -> Result<Scoring, ScoreError> {
        let mut answer = self.model.vocab().tokenize(continuation.as_bytes(), false, false);
        answer.truncate(MAX_SCORED_TOKENS);
        if prompt.is_empty() || answer.is_empty() {
            return Err(ScoreError::Empty);
        }
        let needed = prompt.len() + answer.len();
        if needed > self.n_ctx_seq as usize {
            return Err(ScoreError::ContextExceeded { n_ctx: self.n_ctx_seq, needed });
        }
        let (reply, verdict) = oneshot::channel();
        let scored = answer.len();
        let req = GenerateRequest {
            prompt: prompt.iter().copied().chain(answer).collect(),
            max_tokens: Some(0),
            sampling: Default::default(),
            stop: Vec::new(),
            top_logprobs: 0,
            format: crate::OutputFormat::Text,
        };
        let output = Output::Score { from: prompt.len(), logprobs: Vec::with_capacity(scored), reply };
        self.enqueue(Job { req, max_tokens: 0, sampler: None, output, accepted: Instant::now() })?;
        Ok(Scoring(verdict))
    }

    /// [`Engine::submit_score`], waiting for the verdict. Blocking: call it
    /// off the async runtime.
    pub fn score(&self, prompt: &[LlamaToken], continuation: &str) -> Result<Vec<f64>, ScoreError> {
        self.submit_score(prompt, continuation)?.wait()
    }
}
