//! KV reuse across requests, against a real model (SmolLM2-135M): a later
//! turn prefills only what is new, answers as a cold engine does, a prompt
//! shared with a running sequence is copied from it, and conversations
//! beyond the slots come back from host memory.
//!
//! "As a cold engine does" is checked within llama.cpp's batch-split
//! noise: see `common::assert_same_answer`.

mod common;

use common::*;
use switchyard_engine::*;

fn engine(parallel: u32, prefix_cache: bool, host_cache_mib: u32) -> Engine {
    load(EngineSettings {
        threads: 2,
        ctx_size: 2048 * parallel,
        parallel,
        prefix_cache,
        host_cache_mib,
        ..EngineSettings::default()
    })
}

fn run32(engine: &Engine, messages: &[(&str, &str)]) -> (Answer, Summary) {
    run(engine, messages, 32)
}

const SYSTEM: &str = "You are a patient tutor. Answer in two short sentences, plainly, without lists.";

fn questions(i: usize) -> (String, String) {
    let topics = ["rivers", "volcanoes", "bees", "glaciers", "comets", "tides"];
    let t = topics[i % topics.len()];
    (format!("Tell me one fact about {t}."), format!("Why does that matter for people who live near {t}?"))
}

/// Turn two of conversation `i`, given turn one's answer.
fn second_turn<'a>(first: &'a str, answer: &'a str, second: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("system", SYSTEM), ("user", first), ("assistant", answer), ("user", second)]
}

#[test]
fn a_later_turn_prefills_only_what_is_new_and_answers_as_a_cold_run() {
    let warm = engine(2, true, 0);
    let cold = engine(2, false, 0);
    let (first, second) = questions(0);
    let (answer, s1) = run32(&warm, &[("system", SYSTEM), ("user", &first)]);
    assert_eq!(s1.timings.cache_n, 0, "nothing was cached yet");
    assert_eq!(s1.timings.prompt_n, s1.prompt_tokens);

    let turn2 = second_turn(&first, &answer.text, &second);
    let (warm_answer, s2) = run32(&warm, &turn2);
    let (cold_answer, c2) = run32(&cold, &turn2);
    assert_same_answer(&warm_answer, &cold_answer, "turn two");
    assert_eq!(c2.timings.cache_n, 0, "the prefix cache is off on the cold engine");
    // The whole first prompt is found again, and the tokens of its answer
    // as far as the template re-renders them the same.
    assert!(s2.timings.cache_n >= s1.prompt_tokens, "reused {} of turn one's {}", s2.timings.cache_n, s1.prompt_tokens);
    assert_eq!(s2.timings.prompt_n + s2.timings.cache_n, s2.prompt_tokens);
    assert_eq!(s2.prompt_tokens, c2.prompt_tokens);

    // The same prompt again: all of it but the last token is reused.
    let (again, s3) = run32(&warm, &turn2);
    assert_same_answer(&again, &cold_answer, "turn two again");
    assert_eq!(s3.timings.prompt_n, 1);
    let load = warm.busy().counters();
    assert_eq!(load.hits, 2);
    assert_eq!(load.reused_tokens, (s2.timings.cache_n + s3.timings.cache_n) as usize);
}

#[test]
fn a_shared_system_prompt_is_prefilled_once_across_users() {
    let warm = engine(1, true, 0);
    let long_system = format!("{SYSTEM} {}", "Keep to the facts a curious ten-year-old can check. ".repeat(12));
    let (_, a) = run32(&warm, &[("system", &long_system), ("user", "What is a river delta?")]);
    let (_, b) = run32(&warm, &[("system", &long_system), ("user", "How do bees make honey?")]);
    assert_eq!(a.timings.cache_n, 0);
    let system_tokens = warm.chat_prompt(&[("system", &long_system)]).unwrap().len() as u32;
    assert!(
        b.timings.cache_n + 8 >= system_tokens,
        "reused {} of a {system_tokens}-token system prompt",
        b.timings.cache_n
    );
}

/// Users behind one system prompt, each in a slot of their own: a request
/// that arrives while another's sequence runs starts from a copy of that
/// sequence's KV for the prompt they share. Both answer as a cold engine
/// does: the copy reads the running sequence's KV and changes nothing in it.
#[test]
fn a_prompt_shared_with_a_running_sequence_is_copied_not_prefilled() {
    let warm = engine(2, true, 0);
    let cold = engine(2, false, 0);
    let long_system = format!("{SYSTEM} {}", "Keep to the facts a curious ten-year-old can check. ".repeat(12));
    let first = [("system", long_system.as_str()), ("user", "Describe a river delta, step by step, in detail.")];
    let second = [("system", long_system.as_str()), ("user", "How do bees make honey?")];

    let mut running = warm.submit(greedy(&warm, &first, 160)).unwrap();
    // Its first token means its whole prompt is in its slot's KV.
    let Some(Event::Token(head)) = running.blocking_recv() else { panic!("the first request produced no token") };
    let (copied, s) = run32(&warm, &second);
    let (mut tail, _) = collect(running);
    tail.text.insert_str(0, &head.text);
    tail.pieces.insert(0, head);

    let system_tokens = warm.chat_prompt(&[("system", &long_system)]).unwrap().len() as u32;
    assert!(
        s.timings.cache_n + 8 >= system_tokens,
        "reused {} of a {system_tokens}-token system prompt",
        s.timings.cache_n
    );
    assert_eq!(s.timings.prompt_n + s.timings.cache_n, s.prompt_tokens);
    assert_eq!(warm.busy().counters().copied, 1, "{:?}", warm.busy().counters());
    assert_same_answer(&copied, &run32(&cold, &second).0, "the request that copied");
    assert_same_answer(&tail, &run(&cold, &first, 160).0, "the sequence copied from");
}

#[test]
fn conversations_beyond_the_slots_come_back_from_host_memory() {
    const CONVERSATIONS: usize = 6;
    let warm = engine(2, true, 256);
    let slots_only = engine(2, true, 0);
    let cold = engine(2, false, 0);
    let mut firsts = Vec::new();
    for i in 0..CONVERSATIONS {
        let (first, _) = questions(i);
        let (answer, _) = run32(&warm, &[("system", SYSTEM), ("user", &first)]);
        let (same, _) = run32(&slots_only, &[("system", SYSTEM), ("user", &first)]);
        assert_same_answer(&same, &answer, &format!("conversation {i}, turn one"));
        firsts.push((first, answer.text));
    }
    assert!(warm.busy().counters().saved_sequences >= CONVERSATIONS - 2, "{:?}", warm.busy().counters());
    let (mut warm_reused, mut slots_reused) = (0, 0);
    for (i, (first, answer)) in firsts.iter().enumerate() {
        let (_, second) = questions(i);
        let turn2 = second_turn(first, answer, &second);
        let (warm_answer, w) = run32(&warm, &turn2);
        let (slots_answer, s) = run32(&slots_only, &turn2);
        let (cold_answer, _) = run32(&cold, &turn2);
        assert_same_answer(&warm_answer, &cold_answer, &format!("conversation {i}, restored from host memory"));
        assert_same_answer(&slots_answer, &cold_answer, &format!("conversation {i}, slots only"));
        let first_prompt = warm.chat_prompt(&[("system", SYSTEM), ("user", first)]).unwrap().len() as u32;
        assert!(w.timings.cache_n >= first_prompt, "conversation {i}: reused {} of {first_prompt}", w.timings.cache_n);
        warm_reused += w.timings.cache_n;
        slots_reused += s.timings.cache_n;
    }
    assert!(warm.busy().counters().restored >= CONVERSATIONS - 2, "{:?}", warm.busy().counters());
    assert!(warm_reused > slots_reused, "host memory reused {warm_reused} tokens, slots alone {slots_reused}");
}

/// A verify cascade scores the fast model's answer on the strong model and,
/// when the verdict escalates, answers there: the verdict's prefill leaves
/// the prompt's KV, so the escalated answer evaluates one token of it, and
/// answers as a cold engine does. The verdict itself is the same whether
/// the prompt was cached or not.
#[test]
fn an_escalated_answer_prefills_only_what_the_verdict_did_not() {
    let warm = engine(2, true, 0);
    let cold = engine(2, false, 0);
    let messages = [("system", SYSTEM), ("user", "Name three rivers in Europe and one fact about each.")];
    let prompt = warm.chat_prompt(&messages).unwrap();
    let fast_answer = "The Danube, the Rhine and the Loire. The Danube flows through ten countries.";

    let verdict = warm.score(&prompt, fast_answer).unwrap();
    let cold_verdict = cold.score(&prompt, fast_answer).unwrap();
    assert_eq!(verdict.len(), cold_verdict.len());
    for (i, (a, b)) in verdict.iter().zip(&cold_verdict).enumerate() {
        assert!((a - b).abs() < NOISE, "scored token {i}: {a} warm vs {b} cold");
    }

    let (escalated, s) = run32(&warm, &messages);
    assert_eq!(s.timings.cache_n as usize, prompt.len() - 1, "the verdict's prefill left the prompt");
    assert_eq!(s.timings.prompt_n, 1);
    let (reference, c) = run32(&cold, &messages);
    assert_eq!(c.timings.cache_n, 0);
    assert_same_answer(&escalated, &reference, "escalated answer");

    // A verdict on the answer just given reuses that answer's prompt too,
    // and gives back the logprobs it was generated with.
    let again = warm.score(&prompt, &escalated.text).unwrap();
    assert!(warm.busy().counters().hits >= 2);
    if again.len() == escalated.pieces.len() {
        for (i, (a, p)) in again.iter().zip(&escalated.pieces).enumerate() {
            assert!((a - p.logprob.logprob).abs() < NOISE, "token {i}: scored {a}, generated {}", p.logprob.logprob);
        }
    }
}
