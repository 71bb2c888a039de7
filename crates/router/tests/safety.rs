//! The safety classifier's verdict in decisions: `when.unsafe` rules, the
//! over-refusal flag on cascades, forced routes, and the loader's checks.

use switchyard_router::safety::{encode_floats, SAFE};
use switchyard_router::*;

/// A two-feature head: feature 0 says violence, feature 1 self-harm.
fn policy(extra_rules: &str, escalate_over_refusals: bool) -> String {
    format!(
        r#"version = "s.1"
default_route = "fast"

[[routes]]
name = "fast"
backend = "embedded"
model = "smollm2-135m"
allowed_classes = ["public"]

[[routes]]
name = "strong"
backend = "embedded"
model = "qwen2.5-coder-0.5b"
allowed_classes = ["public"]

[categories]
weapons = ["\\bbuild a bomb\\b"]

[[rules]]
id = "patterns"
when = {{ categories = ["weapons"] }}
then = {{ action = "refuse", message = "no (patterns)" }}

[[rules]]
id = "handoff-self-harm"
when = {{ unsafe = {{ above = 0.5, categories = ["self_harm"] }} }}
then = {{ action = "handoff", message = "a person will call" }}

[[rules]]
id = "refuse-unsafe"
when = {{ unsafe = {{ above = 0.5 }} }}
then = {{ action = "refuse", message = "no" }}
{extra_rules}
[[rules]]
id = "cascade"
then = {{ action = "cascade", fast = "fast", escalate = "strong", threshold = -0.5 }}

[safety]
model = "gemma3-270m"
escalate_over_refusals = {escalate_over_refusals}

[safety.head]
classes = ["{SAFE}", "violence", "self_harm"]
dim = 2
mean = "{zero}"
scale = "{one}"
weights = "{weights}"
bias = [2.0, 0.0, 0.0]
"#,
        zero = encode_floats([0.0, 0.0]),
        one = encode_floats([1.0, 1.0]),
        weights = encode_floats([0.0, 0.0, 4.0, 0.0, 0.0, 4.0]),
    )
}

fn judged(p: &Policy, prompt: &str, embedding: [f32; 2]) -> Classification {
    let mut c = classify(&[prompt.to_string()], &Declared::default(), p);
    c.safety = p.safety.as_ref().and_then(|s| s.head.verdict(&embedding));
    c
}

#[test]
fn the_verdict_refuses_hands_off_or_lets_through() {
    let p = Policy::from_toml(&policy("", true)).unwrap();
    let facts = RequestFacts::default();
    let d = decide(&facts, &judged(&p, "q", [3.0, 0.0]), &p);
    assert_eq!(d.rule_id.as_deref(), Some("refuse-unsafe"));
    assert!(d.reason.contains("unsafe 1.000 (violence)"), "{}", d.reason);
    assert_eq!(d.safety.as_ref().unwrap().category, "violence");
    let d = decide(&facts, &judged(&p, "q", [0.0, 3.0]), &p);
    assert!(matches!(d.outcome, Outcome::Handoff { .. }), "{d:?}");
    let d = decide(&facts, &judged(&p, "q", [0.0, 0.0]), &p);
    assert_eq!(d.rule_id.as_deref(), Some("cascade"));
    let Outcome::Route { cascade: Some(plan), .. } = &d.outcome else { panic!("{d:?}") };
    assert!(plan.over_refusal, "the classifier cleared it: a refusal escalates");
    // Not judged (the patterns stage decided, or no classifier): no flag.
    let d = decide(&facts, &classify(&["q".into()], &Declared::default(), &p), &p);
    let Outcome::Route { cascade: Some(plan), .. } = &d.outcome else { panic!("{d:?}") };
    assert!(!plan.over_refusal);
    let off = Policy::from_toml(&policy("", false)).unwrap();
    let d = decide(&facts, &judged(&off, "q", [0.0, 0.0]), &off);
    let Outcome::Route { cascade: Some(plan), .. } = &d.outcome else { panic!("{d:?}") };
    assert!(!plan.over_refusal, "off unless the policy says so");
}

#[test]
fn only_a_cleared_request_escalates_a_refusal() {
    // Without a catch-all unsafe rule, a high-scoring violence request
    // reaches the cascade: its refusal is the right answer, not an
    // over-refusal.
    let text = policy("", true).replace(
        "[[rules]]\nid = \"refuse-unsafe\"\nwhen = { unsafe = { above = 0.5 } }\nthen = { action = \"refuse\", message = \"no\" }\n",
        "",
    );
    let p = Policy::from_toml(&text).unwrap();
    let d = decide(&RequestFacts::default(), &judged(&p, "q", [3.0, 0.0]), &p);
    let Outcome::Route { cascade: Some(plan), .. } = &d.outcome else { panic!("{d:?}") };
    assert!(!plan.over_refusal, "{d:?}");
}

#[test]
fn a_category_held_to_its_own_threshold() {
    // An unsure request ([0, 0] scores 0.213, filed under violence, the
    // first of two equal categories) passes a rule at 0.5 but not one
    // that holds violence to 0.1; self-harm keeps the rule's 0.5.
    let strict = policy("", true).replace(
        "when = { unsafe = { above = 0.5 } }",
        "when = { unsafe = { above = 0.5, above_for = { violence = 0.1 } } }",
    );
    let p = Policy::from_toml(&strict).unwrap();
    let unsure = judged(&p, "q", [0.0, 0.0]);
    let v = unsure.safety.clone().unwrap();
    assert_eq!(v.category, "violence");
    assert!((0.1..0.5).contains(&v.score), "{v:?}");
    let d = decide(&RequestFacts::default(), &unsure, &p);
    assert_eq!(d.rule_id.as_deref(), Some("refuse-unsafe"), "{d:?}");
    assert!(!p.safety_clears(&v), "a score over its category's threshold is not cleared");
    let as_self_harm = SafetyVerdict { category: "self_harm".into(), ..v.clone() };
    assert!(p.safety_clears(&as_self_harm), "other categories keep the rule's threshold");
    let loose = Policy::from_toml(&policy("", true)).unwrap();
    assert!(loose.safety_clears(&v));
    let d = decide(&RequestFacts::default(), &judged(&loose, "q", [0.0, 0.0]), &loose);
    assert_eq!(d.rule_id.as_deref(), Some("cascade"), "{d:?}");

    let err = |text: &str| Policy::from_toml(text).unwrap_err().to_string();
    let e = err(&strict.replace("violence = 0.1", "fraud = 0.1"));
    assert!(e.contains("rules[2].when.unsafe.above_for.fraud") && e.contains("violence, self_harm"), "{e}");
    let e = err(&strict.replace("violence = 0.1", "violence = 1.5"));
    assert!(e.contains("rules[2].when.unsafe.above_for.violence"), "{e}");
}

#[test]
fn a_forced_route_does_not_skip_the_classifier() {
    let p = Policy::from_toml(&policy("", true)).unwrap();
    let d = decide_forced(&RequestFacts::default(), &judged(&p, "q", [3.0, 0.0]), &p, "strong").unwrap();
    assert!(matches!(d.outcome, Outcome::Refuse { .. }), "{d:?}");
    assert!(d.reason.contains("safety rules come first"), "{}", d.reason);
    let d = decide_forced(&RequestFacts::default(), &judged(&p, "q", [0.0, 0.0]), &p, "strong").unwrap();
    assert!(matches!(d.outcome, Outcome::Route { .. }));
}

#[test]
fn the_classifier_model_is_one_the_policy_runs() {
    let p = Policy::from_toml(&policy("", true)).unwrap();
    assert_eq!(p.embedded_models(), ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]);
}

#[test]
fn unsafe_conditions_are_checked_against_the_head() {
    let err = |text: &str| Policy::from_toml(text).unwrap_err().to_string();
    let bad = policy(
        "[[rules]]\nid = \"x\"\nwhen = { unsafe = { above = 0.5, categories = [\"fraud\"] } }\nthen = { action = \"refuse\", message = \"no\" }\n",
        true,
    );
    let e = err(&bad);
    assert!(e.contains("rules[3].when.unsafe.categories[0]") && e.contains("violence, self_harm"), "{e}");
    let e = err(&policy("", true).replace("above = 0.5 }", "above = 1.5 }"));
    assert!(e.contains("rules[2].when.unsafe.above"), "{e}");
    let cut = policy("", true);
    let without = &cut[..cut.find("[safety]").unwrap()];
    let e = err(without);
    assert!(e.contains("rules[1].when.unsafe") && e.contains("switchyard safety calibrate"), "{e}");
    let e = err(&policy("", true).replace("bias = [2.0, 0.0, 0.0]", "bias = [2.0, 0.0]"));
    assert!(e.contains("safety.head.bias"), "{e}");
}
