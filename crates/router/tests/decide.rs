//! Routing decisions against the example policy, and the policy loader's
//! errors.

use proptest::prelude::*;
use switchyard_router::*;

fn example() -> Policy {
    Policy::from_toml(include_str!("../../../config/policy.example.toml")).expect("example policy is valid")
}

fn run(policy: &Policy, prompt: &str, lane: Lane) -> Decision {
    let messages = vec![prompt.to_string()];
    decide(&RequestFacts { lane }, &classify(&messages, &Declared::default(), policy), policy)
}

fn route_of(d: &Decision) -> (&str, Vec<&str>) {
    match &d.outcome {
        Outcome::Route { route, fallbacks, .. } => (route.as_str(), fallbacks.iter().map(String::as_str).collect()),
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn safety_rules_refuse_or_hand_off() {
    let p = example();
    let d = run(&p, "How do I build a bomb?", Lane::Interactive);
    assert_eq!(d.rule_id.as_deref(), Some("refuse-weapons"));
    assert_eq!(d.outcome, Outcome::Refuse { message: "I can't help with that.".into() });
    let d = run(&p, "I want to hurt myself", Lane::Interactive);
    assert!(matches!(d.outcome, Outcome::Handoff { .. }));
    assert!(d.reason.contains("handoff-self-harm"), "{}", d.reason);
}

#[test]
fn lane_rule_sends_batch_traffic_to_the_batch_route() {
    let d = run(&example(), "Summarise this paragraph.", Lane::Batch);
    assert_eq!(route_of(&d), ("batch", vec!["cloud"]));
}

#[test]
fn regulated_data_never_gets_a_route_that_disallows_it() {
    let d = run(&example(), "Patient SSN 123-45-6789, explain the diagnosis step by step?", Lane::Interactive);
    assert_eq!(d.data_class, DataClass::Regulated);
    let (route, fallbacks) = route_of(&d);
    assert_eq!((route, fallbacks), ("local-strong", vec![]));
    assert_eq!(d.excluded, vec!["cloud"]);
    // Even in the batch lane, whose chain ends in the cloud.
    let d = run(&example(), "Card 4111 1111 1111 1111", Lane::Batch);
    assert_eq!(route_of(&d), ("batch", vec![]));
}

#[test]
fn difficulty_rule_splits_on_the_threshold() {
    let p = example();
    let easy = run(&p, "hi", Lane::Interactive);
    assert_eq!(route_of(&easy).0, "local-fast");
    assert!(easy.score < 0.6 && easy.threshold == Some(0.6));
    let hard = run(
        &p,
        &format!("Explain step by step why this fails and prove the fix: {}?", "x = 1 + 2; ".repeat(50)),
        Lane::Interactive,
    );
    assert_eq!(route_of(&hard), ("cloud", vec![]));
    assert!(hard.score >= 0.6, "{}", hard.score);
    assert!(hard.reason.contains(">= 0.6"), "{}", hard.reason);
}

#[test]
fn a_chain_with_no_permitted_route_refuses() {
    let p = Policy::from_toml(
        r#"
version = "t"
default_route = "cloud"
[[routes]]
name = "cloud"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:1/v1"
allowed_classes = ["public"]
[classes]
internal = ["secret"]
"#,
    )
    .unwrap();
    let d = run(&p, "the secret plan", Lane::Interactive);
    assert!(matches!(d.outcome, Outcome::Refuse { .. }));
    assert!(d.reason.contains("no route"), "{}", d.reason);
}

#[test]
fn declared_class_is_never_lowered() {
    let p = example();
    let declared = |c| Declared { data_class: Some(c), family: None };
    let c = classify(&["hello".into()], &declared(DataClass::Internal), &p);
    assert_eq!(c.data_class, DataClass::Internal);
    let c = classify(&["ssn 123-45-6789".into()], &declared(DataClass::Public), &p);
    assert_eq!(c.data_class, DataClass::Regulated);
}

#[test]
fn policy_id_changes_with_content() {
    let text = include_str!("../../../config/policy.example.toml");
    let a = Policy::from_toml(text).unwrap();
    let b = Policy::from_toml(&text.replace("threshold = 0.6", "threshold = 0.7")).unwrap();
    assert_eq!(a.version, b.version);
    assert_ne!(a.id, b.id);
    assert!(a.id.starts_with("2026-11-25.1+"));
}

#[test]
fn policy_mistakes_name_the_key() {
    let text = include_str!("../../../config/policy.example.toml");
    let err = |t: &str| Policy::from_toml(t).unwrap_err().to_string();
    assert!(err(&text.replace("route = \"batch\"", "route = \"batchh\"")).contains("rules[2].then.route"));
    assert!(err(&text.replace(
        "fallback = [\"cloud\"]\n\n[[routes]]\nname = \"cloud\"",
        "fallback = [\"nowhere\"]\n\n[[routes]]\nname = \"cloud\""
    ))
    .contains("routes[1].fallback[0]"));
    assert!(err(&text.replace("threshold = 0.6", "threshold = 6")).contains("rules[5].then.threshold"));
    assert!(err(&text.replace("default_route = \"local-fast\"", "default_route = \"x\"")).contains("default_route"));
    assert!(err(&text.replace("url = \"http://127.0.0.1:9000/v1\"", "url = \"127.0.0.1:9000/v1\""))
        .contains("routes[2].url"));
    let several = "urls = [\"http://127.0.0.1:9000/v1\", \"http://127.0.0.1:9001/v1\"]";
    let pool = Policy::from_toml(&text.replace("url = \"http://127.0.0.1:9000/v1\"", several)).unwrap();
    assert_eq!(pool.route("cloud").unwrap().upstream_urls().len(), 2);
    assert!(err(&text.replace("url = \"http://127.0.0.1:9000/v1\"", "urls = [\"http://a/v1\", \"b/v1\"]"))
        .contains("routes[2].urls"));
    assert!(err(&text.replace("url = \"http://127.0.0.1:9000/v1\"", &format!("url = \"http://a/v1\"\n{several}")))
        .contains("not both"));
    assert!(err(
        &text.replace("model = \"qwen2.5-coder-1.5b\"", "model = \"qwen2.5-coder-1.5b\"\nca_file = \"ca.pem\"")
    )
    .contains("routes[1].ca_file"));
    assert!(err(&text.replace("categories = [\"weapons\"]", "categories = [\"weapon\"]"))
        .contains("rules[0].when.categories[0]"));
    assert!(err(&text.replace("\\\\bconfidential\\\\b", "(unclosed")).contains("classes.internal[1]"));
    assert!(err(&text.replace("lane = \"fallback\"", "lane = \"slow\"")).contains("lane"));
    assert!(err(&text.replace("ttft_timeout_ms = 2000", "ttft_timeout = 2000")).contains("ttft_timeout"));
}

#[test]
fn a_cascade_plans_the_escalation_and_families_set_budgets_and_boundaries() {
    let p = example();
    let d = run(&p, "Why does this fail? ```python\nprint(1/0)\n```", Lane::Interactive);
    assert_eq!(d.family.as_deref(), Some("code"));
    assert_eq!(d.max_ttft_ms, Some(3000));
    assert_eq!(d.rule_id.as_deref(), Some("code-cascade"));
    let Outcome::Route { route, cascade: Some(plan), .. } = &d.outcome else { panic!("{d:?}") };
    assert_eq!(route, "local-fast");
    assert_eq!(plan.escalate, ["local-strong", "cloud"]);
    assert_eq!((plan.signal, plan.threshold, plan.hold_tokens), (Signal::Mean, -0.9, 16));
    assert!(d.reason.contains("escalating to local-strong if mean_logprob < -0.9"), "{}", d.reason);

    // The support family raises public-looking text to internal.
    let d = run(&p, "Where is my order?", Lane::Interactive);
    assert_eq!((d.family.as_deref(), d.data_class, d.max_ttft_ms), (Some("support"), DataClass::Internal, Some(1500)));
    // A declared family wins over detection.
    let c = classify(&["Where is my order?".into()], &Declared { data_class: None, family: Some("code".into()) }, &p);
    assert_eq!(c.family.as_deref(), Some("code"));
}

#[test]
fn shadow_sampling_is_by_request_hash_and_respects_the_fraction() {
    let p = example();
    let prompts: Vec<String> = (0..2000).map(|i| format!("```\nfn f{i}() {{}}\n```")).collect();
    let mirrored: Vec<bool> = prompts.iter().map(|q| run(&p, q, Lane::Interactive).shadow.is_some()).collect();
    let share = mirrored.iter().filter(|m| **m).count() as f64 / prompts.len() as f64;
    assert!((0.07..0.13).contains(&share), "fraction 0.1, mirrored {share}");
    let again: Vec<bool> = prompts.iter().map(|q| run(&p, q, Lane::Interactive).shadow.is_some()).collect();
    assert_eq!(mirrored, again, "the same requests are mirrored every time");
    let one = prompts.iter().position(|q| run(&p, q, Lane::Interactive).shadow.is_some()).unwrap();
    let d = run(&p, &prompts[one], Lane::Interactive);
    assert_eq!(d.shadow.as_deref(), Some("local-strong"));
    assert!(d.reason.ends_with("; mirrored to local-strong"), "{}", d.reason);
}

#[test]
fn new_policy_keys_are_validated_by_name() {
    let text = include_str!("../../../config/policy.example.toml");
    let err = |t: &str| Policy::from_toml(t).unwrap_err().to_string();
    assert!(err(&text.replace("when = { family = \"code\" }", "when = { family = \"cod\" }"))
        .contains("rules[4].when.family"));
    assert!(err(&text.replace("fraction = 0.1", "fraction = 1.5")).contains("rules[4].shadow.fraction"));
    assert!(err(&text.replace("threshold = -0.9", "threshold = 0.9")).contains("rules[4].then.threshold"));
    assert!(err(&text.replace("escalate = \"local-strong\", signal", "escalate = \"nowhere\", signal"))
        .contains("rules[4].then.escalate"));
    assert!(err(&text.replace(
        "fast = \"local-fast\", escalate = \"local-strong\"",
        "fast = \"cloud\", escalate = \"local-strong\""
    ))
    .contains("must be an embedded route"));
    assert!(err(&text.replace("signal = \"mean\"", "signal = \"median\"")).contains("median"));
    // A verify signal is scored on the escalation route's model: an upstream cannot.
    let verify = text.replace("signal = \"mean\"", "signal = \"verify_mean\"");
    assert!(Policy::from_toml(&verify).is_ok());
    assert!(err(&verify.replace("escalate = \"local-strong\", signal", "escalate = \"cloud\", signal"))
        .contains("rules[4].then.signal"));
    assert!(err(&format!("{text}\n[calibration.nope]\nsignal = \"x\"\n")).contains("calibration"));
}

/// Forcing a route picks the route, never past a safety rule or the data
/// boundary: a refused prompt stays refused, a self-harm prompt still goes
/// to a person, regulated data never reaches a route that may not have it.
#[test]
fn a_forced_route_skips_routing_rules_but_not_safety_rules_or_the_data_boundary() {
    let p = example();
    let forced = |prompt: &str, route: &str| {
        let c = classify(&[prompt.to_string()], &Declared::default(), &p);
        decide_forced(&RequestFacts::default(), &c, &p, route)
    };
    let d = forced("How do I build a bomb?", "local-fast").unwrap();
    assert_eq!(d.outcome, Outcome::Refuse { message: "I can't help with that.".into() });
    assert_eq!(d.rule_id.as_deref(), Some("refuse-weapons"));
    assert!(d.reason.contains("local-fast was forced, but safety rules come first"), "{}", d.reason);
    let d = forced("I want to hurt myself", "cloud").unwrap();
    assert!(matches!(d.outcome, Outcome::Handoff { .. }), "{d:?}");
    // A routing rule (the batch lane, a cascade) gives way to the forced route.
    let d = forced("Write a Python function that reverses a list.", "cloud").unwrap();
    assert_eq!(route_of(&d), ("cloud", vec![]));
    assert_eq!(d.rule_id, None);
    let d = forced("SSN 123-45-6789", "cloud").unwrap();
    assert!(matches!(d.outcome, Outcome::Refuse { .. }), "{d:?}");
    assert_eq!(d.excluded, ["cloud"]);
    assert!(forced("hi", "nowhere").is_none());
}

proptest! {
    /// Whatever else a prompt says, if it carries regulated data the
    /// decision never names a route (primary or fallback) that disallows it.
    #[test]
    fn regulated_prompts_stay_on_permitted_routes(
        before in "[a-zA-Z ,.?]{0,200}",
        after in "[a-zA-Z0-9 ,.?`]{0,200}",
        a in 100u32..999, b in 10u32..99, c in 1000u32..9999,
        batch in any::<bool>(),
    ) {
        let p = example();
        let prompt = format!("{before} {a}-{b}-{c} {after}");
        let lane = if batch { Lane::Batch } else { Lane::Interactive };
        let d = run(&p, &prompt, lane);
        prop_assert_eq!(d.data_class, DataClass::Regulated);
        if let Outcome::Route { route, fallbacks, cascade } = &d.outcome {
            let escalation = cascade.iter().flat_map(|c| &c.escalate);
            for name in escalation.chain(&d.shadow) {
                prop_assert!(p.route(name).unwrap().allowed_classes.contains(&DataClass::Regulated), "{} in {:?}", name, d);
            }
            for name in std::iter::once(route).chain(fallbacks) {
                prop_assert!(p.route(name).unwrap().allowed_classes.contains(&DataClass::Regulated), "{} in {:?}", name, d);
            }
        }
        // And replaying gives the same decision.
        prop_assert_eq!(&d, &run(&p, &prompt, lane));
    }
}
