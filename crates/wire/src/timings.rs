use serde::{Deserialize, Serialize};

/// Per-request latency decomposition, named after llama-server's `timings`
/// object and extended with the serving-side fields (queue, TTFT, ITL, total).
///
/// It rides on every completion body and on the last chunk of a stream, so a
/// benchmark can read it from any server that has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Prompt tokens evaluated (prefilled) for this request.
    pub prompt_n: u32,
    /// Prompt tokens found already in the KV cache and not evaluated again
    /// (`prompt_n + cache_n` is the whole prompt), as llama-server names it.
    #[serde(default)]
    pub cache_n: u32,
    /// Tokens guessed by prompt-lookup drafting and verified by the model,
    /// and those kept (each kept one saved a decode step), as llama-server
    /// names them.
    #[serde(default)]
    pub draft_n: u32,
    #[serde(default)]
    pub draft_n_accepted: u32,
    /// Time spent evaluating the prompt (prefill), in milliseconds.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub predicted_n: u32,
    /// Time from the first generated token to the last, in milliseconds.
    pub predicted_ms: f64,
    /// Time between acceptance and the first scheduler step that touched the request.
    pub queue_ms: f64,
    /// Time from acceptance to the first generated token.
    pub ttft_ms: f64,
    /// Median gap between consecutive generated tokens.
    #[serde(default)]
    pub itl_p50_ms: f64,
    /// 99th percentile gap between consecutive generated tokens.
    #[serde(default)]
    pub itl_p99_ms: f64,
    /// Largest gap between consecutive generated tokens.
    #[serde(default)]
    pub itl_max_ms: f64,
    /// Time from acceptance to the last token.
    pub total_ms: f64,
}
