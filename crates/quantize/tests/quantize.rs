//! llama.cpp's quantizer on the real SmolLM2 file: the new path declares its
//! type, loads in the engine and answers; a second run refuses to overwrite.

use switchyard_engine::{Engine, EngineSettings, GenerateRequest, OutputFormat, SamplingParams};
use switchyard_quantize::{quantize, read_file_type, sha256_file, QuantType, QuantizeError};

#[test]
fn smollm2_requantized_to_q8_0_declares_it_loads_and_answers() {
    let src = switchyard_models::ModelSpec::parse("smollm2-135m")
        .unwrap()
        .ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-q8_0.gguf");
    let mut seen = Vec::new();
    let q8: QuantType = "Q8_0".parse().unwrap();
    let done = quantize(&src, &out, q8, 2, |n| seen.push(n)).unwrap();

    assert_eq!((done.source_type.as_str(), done.requantized), ("Q4_1", true));
    assert_eq!(read_file_type(&out).unwrap(), 7, "the header says Q8_0");
    assert_eq!(sha256_file(&out).unwrap(), (done.bytes, done.sha256.clone()));
    let src_bytes = std::fs::metadata(&src).unwrap().len();
    assert!(done.bytes > src_bytes * 13 / 10, "8.5 bits a weight against 5: {} vs {src_bytes}", done.bytes);
    assert_eq!(seen.last(), Some(&done.bytes), "progress ends at the file's size");
    assert!(!dir.path().join("smollm2-q8_0.gguf.partial").exists());

    let settings = EngineSettings { threads: 2, ctx_size: 512, parallel: 1, ..Default::default() };
    let engine = Engine::load("q8", &out, settings).unwrap();
    let prompt = engine.chat_prompt(&[("user", "Name a colour.")]).unwrap();
    let mut events = engine
        .submit(GenerateRequest {
            prompt,
            max_tokens: Some(8),
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            top_logprobs: 0,
            format: OutputFormat::Text,
        })
        .unwrap();
    let mut text = String::new();
    while let Some(event) = events.blocking_recv() {
        if let switchyard_engine::Event::Token(piece) = event {
            text.push_str(&piece.text);
        }
    }
    assert!(!text.trim().is_empty(), "the quantized model answers");

    match quantize(&src, &out, q8, 2, |_| ()) {
        Err(QuantizeError::Exists { .. }) => {}
        other => panic!("an existing file is never overwritten: {other:?}"),
    }
}
