//! Faults injected into routes on purpose, for game days: an operator
//! makes a named route fail, time out, stall its first token, cut its
//! streams, slow down or die, and watches the fallback take over.
//!
//! A fault sits between the routing and a route's backend
//! ([`Faults::generate`]), so it exercises everything above the backend
//! (breakers, retries, fallbacks, the stream's error events, the records)
//! exactly as a real outage would. Answers already under way see a fault
//! set after they began: every event of every answer checks it, so `die`
//! and `cut_stream` cut what is in flight too.
//!
//! Invariants: no fault is set unless an operator sets one (the registry
//! starts empty and nothing in the request path writes it); each fault
//! ends when cleared or at its `until`, whichever is first; setting and
//! clearing are written to the audit chain.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard_auth::Permission;
use switchyard_engine::Event;

use crate::audit::{self, Actor};
use crate::auth::Caller;
use crate::backend::{Backend, ChatRequest, Events, Generation, Limits};
use crate::error::ApiError;
use crate::AppState;

/// What a fault does to a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kind {
    /// Every new attempt fails at once with `status` (a 5xx).
    Error {
        #[serde(default = "internal_error")]
        status: u16,
    },
    /// New attempts send nothing until the route's TTFT limit gives up on them.
    Timeout,
    /// Each answer's first token (or first byte) comes `ms` late.
    StallFirstToken { ms: u64 },
    /// Answers end with an error after `after_tokens` tokens (stream
    /// chunks, from an upstream); a streamed one ends with an error event.
    CutStream { after_tokens: u32 },
    /// Each token (or chunk) comes `ms` later.
    Slow { ms: u64 },
    /// The route is gone: new attempts fail at once as unreachable, and
    /// answers under way end with an error at their next token.
    Die,
}

fn internal_error() -> u16 {
    500
}

/// A fault as set: on which route, until when, by whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Active {
    pub route: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub set_ms: i64,
    /// Unix ms it ends by itself; `None`: when cleared.
    pub until_ms: Option<i64>,
    pub by: String,
}

/// The body of `PUT /admin/faults/{route}`: a [`Kind`] and, beside it,
/// `for_s`, the seconds it lasts (absent: until cleared).
#[derive(Debug, Clone)]
pub struct Injection {
    pub kind: Kind,
    pub for_s: Option<f64>,
}

impl Injection {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let mut v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let for_s = match v.as_object_mut().and_then(|o| o.remove("for_s")) {
            None | Some(serde_json::Value::Null) => None,
            Some(s) => Some(s.as_f64().ok_or("`for_s` is a number of seconds")?),
        };
        let kind: Kind = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        // serde ignores unknown fields beside a unit variant's tag: what
        // the kind does not take back out is refused here, by name.
        let known = serde_json::to_value(&kind).map_err(|e| e.to_string())?;
        if let Some(extra) =
            v.as_object().into_iter().flatten().map(|(k, _)| k).find(|k| known.get(k.as_str()).is_none())
        {
            return Err(format!("unknown field `{extra}` for a `{}` fault", known["kind"].as_str().unwrap_or("?")));
        }
        Ok(Self { kind, for_s })
    }
}

/// The faults in force, by route. Read on every answer's every event, so
/// reads take no lock.
#[derive(Default)]
pub struct Faults {
    by_route: ArcSwap<HashMap<String, Active>>,
}

impl Faults {
    /// The fault on `route` now, if any.
    pub fn get(&self, route: &str) -> Option<Kind> {
        let all = self.by_route.load();
        if all.is_empty() {
            return None;
        }
        let f = all.get(route)?;
        f.until_ms.is_none_or(|until| switchyard_wire::unix_ms() < until).then(|| f.kind.clone())
    }

    /// Every fault set and not yet over.
    pub fn list(&self) -> Vec<Active> {
        let now = switchyard_wire::unix_ms();
        let mut all: Vec<Active> =
            self.by_route.load().values().filter(|f| f.until_ms.is_none_or(|u| now < u)).cloned().collect();
        all.sort_by(|a, b| a.route.cmp(&b.route));
        all
    }

    pub fn set(&self, fault: Active) {
        self.by_route.rcu(|all| {
            let mut all = HashMap::clone(all);
            all.insert(fault.route.clone(), fault.clone());
            all
        });
    }

    /// Clears `route`'s fault; whether there was one.
    pub fn clear(&self, route: &str) -> bool {
        let mut had = false;
        self.by_route.rcu(|all| {
            let mut all = HashMap::clone(all);
            had = all.remove(route).is_some();
            all
        });
        had
    }

    /// Starts `req` on `backend` as route `route` would under the fault
    /// in force, if any.
    pub async fn generate(
        self: &Arc<Self>,
        route: &str,
        backend: &dyn Backend,
        req: &ChatRequest,
        limits: Limits,
    ) -> Result<Generation, ApiError> {
        match self.get(route) {
            Some(Kind::Error { status }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Err(ApiError::bad_gateway(format!("route {route} failed with {status} (injected fault)"))
                    .with_status(status)
                    .with_code("injected_fault"));
            }
            Some(Kind::Die) => {
                return Err(ApiError::bad_gateway(format!("route {route} is unreachable (injected fault: die)"))
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .with_code("injected_fault"));
            }
            Some(Kind::Timeout) => {
                let wait = limits.ttft.or(limits.total).unwrap_or(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
                return Err(ApiError::timeout(format!(
                    "no first byte from route {route} within {} ms (injected fault: timeout)",
                    wait.as_millis()
                )));
            }
            _ => {}
        }
        Ok(match backend.generate(req, limits).await? {
            Generation::Tokens { fingerprint, events } => {
                Generation::Tokens { fingerprint, events: self.clone().watch(route.to_string(), events) }
            }
            Generation::Proxied(resp) => Generation::Proxied(self.clone().watch_body(route.to_string(), resp)),
        })
    }

    /// What a fault does to the next item of an answer, `n` items in.
    fn on_item(&self, route: &str, n: u32) -> Step {
        match self.get(route) {
            Some(Kind::Die) => Step::Cut(format!("route {route} died while answering (injected fault: die)")),
            Some(Kind::CutStream { after_tokens }) if n >= after_tokens => {
                Step::Cut(format!("route {route} cut the answer after {n} tokens (injected fault: cut_stream)"))
            }
            Some(Kind::StallFirstToken { ms }) if n == 0 => Step::Delay(Duration::from_millis(ms)),
            Some(Kind::Slow { ms }) => Step::Delay(Duration::from_millis(ms)),
            _ => Step::Pass,
        }
    }

    /// A model's events under the faults set now and later.
    fn watch(self: Arc<Self>, route: String, events: Events) -> Events {
        Box::pin(futures::stream::unfold(Some((events, 0u32)), move |st| {
            let (faults, route) = (self.clone(), route.clone());
            async move {
                let (mut events, n) = st?;
                match faults.on_item(&route, n) {
                    Step::Cut(why) => return Some((Event::Error(why), None)),
                    Step::Delay(d) => tokio::time::sleep(d).await,
                    Step::Pass => {}
                }
                let event = events.next().await?;
                // Nothing follows the answer's last event, not even a cut.
                let next = matches!(event, Event::Token(_)).then_some((events, n + 1));
                Some((event, next))
            }
        }))
    }

    /// An upstream's stream under the faults set now and later; a cut ends
    /// it with an error event. A whole (unstreamed) body has arrived by
    /// the time the answer is committed, so it passes as it is.
    fn watch_body(self: Arc<Self>, route: String, resp: Response) -> Response {
        let sse = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !sse {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let chunks = body.into_data_stream();
        let stream = futures::stream::unfold(Some((chunks, 0u32)), move |st| {
            let (faults, route) = (self.clone(), route.clone());
            async move {
                let (mut chunks, n) = st?;
                match faults.on_item(&route, n) {
                    Step::Cut(why) => {
                        let event = serde_json::json!({"error": ApiError::internal(why).body().error});
                        return Some((Ok(bytes::Bytes::from(format!("data: {event}\n\n"))), None));
                    }
                    Step::Delay(d) => tokio::time::sleep(d).await,
                    Step::Pass => {}
                }
                let chunk = chunks.next().await?.map_err(std::io::Error::other);
                Some((chunk, Some((chunks, n + 1))))
            }
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

/// The longest fault with a length: a week.
const MAX_FOR_S: f64 = 7.0 * 86_400.0;

enum Step {
    Pass,
    Delay(Duration),
    Cut(String),
}

fn registry(state: &AppState) -> Result<&Arc<Faults>, ApiError> {
    state.routing.as_ref().map(|live| live.faults()).ok_or_else(|| {
        ApiError::invalid(None, "this server routes no policy (started without --policy), so it has no routes to break")
            .with_status(StatusCode::CONFLICT)
            .with_code("no_policy")
    })
}

/// `GET /admin/faults`: the faults in force.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::InjectFaults, "read injected faults")?;
    Ok(Json(serde_json::json!({"faults": registry(&state)?.list()})).into_response())
}

/// `PUT /admin/faults/{route}`: sets a fault on a route the policy in
/// force declares, replacing any it had.
pub async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Permission::InjectFaults, "inject faults")?;
    let faults = registry(&state)?;
    let injection = Injection::parse(&body).map_err(|e| {
        ApiError::invalid(
            None,
            format!(
                "the fault is not valid: {e}; send {{\"kind\": \"error\"|\"timeout\"|\"stall_first_token\"|\"cut_stream\"|\"slow\"|\"die\", …, \"for_s\": SECONDS}}"
            ),
        )
    })?;
    check(&injection)?;
    let routing = state.routing().ok_or_else(|| ApiError::internal("no routing"))?;
    let now = switchyard_wire::unix_ms();
    let until_ms = injection.for_s.map(|s| now + (s * 1000.0) as i64);
    let shared = match route.strip_prefix('@') {
        Some(target) => Some(shared_state(&state, target, &injection.kind)?),
        None => None,
    };
    if shared.is_none() && routing.policy.route(&route).is_none() {
        let names: Vec<_> = routing.policy.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(ApiError::invalid(
            None,
            format!("policy {} has no route `{route}` (routes: {})", routing.policy.id, names.join(", ")),
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let actor: Actor = (&caller).into();
    let fault = Active {
        route: route.clone(),
        kind: injection.kind,
        set_ms: now,
        until_ms,
        by: actor.key_id.clone().unwrap_or_else(|| "open".into()),
    };
    let reason = format!(
        "fault {:?} set on route {route}{}",
        fault.kind,
        injection.for_s.map_or(String::new(), |s| format!(" for {s} s"))
    );
    if let Some(store) = &state.store {
        audit::changing(
            store,
            &actor,
            format!("fault:{route}"),
            "set",
            Some(audit::state_hash(&fault)),
            reason.clone(),
        )
        .await?;
    }
    tracing::warn!(route = %route, "{reason}");
    metrics::counter!("switchyard_faults_injected_total", "route" => route.clone()).increment(1);
    if let Some(target) = shared {
        outage(&state, target, until_ms.unwrap_or(i64::MAX));
    }
    faults.set(fault.clone());
    audit::done(&state, &caller, "faults.set", reason);
    Ok((StatusCode::OK, Json(fault)).into_response())
}

/// Shared state a fault can make unreachable.
#[derive(Clone, Copy)]
enum SharedState {
    /// Admissions fail as with Redis unreachable, and `redis-fail` decides.
    Redis,
    /// The recorder's writes fail.
    Database,
}

/// `@redis` or `@database`, checked before anything is recorded or changed.
fn shared_state(state: &AppState, target: &str, kind: &Kind) -> Result<SharedState, ApiError> {
    if *kind != Kind::Die {
        return Err(ApiError::invalid(
            Some("kind".into()),
            format!("`@{target}` takes `die` (unreachable), not {kind:?}"),
        ));
    }
    let not_here = |what: &str| {
        ApiError::invalid(None, format!("this server has no {what} to make unreachable"))
            .with_status(StatusCode::CONFLICT)
    };
    match target {
        "redis" if state.limiter.is_shared() => Ok(SharedState::Redis),
        "redis" => Err(not_here("Redis (its limits are not shared: start it with `redis`)")),
        "database" if state.store.is_some() => Ok(SharedState::Database),
        "database" => Err(not_here("database")),
        other => Err(ApiError::invalid(
            None,
            format!("`@{other}`: the shared state a fault can reach is `@redis` or `@database`"),
        )
        .with_status(StatusCode::NOT_FOUND)),
    }
}

/// Makes `target` unreachable until `until_ms` (0: reachable again).
fn outage(state: &AppState, target: SharedState, until_ms: i64) {
    match target {
        SharedState::Redis => {
            state.limiter.inject_redis_outage(until_ms);
        }
        SharedState::Database => {
            if let Some(store) = &state.store {
                store.inject_outage(until_ms);
            }
        }
    }
}

fn check(injection: &Injection) -> Result<(), ApiError> {
    if let Kind::Error { status } = injection.kind {
        if !(500..=599).contains(&status) {
            return Err(ApiError::invalid(
                Some("status".into()),
                format!("an injected error is a 5xx status, not {status}"),
            ));
        }
    }
    match injection.for_s {
        Some(s) if !(s.is_finite() && s > 0.0 && s <= MAX_FOR_S) => Err(ApiError::invalid(
            Some("for_s".into()),
            format!("for_s is a number of seconds above 0, at most {MAX_FOR_S} (a week)"),
        )),
        _ => Ok(()),
    }
}

/// `DELETE /admin/faults/{route}`: ends `route`'s fault.
pub async fn clear(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(route): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::InjectFaults, "clear injected faults")?;
    let faults = registry(&state)?;
    if faults.get(&route).is_none() {
        return Err(ApiError::invalid(None, format!("route `{route}` has no fault in force"))
            .with_status(StatusCode::NOT_FOUND));
    }
    let actor: Actor = (&caller).into();
    let reason = format!("fault cleared on route {route}");
    if let Some(store) = &state.store {
        audit::changing(store, &actor, format!("fault:{route}"), "clear", None, reason.clone()).await?;
    }
    tracing::warn!(route = %route, "{reason}");
    if let Some(target) = route.strip_prefix('@') {
        outage(&state, shared_state(&state, target, &Kind::Die)?, 0);
    }
    faults.clear(&route);
    audit::done(&state, &caller, "faults.clear", reason);
    Ok(StatusCode::NO_CONTENT.into_response())
}
