//! Running a game day against a live server: the traffic (the bench's
//! open-loop replay, streamed and unstreamed requests side by side), the
//! faults set and cleared on schedule through `/admin/faults`, and the
//! routes' breakers read from `/metrics` every [`POLL`], all on one clock.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_bench::replay::{replay_watched, Limits, Load, RequestResult, Target};
use switchyard_bench::trace::Trace;
use switchyard_wire::admin::{Admin, Body, Method};
use tokio::time::Instant;

use crate::scenario::Scenario;

/// How often the breakers are read.
pub const POLL: Duration = Duration::from_millis(200);

/// Everything a game day saw, in the order it happened; the report is
/// computed from this alone, so a saved run re-renders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observed {
    pub scenario: Scenario,
    pub target: String,
    pub started_unix_ms: i64,
    /// Each request's result, and whether it was streamed.
    pub requests: Vec<Sent>,
    /// Faults set and cleared, as the server confirmed them.
    pub events: Vec<Event>,
    /// Each change of a route's breaker, first reading included.
    pub breakers: Vec<BreakerReading>,
    /// Rollouts started and how each ended.
    #[serde(default)]
    pub rollouts: Vec<RolloutEvent>,
    /// The server's policy version before and after.
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub streamed: bool,
    #[serde(flatten)]
    pub result: RequestResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: f64,
    pub route: String,
    /// `set` or `clear`.
    pub what: String,
    pub kind: String,
    /// The server's error, if it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub at_ms: f64,
    pub id: String,
    /// `start`, or how it ended: `rollback`, `promote`, `abort`.
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerReading {
    pub at_ms: f64,
    pub route: String,
    pub open: bool,
}

/// Progress, for a terminal.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs `scenario` against the server `admin` reaches. The server must
/// route by a policy that declares each fault's route, and the key must
/// be an operator's (or an admin's).
pub async fn run(scenario: &Scenario, admin: &Admin, progress: Progress) -> anyhow::Result<Observed> {
    let (trace, streamed) = scenario.requests()?;
    // Refused here, before any traffic: no key, the wrong role, no policy.
    admin.call(Method::GET, "/admin/faults", Body::None).await.map_err(anyhow::Error::msg)?;
    let policy = admin.call(Method::GET, "/admin/policy", Body::None).await.ok();
    let serving = policy.as_ref().and_then(|p| p["serving"].as_str()).map(str::to_string);
    let (plain, streams) = split(&trace, &streamed);
    progress(&format!(
        "{}: {} requests ({} streamed) over {} s, {} faults",
        scenario.name,
        trace.requests.len(),
        streams.0.requests.len(),
        scenario.traffic.duration_s,
        scenario.faults.len()
    ));
    let started_unix_ms = switchyard_wire::unix_ms();
    let start = Instant::now();
    let since = move || start.elapsed().as_secs_f64() * 1e3;

    let breakers = Arc::new(Mutex::new(Vec::<BreakerReading>::new()));
    let rollouts = Arc::new(Mutex::new(Vec::<RolloutEvent>::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let poller = tokio::spawn(poll_breakers(admin.clone(), breakers.clone(), done.clone(), since));
    let faults = tokio::spawn(schedule(scenario.clone(), admin.clone(), since, progress.clone()));
    let rolling = tokio::spawn(roll_out(scenario.clone(), admin.clone(), rollouts.clone(), since, progress.clone()));

    let t = &scenario.traffic;
    let mut headers: Vec<(String, String)> = admin.auth_header().into_iter().collect();
    headers.sort();
    let target = |stream: bool| Target {
        base_url: format!("{}/v1", admin.base()),
        model: t.model.clone(),
        headers: headers.clone(),
        stream,
        tokenizer: None,
        prompt_salt: 0,
    };
    let load = Load::Open { time_scale: t.time_scale };
    let limits = Limits {
        timeout: Duration::from_secs_f64(t.timeout_s),
        duration: Some(Duration::from_secs_f64(t.duration_s * t.time_scale)),
    };
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let (count, progress, total) = (count.clone(), progress.clone(), trace.requests.len());
        Arc::new(move |r: &RequestResult| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 25 == 0 || n == total {
                progress(&format!("  {n}/{total} answered (last: {})", r.error.as_deref().unwrap_or("ok")));
            }
        })
    };
    let (unstreamed, streamed_target) = (target(false), target(true));
    let (plain_results, stream_results) = tokio::join!(
        replay_watched(&plain.0, &unstreamed, load, limits, watch.clone()),
        replay_watched(&streams.0, &streamed_target, load, limits, watch),
    );
    let events = faults.await.map_err(|e| anyhow::anyhow!("the fault schedule failed: {e}"))?;
    rolling.abort();
    // A rollout the day left running is ended, so the server is as it was.
    if admin.call(Method::GET, "/admin/rollout", Body::None).await.is_ok_and(|v| !v["active"].is_null()) {
        let aborted = admin.call(Method::POST, "/admin/rollout/abort", Body::None).await;
        progress(&format!(
            "  the rollout still running was aborted ({})",
            if aborted.is_ok() { "ok" } else { "failed" }
        ));
    }
    done.notify_one();
    poller.await.map_err(|e| anyhow::anyhow!("the breaker poller failed: {e}"))?;
    let rollouts = std::mem::take(&mut *rollouts.lock().unwrap_or_else(PoisonError::into_inner));

    let mut requests: Vec<Sent> = Vec::with_capacity(trace.requests.len());
    for (results, index, streamed) in [(plain_results, plain.1, false), (stream_results, streams.1, true)] {
        for mut r in results {
            // Back to the scenario's numbering.
            r.index = index[r.index];
            requests.push(Sent { streamed, result: r });
        }
    }
    requests.sort_by_key(|r| r.result.index);
    let breakers = std::mem::take(&mut *breakers.lock().unwrap_or_else(PoisonError::into_inner));
    let after = admin.call(Method::GET, "/admin/policy", Body::None).await.ok();
    let policy = match (serving, after.as_ref().and_then(|p| p["serving"].as_str())) {
        (Some(a), Some(b)) if a != b => Some(format!("{a} -> {b}")),
        (a, b) => a.or(b.map(str::to_string)),
    };
    Ok(Observed {
        scenario: scenario.clone(),
        target: admin.base().to_string(),
        started_unix_ms,
        requests,
        events,
        breakers,
        rollouts,
        policy,
    })
}

/// Starts each rollout at its time and watches it until it ends.
async fn roll_out(
    scenario: Scenario,
    admin: Admin,
    out: Arc<Mutex<Vec<RolloutEvent>>>,
    since: impl Fn() -> f64,
    progress: Progress,
) {
    let push = |e: RolloutEvent| out.lock().unwrap_or_else(PoisonError::into_inner).push(e);
    for r in &scenario.rollouts {
        let wait = (r.at_s * scenario.traffic.time_scale * 1000.0 - since()).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
        let text = match std::fs::read_to_string(&r.policy) {
            Ok(t) => t,
            Err(e) => {
                push(RolloutEvent {
                    at_ms: since(),
                    id: String::new(),
                    action: "refused".into(),
                    reason: format!("{}: {e}", r.policy.display()),
                });
                continue;
            }
        };
        let body = serde_json::json!({"policy": text, "plan": r.plan});
        let started = admin.call(Method::POST, "/admin/rollout", Body::Json(body)).await;
        let id = match started {
            Ok(v) => v["id"].as_str().unwrap_or_default().to_string(),
            Err(e) => {
                progress(&format!("  {:6.1} s  rollout refused: {e}", since() / 1000.0));
                push(RolloutEvent { at_ms: since(), id: String::new(), action: "refused".into(), reason: e });
                continue;
            }
        };
        progress(&format!("  {:6.1} s  rollout {id} started", since() / 1000.0));
        push(RolloutEvent { at_ms: since(), id: id.clone(), action: "start".into(), reason: String::new() });
        loop {
            tokio::time::sleep(POLL).await;
            let Ok(v) = admin.call(Method::GET, "/admin/rollout", Body::None).await else { continue };
            if v["active"]["id"].as_str() == Some(id.as_str()) {
                continue;
            }
            let last = v["steps"].as_array().into_iter().flatten().rfind(|s| s["rollout_id"] == id.as_str()).cloned();
            let (action, reason) = last.map_or(("ended".to_string(), String::new()), |s| {
                (s["action"].as_str().unwrap_or("ended").to_string(), s["reason"].as_str().unwrap_or("").to_string())
            });
            progress(&format!("  {:6.1} s  rollout {id}: {action}: {reason}", since() / 1000.0));
            push(RolloutEvent { at_ms: since(), id: id.clone(), action, reason });
            break;
        }
    }
}

/// The trace split in two (unstreamed, streamed), each with the original
/// index of every request.
fn split(trace: &Trace, streamed: &[bool]) -> ((Trace, Vec<usize>), (Trace, Vec<usize>)) {
    let mut parts = [(Trace::default(), Vec::new()), (Trace::default(), Vec::new())];
    for (i, (r, s)) in trace.requests.iter().zip(streamed).enumerate() {
        let part = &mut parts[usize::from(*s)];
        part.0.requests.push(r.clone());
        part.1.push(i);
    }
    let [plain, streams] = parts;
    (plain, streams)
}

/// Sets and clears each fault at its time. A fault is also set with its
/// length, so one left behind by a run that died still ends by itself.
async fn schedule(scenario: Scenario, admin: Admin, since: impl Fn() -> f64, progress: Progress) -> Vec<Event> {
    let mut plan: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        plan.push((f.at_s, i, true));
        plan.push((f.at_s + f.for_s, i, false));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let scale = scenario.traffic.time_scale;
    let mut events = Vec::new();
    for (at_s, i, set) in plan {
        let wait = (at_s * scale * 1000.0 - since()).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
        let f = &scenario.faults[i];
        let path = format!("/admin/faults/{}", f.route);
        let result = if set {
            let mut body = serde_json::json!({"kind": f.kind, "for_s": f.for_s * scale + 5.0});
            for (k, v) in &f.params {
                body[k] = v.clone();
            }
            admin.call(Method::PUT, &path, Body::Json(body)).await.map(|_| ())
        } else {
            admin.call(Method::DELETE, &path, Body::None).await.map(|_| ())
        };
        let what = if set { "set" } else { "clear" };
        progress(&format!(
            "  {:6.1} s  fault {what}: {} on {}{}",
            since() / 1000.0,
            f.kind,
            f.route,
            result.as_ref().err().map_or(String::new(), |e| format!(" FAILED: {e}"))
        ));
        events.push(Event {
            at_ms: since(),
            route: f.route.clone(),
            what: what.into(),
            kind: f.kind.clone(),
            error: result.err(),
        });
    }
    events
}

/// Reads `switchyard_breaker_open{route="…"}` every [`POLL`] until `done`,
/// keeping each change.
async fn poll_breakers(
    admin: Admin,
    out: Arc<Mutex<Vec<BreakerReading>>>,
    done: Arc<tokio::sync::Notify>,
    since: impl Fn() -> f64,
) {
    let mut last: std::collections::BTreeMap<String, bool> = Default::default();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.notified() => return,
        }
        let Ok(text) = admin.metrics().await else { continue };
        let at_ms = since();
        for (route, open) in breaker_lines(&text) {
            if last.insert(route.clone(), open) != Some(open) {
                out.lock().unwrap_or_else(PoisonError::into_inner).push(BreakerReading { at_ms, route, open });
            }
        }
    }
}

/// `(route, open)` of each `switchyard_breaker_open` sample in a Prometheus text page.
pub fn breaker_lines(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("switchyard_breaker_open{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once('}')?;
            let route = labels.split(',').find_map(|kv| kv.trim().strip_prefix("route=\""))?.strip_suffix('"')?;
            Some((route.to_string(), value.trim().parse::<f64>().ok()? > 0.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_samples_are_read_from_a_metrics_page() {
        let page = "# TYPE switchyard_breaker_open gauge\nswitchyard_breaker_open{route=\"local\"} 1\nswitchyard_breaker_open{route=\"cloud\"} 0\nswitchyard_breaker_openness 5\n";
        assert_eq!(breaker_lines(page), vec![("local".to_string(), true), ("cloud".to_string(), false)]);
    }

    #[test]
    fn a_trace_splits_and_keeps_each_requests_number() {
        let r = |at_us| switchyard_bench::trace::TraceRequest {
            at_us,
            session: "s".into(),
            turn: 0,
            messages: None,
            input_tokens: Some(4),
            max_tokens: 4,
            headers: Default::default(),
        };
        let trace = Trace { requests: vec![r(0), r(1), r(2), r(3)] };
        let ((plain, pi), (streams, si)) = split(&trace, &[false, true, false, true]);
        assert_eq!((pi, si), (vec![0, 2], vec![1, 3]));
        assert_eq!(plain.requests[1].at_us, 2);
        assert_eq!(streams.requests[0].at_us, 1);
    }
}
