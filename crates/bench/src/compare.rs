//! `bench compare`: systems side by side on the same trace, with ratios to
//! the first.

use serde::{Deserialize, Serialize};

use crate::cost::{CostSummary, Energy};
use crate::replay::Summary;

/// What `bench run` writes as `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub trace: String,
    pub trace_sha256: String,
    pub target: String,
    pub model: String,
    pub load: String,
    pub summary: Summary,
    /// With `--prices`.
    #[serde(default)]
    pub cost: Option<CostSummary>,
    /// Measured (RAPL) or modelled (`--power-model` and `--target-pid`).
    #[serde(default)]
    pub energy: Option<Energy>,
}

/// A table cell: one decimal, or a dash for no value.
pub(crate) fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "–".into(),
    }
}

/// A markdown table, one row per run; the first run is the anchor of the
/// ratio columns. Errors if the runs replayed different traces.
pub fn table(runs: &[(String, RunReport)]) -> Result<String, String> {
    let Some((_, first)) = runs.first() else { return Err("nothing to compare".into()) };
    if let Some((label, other)) = runs.iter().find(|(_, r)| r.trace_sha256 != first.trace_sha256) {
        return Err(format!(
            "{label} replayed a different trace ({} vs {}): only runs over identical traffic compare",
            other.trace_sha256, first.trace_sha256
        ));
    }
    let ttft = |r: &RunReport, q: fn(&crate::replay::Percentiles) -> f64| r.summary.ttft_ms.as_ref().map(q);
    let mut out = String::from(
        "| system | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | E2E p50 ms | req/s | output tok/s | goodput/s | failed | $ per task | Wh per task | TTFT p50 vs first | tok/s vs first |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (label, r) in runs {
        let s = &r.summary;
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {}/{} | {} | {} | {} | {} |\n",
            cell(ttft(r, |p| p.p50)),
            cell(ttft(r, |p| p.p95)),
            cell(s.itl_ms.as_ref().map(|p| p.p50)),
            cell(s.e2e_ms.as_ref().map(|p| p.p50)),
            s.requests_per_s,
            s.output_tokens_per_s,
            s.goodput_per_s,
            s.failed,
            s.requests,
            r.cost.as_ref().and_then(|c| c.per_successful_task_usd).map_or_else(|| "–".into(), |v| format!("{v:.6}")),
            r.energy
                .as_ref()
                .and_then(|e| e.per_task_wh.map(|wh| format!("{wh:.4} ({})", e.kind)))
                .unwrap_or_else(|| "–".into()),
            ratio(ttft(r, |p| p.p50), ttft(first, |p| p.p50)),
            ratio(Some(s.output_tokens_per_s), Some(first.summary.output_tokens_per_s)),
        ));
    }
    Ok(out)
}
