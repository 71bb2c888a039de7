//! Arrival offsets are kept: on a paused (fake) clock, where the machine's
//! speed cannot blur them, every request of any trace goes out when the
//! trace (× time scale) says, never early and at most one tick of tokio's
//! timer (1 ms) late. The target is a closed port, so each request fails at
//! once and only the schedule is under test.

use std::time::Duration;

use proptest::prelude::*;

/// tokio's timer fires on whole milliseconds, rounding a deadline up.
const TICK_MS: f64 = 1.0;

/// Sent no earlier than `want_ms` and at most one timer tick later.
fn on_time(sent_ms: f64, want_ms: f64) -> bool {
    sent_ms >= want_ms - 1e-6 && sent_ms <= want_ms + TICK_MS + 1e-6
}
use switchyard_bench::replay::{replay, Load, Target};
use switchyard_bench::trace::{Trace, TraceRequest};

fn request(at_us: u64, session: usize, turn: u32) -> TraceRequest {
    TraceRequest {
        at_us,
        session: format!("s{session}"),
        turn,
        messages: None,
        input_tokens: Some(4),
        max_tokens: 4,
        headers: Default::default(),
    }
}

fn run(trace: &Trace, load: Load) -> Vec<switchyard_bench::replay::RequestResult> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let target = Target {
        base_url: "http://127.0.0.1:9/v1".into(),
        model: "m".into(),
        headers: vec![],
        stream: true,
        tokenizer: None,
        prompt_salt: 0,
    };
    rt.block_on(replay(trace, &target, load, Duration::from_secs(5)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn open_loop_sends_each_request_at_its_offset(offsets in prop::collection::vec(0u64..5_000_000, 1..30), scale in prop::sample::select(vec![0.1, 1.0, 2.5])) {
        let trace = Trace { requests: offsets.iter().enumerate().map(|(i, &at)| request(at, i, 0)).collect() };
        let results = run(&trace, Load::Open { time_scale: scale });
        prop_assert_eq!(results.len(), offsets.len());
        for (r, &at) in results.iter().zip(&offsets) {
            let want_ms = at as f64 / 1000.0 * scale;
            prop_assert!(on_time(r.sent_ms, want_ms) && r.lag_ms <= TICK_MS + 1e-6, "sent {} ms, scheduled {} ms, lag {}", r.sent_ms, want_ms, r.lag_ms);
            prop_assert!(!r.ok(), "a closed port fails");
        }
    }

    #[test]
    fn by_session_each_turn_follows_the_previous_answer_by_its_think_time(gaps in prop::collection::vec(0u64..2_000_000, 1..8), first in 0u64..1_000_000) {
        let mut at = first;
        let mut requests = Vec::new();
        for (turn, gap) in gaps.iter().enumerate() {
            requests.push(request(at, 0, turn as u32));
            at += gap;
        }
        let results = run(&Trace { requests }, Load::Sessions { time_scale: 1.0 });
        prop_assert!(on_time(results[0].sent_ms, first as f64 / 1000.0), "first turn sent {} ms", results[0].sent_ms);
        for (pair, gap) in results.windows(2).zip(&gaps) {
            let (prev, next) = (&pair[0], &pair[1]);
            // The failed answer took no (virtual) time: the next turn goes exactly one think time later.
            let want = prev.sent_ms + prev.e2e_ms.unwrap_or(0.0) + *gap as f64 / 1000.0;
            prop_assert!(on_time(next.sent_ms, want), "sent {} ms, expected {} ms", next.sent_ms, want);
        }
    }
}
