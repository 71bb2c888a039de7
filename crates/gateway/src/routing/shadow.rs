//! Shadow traffic: a copy of the request answered in the background by a
//! candidate route, under that route's limits like any attempt, and
//! recorded beside the primary answer; never returned to the client.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchyard_store::ShadowRecord;
use switchyard_wire::headers;
use tokio::sync::oneshot;

use super::Routing;
use crate::backend::ChatRequest;
use crate::{capture, AppState};

/// The primary answer, once sent: route, status, body.
pub type Primary = (String, u16, Bytes);

impl Routing {
    /// Starts the copy; returns the channel the primary's answer is
    /// captured into, so the two are compared once both exist.
    pub(super) fn mirror(
        self: Arc<Self>,
        state: &AppState,
        req: &ChatRequest,
        route: &str,
        max_ttft_ms: Option<u64>,
    ) -> oneshot::Sender<Primary> {
        let (primary, captured) = oneshot::channel::<Primary>();
        let recorder = state.recorder.clone();
        let (req, route) = (req.unstreamed(), route.to_string());
        tokio::spawn(async move {
            let began = Instant::now();
            let answer = match self.route(&route) {
                Ok(state) => self.attempt(state, &req, max_ttft_ms, None).await,
                Err(e) => Err(e),
            };
            let (status, body) = match answer {
                Ok(super::execute::Attempt::Answer(resp)) => {
                    let status = resp.status().as_u16();
                    (status, axum::body::to_bytes(resp.into_body(), capture::CAPTURE_LIMIT).await.unwrap_or_default())
                }
                // Unjudged attempts only answer or fail.
                Ok(_) => (0, Bytes::new()),
                Err(e) => (e.status.as_u16(), Bytes::new()),
            };
            let shadow_ms = began.elapsed().as_millis() as i64;
            let Some(recorder) = recorder else { return };
            let (primary_route, primary_status, primary_body) =
                captured.await.unwrap_or_else(|_| (headers::ROUTE_FAILED.into(), 0, Bytes::new()));
            let (primary_output, shadow_output) = (capture::answer_text(&primary_body), capture::answer_text(&body));
            recorder
                .shadow(ShadowRecord {
                    request_id: req.id.clone(),
                    created_ms: switchyard_wire::unix_ms(),
                    policy_id: self.policy.id.clone(),
                    primary_route,
                    primary_status,
                    same_output: primary_output.is_some() && primary_output == shadow_output,
                    primary_output,
                    shadow_route: route,
                    shadow_status: status,
                    shadow_output,
                    shadow_ms,
                })
                .await;
        });
        primary
    }
}
