//! Draft-model speculative decoding against a real model: SmolLM2-135M
//! drafts for itself, so nearly every guess should be kept, and greedy
//! output must stay what plain decoding gives (within llama.cpp's
//! batch-split noise: see `common::assert_same_answer`). The draft length
//! is pinned (`draft-min` = `draft-max`): a draft as dear as its target
//! never pays, and the cost model would rightly guess nothing.

mod common;

use common::*;
use switchyard_engine::*;

fn drafting(parallel: u32, k: u32) -> Engine {
    let settings = EngineSettings {
        threads: 2,
        ctx_size: 4096,
        parallel,
        draft_max: k,
        draft_min: k,
        ..EngineSettings::default()
    };
    Engine::load_with_draft("smollm2-135m", &model_path(), Some(&model_path()), settings).unwrap()
}

fn plain() -> Engine {
    load(EngineSettings { threads: 2, ctx_size: 4096, parallel: 8, ..EngineSettings::default() })
}

const STORY: &str = "Write a long story about a lighthouse keeper who finds a message in a bottle. \
    Describe the island, the storm, and what the message says.";
const FACTS: &str = "List ten facts about the planet Mars, one per line.";

#[test]
fn drafted_answers_match_plain_decoding_and_keep_most_guesses() {
    let (reference, drafted) = (plain(), drafting(4, 4));
    for (prompt, max_tokens) in [(FACTS, 96), (STORY, 320)] {
        let messages = [("user", prompt)];
        let (want, p) = run(&reference, &messages, max_tokens);
        let (got, d) = run(&drafted, &messages, max_tokens);
        assert_eq!(p.timings.draft_n, 0, "the plain engine has no draft");
        assert_same_answer(&got, &want, prompt);
        // Pinned at 4 a step: about a guess per generated token, fewer
        // where an answer ends mid-draft.
        assert!(d.timings.draft_n >= d.completion_tokens / 2, "{:?}", d.timings);
        assert!(d.timings.draft_n_accepted <= d.timings.draft_n);
        // The draft is the target: only batch-split noise rejects a guess.
        assert!(d.timings.draft_n_accepted * 10 >= d.timings.draft_n * 8, "{:?}", d.timings);
    }
    let c = drafted.busy().counters();
    assert!(c.drafted > 0 && c.draft_accepted <= c.drafted, "{c:?}");
}

#[test]
fn sequences_drafting_side_by_side_each_get_their_own_answer() {
    // Eight slots: two sequences decoding may both draft (a quarter of the slots).
    let (reference, drafted) = (plain(), drafting(8, 3));
    let prompts = [FACTS, "Name five rivers in Europe and the seas they flow into."];
    let want: Vec<Answer> = prompts.iter().map(|p| run(&reference, &[("user", p)], 80).0).collect();
    let got: Vec<(Answer, Summary)> = std::thread::scope(|s| {
        let runs: Vec<_> = prompts.iter().map(|p| s.spawn(|| run(&drafted, &[("user", p)], 80))).collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((got, summary), (want, prompt)) in got.iter().zip(want.iter().zip(prompts)) {
        assert_same_answer(got, want, prompt);
        assert!(summary.timings.draft_n > 0, "{prompt}: {:?}", summary.timings);
    }
}

#[test]
fn sampled_requests_are_not_drafted_and_bad_draft_settings_are_refused() {
    let drafted = drafting(4, 4);
    let req = GenerateRequest {
        prompt: drafted.chat_prompt(&[("user", FACTS)]).unwrap(),
        max_tokens: Some(24),
        sampling: SamplingParams { temperature: 0.8, top_p: 1.0, seed: Some(3), ..Default::default() },
        stop: vec![],
        top_logprobs: 0,
        format: OutputFormat::Text,
    };
    let mut stream = drafted.submit(req).unwrap();
    let mut summary = None;
    while let Some(ev) = stream.blocking_recv() {
        if let Event::Done(s) = ev {
            summary = Some(s);
        }
    }
    assert_eq!(summary.unwrap().timings.draft_n, 0, "a sampled token is not an argmax to check a guess against");

    let settings = EngineSettings { draft_max: 2, draft_min: 3, ..EngineSettings::default() };
    let err = Engine::load_with_draft("smollm2-135m", &model_path(), Some(&model_path()), settings).err().unwrap();
    assert!(err.to_string().contains("draft-min"), "{err}");
    let missing = std::path::Path::new("/nonexistent/draft.gguf");
    let err =
        Engine::load_with_draft("smollm2-135m", &model_path(), Some(missing), EngineSettings::default()).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/draft.gguf"), "{err}");
}
