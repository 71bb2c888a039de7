//! The context budget (`switchyard_router::budget`) checked before a route
//! is tried: before the request queues anywhere, with the prompt counted by
//! the route's own tokenizer where this process has it.

use std::borrow::Cow;

use serde::Serialize;
use switchyard_router::{Budget, Decision, Fit};

use super::execute::Run;
use super::{RouteState, Routing};
use crate::backend::{prompt_estimate, ChatRequest};
use crate::error::ApiError;

/// Error code of a request over its budget.
pub const CONTEXT_BUDGET_EXCEEDED: &str = "context_budget_exceeded";

/// One check, as the execution record keeps it: the prompt's size is what
/// the budget costs, so it is recorded even when the request fits.
#[derive(Debug, Serialize)]
pub struct ContextCheck {
    route: String,
    prompt_tokens: u32,
    /// `tokenizer` (the route's model) or `estimate` (an upstream's).
    counted_by: &'static str,
    budget: Budget,
    fits: bool,
}

impl Routing {
    /// Checks `sent` against its route's budget. A request that names no
    /// completion cap gets the one a total budget leaves; one over a limit
    /// is an error naming the limit, who set it and why.
    pub(super) async fn within_budget(
        &self,
        route: &RouteState,
        decision: &Decision,
        sent: &mut Cow<'_, ChatRequest>,
        run: &mut Run,
    ) -> Result<(), ApiError> {
        let budget = self.policy.context_budget(&route.config, decision.family.as_deref());
        if budget.is_empty() {
            return Ok(());
        }
        let (prompt, counted_by) = match route.backend.count_prompt(sent).await {
            Some(n) => (n, "tokenizer"),
            None => (u32::try_from(prompt_estimate(&sent.body)).unwrap_or(u32::MAX), "estimate"),
        };
        let fit = budget.fit(prompt, sent.params.max_tokens);
        let fits = matches!(fit, Fit::Fits { .. });
        run.execution.context.push(ContextCheck {
            route: route.config.name.clone(),
            prompt_tokens: prompt,
            counted_by,
            budget,
            fits,
        });
        match fit {
            Fit::Fits { max_tokens } if max_tokens != sent.params.max_tokens => {
                let req = sent.to_mut();
                req.params.max_tokens = max_tokens;
                req.body.max_tokens = max_tokens.map(i64::from);
                Ok(())
            }
            Fit::Fits { .. } => Ok(()),
            Fit::Over { message } => {
                metrics::counter!("switchyard_context_budget_refusals_total", "route" => route.config.name.clone())
                    .increment(1);
                Err(ApiError::invalid(Some("messages".into()), format!("route {}: {message}", route.config.name))
                    .with_code(CONTEXT_BUDGET_EXCEEDED))
            }
        }
    }
}
