//! `POST /v1/chat/completions`: parse and validate, then answer by the
//! routing policy if there is one, else from the engine `model` names.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use switchyard_auth::Permission;
use switchyard_engine::Engine;
use switchyard_store::DecisionRecord;
use switchyard_wire::{ChatCompletionRequest, ResultLabel};

use std::time::SystemTime;

use crate::auth::{Arrived, Caller};
use crate::backend::held::Held;
use crate::backend::{prompt_estimate, Backend, ChatRequest, Embedded, Generation, Limits};
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::error::Refusal;
use crate::limits::Admitted;
use crate::observe::answer::Watch;
use crate::observe::trace::Trace;
use crate::observe::{Recorded, Served};
use crate::validate::chat_params;
use crate::AppState;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(switchyard_wire::headers::REQUEST_ID);

/// Parses the body with the path of any type error, so the client learns
/// which parameter was wrong, not just that something was.
fn parse(body: Result<Bytes, BytesRejection>) -> Result<ChatCompletionRequest, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError {
            status: rejection.status(),
            ..ApiError::invalid(None, format!("could not read the request body: {}", rejection.body_text()))
        }
        .with_code(if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_body"
        })
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::invalid(None, format!("We could not parse the JSON body of your request: {inner}"))
                .with_code("invalid_json")
        } else {
            ApiError::invalid(Some(path.clone()), format!("Invalid type or value for `{path}`: {inner}"))
                .with_code("invalid_type")
        }
    })
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Time-ordered (v7): the decisions table is keyed by this id, and random
    // keys made every insert land on a random B-tree page. With a few
    // hundred thousand records that was most of the cost of recording.
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let began = std::time::Instant::now();
    let trace = state.traces.as_deref().map_or_else(Trace::default, |traces| {
        let arrived = arrived.map_or_else(SystemTime::now, |a| a.0 .0);
        let root = Trace::root(Some(traces), &headers, arrived);
        root.span_between("auth", arrived, SystemTime::now());
        root.set("switchyard.request_id", id.clone());
        root
    });
    let admitting = trace.child("admit");
    let admitted = admit(&state, &caller, body).await;
    admitting.end();
    let (mut resp, meter, stream) = match admitted {
        Err(resp) => (resp, None, false),
        Ok((admitted, body)) => {
            let stream = body.is_stream();
            let mut resp = match handle(&state, &caller, &id, &headers, body, &trace).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::info!(request_id = %id, status = %e.status, code = ?e.code, "request refused: {}", e.message);
                    e.into_response()
                }
            };
            resp.headers_mut().extend(admitted.headers);
            (resp, admitted.meter, stream)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let (route, label) = outcome(&resp);
    if state.telemetry {
        metrics::counter!("switchyard_requests_total", "route" => route.clone(), "status" => resp.status().as_str().to_string(), "label" => label)
            .increment(1);
        record_unrouted(&state, &caller, &id, &mut resp, (&route, label), stream, &trace).await;
    }
    if trace.is_on() {
        trace.set("http.response.status_code", i64::from(resp.status().as_u16()));
        trace.set("switchyard.route", route.clone());
        trace.set("switchyard.label", label);
    }
    let recorder = state.recorder.clone().filter(|_| state.telemetry);
    Watch { request_id: id, route, began, meter, recorder, metrics: state.telemetry, trace }.wrap(resp)
}

/// Records a request that routing did not (no policy, or refused before
/// one decided): an answer is committed before its first byte, like a
/// routed one; a refusal is queued without waiting, since refusals come at
/// whatever rate clients send them.
async fn record_unrouted(
    state: &AppState,
    caller: &Caller,
    id: &str,
    resp: &mut Response,
    (route, label): (&str, &str),
    stream: bool,
    trace: &Trace,
) {
    let Some(recorder) = &state.recorder else { return };
    if resp.extensions().get::<Recorded>().is_some() {
        return;
    }
    let _span = trace.child("record");
    let routing = state.routing();
    let policy = routing.as_ref().map_or("none", |r| r.policy.id.as_str());
    let mut record = DecisionRecord::new(id.into(), policy.into(), route.into(), resp.status().as_u16(), label.into());
    record.tenant = caller.tenant().map(str::to_string);
    record.node = Some(state.node.clone());
    record.stream = stream;
    // Taken out before waiting: a response is not `Sync`, so no reference
    // to it may be held across an await.
    let (served, refusal) = (resp.extensions_mut().remove::<Served>(), resp.extensions().get::<Refusal>());
    match served {
        Some(served) => {
            record.reason = format!("no policy: the request named model {}", served.model);
            record.model = Some(served.model);
            record.runtime = Some(switchyard_engine::RUNTIME.into());
            if !recorder.decision(record).await {
                tracing::error!(request_id = %id, "the request's record was not written; answering anyway");
            }
        }
        None => {
            record.reason = refusal.map_or_else(String::new, |r| r.message.clone());
            recorder.refusal(record);
        }
    }
}

/// The route and result label a response went out with: routing's headers,
/// or for an answer without routing (or refused before it), its model or
/// `none`, and a label from its status.
fn outcome(resp: &Response) -> (String, &'static str) {
    let header = |name: &HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let route = header(&crate::routing::ROUTE_HEADER)
        .map(str::to_string)
        .or_else(|| resp.extensions().get::<Served>().map(|s| s.model.clone()))
        .unwrap_or_else(|| "none".into());
    let label = match header(&crate::routing::LABEL_HEADER).and_then(|l| l.parse::<ResultLabel>().ok()) {
        Some(label) => label.as_str(),
        None if resp.status().is_success() => ResultLabel::Answered.as_str(),
        None if resp.status().is_client_error() => ResultLabel::Refused.as_str(),
        None => ResultLabel::Error.as_str(),
    };
    (route, label)
}

/// Checks that the caller may ask, parses the request and counts it
/// against the caller's limits. A request that cannot be parsed is refused
/// before it is counted.
async fn admit(
    state: &Arc<AppState>,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Admitted, ChatCompletionRequest), Response> {
    let refuse = |e: ApiError| {
        tracing::info!(status = %e.status, code = ?e.code, "request refused: {}", e.message);
        e.into_response()
    };
    caller.require(Permission::Infer, "ask for completions").map_err(refuse)?;
    let body = parse(body).map_err(refuse)?;
    match state.limiter.admit(caller, prompt_estimate(&body)).await {
        Ok(admitted) => {
            if admitted.meter.is_some() {
                metrics::counter!("switchyard_limiter_decisions_total", "decision" => "admitted").increment(1);
            }
            Ok((admitted, body))
        }
        Err(refused) => {
            metrics::counter!("switchyard_limiter_decisions_total", "decision" => "refused").increment(1);
            let mut resp = refused.error.into_response();
            resp.headers_mut().extend(refused.headers);
            Err(resp)
        }
    }
}

async fn handle(
    state: &AppState,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    body: ChatCompletionRequest,
    trace: &Trace,
) -> Result<Response, ApiError> {
    if let Some(live) = &state.routing {
        let may_pin = crate::ops::rollout::may_pin(caller, live.current().options().allow_force_route);
        let routing = live.for_request(id, crate::ops::rollout::pinned(headers), may_pin)?;
        let params = chat_params(&body)?;
        let req = ChatRequest { id: id.to_string(), body, params, trace: trace.clone() };
        return routing.serve(state, caller, req, headers).await;
    }
    let engine = state
        .models
        .snapshot()
        .get(&body.model)
        .ok_or_else(|| ApiError::model_not_found(&body.model, &state.model_ids()))?
        .clone();
    let params = chat_params(&body)?;
    let req = ChatRequest { id: id.to_string(), body, params, trace: trace.clone() };
    unrouted(engine, &req).await
}

/// Answers from an embedded engine with no time limits: without a policy,
/// the client decides how long to wait.
async fn unrouted(engine: Arc<Engine>, req: &ChatRequest) -> Result<Response, ApiError> {
    let limits = Limits::none();
    let model = engine.id().to_string();
    match Embedded::new(engine).generate(req, limits).await? {
        Generation::Tokens { fingerprint, events } => {
            let held = Held::take(&model, events, &limits, 0).await?;
            let mut resp = held.answer(Envelope::new(req, &model).with_fingerprint(fingerprint), &limits).await?;
            resp.extensions_mut().insert(Served { model });
            Ok(resp)
        }
        Generation::Proxied(resp) => Ok(resp),
    }
}
