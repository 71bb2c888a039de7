//! Scorecards over eval records: per target × family × difficulty, success
//! with a 95% confidence interval, correct- and over-refusal rates, cost per
//! success, TTFT percentiles; as JSON, markdown and a self-contained HTML
//! page. [`compare`] turns two scorecards into quality retention per slice,
//! the regression gate for rollbacks and promotions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_wire::ResultLabel;

use crate::record::EvalRecord;

/// A human's verdict on one record, which replaces the automatic one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub item_id: String,
    pub target: String,
    pub repeat: u32,
    pub pass: bool,
    pub reviewer: String,
    #[serde(default)]
    pub note: String,
}

/// Applies reviews (the last one per record wins); returns how many applied.
pub fn apply_reviews(records: &mut [EvalRecord], reviews: &[Review]) -> usize {
    let mut applied = 0;
    for r in records.iter_mut() {
        if let Some(v) =
            reviews.iter().rev().find(|v| v.item_id == r.item_id && v.target == r.target && v.repeat == r.repeat)
        {
            r.correct = v.pass;
            r.scorer = format!("reviewed by {}: {}", v.reviewer, if v.pass { "pass" } else { "fail" });
            applied += 1;
        }
    }
    applied
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub target: String,
    /// A family, or `all`.
    pub family: String,
    /// A difficulty, or `all`.
    pub difficulty: String,
    pub n: usize,
    pub passed: usize,
    pub success: f64,
    /// Wilson 95% interval of `success`.
    pub ci_low: f64,
    pub ci_high: f64,
    pub errors: usize,
    /// Of the items that must be refused, the share that was.
    pub correct_refusal: Option<f64>,
    /// Of the items that must not be refused, the share that was.
    pub over_refusal: Option<f64>,
    pub cost_per_success: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scorecard {
    pub dataset: String,
    pub slices: Vec<Slice>,
}

impl Scorecard {
    pub fn slice(&self, target: &str, family: &str, difficulty: &str) -> Option<&Slice> {
        self.slices.iter().find(|s| s.target == target && s.family == family && s.difficulty == difficulty)
    }

    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.slices.iter().map(|s| s.target.clone()).collect();
        t.dedup();
        t
    }
}

/// Wilson score interval at 95%.
pub fn wilson(passed: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n, p) = (1.96_f64, n as f64, passed as f64 / n as f64);
    let centre = p + z * z / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z * z / n;
    (((centre - margin) / denom).max(0.0), ((centre + margin) / denom).min(1.0))
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
}

fn slice(target: &str, family: &str, difficulty: &str, rs: &[&EvalRecord]) -> Slice {
    let passed = rs.iter().filter(|r| r.correct).count();
    let (ci_low, ci_high) = wilson(passed, rs.len());
    let rate = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let must = rs.iter().filter(|r| r.expects_refusal).count();
    let must_not = rs.len() - must;
    let costs: Vec<f64> = rs.iter().filter_map(|r| r.cost).collect();
    let mut ttft: Vec<f64> = rs.iter().filter_map(|r| r.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    Slice {
        target: target.into(),
        family: family.into(),
        difficulty: difficulty.into(),
        n: rs.len(),
        passed,
        success: rate(passed, rs.len()).unwrap_or(0.0),
        ci_low,
        ci_high,
        errors: rs.iter().filter(|r| r.label == ResultLabel::Error.as_str()).count(),
        correct_refusal: rate(rs.iter().filter(|r| r.expects_refusal && r.refused).count(), must),
        over_refusal: rate(rs.iter().filter(|r| !r.expects_refusal && r.refused).count(), must_not),
        cost_per_success: (!costs.is_empty() && passed > 0).then(|| costs.iter().sum::<f64>() / passed as f64),
        ttft_p50_ms: percentile(&ttft, 0.5),
        ttft_p95_ms: percentile(&ttft, 0.95),
    }
}

pub fn scorecard(records: &[EvalRecord]) -> Scorecard {
    let mut groups: BTreeMap<(String, String, String), Vec<&EvalRecord>> = BTreeMap::new();
    for r in records {
        for family in [r.family.as_str(), "all"] {
            for difficulty in [r.difficulty.as_str(), "all"] {
                groups.entry((r.target.clone(), family.to_string(), difficulty.to_string())).or_default().push(r);
            }
        }
    }
    let dataset = records.first().map_or_else(String::new, |r| format!("{}@v{}", r.dataset, r.dataset_version));
    Scorecard { dataset, slices: groups.iter().map(|((t, f, d), rs)| slice(t, f, d, rs)).collect() }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn ms(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

fn dollars(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("${v:.6}"))
}

const DIFFICULTIES: [&str; 4] = ["routine", "moderate", "edge", "all"];

/// The columns of a slice's row, shared by the markdown and HTML tables.
const COLUMNS: [&str; 11] = [
    "family",
    "difficulty",
    "n",
    "success",
    "95% CI",
    "correct refusal",
    "over-refusal",
    "errors",
    "cost / success",
    "TTFT p50 ms",
    "TTFT p95 ms",
];

fn cells(s: &Slice) -> [String; 11] {
    [
        s.family.clone(),
        s.difficulty.clone(),
        s.n.to_string(),
        pct(Some(s.success)),
        format!("{:.1}–{:.1}%", 100.0 * s.ci_low, 100.0 * s.ci_high),
        pct(s.correct_refusal),
        pct(s.over_refusal),
        s.errors.to_string(),
        dollars(s.cost_per_success),
        ms(s.ttft_p50_ms),
        ms(s.ttft_p95_ms),
    ]
}

pub fn markdown(card: &Scorecard) -> String {
    let mut out = format!("# Scorecard: {}\n\n", card.dataset);
    out.push_str(
        "Success is the share of items whose automatic (or reviewed) verdict passed, with a Wilson 95% interval.\n\n",
    );
    for target in card.targets() {
        out.push_str(&format!(
            "## {target}\n\n| {} |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
            COLUMNS.join(" | ")
        ));
        for s in card.slices.iter().filter(|s| s.target == target) {
            out.push_str(&format!("| {} |\n", cells(s).join(" | ")));
        }
        out.push('\n');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Success by difficulty for every target, as grouped bars with CI whiskers.
fn chart(card: &Scorecard, family: &str) -> String {
    let targets = card.targets();
    let (w, h, left, bottom) = (640.0, 260.0, 40.0, 40.0);
    let group_w = (w - left) / DIFFICULTIES.len() as f64;
    let bar_w = (group_w - 20.0) / targets.len().max(1) as f64;
    let colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"];
    let top = 12.0;
    let y = |v: f64| top + (h - bottom - top) * (1.0 - v);
    let mut svg =
        format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' aria-label='success by difficulty, {}'>", escape(family));
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        svg.push_str(&format!(
            "<line x1='{left}' x2='{w}' y1='{0:.1}' y2='{0:.1}' stroke='#ddd'/><text x='{1}' y='{2:.1}' font-size='10' text-anchor='end'>{3:.0}%</text>",
            y(tick),
            left - 4.0,
            y(tick) + 3.0,
            tick * 100.0
        ));
    }
    for (g, d) in DIFFICULTIES.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 10.0;
        svg.push_str(&format!(
            "<text x='{:.1}' y='{:.1}' font-size='12' text-anchor='middle'>{d}</text>",
            x0 + (group_w - 20.0) / 2.0,
            h - bottom + 16.0
        ));
        for (t, target) in targets.iter().enumerate() {
            let Some(s) = card.slice(target, family, d) else { continue };
            let x = x0 + t as f64 * bar_w;
            svg.push_str(&format!(
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{}'><title>{}: {} {:.1}% (n={})</title></rect>",
                y(s.success),
                bar_w - 2.0,
                (h - bottom) - y(s.success),
                colours[t % colours.len()],
                escape(target),
                d,
                100.0 * s.success,
                s.n
            ));
            let cx = x + (bar_w - 2.0) / 2.0;
            svg.push_str(&format!(
                "<line x1='{cx:.1}' x2='{cx:.1}' y1='{:.1}' y2='{:.1}' stroke='#222'/>",
                y(s.ci_low),
                y(s.ci_high)
            ));
        }
    }
    let legend: String = targets
        .iter()
        .enumerate()
        .map(|(t, target)| format!("<span style='color:{}'>■</span> {} ", colours[t % colours.len()], escape(target)))
        .collect();
    svg.push_str("</svg>");
    format!("<figure><figcaption>{}</figcaption>{svg}<div class='legend'>{legend}</div></figure>", escape(family))
}

pub fn html(card: &Scorecard) -> String {
    let mut families: Vec<String> = card.slices.iter().map(|s| s.family.clone()).filter(|f| f != "all").collect();
    families.sort();
    families.dedup();
    let charts: String = std::iter::once("all".to_string()).chain(families).map(|f| chart(card, &f)).collect();
    let head: String = std::iter::once("target").chain(COLUMNS).map(|c| format!("<th>{c}</th>")).collect();
    let mut table = format!("<table><tr>{head}</tr>");
    for s in &card.slices {
        let row: String =
            std::iter::once(s.target.clone()).chain(cells(s)).map(|c| format!("<td>{}</td>", escape(&c))).collect();
        table.push_str(&format!("<tr>{row}</tr>"));
    }
    table.push_str("</table>");
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>Scorecard {0}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} figure{{display:inline-block;margin:0 2em 2em 0}}\
         figcaption{{font-weight:600;margin-bottom:.3em}} table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:nth-child(-n+3){{text-align:left}} .legend{{font-size:12px}}\
         </style></head><body><h1>Scorecard: {0}</h1><p>Success per difficulty (bars) with Wilson 95% intervals (whiskers), overall and per family.</p>{charts}<h2>All slices</h2>{table}</body></html>",
        escape(&card.dataset)
    )
}

/// Candidate ÷ baseline success for one slice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retention {
    pub family: String,
    pub difficulty: String,
    pub baseline: f64,
    pub candidate: f64,
    /// `candidate / baseline` (1 when both are 0).
    pub retention: f64,
}

/// Retention per slice the two scorecards share (one target each).
pub fn compare(baseline: &Scorecard, candidate: &Scorecard) -> Vec<Retention> {
    let (bt, ct) = (baseline.targets(), candidate.targets());
    let (Some(bt), Some(ct)) = (bt.first(), ct.first()) else { return Vec::new() };
    baseline
        .slices
        .iter()
        .filter(|b| &b.target == bt)
        .filter_map(|b| {
            let c = candidate.slice(ct, &b.family, &b.difficulty)?;
            let retention = if b.success > 0.0 {
                c.success / b.success
            } else if c.success > 0.0 {
                f64::INFINITY
            } else {
                1.0
            };
            Some(Retention {
                family: b.family.clone(),
                difficulty: b.difficulty.clone(),
                baseline: b.success,
                candidate: c.success,
                retention,
            })
        })
        .collect()
}

/// A slice as the regression gate judges it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gated {
    #[serde(flatten)]
    pub retention: Retention,
    /// The baseline's items in the slice.
    pub n: usize,
    pub regressed: bool,
}

/// [`compare`] under the gate of `eval compare --max-drop` (and of a
/// rollout's canary eval): a slice with at least `min_items` baseline
/// items regressed when its retention is below `1 - max_drop`.
pub fn gate(baseline: &Scorecard, candidate: &Scorecard, max_drop: Option<f64>, min_items: usize) -> Vec<Gated> {
    compare(baseline, candidate)
        .into_iter()
        .map(|r| {
            let n = baseline
                .slices
                .iter()
                .find(|s| s.family == r.family && s.difficulty == r.difficulty)
                .map_or(0, |s| s.n);
            let regressed = max_drop.filter(|_| n >= min_items).is_some_and(|d| r.retention < 1.0 - d);
            Gated { retention: r, n, regressed }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        let (lo, hi) = wilson(8, 10);
        assert!((lo - 0.490).abs() < 0.001 && (hi - 0.943).abs() < 0.001, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(0, 20);
        assert!(lo == 0.0 && (hi - 0.161).abs() < 0.001);
    }
}
