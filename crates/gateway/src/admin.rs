//! `/admin`: routing decisions, the human handoff queue, shadow
//! comparisons, per-request telemetry, API keys, tenants, the audit trail. Every endpoint checks the caller's role
//! ([`Caller`], set by `auth::authenticate`): no key → 401, a role without
//! the permission → 403. A tenant reads its own decisions only; another
//! tenant's look absent (404), so ids cannot be probed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use switchyard_store::{Limits, ResolveError, Store, TenantProtect};
use switchyard_wire::HandoffStatus;

use crate::audit;
use crate::auth::{check_limits, issue, Caller, KeySpec};
use crate::error::ApiError;
use crate::observe::export;
use crate::AppState;
use switchyard_auth::{Permission, Role};

/// The store, once every record queued so far is written: a client that
/// just got an answer can read its record.
pub(crate) async fn store(state: &AppState) -> Result<&Store, ApiError> {
    if let Some(recorder) = &state.recorder {
        recorder.flush().await;
    }
    state
        .store
        .as_ref()
        .ok_or_else(|| ApiError::not_found("/admin (this server was started without a store, so it keeps no records)"))
}

fn missing(param: &str, what: String) -> ApiError {
    ApiError::invalid(Some(param.into()), what).with_status(StatusCode::NOT_FOUND)
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("reading the store: {e}"))
}

fn reply<T: serde::Serialize>(r: Result<T, ApiError>) -> Response {
    r.map_or_else(IntoResponse::into_response, |v| Json(v).into_response())
}

/// The recorded routing decision for a request id (from its
/// `x-switchyard-request-id` header).
pub async fn decision(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(request_id): Path<String>,
) -> Response {
    reply(
        async {
            // Every role reads all decisions but a tenant, which reads its own.
            let all = caller.may(Permission::ReadAllDecisions);
            store(&state)
                .await?
                .decision(&request_id)
                .await
                .map_err(store_error)?
                .filter(|d| all || d.tenant.as_deref() == caller.tenant())
                .ok_or_else(|| missing("request_id", format!("no decision recorded for {request_id}")))
        }
        .await,
    )
}

/// The shadow comparison recorded for a request id, if it was mirrored.
pub async fn shadow(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(request_id): Path<String>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ReadAllDecisions, "read shadow comparisons")?;
            store(&state)
                .await?
                .shadow(&request_id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| missing("request_id", format!("request {request_id} was not mirrored")))
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct ListQuery {
    /// `open` or `resolved`; all when absent.
    status: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

/// `GET /admin/handoffs?status=open&limit=100`, oldest first.
pub async fn handoffs(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply(
        async {
            let only = handoff_scope(&caller)?;
            let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
            if let Some(s) = q.status.as_deref().filter(|s| s.parse::<HandoffStatus>().is_err()) {
                return Err(ApiError::invalid(
                    Some("status".into()),
                    format!("status must be `open` or `resolved`, not `{s}`"),
                ));
            }
            let data = store(&state).await?.handoffs(q.status.as_deref(), only, q.limit.min(1000)).await;
            let data = data.map_err(store_error)?;
            Ok(json!({"object": "list", "data": data}))
        }
        .await,
    )
}

pub async fn handoff(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    reply(
        async {
            let only = handoff_scope(&caller)?;
            store(&state)
                .await?
                .handoff(&id)
                .await
                .map_err(store_error)?
                .filter(|h| only.is_none() || h.tenant.as_deref() == only)
                .ok_or_else(|| missing("id", format!("no handoff {id}")))
        }
        .await,
    )
}

/// Whose handoffs the caller may read: `None` for all (admin, operator, an
/// open server), its own tenant's for a tenant key; an auditor none, since
/// handoffs hold conversations.
fn handoff_scope(caller: &Caller) -> Result<Option<&str>, ApiError> {
    match caller {
        _ if caller.may(Permission::ReadAllHandoffs) => Ok(None),
        Caller::Key(k) if k.role == Role::Tenant => Ok(Some(&k.tenant)),
        _ => caller.require(Permission::ReadAllHandoffs, "read the handoff queue").map(|()| None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// What the human answered (or did).
    answer: String,
    reviewer: String,
}

/// `POST /admin/handoffs/{id}` with `{"answer", "reviewer"}`: resolves an
/// open handoff once; a second resolution is a 409.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Resolution>, JsonRejection>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ResolveHandoffs, "resolve handoffs")?;
            let Json(r) = body.map_err(|e| {
                ApiError::invalid(
                    None,
                    format!("expected {{\"answer\": \"...\", \"reviewer\": \"...\"}}: {}", e.body_text()),
                )
            })?;
            if r.answer.trim().is_empty() || r.reviewer.trim().is_empty() {
                return Err(ApiError::invalid(Some("answer".into()), "answer and reviewer must not be empty"));
            }
            match store(&state).await?.resolve_handoff(&id, &r.answer, &r.reviewer, switchyard_wire::unix_ms()).await {
                Ok(h) => {
                    tracing::info!(handoff = %id, reviewer = %r.reviewer, "handoff resolved");
                    Ok(h)
                }
                Err(ResolveError::NotFound(_)) => Err(missing("id", format!("no handoff {id}"))),
                Err(e @ ResolveError::AlreadyResolved(_)) => Err(ApiError::invalid(Some("id".into()), e.to_string())
                    .with_status(StatusCode::CONFLICT)
                    .with_code("already_resolved")),
                Err(ResolveError::Store(e)) => Err(store_error(e)),
            }
        }
        .await,
    )
}

/// `GET /admin/keys`: every key, revoked ones too, never a secret or hash.
pub async fn keys(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    reply(
        async {
            caller.require(Permission::ManageKeys, "manage API keys")?;
            let data = store(&state).await?.keys().await.map_err(store_error)?;
            Ok(json!({"object": "list", "data": data}))
        }
        .await,
    )
}

/// `POST /admin/keys` with a [`KeySpec`]: the new key, shown this once.
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<KeySpec>, JsonRejection>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ManageKeys, "manage API keys")?;
            let Json(spec) = body.map_err(|e| {
                ApiError::invalid(
                    None,
                    format!("expected {{\"tenant\": \"...\", \"role\": \"...\"}}: {}", e.body_text()),
                )
            })?;
            let (record, key) = issue(&spec, switchyard_wire::unix_ms())?;
            let store = store(&state).await?;
            let reason = format!("key for tenant {} with role {}", record.tenant, record.role);
            let after = Some(audit::state_hash(&record));
            audit::changing(store, &(&caller).into(), format!("key:{}", record.id), "create", after, reason).await?;
            store.create_key(&record).await.map_err(store_error)?;
            reload_keys(&state).await?;
            tracing::info!(key_id = %record.id, tenant = %record.tenant, role = %record.role, "API key created");
            let what = format!("key {} for tenant {} with role {}", record.id, record.tenant, record.role);
            audit::done(&state, &caller, "keys.create", what);
            let mut shown = serde_json::to_value(&record).map_err(store_error)?;
            shown["key"] = json!(key);
            Ok(shown)
        }
        .await,
    )
}

/// `DELETE /admin/keys/{id}`: revokes the key on this server at once, and
/// on others sharing the store within a second.
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ManageKeys, "manage API keys")?;
            let store = store(&state).await?;
            if !store.keys().await.map_err(store_error)?.iter().any(|k| k.id == id && k.revoked_ms.is_none()) {
                return Err(missing("id", format!("no active key {id}")));
            }
            let after = Some(audit::state_hash(&json!({"id": id, "revoked": true})));
            audit::changing(store, &(&caller).into(), format!("key:{id}"), "revoke", after, "revoked".into()).await?;
            if !store.revoke_key(&id, switchyard_wire::unix_ms()).await.map_err(store_error)? {
                return Err(missing("id", format!("no active key {id}")));
            }
            reload_keys(&state).await?;
            tracing::info!(key_id = %id, "API key revoked");
            audit::done(&state, &caller, "keys.revoke", format!("key {id}"));
            Ok(json!({"id": id, "revoked": true}))
        }
        .await,
    )
}

async fn reload_keys(state: &AppState) -> Result<(), ApiError> {
    match &state.keys {
        Some(keys) => keys.reload().await.map_err(store_error),
        None => Ok(()),
    }
}

/// `GET /admin/tenants`: every tenant with limits set.
pub async fn tenants(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    reply(
        async {
            caller.require(Permission::ManageTenants, "manage tenants")?;
            let data = store(&state).await?.tenants().await.map_err(store_error)?;
            Ok(json!({"object": "list", "data": data}))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default)]
    limits: Limits,
}

/// `PUT /admin/tenants/{name}` with `{"limits": {...}}`: sets the limits
/// all the tenant's keys share (replacing any before), on this server at
/// once and on others sharing the store within a second.
pub async fn put_tenant(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<TenantSpec>, JsonRejection>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ManageTenants, "manage tenants")?;
            let Json(spec) = body.map_err(|e| {
                ApiError::invalid(None, format!("expected {{\"limits\": {{...}}}}: {}", e.body_text()))
                    .with_code("invalid_value")
            })?;
            check_limits(&spec.limits)?;
            let store = store(&state).await?;
            let after = Some(audit::state_hash(&spec.limits));
            audit::changing(store, &(&caller).into(), format!("tenant:{name}"), "put", after, "limits set".into())
                .await?;
            let tenant =
                store.put_tenant(&name, &spec.limits, switchyard_wire::unix_ms()).await.map_err(store_error)?;
            reload_keys(&state).await?;
            let limits = serde_json::to_string(&tenant.limits).map_err(store_error)?;
            tracing::info!(tenant = %name, %limits, "tenant limits set");
            audit::done(&state, &caller, "tenants.put", format!("tenant {name} limits {limits}"));
            Ok(tenant)
        }
        .await,
    )
}

/// `PUT /admin/tenants/{name}/protect` with a tenant's own data
/// protection (`{"custom": [...], "payload_retention_days": N}`), replacing
/// any before; in force on every replica within a second.
pub async fn put_tenant_protect(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<TenantProtect>, JsonRejection>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ManageTenants, "manage tenants")?;
            let Json(protect) = body.map_err(|e| {
                ApiError::invalid(
                    None,
                    format!(
                        "expected {{\"custom\": [{{\"name\", \"class\", \"patterns\", \"keywords\"}}], \"payload_retention_days\": N}}: {}",
                        e.body_text()
                    ),
                )
                .with_code("invalid_value")
            })?;
            crate::auth::TenantProtection::check(&protect).map_err(|e| e.with_code("invalid_value"))?;
            let store = store(&state).await?;
            let after = Some(audit::state_hash(&protect));
            let reason = format!("{} lists, payload retention {:?} days", protect.custom.len(), protect.payload_retention_days);
            audit::changing(store, &(&caller).into(), format!("tenant:{name}:protect"), "put", after, reason).await?;
            let tenant =
                store.put_tenant_protect(&name, &protect, switchyard_wire::unix_ms()).await.map_err(store_error)?;
            reload_keys(&state).await?;
            tracing::info!(tenant = %name, lists = protect.custom.len(), "tenant data protection set");
            audit::done(&state, &caller, "tenants.protect", format!("tenant {name}"));
            Ok(tenant)
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct AuditQuery {
    /// Lines after this id (for paging).
    #[serde(default)]
    after: i64,
    tenant: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
}

/// `GET /admin/audit?after=0&tenant=acme&limit=100`, oldest first.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply(
        async {
            caller.require(Permission::ReadAudit, "read the audit trail")?;
            let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
            let data = store(&state).await?.audit(q.after, q.tenant.as_deref(), q.limit.min(1000)).await;
            let dropped = state.recorder.as_ref().map_or(0, |r| r.dropped().audit.load(Ordering::Relaxed));
            Ok(json!({"object": "list", "data": data.map_err(store_error)?, "dropped_since_start": dropped}))
        }
        .await,
    )
}

/// Written out, not a flattened `TelemetryFilter`: query strings are text,
/// and serde's flatten would not read a number out of one.
#[derive(Deserialize)]
pub struct TelemetryQuery {
    #[serde(default)]
    since_ms: i64,
    until_ms: Option<i64>,
    route: Option<String>,
    tenant: Option<String>,
    label: Option<String>,
    status: Option<u16>,
    #[serde(default = "default_limit")]
    limit: u32,
    /// `newest`: the newest `limit` records, newest first.
    order: Option<String>,
    /// `json` (default: a list object), `jsonl` or `csv`.
    format: Option<String>,
}

/// `GET /admin/telemetry?since_ms=&until_ms=&route=&tenant=&label=&status=&limit=&order=&format=`:
/// one record per request, oldest first (or newest first). A tenant reads
/// its own only.
pub async fn telemetry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<TelemetryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| ApiError::invalid(None, e.body_text()))?;
        let mut filter = switchyard_store::TelemetryFilter {
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            route: q.route,
            tenant: q.tenant,
            label: q.label,
            status: q.status,
            limit: q.limit.min(10_000),
            newest_first: match q.order.as_deref() {
                None | Some("oldest") => false,
                Some("newest") => true,
                Some(other) => {
                    return Err(ApiError::invalid(
                        Some("order".into()),
                        format!("unknown order `{other}`: oldest (the default) or newest"),
                    ))
                }
            },
        };
        if !caller.may(Permission::ReadAllDecisions) {
            filter.tenant = Some(caller.tenant().unwrap_or_default().to_string());
        }
        let format = match q.format.as_deref() {
            None | Some("json") => None,
            Some("jsonl") => Some(export::Format::Jsonl),
            Some("csv") => Some(export::Format::Csv),
            Some(other) => {
                return Err(ApiError::invalid(
                    Some("format".into()),
                    format!("unknown format `{other}`: json, jsonl or csv"),
                ))
            }
        };
        let records = store(&state).await?.telemetry(&filter).await.map_err(store_error)?;
        let dropped = state.recorder.as_ref().map_or(0, |r| r.dropped().telemetry.load(Ordering::Relaxed));
        Ok(match format {
            None => Json(json!({"object": "list", "data": records, "dropped_since_start": dropped})).into_response(),
            Some(f) => {
                let kind = if f == export::Format::Csv { "text/csv" } else { "application/x-ndjson" };
                ([(axum::http::header::CONTENT_TYPE, kind)], export::render(&records, f)).into_response()
            }
        })
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
