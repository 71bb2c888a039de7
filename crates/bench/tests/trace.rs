//! Traces: deterministic per seed, shaped as their scenario says, and the
//! shipped Azure trace imports with its arrival offsets intact.

use std::path::Path;

use switchyard_bench::trace::{import_azure, Scenario, Trace};

fn burst() -> Scenario {
    Scenario::Burst {
        duration_ms: 60_000.0,
        rate_per_s: 20.0,
        factor: 4.0,
        every_ms: 10_000.0,
        spike_ms: 2_000.0,
        input_tokens: 100,
        max_tokens: 50,
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    for s in [
        burst(),
        Scenario::Team { sessions: 8, turns: 5, mean_think_ms: 3_000.0, input_tokens: 200, max_tokens: 100 },
        Scenario::LongContext { requests: 50, rate_per_s: 2.0, input_range: (2_000, 6_000), output_range: (16, 512) },
    ] {
        let (a, b, c) = (s.generate(7), s.generate(7), s.generate(8));
        assert_eq!(a.to_jsonl(), b.to_jsonl(), "{s:?}");
        assert_eq!(a.sha256(), b.sha256());
        assert_ne!(a.to_jsonl(), c.to_jsonl(), "{s:?}");
        assert!(a.requests.windows(2).all(|w| w[0].at_us <= w[1].at_us), "ordered by arrival");
        assert_eq!(Trace::from_jsonl(&a.to_jsonl()).unwrap(), a, "round-trips through JSONL");
    }
}

#[test]
fn a_burst_spikes_by_its_factor() {
    let t = burst().generate(1);
    let (mut spike, mut calm) = (0usize, 0usize);
    for r in &t.requests {
        if r.at_us % 10_000_000 < 2_000_000 {
            spike += 1;
        } else {
            calm += 1;
        }
    }
    // Per second: spikes take 12 s of the 60, calm 48 s.
    let ratio = (spike as f64 / 12.0) / (calm as f64 / 48.0);
    assert!((3.0..5.0).contains(&ratio), "spike/calm rate {ratio:.2} for factor 4");
    let rate = t.requests.len() as f64 / 60.0;
    assert!((22.0..34.0).contains(&rate), "mean rate {rate:.1}/s, expected 20 * (48 + 4 * 12) / 60 = 32");
}

#[test]
fn team_sessions_are_ordered_conversations_that_grow() {
    let t =
        Scenario::Team { sessions: 6, turns: 4, mean_think_ms: 2_000.0, input_tokens: 100, max_tokens: 50 }.generate(3);
    assert_eq!(t.requests.len(), 24);
    for s in 0..6 {
        let turns: Vec<_> = t.requests.iter().filter(|r| r.session == format!("s{s}")).collect();
        assert_eq!(turns.iter().map(|r| r.turn).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(turns.windows(2).all(|w| w[0].at_us < w[1].at_us && w[0].input_tokens < w[1].input_tokens));
    }
}

#[test]
fn bad_traces_are_refused_with_the_line() {
    let ok = Scenario::Single { requests: 3, think_ms: 100.0, input_tokens: 10, max_tokens: 5 }.generate(0).to_jsonl();
    let lines: Vec<&str> = ok.lines().collect();
    let backwards = format!("{}\n{}\n", lines[1], lines[0]);
    assert!(Trace::from_jsonl(&backwards).unwrap_err().to_string().contains("line 2"));
    let empty = r#"{"at_us": 0, "session": "a", "max_tokens": 5}"#;
    assert!(Trace::from_jsonl(empty).unwrap_err().to_string().contains("input_tokens"));
}

#[test]
fn the_azure_trace_imports_with_its_offsets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/traces/azure-llm-2023/v1");
    let csv = std::fs::read_to_string(dir.join("AzureLLMInferenceTrace_code.csv")).unwrap();
    let t = import_azure(&csv).unwrap();
    assert_eq!(t.requests.len(), 8_819);
    // First rows: 18:17:03.97996 (4808 -> 10 tokens), then 52 ms later (3180 -> 8).
    assert_eq!((t.requests[0].at_us, t.requests[0].input_tokens, t.requests[0].max_tokens), (0, Some(4808), 10));
    assert_eq!(t.requests[1].at_us, 52_000);
    assert!((3_000_000.0..3_700_000.0).contains(&t.duration_ms()), "about an hour: {} ms", t.duration_ms());
    assert!(import_azure("a,b\n1,2").unwrap_err().to_string().contains("not an Azure"));
    assert!(import_azure("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,x,3\n")
        .unwrap_err()
        .to_string()
        .contains("line 2"));
}

#[test]
fn recorded_traffic_becomes_a_trace_with_its_offsets_lengths_and_headers() {
    use switchyard_bench::trace::{from_recorded, Recorded};
    let lane = std::collections::BTreeMap::from([("x-switchyard-lane".to_string(), "batch".to_string())]);
    let records = [
        Recorded { created_ms: 1_000_250, prompt_tokens: Some(40), completion_tokens: Some(7), headers: lane.clone() },
        Recorded { created_ms: 1_000_000, prompt_tokens: None, completion_tokens: None, headers: Default::default() },
    ];
    let (trace, defaulted) = from_recorded(&records, 256, 64);
    assert_eq!(defaulted, 1);
    let first = &trace.requests[0];
    assert_eq!(
        (first.at_us, first.input_tokens, first.max_tokens),
        (0, Some(256), 64),
        "unknown lengths take the defaults"
    );
    let second = &trace.requests[1];
    assert_eq!((second.at_us, second.input_tokens, second.max_tokens, &second.headers), (250_000, Some(40), 7, &lane));
    assert_ne!(first.session, second.session);
}
