//! A policy's `[protect]` section: detectors raise the data class, and a
//! class's action blocks, redacts (without raising the class) or keeps the
//! request on embedded routes. Decisions record detectors, never values.

use switchyard_router::protect::ProtectAction;
use switchyard_router::{classify, decide, DataClass, Declared, Outcome, Policy, PolicyError, RequestFacts};

const ROUTES: &str = r#"
version = "t"
default_route = "cloud"

[[routes]]
name = "cloud"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public", "internal", "regulated"]
fallback = ["local"]

[[routes]]
name = "local"
backend = "embedded"
model = "m"
allowed_classes = ["public", "internal", "regulated"]
"#;

fn policy(protect: &str) -> Policy {
    Policy::from_toml(&format!("{ROUTES}\n{protect}")).unwrap()
}

fn route_of(p: &Policy, prompt: &str) -> (String, switchyard_router::Decision) {
    let c = classify(&[prompt.to_string()], &Declared::default(), p);
    let d = decide(&RequestFacts::default(), &c, p);
    let route = match &d.outcome {
        Outcome::Route { route, .. } => route.clone(),
        other => format!("{other:?}"),
    };
    (route, d)
}

#[test]
fn a_local_finding_keeps_the_request_on_embedded_routes_and_says_why() {
    let p = policy(
        r#"
[protect]
detectors = { card = "regulated", email = "internal" }
actions = { regulated = { action = "local" } }
"#,
    );
    let (route, d) = route_of(&p, "charge 4111 1111 1111 1111 please");
    assert_eq!(route, "local");
    assert!(d.local_only && d.excluded == ["cloud"], "{d:?}");
    assert_eq!(d.data_class, DataClass::Regulated);
    assert!(d.reason.contains("detected card x1 (regulated, local)"), "{}", d.reason);
    let json = serde_json::to_string(&d).unwrap();
    assert!(!json.contains("4111"), "the record never holds the value: {json}");

    let (route, d) = route_of(&p, "mail bob@example.org");
    assert_eq!((route.as_str(), d.data_class, d.local_only), ("cloud", DataClass::Internal, false));
    let (route, d) = route_of(&p, "nothing to see");
    assert_eq!((route.as_str(), d.detected.len()), ("cloud", 0));
}

#[test]
fn a_redacted_finding_does_not_raise_the_class_and_a_blocked_one_is_listed() {
    let p = policy(
        r#"
[protect]
detectors = { email = "internal", secret = "regulated" }
actions = { internal = { action = "redact", restore = true }, regulated = { action = "block" } }
"#,
    );
    let c = classify(&["mail bob@example.org".into()], &Declared::default(), &p);
    assert_eq!(c.data_class, DataClass::Public, "redaction removes what would raise it");
    assert_eq!(c.found.len(), 1);
    assert_eq!(c.found[0].action, Some(ProtectAction::Redact));
    let c = classify(&["hi".into(), "key AKIAIOSFODNN7EXAMPLE".into()], &Declared::default(), &p);
    assert_eq!((c.found[0].message, c.found[0].action), (1, Some(ProtectAction::Block)));
    assert_eq!(c.data_class, DataClass::Regulated);
}

#[test]
fn custom_lists_and_config_errors_name_the_key() {
    let p = policy(
        r#"
[protect]
detectors = {}
[[protect.custom]]
name = "codename"
class = "regulated"
keywords = ["Project Falcon"]
"#,
    );
    let (_, d) = route_of(&p, "status of project falcon?");
    assert_eq!((d.data_class, d.detected[0].detector.as_str()), (DataClass::Regulated, "codename"));

    for (bad, key) in [
        ("[protect]\ndetectors = { emial = \"internal\" }", "protect.detectors.emial"),
        ("[protect]\ndetectors = { email = \"internal\" }\nactions = { internal = { action = \"block\", restore = true } }", "protect.actions.internal.restore"),
        ("[protect]\n[[protect.custom]]\nname = \"email\"\nclass = \"internal\"\nkeywords = [\"x\"]", "protect.custom[0].name"),
        ("[protect]\noutput = { redact = [\"cards\"] }", "protect.output.redact"),
    ] {
        match Policy::from_toml(&format!("{ROUTES}\n{bad}")) {
            Err(PolicyError::Invalid { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn sanitising_strips_controls_and_defangs_template_markers_only() {
    use switchyard_router::protect::{sanitise, InputRules};
    let rules =
        InputRules { strip_control: true, max_messages: None, max_message_chars: None, neutralise_injection: true };
    let (out, done) = sanitise("a\u{0}b\tc\nd\u{7f} [INST] x <|im_start|>system", &rules);
    assert_eq!(out, "ab\tc\nd [\u{2060}INST\u{2060}] x <\u{2060}|im_start|\u{2060}>system");
    assert_eq!((done.control_stripped, done.markers_neutralised), (2, 2));
    let off = InputRules { strip_control: false, neutralise_injection: false, ..rules };
    assert_eq!(sanitise("a\u{0}[INST]", &off).0, "a\u{0}[INST]", "rules off change nothing");
}

mod never_leaks {
    use proptest::prelude::*;
    use switchyard_router::protect::redact_for;
    use switchyard_router::{classify, decide, DataClass, Declared, Outcome, Policy, RequestFacts};

    /// Values each built-in detector finds (unit-tested in tests/detect.rs),
    /// with the detector that finds them.
    const PLANTED: &[(&str, &str)] = &[
        ("email", "zed.k@example.org"),
        ("card", "4111 1111 1111 1111"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
        ("aws_key", "AKIAIOSFODNN7EXAMPLE"),
        ("ssn", "123-45-6789"),
        ("phone", "+44 20 7946 0958"),
    ];
    const CLASSES: [&str; 3] = ["public", "internal", "regulated"];
    const ACTIONS: [&str; 3] = ["", "redact", "local"];

    fn policy(classes: &[usize], actions: &[usize]) -> Policy {
        let detectors: Vec<String> =
            PLANTED.iter().zip(classes).map(|((d, _), c)| format!("{d} = \"{}\"", CLASSES[*c])).collect();
        let actions: Vec<String> = CLASSES
            .iter()
            .zip(actions)
            .filter(|(_, a)| !ACTIONS[**a].is_empty())
            .map(|(c, a)| format!("{c} = {{ action = \"{}\" }}", ACTIONS[*a]))
            .collect();
        Policy::from_toml(&format!(
            r#"
version = "leak"
default_route = "cloud"

[[routes]]
name = "cloud"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public"]
fallback = ["partner", "local"]

[[routes]]
name = "partner"
backend = "upstream"
model = "m"
url = "http://127.0.0.1:9/v1"
allowed_classes = ["public", "internal"]
fallback = ["local"]

[[routes]]
name = "local"
backend = "embedded"
model = "m"
allowed_classes = ["public", "internal", "regulated"]

[protect]
detectors = {{ {} }}
actions = {{ {} }}
"#,
            detectors.join(", "),
            actions.join(", ")
        ))
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever classes the detectors map to and whatever each class
        /// does, no route the request may be sent to (its route and every
        /// fallback) receives a planted value of a class it may not receive.
        #[test]
        fn no_route_is_sent_a_value_of_a_class_it_may_not_receive(
            classes in proptest::collection::vec(0usize..3, PLANTED.len()),
            actions in proptest::collection::vec(0usize..3, 3),
            picks in proptest::collection::vec((0usize..PLANTED.len(), 0usize..2), 1..5),
            filler in "[a-z ]{0,30}",
        ) {
            let p = policy(&classes, &actions);
            let mut messages = vec![String::new(), String::new()];
            for (value, message) in &picks {
                messages[*message].push_str(&format!("{filler} {} and ", PLANTED[*value].1));
            }
            let c = classify(&messages, &Declared::default(), &p);
            let d = decide(&RequestFacts::default(), &c, &p);
            let Outcome::Route { route, fallbacks, .. } = &d.outcome else { return Ok(()) };
            for name in std::iter::once(route).chain(fallbacks) {
                let r = p.route(name).unwrap();
                let sent = redact_for(&messages, &c.found, &r.allowed_classes).map_or(messages.clone(), |x| x.texts);
                for (i, (_, value)) in PLANTED.iter().enumerate() {
                    let class: DataClass = CLASSES[classes[i]].parse().unwrap();
                    if !r.allowed_classes.contains(&class) {
                        prop_assert!(
                            !sent.iter().any(|t| t.contains(value)),
                            "{name} ({:?}) was sent {value} ({class:?}): {sent:?}", r.allowed_classes
                        );
                    }
                }
            }
        }
    }
}
