//! Teacher-forced scoring: the model's logprob of each token of a given
//! continuation, i.e. its verdict on an answer it did not write. A cascade
//! can ask the escalation model whether it would have written the fast
//! model's answer; where it would, escalating changes nothing.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::logprobs::LogitStats;
use crate::{llama_backend, Engine};

/// Continuation tokens scored at most: the verdict is on how an answer
/// starts and what it commits to, and the logits kept per scored token are
/// a whole vocabulary each.
pub const MAX_SCORED_TOKENS: usize = 256;

/// Tokens per llama.cpp micro-batch while scoring: bounds the compute buffers.
const SCORE_UBATCH: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("nothing to score: the prompt or the continuation is empty")]
    Empty,
    #[error("prompt and continuation are {needed} tokens, more than this model's {n_ctx} per sequence")]
    ContextExceeded { n_ctx: u32, needed: usize },
    #[error("llama.cpp failed while scoring: {0}")]
    Runtime(String),
}

impl Engine {
    /// The logprob of each token of `continuation` (its first
    /// [`MAX_SCORED_TOKENS`]) after `prompt` (from [`Engine::chat_prompt`]).
    ///
    /// Runs one prefill on a context of its own, so it neither waits for nor
    /// changes the scheduler's batch (the model's weights are shared,
    /// read-only). Blocking and CPU-heavy: call it off the async runtime.
    pub fn score(&self, prompt: &[LlamaToken], continuation: &str) -> Result<Vec<f64>, ScoreError> {
        let mut answer = self.model.vocab().tokenize(continuation.as_bytes(), false, false);
        answer.truncate(MAX_SCORED_TOKENS);
        if prompt.is_empty() || answer.is_empty() {
            return Err(ScoreError::Empty);
        }
        let n = prompt.len() + answer.len();
        if n > self.n_ctx_seq as usize {
            return Err(ScoreError::ContextExceeded { n_ctx: self.n_ctx_seq, needed: n });
        }
        let runtime = |e: &dyn std::fmt::Display| ScoreError::Runtime(e.to_string());
        let threads = self.settings.effective_threads() as i32;
        let n_ctx = u32::try_from(n).map_err(|_| ScoreError::ContextExceeded { n_ctx: self.n_ctx_seq, needed: n })?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(SCORE_UBATCH.min(n_ctx))
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = self.model.new_context(llama_backend(), params).map_err(|e| runtime(&e))?;
        let mut batch = LlamaBatch::new(n, 1);
        // Logits are kept only where the next token is a continuation token.
        for (pos, &token) in prompt.iter().chain(&answer).enumerate() {
            batch.add(token, pos as i32, &[0], pos + 1 >= prompt.len() && pos + 1 < n).map_err(|e| runtime(&e))?;
        }
        ctx.decode(&mut batch).map_err(|e| runtime(&e))?;
        Ok(answer
            .iter()
            .enumerate()
            .map(|(j, token)| {
                let logits = ctx.get_logits_ith((prompt.len() - 1 + j) as i32);
                f64::from(LogitStats::of(logits).logprob(logits, token.0 as usize))
            })
            .collect())
    }
}
