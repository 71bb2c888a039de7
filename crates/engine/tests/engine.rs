//! The engine against a real model (SmolLM2-135M, pulled and verified on
//! first use into the model cache).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::json;
use switchyard_engine::*;
use switchyard_wire::FinishReason;

fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        switchyard_models::ModelSpec::parse("smollm2-135m")
            .unwrap()
            .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet)
            .expect("pull smollm2-135m")
    })
    .clone()
}

/// The prefix cache is off: these tests hold outputs equal across batching,
/// and a cached prefix is a different batch split (see `prefix_cache.rs`).
fn settings(parallel: u32, max_queue: usize) -> EngineSettings {
    EngineSettings {
        threads: 2,
        ctx_size: 1024 * parallel,
        parallel,
        max_queue,
        prefix_cache: false,
        ..EngineSettings::default()
    }
}

/// One engine with 8 slots shared by the tests that don't need their own.
fn shared() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load("smollm2-135m", &model_path(), settings(8, 64)).unwrap())
}

fn request(engine: &Engine, user: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: engine.chat_prompt(&[("system", "You are a helpful assistant."), ("user", user)]).unwrap(),
        max_tokens: Some(24),
        sampling: SamplingParams { temperature: 0.0, top_p: 1.0, ..Default::default() },
        stop: vec![],
        top_logprobs: 0,
        format: OutputFormat::Text,
    }
}

struct Output {
    text: String,
    pieces: Vec<Piece>,
    summary: Summary,
}

fn collect(mut stream: EventStream) -> Output {
    let (mut text, mut pieces) = (String::new(), vec![]);
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            Event::Token(p) => {
                text.push_str(&p.text);
                pieces.push(p);
            }
            Event::Done(summary) => return Output { text, pieces, summary },
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "List two fruits.",
    "Why is the sky blue?",
    "What day comes after Monday?",
];

#[test]
fn greedy_output_is_identical_concurrent_or_sequential() {
    let engine = shared();
    let sequential: Vec<String> =
        PROMPTS.iter().map(|p| collect(engine.submit(request(engine, p)).unwrap()).text).collect();
    let streams: Vec<_> = PROMPTS.iter().map(|p| engine.submit(request(engine, p)).unwrap()).collect();
    let concurrent: Vec<String> = streams.into_iter().map(|s| collect(s).text).collect();
    assert!(sequential.iter().all(|t| !t.is_empty()));
    assert_eq!(sequential, concurrent);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let engine = shared();
    let run = |seed| {
        let mut r = request(engine, "Tell me a short story about a robot.");
        r.sampling = SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..Default::default() };
        collect(engine.submit(r).unwrap()).text
    };
    let a = run(1234);
    assert!(!a.is_empty());
    assert_eq!(a, run(1234));
}

#[test]
fn max_tokens_then_stop_cut_the_text() {
    let engine = shared();
    let mut r = request(engine, "Write a long story about a dragon who learns to cook.");
    r.max_tokens = Some(20);
    let full = collect(engine.submit(r.clone()).unwrap());
    assert_eq!(full.summary.finish_reason, FinishReason::Length);
    assert_eq!(full.summary.completion_tokens, 20);
    assert_eq!(full.pieces.len(), 20);

    // A stop string from the middle of that output: the text ends right before it.
    let mid = full.text.char_indices().map(|(i, _)| i).nth(full.text.chars().count() / 2).unwrap();
    let stop: String = full.text[mid..].chars().take(3).collect();
    let expect = &full.text[..full.text.find(&stop).unwrap()];
    r.stop = vec!["zzz-never".into(), stop.clone()];
    let cut = collect(engine.submit(r).unwrap());
    assert_eq!(cut.summary.finish_reason, FinishReason::Stop);
    assert_eq!(cut.text, expect, "stop {stop:?}");
    assert!(!cut.text.contains(&stop));
}

#[test]
fn json_schema_output_validates() {
    let engine = shared();
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let mut r = request(engine, "Give me a person as JSON with a name and an age.");
    r.max_tokens = Some(64);
    r.format = OutputFormat::JsonSchema(schema.clone());
    let out = collect(engine.submit(r).unwrap());
    assert_eq!(out.summary.finish_reason, FinishReason::Stop, "output: {}", out.text);
    let value: serde_json::Value = serde_json::from_str(&out.text).expect("output parses as JSON");
    assert!(jsonschema::is_valid(&schema, &value), "{value} does not match the schema");
}

#[test]
fn json_object_output_parses() {
    let engine = shared();
    let mut r = request(engine, "Give me a JSON object with the name and colour of a cat.");
    r.max_tokens = Some(256);
    r.format = OutputFormat::JsonObject;
    let out = collect(engine.submit(r).unwrap());
    assert_eq!(out.summary.finish_reason, FinishReason::Stop, "output: {}", out.text);
    let value: serde_json::Value = serde_json::from_str(&out.text).expect("output parses as JSON");
    assert!(value.is_object());
}

#[test]
fn logprobs_and_timings_are_reported() {
    let engine = shared();
    let mut r = request(engine, "What is the capital of France?");
    r.top_logprobs = 3;
    let out = collect(engine.submit(r).unwrap());
    for p in &out.pieces {
        assert!(p.logprob.logprob <= 0.0);
        assert_eq!(p.logprob.top_logprobs.len(), 3);
        assert!(p.logprob.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        // Greedy picks the argmax, so the chosen token is the top alternative.
        assert_eq!(p.logprob.top_logprobs[0].logprob, p.logprob.logprob);
    }
    let t = &out.summary.timings;
    assert_eq!(t.predicted_n as usize, out.pieces.len());
    assert!(t.prompt_n > 0 && t.prompt_ms > 0.0);
    assert!(t.ttft_ms >= t.queue_ms && t.total_ms >= t.ttft_ms);
}

#[test]
fn a_prompt_that_cannot_fit_is_refused_before_queueing() {
    let engine = shared();
    let long = "word ".repeat(2000);
    let r = request(engine, &long);
    match engine.submit(r) {
        Err(SubmitError::ContextExceeded { n_ctx, .. }) => assert_eq!(n_ctx, engine.n_ctx_seq()),
        other => panic!("expected ContextExceeded, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn cancelling_frees_the_slot_and_a_full_queue_refuses() {
    // One slot, one waiting place: the slot must be freed for the next request to run.
    let engine = Engine::load("smollm2-135m", &model_path(), settings(1, 1)).unwrap();
    let mut long = request(&engine, "Write a very long essay about the history of computing.");
    long.max_tokens = Some(500);
    let mut first = engine.submit(long.clone()).unwrap();
    assert!(matches!(first.blocking_recv(), Some(Event::Token(_))), "first request is running");

    let waiting = engine.submit(request(&engine, "Say hi.")).unwrap();
    assert!(matches!(engine.submit(request(&engine, "Say hi.")), Err(SubmitError::QueueFull(1))));

    drop(first); // the client goes away mid-generation
    let out = collect(waiting);
    assert!(!out.text.is_empty());
    // And the engine keeps serving afterwards.
    let again = collect(engine.submit(request(&engine, "Say bye.")).unwrap());
    assert!(!again.text.is_empty());
}

#[test]
fn the_vocabulary_alone_counts_what_the_engine_generated() {
    let engine = shared();
    let tokenizer = Tokenizer::load(&model_path()).unwrap();
    let mut exact = 0;
    for p in PROMPTS {
        let out = collect(engine.submit(request(engine, p)).unwrap());
        let (counted, generated) = (tokenizer.count(&out.text), out.summary.completion_tokens as usize);
        // Re-tokenizing text may merge or split a pair differently from how
        // it was generated, never by more than a token or two.
        assert!(counted.abs_diff(generated) <= 2, "{p}: counted {counted}, generated {generated}: {:?}", out.text);
        exact += usize::from(counted == generated);
    }
    assert!(exact >= PROMPTS.len() / 2, "only {exact} of {} counted exactly", PROMPTS.len());
    assert_eq!(tokenizer.count(""), 0);
    // A special token's spelling in an answer is text, not the special token.
    assert!(tokenizer.count("<|im_end|>") > 1);
    assert!(matches!(Tokenizer::load(std::path::Path::new("/nonexistent.gguf")), Err(LoadError::Missing(_))));
}

#[test]
fn scoring_an_answer_gives_back_the_logprobs_it_was_generated_with() {
    let engine = shared();
    let mut matched = 0;
    for p in PROMPTS {
        let req = request(engine, p);
        let prompt = req.prompt.clone();
        let out = collect(engine.submit(req).unwrap());
        let generated: Vec<f64> = out.pieces.iter().map(|p| p.logprob.logprob).collect();
        let scored = engine.score(&prompt, &out.text).unwrap();
        assert!(scored.iter().all(|lp| *lp <= 0.0 && lp.is_finite()), "{p}: {scored:?}");
        // Where the text re-tokenizes as it was generated, the teacher-forced
        // logprobs are the generated ones (up to a batch's rounding).
        if scored.len() == generated.len() {
            let worst = scored.iter().zip(&generated).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst < 0.05, "{p}: scored {scored:?} vs generated {generated:?}");
            matched += 1;
        }
    }
    assert!(matched >= PROMPTS.len() / 2, "only {matched} answers re-tokenized as generated");

    // The model's verdict on answers it did not write.
    let prompt = engine.chat_prompt(&[("user", "What is the capital of France?")]).unwrap();
    let mean = |text: &str| {
        let lp = engine.score(&prompt, text).unwrap();
        lp.iter().sum::<f64>() / lp.len() as f64
    };
    assert!(mean("The capital of France is Paris.") > mean("The capital of France is Cucumber."));
    assert_eq!(engine.score(&prompt, &"word ".repeat(1000)).unwrap().len(), MAX_SCORED_TOKENS);
    assert!(matches!(engine.score(&prompt, ""), Err(ScoreError::Empty)));
    assert!(matches!(engine.score(&[], "Paris"), Err(ScoreError::Empty)));
    let long = engine.chat_prompt(&[("user", &"please ".repeat(1100))]).unwrap();
    assert!(
        matches!(engine.score(&long, "Paris"), Err(ScoreError::ContextExceeded { n_ctx: 1024, .. })),
        "{:?}",
        engine.score(&long, "Paris")
    );
}
