//! The audit trail: every request refused with 401, 403 or 429 (a busy
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
use switchyard_store::AuditRecord;

use crate::auth::Caller;
use crate::error::Refusal;
use crate::AppState;

/// Who sent a request, as far as authentication got: put on the response
/// by `auth::authenticate`, read here.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub key_id: Option<String>,
    pub tenant: Option<String>,
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
