//! SLA compliance per route and workload family over rolling windows of
//! the telemetry records: the share of requests answered within the
//! family's SLA (`max_ttft_ms`, `max_e2e_ms`) and the window's error rate
//! against its error budget (`max_error_rate`).
//!
//! Read from the store, not from this process's memory, so with a shared
//! database every replica reports the same figures for the whole fleet.
//! Invariants: only requests that went to a route count (a policy's
//! refusal or handoff, or a request refused for its own fault (a 4xx other
//! than 429), is not a route's success or failure); a request every
//! route failed counts against the route its decision chose; an answer
//! still being measured is left out until it is; a non-streamed answer's first
//! token is its whole answer, so its TTFT is its end-to-end time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use switchyard_auth::Permission;
use switchyard_router::Policy;
use switchyard_store::{Outcome, Store};

use super::rollout::failed_outcome;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// The windows `/metrics` reports, in seconds.
pub const METRIC_WINDOWS_S: [u64; 2] = [300, 3600];
/// How often the `/metrics` gauges are read again.
pub const EVERY: Duration = Duration::from_secs(15);
/// The most records one window reads; a busier window is judged on its
/// newest this many, and says so (`truncated`).
const MAX_RECORDS: u32 = 100_000;

/// One route and family over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compliance {
    pub route: String,
    /// The family's name, or `none` for requests of no family.
    pub family: String,
    pub requests: usize,
    pub failed: usize,
    /// Answered within every latency SLA the family states.
    pub within_sla: usize,
    pub within_sla_share: f64,
    pub error_rate: f64,
    /// `error_rate <= max_error_rate`; `None` without a stated budget.
    pub error_budget_met: Option<bool>,
    pub max_ttft_ms: Option<u64>,
    pub max_e2e_ms: Option<u64>,
    pub max_error_rate: Option<f64>,
}

/// The route and family a record counts under: the route that answered,
/// or for a request every route failed (recorded as route `failed`) the
/// route its decision chose; the family from its decision, or `none`.
fn key_of(r: &Outcome) -> (String, String) {
    let family = r.family.clone().unwrap_or_else(|| "none".to_string());
    let route = match &r.chosen {
        Some(chosen) if r.route == switchyard_wire::headers::ROUTE_FAILED => chosen.clone(),
        _ => r.route.clone(),
    };
    (route, family)
}

/// Compliance of `records` under `policy`'s families, one entry per route
/// and family seen, sorted by route then family.
pub fn compliance(policy: &Policy, records: &[Outcome]) -> Vec<Compliance> {
    let mut groups: BTreeMap<(String, String), Vec<&Outcome>> = BTreeMap::new();
    for r in records {
        let routed = match r.label.as_str() {
            "answered" => r.measured_ms.is_some_and(|m| m > 0),
            // A 4xx is the request's fault (over a context budget, a bad
            // schema), not the route's: `failed` leaves it out.
            "error" => failed_outcome(r.status, &r.label),
            _ => false,
        };
        if routed {
            groups.entry(key_of(r)).or_default().push(r);
        }
    }
    groups
        .into_iter()
        .map(|((route, family), rs)| {
            let fam = policy.family(&family);
            let (max_ttft_ms, max_e2e_ms) = (fam.and_then(|f| f.max_ttft_ms), fam.and_then(|f| f.max_e2e_ms));
            let max_error_rate = fam.and_then(|f| f.max_error_rate);
            let failed = |r: &Outcome| failed_outcome(r.status, &r.label);
            let within = |r: &&&Outcome| {
                let e2e = r.total_ms;
                let ttft = r.ttft_ms.or(e2e);
                let under = |v: Option<f64>, max: Option<u64>| max.is_none_or(|max| v.is_some_and(|v| v <= max as f64));
                !failed(r) && r.status < 400 && under(ttft, max_ttft_ms) && under(e2e, max_e2e_ms)
            };
            let failed_n = rs.iter().filter(|r| failed(r)).count();
            let within_n = rs.iter().filter(within).count();
            let share = |n: usize| n as f64 / rs.len().max(1) as f64;
            Compliance {
                requests: rs.len(),
                failed: failed_n,
                within_sla: within_n,
                within_sla_share: share(within_n),
                error_rate: share(failed_n),
                error_budget_met: max_error_rate.map(|max| share(failed_n) <= max),
                max_ttft_ms,
                max_e2e_ms,
                max_error_rate,
                route,
                family,
            }
        })
        .collect()
}

/// The window of `window_s` seconds ending at `now_ms`, read from `store`.
pub async fn read(store: &Store, policy: &Policy, now_ms: i64, window_s: u64) -> anyhow::Result<Window> {
    let mut windows = read_nested(store, policy, now_ms, &[window_s]).await?;
    windows.pop().ok_or_else(|| anyhow::anyhow!("no window read"))
}

/// Windows of each of `windows_s` seconds ending at `now_ms`, from one read
/// of the longest: the records come newest first, so each shorter window
/// is a prefix of it. Under load these reads were a quarter of the server's
/// CPU, each window read on its own and every record decoded whole
/// (docs/performance.md).
async fn read_nested(store: &Store, policy: &Policy, now_ms: i64, windows_s: &[u64]) -> anyhow::Result<Vec<Window>> {
    let since = |window_s: u64| now_ms - (window_s as i64) * 1000;
    let longest = windows_s.iter().copied().max().unwrap_or(0);
    let records = store.outcomes(since(longest), now_ms, MAX_RECORDS).await?;
    let truncated = records.len() >= MAX_RECORDS as usize;
    Ok(windows_s
        .iter()
        .map(|&window_s| {
            let within = records.partition_point(|r| r.created_ms >= since(window_s));
            Window {
                window_s,
                until_ms: now_ms,
                // A shorter window that ends before the read did is whole.
                truncated: truncated && within == records.len(),
                policy: policy.id.clone(),
                compliance: compliance(policy, &records[..within]),
            }
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub window_s: u64,
    pub until_ms: i64,
    /// The window held more records than were read (the newest were).
    pub truncated: bool,
    /// The policy whose families' SLAs were applied.
    pub policy: String,
    pub compliance: Vec<Compliance>,
}

#[derive(Debug, Deserialize)]
pub struct SlaQuery {
    /// Seconds; default 300.
    window_s: Option<u64>,
}

/// `GET /admin/sla?window_s=N`: compliance per route and family.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<SlaQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        caller.require(Permission::ReadAllDecisions, "read SLA compliance")?;
        let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
        let window_s = q.window_s.unwrap_or(300);
        if window_s == 0 || window_s > 30 * 86_400 {
            return Err(ApiError::invalid(Some("window_s".into()), "a window of 1 s to 30 days, e.g. window_s=300"));
        }
        let routing = state
            .routing()
            .ok_or_else(|| ApiError::not_found("/admin/sla (this server has no policy, so no families or SLAs)"))?;
        let store = crate::admin::store(&state).await?;
        read(store, &routing.policy, switchyard_wire::unix_ms(), window_s)
            .await
            .map_err(|e| ApiError::internal(format!("reading the records: {e}")))
    }
    .await;
    match result {
        Ok(window) => Json(window).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Keeps the `/metrics` gauges of every window in [`METRIC_WINDOWS_S`]
/// current, on the real clock.
pub fn every(state: Arc<AppState>, store: Store, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(routing) = state.routing() else { continue };
            match read_nested(&store, &routing.policy, switchyard_wire::unix_ms(), &METRIC_WINDOWS_S).await {
                Ok(windows) => windows.iter().for_each(publish),
                Err(e) => tracing::warn!("SLA compliance not read: {e}"),
            }
        }
    });
}

fn publish(w: &Window) {
    for c in &w.compliance {
        let labels = [("route", c.route.clone()), ("family", c.family.clone()), ("window", format!("{}s", w.window_s))];
        metrics::gauge!("switchyard_sla_within_ratio", &labels).set(c.within_sla_share);
        metrics::gauge!("switchyard_sla_error_rate", &labels).set(c.error_rate);
        metrics::gauge!("switchyard_sla_requests", &labels).set(c.requests as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_toml(
            r#"version = "s.1"
default_route = "r"
[[routes]]
name = "r"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:1/v1"
allowed_classes = ["public"]
[[families]]
name = "chat"
max_ttft_ms = 500
max_e2e_ms = 2000
max_error_rate = 0.2
"#,
        )
        .unwrap()
    }

    fn record(family: Option<&str>, status: u16, label: &str, ttft: Option<f64>, total: f64) -> Outcome {
        let route = if label == "error" { "failed" } else { "r" };
        Outcome {
            created_ms: 1,
            route: route.into(),
            status,
            label: label.into(),
            measured_ms: Some(1),
            ttft_ms: ttft,
            total_ms: Some(total),
            family: family.map(String::from),
            chosen: Some("r".into()),
        }
    }

    #[test]
    fn within_means_answered_under_every_stated_latency_and_failures_spend_the_error_budget() {
        let records = vec![
            record(Some("chat"), 200, "answered", Some(100.0), 1000.0),
            record(Some("chat"), 200, "answered", Some(900.0), 1000.0), // TTFT over
            record(Some("chat"), 200, "answered", Some(100.0), 3000.0), // E2E over
            record(Some("chat"), 200, "answered", None, 400.0),         // unstreamed: TTFT is E2E
            record(Some("chat"), 502, "error", None, 50.0),
            record(Some("chat"), 200, "refused", None, 1.0), // a policy refusal: not the route's
            record(Some("chat"), 400, "error", None, 1.0),   // the request's fault: not the route's
            record(Some("chat"), 200, "error", Some(50.0), 900.0), // a stream cut after it began: failed
            record(None, 200, "answered", None, 60_000.0),
        ];
        let c = compliance(&policy(), &records);
        assert_eq!(c.len(), 2);
        let chat = c.iter().find(|c| c.family == "chat").unwrap();
        assert_eq!((chat.requests, chat.within_sla, chat.failed), (6, 2, 2));
        assert!((chat.within_sla_share - 2.0 / 6.0).abs() < 1e-9 && (chat.error_rate - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(chat.error_budget_met, Some(false), "a third is over a 0.2 budget");
        let none = c.iter().find(|c| c.family == "none").unwrap();
        assert_eq!((none.within_sla, none.error_budget_met), (1, None), "no SLA: any answer is within");
    }

    #[test]
    fn an_answer_still_being_measured_waits() {
        let mut r = record(Some("chat"), 200, "answered", Some(100.0), 100.0);
        r.measured_ms = None;
        assert!(compliance(&policy(), &[r]).is_empty());
    }
}
