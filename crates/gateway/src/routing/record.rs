//! Recording a routed request: its decision, committed before the answer
//! leaves (group commit, see `switchyard_store::Recorder`), then what the
//! answer used and cost, and the primary answer a shadow is compared with,
//! once it has been sent.

use axum::response::Response;
use switchyard_router::Decision;
use switchyard_store::{Completion, DecisionRecord, JsonText, Recorder};
use switchyard_wire::{headers, ResultLabel};
use tokio::sync::oneshot;

use super::execute::{Answered, Run};
use super::Routing;
use crate::error::ApiError;
use crate::{capture, AppState};

/// How a routed request ended: what its record and its headers say.
pub struct Ending {
    pub request_id: String,
    /// The calling key's tenant (`None` on an open server).
    pub tenant: Option<String>,
    /// The route that answered, or `refused`, `handoff` or `failed`.
    pub route: String,
    pub label: ResultLabel,
    /// The HTTP status the client gets.
    pub status: u16,
}

impl Ending {
    pub fn of(request_id: &str, tenant: Option<&str>, result: &Result<(Response, Answered), ApiError>) -> Self {
        let (route, label, status) = match result {
            Ok((resp, answered)) => (answered.route(), answered.label(), resp.status().as_u16()),
            Err(e) => (headers::ROUTE_FAILED.to_string(), ResultLabel::Error, e.status.as_u16()),
        };
        Self { request_id: request_id.to_string(), tenant: tenant.map(str::to_string), route, label, status }
    }
}

/// Records the decision and waits until it is committed.
pub async fn decision(recorder: &Recorder, decision: &Decision, run: &Run, ending: &Ending) {
    let id = &ending.request_id;
    let record = DecisionRecord {
        request_id: id.clone(),
        created_ms: switchyard_wire::unix_ms(),
        policy_id: decision.policy_id.clone(),
        rule_id: decision.rule_id.clone(),
        route: ending.route.clone(),
        status: ending.status,
        reason: run.reason.clone(),
        decision: JsonText::of_or_null(decision),
        label: ending.label.as_str().into(),
        execution: JsonText::of_or_null(&run.execution),
        tenant: ending.tenant.clone(),
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
        energy_wh: None,
    };
    if !recorder.decision(record).await {
        tracing::error!(request_id = %id, "the decision record was not written; answering anyway");
    }
}

impl Routing {
    /// Once the answer has been sent (or abandoned): records its tokens and
    /// cost on a priced route, and hands it to the shadow waiting for it.
    pub(super) fn after_sent(
        &self,
        state: &AppState,
        mut resp: Response,
        ending: &Ending,
        run: &Run,
        shadow: Option<oneshot::Sender<super::shadow::Primary>>,
    ) -> Response {
        let (id, route, began) = (ending.request_id.clone(), ending.route.clone(), run.began);
        let price = self.policy.route(&route).and_then(|r| self.prices.for_route(&r.name, &r.model)).cloned();
        if let Some(p) = &price {
            resp.extensions_mut().insert(crate::limits::meter::Priced(p.clone()));
        }
        let recorder = state.recorder.clone().filter(|_| price.is_some());
        if shadow.is_none() && recorder.is_none() {
            return resp;
        }
        capture::tap(resp, move |status, body| {
            if let Some(recorder) = recorder {
                let tokens = capture::tokens(&body);
                let cost = price
                    .zip(tokens)
                    .map(|(p, (prompt, completion))| p.cost(prompt, completion, began.elapsed().as_secs_f64() * 1e3));
                recorder.completion(Completion {
                    request_id: id,
                    prompt_tokens: tokens.map(|t| t.0),
                    completion_tokens: tokens.map(|t| t.1),
                    cost_usd: cost.map(|c| c.usd),
                    energy_wh: cost.and_then(|c| c.energy_wh),
                });
            }
            if let Some(primary) = shadow {
                let _ = primary.send((route, status, body));
            }
        })
    }
}
