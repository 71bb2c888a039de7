//! Recording a routed request: its decision, committed before the answer
//! leaves (group commit, see `switchyard_store::Recorder`), and the primary
//! answer a shadow is compared with, once it has been sent. What the
//! answer measured is recorded by `observe::answer`.

use axum::response::Response;
use switchyard_router::{BackendKind, Decision, Outcome};
use switchyard_store::{DecisionRecord, JsonText};
use switchyard_wire::{headers, ResultLabel};
use tokio::sync::oneshot;

use super::execute::{Answered, Run};
use super::Routing;
use crate::backend::ChatRequest;
use crate::error::ApiError;
use crate::observe::answer::Priced;
use crate::observe::Recorded;
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

impl Routing {
    /// Records the decision and waits until it is committed.
    pub(super) async fn record(
        &self,
        state: &AppState,
        req: &ChatRequest,
        decision: &Decision,
        run: &Run,
        ending: &Ending,
    ) {
        let Some(recorder) = &state.recorder else { return };
        let id = &ending.request_id;
        let mut record = DecisionRecord::new(
            id.clone(),
            decision.policy_id.clone(),
            ending.route.clone(),
            ending.status,
            ending.label.as_str().into(),
        );
        record.rule_id = decision.rule_id.clone();
        record.reason = run.reason.clone();
        record.decision = JsonText::of_or_null(decision);
        record.execution = JsonText::of_or_null(&run.execution);
        record.tenant = ending.tenant.clone();
        if let Some(route) = self.policy.route(&ending.route) {
            record.model = Some(route.model.clone());
            record.runtime = Some(runtime(route.backend).into());
        }
        record.node = Some(state.node.clone());
        record.stream = req.params.stream;
        if !state.telemetry {
            // No measurement will come: not one a restart should count as lost.
            record.measured_ms = Some(-1);
        }
        (record.retries, record.fallbacks) = run.execution.retries_and_fallbacks();
        record.cascade = match (&decision.outcome, &run.execution.cascade) {
            (_, Some(_)) => Some("escalated".into()),
            (Outcome::Route { route, cascade: Some(_), .. }, None) if *route == ending.route => Some("kept".into()),
            _ => None,
        };
        if !recorder.decision(record).await {
            tracing::error!(request_id = %id, "the decision record was not written; answering anyway");
        }
    }

    /// Once the answer has been sent (or abandoned): hands it to the shadow
    /// waiting for it. A priced route's price goes on the response, for
    /// what watches it (`observe::answer`).
    pub(super) fn after_sent(
        &self,
        mut resp: Response,
        ending: &Ending,
        shadow: Option<oneshot::Sender<super::shadow::Primary>>,
    ) -> Response {
        let route = ending.route.clone();
        if let Some(p) = self.policy.route(&route).and_then(|r| self.prices.for_route(&r.name, &r.model)) {
            resp.extensions_mut().insert(Priced(p.clone()));
        }
        resp.extensions_mut().insert(Recorded);
        match shadow {
            None => resp,
            Some(primary) => capture::tap(resp, move |status, body| {
                let _ = primary.send((route, status, body));
            }),
        }
    }
}

/// What the record names as a route's runtime.
pub fn runtime(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Embedded => switchyard_engine::RUNTIME,
        BackendKind::Upstream => "upstream",
    }
}
