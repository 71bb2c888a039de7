//! `decide`: request facts + classification + policy -> decision. Pure.

use serde::Serialize;

use crate::classify::Classification;
use crate::policy::{Action, DataClass, Lane, Policy, Rule};

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
    Route { route: String, fallbacks: Vec<String> },
    Refuse { message: String },
    Handoff { message: String },
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
    pub categories: Vec<String>,
    pub lane: Lane,
    /// Prompt difficulty score (0..1) from the policy's model.
    pub score: f64,
    /// The threshold the score was compared with, for difficulty rules.
    pub threshold: Option<f64>,
    /// Routes in the chain that were skipped because they may not receive this data class.
    pub excluded: Vec<String>,
    /// One human-readable line, ASCII so it can travel in an HTTP header.
    pub reason: String,
}

fn applies(rule: &Rule, c: &Classification, facts: &RequestFacts) -> bool {
    let w = &rule.when;
    (w.categories.is_empty() || w.categories.iter().any(|cat| c.categories.contains(cat)))
        && w.data_class.is_none_or(|min| c.data_class >= min)
        && w.lane.is_none_or(|lane| lane == facts.lane)
}

pub fn decide(facts: &RequestFacts, c: &Classification, policy: &Policy) -> Decision {
    let score = policy.difficulty.score(&c.features);
    let mut d = Decision {
        policy_id: policy.id.clone(),
        rule_id: None,
        outcome: Outcome::Refuse { message: String::new() },
        data_class: c.data_class,
        categories: c.categories.clone(),
        lane: facts.lane,
        score,
        threshold: None,
        excluded: Vec::new(),
        reason: String::new(),
    };
    let Some(rule) = policy.rules.iter().find(|r| applies(r, c, facts)) else {
        route_to(policy, &policy.default_route, "no rule matched: default route".into(), &mut d);
        return d;
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
            route_to(policy, route, format!("rule {}: {}", rule.id, matched(c)), &mut d);
        }
        Action::Difficulty { fast, escalate, threshold } => {
            d.threshold = Some(*threshold);
            let (target, cmp) = if score >= *threshold { (escalate, ">=") } else { (fast, "<") };
            route_to(policy, target, format!("rule {}: difficulty {score:.3} {cmp} {threshold}", rule.id), &mut d);
        }
    }
    d
}

fn matched(c: &Classification) -> String {
    if c.categories.is_empty() {
        format!("{} data", c.data_class.as_str())
    } else {
        format!("category {} ({} data)", c.categories.join("+"), c.data_class.as_str())
    }
}

/// Routes to `primary`, keeping only the routes of its fallback chain
/// (followed transitively, each once) that may receive the data class.
fn route_to(policy: &Policy, primary: &str, why: String, d: &mut Decision) {
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
    let (allowed, excluded): (Vec<&str>, Vec<&str>) = chain
        .into_iter()
        .partition(|name| policy.route(name).is_some_and(|r| r.allowed_classes.contains(&d.data_class)));
    d.excluded = excluded.iter().map(|s| s.to_string()).collect();
    match allowed.split_first() {
        Some((first, rest)) => {
            let via = if *first == primary { String::new() } else { format!(" (instead of {primary}: it may not receive {} data)", d.data_class.as_str()) };
            d.reason = format!("{why} -> {first}{via}");
            d.outcome = Outcome::Route { route: first.to_string(), fallbacks: rest.iter().map(|s| s.to_string()).collect() };
        }
        None => {
            d.reason = format!("{why} -> refused: no route in the chain of {primary} may receive {} data", d.data_class.as_str());
            d.outcome = Outcome::Refuse {
                message: format!("This request contains {} data and no permitted route can serve it.", d.data_class.as_str()),
            };
        }
    }
}
