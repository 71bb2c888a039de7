//! The routing policy as a live, versioned object: applied, rolled back
//! and followed across replicas with no restart.
//!
//! Invariants:
//! - a request takes the [`Routing`] in force when it arrives and keeps it
//!   to its end (an `Arc`), so in-flight requests finish under the version
//!   they started with, and their records name it (`policy_id`);
//! - a change is written to the audit chain, then to the `versions` table,
//!   then swapped in: a change the store cannot record is not made;
//! - the newest `versions` row is the version in force for every replica:
//!   each polls it ([`follow`]) and swaps to it, so an apply on one reaches
//!   all within [`FOLLOW_EVERY`];
//! - one apply at a time per process ([`Live::applying`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use switchyard_auth::Permission;
use switchyard_router::{Policy, Prices};
use switchyard_store::versions::{Version, POLICY};
use switchyard_store::Store;

use crate::audit::{self, Actor};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::ops::faults::Faults;
use crate::routing::{Routing, RoutingOptions};
use crate::AppState;

/// How often a replica checks the store for a version applied elsewhere.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The routing in force, swapped whole.
pub struct Live {
    current: ArcSwap<Routing>,
    /// Faults injected into routes; they outlive policy versions.
    faults: Arc<Faults>,
    prices: Prices,
    options: RoutingOptions,
    /// One change at a time: applies, rollbacks, rollout steps.
    pub(crate) applying: tokio::sync::Mutex<()>,
    /// A canary rollout in progress on this replica ([`super::rollout`]).
    rollout: ArcSwapOption<super::rollout::Active>,
}

/// Where a version came from, as the `versions` table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The file given to `serve`.
    Start,
    Apply,
    Rollback,
    /// A canary rollout's candidate, promoted.
    Rollout,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Start => "start",
            Source::Apply => "apply",
            Source::Rollback => "rollback",
            Source::Rollout => "rollout",
        }
    }
}

/// What an apply did.
#[derive(Debug, serde::Serialize)]
pub struct Applied {
    pub previous: String,
    pub current: String,
    pub seq: i64,
    /// Routes added, removed or changed, by name.
    pub changed_routes: Vec<String>,
}

impl Live {
    pub fn new(mut routing: Routing, prices: Prices, options: RoutingOptions) -> Self {
        let faults = Arc::new(Faults::default());
        routing.set_faults(faults.clone());
        Self {
            current: ArcSwap::from_pointee(routing),
            faults,
            prices,
            options,
            applying: tokio::sync::Mutex::new(()),
            rollout: ArcSwapOption::empty(),
        }
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The rollout in progress, if any.
    pub fn rollout(&self) -> Option<Arc<super::rollout::Active>> {
        self.rollout.load_full()
    }

    pub(crate) fn set_rollout(&self, active: Option<Arc<super::rollout::Active>>) {
        self.rollout.store(active);
    }

    /// The routing in force now; hold it for the whole request.
    pub fn current(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// Builds a routing for `policy` on this server's engines, loading
    /// the models it names that are not loaded yet (each load recorded in
    /// the audit chain), with what the current one learnt of unchanged
    /// routes.
    pub(crate) async fn build(&self, state: &AppState, policy: Policy, actor: &Actor) -> anyhow::Result<Routing> {
        for (id, path) in state.models.ensure(&policy).await? {
            if let (Some(store), Some(engine)) = (&state.store, state.models.snapshot().get(&id)) {
                let reason = format!("model {id} loaded from {} for policy {}", path.display(), policy.id);
                let after = Some(crate::model_state(&id, engine));
                audit::changing(store, actor, format!("model:{id}"), "load", after, reason)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            }
        }
        let mut routing = Routing::new(policy, self.prices.clone(), &state.models.snapshot(), self.options)?;
        routing.inherit(&self.current());
        routing.set_faults(self.faults.clone());
        Ok(routing)
    }

    /// Puts `routing` in force, then retires the models it no longer
    /// uses (each unloads when its last request ends).
    async fn swap(&self, state: &AppState, routing: Routing, actor: &Actor) -> Arc<Routing> {
        let new = Arc::new(routing);
        let old = self.current.swap(new.clone());
        metrics::counter!("switchyard_policy_swaps_total").increment(1);
        tracing::info!(from = %old.policy.id, to = %new.policy.id, "policy swapped; requests in flight finish under the old one");
        for id in state.models.retire_unused(&new.policy) {
            if let Some(store) = &state.store {
                let reason = format!("model {id} unused by policy {}: unloads when its requests end", new.policy.id);
                if let Err(e) = audit::changing(store, actor, format!("model:{id}"), "unload", None, reason).await {
                    tracing::error!(model = %id, "the audit chain did not record the unload: {}", e.message);
                }
            }
        }
        old
    }

    /// Validates `text`, records it (audit chain, then `versions`) and
    /// swaps it in. Errors name what is wrong with the policy.
    pub async fn apply(
        &self,
        state: &AppState,
        store: &Store,
        text: String,
        source: Source,
        actor: &Actor,
    ) -> Result<Applied, ApiError> {
        let _one = self.applying.lock().await;
        self.apply_locked(state, store, text, source, actor).await
    }

    /// [`Live::apply`] for a caller that holds [`Live::applying`]. An apply
    /// or rollback by hand while a rollout runs is refused here, under the
    /// lock, so none can slip in between the check and the swap.
    pub(crate) async fn apply_locked(
        &self,
        state: &AppState,
        store: &Store,
        text: String,
        source: Source,
        actor: &Actor,
    ) -> Result<Applied, ApiError> {
        if matches!(source, Source::Apply | Source::Rollback) {
            no_rollout(self)?;
        }
        let policy = Policy::from_toml(&text).map_err(|e| invalid_policy(e.to_string()))?;
        let routing = match self.build(state, policy, actor).await {
            Ok(routing) => routing,
            Err(e) => {
                // Models loaded for a version that did not go in force.
                if self.rollout().is_none() {
                    state.models.retire_unused(&self.current().policy);
                }
                return Err(invalid_policy(format!("{e:#}")));
            }
        };
        let before = self.current();
        let p = &routing.policy;
        let reason = format!("policy {} {} (was {})", p.id, applied_how(source), before.policy.id);
        audit::changing(store, actor, POLICY.into(), source.as_str(), Some(p.sha256.clone()), reason.clone()).await?;
        let version = Version {
            seq: 0,
            object: POLICY.into(),
            version_id: p.id.clone(),
            sha256: p.sha256.clone(),
            body: text,
            source: source.as_str().into(),
            actor: actor.key_id.clone().unwrap_or_else(|| "open".into()),
            applied_ms: switchyard_wire::unix_ms(),
            reason,
        };
        let seq = store.put_version(&version).await.map_err(|e| {
            ApiError::internal(format!("the store could not record the new version, so it was not applied: {e}"))
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        })?;
        let changed_routes = changed_routes(&before.policy, &routing.policy);
        let old = self.swap(state, routing, actor).await;
        Ok(Applied { previous: old.policy.id.clone(), current: self.current().policy.id.clone(), seq, changed_routes })
    }

    /// At start, with the policy file given to `serve` in force: when that
    /// file is the one the last start used and an operator has applied
    /// another version since, that version is served (a restart keeps what
    /// was applied); otherwise the file is the version in force, for every
    /// replica. Returns the policy id served.
    pub async fn at_start(&self, state: &AppState, store: &Store) -> anyhow::Result<String> {
        let file = self.current().policy.id.clone();
        let server = Actor::named(format!("server:{}", state.node));
        let current = store.current_version(POLICY).await?;
        let last_start = store.last_version_from(POLICY, Source::Start.as_str()).await?;
        let same_file = last_start.as_ref().is_some_and(|v| v.version_id == file);
        match current {
            Some(v) if v.version_id == file => {}
            Some(v) if same_file => match self.build_text(state, &v.body, &server).await {
                Ok(routing) => {
                    tracing::info!(policy = %v.version_id, applied_ms = v.applied_ms, file = %file,
                        "serving the policy applied since the last start (the --policy file is unchanged); `switchyard policy apply` changes it");
                    self.swap(state, routing, &server).await;
                }
                Err(e) => {
                    tracing::warn!(policy = %v.version_id, "the policy in force in the store cannot be served here ({e:#}); serving the --policy file {file} until it can")
                }
            },
            _ => {
                let p = &self.current().policy;
                let version = Version {
                    seq: 0,
                    object: POLICY.into(),
                    version_id: p.id.clone(),
                    sha256: p.sha256.clone(),
                    body: p.text().to_string(),
                    source: Source::Start.as_str().into(),
                    actor: format!("server:{}", state.node),
                    applied_ms: switchyard_wire::unix_ms(),
                    reason: format!("policy {} given to serve", p.id),
                };
                store.put_version(&version).await?;
            }
        }
        Ok(self.current().policy.id.clone())
    }
}

impl Live {
    async fn build_text(&self, state: &AppState, text: &str, actor: &Actor) -> anyhow::Result<Routing> {
        self.build(state, Policy::from_toml(text)?, actor).await
    }
}

fn applied_how(source: Source) -> &'static str {
    match source {
        Source::Start => "loaded at start",
        Source::Apply => "applied",
        Source::Rollback => "restored by rollback",
        Source::Rollout => "promoted by its rollout",
    }
}

fn invalid_policy(message: String) -> ApiError {
    ApiError::invalid(None, format!("policy not applied: {message}")).with_code("invalid_policy")
}

fn changed_routes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut names: Vec<String> = old
        .routes
        .iter()
        .filter(|r| new.route(&r.name) != Some(*r))
        .chain(new.routes.iter().filter(|r| old.route(&r.name).is_none()))
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Swaps to the version in force in the store whenever another replica
/// (or a command run against the same database) changes it. A version
/// this replica cannot build (a model it does not run) is logged once and
/// this replica keeps its own until the next change.
pub fn follow(state: Arc<AppState>, every: Duration) {
    let (Some(live), Some(store)) = (state.routing.clone(), state.store.clone()) else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refused: Option<String> = None;
        let server = Actor::named(format!("server:{}", state.node));
        loop {
            tick.tick().await;
            let Ok(Some(v)) = store.current_version(POLICY).await else { continue };
            if v.version_id == live.current().policy.id || refused.as_deref() == Some(v.version_id.as_str()) {
                continue;
            }
            let _one = live.applying.lock().await;
            // An apply on this replica may have put it in force meanwhile.
            if v.version_id == live.current().policy.id {
                continue;
            }
            match live.build_text(&state, &v.body, &server).await {
                Ok(routing) => {
                    tracing::info!(policy = %v.version_id, by = %v.actor, "following the policy applied elsewhere");
                    let why = format!("policy {} was applied on another replica; its incumbent is gone", v.version_id);
                    super::rollout::abandon(&state, &why).await;
                    live.swap(&state, routing, &server).await;
                    refused = None;
                }
                Err(e) => {
                    metrics::counter!("switchyard_policy_follow_failures_total").increment(1);
                    tracing::error!(policy = %v.version_id, "cannot serve the policy now in force ({e:#}); keeping {}", live.current().policy.id);
                    refused = Some(v.version_id);
                }
            }
        }
    });
}

/// The live policy and the store, or the 409 of a server without a policy.
pub(crate) fn parts(state: &AppState) -> Result<(&Arc<Live>, &Store), ApiError> {
    let live = state.routing.as_ref().ok_or_else(|| {
        ApiError::invalid(
            None,
            "this server routes no policy (started without --policy); start it with one to change, roll out or break routes",
        )
        .with_status(StatusCode::CONFLICT)
        .with_code("no_policy")
    })?;
    let store = state.store.as_ref().ok_or_else(|| ApiError::internal("this server has no store"))?;
    Ok((live, store))
}

/// A policy changed by hand while a rollout runs would change its
/// incumbent under it: refused, naming the rollout.
fn no_rollout(live: &Live) -> Result<(), ApiError> {
    match live.rollout() {
        Some(r) => Err(ApiError::invalid(
            None,
            format!("rollout {} is in progress; promote or abort it first (switchyard rollout promote|abort)", r.id),
        )
        .with_status(StatusCode::CONFLICT)
        .with_code("rollout_conflict")),
        None => Ok(()),
    }
}

/// `GET /admin/policy`: the version this replica serves, the one in force
/// in the store, and the history (newest first).
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ReadAllDecisions, "read the policy history")?;
    let (live, store) = parts(&state)?;
    let history = store.versions(POLICY, 50, false).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let serving = live.current();
    Ok(Json(json!({
        "serving": serving.policy.id,
        "sha256": serving.policy.sha256,
        "in_force": history.first().map(|v| v.version_id.clone()),
        "history": history,
    }))
    .into_response())
}

/// `PUT /admin/policy`: the body is a policy file (TOML).
pub async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    text: String,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "apply a policy")?;
    let (live, store) = parts(&state)?;
    let applied = live.apply(&state, store, text, Source::Apply, &(&caller).into()).await?;
    audit::done(&state, &caller, "policy.apply", format!("{} -> {}", applied.previous, applied.current));
    Ok(Json(applied).into_response())
}

/// `POST /admin/policy/rollback`: the version in force before this one.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Permission::ManagePolicy, "roll back the policy")?;
    let (live, store) = parts(&state)?;
    let previous =
        store.previous_version(POLICY).await.map_err(|e| ApiError::internal(e.to_string()))?.ok_or_else(|| {
            ApiError::invalid(None, "there is no earlier policy version to roll back to")
                .with_status(StatusCode::CONFLICT)
                .with_code("nothing_to_roll_back")
        })?;
    let applied = live.apply(&state, store, previous.body, Source::Rollback, &(&caller).into()).await?;
    audit::done(&state, &caller, "policy.rollback", format!("{} -> {}", applied.previous, applied.current));
    Ok(Json(applied).into_response())
}
