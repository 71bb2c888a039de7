//! The bake-off's table (markdown) and page (HTML with charts), both made
//! from the directory's files alone.

use switchyard_bench::report::{escape, lines, markdown_table, Series};
use switchyard_eval::scorecard::compare;

use crate::outcome::Outcome;
use crate::verdict::Verdict;

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn mb(bytes: Option<u64>) -> String {
    cell(bytes.map(|b| b as f64 / 1e6), 0)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.1}%", 100.0 * v))
}

/// One row per variant: what it is, speed at each level, quality, cost, verdict.
pub fn table(outcomes: &[Outcome], levels: &[usize], verdict: &Verdict) -> String {
    let mut head =
        vec!["variant", "runtime", "file", "file MB", "peak RSS MB"].into_iter().map(String::from).collect::<Vec<_>>();
    for c in levels {
        head.extend([
            format!("c={c} TTFT p50/p95 ms"),
            format!("c={c} tok/s"),
            format!("c={c} goodput/s (within SLO)"),
        ]);
    }
    head.extend(
        ["quality [95% CI]", "retention", "refusal✓", "over-refusal", "$ / task", "Wh / task", "meets SLA"]
            .map(String::from),
    );
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for o in outcomes {
        let judged = verdict.judged.iter().find(|j| j.name == o.name());
        let mut row = vec![
            o.name().to_string(),
            o.served.variant.runtime().to_string(),
            o.served.file_type.clone().unwrap_or_else(|| "–".into()),
            mb(o.served.file_bytes),
            mb(o.served.peak_rss_bytes),
        ];
        for c in levels {
            let s = o.level(*c).map(|l| &l.report.summary);
            let ttft = s.and_then(|s| s.ttft_ms.as_ref());
            row.push(format!("{}/{}", cell(ttft.map(|p| p.p50), 0), cell(ttft.map(|p| p.p95), 0)));
            row.push(cell(s.map(|s| s.output_tokens_per_s), 1));
            // Goodput, and the share of requests within the bench's SLOs.
            row.push(s.map_or_else(
                || "–".into(),
                |s| {
                    let share = if s.requests_per_s > 0.0 { s.goodput_per_s / s.requests_per_s } else { 0.0 };
                    format!("{:.2} ({:.0}%)", s.goodput_per_s, 100.0 * share)
                },
            ));
        }
        let overall = o.overall();
        row.push(overall.map_or_else(
            || "–".into(),
            |s| format!("{:.1}% [{:.1}–{:.1}] n={}", 100.0 * s.success, 100.0 * s.ci_low, 100.0 * s.ci_high, s.n),
        ));
        row.push(cell(judged.and_then(|j| j.retention), 3));
        row.push(pct(overall.and_then(|s| s.correct_refusal)));
        row.push(pct(overall.and_then(|s| s.over_refusal)));
        row.push(cell(judged.and_then(|j| j.usd_per_task), 5));
        row.push(cell(judged.and_then(|j| j.wh_per_task), 4));
        row.push(judged.map_or_else(
            || "–".into(),
            |j| if j.meets { "yes".into() } else { format!("no: {}", j.misses.join("; ")) },
        ));
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// Retention against the reference per family and difficulty slice.
pub fn retention_table(outcomes: &[Outcome], reference: &str) -> String {
    let Some(base) = outcomes.iter().find(|o| o.name() == reference).and_then(|o| o.scorecard.as_ref()) else {
        return String::new();
    };
    let others: Vec<&Outcome> = outcomes.iter().filter(|o| o.name() != reference && o.scorecard.is_some()).collect();
    let mut out = format!("| family | difficulty | {reference} (reference) |");
    for o in &others {
        out.push_str(&format!(" {} |", o.name()));
    }
    out.push_str(&format!("\n|{}\n", "---|".repeat(3 + others.len())));
    let per: Vec<_> =
        others.iter().map(|o| o.scorecard.as_ref().map(|c| compare(base, c)).unwrap_or_default()).collect();
    let base_target = base.targets().into_iter().next().unwrap_or_default();
    for b in base.slices.iter().filter(|s| s.target == base_target) {
        out.push_str(&format!("| {} | {} | {:.1}% (n={}) |", b.family, b.difficulty, 100.0 * b.success, b.n));
        for r in &per {
            let cell = r
                .iter()
                .find(|x| x.family == b.family && x.difficulty == b.difficulty)
                .map_or_else(|| "–".into(), |x| format!("{:.1}% ({:.2}×)", 100.0 * x.candidate, x.retention));
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

/// The verdict in words.
pub fn verdict_lines(verdict: &Verdict) -> String {
    let mut sla = Vec::new();
    if let Some(t) = verdict.sla.max_ttft_p95_ms {
        sla.push(format!("TTFT p95 ≤ {t:.0} ms at concurrency {}", verdict.sla.at_concurrency));
    }
    if let Some(r) = verdict.sla.min_retention {
        sla.push(format!("quality retention ≥ {r} of {}", verdict.reference));
    }
    let stated = if sla.is_empty() { "none stated".to_string() } else { sla.join(", ") };
    let mut out = format!("SLAs: {stated}.\n");
    let meeting: Vec<&str> = verdict.judged.iter().filter(|j| j.meets).map(|j| j.name.as_str()).collect();
    out.push_str(&format!(
        "Meeting them: {}.\n",
        if meeting.is_empty() { "none".to_string() } else { meeting.join(", ") }
    ));
    match &verdict.recommended {
        Some(name) => out.push_str(&format!("Recommended: {name} ({}).\n", verdict.basis)),
        None => out.push_str(&format!("Recommended: none ({}).\n", verdict.basis)),
    }
    out
}

/// The page: verdict, charts (TTFT p95, throughput against concurrency,
/// quality with its interval), the tables.
pub fn html(outcomes: &[Outcome], levels: &[usize], verdict: &Verdict, about: &str) -> String {
    let x: Vec<String> = levels.iter().map(usize::to_string).collect();
    let per_level = |f: fn(&switchyard_bench::replay::Summary) -> Option<f64>| -> Vec<Series> {
        outcomes
            .iter()
            .map(|o| Series {
                name: o.name().to_string(),
                values: levels.iter().map(|c| o.level(*c).and_then(|l| f(&l.report.summary))).collect(),
            })
            .collect()
    };
    let charts = [
        lines("TTFT p95 vs concurrency", &x, "ms", &per_level(|s| s.ttft_ms.as_ref().map(|p| p.p95))),
        lines("Output tokens/s vs concurrency", &x, "tok/s", &per_level(|s| Some(s.output_tokens_per_s))),
        lines("Goodput (requests/s within SLO) vs concurrency", &x, "per s", &per_level(|s| Some(s.goodput_per_s))),
        quality_bars(outcomes),
    ]
    .concat();
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>bake-off</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         figure{{display:inline-block;margin:0 2em 2em 0}} figcaption{{font-weight:600}} table{{border-collapse:collapse;margin-bottom:2em}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         .verdict{{font-size:1.1em;background:#f5f7fa;padding:1em;border-left:4px solid #4e79a7}}</style></head><body>\
         <h1>bake-off</h1><p>{about}</p><div class='verdict'>{verdict}</div>{charts}<h2>Variants</h2>{table}\
         <h2>Quality retention by family and difficulty</h2>{retention}</body></html>",
        about = escape(about),
        verdict = verdict_lines(verdict).lines().map(|l| format!("<p>{}</p>", escape(l))).collect::<String>(),
        table = markdown_table(&table(outcomes, levels, verdict)),
        retention = markdown_table(&retention_table(outcomes, &verdict.reference)),
    )
}

/// Overall eval success per variant, with its Wilson interval as a whisker.
fn quality_bars(outcomes: &[Outcome]) -> String {
    let rows: Vec<(&str, f64, f64, f64)> =
        outcomes.iter().filter_map(|o| o.overall().map(|s| (o.name(), s.success, s.ci_low, s.ci_high))).collect();
    if rows.is_empty() {
        return String::new();
    }
    let (w, bar_h, pad) = (520.0, 26.0, 120.0);
    let h = 30.0 + rows.len() as f64 * (bar_h + 10.0);
    let px = |v: f64| pad + v * (w - pad - 20.0);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>"
    );
    for (i, (name, success, low, high)) in rows.iter().enumerate() {
        let y = 10.0 + i as f64 * (bar_h + 10.0);
        svg.push_str(&format!(
            "<text x='{}' y='{:.1}' text-anchor='end'>{}</text><rect x='{pad}' y='{y:.1}' width='{:.1}' height='{bar_h}' fill='#4e79a7'/>\
             <line x1='{:.1}' x2='{:.1}' y1='{:.1}' y2='{:.1}' stroke='#222' stroke-width='2'/><text x='{:.1}' y='{:.1}'>{:.1}%</text>",
            pad - 6.0,
            y + bar_h / 2.0 + 4.0,
            escape(name),
            px(*success) - pad,
            px(*low),
            px(*high),
            y + bar_h / 2.0,
            y + bar_h / 2.0,
            px(*high) + 4.0,
            y + bar_h / 2.0 + 4.0,
            100.0 * success
        ));
    }
    svg.push_str("</svg>");
    format!("<figure><figcaption>Eval success (bar) and its 95% interval (whisker)</figcaption>{svg}</figure>")
}
