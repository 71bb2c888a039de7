//! Policy routing in the request path: classify, decide (pure, in the
//! router crate), then try the decided route and its fallbacks in order.
//!
//! Every answer carries `x-switchyard-route`, `x-switchyard-policy` and
//! `x-switchyard-reason`; the reason also lists each fallback taken and why,
//! and the decision record keeps every step (`/admin/decisions/{id}`).
//! Cascades judge the fast answer before any of it is sent; handoffs are
//! queued durably before the client is told; shadow copies run beside the
//! request and are recorded, never returned.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use switchyard_engine::Engine;
use switchyard_router::{
    classify, decide, decide_forced, Backend, CascadePlan, Confidence, DataClass, Decision, Declared, Lane, Outcome, Policy, Prices, RequestFacts,
};
use switchyard_store::{Completion, DecisionRecord, HandoffRecord, JsonText, ShadowRecord};
use switchyard_wire::*;
use tokio::sync::oneshot;

use crate::capture;
use crate::chat::{Hold, Started};
use crate::error::ApiError;
use crate::resilience::{CircuitBreaker, RetryBucket};
use crate::upstream::Upstream;
use crate::validate::ChatParams;
use crate::AppState;

pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-route");
pub const POLICY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-policy");
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-switchyard-reason");
/// How the request ended: `answered`, `refused`, `human-escalated` or
/// `error`, as recorded; a client (the bench) tells a successful task by it.
pub const LABEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-label");
/// A data class the caller asserts for its request; detection may raise it.
pub const DATA_CLASS_HEADER: &str = "x-switchyard-data-class";
/// `interactive` (default), `batch` or `fallback`.
pub const LANE_HEADER: &str = "x-switchyard-lane";
/// Sends the request to this route alone, bypassing the rules (the data
/// boundary still holds): how the eval runner measures one route. No
/// authentication yet, like `/admin`.
pub const FORCE_ROUTE_HEADER: &str = "x-switchyard-force-route";
/// The workload family the request belongs to (one the policy declares).
pub const FAMILY_HEADER: &str = "x-switchyard-family";
/// On a handed-off request: the id to follow it by under `/admin/handoffs`.
pub const HANDOFF_HEADER: HeaderName = HeaderName::from_static("x-switchyard-handoff-id");

pub struct Routing {
    pub policy: Policy,
    prices: Prices,
    upstreams: HashMap<String, Upstream>,
    health: HashMap<String, Health>,
}

/// A route's breaker and retry budget. Process-local: each replica judges
/// the routes it talks to.
struct Health {
    breaker: Mutex<CircuitBreaker>,
    retries: Mutex<RetryBucket>,
}

impl Routing {
    /// Checks the policy against what this server can do: embedded routes
    /// must name a loaded model, upstream keys must be in the environment.
    pub fn new(policy: Policy, prices: Prices, engines: &BTreeMap<String, Arc<Engine>>) -> anyhow::Result<Self> {
        let shared = upstream_client(None)?;
        let mut upstreams = HashMap::new();
        for (i, route) in policy.routes.iter().enumerate() {
            match (route.backend, &route.url) {
                (Backend::Embedded, _) if !engines.contains_key(&route.model) => anyhow::bail!(
                    "policy {}: `routes[{i}].model` = `{}` is not loaded; serve it with --model (loaded: {})",
                    policy.id,
                    route.model,
                    engines.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                (Backend::Embedded, _) => {}
                (Backend::Upstream, Some(url)) => {
                    let client = match &route.ca_file {
                        None => shared.clone(),
                        Some(path) => std::fs::read(path)
                            .map_err(anyhow::Error::from)
                            .and_then(|pem| upstream_client(Some(&pem)))
                            .map_err(|e| anyhow::anyhow!("policy {}: `routes[{i}].ca_file` {}: {e}", policy.id, path.display()))?,
                    };
                    upstreams.insert(route.name.clone(), Upstream::new(route, url, client)?);
                }
                (Backend::Upstream, None) => unreachable!("policy validation requires a url for upstream routes"),
            }
        }
        let now = Instant::now();
        let health = policy
            .routes
            .iter()
            .map(|r| {
                let h = Health { breaker: Mutex::new(CircuitBreaker::new(r.breaker.clone())), retries: Mutex::new(RetryBucket::new(r.retry.clone(), now)) };
                (r.name.clone(), h)
            })
            .collect();
        Ok(Self { policy, prices, upstreams, health })
    }

    /// Decides, answers, and records the decision (before answering, so an
    /// answered request always has its record).
    pub async fn serve(
        self: &Arc<Self>,
        state: &AppState,
        id: &str,
        headers: &HeaderMap,
        req: &ChatCompletionRequest,
        params: ChatParams,
    ) -> Result<Response, ApiError> {
        let declared = Declared { data_class: header_enum::<DataClass>(headers, DATA_CLASS_HEADER)?, family: self.family_header(headers)? };
        let lane = header_enum::<Lane>(headers, LANE_HEADER)?.unwrap_or_default();
        let messages: Vec<String> = params.messages.iter().map(|(_, text)| text.clone()).collect();
        let facts = RequestFacts { lane };
        let classification = classify(&messages, &declared, &self.policy);
        let decision = match headers.get(FORCE_ROUTE_HEADER).map(|v| v.to_str().unwrap_or_default()) {
            None => decide(&facts, &classification, &self.policy),
            Some(route) => decide_forced(&facts, &classification, &self.policy, route).ok_or_else(|| {
                let known: Vec<_> = self.policy.routes.iter().map(|r| r.name.as_str()).collect();
                ApiError::invalid(
                    Some(FORCE_ROUTE_HEADER.into()),
                    format!("header {FORCE_ROUTE_HEADER}: unknown route `{route}`; this policy has: {}", known.join(", ")),
                )
                .with_code("invalid_header")
            })?,
        };
        // Debug, not info: every decision is recorded in the store anyway,
        // and a log line per request is a real share of a proxy's CPU.
        tracing::debug!(request_id = %id, policy = %decision.policy_id, rule = ?decision.rule_id, reason = %decision.reason, "routing decision");

        let began = Instant::now();
        let shadow = decision.shadow.as_ref().map(|route| self.clone().mirror(state, id, route, req, &params, decision.max_ttft_ms));
        let mut run = Run { reason: decision.reason.clone(), execution: Execution::default() };
        let result = self.execute(state, id, req, params, &decision, &mut run).await;
        let (route, label) = match &result {
            Ok((_, Answered::Route(r))) => (r.clone(), "answered"),
            Ok((_, Answered::Refused)) => ("refused".into(), "refused"),
            Ok((_, Answered::HandedOff)) => ("handoff".into(), "human-escalated"),
            Err(_) => ("failed".into(), "error"),
        };
        let result = result.map(|(resp, _)| resp);
        if let Some(recorder) = &state.recorder {
            recorder
                .decision(DecisionRecord {
                    request_id: id.to_string(),
                    created_ms: unix_ms(),
                    policy_id: decision.policy_id.clone(),
                    rule_id: decision.rule_id.clone(),
                    route: route.clone(),
                    status: result.as_ref().map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
                    reason: run.reason.clone(),
                    decision: JsonText::of(&decision).expect("decisions serialize"),
                    label: label.into(),
                    execution: JsonText::of(&run.execution).expect("executions serialize"),
                    prompt_tokens: None,
                    completion_tokens: None,
                    cost_usd: None,
                    energy_wh: None,
                })
                .await;
        }
        let resp = result.unwrap_or_else(IntoResponse::into_response);
        let price = self.policy.route(&route).and_then(|r| self.prices.for_route(&r.name, &r.model)).cloned();
        let recorder = state.recorder.clone().filter(|_| price.is_some());
        let resp = if shadow.is_some() || recorder.is_some() {
            let (id, route) = (id.to_string(), route.clone());
            capture::tap(resp, move |status, body| {
                if let Some(recorder) = recorder {
                    let tokens = capture::tokens(&body);
                    let cost = price.zip(tokens).map(|(p, (prompt, completion))| p.cost(prompt, completion, began.elapsed().as_secs_f64() * 1e3));
                    let completion = Completion {
                        request_id: id,
                        prompt_tokens: tokens.map(|t| t.0),
                        completion_tokens: tokens.map(|t| t.1),
                        cost_usd: cost.map(|c| c.usd),
                        energy_wh: cost.and_then(|c| c.energy_wh),
                    };
                    recorder.completion(completion);
                }
                if let Some(primary) = shadow {
                    let _ = primary.send((route, status, body));
                }
            })
        } else {
            resp
        };
        Ok(self.label(resp, &route, label, &run.reason))
    }

    fn family_header(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(value) = headers.get(FAMILY_HEADER) else { return Ok(None) };
        let name = value.to_str().unwrap_or_default();
        if self.policy.family(name).is_none() {
            let known: Vec<_> = self.policy.families.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::invalid(
                Some(FAMILY_HEADER.into()),
                format!("header {FAMILY_HEADER}: unknown family `{name}`; this policy knows: {}", known.join(", ")),
            )
            .with_code("invalid_header"));
        }
        Ok(Some(name.to_string()))
    }

    /// Runs the decision: refuse, hand off, or try the route chain with
    /// breakers, retries, the cascade and fallbacks, appending each step to
    /// the reason and the execution record.
    async fn execute(
        &self,
        state: &AppState,
        id: &str,
        req: &ChatCompletionRequest,
        params: ChatParams,
        decision: &Decision,
        run: &mut Run,
    ) -> Result<(Response, Answered), ApiError> {
        let (route, fallbacks, cascade) = match &decision.outcome {
            Outcome::Route { route, fallbacks, cascade } => (route, fallbacks, cascade),
            Outcome::Refuse { message } => return Ok((fixed_reply(id, &req.model, &params, None, Some(message)), Answered::Refused)),
            Outcome::Handoff { message } => {
                let handoff_id = self.hand_off(state, id, decision, &params).await?;
                run.execution.handoff_id = Some(handoff_id.clone());
                let mut resp = fixed_reply(id, &req.model, &params, Some(message), None);
                resp.headers_mut().insert(HANDOFF_HEADER, HeaderValue::from_str(&handoff_id).expect("ascii id"));
                return Ok((resp, Answered::HandedOff));
            }
        };
        let mut chain: VecDeque<&String> = std::iter::once(route).chain(fallbacks).collect();
        let mut cascade = cascade.as_ref().map(|plan| (route.as_str(), plan));
        let mut last_error = None;
        while let Some(name) = chain.pop_front() {
            let began = Instant::now();
            let health = &self.health[name];
            if !health.breaker.lock().expect("not poisoned").allow(began) {
                run.step(name, "skipped", Some("circuit open".into()), began);
                run.reason.push_str(&format!("; {name} skipped (circuit open)"));
                last_error.get_or_insert_with(|| ApiError::bad_gateway(format!("route {name}: circuit open")).with_code("circuit_open"));
                continue;
            }
            let judge = cascade.filter(|(fast, _)| *fast == name.as_str()).map(|(_, plan)| plan);
            health.retries.lock().expect("not poisoned").deposit(began);
            let mut attempt = self.attempt(&state.engines, id, name, req, &params, decision.max_ttft_ms, judge).await;
            if attempt.as_ref().is_err_and(ApiError::is_retryable) && health.retries.lock().expect("not poisoned").try_withdraw(Instant::now()) {
                run.step(name, "retried", attempt.as_ref().err().map(|e| e.message.clone()), began);
                run.reason.push_str(&format!("; {name} retried"));
                attempt = self.attempt(&state.engines, id, name, req, &params, decision.max_ttft_ms, judge).await;
            }
            // A client error is not the route's fault, nor is an unsure answer.
            let healthy = attempt.as_ref().map_or_else(|e| !e.is_retryable(), |_| true);
            health.breaker.lock().expect("not poisoned").record(healthy, Instant::now());
            match attempt {
                Ok(Attempt::Answer(resp)) => {
                    run.step(name, "answered", None, began);
                    return Ok((resp, Answered::Route(name.clone())));
                }
                Ok(Attempt::Escalate(check)) => {
                    let plan = judge.expect("only a judged attempt escalates");
                    run.step(name, "escalated", None, began);
                    run.reason.push_str(&format!("; cascade: {name} {} -> escalated to {}", check.describe(), plan.escalate[0]));
                    run.execution.cascade = Some(check);
                    chain = plan.escalate.iter().collect();
                    cascade = None;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(request_id = %id, route = %name, status = %e.status, "route failed, trying the next: {}", e.message);
                    run.step(name, "failed", Some(e.message.clone()), began);
                    run.reason.push_str(&format!("; {name} failed ({}), fell back", e.code.unwrap_or("error")));
                    last_error = Some(e);
                }
                Err(e) => {
                    run.step(name, "failed", Some(e.message.clone()), began);
                    return Err(e);
                }
            }
        }
        let e = last_error.expect("the chain has at least one route");
        Err(ApiError { message: format!("every route failed: {}. Last error: {}", run.reason, e.message), ..e })
    }

    /// One try of one route. With `judge`, an embedded answer is held back
    /// and judged first; an unsure one comes back as [`Attempt::Escalate`]
    /// (and its generation is cancelled).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        engines: &BTreeMap<String, Arc<Engine>>,
        id: &str,
        name: &str,
        req: &ChatCompletionRequest,
        params: &ChatParams,
        max_ttft_ms: Option<u64>,
        judge: Option<&CascadePlan>,
    ) -> Result<Attempt, ApiError> {
        let r = self.policy.route(name).expect("decide names only declared routes");
        let ttft = Duration::from_millis(max_ttft_ms.map_or(r.ttft_timeout_ms, |cap| cap.min(r.ttft_timeout_ms)));
        match r.backend {
            Backend::Upstream => self.upstreams[name].call(req, ttft).await.map(Attempt::Answer),
            Backend::Embedded => {
                let engine = engines[&r.model].clone();
                let hold_tokens = match judge {
                    None => 1,
                    Some(_) if !params.stream => usize::MAX,
                    Some(plan) => plan.hold_tokens,
                };
                let hold = Hold { ttft: Some(ttft), tokens: hold_tokens, total: Some(Duration::from_millis(r.total_timeout_ms)) };
                let started = Started::start(engine, params.clone(), hold).await?;
                if let Some(plan) = judge {
                    let confidence = if plan.signal.verifies() {
                        self.verify(engines, plan, params, started.held_text()).await
                    } else {
                        Confidence::of(&started.held_logprobs())
                    };
                    let value = confidence.map(|c| c.get(plan.signal));
                    let escalate = value.is_none_or(|v| v < plan.threshold);
                    let check = CascadeCheck {
                        route: name.to_string(),
                        signal: plan.signal.as_str(),
                        value,
                        threshold: plan.threshold,
                        confidence,
                        escalated: escalate,
                    };
                    if escalate {
                        return Ok(Attempt::Escalate(check));
                    }
                }
                started.respond(id, &r.model, Some(Duration::from_millis(r.stall_timeout_ms))).await.map(Attempt::Answer)
            }
        }
    }

    /// The escalation model's verdict on a fast answer: its logprobs of the
    /// held text, teacher-forced after the same messages, on a context of
    /// its own. `None` (so the answer escalates) when the answer is empty,
    /// the escalation route is not embedded, or scoring fails: an answer
    /// nobody could check is not sent as checked.
    async fn verify(&self, engines: &BTreeMap<String, Arc<Engine>>, plan: &CascadePlan, params: &ChatParams, text: String) -> Option<Confidence> {
        let route = self.policy.route(&plan.escalate[0])?;
        if route.backend != Backend::Embedded || text.is_empty() {
            return None;
        }
        let engine = engines.get(&route.model)?.clone();
        let messages = params.messages.clone();
        let scored = tokio::task::spawn_blocking(move || {
            let messages: Vec<(&str, &str)> = messages.iter().map(|(role, content)| (*role, content.as_str())).collect();
            let prompt = engine.chat_prompt(&messages).map_err(|e| e.to_string())?;
            engine.score(&prompt, &text).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match scored {
            Ok(logprobs) => Confidence::of(&logprobs),
            Err(e) => {
                tracing::warn!(route = %route.name, "could not verify the fast answer, so it escalates: {e}");
                None
            }
        }
    }

    /// Queues the request for a human; the record is durable before the
    /// client hears about it.
    async fn hand_off(&self, state: &AppState, id: &str, decision: &Decision, params: &ChatParams) -> Result<String, ApiError> {
        let store = state.store.as_ref().ok_or_else(|| {
            ApiError::internal("this server has no store, so it cannot queue a handoff").with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        })?;
        let handoff_id = format!("handoff-{}", uuid::Uuid::new_v4().simple());
        let messages: Vec<_> = params.messages.iter().map(|(role, content)| serde_json::json!({"role": role, "content": content})).collect();
        let record = HandoffRecord {
            id: handoff_id.clone(),
            request_id: id.to_string(),
            created_ms: unix_ms(),
            policy_id: decision.policy_id.clone(),
            rule_id: decision.rule_id.clone().unwrap_or_default(),
            messages: serde_json::Value::Array(messages),
            status: "open".into(),
            answer: None,
            reviewer: None,
            resolved_ms: None,
        };
        store.enqueue_handoff(&record).await.map_err(|e| ApiError::internal(format!("queueing the handoff: {e}")))?;
        tracing::info!(request_id = %id, handoff = %handoff_id, "handed to a human");
        Ok(handoff_id)
    }

    /// Sends a non-streaming copy of the request to `route` in the
    /// background, under that route's limits like any attempt, and records
    /// its answer beside the primary's. Returns the channel the primary's
    /// answer is captured into.
    fn mirror(
        self: Arc<Self>,
        state: &AppState,
        id: &str,
        route: &str,
        req: &ChatCompletionRequest,
        params: &ChatParams,
        max_ttft_ms: Option<u64>,
    ) -> oneshot::Sender<(String, u16, Bytes)> {
        let (primary, captured) = oneshot::channel();
        let (engines, recorder) = (state.engines.clone(), state.recorder.clone());
        let (id, route) = (id.to_string(), route.to_string());
        let mut req = req.clone();
        req.stream = Some(false);
        req.stream_options = None;
        let params = ChatParams { stream: false, include_usage: false, ..params.clone() };
        tokio::spawn(async move {
            let began = Instant::now();
            let resp = match self.attempt(&engines, &id, &route, &req, &params, max_ttft_ms, None).await {
                Ok(Attempt::Answer(resp)) => Ok(resp),
                Ok(Attempt::Escalate(_)) => unreachable!("only a judged attempt escalates"),
                Err(e) => Err(e),
            };
            let (status, body) = match resp {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    (status, axum::body::to_bytes(resp.into_body(), capture::CAPTURE_LIMIT).await.unwrap_or_default())
                }
                Err(e) => (e.status.as_u16(), Bytes::new()),
            };
            let shadow_ms = began.elapsed().as_millis() as i64;
            let Some(recorder) = recorder else { return };
            let (primary_route, primary_status, primary_body) = captured.await.unwrap_or_else(|_| ("failed".into(), 0, Bytes::new()));
            let (primary_output, shadow_output) = (capture::answer_text(&primary_body), capture::answer_text(&body));
            let record = ShadowRecord {
                request_id: id.clone(),
                created_ms: unix_ms(),
                policy_id: self.policy.id.clone(),
                primary_route,
                primary_status,
                same_output: primary_output.is_some() && primary_output == shadow_output,
                primary_output,
                shadow_route: route,
                shadow_status: status,
                shadow_output,
                shadow_ms,
            };
            recorder.shadow(record).await;
        });
        primary
    }

    fn label(&self, mut resp: Response, route: &str, label: &str, reason: &str) -> Response {
        let h = resp.headers_mut();
        for (name, value) in [(ROUTE_HEADER, route), (LABEL_HEADER, label), (POLICY_HEADER, self.policy.id.as_str()), (REASON_HEADER, reason)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

/// The HTTP client for upstreams: pooled, TLS with the system's and the
/// public roots plus `extra_ca` (PEM) if given.
fn upstream_client(extra_ca: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    // An API upstream that redirects a POST is misconfigured: fail over
    // instead of following (which also skips reqwest's redirect checks,
    // a real share of a proxied request's CPU).
    let mut builder = reqwest::Client::builder().pool_max_idle_per_host(64).redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = extra_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)?;
        anyhow::ensure!(!certs.is_empty(), "no PEM certificate in it");
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

fn header_enum<T: serde::de::DeserializeOwned>(headers: &HeaderMap, name: &str) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map(Some)
        .map_err(|_| ApiError::invalid(Some(name.to_string()), format!("header {name}: unknown value `{text}`")).with_code("invalid_header"))
}

/// A fixed answer that no model wrote: a refusal (`message.refusal` set, no
/// content, as OpenAI shapes one) or a handoff notice (`content`).
fn fixed_reply(id: &str, model: &str, params: &ChatParams, content: Option<&str>, refusal: Option<&str>) -> Response {
    let created = unix_ms() / 1000;
    let (content, refusal) = (content.map(str::to_string), refusal.map(str::to_string));
    if params.stream {
        let chunk = |delta: Delta, finish_reason| ChatCompletionChunk {
            id: id.to_string(),
            object: CHAT_COMPLETION_CHUNK_OBJECT.into(),
            created,
            model: model.to_string(),
            system_fingerprint: None,
            choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }],
            usage: None,
            timings: None,
        };
        let events = [chunk(Delta { role: Some(Role::Assistant), refusal, content }, None), chunk(Delta::default(), Some(FinishReason::Stop))];
        let mut body: String = events.iter().map(|c| format!("data: {}\n\n", serde_json::to_string(c).expect("serializes"))).collect();
        body.push_str("data: [DONE]\n\n");
        return ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body).into_response();
    }
    Json(ChatCompletion {
        id: id.to_string(),
        object: CHAT_COMPLETION_OBJECT.into(),
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage { role: Role::Assistant, content, refusal },
            logprobs: None,
            finish_reason: Some(FinishReason::Stop),
        }],
        usage: Some(Usage::new(0, 0)),
        timings: None,
    })
    .into_response()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What answered a routed request.
enum Answered {
    Route(String),
    Refused,
    HandedOff,
}

enum Attempt {
    Answer(Response),
    /// The cascade judged the fast answer too unsure to send.
    Escalate(CascadeCheck),
}

/// The reason line and the execution record, built up as the chain runs.
struct Run {
    reason: String,
    execution: Execution,
}

impl Run {
    fn step(&mut self, route: &str, outcome: &'static str, detail: Option<String>, began: Instant) {
        self.execution.steps.push(Step { route: route.to_string(), outcome, detail, ms: began.elapsed().as_millis() as u64 });
    }
}

/// What running a decision did; recorded beside the decision.
#[derive(Debug, Default, Serialize)]
struct Execution {
    steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cascade: Option<CascadeCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handoff_id: Option<String>,
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

/// A cascade's verdict on a fast answer. Recorded only when it escalated;
/// a kept answer shows as the fast route's `answered` step.
#[derive(Debug, Serialize)]
struct CascadeCheck {
    route: String,
    signal: &'static str,
    /// `None` for an empty answer, which always escalates.
    value: Option<f64>,
    threshold: f64,
    confidence: Option<Confidence>,
    escalated: bool,
}

impl CascadeCheck {
    fn describe(&self) -> String {
        match self.value {
            Some(v) => format!("{} {v:.3} < {}", self.signal, self.threshold),
            None => "gave an empty answer".into(),
        }
    }
}
