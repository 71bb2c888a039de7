//! Who is calling, and what they may do.
//!
//! Keys live in the store (made by `switchyard keys create` or `POST
//! /admin/keys`); each server keeps a copy in memory, reloaded twice a second,
//! so a key made or revoked by another process counts within a second.
//!
//! Invariants:
//! - with no key in the store the server is open (the README's commands
//!   work on a fresh machine, on loopback); once one has been made, every
//!   `/v1` and `/admin` request needs an active key. Revoking the last key
//!   does not reopen the server;
//! - a presented secret is checked against the stored hash in constant
//!   time (`switchyard_auth::verify`); an unknown id costs the same hash;
//! - a caller's headers can narrow what its key allows, never widen it
//!   (see `routing::facts`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use switchyard_auth::{Permission, Role};
use switchyard_router::detect::Custom;
use switchyard_router::protect::TenantLists;
use switchyard_router::{DataClass, Lane};
use switchyard_store::{KeyRecord, Limits, Store, TenantProtect};

use crate::audit::Actor;
use crate::error::ApiError;
use crate::AppState;

/// A key as a request carries it, checked and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub role: Role,
    /// The lane of the key's requests; a header may not ask for another.
    pub lane: Option<Lane>,
    /// The least data class of the key's requests.
    pub floor: Option<DataClass>,
    /// Routes the key may force; empty: any.
    pub routes: Vec<String>,
    /// Families the key may declare; empty: any.
    pub families: Vec<String>,
    pub limits: Limits,
    /// The tenant's limits, shared by all its keys.
    pub tenant_limits: Limits,
    /// The tenant's own data protection, if it has any.
    pub tenant_protect: Option<Arc<TenantProtection>>,
}

/// A tenant's own data protection, ready to use.
#[derive(Debug, PartialEq)]
pub struct TenantProtection {
    pub lists: Option<TenantLists>,
    pub payload_retention_days: Option<f64>,
}

impl TenantProtection {
    fn compile(p: &TenantProtect) -> Result<Option<Self>, switchyard_router::PolicyError> {
        if p.custom.is_empty() && p.payload_retention_days.is_none() {
            return Ok(None);
        }
        let lists: Vec<(Custom, String)> = p
            .custom
            .iter()
            .map(|l| {
                let custom =
                    Custom { name: l.name.clone(), patterns: l.patterns.clone(), keywords: l.keywords.clone() };
                (custom, l.class.clone())
            })
            .collect();
        let lists = if lists.is_empty() { None } else { Some(TenantLists::compile(&lists)?) };
        Ok(Some(Self { lists, payload_retention_days: p.payload_retention_days }))
    }

    /// Checks what a caller asks to set: the first fault, naming its field.
    pub fn check(p: &TenantProtect) -> Result<(), ApiError> {
        if p.payload_retention_days.is_some_and(|d| d.is_nan() || d <= 0.0) {
            return Err(ApiError::invalid(Some("payload_retention_days".into()), "must be more than 0"));
        }
        Self::compile(p).map(|_| ()).map_err(|e| match e {
            switchyard_router::PolicyError::Invalid { key, message } => ApiError::invalid(Some(key), message),
            other => ApiError::invalid(None, other.to_string()),
        })
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// The server has no keys: open, as on a fresh machine.
    Open,
    Key(Arc<Principal>),
}

impl Caller {
    /// An open server allows everything a key could, except where a server
    /// setting says otherwise (forcing a route).
    pub fn may(&self, p: Permission) -> bool {
        match self {
            // The first key is made offline (`switchyard keys create`):
            // whoever reaches an open server must not get to make one, nor
            // set the limits that will hold once keys exist.
            Caller::Open => !matches!(p, Permission::ManageKeys | Permission::ManageTenants),
            Caller::Key(k) => k.role.may(p),
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Key(k) => Some(&k.tenant),
        }
    }

    /// 403 unless the caller may do `p`.
    pub fn require(&self, p: Permission, what: &str) -> Result<(), ApiError> {
        match self {
            _ if self.may(p) => Ok(()),
            Caller::Key(k) => Err(forbidden(format!("a key with role {} may not {what}", k.role.as_str()))),
            Caller::Open => Err(forbidden(format!(
                "this server has no API keys, so nobody may {what} over HTTP; make the first key offline with \
                 `switchyard keys create --tenant NAME --role admin`"
            ))),
        }
    }
}

pub fn forbidden(message: String) -> ApiError {
    ApiError { kind: "permission_error", ..ApiError::invalid(None, message) }
        .with_status(StatusCode::FORBIDDEN)
        .with_code("forbidden")
}

fn unauthorized(message: &str) -> ApiError {
    ApiError { kind: "authentication_error", ..ApiError::invalid(None, message) }
        .with_status(StatusCode::UNAUTHORIZED)
        .with_code("invalid_api_key")
}

/// Keys as last read from the store.
pub struct Keys {
    store: Store,
    active: RwLock<Arc<Active>>,
}

/// The active keys by id, whether any key (revoked too) exists, and the
/// tenants' limits.
#[derive(Default)]
struct Active {
    by_id: HashMap<String, KeyRecord>,
    any: bool,
    tenants: HashMap<String, Limits>,
    /// Compiled once per version of a tenant (its `updated_ms`).
    protection: HashMap<String, (i64, Option<Arc<TenantProtection>>)>,
}

impl Keys {
    pub async fn load(store: Store) -> Result<Arc<Self>, switchyard_store::StoreError> {
        let keys = Arc::new(Self { store, active: RwLock::default() });
        keys.reload().await?;
        Ok(keys)
    }

    /// Rereads the keys and tenants twice a second, for as long as the
    /// server runs: a change made through another replica (or the CLI)
    /// counts here within a second, reread included.
    pub fn watch(self: &Arc<Self>) {
        let keys = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(keys) = keys.upgrade() else { return };
                if let Err(e) = keys.reload().await {
                    tracing::warn!("could not reread the API keys (the last copy stays in force): {e}");
                }
            }
        });
    }

    pub async fn reload(&self) -> Result<(), switchyard_store::StoreError> {
        let keys = self.store.keys().await?;
        let any = !keys.is_empty();
        let by_id = keys.into_iter().filter(|k| k.revoked_ms.is_none()).map(|k| (k.id.clone(), k)).collect();
        let records = self.store.tenants().await?;
        let before = self.snapshot();
        let mut protection = HashMap::new();
        for t in &records {
            let compiled = match before.protection.get(&t.name) {
                Some((version, p)) if *version == t.updated_ms => p.clone(),
                _ => TenantProtection::compile(&t.protect).map(|p| p.map(Arc::new)).unwrap_or_else(|e| {
                    tracing::warn!(tenant = %t.name, "the tenant's data protection does not compile, so none applies: {e}");
                    None
                }),
            };
            protection.insert(t.name.clone(), (t.updated_ms, compiled));
        }
        let tenants = records.into_iter().map(|t| (t.name, t.limits)).collect();
        *self.active.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(Active { by_id, any, tenants, protection });
        Ok(())
    }

    fn snapshot(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn is_open(&self) -> bool {
        !self.snapshot().any
    }

    /// Who sent `authorization` (the whole header value).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let active = self.snapshot();
        if !active.any {
            return Ok(Caller::Open);
        }
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(unauthorized("this server needs an API key: send it as `Authorization: Bearer sy-…`"));
        };
        let invalid = || unauthorized("the API key is not valid (unknown, revoked, or mistyped)");
        let (id, secret) = switchyard_auth::parse(presented.trim()).ok_or_else(invalid)?;
        // An unknown id is checked against a hash too, so both refusals cost the same.
        const NO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        let record = active.by_id.get(id);
        let matches = switchyard_auth::verify(secret, record.map_or(NO_HASH, |k| k.hash.as_str()));
        let record = record.filter(|_| matches).ok_or_else(invalid)?;
        let tenant_limits = active.tenants.get(&record.tenant).copied().unwrap_or_default();
        let protect = active.protection.get(&record.tenant).and_then(|(_, p)| p.clone());
        principal(record, tenant_limits, protect).map(|p| Caller::Key(Arc::new(p)))
    }
}

/// What a new key is for: its tenant, role and bounds.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub tenant: String,
    pub role: String,
    #[serde(default)]
    pub lane: Option<String>,
    #[serde(default)]
    pub data_class_floor: Option<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub families: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// A 400 naming the first limit that could never admit anything (a key's
/// or a tenant's), as `limits.<name>`.
pub fn check_limits(limits: &Limits) -> Result<(), ApiError> {
    match limits.invalid() {
        None => Ok(()),
        Some(name) => Err(ApiError::invalid(
            Some(format!("limits.{name}")),
            format!("`{name}` must be above 0; leave it out for no limit"),
        )
        .with_code("invalid_value")),
    }
}

/// Makes a key for `spec`: the record to store and the key to show once.
/// Every attribute is checked first, so a bad one is a 400 naming it.
pub fn issue(spec: &KeySpec, now_ms: i64) -> Result<(KeyRecord, String), ApiError> {
    let invalid =
        |param: &str, message: String| ApiError::invalid(Some(param.to_string()), message).with_code("invalid_value");
    check_limits(&spec.limits)?;
    if spec.tenant.trim().is_empty() {
        return Err(invalid("tenant", "a key belongs to a tenant: name it".into()));
    }
    let role: Role = spec.role.parse().map_err(|e| invalid("role", e))?;
    let check = |param: &str, text: &Option<String>, ok: fn(&str) -> bool, known: &str| match text {
        Some(t) if !ok(t) => Err(invalid(param, format!("unknown {param} `{t}`; use one of {known}"))),
        _ => Ok(()),
    };
    check("lane", &spec.lane, |t| t.parse::<Lane>().is_ok(), "interactive, batch, fallback")?;
    check(
        "data_class_floor",
        &spec.data_class_floor,
        |t| t.parse::<DataClass>().is_ok(),
        "public, internal, regulated",
    )?;
    let new = switchyard_auth::generate().map_err(|e| ApiError::internal(format!("no randomness for a key: {e}")))?;
    let record = KeyRecord {
        id: new.id,
        hash: new.hash,
        tenant: spec.tenant.trim().to_string(),
        role: role.as_str().to_string(),
        created_ms: now_ms,
        revoked_ms: None,
        lane: spec.lane.clone(),
        data_class_floor: spec.data_class_floor.clone(),
        routes: spec.routes.clone(),
        families: spec.families.clone(),
        limits: spec.limits,
    };
    Ok((record, new.key))
}

/// A stored key's attributes, typed. A stored value this build does not
/// know (a role from a newer version) refuses the key rather than guess.
fn principal(
    k: &KeyRecord,
    tenant_limits: Limits,
    tenant_protect: Option<Arc<TenantProtection>>,
) -> Result<Principal, ApiError> {
    let bad = |what: &str| ApiError::internal(format!("stored key {} has an unknown {what}", k.id));
    Ok(Principal {
        key_id: k.id.clone(),
        tenant: k.tenant.clone(),
        role: k.role.parse().map_err(|_| bad("role"))?,
        lane: k.lane.as_deref().map(str::parse::<Lane>).transpose().map_err(|_| bad("lane"))?,
        floor: k
            .data_class_floor
            .as_deref()
            .map(str::parse::<DataClass>)
            .transpose()
            .map_err(|_| bad("data class floor"))?,
        routes: k.routes.clone(),
        families: k.families.clone(),
        limits: k.limits,
        tenant_limits,
        tenant_protect,
    })
}

/// When a request reached the server, before its key was checked: where
/// its trace begins (set only while traces are exported).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub std::time::SystemTime);

/// Middleware: puts the [`Caller`] in the request's extensions, or answers
/// 401. Refusals are logged with the key id, never the secret.
pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if state.traces.is_some() {
        req.extensions_mut().insert(Arrived(std::time::SystemTime::now()));
    }
    let Some(keys) = &state.keys else {
        req.extensions_mut().insert(Caller::Open);
        return next.run(req).await;
    };
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match keys.authenticate(header) {
        Ok(caller) => {
            let actor = Actor::from(&caller);
            req.extensions_mut().insert(caller);
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(actor);
            resp
        }
        Err(e) => {
            let id = header.and_then(|h| h.strip_prefix("Bearer ")).and_then(switchyard_auth::parse).map(|(id, _)| id);
            tracing::warn!(path = %req.uri().path(), key_id = ?id, "request refused: {}", e.message);
            let mut resp = e.into_response();
            // The id a caller claims is public; recorded, so guessing shows.
            resp.extensions_mut().insert(Actor { key_id: id.map(str::to_string), tenant: None });
            resp
        }
    }
}
