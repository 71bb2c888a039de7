//! Running a decision: refuse, hand off, or walk the route chain.
//!
//! The chain is a small state machine over a queue of route names:
//!
//! - a request over the context budget of the route first chosen is
//!   **refused** (400); a fallback over its budget is **skipped**;
//! - a route whose breaker is open is **skipped**;
//! - an attempt that fails by the route's own fault is **retried** once on
//!   the same route if its retry budget allows, then the chain **falls
//!   back** to the next route;
//! - a prompt too long for the route falls back too, but costs the route
//!   nothing (no retry, no breaker failure);
//! - any other client error ends the chain: the request is at fault;
//! - a cascade's fast answer judged unsure is discarded and the queue is
//!   **replaced** by the escalation chain (judged at most once);
//! - the first answer is **answered**; an empty queue returns the last error.
//!
//! Each step is appended to the reason line and the execution record.

use std::collections::VecDeque;
use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use serde::Serialize;
use switchyard_router::{CascadePlan, Decision, Outcome};
use switchyard_store::HandoffRecord;
use switchyard_wire::{headers, HandoffStatus, ResultLabel};

use super::cascade::{CascadeCheck, Verdict};
use super::{RouteState, Routing, HANDOFF_HEADER};
use crate::backend::held::Held;
use crate::backend::{ChatRequest, Generation, Limits};
use crate::envelope::Envelope;
use crate::error::{ApiError, Fault};
use crate::protect::{self, answer::Outbound};
use crate::AppState;

/// What answered a routed request.
pub enum Answered {
    Route(String),
    Refused,
    HandedOff,
}

impl Answered {
    /// The route named in the record and the `x-switchyard-route` header.
    pub fn route(&self) -> String {
        match self {
            Self::Route(name) => name.clone(),
            Self::Refused => headers::ROUTE_REFUSED.into(),
            Self::HandedOff => headers::ROUTE_HANDOFF.into(),
        }
    }

    pub fn label(&self) -> ResultLabel {
        match self {
            Self::Route(_) => ResultLabel::Answered,
            Self::Refused => ResultLabel::Refused,
            Self::HandedOff => ResultLabel::HumanEscalated,
        }
    }
}

/// One try of one route.
pub(super) enum Attempt {
    Answer(Response),
    /// The cascade judged the fast answer too unsure to send.
    Escalate(CascadeCheck),
    /// The fast answer could not be judged and the policy says to refuse
    /// rather than escalate (a 429). The route itself did its job.
    Busy(ApiError),
}

/// The reason line and the execution record, built up as the chain runs.
pub struct Run {
    pub reason: String,
    pub execution: Execution,
    /// The caller's tenant, for a handoff's record.
    pub tenant: Option<String>,
}

impl Run {
    pub fn new(reason: &str, tenant: Option<&str>) -> Self {
        let tenant = tenant.map(str::to_string);
        Self { reason: reason.to_string(), execution: Execution::default(), tenant }
    }

    fn step(&mut self, route: &str, outcome: &'static str, detail: Option<String>, began: Instant) {
        self.execution.steps.push(Step {
            route: route.to_string(),
            outcome,
            detail,
            ms: began.elapsed().as_millis() as u64,
        });
    }
}

/// What running a decision did; recorded beside the decision.
#[derive(Debug, Default, Serialize)]
pub struct Execution {
    steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cascade: Option<CascadeCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff_id: Option<String>,
    /// The context budget checks made, one per route that has a budget.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) context: Vec<super::budget::ContextCheck>,
}

impl Execution {
    /// Attempts repeated on the same route, and routes given up on (failed
    /// or skipped) before the last one tried.
    pub fn retries_and_fallbacks(&self) -> (u32, u32) {
        let retries = self.steps.iter().filter(|s| s.outcome == "retried").count() as u32;
        let before_last = &self.steps[..self.steps.len().saturating_sub(1)];
        let gave_up = before_last.iter().filter(|s| matches!(s.outcome, "failed" | "skipped")).count() as u32;
        (retries, gave_up)
    }
}

#[derive(Debug, Serialize)]
struct Step {
    route: String,
    /// `answered`, `escalated`, `retried`, `failed` or `skipped`.
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    ms: u64,
}

impl Routing {
    pub(super) async fn execute(
        &self,
        state: &AppState,
        req: &ChatRequest,
        decision: &Decision,
        run: &mut Run,
    ) -> Result<(Response, Answered), ApiError> {
        let Outcome::Route { route, fallbacks, cascade } = &decision.outcome else {
            return self.answer_fixed(state, req, decision, run).await;
        };
        let mut chain: VecDeque<&str> = std::iter::once(route).chain(fallbacks).map(String::as_str).collect();
        let mut cascade = cascade.as_ref().map(|plan| (route.as_str(), plan));
        let mut last_error = None;
        let mut first = true;
        while let Some(name) = chain.pop_front() {
            let began = Instant::now();
            let route = self.route(name)?;
            let chain_began = std::mem::take(&mut first);
            let mut span = req.trace.child(if chain_began { "attempt" } else { "fallback" });
            span.set("switchyard.route", name.to_string());
            let mut sent = protect::for_route(req, decision, &self.policy, &route.config);
            if let Err(e) = self.within_budget(route, decision, &mut sent.req, run).await {
                span.set("switchyard.outcome", "over_budget");
                // The route first chosen refuses; a fallback over its budget is passed over.
                if chain_began {
                    run.step(name, "failed", Some(e.message.clone()), began);
                    run.reason.push_str(&format!("; refused: over {name}'s context budget"));
                    return Err(e);
                }
                run.step(name, "skipped", Some(e.message.clone()), began);
                run.reason.push_str(&format!("; {name} skipped (over its context budget)"));
                last_error.get_or_insert(e);
                continue;
            }
            let Some(ticket) = route.health.admit(began) else {
                span.set("switchyard.outcome", "skipped");
                run.step(name, "skipped", Some("circuit open".into()), began);
                run.reason.push_str(&format!("; {name} skipped (circuit open)"));
                last_error.get_or_insert_with(|| {
                    ApiError::bad_gateway(format!("route {name}: circuit open")).with_code("circuit_open")
                });
                continue;
            };
            let judge = cascade.filter(|(fast, _)| *fast == name).map(|(_, plan)| plan);
            if sent.redacted > 0 {
                run.reason.push_str(&format!("; {} redacted for {name}", sent.redacted));
            }
            let mut attempt = self.attempt(route, &sent.req, decision.max_ttft_ms, judge).await;
            if let Err(e) = &attempt {
                if ticket.may_retry(e.fault()) {
                    metrics::counter!("switchyard_retries_total", "route" => name.to_string()).increment(1);
                    span.set("switchyard.outcome", "retried");
                    span.end();
                    span = req.trace.child("retry");
                    span.set("switchyard.route", name.to_string());
                    run.step(name, "retried", Some(e.message.clone()), began);
                    run.reason.push_str(&format!("; {name} retried"));
                    attempt = self.attempt(route, &sent.req, decision.max_ttft_ms, judge).await;
                }
            }
            // An unsure or unjudged answer is no fault of the route's.
            ticket.settle(attempt.as_ref().err().map(ApiError::fault));
            span.set(
                "switchyard.outcome",
                match &attempt {
                    Ok(Attempt::Answer(_)) => "answered",
                    Ok(Attempt::Escalate(_)) => "escalated",
                    Ok(Attempt::Busy(_)) | Err(_) => "failed",
                },
            );
            span.end();
            match (attempt, judge) {
                (Ok(Attempt::Answer(resp)), _) => {
                    run.step(name, "answered", None, began);
                    let resp = match Outbound::new(&self.policy, sent.restore.as_ref()) {
                        Some(outbound) => outbound.wrap(resp),
                        None => resp,
                    };
                    return Ok((resp, Answered::Route(name.to_string())));
                }
                (Ok(Attempt::Escalate(check)), Some(plan)) => {
                    let to = plan
                        .escalate
                        .first()
                        .ok_or_else(|| ApiError::internal(format!("the cascade on {name} has no escalation route")))?;
                    run.step(name, "escalated", None, began);
                    metrics::counter!("switchyard_cascade_escalations_total", "route" => name.to_string()).increment(1);
                    run.reason.push_str(&format!("; cascade: {name} {} -> escalated to {to}", check.describe()));
                    run.execution.cascade = Some(check);
                    chain = plan.escalate.iter().map(String::as_str).collect();
                    cascade = None;
                }
                (Ok(Attempt::Escalate(_)), None) => {
                    return Err(ApiError::internal(format!("route {name} escalated without a cascade")))
                }
                (Ok(Attempt::Busy(e)), _) => {
                    run.step(name, "failed", Some(e.message.clone()), began);
                    run.reason.push_str(&format!("; cascade: {name} could not be verified (verifier busy), refused"));
                    return Err(e);
                }
                (Err(e), _) if e.fault() == Fault::Request => {
                    run.step(name, "failed", Some(e.message.clone()), began);
                    return Err(e);
                }
                (Err(e), _) => {
                    tracing::warn!(request_id = %req.id, route = %name, status = %e.status, "route failed, trying the next: {}", e.message);
                    run.step(name, "failed", Some(e.message.clone()), began);
                    run.reason.push_str(&format!("; {name} failed ({}), fell back", e.code.unwrap_or("error")));
                    last_error = Some(e);
                }
            }
        }
        let e = last_error.unwrap_or_else(|| ApiError::internal("the route chain was empty"));
        Err(ApiError { message: format!("every route failed: {}. Last error: {}", run.reason, e.message), ..e })
    }

    /// A refusal, or a handoff notice once the request is queued for a person.
    async fn answer_fixed(
        &self,
        state: &AppState,
        req: &ChatRequest,
        decision: &Decision,
        run: &mut Run,
    ) -> Result<(Response, Answered), ApiError> {
        let envelope = Envelope::new(req, &req.body.model);
        match &decision.outcome {
            Outcome::Refuse { message } => Ok((envelope.fixed(None, Some(message)), Answered::Refused)),
            Outcome::Handoff { message } => {
                let handoff_id = self.hand_off(state, req, decision, run.tenant.clone()).await?;
                let mut resp = envelope.fixed(Some(message), None);
                if let Ok(value) = HeaderValue::from_str(&handoff_id) {
                    resp.headers_mut().insert(HANDOFF_HEADER, value);
                }
                run.execution.handoff_id = Some(handoff_id);
                Ok((resp, Answered::HandedOff))
            }
            Outcome::Route { .. } => Err(ApiError::internal("a routed decision has no fixed answer")),
        }
    }

    /// One try of one route. With `judge`, a token answer is held back and
    /// judged first; an unsure one comes back as [`Attempt::Escalate`] (and
    /// its generation is cancelled when it is dropped).
    pub(super) async fn attempt(
        &self,
        route: &RouteState,
        req: &ChatRequest,
        max_ttft_ms: Option<u64>,
        judge: Option<&CascadePlan>,
    ) -> Result<Attempt, ApiError> {
        let limits = Limits::of_route(&route.config, max_ttft_ms);
        let generation = self.faults.generate(&route.config.name, route.backend.as_ref(), req, limits).await?;
        let (fingerprint, events) = match generation {
            Generation::Proxied(resp) => return Ok(Attempt::Answer(resp)),
            Generation::Tokens { fingerprint, events } => (fingerprint, events),
        };
        let hold_tokens = match judge {
            None => 1,
            Some(_) if !req.params.stream => usize::MAX,
            Some(plan) => plan.hold_tokens,
        };
        let held = Held::take(&route.config.model, events, &limits, hold_tokens).await?;
        if let Some(plan) = judge {
            let _span = req.trace.child("verify");
            match self.judge(&route.config.name, plan, req, held.sample()).await {
                Verdict::Keep => {}
                Verdict::Escalate(check) => return Ok(Attempt::Escalate(check)),
                Verdict::Busy(e) => return Ok(Attempt::Busy(e)),
            }
        }
        let envelope = Envelope::new(req, &route.config.model).with_fingerprint(fingerprint);
        held.answer(envelope, &limits).await.map(Attempt::Answer)
    }

    /// Queues the request for a human; the record is durable before the
    /// client hears about it.
    async fn hand_off(
        &self,
        state: &AppState,
        req: &ChatRequest,
        decision: &Decision,
        tenant: Option<String>,
    ) -> Result<String, ApiError> {
        let store = state.store.as_ref().ok_or_else(|| {
            ApiError::internal("this server has no store, so it cannot queue a handoff")
                .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        })?;
        let handoff_id = format!("handoff-{}", uuid::Uuid::new_v4().simple());
        let messages: Vec<_> = req
            .params
            .messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        let record = HandoffRecord {
            id: handoff_id.clone(),
            request_id: req.id.clone(),
            created_ms: switchyard_wire::unix_ms(),
            policy_id: decision.policy_id.clone(),
            rule_id: decision.rule_id.clone().unwrap_or_default(),
            messages: serde_json::Value::Array(messages),
            status: HandoffStatus::Open.as_str().into(),
            answer: None,
            reviewer: None,
            resolved_ms: None,
            tenant,
        };
        store.enqueue_handoff(&record).await.map_err(|e| ApiError::internal(format!("queueing the handoff: {e}")))?;
        tracing::info!(request_id = %req.id, handoff = %handoff_id, "handed to a human");
        Ok(handoff_id)
    }
}
