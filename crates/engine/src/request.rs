//! What a caller hands the engine and what it gets back.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use switchyard_wire::{FinishReason, Timings, TokenLogprob};
use tokio::sync::{mpsc, oneshot};

use crate::score::ScoreError;

/// Sampling knobs, already validated by the caller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// `None` draws a fresh seed.
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

/// Output constraint enforced by grammar-constrained sampling.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(serde_json::Value),
}

/// A generation request, as the gateway builds it from a chat request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<LlamaToken>,
    /// `None`: until the sequence's context is full.
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Alternatives to report beside each token's logprob (0..=20).
    pub top_logprobs: u32,
    pub format: OutputFormat,
}

/// Events on a request's stream, in order: any number of `Token`, then exactly
/// one `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    Token(Piece),
    Done(Summary),
    Error(String),
}

/// One generated token, already cleared of any stop sequence.
#[derive(Debug, Clone)]
pub struct Piece {
    pub text: String,
    /// Always carries the token's logprob; `top_logprobs` is filled only when asked.
    pub logprob: TokenLogprob,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub timings: Timings,
}

/// Receiving end of a request. Dropping it cancels the request: the scheduler
/// frees its sequence at the next step.
pub type EventStream = mpsc::UnboundedReceiver<Event>;

/// A request accepted into the queue, with its ready-built sampler.
pub(crate) struct Job {
    pub req: GenerateRequest,
    pub max_tokens: u32,
    /// `None` for plain greedy decoding, which the scheduler does itself.
    pub sampler: Option<LlamaSampler>,
    pub output: Output,
    pub accepted: std::time::Instant,
}

/// Where a job's result goes, which also says what the job is.
pub(crate) enum Output {
    /// Generation: tokens as they are made, then a summary.
    Stream(mpsc::UnboundedSender<Event>),
    /// Teacher-forced scoring. `req.prompt` is the prompt followed by the
    /// continuation, which starts at `from` (at least 1). The job generates
    /// nothing: it ends the step its last token is evaluated, with the
    /// logprob of each continuation token. Its KV stays in the slot like a
    /// finished answer's, so a request for the same prompt prefills only
    /// what follows it (an escalated answer after its verdict).
    Score { from: usize, logprobs: Vec<f64>, reply: oneshot::Sender<Result<Vec<f64>, ScoreError>> },
}

impl Job {
    /// Nobody will read the result.
    pub fn is_abandoned(&self) -> bool {
        match &self.output {
            Output::Stream(events) => events.is_closed(),
            Output::Score { reply, .. } => reply.is_closed(),
        }
    }

    /// Prompt tokens the prefix cache may supply: all but the one whose
    /// logits choose the first token, or, when scoring, all before the
    /// first position whose logits are read.
    pub fn reusable(&self) -> usize {
        match &self.output {
            Output::Stream(_) => self.req.prompt.len().saturating_sub(1),
            Output::Score { from, .. } => from.saturating_sub(1),
        }
    }

    /// Where the continuation starts, when scoring.
    pub fn scored_from(&self) -> Option<usize> {
        match &self.output {
            Output::Stream(_) => None,
            Output::Score { from, .. } => Some(*from),
        }
    }
}
