//! What operators see of the traffic: each answer watched as it is sent
//! ([`answer`]), and Prometheus metrics served at `GET /metrics` in the
//! text exposition format, named as vLLM and llama-server users expect:
//! base units, `switchyard_` prefix, `_total` counters, latency histograms
//! with buckets from a millisecond (a token) to a minute (a generation).
//!
//! One recorder serves the whole process (the `metrics` facade is global),
//! installed by the first server; every server in the process renders it.
//! Labels are bounded: route names come from the policy, models from the
//! loaded engines; tenants and keys are never labels.

pub mod answer;
pub mod export;
pub mod trace;
pub mod ui;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Seconds: from one token of a small model to a long generation.
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// On a response whose record routing has already written.
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

/// On an answer from the engine the request's `model` named (no policy).
#[derive(Debug, Clone)]
pub struct Served {
    pub model: String,
}

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
    if let Some(routing) = state.routing() {
        for (route, open) in routing.breakers() {
            metrics::gauge!("switchyard_breaker_open", "route" => route).set(f64::from(u8::from(open)));
        }
    }
    for (model, engine) in state.models.snapshot().iter() {
        let (load, slots) = (engine.busy(), engine.settings().parallel);
        metrics::gauge!("switchyard_engine_queued_requests", "model" => model.clone()).set(load.queued() as f64);
        metrics::gauge!("switchyard_engine_active_sequences", "model" => model.clone()).set(load.active() as f64);
        metrics::gauge!("switchyard_engine_slots", "model" => model.clone()).set(f64::from(slots));
        let capacity = f64::from(engine.n_ctx_seq()) * f64::from(slots);
        metrics::gauge!("switchyard_engine_kv_cache_usage_ratio", "model" => model.clone()).set(if capacity > 0.0 {
            load.kv_tokens() as f64 / capacity
        } else {
            0.0
        });
        let cache = load.counters();
        metrics::counter!("switchyard_engine_prefix_cache_hits_total", "model" => model.clone())
            .absolute(cache.hits as u64);
        metrics::counter!("switchyard_engine_prefix_cache_reused_tokens_total", "model" => model.clone())
            .absolute(cache.reused_tokens as u64);
        metrics::counter!("switchyard_engine_prefix_cache_restored_total", "model" => model.clone())
            .absolute(cache.restored as u64);
        metrics::counter!("switchyard_engine_prefix_cache_copied_total", "model" => model.clone())
            .absolute(cache.copied as u64);
        metrics::gauge!("switchyard_engine_host_cache_sequences", "model" => model.clone())
            .set(cache.saved_sequences as f64);
        metrics::gauge!("switchyard_engine_host_cache_bytes", "model" => model.clone()).set(cache.saved_bytes as f64);
        metrics::counter!("switchyard_engine_draft_tokens_total", "model" => model.clone())
            .absolute(cache.drafted as u64);
        metrics::counter!("switchyard_engine_draft_accepted_tokens_total", "model" => model.clone())
            .absolute(cache.draft_accepted as u64);
    }
    if let Some(recorder) = &state.recorder {
        let dropped = recorder.dropped();
        metrics::counter!("switchyard_audit_dropped_total").absolute(dropped.audit.load(Ordering::Relaxed));
        metrics::counter!("switchyard_telemetry_dropped_total").absolute(dropped.telemetry.load(Ordering::Relaxed));
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
