//! Context length as a budget: how many prompt tokens, and prompt plus
//! completion tokens, a request may bring to a route, each limit with the
//! policy's stated reason.
//!
//! Budgets are declared per lane (`[lanes.<lane>.context]`), per route
//! (`[routes.context]`) and per family (`[families.context]`). A route's own
//! budget replaces its lane's (that is how a policy grants one route a long
//! context); a family's budget then caps whatever the route allows, since a
//! kind of work may be held tighter than the route it lands on. Each limit
//! is resolved on its own, so the one that binds names its own source and
//! reason.

use serde::{Deserialize, Serialize};

use crate::policy::{invalid, Family, Lane, Policy, PolicyError, Route};

/// One declared budget. At least one limit, and a reason, are required:
/// the reason is what the refused client reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextBudget {
    #[serde(default)]
    pub max_prompt_tokens: Option<u32>,
    /// Prompt plus completion. A request that names no `max_tokens` has its
    /// completion cut to what is left of this.
    #[serde(default)]
    pub max_total_tokens: Option<u32>,
    pub reason: String,
}

impl ContextBudget {
    pub(crate) fn validate(&self, key: &str) -> Result<(), PolicyError> {
        if self.max_prompt_tokens.is_none() && self.max_total_tokens.is_none() {
            return Err(invalid(key, "give max_prompt_tokens, max_total_tokens, or both"));
        }
        if self.max_prompt_tokens == Some(0) || self.max_total_tokens == Some(0) {
            return Err(invalid(key, "a token budget must be at least 1"));
        }
        if let (Some(p), Some(t)) = (self.max_prompt_tokens, self.max_total_tokens) {
            if p >= t {
                return Err(invalid(
                    format!("{key}.max_total_tokens"),
                    format!("must exceed max_prompt_tokens ({p}), or no prompt that fits could be answered"),
                ));
            }
        }
        if self.reason.trim().is_empty() {
            return Err(invalid(format!("{key}.reason"), "say why (a refused client reads it)"));
        }
        Ok(())
    }
}

/// A lane's settings (`[lanes.<lane>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    #[serde(default)]
    pub context: Option<ContextBudget>,
}

/// One limit that applies, and who set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    pub tokens: u32,
    /// `route <name>`, `lane <name>` or `family <name>`.
    pub source: String,
    pub reason: String,
}

/// The limits that apply to one request on one route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Budget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Limit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<Limit>,
}

/// What a request asks for, against a [`Budget`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Within budget. `max_tokens` is the completion cap to run with:
    /// the request's own, or what a total budget leaves when it gave none.
    Fits { max_tokens: Option<u32> },
    /// Over: the message names the limit, its source and its reason.
    Over { message: String },
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.total.is_none()
    }

    /// Judges a prompt of `prompt` tokens asking for at most `max_tokens`.
    pub fn fit(&self, prompt: u32, max_tokens: Option<u32>) -> Fit {
        let over = |what: &str, l: &Limit, asked: String| Fit::Over {
            message: format!(
                "{asked} is over the {what} budget of {} tokens set by {}: {}",
                l.tokens, l.source, l.reason
            ),
        };
        if let Some(l) = self.prompt.as_ref().filter(|l| prompt > l.tokens) {
            return over("prompt", l, format!("the prompt ({prompt} tokens)"));
        }
        let Some(l) = &self.total else { return Fit::Fits { max_tokens } };
        match max_tokens {
            Some(m) if u64::from(prompt) + u64::from(m) > u64::from(l.tokens) => {
                over("total", l, format!("the prompt ({prompt} tokens) plus max_tokens ({m})"))
            }
            Some(m) => Fit::Fits { max_tokens: Some(m) },
            None if prompt >= l.tokens => {
                over("total", l, format!("the prompt ({prompt} tokens) leaves no room to answer and"))
            }
            None => Fit::Fits { max_tokens: Some(l.tokens - prompt) },
        }
    }
}

impl Policy {
    /// The budget a request of `family` meets on `route`.
    pub fn context_budget(&self, route: &Route, family: Option<&str>) -> Budget {
        let from = |b: &ContextBudget, source: String| {
            let limit = |tokens: Option<u32>| {
                tokens.map(|tokens| Limit { tokens, source: source.clone(), reason: b.reason.clone() })
            };
            Budget { prompt: limit(b.max_prompt_tokens), total: limit(b.max_total_tokens) }
        };
        let routed = match (&route.context, self.lanes.get(&route.lane).and_then(|l| l.context.as_ref())) {
            (Some(b), _) => from(b, format!("route {}", route.name)),
            (None, Some(b)) => from(b, format!("lane {}", route.lane.as_str())),
            (None, None) => Budget::default(),
        };
        let family = family
            .and_then(|f| self.family(f))
            .and_then(|f: &Family| f.context.as_ref().map(|b| from(b, format!("family {}", f.name))));
        let Some(family) = family else { return routed };
        let tighter = |a: Option<Limit>, b: Option<Limit>| match (a, b) {
            (Some(a), Some(b)) => Some(if b.tokens < a.tokens { b } else { a }),
            (a, b) => a.or(b),
        };
        Budget { prompt: tighter(routed.prompt, family.prompt), total: tighter(routed.total, family.total) }
    }
}

/// Checks every declared budget, naming the key of a bad one.
pub(crate) fn validate(
    lanes: &std::collections::BTreeMap<Lane, LaneConfig>,
    routes: &[Route],
    families: &[Family],
) -> Result<(), PolicyError> {
    for (lane, config) in lanes {
        if let Some(b) = &config.context {
            b.validate(&format!("lanes.{}.context", lane.as_str()))?;
        }
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(b) = &r.context {
            b.validate(&format!("routes[{i}].context"))?;
        }
    }
    for (i, f) in families.iter().enumerate() {
        if let Some(b) = &f.context {
            b.validate(&format!("families[{i}].context"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        let text = format!(
            r#"version = "b.1"
default_route = "short"
[[routes]]
name = "short"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:1/v1"
allowed_classes = ["public"]
[[routes]]
name = "long"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:1/v1"
allowed_classes = ["public"]
context = {{ max_prompt_tokens = 8000, max_total_tokens = 9000, reason = "the long-document route" }}
[lanes.interactive]
context = {{ max_prompt_tokens = 500, max_total_tokens = 700, reason = "interactive latency" }}
{extra}"#
        );
        match Policy::from_toml(&text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn route<'a>(p: &'a Policy, name: &str) -> &'a Route {
        p.route(name).unwrap()
    }

    #[test]
    fn a_route_budget_replaces_its_lanes_and_a_family_caps_both() {
        let p = policy(
            "[[families]]\nname = \"chat\"\ncontext = { max_prompt_tokens = 300, reason = \"chat stays short\" }\n",
        );
        let short = p.context_budget(route(&p, "short"), None);
        assert_eq!(short.prompt.as_ref().unwrap().tokens, 500);
        assert_eq!(short.prompt.as_ref().unwrap().source, "lane interactive");
        let long = p.context_budget(route(&p, "long"), None);
        assert_eq!((long.prompt.as_ref().unwrap().tokens, long.total.as_ref().unwrap().tokens), (8000, 9000));
        let chat = p.context_budget(route(&p, "long"), Some("chat"));
        assert_eq!(chat.prompt.as_ref().unwrap().source, "family chat");
        assert_eq!(chat.total.as_ref().unwrap().source, "route long", "each limit resolves on its own");
    }

    #[test]
    fn fit_names_the_limit_and_cuts_an_open_completion() {
        let p = policy("");
        let b = p.context_budget(route(&p, "short"), None);
        assert_eq!(b.fit(100, None), Fit::Fits { max_tokens: Some(600) });
        assert_eq!(b.fit(100, Some(50)), Fit::Fits { max_tokens: Some(50) });
        let Fit::Over { message } = b.fit(501, None) else { panic!("501 > 500") };
        assert!(
            message.contains("500") && message.contains("lane interactive") && message.contains("interactive latency"),
            "{message}"
        );
        let Fit::Over { message } = b.fit(400, Some(301)) else { panic!("701 > 700") };
        assert!(message.contains("total budget of 700"), "{message}");
        assert!(p.context_budget(route(&p, "long"), None).fit(5000, Some(64)) == Fit::Fits { max_tokens: Some(64) });
    }

    #[test]
    fn a_bad_budget_names_its_key() {
        let bad = |extra: &str| {
            let text = format!(
                "version = \"b\"\ndefault_route = \"r\"\n[[routes]]\nname = \"r\"\nbackend = \"upstream\"\nmodel = \"m\"\n\
                 url = \"http://x/v1\"\nallowed_classes = [\"public\"]\n{extra}"
            );
            match Policy::from_toml(&text) {
                Err(PolicyError::Invalid { key, .. }) => key,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(bad("context = { reason = \"x\" }"), "routes[0].context");
        assert_eq!(bad("context = { max_prompt_tokens = 10, reason = \" \" }"), "routes[0].context.reason");
        assert_eq!(
            bad("[lanes.batch]\ncontext = { max_prompt_tokens = 10, max_total_tokens = 10, reason = \"x\" }"),
            "lanes.batch.context.max_total_tokens"
        );
    }
}
