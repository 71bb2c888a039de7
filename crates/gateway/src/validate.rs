//! Turns a parsed chat request into engine parameters, refusing with a 400
//! (naming the parameter) anything switchyard cannot honour exactly.

use switchyard_engine::{OutputFormat, SamplingParams};
use switchyard_wire::{ChatCompletionRequest, ResponseFormat, Role};

use crate::error::ApiError;

/// Request fields OpenAI accepts that have no effect on a local model, so
/// ignoring them changes nothing the client asked for.
const INERT_FIELDS: &[&str] =
    &["store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"];

/// A chat request checked and translated, ready for the chat template.
#[derive(Debug, Clone)]
pub struct ChatParams {
    pub messages: Vec<(&'static str, String)>,
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)` when the client asked for logprobs, with k alternatives each.
    pub logprobs: Option<u32>,
    pub format: OutputFormat,
    pub stream: bool,
    pub include_usage: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param.to_string()), message)
}

/// JSON numbers are f64 on the wire; the engine samples in f32.
fn in_range(param: &str, value: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    match value {
        None => Ok(default as f32),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v as f32),
        Some(v) => {
            Err(invalid(param, format!("{param} must be between {lo} and {hi}, got {v}")).with_code("invalid_value"))
        }
    }
}

pub fn chat_params(req: &ChatCompletionRequest) -> Result<ChatParams, ApiError> {
    if let Some(key) = req.extra.keys().find(|k| !INERT_FIELDS.contains(&k.as_str())) {
        return Err(invalid(key, format!("Unsupported parameter: `{key}` is not supported by this server."))
            .with_code("unsupported_parameter"));
    }
    if req.messages.is_empty() {
        return Err(invalid("messages", "messages must contain at least one message").with_code("empty_array"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        let text = match &m.content {
            Some(c) => c.text().map_err(|kind| {
                invalid(&param, format!("content parts of type `{kind}` are not supported; send text"))
                    .with_code("unsupported_content")
            })?,
            None => return Err(invalid(&param, "content is required")),
        };
        if m.role == Role::Tool {
            return Err(invalid(&format!("messages[{i}].role"), "tool messages are not supported")
                .with_code("unsupported_value"));
        }
        messages.push((m.role.as_str(), text));
    }
    let n = req.n.unwrap_or(1);
    if n != 1 {
        return Err(invalid("n", format!("only n=1 is supported, got {n}")).with_code("unsupported_value"));
    }
    let max_tokens = match req.max_output_tokens() {
        None => None,
        Some(v) if v >= 1 => Some(u32::try_from(v).unwrap_or(u32::MAX)),
        Some(v) => {
            let param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(invalid(param, format!("{param} must be at least 1, got {v}")).with_code("invalid_value"));
        }
    };
    let temperature = in_range("temperature", req.temperature, 0.0, 2.0, 1.0)?;
    let top_p = in_range("top_p", req.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(invalid("top_p", "top_p must be greater than 0").with_code("invalid_value"));
    }
    let sampling = SamplingParams {
        temperature,
        top_p,
        seed: req.seed.map(|s| s as u64),
        presence_penalty: in_range("presence_penalty", req.presence_penalty, -2.0, 2.0, 0.0)?,
        frequency_penalty: in_range("frequency_penalty", req.frequency_penalty, -2.0, 2.0, 0.0)?,
    };
    let stop = req.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(invalid("stop", format!("at most 4 stop sequences are allowed, got {}", stop.len()))
            .with_code("invalid_value"));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if k > 20 => {
            return Err(invalid("top_logprobs", format!("top_logprobs must be between 0 and 20, got {k}"))
                .with_code("invalid_value"))
        }
        (false, Some(k)) if k > 0 => {
            return Err(invalid("top_logprobs", "top_logprobs requires logprobs to be true").with_code("invalid_value"))
        }
        (true, k) => Some(k.unwrap_or(0)),
        (false, _) => None,
    };
    let format = match &req.response_format {
        None | Some(ResponseFormat::Text) => OutputFormat::Text,
        Some(ResponseFormat::JsonObject) => OutputFormat::JsonObject,
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(schema) if schema.is_object() => OutputFormat::JsonSchema(schema.clone()),
            _ => return Err(invalid("response_format.json_schema.schema", "a JSON schema object is required")),
        },
    };
    if req.stream_options.is_some() && !req.is_stream() {
        return Err(invalid("stream_options", "stream_options is only allowed when stream is true"));
    }
    Ok(ChatParams {
        messages,
        max_tokens,
        sampling,
        stop,
        logprobs,
        format,
        stream: req.is_stream(),
        include_usage: req.include_usage(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: serde_json::Value) -> Result<ChatParams, ApiError> {
        chat_params(&serde_json::from_value(body).unwrap())
    }

    fn param_of(body: serde_json::Value) -> String {
        check(body).unwrap_err().param.unwrap()
    }

    #[test]
    fn defaults_follow_openai() {
        let p = check(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!((p.sampling.temperature, p.sampling.top_p), (1.0, 1.0));
        assert_eq!(p.max_tokens, None);
        assert!(p.logprobs.is_none() && !p.stream);
    }

    #[test]
    fn each_bad_value_names_its_parameter() {
        let m = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(param_of(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(param_of(json!({"model": "m", "messages": m, "n": 2})), "n");
        assert_eq!(param_of(json!({"model": "m", "messages": m, "max_tokens": 0})), "max_tokens");
        assert_eq!(
            param_of(json!({"model": "m", "messages": m, "max_completion_tokens": -5})),
            "max_completion_tokens"
        );
        assert_eq!(param_of(json!({"model": "m", "messages": m, "temperature": 3.5})), "temperature");
        assert_eq!(param_of(json!({"model": "m", "messages": m, "top_p": 0.0})), "top_p");
        assert_eq!(param_of(json!({"model": "m", "messages": m, "top_logprobs": 2})), "top_logprobs");
        assert_eq!(
            param_of(json!({"model": "m", "messages": m, "logprobs": true, "top_logprobs": 21})),
            "top_logprobs"
        );
        assert_eq!(param_of(json!({"model": "m", "messages": m, "stop": ["a", "b", "c", "d", "e"]})), "stop");
        assert_eq!(param_of(json!({"model": "m", "messages": m, "tools": []})), "tools");
        assert_eq!(
            param_of(
                json!({"model": "m", "messages": m, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
            ),
            "response_format.json_schema.schema"
        );
        assert_eq!(
            param_of(
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
            ),
            "messages[0].content"
        );
    }

    #[test]
    fn inert_fields_are_accepted() {
        check(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "store": false, "metadata": {}}))
            .unwrap();
    }
}
