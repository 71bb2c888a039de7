//! What a game day showed, computed from what it [`Observed`]: failures
//! the clients saw by kind, the routes that answered and the fallbacks
//! that fired, each fault's window and recovery, the breakers' changes,
//! and each expectation passed or failed; as text, JSON and an HTML page
//! with a timeline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use switchyard_bench::report::escape;

use crate::run::{Observed, Sent};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub target: String,
    pub policy: Option<String>,
    pub started_unix_ms: i64,
    pub sent: Counts,
    /// Requests the client saw fail, by `(unstreamed|streamed, kind)`.
    pub failures: BTreeMap<String, u32>,
    /// Answers by the route that gave them.
    pub answered_by: BTreeMap<String, u32>,
    /// Fallbacks taken (`local failed (backend_error) -> next`), read from
    /// each answer's `x-switchyard-reason`, by what happened.
    pub fallbacks: BTreeMap<String, u32>,
    pub faults: Vec<FaultOutcome>,
    pub breakers: Vec<crate::run::BreakerReading>,
    /// Each rollout: when it started and how and when it ended.
    #[serde(default)]
    pub rollouts: Vec<RolloutOutcome>,
    pub checks: Vec<Check>,
    pub pass: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub total: u32,
    pub streamed: u32,
    pub answered: u32,
    pub failed_unstreamed: u32,
    pub failed_streamed: u32,
    /// Streams that began and then ended with an error event.
    pub streams_cut: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultOutcome {
    pub route: String,
    pub kind: String,
    pub at_s: f64,
    pub for_s: f64,
    /// Requests sent while it was on.
    pub during: u32,
    pub failed_during: u32,
    pub answered_during_by: BTreeMap<String, u32>,
    /// From the fault's end to the first request its route answered.
    pub recovery_s: Option<f64>,
    /// From the fault's end to its route's breaker closing, if it opened.
    pub breaker_closed_after_s: Option<f64>,
    /// From the fault's start to its route's breaker opening, if it
    /// opened while the fault was on.
    pub breaker_opened_after_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutOutcome {
    pub id: String,
    pub started_s: f64,
    /// `rollback`, `promote`, `abort`, or `running` at the end of the day.
    pub ended: String,
    pub after_s: Option<f64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub what: String,
    pub expected: String,
    pub actual: String,
    pub pass: bool,
}

/// The kind of a failure, as the client saw it.
fn failure_kind(error: &str) -> String {
    if let Some(status) = error.strip_prefix("HTTP ") {
        return format!("HTTP {}", status.split_whitespace().next().unwrap_or(status));
    }
    for (prefix, kind) in [
        ("error event", "stream cut (error event)"),
        ("stream broke", "stream broke"),
        ("stream ended without", "stream ended early"),
        ("timed out", "client timeout"),
        ("request failed", "connection failed"),
        ("malformed", "malformed answer"),
    ] {
        if error.starts_with(prefix) {
            return kind.into();
        }
    }
    "other".into()
}

/// The fallbacks one reason line tells of: `X failed (code), fell back`
/// and `X skipped (circuit open)`, each with the route that answered.
fn fallbacks(reason: &str, answered: Option<&str>) -> Vec<String> {
    let to = answered.unwrap_or("nothing");
    reason
        .split("; ")
        .filter_map(|part| {
            if let Some((route, rest)) = part.split_once(" failed (") {
                let code = rest.split(')').next().unwrap_or("error");
                Some(format!("{route} failed ({code}) -> {to}"))
            } else {
                part.strip_suffix(" skipped (circuit open)")
                    .map(|route| format!("{route} skipped (breaker open) -> {to}"))
            }
        })
        .collect()
}

pub fn report(o: &Observed) -> Report {
    let s = &o.scenario;
    let scale = s.traffic.time_scale;
    let mut sent = Counts::default();
    let mut failures = BTreeMap::new();
    let mut answered_by = BTreeMap::new();
    let mut fallback_counts = BTreeMap::new();
    for Sent { streamed, result: r } in &o.requests {
        sent.total += 1;
        sent.streamed += u32::from(*streamed);
        match &r.error {
            Some(e) => {
                let kind = failure_kind(e);
                if kind.starts_with("stream cut") {
                    sent.streams_cut += 1;
                }
                if *streamed {
                    sent.failed_streamed += 1;
                } else {
                    sent.failed_unstreamed += 1;
                }
                let side = if *streamed { "streamed" } else { "unstreamed" };
                *failures.entry(format!("{side}: {kind}")).or_insert(0) += 1;
            }
            None => {
                sent.answered += u32::from(r.succeeded());
                *answered_by.entry(r.route.clone().unwrap_or_else(|| "?".into())).or_insert(0) += 1;
            }
        }
        if let Some(reason) = &r.reason {
            let answered = r.error.is_none().then_some(r.route.as_deref()).flatten();
            for f in fallbacks(reason, answered) {
                *fallback_counts.entry(f).or_insert(0) += 1;
            }
        }
    }
    let faults: Vec<FaultOutcome> = s
        .faults
        .iter()
        .map(|f| {
            let (from, to) = (f.at_s * scale * 1000.0, (f.at_s + f.for_s) * scale * 1000.0);
            let during: Vec<&Sent> =
                o.requests.iter().filter(|r| r.result.sent_ms >= from && r.result.sent_ms < to).collect();
            let mut answered_during_by = BTreeMap::new();
            for r in during.iter().filter(|r| r.result.error.is_none()) {
                *answered_during_by.entry(r.result.route.clone().unwrap_or_else(|| "?".into())).or_insert(0) += 1;
            }
            let recovery_s = o
                .requests
                .iter()
                .filter(|r| r.result.sent_ms >= to && r.result.error.is_none())
                .filter(|r| r.result.route.as_deref() == Some(f.route.as_str()))
                .map(|r| (r.result.sent_ms - to) / 1000.0)
                .reduce(f64::min);
            let breaker = |open: bool, after: f64, before: f64| {
                o.breakers
                    .iter()
                    .filter(|b| b.route == f.route && b.open == open && b.at_ms >= after && b.at_ms < before)
                    .map(|b| (b.at_ms - after) / 1000.0)
                    .reduce(f64::min)
            };
            // Opened by this fault: while it was on.
            let opened = breaker(true, from, to);
            FaultOutcome {
                route: f.route.clone(),
                kind: f.kind.clone(),
                at_s: f.at_s,
                for_s: f.for_s,
                during: during.len() as u32,
                failed_during: during.iter().filter(|r| r.result.error.is_some()).count() as u32,
                answered_during_by,
                recovery_s,
                breaker_closed_after_s: opened.and_then(|_| breaker(false, to, f64::INFINITY)),
                breaker_opened_after_s: opened,
            }
        })
        .collect();
    let rollouts: Vec<RolloutOutcome> = o
        .rollouts
        .iter()
        .filter(|e| e.action == "start")
        .map(|start| {
            let end = o.rollouts.iter().find(|e| e.id == start.id && e.action != "start");
            RolloutOutcome {
                id: start.id.clone(),
                started_s: start.at_ms / 1000.0,
                ended: end.map_or_else(|| "running".into(), |e| e.action.clone()),
                after_s: end.map(|e| (e.at_ms - start.at_ms) / 1000.0),
                reason: end.map_or_else(String::new, |e| e.reason.clone()),
            }
        })
        .collect();
    let checks = checks(o, &sent, &faults, &rollouts);
    Report {
        scenario: s.name.clone(),
        description: s.description.clone(),
        target: o.target.clone(),
        policy: o.policy.clone(),
        started_unix_ms: o.started_unix_ms,
        pass: checks.iter().all(|c| c.pass),
        sent,
        failures,
        answered_by,
        fallbacks: fallback_counts,
        faults,
        breakers: o.breakers.clone(),
        rollouts,
        checks,
    }
}

fn checks(o: &Observed, sent: &Counts, faults: &[FaultOutcome], rollouts: &[RolloutOutcome]) -> Vec<Check> {
    let e = &o.scenario.expect;
    let mut out = Vec::new();
    let mut check = |what: &str, expected: String, actual: String, pass: bool| {
        out.push(Check { what: what.into(), expected, actual, pass });
    };
    let refused: Vec<&str> = o
        .events
        .iter()
        .filter_map(|e| e.error.as_deref())
        .chain(o.rollouts.iter().filter(|r| r.action == "refused").map(|r| r.reason.as_str()))
        .collect();
    check("every fault and rollout was accepted", "no refusal".into(), refused.join("; "), refused.is_empty());
    if let Some(max) = e.rollback_within_s {
        for r in rollouts {
            let actual = match r.after_s {
                Some(s) => format!("{} after {s:.1} s", r.ended),
                None => "still running".into(),
            };
            let pass = r.ended == "rollback" && r.after_s.is_some_and(|s| s <= max);
            check(
                &format!("rollout {} rolled back by its gate", r.id),
                format!("rollback within {max} s"),
                actual,
                pass,
            );
        }
        if o.scenario.rollouts.is_empty() {
            check("a rollout was started", ">= 1".into(), "0".into(), false);
        }
    }
    if let Some(max) = e.max_failed_unstreamed {
        check(
            "unstreamed requests failed",
            format!("<= {max}"),
            sent.failed_unstreamed.to_string(),
            sent.failed_unstreamed <= max,
        );
    }
    if let Some(max) = e.max_failed_streamed {
        check(
            "streamed requests failed",
            format!("<= {max}"),
            sent.failed_streamed.to_string(),
            sent.failed_streamed <= max,
        );
    }
    if let Some(max) = e.max_recovery_s {
        for f in faults {
            let actual = f.recovery_s.map_or_else(|| "never, within the run".into(), |r| format!("{r:.1} s"));
            check(
                &format!("{} recovered after its {} fault", f.route, f.kind),
                format!("<= {max} s"),
                actual,
                f.recovery_s.is_some_and(|r| r <= max),
            );
        }
    }
    for route in &e.fallback_routes {
        let n: u32 = faults.iter().filter_map(|f| f.answered_during_by.get(route)).sum();
        check(&format!("{route} answered during the faults"), ">= 1".into(), n.to_string(), n >= 1);
    }
    if let Some(min) = e.min_success_rate {
        let rate = if sent.total == 0 { 0.0 } else { f64::from(sent.answered) / f64::from(sent.total) };
        check("share answered", format!(">= {min:.3}"), format!("{rate:.3}"), rate >= min);
    }
    check("requests were sent", ">= 1".into(), sent.total.to_string(), sent.total > 0);
    out
}

/// The report for a terminal.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let _ = writeln!(s, "game day: {} — {verdict}", r.scenario);
    if !r.description.is_empty() {
        let _ = writeln!(s, "  {}", r.description);
    }
    let _ = writeln!(s, "  target {} policy {}", r.target, r.policy.as_deref().unwrap_or("?"));
    let c = &r.sent;
    let _ = writeln!(
        s,
        "  requests: {} sent ({} streamed), {} answered; failed: {} unstreamed, {} streamed ({} streams cut with an error event)",
        c.total, c.streamed, c.answered, c.failed_unstreamed, c.failed_streamed, c.streams_cut
    );
    let list = |m: &BTreeMap<String, u32>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(s, "  answered by: {}", list(&r.answered_by));
    let _ = writeln!(s, "  failures by kind: {}", list(&r.failures));
    let _ = writeln!(s, "  fallbacks fired: {}", list(&r.fallbacks));
    for f in &r.faults {
        let secs = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} s"));
        let _ = writeln!(
            s,
            "  fault {} on {} at {:.1} s for {:.1} s: {} requests sent during it, {} failed, answered by {}; breaker opened after {}, closed {} after the end; route answered again {} after the end",
            f.kind, f.route, f.at_s, f.for_s, f.during, f.failed_during, list(&f.answered_during_by),
            secs(f.breaker_opened_after_s), secs(f.breaker_closed_after_s), secs(f.recovery_s)
        );
    }
    for b in &r.breakers {
        let _ =
            writeln!(s, "  {:6.1} s  breaker {} {}", b.at_ms / 1000.0, b.route, if b.open { "OPEN" } else { "closed" });
    }
    for c in &r.checks {
        let _ = writeln!(
            s,
            "  [{}] {}: {} (expected {})",
            if c.pass { "pass" } else { "FAIL" },
            c.what,
            c.actual,
            c.expected
        );
    }
    s
}

const ROUTE_COLOURS: [&str; 6] = ["#4e79a7", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];

/// The report as one self-contained HTML page, with the timeline.
pub fn html(r: &Report, o: &Observed) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset='utf-8'><title>game day</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.pass{color:#2a7d2a;font-weight:bold}.fail{color:#c0392b;font-weight:bold}</style></head><body>",
    );
    let verdict = if r.pass { "<span class='pass'>PASS</span>" } else { "<span class='fail'>FAIL</span>" };
    let _ = write!(page, "<h1>Game day: {} {verdict}</h1><p>{}</p>", escape(&r.scenario), escape(&r.description));
    let _ = write!(
        page,
        "<p>Target {} · policy {} · {} requests ({} streamed), {} answered, {} unstreamed and {} streamed failed ({} streams cut with an error event)</p>",
        escape(&r.target),
        escape(r.policy.as_deref().unwrap_or("?")),
        r.sent.total,
        r.sent.streamed,
        r.sent.answered,
        r.sent.failed_unstreamed,
        r.sent.failed_streamed,
        r.sent.streams_cut
    );
    page.push_str(&timeline(r, o));
    page.push_str("<h2>Expectations</h2><table><tr><th></th><th>check</th><th>actual</th><th>expected</th></tr>");
    for c in &r.checks {
        let mark = if c.pass { "<span class='pass'>pass</span>" } else { "<span class='fail'>FAIL</span>" };
        let _ = write!(
            page,
            "<tr><td>{mark}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.what),
            escape(&c.actual),
            escape(&c.expected)
        );
    }
    page.push_str("</table><h2>Faults</h2><table><tr><th>route</th><th>kind</th><th>at</th><th>for</th><th>sent during</th><th>failed during</th><th>answered during by</th><th>breaker opened after</th><th>breaker closed after end</th><th>route answered again after end</th></tr>");
    let secs = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1} s"));
    for f in &r.faults {
        let by: Vec<String> = f.answered_during_by.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.route), escape(&f.kind), f.at_s, f.for_s, f.during, f.failed_during, escape(&by.join(", ")),
            secs(f.breaker_opened_after_s), secs(f.breaker_closed_after_s), secs(f.recovery_s)
        );
    }
    for (title, map) in
        [("Failures by kind", &r.failures), ("Fallbacks fired", &r.fallbacks), ("Answered by route", &r.answered_by)]
    {
        let _ = write!(page, "</table><h2>{title}</h2><table>");
        if map.is_empty() {
            page.push_str("<tr><td>none</td></tr>");
        }
        for (k, v) in map {
            let _ = write!(page, "<tr><td>{}</td><td>{v}</td></tr>", escape(k));
        }
    }
    page.push_str("</table><h2>Rollouts</h2><table><tr><th>rollout</th><th>started</th><th>ended</th><th>after</th><th>why</th></tr>");
    for ro in &r.rollouts {
        let after = ro.after_s.map_or_else(|| "–".into(), |a| format!("{a:.1} s"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{:.1} s</td><td>{}</td><td>{after}</td><td>{}</td></tr>",
            escape(&ro.id),
            ro.started_s,
            escape(&ro.ended),
            escape(&ro.reason)
        );
    }
    page.push_str("</table><h2>Breaker changes</h2><table><tr><th>at</th><th>route</th><th>state</th></tr>");
    for b in &r.breakers {
        let _ = write!(
            page,
            "<tr><td>{:.1} s</td><td>{}</td><td>{}</td></tr>",
            b.at_ms / 1000.0,
            escape(&b.route),
            if b.open { "open" } else { "closed" }
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

/// Each request as a dot at its send time, one row per answering route
/// and one for failures (streams cut in orange); fault windows shaded,
/// breaker-open spans as bars under the route's row.
fn timeline(r: &Report, o: &Observed) -> String {
    let scale = o.scenario.traffic.time_scale;
    let end_ms = o
        .requests
        .iter()
        .map(|s| s.result.sent_ms)
        .fold(o.scenario.traffic.duration_s * scale * 1000.0, f64::max)
        .max(1.0);
    let routes: Vec<&String> = r.answered_by.keys().collect();
    let (left, right, row_h, top) = (110.0, 20.0, 34.0, 24.0);
    let width = 1000.0;
    let rows = routes.len() + 1;
    let height = top + row_h * rows as f64 + 40.0;
    let x = |ms: f64| left + ms / end_ms * (width - left - right);
    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11' font-family='sans-serif'>");
    for (i, f) in r.faults.iter().enumerate() {
        let (a, b) = (x(f.at_s * scale * 1000.0), x((f.at_s + f.for_s) * scale * 1000.0));
        let _ = write!(
            svg,
            "<rect x='{a:.1}' y='{top}' width='{:.1}' height='{:.1}' fill='#e15759' opacity='0.12'/><text x='{a:.1}' y='{:.1}' fill='#c0392b'>fault {}: {} on {}</text>",
            (b - a).max(1.0),
            row_h * rows as f64,
            top - 6.0 - (i % 2) as f64 * 0.0,
            i + 1,
            escape(&f.kind),
            escape(&f.route)
        );
    }
    let row_y = |i: usize| top + row_h * i as f64 + row_h / 2.0;
    for (i, route) in routes.iter().enumerate() {
        let _ = write!(svg, "<text x='4' y='{:.1}'>{}</text>", row_y(i) + 4.0, escape(route));
        // Breaker-open spans of this route.
        let mut opened: Option<f64> = None;
        for b in o.breakers.iter().filter(|b| &&b.route == route) {
            match (b.open, opened) {
                (true, None) => opened = Some(b.at_ms),
                (false, Some(from)) => {
                    let _ = write!(
                        svg,
                        "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='4' fill='#c0392b'/>",
                        x(from),
                        row_y(i) + 10.0,
                        (x(b.at_ms) - x(from)).max(1.0)
                    );
                    opened = None;
                }
                _ => {}
            }
        }
        if let Some(from) = opened {
            let _ = write!(
                svg,
                "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='4' fill='#c0392b'/>",
                x(from),
                row_y(i) + 10.0,
                (x(end_ms) - x(from)).max(1.0)
            );
        }
    }
    let failed_row = routes.len();
    let _ = write!(svg, "<text x='4' y='{:.1}' fill='#c0392b'>failed</text>", row_y(failed_row) + 4.0);
    for s in &o.requests {
        let res = &s.result;
        let (row, colour) = match (&res.error, res.route.as_ref().and_then(|rt| routes.iter().position(|r| *r == rt))) {
            (None, Some(i)) => (i, ROUTE_COLOURS[i % ROUTE_COLOURS.len()]),
            (Some(e), _) if failure_kind(e).starts_with("stream cut") => (failed_row, "#f28e2b"),
            _ => (failed_row, "#e15759"),
        };
        let shape = if s.streamed {
            format!(
                "<rect x='{:.1}' y='{:.1}' width='4' height='4' fill='{colour}'/>",
                x(res.sent_ms) - 2.0,
                row_y(row) - 2.0
            )
        } else {
            format!("<circle cx='{:.1}' cy='{:.1}' r='2.2' fill='{colour}'/>", x(res.sent_ms), row_y(row))
        };
        svg.push_str(&shape);
    }
    let axis_y = top + row_h * rows as f64 + 14.0;
    let step = if end_ms > 120_000.0 {
        30_000.0
    } else if end_ms > 30_000.0 {
        10_000.0
    } else {
        5_000.0
    };
    let mut t = 0.0;
    while t <= end_ms {
        let _ = write!(svg, "<text x='{:.1}' y='{axis_y:.1}' text-anchor='middle'>{:.0} s</text>", x(t), t / 1000.0);
        t += step;
    }
    svg.push_str("</svg>");
    format!(
        "<h2>Timeline</h2><figure>{svg}<figcaption>Each request at the time it was sent, on the row of the route that answered it (circles: unstreamed, squares: streamed); failures on the last row (orange: a stream cut with an error event). Shaded: fault windows. Red bars: the route's breaker open.</figcaption></figure>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_tell_which_fallbacks_fired() {
        let reason = "rule fast matched; local failed (injected_fault), fell back; cloud-a skipped (circuit open)";
        assert_eq!(
            fallbacks(reason, Some("cloud-b")),
            vec![
                "local failed (injected_fault) -> cloud-b".to_string(),
                "cloud-a skipped (breaker open) -> cloud-b".to_string()
            ]
        );
        assert!(fallbacks("default route", Some("local")).is_empty());
    }

    #[test]
    fn failures_are_grouped_by_what_the_client_saw() {
        assert_eq!(failure_kind("HTTP 502 Bad Gateway"), "HTTP 502");
        assert_eq!(failure_kind("error event: route local died"), "stream cut (error event)");
        assert_eq!(failure_kind("timed out after 60 s"), "client timeout");
        assert_eq!(failure_kind("request failed: connection refused"), "connection failed");
    }
}
