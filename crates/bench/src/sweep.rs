//! A sweep: one trace replayed closed-loop at several concurrencies (1, 5
//! and 20 by default), so latency and throughput read against load, and two
//! systems' sweeps over the same trace compare level by level.

use serde::{Deserialize, Serialize};

use crate::compare::{cell, RunReport};
use crate::replay::Percentiles;
use crate::report::{escape, lines, markdown_table, Series};

pub const DEFAULT_LEVELS: [usize; 3] = [1, 5, 20];

/// What `bench sweep` writes as `sweep.json`: each level's run, in the
/// order run (ascending concurrency).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub levels: Vec<Level>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level {
    pub concurrency: usize,
    pub report: RunReport,
}

fn pick(p: &Option<Percentiles>, q: fn(&Percentiles) -> f64) -> Option<f64> {
    p.as_ref().map(q)
}

/// One row per level: the figures a bake-off reads.
pub fn table(sweep: &Sweep) -> String {
    let mut out = String::from(
        "| concurrency | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | E2E p50 ms | req/s | output tok/s | goodput/s | failed |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &sweep.levels {
        let s = &l.report.summary;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {}/{} |\n",
            l.concurrency,
            cell(pick(&s.ttft_ms, |p| p.p50)),
            cell(pick(&s.ttft_ms, |p| p.p95)),
            cell(pick(&s.ttft_ms, |p| p.p99)),
            cell(pick(&s.itl_ms, |p| p.p50)),
            cell(pick(&s.itl_ms, |p| p.p99)),
            cell(pick(&s.e2e_ms, |p| p.p50)),
            s.requests_per_s,
            s.output_tokens_per_s,
            s.goodput_per_s,
            s.failed,
            s.requests,
        ));
    }
    out
}

/// Systems' sweeps side by side: output tokens/s and TTFT p50 at each
/// concurrency, with the ratio to the first system. Errors unless every
/// sweep replayed the same trace at the same levels.
pub fn compare(sweeps: &[(String, Sweep)]) -> Result<String, String> {
    let Some((_, first)) = sweeps.first() else { return Err("nothing to compare".into()) };
    let levels: Vec<usize> = first.levels.iter().map(|l| l.concurrency).collect();
    let sha = |s: &Sweep| s.levels.first().map(|l| l.report.trace_sha256.clone()).unwrap_or_default();
    for (label, s) in sweeps {
        if sha(s) != sha(first) {
            return Err(format!(
                "{label} replayed a different trace ({} vs {}): only runs over identical traffic compare",
                sha(s),
                sha(first)
            ));
        }
        let theirs: Vec<usize> = s.levels.iter().map(|l| l.concurrency).collect();
        if theirs != levels {
            return Err(format!("{label} ran concurrencies {theirs:?}, the first ran {levels:?}"));
        }
    }
    let mut out = String::from("| system |");
    for c in &levels {
        out.push_str(&format!(" tok/s @{c} | TTFT p50 ms @{c} |"));
    }
    out.push_str(" failed |\n|---|");
    out.push_str(&"---:|---:|".repeat(levels.len()));
    out.push_str("---:|\n");
    for (label, s) in sweeps {
        out.push_str(&format!("| {label} |"));
        let mut failed = (0, 0);
        for (mine, base) in s.levels.iter().zip(&first.levels) {
            let (m, b) = (&mine.report.summary, &base.report.summary);
            let tps = if b.output_tokens_per_s > 0.0 {
                format!(" ({:.2}x)", m.output_tokens_per_s / b.output_tokens_per_s)
            } else {
                String::new()
            };
            let ttft = match (pick(&m.ttft_ms, |p| p.p50), pick(&b.ttft_ms, |p| p.p50)) {
                (Some(v), Some(base)) if base > 0.0 => format!("{v:.1} ({:.2}x)", v / base),
                (v, _) => cell(v),
            };
            out.push_str(&format!(" {:.1}{tps} | {ttft} |", m.output_tokens_per_s));
            failed = (failed.0 + m.failed, failed.1 + m.requests);
        }
        out.push_str(&format!(" {}/{} |\n", failed.0, failed.1));
    }
    Ok(out)
}

/// A self-contained page: latency percentiles and throughput against
/// concurrency, and the table.
pub fn html(sweep: &Sweep) -> String {
    let x: Vec<String> = sweep.levels.iter().map(|l| l.concurrency.to_string()).collect();
    let series = |p: fn(&crate::replay::Summary) -> &Option<Percentiles>| -> Vec<Series> {
        [("p50", (|p: &Percentiles| p.p50) as fn(&Percentiles) -> f64), ("p95", |p| p.p95), ("p99", |p| p.p99)]
            .into_iter()
            .map(|(name, q)| Series {
                name: name.into(),
                values: sweep.levels.iter().map(|l| pick(p(&l.report.summary), q)).collect(),
            })
            .collect()
    };
    let throughput = |f: fn(&crate::replay::Summary) -> f64, name: &str| Series {
        name: name.into(),
        values: sweep.levels.iter().map(|l| Some(f(&l.report.summary))).collect(),
    };
    let cost: Vec<Option<f64>> =
        sweep.levels.iter().map(|l| l.report.cost.as_ref().and_then(|c| c.per_successful_task_usd)).collect();
    let cost_chart = if cost.iter().any(Option::is_some) {
        lines(
            "Cost per successful task vs concurrency",
            &x,
            "$",
            &[Series { name: "$ per successful task".into(), values: cost }],
        )
    } else {
        String::new()
    };
    let charts = [
        lines("TTFT vs concurrency", &x, "ms", &series(|s| &s.ttft_ms)),
        lines("Inter-token latency vs concurrency", &x, "ms", &series(|s| &s.itl_ms)),
        lines("E2E latency vs concurrency", &x, "ms", &series(|s| &s.e2e_ms)),
        lines(
            "Output tokens/s (all requests) vs concurrency",
            &x,
            "tok/s",
            &[throughput(|s| s.output_tokens_per_s, "output tok/s")],
        ),
        lines(
            "Requests/s and goodput/s vs concurrency",
            &x,
            "per s",
            &[throughput(|s| s.requests_per_s, "req/s"), throughput(|s| s.goodput_per_s, "goodput/s")],
        ),
        cost_chart,
    ]
    .concat();
    let (target, trace) = sweep.levels.first().map_or_else(Default::default, |l| {
        (l.report.target.clone(), format!("{} (sha256 {})", l.report.trace, l.report.trace_sha256))
    });
    let figures = markdown_table(&table(sweep));
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>sweep {t}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         figure{{display:inline-block;margin:0 2em 2em 0}} figcaption{{font-weight:600}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>\
         <h1>sweep: {t}</h1><p>trace {trace}, replayed closed-loop at each concurrency (every level is its own run; per-level reports in c*/report.html).</p>{charts}\
         <h2>Figures</h2>{figures}</body></html>",
        t = escape(&target),
        trace = escape(&trace),
    )
}
