//! What a caller hands the engine and what it gets back.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use switchyard_wire::{FinishReason, Timings, TokenLogprob};
use tokio::sync::mpsc;

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
    pub events: mpsc::UnboundedSender<Event>,
    pub accepted: std::time::Instant,
}
