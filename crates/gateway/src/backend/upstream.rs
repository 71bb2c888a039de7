//! A backend that is any OpenAI-compatible HTTP API (vLLM, llama-server,
//! Ollama, a cloud). Requests are forwarded with the route's model; streams
//! are passed through chunk by chunk, never buffered.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use switchyard_router::Route;
use switchyard_wire::ErrorBody;

use super::{Backend, ChatRequest, Generation, Limits};
use crate::error::ApiError;
use crate::resilience::{cut_off, Cut};

pub struct Upstream {
    name: String,
    /// Parsed once: parsing (IDNA host checks included) was a tenth of a
    /// proxied request's instructions.
    endpoint: reqwest::Url,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl Upstream {
    /// Reads the API key from the environment variable the route names, so
    /// keys never live in a policy file.
    pub fn new(route: &Route, url: &str, client: reqwest::Client) -> anyhow::Result<Self> {
        let api_key = match &route.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("route `{}`: environment variable {var} (api_key_env) is not set", route.name)
            })?),
        };
        Ok(Self {
            name: route.name.clone(),
            endpoint: reqwest::Url::parse(&format!("{}/chat/completions", url.trim_end_matches('/')))
                .map_err(|e| anyhow::anyhow!("route `{}`: url {url}: {e}", route.name))?,
            model: route.model.clone(),
            api_key,
            client,
        })
    }

    /// Forwards `req`. Fails (without having sent anything to the client)
    /// if the upstream is unreachable, answers 5xx/429, or does not start
    /// answering within `limits.ttft`, or (not streaming) does not finish
    /// within `limits.total`. Once streaming, a gap longer than the stall
    /// limit, the total limit, or a broken connection ends the stream with
    /// an error event.
    async fn call(&self, req: &ChatRequest, limits: Limits) -> Result<Generation, ApiError> {
        let mut body = req.body.clone();
        body.model = self.model.clone();
        let mut call = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        // Ends when dropped: on failure, once a whole answer is read, or
        // with the stream it is moved into.
        let span = req.trace.child("upstream");
        if span.is_on() {
            span.set("switchyard.route", self.name.clone());
            span.set("server.address", self.endpoint.host_str().unwrap_or_default().to_string());
            let mut traceparent = axum::http::HeaderMap::new();
            span.inject(&mut traceparent);
            call = call.headers(traceparent);
        }
        let deadline = limits.deadline();
        // A stream must start within the TTFT limit; a whole answer has
        // only the total limit.
        let first_byte_by =
            match limits.ttft.filter(|_| req.body.is_stream()).map(|ttft| tokio::time::Instant::now() + ttft) {
                Some(by) => Some(deadline.map_or(by, |d| d.min(by))),
                None => deadline,
            };
        let within = |by: Option<tokio::time::Instant>| {
            by.map_or(std::time::Duration::MAX, |by| by.saturating_duration_since(tokio::time::Instant::now()))
        };
        let limit = within(first_byte_by);
        let resp = tokio::time::timeout(limit, call.send())
            .await
            .map_err(|_| {
                ApiError::timeout(format!("upstream {} sent no response within {} ms", self.name, limit.as_millis()))
            })?
            .map_err(|e| ApiError::bad_gateway(format!("upstream {} unreachable: {}", self.name, with_causes(&e))))?;
        let status = resp.status();
        span.set("http.response.status_code", i64::from(status.as_u16()));
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(self.upstream_error(status, &text));
        }
        if !req.body.is_stream() {
            let bytes = tokio::time::timeout(within(deadline), resp.bytes())
                .await
                .map_err(|_| limits.past_total(&format!("upstream {}", self.name)))?
                .map_err(|e| ApiError::bad_gateway(format!("upstream {} failed mid-answer: {e}", self.name)))?;
            // A 200 that is not JSON is the upstream's failure, not an answer:
            // fail now, while the chain can still fall back.
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                return Err(ApiError::bad_gateway(format!(
                    "upstream {} answered 200 with a body that is not JSON",
                    self.name
                ))
                .with_code("malformed_upstream"));
            }
            return Ok(Generation::Proxied(([(header::CONTENT_TYPE, "application/json")], bytes).into_response()));
        }
        let mut chunks = resp.bytes_stream().map(|c| c.map_err(|e| e.to_string()));
        let limit = within(first_byte_by);
        let first = match tokio::time::timeout(limit, chunks.next()).await {
            Err(_) => {
                return Err(ApiError::timeout(format!(
                    "upstream {} streamed nothing within {} ms",
                    self.name,
                    limit.as_millis()
                )))
            }
            Ok(None) => return Err(ApiError::bad_gateway(format!("upstream {} closed the stream at once", self.name))),
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_gateway(format!("upstream {} stream failed: {e}", self.name)))
            }
            Ok(Some(Ok(b))) if b.starts_with(b"data:") || b.starts_with(b":") || b.starts_with(b"event:") => b,
            Ok(Some(Ok(_))) => {
                return Err(ApiError::bad_gateway(format!(
                    "upstream {} answered 200 with a stream that is not server-sent events",
                    self.name
                ))
                .with_code("malformed_upstream"))
            }
        };
        // Committed: from here a failure ends the stream with an error event;
        // it never silently continues with another route's text.
        let name = self.name.clone();
        let stalled = format!("no data for {} ms (stalled)", limits.stall.map_or(0, |s| s.as_millis()));
        let past_total = limits.past_total(&format!("upstream {name}")).message;
        let rest = cut_off(chunks, limits.stall, deadline, move |why| match why {
            Cut::Stalled => Err(stalled),
            Cut::PastDeadline => Err(past_total),
        })
        .scan(false, move |failed, chunk| {
            let _open_until_the_stream_ends = &span;
            let out = match chunk {
                _ if *failed => None,
                Ok(b) => Some(Ok::<Bytes, std::io::Error>(b)),
                Err(e) => {
                    *failed = true;
                    let body = ApiError::bad_gateway(format!("upstream {name} stream failed: {e}")).body();
                    Some(Ok(Bytes::from(format!("data: {}\n\n", serde_json::to_string(&body).unwrap_or_default()))))
                }
            };
            futures::future::ready(out)
        });
        let body = Body::from_stream(stream::once(async { Ok(first) }).chain(rest));
        Ok(Generation::Proxied(
            ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response(),
        ))
    }

    fn upstream_error(&self, status: StatusCode, text: &str) -> ApiError {
        let detail = serde_json::from_str::<ErrorBody>(text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| text.chars().take(300).collect());
        let message = format!("upstream {} answered {status}: {detail}", self.name);
        // Redirects are not followed (see `Routing::new`): the route's url is wrong.
        if status.is_server_error() || status.is_redirection() {
            ApiError::bad_gateway(message)
        } else {
            ApiError { status, ..ApiError::invalid(None, message) }.with_code("upstream_rejected")
        }
    }
}

impl Backend for Upstream {
    fn generate<'a>(&'a self, req: &'a ChatRequest, limits: Limits) -> BoxFuture<'a, Result<Generation, ApiError>> {
        self.call(req, limits).boxed()
    }

    fn score<'a>(&'a self, _req: &'a ChatRequest, _answer: String) -> BoxFuture<'a, Result<Vec<f64>, ApiError>> {
        let message = format!(
            "route {} is an upstream, which cannot score an answer; verify cascades escalate to an embedded route",
            self.name
        );
        async move { Err(ApiError::internal(message)) }.boxed()
    }
}

/// An error with its causes: reqwest's own message ("error sending
/// request") hides why (refused, TLS certificate not trusted, …).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
