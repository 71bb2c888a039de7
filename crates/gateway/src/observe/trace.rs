//! OpenTelemetry traces: one per chat request, off unless `otlp-endpoint`
//! is set. The root span covers the request from its arrival to its
//! answer's last byte; its children are the stages a slow request is made
//! of: `auth`, `admit`, `classify`, `decide`, each try of a route
//! (`attempt`, `retry`, `fallback`), `upstream`, `verify`, `record`, and
//! for an engine's answer `queue`, `prefill` and `decode`, placed by the
//! engine's own clock once the answer has ended.
//!
//! A client's W3C `traceparent` makes the root its child; upstreams get a
//! `traceparent` naming the `upstream` span. Spans are exported in batches
//! (OTLP over HTTP, protobuf) by a background task; a full export queue
//! drops the batch and counts it, never slowing a request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::sync::mpsc;

/// Export batches waiting for the collector; past this, batches are dropped.
const EXPORT_QUEUE: usize = 64;

/// The process's tracer, exporting to one OTLP/HTTP collector.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Batches handed to the sender and not yet sent (or failed).
    unsent: Arc<AtomicUsize>,
}

impl Tracing {
    /// Exports to `endpoint` (the collector's base URL; spans go to
    /// `{endpoint}/v1/traces`) every `every`. Starts its sender on the
    /// current tokio runtime.
    pub fn otlp(endpoint: &str, node: &str, every: Duration) -> Self {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
        let unsent = Arc::new(AtomicUsize::new(0));
        tokio::spawn(send_loop(url, rx, unsent.clone()));
        let exporter = Otlp { tx, unsent: unsent.clone(), resource: (&Resource::builder_empty().build()).into() };
        let batches = BatchConfigBuilder::default().with_scheduled_delay(every).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
            .with_resource(
                Resource::builder()
                    .with_service_name("switchyard")
                    .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        Self { provider, tracer, unsent }
    }

    /// Exports what is pending, and waits (up to `within`) until it has
    /// been sent.
    pub async fn shutdown(self: Arc<Self>, within: Duration) {
        let this = self.clone();
        let stopped = tokio::task::spawn_blocking(move || this.provider.shutdown()).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!("stopping the trace exporter: {e}");
        }
        let until = tokio::time::Instant::now() + within;
        while self.unsent.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Hands encoded batches to [`send_loop`]; never waits.
#[derive(Debug)]
struct Otlp {
    tx: mpsc::Sender<Vec<u8>>,
    unsent: Arc<AtomicUsize>,
    resource: ResourceAttributesWithSchema,
}

impl SpanExporter for Otlp {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let body =
            ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, &self.resource) }
                .encode_to_vec();
        self.unsent.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(body).is_err() {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("switchyard_trace_spans_dropped_total").increment(spans);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

async fn send_loop(url: String, mut rx: mpsc::Receiver<Vec<u8>>, unsent: Arc<AtomicUsize>) {
    let client = reqwest::Client::new();
    while let Some(body) = rx.recv().await {
        let sent = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::warn!(status = %resp.status(), "the trace collector refused a batch of spans"),
            Err(e) => tracing::warn!("could not send spans to the trace collector: {e}"),
        }
        unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A span of a request's trace, or nothing when tracing is off (then
/// every method does nothing). The span ends when [`Trace::end`] is called
/// or the last clone of it is dropped.
#[derive(Clone, Default)]
pub struct Trace(Option<(SdkTracer, Context)>);

impl Trace {
    /// A request's root span, begun at `start`: a child of the client's
    /// `traceparent` if it sent a valid one.
    pub fn root(tracing: Option<&Tracing>, headers: &HeaderMap, start: SystemTime) -> Self {
        let Some(t) = tracing else { return Self::default() };
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = t
            .tracer
            .span_builder("chat.completions")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&t.tracer, &parent);
        Self(Some((t.tracer.clone(), parent.with_span(span))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A child span, begun now.
    pub fn child(&self, name: &'static str) -> Self {
        self.child_at(name, SystemTime::now())
    }

    /// A child span begun at `start`.
    pub fn child_at(&self, name: &'static str, start: SystemTime) -> Self {
        let Some((tracer, cx)) = &self.0 else { return Self::default() };
        let span = tracer.span_builder(name).with_start_time(start).start_with_context(tracer, cx);
        Self(Some((tracer.clone(), cx.with_span(span))))
    }

    /// A finished child span from `start` to `end` (stages measured by
    /// another clock, e.g. the engine's).
    pub fn span_between(&self, name: &'static str, start: SystemTime, end: SystemTime) {
        self.child_at(name, start).end_at(end);
    }

    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some((_, cx)) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    pub fn end(&self) {
        if let Some((_, cx)) = &self.0 {
            cx.span().end();
        }
    }

    pub fn end_at(&self, at: SystemTime) {
        if let Some((_, cx)) = &self.0 {
            cx.span().end_with_timestamp(at);
        }
    }

    /// Adds `traceparent` (this span as the parent) to a request to an upstream.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some((_, cx)) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
        }
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Trace(off)"),
            Some((_, cx)) => write!(f, "Trace({})", cx.span().span_context().trace_id()),
        }
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::from_bytes(key.as_bytes()), axum::http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}
