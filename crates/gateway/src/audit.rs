//! The audit trail: every change is first written to the hash chain
//! ([`changing`], awaited: a change the chain could not record is not
//! made), and every request refused with 401, 403 or 429 (a busy
//! server's 429s included: they are refusals a caller saw), or with the 400
//! of a prompt over a token limit by itself, and every change
//! to keys and tenants. A line's key id and tenant are the actor's (the
//! caller's), never a secret; what was changed is in its detail. Lines are
//! queued to the store's writer off the request path.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
pub use switchyard_store::chain::state_hash;
use switchyard_store::chain::{ChainEntry, Change};
use switchyard_store::{AuditRecord, Store};

use crate::auth::Caller;
use crate::error::{ApiError, Refusal};
use crate::AppState;

/// Who sent a request, as far as authentication got: put on the response
/// by `auth::authenticate`, read here.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub key_id: Option<String>,
    pub tenant: Option<String>,
}

impl Actor {
    /// An actor with no key: the server itself (`server:NODE`) or the
    /// command line (`cli`).
    pub fn named(name: String) -> Self {
        Self { key_id: Some(name), tenant: None }
    }
}

impl From<&Caller> for Actor {
    fn from(caller: &Caller) -> Self {
        match caller {
            Caller::Open => Self::default(),
            Caller::Key(k) => Self { key_id: Some(k.key_id.clone()), tenant: Some(k.tenant.clone()) },
        }
    }
}

/// Middleware, outside authentication: records the refusals.
pub async fn refusals(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let action = format!("{} {}", req.method(), req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    let refusal = resp.extensions().get::<Refusal>();
    // A 400 for a prompt over a token limit by itself is a limit's refusal too.
    let over_limit = refusal.is_some_and(|r| r.code == Some(crate::limits::OVER_LIMIT));
    if over_limit || [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS].contains(&status)
    {
        let actor = resp.extensions().get::<Actor>().cloned().unwrap_or_default();
        let why = refusal.map_or_else(String::new, |r| r.message.clone());
        write(&state, actor, action, "refused", status, why);
    }
    resp
}

/// Writes a change to the hash chain before it is made: `object` is what
/// changes (`key:ID`, `tenant:NAME`, `policy`), `after` the hash of its new
/// state ([`state_hash`]). An error means the change must not be made.
pub async fn changing(
    store: &Store,
    actor: &Actor,
    object: String,
    action: &str,
    after: Option<String>,
    reason: String,
) -> Result<ChainEntry, ApiError> {
    let change = Change {
        // A server without keys has no one to name.
        actor: actor.key_id.clone().unwrap_or_else(|| "open".into()),
        tenant: actor.tenant.clone(),
        object,
        action: action.to_string(),
        before_sha256: None,
        after_sha256: after,
        reason,
    };
    store.record_change(change).await.map_err(|e| {
        ApiError::internal(format!("the audit chain could not record this change, so it was not made: {e}"))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })
}

/// Records a change a caller made (`keys.create`, `tenants.put`, …).
pub fn done(state: &AppState, caller: &Caller, action: &str, detail: String) {
    write(state, caller.into(), action.to_string(), "done", StatusCode::OK, detail);
}

fn write(state: &AppState, actor: Actor, action: String, outcome: &str, status: StatusCode, detail: String) {
    let Some(recorder) = &state.recorder else { return };
    recorder.audit(AuditRecord {
        id: 0,
        created_ms: switchyard_wire::unix_ms(),
        key_id: actor.key_id,
        tenant: actor.tenant,
        action,
        outcome: outcome.to_string(),
        status: status.as_u16(),
        detail,
    });
}
