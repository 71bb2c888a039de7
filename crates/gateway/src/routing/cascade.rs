//! A cascade's judgement of a held fast answer, before any of it is sent:
//! on the fast model's own logprobs, or (`verify_*` signals) on the
//! escalation model's logprobs of the same answer.

use axum::http::StatusCode;
use serde::Serialize;
use switchyard_router::{is_refusal, CascadePlan, Confidence, VerifierBusy};

use super::Routing;
use crate::backend::held::Sample;
use crate::backend::ChatRequest;
use crate::error::ApiError;

/// What the cascade makes of a fast answer.
pub enum Verdict {
    /// Confident enough: send it.
    Keep,
    Escalate(CascadeCheck),
    /// Nobody was free to verify it and the policy refuses rather than escalates.
    Busy(ApiError),
}

/// A cascade's verdict on a fast answer. Recorded only when it escalated;
/// a kept answer shows as the fast route's `answered` step.
#[derive(Debug, Serialize)]
pub struct CascadeCheck {
    route: String,
    signal: &'static str,
    /// `None` for an answer that could not be judged (empty, or no verifier
    /// free), which always escalates.
    value: Option<f64>,
    threshold: f64,
    confidence: Option<Confidence>,
    escalated: bool,
    /// Why there is no value, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    unjudged: Option<String>,
    /// The answer was a refusal of a request the safety classifier judged
    /// safe: escalated whatever its confidence.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    over_refusal: bool,
}

impl CascadeCheck {
    pub fn describe(&self) -> String {
        if self.over_refusal {
            return "refused a request the safety classifier judged safe (over-refusal)".into();
        }
        match (self.value, &self.unjudged) {
            (Some(v), _) => format!("{} {v:.3} < {}", self.signal, self.threshold),
            (None, Some(why)) => why.clone(),
            (None, None) => "gave an empty answer".into(),
        }
    }
}

/// Why a verify gave no confidence.
enum Unverified {
    /// Nothing to score, or scoring failed: the answer escalates.
    Unchecked,
    /// Every verifier slot of the escalation model is taken.
    Busy,
}

impl Routing {
    /// Judges the held answer.
    pub(super) async fn judge(&self, fast: &str, plan: &CascadePlan, req: &ChatRequest, held: Sample) -> Verdict {
        // The eval's refusal detector judges "is this a refusal"; what the
        // classifier cleared should be answered, so a refusal escalates
        // before any confidence is weighed (or a verifier slot taken).
        if plan.over_refusal && is_refusal(&held.text, None) {
            metrics::counter!("switchyard_over_refusals_total", "route" => fast.to_string()).increment(1);
            return Verdict::Escalate(CascadeCheck {
                route: fast.to_string(),
                signal: "over_refusal",
                value: None,
                threshold: plan.threshold,
                confidence: Confidence::of(&held.logprobs),
                escalated: true,
                unjudged: None,
                over_refusal: true,
            });
        }
        let confidence = if plan.signal.verifies() {
            self.verify(plan, req, held.text).await
        } else {
            Confidence::of(&held.logprobs).ok_or(Unverified::Unchecked)
        };
        let unjudged = match &confidence {
            Err(Unverified::Busy) if plan.when_verifier_busy == VerifierBusy::Reject => {
                let e = ApiError {
                    retry_after: Some(1),
                    ..ApiError::internal("every verifier is busy; try again shortly")
                        .with_status(StatusCode::TOO_MANY_REQUESTS)
                };
                return Verdict::Busy(ApiError { kind: "rate_limit_error", ..e }.with_code("verifier_busy"));
            }
            Err(Unverified::Busy) => {
                Some(format!("could not be verified: all {} verifier slots busy", self.options.max_verifies))
            }
            _ => None,
        };
        let confidence = confidence.ok();
        let value = confidence.map(|c| c.get(plan.signal));
        let escalated = value.is_none_or(|v| v < plan.threshold);
        if !escalated {
            return Verdict::Keep;
        }
        Verdict::Escalate(CascadeCheck {
            route: fast.to_string(),
            signal: plan.signal.as_str(),
            value,
            threshold: plan.threshold,
            confidence,
            escalated,
            unjudged,
            over_refusal: false,
        })
    }

    /// The escalation model's verdict on a fast answer: its logprobs of the
    /// held text, teacher-forced after the same messages, queued in that
    /// model's engine (whose prefix cache then keeps the prompt for the
    /// escalated answer), within the model's verifier slots. An answer
    /// nobody could check (empty, scoring failed) is never sent as checked.
    async fn verify(&self, plan: &CascadePlan, req: &ChatRequest, text: String) -> Result<Confidence, Unverified> {
        let route = plan.escalate.first().and_then(|name| self.routes.get(name)).ok_or(Unverified::Unchecked)?;
        if text.is_empty() {
            return Err(Unverified::Unchecked);
        }
        let _slot = route.verifies.clone().try_acquire_owned().map_err(|_| Unverified::Busy)?;
        match route.backend.score(req, text).await {
            Ok(logprobs) => Confidence::of(&logprobs).ok_or(Unverified::Unchecked),
            Err(e) => {
                tracing::warn!(route = %route.config.name, "could not verify the fast answer, so it escalates: {}", e.message);
                Err(Unverified::Unchecked)
            }
        }
    }
}
