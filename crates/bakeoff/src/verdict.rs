//! Judging variants against stated SLAs: which meet them, and the cheapest
//! that does. Cheapest is by dollars per successful task where the bench
//! priced the runs, else by watt-hours per successful task, else by peak
//! memory; the verdict says which measure decided.

use serde::Serialize;

use crate::outcome::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Sla {
    pub max_ttft_p95_ms: Option<f64>,
    pub min_retention: Option<f64>,
    /// The concurrency the TTFT limit is judged at.
    pub at_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub name: String,
    /// Overall eval success ÷ the reference's.
    pub retention: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub meets: bool,
    /// Each SLA it misses, in words; empty when it meets them all.
    pub misses: Vec<String>,
    pub usd_per_task: Option<f64>,
    pub wh_per_task: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub sla: Sla,
    pub reference: String,
    pub judged: Vec<Judged>,
    /// The cheapest variant meeting every SLA; `None` when none does.
    pub recommended: Option<String>,
    /// What "cheapest" was measured by, or why nothing was recommended.
    pub basis: String,
}

pub fn judge(outcomes: &[Outcome], reference: &str, sla: Sla) -> Verdict {
    let base = outcomes.iter().find(|o| o.name() == reference).and_then(Outcome::overall).map(|s| s.success);
    let judged: Vec<Judged> = outcomes
        .iter()
        .map(|o| {
            let retention = match (o.overall().map(|s| s.success), base) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            let level = o.level(sla.at_concurrency);
            let ttft_p95_ms = level.and_then(|l| l.report.summary.ttft_ms.as_ref()).map(|p| p.p95);
            let mut misses = Vec::new();
            if let Some(max) = sla.max_ttft_p95_ms {
                match ttft_p95_ms {
                    Some(t) if t <= max => {}
                    Some(t) => misses.push(format!("TTFT p95 {t:.0} ms > {max:.0} ms at c={}", sla.at_concurrency)),
                    None => misses.push(format!("no TTFT measured at c={}", sla.at_concurrency)),
                }
            }
            if let Some(min) = sla.min_retention {
                match retention {
                    Some(r) if r >= min => {}
                    Some(r) => misses.push(format!("retention {r:.3} < {min}")),
                    None => misses.push("no quality measured against the reference".into()),
                }
            }
            Judged {
                name: o.name().to_string(),
                retention,
                ttft_p95_ms,
                meets: misses.is_empty(),
                misses,
                usd_per_task: level.and_then(|l| l.report.cost.as_ref()).and_then(|c| c.per_successful_task_usd),
                wh_per_task: level.and_then(|l| l.report.energy.as_ref()).and_then(|e| e.per_task_wh),
                peak_rss_bytes: o.served.peak_rss_bytes,
            }
        })
        .collect();
    let meeting: Vec<&Judged> = judged.iter().filter(|j| j.meets).collect();
    let by = |f: fn(&Judged) -> Option<f64>| -> Option<&Judged> {
        if meeting.iter().any(|j| f(j).is_none()) {
            return None;
        }
        meeting.iter().copied().min_by(|a, b| f(a).unwrap_or(f64::MAX).total_cmp(&f(b).unwrap_or(f64::MAX)))
    };
    let (recommended, basis) = if meeting.is_empty() {
        (None, "no variant meets every SLA".to_string())
    } else if let Some(j) = by(|j| j.usd_per_task) {
        (Some(j.name.clone()), format!("lowest $ per successful task at c={}", sla.at_concurrency))
    } else if let Some(j) = by(|j| j.wh_per_task) {
        (Some(j.name.clone()), format!("lowest watt-hours per successful task at c={}", sla.at_concurrency))
    } else if let Some(j) = by(|j| j.peak_rss_bytes.map(|b| b as f64)) {
        (Some(j.name.clone()), "lowest peak memory (no prices or energy were measured)".to_string())
    } else {
        (None, "variants meet the SLAs but no common cost measure exists (prices, energy or memory)".to_string())
    };
    Verdict { sla, reference: reference.to_string(), judged, recommended, basis }
}
