//! One eval record per item, target and repeat: DESIGN.md's eval-record
//! contract, which `switchyard calibrate` and the scorecards read.

use serde::{Deserialize, Serialize};
use switchyard_router::Features;

/// The router's confidence signals for this item on this target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordConfidence {
    pub mean_logprob: Option<f64>,
    pub min_window_logprob: Option<f64>,
    /// The escalation model's logprobs of this answer (the cascade's verify
    /// signals). `eval run` does not record them yet;
    /// `research/verify-signal` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_mean_logprob: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_min_window_logprob: Option<f64>,
    /// The policy's prompt-feature score, when the run was given a policy.
    pub prompt_score: Option<f64>,
    pub features: Option<Features>,
}

/// [`EvalRecord::label`] of an answer the scorer passed.
pub const PASS: &str = "pass";
/// [`EvalRecord::label`] of an answer the scorer failed.
pub const FAIL: &str = "fail";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub item_id: String,
    pub dataset: String,
    pub dataset_version: u32,
    pub family: String,
    pub difficulty: String,
    pub data_class: String,
    /// What was asked: a URL, a model id, or `route:NAME`.
    pub target: String,
    /// The route that answered (`x-switchyard-route`), when the target routes.
    pub route: Option<String>,
    pub model: Option<String>,
    pub repeat: u32,
    pub seed: Option<u64>,
    pub output: String,
    pub refusal: Option<String>,
    pub correct: bool,
    /// [`PASS`], [`FAIL`], or the [`ResultLabel`](switchyard_wire::ResultLabel)s
    /// `refused`, `human-escalated` and `error`.
    pub label: String,
    /// What the scorer checked and why it decided.
    pub scorer: String,
    pub expects_refusal: bool,
    pub refused: bool,
    pub review: bool,
    pub confidence: RecordConfidence,
    /// Client-measured: request sent → first content token, and → end.
    pub ttft_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// The server's own `timings`, when it sends them.
    pub timings: Option<serde_json::Value>,
    pub usage: Option<RecordUsage>,
    /// Dollars, from the prices table, when the target has a price.
    pub cost: Option<f64>,
    pub error: Option<String>,
    /// Answered from the run cache instead of asking the target again.
    pub cached: bool,
}

/// The run's records, one JSON line each.
pub fn read_records(path: &std::path::Path) -> anyhow::Result<Vec<EvalRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1)))
        .collect()
}
