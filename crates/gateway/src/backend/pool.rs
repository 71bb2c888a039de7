//! A route served by several upstreams running the same model (engine
//! nodes): each request goes to the member with the fewest requests in
//! flight, ties going round-robin (so idle members share short requests
//! instead of the first one taking them all); each member has its own breaker, and one whose breaker is open
//! gets nothing until it is probed again. A member that fails before
//! answering (its own fault: unreachable, 5xx, too slow) passes the request
//! to the next, so a node dying costs its in-flight streams only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use switchyard_router::Route;

use super::{Backend, ChatRequest, Generation, Limits, Upstream};
use crate::error::{ApiError, Fault};
use crate::resilience::health::Health;

/// Names the member that answered, for operators and tests.
pub const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-switchyard-backend");

struct Member {
    url: String,
    upstream: Upstream,
    health: Health,
    /// Requests sent and not yet finished (a stream counts until it ends).
    in_flight: Arc<AtomicUsize>,
}

pub struct Pool {
    route: String,
    members: Vec<Member>,
    /// Where the round-robin among equally loaded members starts next.
    next: AtomicUsize,
}

/// One request in flight at a member; dropping it ends it.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    pub fn new(route: &Route, urls: &[&str], client: &reqwest::Client) -> anyhow::Result<Self> {
        let now = Instant::now();
        let members = urls
            .iter()
            .map(|url| {
                Ok(Member {
                    url: url.to_string(),
                    upstream: Upstream::new(route, url, client.clone())?,
                    health: Health::new(route, now),
                    in_flight: Arc::default(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { route: route.name.clone(), members, next: AtomicUsize::new(0) })
    }

    async fn call(&self, req: &ChatRequest, limits: Limits) -> Result<Generation, ApiError> {
        let mut tried = vec![false; self.members.len()];
        let mut last: Option<ApiError> = None;
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        loop {
            // The fewest in flight first, ties in turn from `start`; among
            // those, the breaker decides.
            let mut order: Vec<usize> = (0..n).filter(|&i| !tried[i]).collect();
            order.sort_by_key(|&i| (self.members[i].in_flight.load(Ordering::SeqCst), (i + n - start) % n));
            let Some((i, ticket)) = order.into_iter().find_map(|i| {
                tried[i] = true;
                self.members[i].health.admit(Instant::now()).map(|t| (i, t))
            }) else {
                break;
            };
            let member = &self.members[i];
            member.in_flight.fetch_add(1, Ordering::SeqCst);
            let in_flight = InFlight(member.in_flight.clone());
            match member.upstream.generate(req, limits).await {
                Ok(Generation::Proxied(resp)) => {
                    ticket.settle(None);
                    let (mut parts, body) = resp.into_parts();
                    if let Ok(url) = HeaderValue::from_str(&member.url) {
                        parts.headers.insert(BACKEND_HEADER, url);
                    }
                    // In flight until the body has been sent or dropped.
                    let body = body.into_data_stream().map(move |chunk| {
                        let _in_flight = &in_flight;
                        chunk
                    });
                    return Ok(Generation::Proxied(axum::response::Response::from_parts(
                        parts,
                        Body::from_stream(body),
                    )));
                }
                Ok(tokens) => {
                    ticket.settle(None);
                    return Ok(tokens);
                }
                Err(e) => {
                    let fault = e.fault();
                    ticket.settle(Some(fault));
                    if fault != Fault::Route {
                        return Err(e);
                    }
                    tracing::warn!(route = %self.route, backend = %member.url, "backend failed, trying the next: {}", e.message);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            let message = format!("every backend of route {} is out (their breakers are open)", self.route);
            ApiError { retry_after: Some(1), ..ApiError::bad_gateway(message) }
                .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                .with_code("backends_unavailable")
        }))
    }
}

impl Backend for Pool {
    fn generate<'a>(&'a self, req: &'a ChatRequest, limits: Limits) -> BoxFuture<'a, Result<Generation, ApiError>> {
        self.call(req, limits).boxed()
    }

    fn score<'a>(&'a self, req: &'a ChatRequest, answer: String) -> BoxFuture<'a, Result<Vec<f64>, ApiError>> {
        // Upstreams cannot score; the first says why.
        match self.members.first() {
            Some(m) => m.upstream.score(req, answer),
            None => async { Err(ApiError::internal("a route with no backends")) }.boxed(),
        }
    }
}
