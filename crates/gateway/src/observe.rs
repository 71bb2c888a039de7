//! Prometheus metrics, served at `GET /metrics` in the text exposition
//! format, named as vLLM and llama-server users expect: base units,
//! `switchyard_` prefix, `_total` counters, latency histograms with buckets
//! from 5 ms to a minute.
//!
//! One recorder serves the whole process (the `metrics` facade is global),
//! installed by the first server; every server in the process renders it.
//! Labels are bounded: route names come from the policy, models from the
//! loaded engines; tenants and keys are never labels.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Seconds: from a fast proxy hop to a long generation.
const LATENCY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// The process's recorder, installed on first use; `None` if another
/// recorder was installed first (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| tracing::warn!("metrics are off: {e}"))
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`. Gauges of state kept elsewhere (engines' queues and
/// slots, breakers, dropped audit lines) are read now, at scrape time.
pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    let Some(handle) = handle() else {
        return crate::error::ApiError::internal("metrics are off: another metrics recorder was installed first")
            .into_response();
    };
    if let Some(routing) = &state.routing {
        for (route, open) in routing.breakers() {
            metrics::gauge!("switchyard_breaker_open", "route" => route).set(f64::from(u8::from(open)));
        }
    }
    for (model, engine) in &state.engines {
        let (load, slots) = (engine.busy(), engine.settings().parallel);
        metrics::gauge!("switchyard_engine_queued_requests", "model" => model.clone()).set(load.queued() as f64);
        metrics::gauge!("switchyard_engine_active_sequences", "model" => model.clone()).set(load.active() as f64);
        metrics::gauge!("switchyard_engine_slots", "model" => model.clone()).set(f64::from(slots));
    }
    if let Some(recorder) = &state.recorder {
        metrics::counter!("switchyard_audit_dropped_total").absolute(recorder.audit_dropped());
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Counts a chat completion request by how it ended, and times its answer:
/// its first byte, and the whole of it (until sent, or abandoned).
pub fn chat(resp: Response, route: String, label: &str, began: Instant) -> Response {
    let status = resp.status().as_u16().to_string();
    metrics::counter!("switchyard_requests_total", "route" => route.clone(), "status" => status, "label" => label.to_string())
        .increment(1);
    let (parts, body) = resp.into_parts();
    let mut timing = Timing { route, began, first: false };
    let body = body.into_data_stream().map(move |chunk| {
        timing.saw(chunk.as_ref().map_or(0, bytes::Bytes::len));
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// An answer being sent; its end is timed when it is dropped.
struct Timing {
    route: String,
    began: Instant,
    first: bool,
}

impl Timing {
    fn saw(&mut self, bytes: usize) {
        if !self.first && bytes > 0 {
            self.first = true;
            metrics::histogram!("switchyard_time_to_first_byte_seconds", "route" => self.route.clone())
                .record(self.began.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        metrics::histogram!("switchyard_request_duration_seconds", "route" => self.route.clone())
            .record(self.began.elapsed().as_secs_f64());
    }
}
