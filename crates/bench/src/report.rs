//! A self-contained HTML report of one run (inline SVG, no scripts or
//! fonts fetched): latency CDFs, the arrival timeline, and the summary.

use crate::compare::RunReport;
use crate::replay::{Percentiles, RequestResult};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Empirical CDFs of several series (ms on x, share on y), one colour each.
fn cdf(title: &str, series: &[(&str, Vec<f64>)]) -> String {
    let (w, h, pad) = (520.0, 300.0, 44.0);
    let max = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0_f64, f64::max).max(1e-9);
    let x = |v: f64| pad + v / max * (w - 2.0 * pad);
    let y = |q: f64| h - pad - q * (h - 2.0 * pad);
    let colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>"
    );
    for i in 0..=4 {
        let (f, q) = (i as f64 / 4.0, i as f64 / 4.0);
        svg.push_str(&format!(
            "<line x1='{0:.1}' x2='{0:.1}' y1='{1}' y2='{2}' stroke='#eee'/><text x='{0:.1}' y='{3}' text-anchor='middle'>{4:.0}</text><line x1='{5}' x2='{6}' y1='{7:.1}' y2='{7:.1}' stroke='#eee'/><text x='{8}' y='{9:.1}' text-anchor='end'>{10:.0}%</text>",
            x(f * max), pad, h - pad, h - pad + 14.0, f * max, pad, w - pad, y(q), pad - 4.0, y(q) + 4.0, q * 100.0
        ));
    }
    let mut legend = String::new();
    for (i, (name, values)) in series.iter().enumerate() {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let points: Vec<String> =
            v.iter().enumerate().map(|(k, val)| format!("{:.1},{:.1}", x(*val), y((k + 1) as f64 / n))).collect();
        let c = colours[i % colours.len()];
        svg.push_str(&format!("<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>", points.join(" ")));
        legend.push_str(&format!("<span style='color:{c}'>&#9632;</span> {} ({} values) ", escape(name), v.len()));
    }
    svg.push_str(&format!("<text x='{}' y='{}' text-anchor='middle'>ms</text></svg>", w / 2.0, h - 6.0));
    format!("<figure><figcaption>{}</figcaption>{svg}<div>{legend}</div></figure>", escape(title))
}

/// A markdown table (header line, separator line, rows) as an HTML table.
pub fn markdown_table(markdown: &str) -> String {
    let cells = |line: &str, tag: &str| {
        line.trim_matches('|').split('|').map(|c| format!("<{tag}>{}</{tag}>", escape(c.trim()))).collect::<String>()
    };
    let header = cells(markdown.lines().next().unwrap_or_default(), "th");
    let rows: String = markdown.lines().skip(2).map(|line| format!("<tr>{}</tr>", cells(line, "td"))).collect();
    format!("<table><tr>{header}</tr>{rows}</table>")
}

/// One line of a [`lines`] chart; `None` where a level has no value.
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A line chart over evenly spaced categories (e.g. concurrency levels),
/// y from 0 to the largest value.
pub fn lines(title: &str, x: &[String], unit: &str, series: &[Series]) -> String {
    let (w, h, pad) = (520.0, 300.0, 52.0);
    let max = series.iter().flat_map(|s| s.values.iter().flatten().copied()).fold(0.0_f64, f64::max).max(1e-9);
    let step = (w - 2.0 * pad) / (x.len().max(2) - 1) as f64;
    let px = |i: usize| pad + i as f64 * step;
    let py = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    // Eight: a bake-off draws one line per variant.
    let colours = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>"
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        svg.push_str(&format!(
            "<line x1='{pad}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#eee'/><text x='{}' y='{:.1}' text-anchor='end'>{}</text>",
            w - pad,
            pad - 4.0,
            py(v) + 4.0,
            match max {
                m if m >= 10.0 => format!("{v:.0}"),
                m if m >= 0.01 => format!("{v:.2}"),
                _ => format!("{v:.1e}"),
            },
            y = py(v)
        ));
    }
    for (i, label) in x.iter().enumerate() {
        svg.push_str(&format!(
            "<text x='{:.1}' y='{}' text-anchor='middle'>{}</text>",
            px(i),
            h - pad + 14.0,
            escape(label)
        ));
    }
    let mut legend = String::new();
    for (k, s) in series.iter().enumerate() {
        let c = colours[k % colours.len()];
        let points: Vec<(f64, f64)> =
            s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (px(i), py(v)))).collect();
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        svg.push_str(&format!("<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>", path.join(" ")));
        for (x, y) in &points {
            svg.push_str(&format!("<circle cx='{x:.1}' cy='{y:.1}' r='3' fill='{c}'/>"));
        }
        legend.push_str(&format!("<span style='color:{c}'>&#9632;</span> {} ", escape(&s.name)));
    }
    svg.push_str(&format!(
        "<text x='{}' y='{}' text-anchor='middle'>concurrency</text><text x='12' y='{}' transform='rotate(-90 12 {})' text-anchor='middle'>{}</text></svg>",
        w / 2.0,
        h - 8.0,
        h / 2.0,
        h / 2.0,
        escape(unit)
    ));
    format!("<figure><figcaption>{}</figcaption>{svg}<div>{legend}</div></figure>", escape(title))
}

/// When each request was sent (x) and how long it took end to end (y); failures in red.
fn timeline(results: &[RequestResult]) -> String {
    let (w, h, pad) = (520.0, 300.0, 44.0);
    let t_max = results.iter().map(|r| r.sent_ms).fold(0.0_f64, f64::max).max(1e-9);
    let e_max = results.iter().filter_map(|r| r.e2e_ms).fold(0.0_f64, f64::max).max(1e-9);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>"
    );
    svg.push_str(&format!("<line x1='{pad}' x2='{}' y1='{}' y2='{}' stroke='#999'/>", w - pad, h - pad, h - pad));
    for r in results {
        let cx = pad + r.sent_ms / t_max * (w - 2.0 * pad);
        let (cy, colour) = match r.e2e_ms {
            Some(e) if r.ok() => (h - pad - e / e_max * (h - 2.0 * pad), "#4e79a7"),
            _ => (h - pad, "#e15759"),
        };
        svg.push_str(&format!("<circle cx='{cx:.1}' cy='{cy:.1}' r='2.5' fill='{colour}'/>"));
    }
    svg.push_str(&format!(
        "<text x='{}' y='{}' text-anchor='middle'>sent at (s, max {:.1})</text><text x='12' y='{}' transform='rotate(-90 12 {})' text-anchor='middle'>E2E (max {:.0} ms)</text></svg>",
        w / 2.0,
        h - 8.0,
        t_max / 1000.0,
        h / 2.0,
        h / 2.0,
        e_max
    ));
    format!("<figure><figcaption>Timeline: each request by send time and E2E latency (red: failed)</figcaption>{svg}</figure>")
}

fn row(name: &str, p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "<tr><td>{name}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td></tr>",
            p.count, p.p50, p.p90, p.p95, p.p99, p.max
        ),
        None => format!("<tr><td>{name}</td><td>0</td><td colspan='5'>–</td></tr>"),
    }
}

/// Cost and energy in one sentence, saying where each came from.
pub fn cost_line(report: &RunReport) -> String {
    let cost = match &report.cost {
        None => "Cost: no price table (--prices).".to_string(),
        Some(c) => format!(
            "Cost: ${:.6} in all, {} per 1M output tokens, {} per successful task ({} tasks; success = {}){}.",
            c.cost_usd,
            c.per_1m_output_tokens_usd.map_or_else(|| "–".into(), |v| format!("${v:.4}")),
            c.per_successful_task_usd.map_or_else(|| "–".into(), |v| format!("${v:.6}")),
            c.successful_tasks,
            c.success,
            if c.unpriced > 0 {
                format!("; {} requests unpriced (no price or no usage), so a lower bound", c.unpriced)
            } else {
                String::new()
            }
        ),
    };
    let energy = match &report.energy {
        None => "Energy: not measured (RAPL not readable, and no --power-model with --target-pid).".to_string(),
        Some(e) => format!(
            "Energy ({}): {:.4} Wh, {} Wh per successful task; {}.",
            e.kind,
            e.wh,
            e.per_task_wh.map_or_else(|| "–".into(), |v| format!("{v:.5}")),
            e.source
        ),
    };
    format!("{cost} {energy}")
}

pub fn html(report: &RunReport, results: &[RequestResult]) -> String {
    let s = &report.summary;
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok() && r.sent_ms >= 0.0).collect();
    let charts = [
        cdf(
            "TTFT and E2E, cumulative",
            &[
                ("TTFT", ok.iter().filter_map(|r| r.ttft_ms).collect()),
                ("E2E", ok.iter().filter_map(|r| r.e2e_ms).collect()),
            ],
        ),
        cdf("Inter-token latency, cumulative", &[("ITL", ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect())]),
        timeline(results),
    ]
    .concat();
    let table = s.latencies().iter().map(|(n, p)| row(n, p)).collect::<String>();
    let definitions: String =
        s.definitions.iter().map(|(k, v)| format!("<li><b>{k}</b>: {}</li>", escape(v))).collect();
    let failures = if s.failures.is_empty() {
        "none".to_string()
    } else {
        s.failures.iter().map(|(k, v)| format!("{} × {v}", escape(k))).collect::<Vec<_>>().join(", ")
    };
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>bench {target}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         figure{{display:inline-block;margin:0 2em 2em 0}} figcaption{{font-weight:600}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>\
         <h1>bench: {target} ({model})</h1><p>trace {trace} (sha256 {sha}), load {load}; {ok} of {n} requests ok, {warm} in warm-up left out; {rps:.2} req/s, {tps:.1} output tok/s, goodput {good:.2}/s \
         (TTFT ≤ {st} ms, TPOT ≤ {sp} ms); tokens from {from}; failures: {failures}.</p><p>{money}</p>{charts}\
         <h2>Percentiles (ms)</h2><table><tr><th>metric</th><th>n</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>{table}</table><h2>Definitions</h2><ul>{definitions}</ul></body></html>",
        target = escape(&report.target),
        model = escape(&report.model),
        trace = escape(&report.trace),
        sha = report.trace_sha256,
        load = escape(&report.load),
        ok = s.ok,
        n = s.requests,
        warm = s.warmup_excluded,
        rps = s.requests_per_s,
        tps = s.output_tokens_per_s,
        good = s.goodput_per_s,
        st = s.slo_ttft_ms,
        sp = s.slo_tpot_ms,
        from = escape(&s.tokens_from),
        money = escape(&cost_line(report)),
    )
}
