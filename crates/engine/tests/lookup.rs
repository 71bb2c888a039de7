//! Prompt-lookup drafting against a real model (SmolLM2-135M): an answer
//! that quotes its context takes several tokens a step, and greedy output
//! stays what plain decoding gives (within llama.cpp's batch-split noise:
//! see `common::assert_same_answer`).

mod common;

use common::*;
use switchyard_engine::*;

fn engine(lookup_draft: u32) -> Engine {
    // Four slots: drafting stops once more than a quarter of them decode.
    load(EngineSettings { threads: 2, ctx_size: 4096, parallel: 4, lookup_draft, ..EngineSettings::default() })
}

/// A request to quote a passage, which SmolLM2 does word for word.
fn extraction() -> Vec<(&'static str, String)> {
    let passage = "The river rises in the northern hills, runs south past the old mill, and meets the sea at the \
        harbour town of Westby, where fishing boats unload their catch every morning. In spring the meadows along \
        its banks flood, and the farmers move their sheep to the higher fields until the water goes down again.";
    vec![("user", format!("Repeat the following text exactly:\n\n{passage}"))]
}

#[test]
fn a_quoting_answer_keeps_guessed_tokens_and_matches_plain_decoding() {
    let (plain, drafting) = (engine(0), engine(8));
    let messages = extraction();
    let messages: Vec<(&str, &str)> = messages.iter().map(|(r, c)| (*r, c.as_str())).collect();
    let (reference, p) = run(&plain, &messages, 160);
    let (drafted, d) = run(&drafting, &messages, 160);
    assert_eq!((p.timings.draft_n, p.timings.draft_n_accepted), (0, 0), "drafting is off");
    assert_same_answer(&drafted, &reference, "drafted");
    // How much it drafts is the cost model's call (on a CPU where a
    // two-token step costs twice a one-token step, only its periodic
    // probes); what it guesses on a quoting answer is mostly right.
    assert!(d.timings.draft_n > 0, "{:?}", d.timings);
    assert!(d.timings.draft_n_accepted * 2 > d.timings.draft_n, "{:?}: {:?}", d.timings, drafted.text);
    assert!(d.timings.draft_n_accepted <= d.timings.draft_n);
    let counters = drafting.busy().counters();
    assert_eq!(
        (counters.drafted, counters.draft_accepted),
        (d.timings.draft_n as usize, d.timings.draft_n_accepted as usize)
    );
}

#[test]
fn sampled_requests_are_never_drafted() {
    let drafting = engine(8);
    let req = GenerateRequest {
        prompt: drafting.chat_prompt(&extraction().iter().map(|(r, c)| (*r, c.as_str())).collect::<Vec<_>>()).unwrap(),
        max_tokens: Some(24),
        sampling: SamplingParams { temperature: 0.8, top_p: 1.0, seed: Some(3), ..Default::default() },
        stop: vec![],
        top_logprobs: 0,
        format: OutputFormat::Text,
    };
    let mut stream = drafting.submit(req).unwrap();
    while let Some(ev) = stream.blocking_recv() {
        if let Event::Done(s) = ev {
            assert_eq!(s.timings.draft_n, 0, "a sampled token is not an argmax to compare a guess with");
            return;
        }
    }
    panic!("no summary");
}
