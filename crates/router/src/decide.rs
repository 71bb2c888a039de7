//! `decide`: request facts + classification + policy -> decision. Pure.

use serde::Serialize;

use crate::classify::Classification;
use crate::confidence::Signal;
use crate::policy::{Action, BackendKind, DataClass, Lane, Policy, Route, Rule, VerifierBusy};
use crate::protect::{Detected, Found};
use crate::safety::SafetyVerdict;

/// What the caller knows about a request besides its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestFacts {
    /// Lane asked for by header or API key; `interactive` if none.
    pub lane: Lane,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Outcome {
    /// Try `route`, then `fallbacks` in order. Every one of them may receive
    /// the request's data class.
    Route {
        route: String,
        fallbacks: Vec<String>,
        /// Set when `route` is a cascade's fast route: judge its answer first.
        #[serde(skip_serializing_if = "Option::is_none")]
        cascade: Option<CascadePlan>,
    },
    Refuse {
        message: String,
    },
    Handoff {
        message: String,
    },
}

/// How to judge the fast answer of a cascade, and where to go if it fails.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CascadePlan {
    /// The escalation route and its fallbacks, filtered by data class like any chain.
    pub escalate: Vec<String>,
    pub signal: Signal,
    pub threshold: f64,
    pub hold_tokens: usize,
    pub when_verifier_busy: VerifierBusy,
    /// The safety classifier judged the request safe and the policy
    /// escalates over-refusals: a fast answer that is a refusal escalates.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub over_refusal: bool,
}

/// Everything needed to explain, log and replay a routing decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub policy_id: String,
    /// The rule that decided; `None` when the default route applied.
    pub rule_id: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub data_class: DataClass,
    pub family: Option<String>,
    pub categories: Vec<String>,
    /// The safety classifier's verdict, when the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyVerdict>,
    pub lane: Lane,
    /// The family's TTFT budget, which caps every route's TTFT timeout.
    pub max_ttft_ms: Option<u64>,
    /// A route that gets a mirrored copy (never returned to the client).
    pub shadow: Option<String>,
    /// Prompt difficulty score (0..1) from the policy's model.
    pub score: f64,
    /// The threshold the score was compared with, for difficulty rules.
    pub threshold: Option<f64>,
    /// Routes in the chain that were skipped because they may not receive
    /// this data class (or are not embedded, for a `local` finding).
    pub excluded: Vec<String>,
    /// The `[protect]` detectors' findings, by detector (never the text).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detected: Vec<Detected>,
    /// A finding's class keeps this request on embedded routes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
    /// Where the findings are, for the gateway to redact; never recorded.
    #[serde(skip)]
    pub found: Vec<Found>,
    /// One human-readable line, ASCII so it can travel in an HTTP header.
    pub reason: String,
}

fn applies(rule: &Rule, c: &Classification, facts: &RequestFacts) -> bool {
    let w = &rule.when;
    (w.categories.is_empty() || w.categories.iter().any(|cat| c.categories.contains(cat)))
        && w.data_class.is_none_or(|min| c.data_class >= min)
        && w.lane.is_none_or(|lane| lane == facts.lane)
        && w.family.as_ref().is_none_or(|f| c.family.as_ref() == Some(f))
        && w.unsafe_.as_ref().is_none_or(|u| u.holds(c.safety.as_ref()))
}

pub fn decide(facts: &RequestFacts, c: &Classification, policy: &Policy) -> Decision {
    let score = policy.difficulty.score(&c.features);
    let mut d = Decision {
        policy_id: policy.id.clone(),
        rule_id: None,
        outcome: Outcome::Refuse { message: String::new() },
        data_class: c.data_class,
        family: c.family.clone(),
        categories: c.categories.clone(),
        safety: c.safety.clone(),
        lane: facts.lane,
        max_ttft_ms: c.family.as_deref().and_then(|f| policy.family(f)).and_then(|f| f.max_ttft_ms),
        shadow: None,
        score,
        threshold: None,
        excluded: Vec::new(),
        detected: c.detected.clone(),
        local_only: c.local_only,
        found: c.found.clone(),
        reason: String::new(),
    };
    decide_rules(facts, c, policy, &mut d);
    d.reason.push_str(&detected_suffix(&d.detected));
    d
}

/// `; detected email x3 (internal, redact), …` for the reason; empty
/// when nothing was.
fn detected_suffix(detected: &[Detected]) -> String {
    if detected.is_empty() {
        return String::new();
    }
    let found: Vec<String> = detected
        .iter()
        .map(|f| {
            let action = f.action.map_or(String::new(), |a| format!(", {}", a.as_str()));
            format!("{} x{} ({}{action})", f.detector, f.count, f.class.as_str())
        })
        .collect();
    format!("; detected {}", found.join(", "))
}

fn decide_rules(facts: &RequestFacts, c: &Classification, policy: &Policy, d: &mut Decision) {
    let score = d.score;
    let Some(rule) = policy.rules.iter().find(|r| applies(r, c, facts)) else {
        route_to(policy, &policy.default_route, "no rule matched: default route".into(), d);
        return;
    };
    d.rule_id = Some(rule.id.clone());
    match &rule.then {
        Action::Refuse { message } => {
            d.reason = format!("rule {}: {} -> refused", rule.id, matched(c));
            d.outcome = Outcome::Refuse { message: message.clone() };
        }
        Action::Handoff { message } => {
            d.reason = format!("rule {}: {} -> handed to a human", rule.id, matched(c));
            d.outcome = Outcome::Handoff { message: message.clone() };
        }
        Action::Route { route } => {
            route_to(policy, route, format!("rule {}: {}", rule.id, matched(c)), d);
        }
        Action::Difficulty { fast, escalate, threshold } => {
            d.threshold = Some(*threshold);
            let (target, cmp) = if score >= *threshold { (escalate, ">=") } else { (fast, "<") };
            route_to(policy, target, format!("rule {}: difficulty {score:.3} {cmp} {threshold}", rule.id), d);
        }
        Action::Cascade { fast, escalate, signal, threshold, hold_tokens, when_verifier_busy } => {
            d.threshold = Some(*threshold);
            route_to(policy, fast, format!("rule {}: cascade", rule.id), d);
            if let Outcome::Route { route, cascade, .. } = &mut d.outcome {
                let (chain, _) = allowed_chain(policy, escalate, d.data_class, d.local_only);
                if route == fast && !chain.is_empty() {
                    d.reason.push_str(&format!(", escalating to {} if {} < {threshold}", chain[0], signal.as_str()));
                    *cascade = Some(CascadePlan {
                        escalate: chain,
                        signal: *signal,
                        threshold: *threshold,
                        hold_tokens: *hold_tokens,
                        when_verifier_busy: *when_verifier_busy,
                        // Only for a request the classifier cleared: a refusal
                        // of an unsafe one (which a rule ordered after this
                        // cascade would have caught) is the right answer.
                        over_refusal: policy.safety.as_ref().is_some_and(|s| s.file.escalate_over_refusals)
                            && c.safety.as_ref().is_some_and(|v| policy.safety_clears(v)),
                    });
                }
            }
        }
    }
    if let (Some(shadow), Outcome::Route { .. }) = (&rule.shadow, &d.outcome) {
        let allowed = policy.route(&shadow.route).is_some_and(|r| admits(r, d.data_class, d.local_only));
        if c.sample < shadow.fraction && allowed {
            d.shadow = Some(shadow.route.clone());
            d.reason.push_str(&format!("; mirrored to {}", shadow.route));
        }
    }
}

/// The decision for a request that names its route itself (an operator, or
/// the eval runner's `route:NAME` targets measuring one route): that route
/// alone, no fallbacks, no shadow, and only if it may receive the request's
/// data class. Safety comes first: where the policy's rules would refuse the
/// request or hand it to a person, that is the decision, forced or not.
/// `None` if the policy has no such route.
pub fn decide_forced(facts: &RequestFacts, c: &Classification, policy: &Policy, route: &str) -> Option<Decision> {
    let r = policy.route(route)?;
    let mut ruled = decide(facts, c, policy);
    let safety_rule = ruled
        .rule_id
        .as_deref()
        .and_then(|id| policy.rules.iter().find(|rule| rule.id == id))
        .is_some_and(|rule| rule.then.is_safety());
    if safety_rule {
        ruled.reason.push_str(&format!("; route {route} was forced, but safety rules come first"));
        return Some(ruled);
    }
    let allowed = admits(r, c.data_class, c.local_only);
    let (outcome, reason) = if allowed {
        (
            Outcome::Route { route: route.to_string(), fallbacks: Vec::new(), cascade: None },
            format!("route forced by the request -> {route}"),
        )
    } else {
        let only = if c.local_only { " (embedded routes only)" } else { "" };
        let message =
            format!("This request contains {} data{only} and route {route} may not receive it.", c.data_class.as_str());
        (
            Outcome::Refuse { message },
            format!("route forced by the request -> refused: {route} may not receive {} data", c.data_class.as_str()),
        )
    };
    let reason = reason + &detected_suffix(&ruled.detected);
    Some(Decision {
        rule_id: None,
        outcome,
        max_ttft_ms: None,
        shadow: None,
        threshold: None,
        excluded: if allowed { Vec::new() } else { vec![route.to_string()] },
        reason,
        ..ruled
    })
}

fn matched(c: &Classification) -> String {
    let unsafe_ = c.safety.as_ref().map_or(String::new(), |v| format!("unsafe {:.3} ({}), ", v.score, v.category));
    if c.categories.is_empty() {
        format!("{unsafe_}{} data", c.data_class.as_str())
    } else {
        format!("{unsafe_}category {} ({} data)", c.categories.join("+"), c.data_class.as_str())
    }
}

/// `primary` and its fallback chain (followed transitively, each once),
/// split into the routes that may receive `class` and those that may not.
fn allowed_chain(policy: &Policy, primary: &str, class: DataClass, local_only: bool) -> (Vec<String>, Vec<String>) {
    let mut chain: Vec<&str> = vec![primary];
    let mut i = 0;
    while i < chain.len() {
        if let Some(r) = policy.route(chain[i]) {
            for fb in &r.fallback {
                if !chain.contains(&fb.as_str()) {
                    chain.push(fb);
                }
            }
        }
        i += 1;
    }
    chain
        .into_iter()
        .map(str::to_string)
        .partition(|name| policy.route(name).is_some_and(|r| admits(r, class, local_only)))
}

/// The data boundary: may `route` receive a prompt of `class`?
fn admits(route: &Route, class: DataClass, local_only: bool) -> bool {
    route.allowed_classes.contains(&class) && (!local_only || route.backend == BackendKind::Embedded)
}

/// Routes to `primary`, or the first route of its chain that may receive the data class.
fn route_to(policy: &Policy, primary: &str, why: String, d: &mut Decision) {
    let (allowed, excluded) = allowed_chain(policy, primary, d.data_class, d.local_only);
    d.excluded = excluded;
    let data = format!("{} data{}", d.data_class.as_str(), if d.local_only { " (embedded routes only)" } else { "" });
    match allowed.split_first() {
        Some((first, rest)) => {
            let via = if *first == primary {
                String::new()
            } else {
                format!(" (instead of {primary}: it may not receive {data})")
            };
            d.reason = format!("{why} -> {first}{via}");
            d.outcome = Outcome::Route { route: first.clone(), fallbacks: rest.to_vec(), cascade: None };
        }
        None => {
            d.reason = format!("{why} -> refused: no route in the chain of {primary} may receive {data}");
            d.outcome = Outcome::Refuse {
                message: format!("This request contains {data} and no permitted route can serve it."),
            };
        }
    }
}
