//! Policy routing in the request path: classify and decide (pure, in the
//! `switchyard-router` crate), then run the decision over the routes'
//! backends, record it, and answer.
//!
//! - [`facts`]: the routing headers, and the decision made of them;
//! - [`execute`]: the route chain as a state machine (breaker, retry,
//!   cascade, fallback), refusals and handoffs;
//! - [`safety`]: the safety classifier's verdict, before the decision;
//! - [`cascade`]: judging a fast answer before any of it is sent;
//! - [`record`]: the decision record, committed before the answer's first
//!   byte, and the primary answer a shadow is compared with;
//! - [`shadow`]: mirrored copies, recorded and never returned;
//! - [`health`]: each route's breaker and retry budget.
//!
//! Every answer carries `x-switchyard-route`, `x-switchyard-label`,
//! `x-switchyard-policy` and `x-switchyard-reason`; the reason also lists
//! each fallback taken and why, and the decision record keeps every step
//! (`/admin/decisions/{id}`).

mod budget;
mod cascade;
mod execute;
mod facts;
mod record;
mod safety;
mod shadow;

pub use safety::embed_input;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use switchyard_engine::Engine;
use switchyard_router::{BackendKind, Policy, Prices, Route};
use switchyard_wire::headers;
use tokio::sync::Semaphore;

use crate::auth::Caller;
use crate::backend::{Backend, ChatRequest, Embedded, Pool, Upstream};
use crate::error::ApiError;
use crate::ops::faults::Faults;
use crate::resilience::health::Health;
use crate::AppState;

pub const ROUTE_HEADER: HeaderName = HeaderName::from_static(headers::ROUTE);
pub const POLICY_HEADER: HeaderName = HeaderName::from_static(headers::POLICY);
pub const REASON_HEADER: HeaderName = HeaderName::from_static(headers::REASON);
/// How the request ended ([`ResultLabel`]), as recorded; a client (the
/// bench) tells a successful task by it.
pub const LABEL_HEADER: HeaderName = HeaderName::from_static(headers::LABEL);
/// On a handed-off request: the id to follow it by under `/admin/handoffs`.
pub const HANDOFF_HEADER: HeaderName = HeaderName::from_static(headers::HANDOFF_ID);

/// Server settings that shape routing beyond the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingOptions {
    /// Honour `x-switchyard-force-route` (an operator's or the eval
    /// runner's tool). Off by default: any client could otherwise skip the
    /// routing rules.
    pub allow_force_route: bool,
    /// Verify cascades scoring on one model at once; each takes one of the
    /// engine's sequences while it scores, so this bounds how many of them
    /// verdicts hold. Past it, a cascade does what its `when_verifier_busy`
    /// says.
    pub max_verifies: usize,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self { allow_force_route: false, max_verifies: 2 }
    }
}

/// The routing policy in force and, per route, what answers it and how
/// healthy it is.
pub struct Routing {
    pub policy: Policy,
    prices: Prices,
    options: RoutingOptions,
    routes: HashMap<String, RouteState>,
    /// Faults injected into routes (game days); empty unless an operator
    /// sets one.
    faults: Arc<Faults>,
    /// The `[safety]` classifier's stage, and its `[safety.second]`'s.
    /// Invariant: stages on one engine hold one permit (see
    /// [`safety::Stage`]), in this version and across a swap.
    classifier: Option<safety::Stage>,
    second_classifier: Option<safety::Stage>,
}

/// One route of the policy, ready to serve.
struct RouteState {
    config: Route,
    backend: Arc<dyn Backend>,
    /// Shared with the version this one replaced when the route did not
    /// change (see [`Routing::inherit`]).
    health: Arc<Health>,
    /// Verifies running on this route's model, shared by every route on
    /// the same model.
    verifies: Arc<Semaphore>,
}

impl Routing {
    /// Builds a backend for each route of `policy`: embedded routes must
    /// name a loaded model, upstream keys must be in the environment.
    pub fn new(
        policy: Policy,
        prices: Prices,
        engines: &BTreeMap<String, Arc<Engine>>,
        options: RoutingOptions,
    ) -> anyhow::Result<Self> {
        let shared = upstream_client(None)?;
        let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
        for (i, route) in policy.routes.iter().enumerate() {
            let backend: Arc<dyn Backend> = match (route.backend, route.upstream_urls().as_slice()) {
                (BackendKind::Embedded, _) => match engines.get(&crate::ops::models::model_id(&route.model)) {
                    Some(engine) => Arc::new(Embedded::new(engine.clone())),
                    None => anyhow::bail!(
                        "policy {}: `routes[{i}].model` = `{}` is not loaded; serve it with --model (loaded: {})",
                        policy.id,
                        route.model,
                        engines.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                },
                (BackendKind::Upstream, urls @ [_, ..]) => {
                    let client = match &route.ca_file {
                        None => shared.clone(),
                        Some(path) => std::fs::read(path)
                            .map_err(anyhow::Error::from)
                            .and_then(|pem| upstream_client(Some(&pem)))
                            .map_err(|e| {
                                anyhow::anyhow!("policy {}: `routes[{i}].ca_file` {}: {e}", policy.id, path.display())
                            })?,
                    };
                    match urls {
                        [url] => Arc::new(Upstream::new(route, url, client)?),
                        urls => Arc::new(Pool::new(route, urls, &client)?),
                    }
                }
                (BackendKind::Upstream, []) => {
                    anyhow::bail!("policy {}: `routes[{i}].url` is missing; an upstream route needs one", policy.id)
                }
            };
            backends.insert(route.name.clone(), backend);
        }
        Self::with_backends(policy, prices, backends, options)?.with_classifier(engines)
    }

    /// Finds the models of the policy's `[safety]` classifier (and of its
    /// second stage) among `engines`; a policy without one needs none.
    pub fn with_classifier(mut self, engines: &BTreeMap<String, Arc<Engine>>) -> anyhow::Result<Self> {
        let Some(safety) = self.policy.safety.clone() else { return Ok(self) };
        let stage = |key: &str, model: &str, dim: usize| -> anyhow::Result<safety::Stage> {
            let Some(engine) = engines.get(&crate::ops::models::model_id(model)) else {
                anyhow::bail!(
                    "policy {}: `{key}.model` = `{model}` is not loaded; serve it with --model (loaded: {})",
                    self.policy.id,
                    engines.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            anyhow::ensure!(
                engine.n_embd() == dim,
                "policy {}: the `{key}` head reads {dim}-float embeddings but `{model}` makes {}; calibrate it on this model",
                self.policy.id,
                engine.n_embd()
            );
            Ok((engine.clone(), Arc::new(Semaphore::new(1))))
        };
        let first = stage("safety", &safety.file.model, safety.head.dim())?;
        self.second_classifier =
            safety.second.as_ref().map(|s| stage("safety.second", &s.file.model, s.head.dim())).transpose()?.map(
                |(engine, own)| {
                    let permit = safety::held_permit(&engine, [&first]).unwrap_or(own);
                    (engine, permit)
                },
            );
        self.classifier = Some(first);
        Ok(self)
    }

    /// Serves `policy` with the given backend for each route (by name):
    /// how tests put scripted backends behind a real policy.
    pub fn with_backends(
        policy: Policy,
        prices: Prices,
        mut backends: HashMap<String, Arc<dyn Backend>>,
        options: RoutingOptions,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(options.max_verifies > 0, "max-verifies must be at least 1");
        let now = Instant::now();
        let mut verifies: HashMap<&str, Arc<Semaphore>> = HashMap::new();
        let mut routes = HashMap::new();
        for route in &policy.routes {
            let backend = backends
                .remove(&route.name)
                .ok_or_else(|| anyhow::anyhow!("policy {}: route `{}` has no backend", policy.id, route.name))?;
            let slots =
                verifies.entry(&route.model).or_insert_with(|| Arc::new(Semaphore::new(options.max_verifies))).clone();
            routes.insert(
                route.name.clone(),
                RouteState {
                    config: route.clone(),
                    backend,
                    health: Arc::new(Health::new(route, now)),
                    verifies: slots,
                },
            );
        }
        Ok(Self { policy, prices, options, routes, faults: Arc::default(), classifier: None, second_classifier: None })
    }

    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    pub fn options(&self) -> RoutingOptions {
        self.options
    }

    /// Shares the registry of injected faults of the server (it outlives
    /// any one policy version).
    pub fn set_faults(&mut self, faults: Arc<Faults>) {
        self.faults = faults;
    }

    /// Takes over what `old` learnt of the routes both versions declare
    /// unchanged: their breakers and retry budgets (a new version must not
    /// send traffic to a route the old one knows is down), and the verify
    /// slots of their models (a swap must not double a model's verify
    /// contexts while the old version's requests finish).
    pub fn inherit(&mut self, old: &Routing) {
        for (name, route) in &mut self.routes {
            if let Some(before) = old.routes.get(name).filter(|b| b.config == route.config) {
                route.health = before.health.clone();
            }
            if let Some(before) = old.routes.values().find(|b| b.config.model == route.config.model) {
                route.verifies = before.verifies.clone();
            }
        }
        let held = [&old.classifier, &old.second_classifier];
        for (engine, permit) in [&mut self.classifier, &mut self.second_classifier].into_iter().flatten() {
            if let Some(before) = safety::held_permit(engine, held.iter().copied().flatten()) {
                *permit = before;
            }
        }
    }

    /// Each route's name and whether its breaker is open now.
    pub fn breakers(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        self.routes.iter().map(|(name, r)| (name.clone(), r.health.is_open()))
    }

    fn route(&self, name: &str) -> Result<&RouteState, ApiError> {
        self.routes.get(name).ok_or_else(|| {
            ApiError::internal(format!("policy {} names route `{name}`, which it does not declare", self.policy.id))
        })
    }

    /// Decides, answers, and records the decision: the record is committed
    /// before the answer is returned (so before its first byte is sent),
    /// hence an answered request always has its record.
    pub async fn serve(
        self: &Arc<Self>,
        state: &AppState,
        caller: &Caller,
        req: ChatRequest,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let req = crate::protect::sanitised(req, &self.policy)?;
        let decision = self.decide(&req, headers, caller).await?;
        // Debug, not info: every decision is recorded in the store anyway,
        // and a log line per request is a real share of a proxy's CPU.
        tracing::debug!(request_id = %req.id, policy = %decision.policy_id, rule = ?decision.rule_id, reason = %decision.reason, "routing decision");
        let shadow = decision.shadow.as_ref().and_then(|route| {
            let config = &self.routes.get(route)?.config;
            let sent = crate::protect::for_route(&req, &decision, &self.policy, config);
            Some(self.clone().mirror(state, &sent.req, route, decision.max_ttft_ms))
        });
        let mut run = execute::Run::new(&decision.reason, caller.tenant());
        let result = self.execute(state, &req, &decision, &mut run).await;
        let ending = record::Ending::of(&req.id, caller.tenant(), &result);
        let span = req.trace.child("record");
        self.record(state, &req, &decision, &run, &ending).await;
        let tenant_days = match caller {
            Caller::Key(k) => k.tenant_protect.as_ref().and_then(|p| p.payload_retention_days),
            Caller::Open => None,
        };
        crate::protect::keep_payload(state, &self.policy, &req, &decision, &ending.route, tenant_days);
        span.end();
        let resp = result.map_or_else(IntoResponse::into_response, |(resp, _)| resp);
        let resp = self.after_sent(resp, &ending, shadow);
        Ok(self.label(resp, &ending, &run.reason))
    }

    fn label(&self, mut resp: Response, ending: &record::Ending, reason: &str) -> Response {
        let h = resp.headers_mut();
        for (name, value) in [
            (ROUTE_HEADER, ending.route.as_str()),
            (LABEL_HEADER, ending.label.as_str()),
            (POLICY_HEADER, self.policy.id.as_str()),
            (REASON_HEADER, reason),
        ] {
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
