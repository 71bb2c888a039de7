//! Canary rollouts of a policy version (and so of the models and routes
//! it names): a share of traffic goes to the candidate, the rest stays on
//! the incumbent, and a gate compares the two on the same window until it
//! promotes the candidate step by step or rolls it back by itself.
//!
//! - **Split**: a request's arm is a function of its request id ([`bucket`]
//!   below the share: candidate), so it is reproducible from the record;
//!   an operator (or the canary eval) may pin an arm with
//!   `x-switchyard-canary`. Each record names its arm's policy version.
//! - **Online gate** (every `judge_every_s`): each arm's error rate,
//!   refusal and escalation rates, TTFT and end-to-end p95 from the
//!   telemetry records since the step began, and the bad share of client
//!   feedback (`POST /v1/feedback`); a candidate worse than the incumbent
//!   by more than a margin is rolled back, with the figures.
//! - **Canary eval**: `switchyard rollout start --eval-set` runs a sample
//!   of an eval set against both arms through the eval runner and posts
//!   the regression gate's verdict (`POST /admin/rollout/eval`); a failed
//!   verdict rolls back. (The eval runs over HTTP, as every client does:
//!   the server never runs the eval runner itself.)
//! - Every step is a row of `rollout_steps` with its figures; start,
//!   promotion and rollback are written to the audit chain too.
//!
//! Invariants: at most one rollout at a time; a rollout's candidate is
//! never the policy in force until it is promoted (a restart drops a
//! rollout in progress, which leaves the incumbent in force); the
//! incumbent is the live policy, so an apply or rollback on this replica
//! during a rollout is refused (409), and a version followed from another
//! replica ends it ([`abandon`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_auth::Permission;
use switchyard_router::Policy;
use switchyard_store::rollouts::{Feedback, RolloutStep};
use switchyard_store::{DecisionRecord, JsonText, Store, TelemetryFilter};
use switchyard_wire::headers;

use super::policy::{parts, Live, Source};
use crate::audit::{self, Actor};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routing::Routing;
use crate::AppState;

/// How a rollout proceeds and what counts as a regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The candidate's share at each step, rising; a last step of 1 promotes.
    #[serde(default = "steps")]
    pub steps: Vec<f64>,
    /// Least time at a step before the next.
    #[serde(default = "step_s")]
    pub step_s: f64,
    /// Least requests per arm in a window before it is judged.
    #[serde(default = "min_requests")]
    pub min_requests: u32,
    #[serde(default = "judge_every_s")]
    pub judge_every_s: f64,
    #[serde(default)]
    pub margins: Margins,
    /// Step up (and finally promote) when a step's window is healthy;
    /// off: stay at the canary share until promoted or aborted by hand.
    #[serde(default = "yes")]
    pub auto_promote: bool,
}

fn steps() -> Vec<f64> {
    vec![0.1, 0.5, 1.0]
}
fn step_s() -> f64 {
    60.0
}
fn min_requests() -> u32 {
    20
}
fn judge_every_s() -> f64 {
    5.0
}
fn yes() -> bool {
    true
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            steps: steps(),
            step_s: step_s(),
            min_requests: min_requests(),
            judge_every_s: judge_every_s(),
            margins: Margins::default(),
            auto_promote: true,
        }
    }
}

/// How much worse than the incumbent the candidate may be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Margins {
    /// Added share of requests failed (5xx or labelled error).
    pub error_rate: f64,
    /// Added share refused.
    pub refusal_rate: f64,
    /// Added share escalated by a cascade.
    pub escalation_rate: f64,
    /// Added share of feedback that is `bad`.
    pub bad_feedback_rate: f64,
    /// Candidate ÷ incumbent TTFT p95.
    pub ttft_p95_ratio: f64,
    /// Candidate ÷ incumbent end-to-end p95.
    pub e2e_p95_ratio: f64,
}

impl Default for Margins {
    fn default() -> Self {
        Self {
            error_rate: 0.05,
            refusal_rate: 0.10,
            escalation_rate: 0.15,
            bad_feedback_rate: 0.10,
            ttft_p95_ratio: 2.0,
            e2e_p95_ratio: 2.0,
        }
    }
}

impl Plan {
    fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.iter().any(|s| !(*s > 0.0 && *s <= 1.0)) {
            return Err("`steps`: shares above 0 and at most 1".into());
        }
        if self.steps.windows(2).any(|w| w[1] <= w[0]) {
            return Err("`steps`: each share above the one before".into());
        }
        if !(self.step_s >= 0.0 && self.judge_every_s > 0.0 && self.judge_every_s <= 3600.0) {
            return Err("`step_s` >= 0 and `judge_every_s` above 0, at most 3600".into());
        }
        Ok(())
    }
}

/// A rollout in progress: an immutable snapshot, replaced at each step.
pub struct Active {
    pub id: String,
    pub candidate: Arc<Routing>,
    pub incumbent: String,
    pub plan: Plan,
    /// Index into `plan.steps`.
    pub step: usize,
    pub started_ms: i64,
    pub step_started_ms: i64,
}

impl Active {
    pub fn share(&self) -> f64 {
        self.plan.steps.get(self.step).copied().unwrap_or(0.0)
    }

    fn status(&self) -> Value {
        json!({
            "id": self.id, "incumbent": self.incumbent, "candidate": self.candidate.policy.id,
            "share": self.share(), "step": self.step, "plan": self.plan,
            "started_ms": self.started_ms, "step_started_ms": self.step_started_ms,
        })
    }
}

/// Which arm a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Incumbent,
    Candidate,
}

/// The request id hashed (FNV-1a, then MurmurHash3's 64-bit finalizer,
/// since FNV alone leaves ids that differ in their last characters close
/// together in the high bits), as a share in [0, 1).
pub fn bucket(request_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The arm a request goes to: the one `x-switchyard-canary` names if the
/// caller may pin one, else by its id's bucket.
pub fn arm(share: f64, request_id: &str, pinned: Option<&str>) -> Result<Arm, String> {
    match pinned {
        Some("candidate") => Ok(Arm::Candidate),
        Some("incumbent") => Ok(Arm::Incumbent),
        Some(other) => Err(format!("`{other}`: name `incumbent` or `candidate`")),
        None if bucket(request_id) < share => Ok(Arm::Candidate),
        None => Ok(Arm::Incumbent),
    }
}

/// One arm's figures over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    pub policy: String,
    pub requests: u32,
    pub error_rate: f64,
    pub refusal_rate: f64,
    pub escalation_rate: f64,
    pub ttft_p95_ms: Option<f64>,
    pub e2e_p95_ms: Option<f64>,
    pub feedback: u32,
    pub bad_feedback_rate: f64,
}

/// A failed request: a 5xx or a 429, or labelled `error` with no client
/// error's status (a stream cut after it began). A request refused for its
/// own fault (a 4xx: over its context budget, a schema the grammar cannot
/// take) is not a failure of the version or the route: counted, one
/// client's bad requests could roll back a good version or fire an alert.
/// With [`refused`] and [`escalated`], what the rollout gate, the alerts
/// and SLA compliance count alike.
pub(crate) fn failed(r: &DecisionRecord) -> bool {
    failed_outcome(r.status, &r.label)
}

/// [`failed`], from a record's status and label alone.
pub(crate) fn failed_outcome(status: u16, label: &str) -> bool {
    status >= 500 || status == 429 || (label == "error" && !(400..500).contains(&status))
}

pub(crate) fn refused(r: &DecisionRecord) -> bool {
    r.label == "refused"
}

pub(crate) fn escalated(r: &DecisionRecord) -> bool {
    r.cascade.as_deref() == Some("escalated")
}

/// The value at the 95th percent rank; `None` for no values.
pub(crate) fn p95(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// Each arm's figures from the records (and feedback) since `since_ms`.
async fn stats(store: &Store, since_ms: i64, arms: [&str; 2]) -> Result<[ArmStats; 2], ApiError> {
    let fail = |e: switchyard_store::StoreError| ApiError::internal(format!("reading the rollout's window: {e}"));
    let records =
        store.telemetry(&TelemetryFilter { since_ms, limit: 50_000, ..Default::default() }).await.map_err(fail)?;
    let feedback = store.feedback_by_policy(since_ms).await.map_err(fail)?;
    Ok(arms.map(|policy| {
        let mine: Vec<_> = records.iter().filter(|r| r.policy_id == policy).collect();
        let n = mine.len().max(1) as f64;
        let share = |f: fn(&DecisionRecord) -> bool| mine.iter().filter(|r| f(r)).count() as f64 / n;
        let (good, bad) = feedback.iter().find(|(p, _, _)| p == policy).map_or((0, 0), |(_, g, b)| (*g, *b));
        ArmStats {
            policy: policy.to_string(),
            requests: mine.len() as u32,
            error_rate: share(failed),
            refusal_rate: share(refused),
            escalation_rate: share(escalated),
            ttft_p95_ms: p95(mine.iter().filter_map(|r| r.measured.ttft_ms).collect()),
            e2e_p95_ms: p95(mine.iter().filter_map(|r| r.measured.total_ms).collect()),
            feedback: (good + bad) as u32,
            bad_feedback_rate: if good + bad > 0 { bad as f64 / (good + bad) as f64 } else { 0.0 },
        }
    }))
}

/// What the gate makes of a window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few requests on an arm to judge.
    Wait,
    Healthy,
    /// Each figure past its margin, named with both values.
    Regressed(Vec<String>),
}

/// Compares the candidate with the incumbent on one window.
pub fn judge(inc: &ArmStats, cand: &ArmStats, plan: &Plan) -> Verdict {
    if inc.requests < plan.min_requests || cand.requests < plan.min_requests {
        return Verdict::Wait;
    }
    let m = &plan.margins;
    let mut worse = Vec::new();
    for (what, i, c, margin) in [
        ("error rate", inc.error_rate, cand.error_rate, m.error_rate),
        ("refusal rate", inc.refusal_rate, cand.refusal_rate, m.refusal_rate),
        ("escalation rate", inc.escalation_rate, cand.escalation_rate, m.escalation_rate),
    ] {
        if c > i + margin {
            worse.push(format!("{what} {c:.3} vs {i:.3} (margin +{margin})"));
        }
    }
    if cand.feedback >= plan.min_requests.min(10)
        && cand.bad_feedback_rate > inc.bad_feedback_rate + m.bad_feedback_rate
    {
        worse.push(format!(
            "bad feedback {:.3} vs {:.3} (margin +{})",
            cand.bad_feedback_rate, inc.bad_feedback_rate, m.bad_feedback_rate
        ));
    }
    for (what, i, c, ratio) in [
        ("TTFT p95", inc.ttft_p95_ms, cand.ttft_p95_ms, m.ttft_p95_ratio),
        ("end-to-end p95", inc.e2e_p95_ms, cand.e2e_p95_ms, m.e2e_p95_ratio),
    ] {
        if let (Some(i), Some(c)) = (i, c) {
            if c > i * ratio && c - i > 50.0 {
                worse.push(format!("{what} {c:.0} ms vs {i:.0} ms (margin x{ratio})"));
            }
        }
    }
    if worse.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Regressed(worse)
    }
}

impl Live {
    /// The routing a request takes: the candidate's for its arm while a
    /// rollout runs, else the one in force. `pinned`: the
    /// `x-switchyard-canary` header, honoured only when `may_pin`.
    pub fn for_request(&self, request_id: &str, pinned: Option<&str>, may_pin: bool) -> Result<Arc<Routing>, ApiError> {
        if pinned.is_some() && !may_pin {
            return Err(ApiError::invalid(
                Some(headers::CANARY.into()),
                format!("header {}: pinning a rollout's arm needs the operator or admin role", headers::CANARY),
            )
            .with_status(StatusCode::FORBIDDEN)
            .with_code("canary_pin_not_allowed"));
        }
        let Some(active) = self.rollout() else { return Ok(self.current()) };
        match arm(active.share(), request_id, pinned) {
            Ok(Arm::Candidate) => Ok(active.candidate.clone()),
            Ok(Arm::Incumbent) => Ok(self.current()),
            Err(why) => {
                Err(ApiError::invalid(Some(headers::CANARY.into()), format!("header {}: {why}", headers::CANARY))
                    .with_code("invalid_header"))
            }
        }
    }
}

async fn record(store: &Store, active: &Active, action: &str, share: f64, figures: Value, reason: &str) {
    let step = RolloutStep {
        id: 0,
        rollout_id: active.id.clone(),
        at_ms: switchyard_wire::unix_ms(),
        action: action.into(),
        incumbent: active.incumbent.clone(),
        candidate: active.candidate.policy.id.clone(),
        share,
        figures: JsonText::of_or_null(&figures),
        reason: reason.into(),
    };
    tracing::info!(rollout = %active.id, action, share, "rollout: {reason}");
    metrics::counter!("switchyard_rollout_steps_total", "action" => action.to_string()).increment(1);
    if let Err(e) = store.record_rollout_step(&step).await {
        tracing::error!(rollout = %active.id, "the rollout step was not recorded: {e}");
    }
}

fn conflict(message: String) -> ApiError {
    ApiError::invalid(None, message).with_status(StatusCode::CONFLICT).with_code("rollout_conflict")
}

/// The body of `POST /admin/rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The candidate policy file (TOML).
    pub policy: String,
    #[serde(default)]
    pub plan: Plan,
}

/// `POST /admin/rollout`: starts sending the plan's first share of
/// traffic to the candidate.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "start a rollout")?;
    let (live, store) = parts(&state)?;
    let start: Start = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(None, format!("the rollout is not valid: {e}; send {{\"policy\": TOML, \"plan\": {{…}}}}"))
    })?;
    start.plan.check().map_err(|e| ApiError::invalid(Some("plan".into()), e))?;
    let actor: Actor = (&caller).into();
    let _one = live.applying.lock().await;
    if let Some(r) = live.rollout() {
        return Err(conflict(format!("rollout {} is in progress; abort or promote it first", r.id)));
    }
    let policy = Policy::from_toml(&start.policy)
        .map_err(|e| ApiError::invalid(None, format!("candidate not valid: {e}")).with_code("invalid_policy"))?;
    let incumbent = live.current().policy.id.clone();
    if policy.id == incumbent {
        return Err(conflict(format!("the candidate is the policy in force ({incumbent})")));
    }
    let candidate = match live.build(&state, policy, &actor).await {
        Ok(candidate) => candidate,
        Err(e) => {
            // Models loaded for a candidate that will not serve.
            state.models.retire_unused(&live.current().policy);
            return Err(
                ApiError::invalid(None, format!("candidate cannot serve here: {e:#}")).with_code("invalid_policy")
            );
        }
    };
    let now = switchyard_wire::unix_ms();
    let active = Active {
        id: format!("rollout-{}", uuid::Uuid::now_v7().simple()),
        candidate: Arc::new(candidate),
        incumbent,
        plan: start.plan,
        step: 0,
        started_ms: now,
        step_started_ms: now,
    };
    let reason = format!(
        "rollout {} of policy {} over {}: {:.0}% of traffic",
        active.id,
        active.candidate.policy.id,
        active.incumbent,
        100.0 * active.share()
    );
    audit::changing(
        store,
        &actor,
        "policy".into(),
        "rollout-start",
        Some(active.candidate.policy.sha256.clone()),
        reason.clone(),
    )
    .await?;
    record(store, &active, "start", active.share(), json!({"plan": active.plan}), &reason).await;
    let status = active.status();
    let id = active.id.clone();
    live.set_rollout(Some(Arc::new(active)));
    drop(_one);
    gate_every(state.clone(), id);
    audit::done(&state, &caller, "rollout.start", reason);
    Ok(Json(status).into_response())
}

/// Judges the rollout `id` every `judge_every_s` until it ends.
fn gate_every(state: Arc<AppState>, id: String) {
    tokio::spawn(async move {
        loop {
            let Some(active) = state.routing.as_ref().and_then(|l| l.rollout()).filter(|a| a.id == id) else { return };
            tokio::time::sleep(Duration::from_secs_f64(active.plan.judge_every_s)).await;
            if let Err(e) = judge_now(&state, &id).await {
                tracing::error!(rollout = %id, "judging the rollout: {}", e.message);
            }
        }
    });
}

/// One look at the rollout `id`'s window: roll back, step up, promote, or wait.
pub async fn judge_now(state: &AppState, id: &str) -> Result<(), ApiError> {
    let (live, store) = parts(state)?;
    let Some(active) = live.rollout().filter(|a| a.id == id) else { return Ok(()) };
    let [inc, cand] = stats(store, active.step_started_ms, [&active.incumbent, &active.candidate.policy.id]).await?;
    let figures = json!({"incumbent": inc, "candidate": cand, "margins": active.plan.margins, "window_since_ms": active.step_started_ms});
    match judge(&inc, &cand, &active.plan) {
        Verdict::Wait => Ok(()),
        Verdict::Regressed(why) => {
            end(state, id, "rollback", figures, format!("the candidate regressed: {}", why.join("; ")), &server(state))
                .await
        }
        Verdict::Healthy => {
            let held = (switchyard_wire::unix_ms() - active.step_started_ms) as f64 / 1000.0;
            if !active.plan.auto_promote || held < active.plan.step_s {
                return Ok(());
            }
            step_up(state, id, figures, &server(state)).await
        }
    }
}

fn server(state: &AppState) -> Actor {
    Actor::named(format!("server:{}", state.node))
}

/// The next share, or the promotion after the last.
async fn step_up(state: &AppState, id: &str, figures: Value, actor: &Actor) -> Result<(), ApiError> {
    let (live, store) = parts(state)?;
    let next = {
        let _one = live.applying.lock().await;
        let Some(active) = live.rollout().filter(|a| a.id == id) else { return Ok(()) };
        match active.plan.steps.get(active.step + 1) {
            Some(share) if *share < 1.0 => {
                let now = switchyard_wire::unix_ms();
                let next = Active {
                    id: active.id.clone(),
                    candidate: active.candidate.clone(),
                    incumbent: active.incumbent.clone(),
                    plan: active.plan.clone(),
                    step: active.step + 1,
                    started_ms: active.started_ms,
                    step_started_ms: now,
                };
                let reason = format!("healthy at {:.0}%: up to {:.0}%", 100.0 * active.share(), 100.0 * share);
                record(store, &next, "step", *share, figures.clone(), &reason).await;
                live.set_rollout(Some(Arc::new(next)));
                None
            }
            _ => Some(()),
        }
    };
    match next {
        None => Ok(()),
        Some(()) => end(state, id, "promote", figures, "healthy at every step: promoted".into(), actor).await,
    }
}

/// Ends the rollout `id`: `promote` puts the candidate in force (a new
/// policy version), `rollback` and `abort` leave the incumbent.
async fn end(
    state: &AppState,
    id: &str,
    action: &str,
    figures: Value,
    reason: String,
    actor: &Actor,
) -> Result<(), ApiError> {
    let (live, store) = parts(state)?;
    // Under the lock, so a step up, another ending or an apply cannot
    // interleave with this one; checked again once held.
    let _one = live.applying.lock().await;
    let Some(active) = live.rollout().filter(|a| a.id == id) else { return Ok(()) };
    if action == "promote" {
        // Applied while the rollout still stands: a promotion that fails
        // leaves it running, and says so.
        let text = active.candidate.policy.text().to_string();
        if let Err(e) = live.apply_locked(state, store, text, Source::Rollout, actor).await {
            let why = format!("promotion failed: {}", e.message);
            record(store, &active, "promote-failed", active.share(), figures, &why).await;
            return Err(e);
        }
        record(store, &active, action, 1.0, figures, &reason).await;
        live.set_rollout(None);
        return Ok(());
    }
    audit::changing(
        store,
        actor,
        "policy".into(),
        &format!("rollout-{action}"),
        Some(active.candidate.policy.sha256.clone()),
        format!("rollout {id}: {reason}"),
    )
    .await?;
    record(store, &active, action, 0.0, figures, &reason).await;
    live.set_rollout(None);
    for model in state.models.retire_unused(&live.current().policy) {
        tracing::info!(model = %model, "rolled-back candidate's model retired");
    }
    Ok(())
}

/// Ends the rollout in progress, if any, because the policy in force
/// changed under it (a version applied on another replica).
pub(crate) async fn abandon(state: &AppState, why: &str) {
    let Some(active) = state.routing.as_ref().and_then(|l| l.rollout()) else { return };
    if let Some(live) = &state.routing {
        live.set_rollout(None);
    }
    tracing::warn!(rollout = %active.id, "rollout ended: {why}");
    if let Some(store) = &state.store {
        record(store, &active, "abort", 0.0, json!({}), why).await;
    }
}

/// `GET /admin/rollout`: the rollout in progress, if any, and the steps of
/// the recent ones.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ReadAllDecisions, "read rollouts")?;
    let (live, store) = parts(&state)?;
    let steps = store.rollout_steps(None, 200).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let active = live.rollout().map(|a| a.status());
    Ok(Json(json!({"active": active, "serving": live.current().policy.id, "steps": steps})).into_response())
}

/// `POST /admin/rollout/abort`: back to the incumbent, by hand.
pub async fn abort(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "abort a rollout")?;
    let (live, _) = parts(&state)?;
    let active = live.rollout().ok_or_else(|| conflict("no rollout is in progress".into()))?;
    end(&state, &active.id, "abort", json!({}), "aborted by an operator".into(), &(&caller).into()).await?;
    Ok(Json(json!({"aborted": active.id, "serving": live.current().policy.id})).into_response())
}

/// `POST /admin/rollout/promote`: the candidate in force now, by hand.
pub async fn promote(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "promote a rollout")?;
    let (live, _) = parts(&state)?;
    let active = live.rollout().ok_or_else(|| conflict("no rollout is in progress".into()))?;
    end(&state, &active.id, "promote", json!({}), "promoted by an operator".into(), &(&caller).into()).await?;
    Ok(Json(json!({"promoted": active.id, "serving": live.current().policy.id})).into_response())
}

/// The body of `POST /admin/rollout/eval`: a canary eval's verdict.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalVerdict {
    pub rollout_id: String,
    pub passed: bool,
    /// Success per arm, the gate's slices, the sample: kept as given.
    #[serde(default)]
    pub figures: Value,
    #[serde(default)]
    pub detail: String,
}

/// `POST /admin/rollout/eval`: records a canary eval; a failed one rolls back.
pub async fn eval(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Json(v): Json<EvalVerdict>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "report a canary eval")?;
    let (live, store) = parts(&state)?;
    let active = live
        .rollout()
        .filter(|a| a.id == v.rollout_id)
        .ok_or_else(|| conflict(format!("rollout {} is not in progress", v.rollout_id)))?;
    let figures = json!({"eval": v.figures, "passed": v.passed});
    if v.passed {
        record(store, &active, "eval", active.share(), figures, &format!("canary eval passed: {}", v.detail)).await;
    } else {
        let reason = format!("canary eval failed: {}", v.detail);
        end(&state, &active.id, "rollback", figures, reason, &(&caller).into()).await?;
    }
    Ok(Json(
        json!({"recorded": true, "serving": live.current().policy.id, "active": live.rollout().map(|a| a.id.clone())}),
    )
    .into_response())
}

/// The body of `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    pub request_id: String,
    /// `good` or `bad`.
    pub verdict: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/feedback`: a client's verdict on one of its answers.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Permission::Infer, "give feedback")?;
    let f: FeedbackBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("feedback is not valid: {e}; send {{\"request_id\": ID, \"verdict\": \"good\"|\"bad\"}}"),
        )
    })?;
    if !matches!(f.verdict.as_str(), "good" | "bad") {
        return Err(ApiError::invalid(
            Some("verdict".into()),
            format!("`verdict` is `good` or `bad`, not `{}`", f.verdict),
        ));
    }
    if f.comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
        return Err(ApiError::invalid(Some("comment".into()), "`comment` is at most 2000 characters"));
    }
    let store = state.store.as_ref().ok_or_else(|| ApiError::internal("this server has no store"))?;
    let decision = store.decision(&f.request_id).await.map_err(|e| ApiError::internal(e.to_string()))?;
    // Another tenant's request is as unknown as one that never was.
    let mine = decision.filter(|d| {
        caller.tenant().is_none() || d.tenant.as_deref() == caller.tenant() || caller.may(Permission::ReadAllDecisions)
    });
    if mine.is_none() {
        return Err(ApiError::invalid(
            Some("request_id".into()),
            format!("no answer `{}` to give feedback on", f.request_id),
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let record = Feedback {
        request_id: f.request_id,
        created_ms: switchyard_wire::unix_ms(),
        verdict: f.verdict,
        tenant: caller.tenant().map(str::to_string),
        comment: f.comment,
    };
    store.record_feedback(&record).await.map_err(|e| ApiError::internal(format!("recording feedback: {e}")))?;
    metrics::counter!("switchyard_feedback_total", "verdict" => record.verdict.clone()).increment(1);
    Ok((StatusCode::CREATED, Json(json!({"recorded": record.request_id}))).into_response())
}

/// Whether a caller may pin a rollout arm (as forcing a route).
pub fn may_pin(caller: &Caller, allow_force_route: bool) -> bool {
    match caller {
        Caller::Open => allow_force_route,
        Caller::Key(k) => k.role.may(Permission::ForceRoute),
    }
}

/// The `x-switchyard-canary` header, if sent.
pub fn pinned(headers: &HeaderMap) -> Option<&str> {
    headers.get(headers::CANARY).map(|v| v.to_str().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm_stats(requests: u32, error_rate: f64, e2e: f64) -> ArmStats {
        ArmStats { policy: "p".into(), requests, error_rate, e2e_p95_ms: Some(e2e), ..Default::default() }
    }

    #[test]
    fn the_split_is_a_function_of_the_request_id_and_near_its_share() {
        assert_eq!(bucket("chatcmpl-abc"), bucket("chatcmpl-abc"));
        let ids: Vec<String> = (0..20_000).map(|i| format!("chatcmpl-{i:032x}")).collect();
        let share = ids.iter().filter(|id| arm(0.1, id, None) == Ok(Arm::Candidate)).count() as f64 / ids.len() as f64;
        assert!((share - 0.1).abs() < 0.01, "{share}");
        assert_eq!(arm(0.0, "x", Some("candidate")), Ok(Arm::Candidate));
        assert!(arm(0.5, "x", Some("both")).is_err());
    }

    #[test]
    fn the_gate_waits_for_data_and_names_each_regression() {
        let plan = Plan { min_requests: 10, ..Default::default() };
        assert_eq!(judge(&arm_stats(9, 0.0, 100.0), &arm_stats(50, 0.9, 100.0), &plan), Verdict::Wait);
        assert_eq!(judge(&arm_stats(50, 0.0, 100.0), &arm_stats(50, 0.02, 150.0), &plan), Verdict::Healthy);
        let Verdict::Regressed(why) = judge(&arm_stats(50, 0.0, 100.0), &arm_stats(50, 0.2, 900.0), &plan) else {
            panic!("a worse candidate regressed")
        };
        assert!(
            why[0].starts_with("error rate 0.200 vs 0.000") && why[1].starts_with("end-to-end p95 900 ms"),
            "{why:?}"
        );
    }

    #[test]
    fn a_plan_that_cannot_run_is_refused() {
        for bad in [vec![], vec![0.5, 0.2], vec![0.0, 1.0], vec![0.5, 1.5]] {
            assert!(Plan { steps: bad.clone(), ..Default::default() }.check().is_err(), "{bad:?}");
        }
        assert!(Plan::default().check().is_ok());
    }

    #[test]
    fn p95_is_the_value_at_the_95th_percent_rank() {
        assert_eq!(p95(vec![]), None);
        assert_eq!(p95((1..=100).map(f64::from).collect()), Some(95.0));
        assert_eq!(p95(vec![7.0]), Some(7.0));
    }
}
