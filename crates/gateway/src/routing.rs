//! Policy routing in the request path: classify, decide (pure, in the
//! router crate), then try the decided route and its fallbacks in order.
//!
//! Every answer carries `x-switchyard-route`, `x-switchyard-policy` and
//! `x-switchyard-reason`; the reason also lists each fallback taken and why.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use switchyard_engine::Engine;
use switchyard_router::{classify, decide, Action, Backend, DataClass, Decision, Lane, Outcome, Policy, RequestFacts};
use switchyard_store::DecisionRecord;
use switchyard_wire::*;

use crate::chat::embedded;
use crate::error::ApiError;
use crate::resilience::{CircuitBreaker, RetryBucket};
use crate::upstream::Upstream;
use crate::validate::ChatParams;
use crate::AppState;

pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-route");
pub const POLICY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-policy");
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-switchyard-reason");
/// A data class the caller asserts for its request; detection may raise it.
pub const DATA_CLASS_HEADER: &str = "x-switchyard-data-class";
/// `interactive` (default), `batch` or `fallback`.
pub const LANE_HEADER: &str = "x-switchyard-lane";

pub struct Routing {
    pub policy: Policy,
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
    pub fn new(policy: Policy, engines: &BTreeMap<String, Arc<Engine>>) -> anyhow::Result<Self> {
        for (i, rule) in policy.rules.iter().enumerate() {
            if matches!(rule.then, Action::Handoff { .. }) {
                anyhow::bail!(
                    "policy {}: `rules[{i}].then.action = \"handoff\"` needs the human handoff queue, which this server does not have yet; use \"refuse\" for now",
                    policy.id
                );
            }
        }
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
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
                    upstreams.insert(route.name.clone(), Upstream::new(route, url, client.clone())?);
                }
                (Backend::Upstream, None) => unreachable!("policy validation requires a url for upstream routes"),
            }
        }
        let now = Instant::now();
        let health = policy
            .routes
            .iter()
            .map(|r| {
                let h = Health {
                    breaker: Mutex::new(CircuitBreaker::new(r.breaker.clone())),
                    retries: Mutex::new(RetryBucket::new(r.retry.clone(), now)),
                };
                (r.name.clone(), h)
            })
            .collect();
        Ok(Self { policy, upstreams, health })
    }

    /// Decides, answers, and records the decision (before answering, so an
    /// answered request always has its record).
    pub async fn serve(
        &self,
        state: &AppState,
        id: &str,
        headers: &HeaderMap,
        req: &ChatCompletionRequest,
        params: ChatParams,
    ) -> Result<Response, ApiError> {
        let declared = header_enum::<DataClass>(headers, DATA_CLASS_HEADER)?;
        let lane = header_enum::<Lane>(headers, LANE_HEADER)?.unwrap_or_default();
        let messages: Vec<String> = params.messages.iter().map(|(_, text)| text.clone()).collect();
        let decision = decide(&RequestFacts { lane }, &classify(&messages, declared, &self.policy), &self.policy);
        tracing::info!(request_id = %id, policy = %decision.policy_id, rule = ?decision.rule_id, reason = %decision.reason, "routing decision");

        let (result, route, reason) = self.execute(state, id, req, params, &decision).await;
        if let Some(store) = &state.store {
            let record = DecisionRecord {
                request_id: id.to_string(),
                created_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
                policy_id: decision.policy_id.clone(),
                rule_id: decision.rule_id.clone(),
                route: route.clone(),
                status: result.as_ref().map_or_else(|e| e.status.as_u16(), |r| r.status().as_u16()),
                reason: reason.clone(),
                decision: serde_json::to_value(&decision).expect("decisions serialize"),
            };
            if let Err(e) = store.record_decision(&record).await {
                tracing::error!(request_id = %id, "could not record the routing decision: {e}");
            }
        }
        Ok(self.label(result.unwrap_or_else(IntoResponse::into_response), &route, &reason))
    }

    /// Runs the decision: the answer, the route that gave it (or `refused` /
    /// `failed`), and the reason with every retry and fallback appended.
    async fn execute(
        &self,
        state: &AppState,
        id: &str,
        req: &ChatCompletionRequest,
        params: ChatParams,
        decision: &Decision,
    ) -> (Result<Response, ApiError>, String, String) {
        let mut reason = decision.reason.clone();
        let (route, fallbacks) = match &decision.outcome {
            Outcome::Route { route, fallbacks } => (route, fallbacks),
            Outcome::Refuse { message } | Outcome::Handoff { message } => {
                return (Ok(refusal(id, &req.model, message, &params)), "refused".into(), reason);
            }
        };
        let mut last_error = None;
        for name in std::iter::once(route).chain(fallbacks) {
            let health = &self.health[name];
            if !health.breaker.lock().expect("not poisoned").allow(Instant::now()) {
                reason.push_str(&format!("; {name} skipped (circuit open)"));
                last_error.get_or_insert_with(|| ApiError::bad_gateway(format!("route {name}: circuit open")).with_code("circuit_open"));
                continue;
            }
            health.retries.lock().expect("not poisoned").deposit(Instant::now());
            let mut attempt = self.attempt(state, id, name, req, &params).await;
            if attempt.as_ref().is_err_and(ApiError::is_retryable) && health.retries.lock().expect("not poisoned").try_withdraw(Instant::now()) {
                reason.push_str(&format!("; {name} retried"));
                attempt = self.attempt(state, id, name, req, &params).await;
            }
            // A client error is not the route's fault.
            let healthy = attempt.as_ref().map_or_else(|e| !e.is_retryable(), |_| true);
            health.breaker.lock().expect("not poisoned").record(healthy, Instant::now());
            match attempt {
                Ok(resp) => return (Ok(resp), name.clone(), reason),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(request_id = %id, route = %name, status = %e.status, "route failed, trying the next: {}", e.message);
                    reason.push_str(&format!("; {name} failed ({}), fell back", e.code.unwrap_or("error")));
                    last_error = Some(e);
                }
                Err(e) => return (Err(e), name.clone(), reason),
            }
        }
        let e = last_error.expect("the chain has at least one route");
        let e = ApiError { message: format!("every route failed: {reason}. Last error: {}", e.message), ..e };
        (Err(e), "failed".into(), reason)
    }

    async fn attempt(&self, state: &AppState, id: &str, name: &str, req: &ChatCompletionRequest, params: &ChatParams) -> Result<Response, ApiError> {
        let r = self.policy.route(name).expect("decide names only declared routes");
        match r.backend {
            Backend::Embedded => {
                let engine = state.engines[&r.model].clone();
                embedded(engine, params.clone(), id, &r.model, Some(Duration::from_millis(r.ttft_timeout_ms))).await
            }
            Backend::Upstream => self.upstreams[name].call(req).await,
        }
    }

    fn label(&self, mut resp: Response, route: &str, reason: &str) -> Response {
        let h = resp.headers_mut();
        for (name, value) in [(ROUTE_HEADER, route), (POLICY_HEADER, self.policy.id.as_str()), (REASON_HEADER, reason)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

fn header_enum<T: serde::de::DeserializeOwned>(headers: &HeaderMap, name: &str) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map(Some)
        .map_err(|_| ApiError::invalid(Some(name.to_string()), format!("header {name}: unknown value `{text}`")).with_code("invalid_header"))
}

/// A refusal, shaped as OpenAI shapes one: `message.refusal` set, no content.
fn refusal(id: &str, model: &str, message: &str, params: &ChatParams) -> Response {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
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
        let events = [
            chunk(Delta { role: Some(Role::Assistant), refusal: Some(message.to_string()), content: None }, None),
            chunk(Delta::default(), Some(FinishReason::Stop)),
        ];
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
            message: AssistantMessage { role: Role::Assistant, content: None, refusal: Some(message.to_string()) },
            logprobs: None,
            finish_reason: Some(FinishReason::Stop),
        }],
        usage: Some(Usage::new(0, 0)),
        timings: None,
    })
    .into_response()
}
