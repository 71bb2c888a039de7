//! Serde round-trips of the examples in OpenAI's API reference: what a client
//! sends must parse, and what we serialize must be what OpenAI would return.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use switchyard_wire::*;

fn roundtrip<T: DeserializeOwned + Serialize>(example: Value) -> T {
    let parsed: T = serde_json::from_value(example.clone()).expect("documented example parses");
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back, example, "re-serialized form differs from the documented one");
    parsed
}

#[test]
fn request_default_example() {
    let req: ChatCompletionRequest = roundtrip(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}
        ]
    }));
    assert_eq!(req.messages.len(), 2);
    assert!(!req.is_stream());
}

#[test]
fn request_streaming_with_parts_and_options() {
    let req: ChatCompletionRequest = roundtrip(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What's in "}, {"type": "text", "text": "this?"}]}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "stop": ["\n", "END"],
        "max_completion_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
        "logprobs": true,
        "top_logprobs": 2,
        "n": 1,
        "user": "user-1234"
    }));
    assert!(req.is_stream() && req.include_usage());
    assert_eq!(req.max_output_tokens(), Some(64));
    assert_eq!(req.messages[1].content.as_ref().unwrap().text().unwrap(), "What's in this?");
    assert_eq!(req.stop.unwrap().into_vec(), vec!["\n", "END"]);
}

#[test]
fn request_response_formats() {
    let req: ChatCompletionRequest = roundtrip(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "math_response", "strict": true,
            "schema": {"type": "object", "properties": {"answer": {"type": "number"}}, "required": ["answer"], "additionalProperties": false}
        }}
    }));
    assert!(matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })));
    let req: ChatCompletionRequest = roundtrip(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "x",
        "response_format": {"type": "json_object"}
    }));
    assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
    assert_eq!(req.stop, Some(Stop::One("x".into())));
}

#[test]
fn unknown_request_fields_are_kept_not_dropped() {
    let req: ChatCompletionRequest = roundtrip(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]
    }));
    assert!(req.extra.contains_key("tools"));
}

#[test]
fn image_parts_are_recognised_as_non_text() {
    let content: MessageContent = serde_json::from_value(json!([
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    ]))
    .unwrap();
    assert_eq!(content.text(), Err("image_url"));
}

#[test]
fn response_example() {
    let resp: ChatCompletion = roundtrip(json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1677652288,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    }));
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(resp.usage, Some(Usage::new(9, 12)));
}

#[test]
fn response_logprobs_example() {
    let resp: ChatCompletion = roundtrip(json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1702685778,
        "model": "gpt-4o-mini",
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I assist you today?"},
            "logprobs": {"content": [{
                "token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111],
                "top_logprobs": [
                    {"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111]},
                    {"token": "Hi", "logprob": -1.3190403, "bytes": [72, 105]}
                ]
            }]},
            "finish_reason": "length"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    }));
    let lp = resp.choices[0].logprobs.as_ref().unwrap().content.as_ref().unwrap();
    assert_eq!(lp[0].top_logprobs.len(), 2);
}

#[test]
fn chunk_examples() {
    let first: ChatCompletionChunk = roundtrip(json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]
    }));
    assert_eq!(first.choices[0].delta.role, Some(Role::Assistant));
    let last: ChatCompletionChunk = roundtrip(json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]
    }));
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::Stop));
    let usage: ChatCompletionChunk = roundtrip(json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    }));
    assert_eq!(usage.usage.unwrap().total_tokens, 21);
}

#[test]
fn error_and_models_examples() {
    let err: ErrorBody = roundtrip(json!({"error": {
        "message": "The model `gpt-5` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": null, "code": "model_not_found"
    }}));
    assert_eq!(err.error.code.as_deref(), Some("model_not_found"));
    let list: ModelList = roundtrip(json!({"object": "list", "data": [
        {"id": "model-id-0", "object": "model", "created": 1686935002, "owned_by": "organization-owner"}
    ]}));
    assert_eq!(list.data[0].id, "model-id-0");
}

#[test]
fn timings_ride_beside_usage() {
    let t = Timings {
        prompt_n: 9,
        cache_n: 30,
        draft_n: 12,
        draft_n_accepted: 9,
        prompt_ms: 12.5,
        predicted_n: 3,
        predicted_ms: 30.0,
        queue_ms: 0.5,
        ttft_ms: 14.0,
        itl_p50_ms: 10.0,
        itl_p99_ms: 10.5,
        itl_max_ms: 11.0,
        total_ms: 44.0,
    };
    let v = serde_json::to_value(&t).unwrap();
    for key in ["prompt_n", "cache_n", "prompt_ms", "predicted_n", "predicted_ms", "queue_ms", "ttft_ms", "total_ms"] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
    assert_eq!(serde_json::from_value::<Timings>(v).unwrap(), t);
}
