//! The `x-switchyard-*` HTTP headers: what a client may send to steer a
//! request, and what every answer says about how it was decided. One
//! spelling for the gateway, the bench, the eval runner and the CLI.

/// Answer: the route that answered (`refused`, `handoff` or `failed` when none did).
pub const ROUTE: &str = "x-switchyard-route";
/// Answer: how the request ended, a [`ResultLabel`](crate::ResultLabel).
pub const LABEL: &str = "x-switchyard-label";
/// Answer: the id of the policy that decided it.
pub const POLICY: &str = "x-switchyard-policy";
/// Answer: why it was routed so, with each fallback taken and why.
pub const REASON: &str = "x-switchyard-reason";
/// Answer: the id its decision is recorded under.
pub const REQUEST_ID: &str = "x-switchyard-request-id";
/// Answer, on a handed-off request: the id to follow it by under `/admin/handoffs`.
pub const HANDOFF_ID: &str = "x-switchyard-handoff-id";
/// Request: a data class the caller asserts; detection may raise it.
pub const DATA_CLASS: &str = "x-switchyard-data-class";
/// Request: `interactive` (default), `batch` or `fallback`.
pub const LANE: &str = "x-switchyard-lane";
/// Request: send it to this route alone (how the eval runner measures one route).
pub const FORCE_ROUTE: &str = "x-switchyard-force-route";
/// Request: the workload family it belongs to (one the policy declares).
pub const FAMILY: &str = "x-switchyard-family";
/// Request, while a canary rollout runs: `incumbent` or `candidate`, the
/// arm to answer it (an operator's; how the canary eval measures each).
pub const CANARY: &str = "x-switchyard-canary";

/// [`ROUTE`] of a request no route answered: refused by a rule,
pub const ROUTE_REFUSED: &str = "refused";
/// handed off to a person by a rule ([`ResultLabel::HumanEscalated`](crate::ResultLabel::HumanEscalated)),
pub const ROUTE_HANDOFF: &str = "handoff";
/// or failed on every route it was allowed.
pub const ROUTE_FAILED: &str = "failed";

/// Every `x-switchyard-*` header, answers' first.
pub const ALL: [&str; 11] =
    [ROUTE, LABEL, POLICY, REASON, REQUEST_ID, HANDOFF_ID, DATA_CLASS, LANE, FORCE_ROUTE, FAMILY, CANARY];

#[cfg(test)]
mod tests {
    #[test]
    fn header_names_are_lowercase_switchyard_names_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for name in super::ALL {
            assert!(
                name.starts_with("x-switchyard-") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
            assert!(seen.insert(name), "{name} twice");
        }
    }
}
