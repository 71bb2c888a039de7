//! The built-in detectors: a real item and its look-alike for each, the
//! stream guard cut at every byte, and no panic on any input.

use std::sync::Arc;

use proptest::prelude::*;
use switchyard_router::detect::{self, prefix_automaton, Custom, Detectors, Guard, Placeholders};

fn found(text: &str) -> Vec<(String, String)> {
    let d = Detectors::all();
    d.scan(text).into_iter().map(|f| (f.detector.to_string(), text[f.range].to_string())).collect()
}

fn one(detector: &str, text: &str, value: &str) {
    assert_eq!(found(text), vec![(detector.to_string(), value.to_string())], "in {text:?}");
}

fn none(text: &str) {
    assert_eq!(found(text), vec![], "in {text:?}");
}

#[test]
fn each_detector_finds_its_item_and_not_its_look_alike() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("email", "write to jane.doe+billing@mail.example.co.uk today", "jane.doe+billing@mail.example.co.uk", "write to jane@localhost today"),
        ("phone", "call +44 20 7946 0958 after six", "+44 20 7946 0958", "order 2024-03-15 shipped"),
        ("phone", "call (415) 555-2671 after six", "(415) 555-2671", "page 12 of 40"),
        ("card", "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111", "order 4111 1111 1111 1112 shipped"),
        ("card", "amex 3782-822463-10005 please", "3782-822463-10005", "ref 1234567890123456"),
        ("iban", "pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00", "pay DE89 3704 0044 0532 0130 01 now"),
        ("iban", "IBAN GB82WEST12345698765432.", "GB82WEST12345698765432", "code GB82WEST12345698765433."),
        ("ssn", "ssn 123-45-6789 on file", "123-45-6789", "ssn 666-45-6789 on file"),
        ("nino", "NI number AB 12 34 56 C", "AB 12 34 56 C", "NI number GB 12 34 56 C"),
        ("dni", "DNI 12345678Z", "12345678Z", "DNI 12345678A"),
        ("ipv4", "ssh to 10.20.30.40 now", "10.20.30.40", "running version 10.0.19041.1 now"),
        ("ipv6", "host 2001:db8::8a2e:370:7334 down", "2001:db8::8a2e:370:7334", "use std::vector and 12:30:45"),
        ("jwt", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "file eyJustAName.eyJalsoNotAToken.x"),
        ("aws_key", "key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "key AKIAIOSFODNN7EXAMPL here"),
        ("github_token", "token ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5 ok", "ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5", "regex ghp_[A-Za-z0-9]{36}"),
        ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc here", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "call sk_test_helper_for_the_checkout_flow()"),
        ("openai_key", "OPENAI_API_KEY=sk-proj-Ab3De5Gh7Jk9Lm1Np3Qr5St7Vw9Xy1Za3Bc5De7", "sk-proj-Ab3De5Gh7Jk9Lm1Np3Qr5St7Vw9Xy1Za3Bc5De7", "pip install scikit-learn; import sk-learn-compat-layer-for-old-versions"),
        ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "the xox-style naming"),
        ("high_entropy", "SESSION_SECRET=Xk9fQ2mLp7RzT4vB8nW1cY6hJ3sD", "Xk9fQ2mLp7RzT4vB8nW1cY6hJ3sD", "id 550e8400-e29b-41d4-a716-446655440000 and sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ];
    for (detector, text, value, look_alike) in cases {
        one(detector, text, value);
        none(look_alike);
    }
}

#[test]
fn a_private_key_block_is_one_finding_even_cut_short() {
    let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\naFDrBz9vFqU4yV0kqJ2pW0pWJqC1f7Xk9fQ2mLp7RzT4vB8nW1cY6hJ3sD\n-----END RSA PRIVATE KEY-----";
    one("private_key", &format!("my key:\n{block}\nthanks"), block);
    let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    one("private_key", &format!("look: {cut}"), cut);
}

#[test]
fn groups_and_custom_lists_are_detectors_too() {
    assert!(detect::expand("secret").is_some_and(|d| d.contains(&"aws_key") && d.contains(&"private_key")));
    assert_eq!(detect::expand("nope"), None);
    let custom = Custom {
        name: "project".into(),
        patterns: vec![r"\bEMP-\d{6}\b".into()],
        keywords: vec!["Project Falcon".into()],
    };
    let d = Detectors::new(["email"], &[custom]).unwrap();
    let text = "emp-123456 asked about project falcon and falconry at bob@example.org";
    let got: Vec<_> = d.scan(text).into_iter().map(|f| (f.detector.to_string(), text[f.range].to_string())).collect();
    assert_eq!(
        got,
        [("project", "emp-123456"), ("project", "project falcon"), ("email", "bob@example.org")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(matches!(Detectors::new(["emial"], &[]), Err(detect::DetectError::Unknown(n)) if n == "emial"));
}

#[test]
fn placeholders_are_consistent_and_restored_across_chunks() {
    let d = Detectors::all();
    let mut p = Placeholders::default();
    let a = "mail bob@example.org or alice@example.org";
    let b = "again: bob@example.org";
    let ra = p.redact(a, &d.scan(a));
    let rb = p.redact(b, &d.scan(b));
    assert_eq!(ra, "mail [EMAIL_1] or [EMAIL_2]");
    assert_eq!(rb, "again: [EMAIL_1]");
    let answer = "I wrote to [EMAIL_1] and [EMAIL_2]; [EMAIL_9] is unknown.";
    for cut in 1..answer.len() {
        let mut r = p.restorer();
        let out = r.push(&answer[..cut]) + &r.push(&answer[cut..]) + &r.finish();
        assert_eq!(out, "I wrote to bob@example.org and alice@example.org; [EMAIL_9] is unknown.", "cut at {cut}");
    }
}

fn guard() -> Guard {
    let d = Arc::new(Detectors::all());
    let dfa = Arc::new(prefix_automaton(&d).unwrap());
    Guard::new(d, dfa)
}

#[test]
fn the_stream_guard_redacts_items_cut_at_every_byte() {
    let key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oVqQ5Bnz8xPqoAoGCCqGSM49\n-----END EC PRIVATE KEY-----";
    for (item, tag) in [
        ("4111 1111 1111 1111", "[REDACTED_CARD]"),
        ("jane.doe@example.com", "[REDACTED_EMAIL]"),
        (key, "[REDACTED_PRIVATE_KEY]"),
    ] {
        let text = format!("Here it is: {item} and that is all.");
        let want = format!("Here it is: {tag} and that is all.");
        for cut in 1..text.len() {
            for second in [cut, (cut + 3).min(text.len())] {
                let mut g = guard();
                let mut out = String::new();
                for piece in [&text[..cut], &text[cut..second], &text[second..]] {
                    let released = g.push(piece);
                    assert!(!released.contains(&item[..item.len().min(12)]), "leaked at {cut}/{second}: {released:?}");
                    out.push_str(&released);
                }
                out.push_str(&g.finish());
                assert_eq!(out, want, "cut at {cut}/{second}");
            }
        }
    }
}

#[test]
fn the_stream_guard_holds_only_what_could_still_be_an_item() {
    let mut g = guard();
    assert_eq!(g.push("The answer is forty two. "), "The answer is forty two. ");
    let released = g.push("Call me");
    assert!(released.len() >= "Call ".len(), "a plain word is held at most until it ends: {released:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scanning_and_guarding_never_panic(text in "\\PC{0,300}", cut in 0usize..300) {
        let d = Detectors::all();
        for f in d.scan(&text) {
            prop_assert!(text.get(f.range.clone()).is_some());
        }
        let mut g = guard();
        let cut = (0..=cut.min(text.len())).rev().find(|c| text.is_char_boundary(*c)).unwrap_or(0);
        let _ = g.push(&text[..cut]);
        let _ = g.push(&text[cut..]);
        let _ = g.finish();
    }

    #[test]
    fn redaction_never_sends_a_planted_value(
        before in "[a-z ]{0,40}",
        after in "[a-z ]{0,40}",
        pick in 0usize..4,
    ) {
        let values = ["4111111111111111", "bob.smith@example.net", "DE89370400440532013000", "AKIAIOSFODNN7EXAMPLE"];
        let value = values[pick];
        let text = format!("{before} {value} {after}");
        let d = Detectors::all();
        let mut p = Placeholders::default();
        let sent = p.redact(&text, &d.scan(&text));
        prop_assert!(!sent.contains(value), "{sent}");
    }
}
