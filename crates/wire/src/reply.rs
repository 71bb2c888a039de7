//! Reading what an OpenAI-compatible server answered, leniently: a whole
//! chat completion or one stream chunk, from any server (switchyard,
//! llama-server, vLLM, OpenAI, a mock). Unlike the strict types in
//! [`chat`](crate::chat), which are the contract switchyard itself keeps,
//! [`ChatReply`] never fails on a missing field, an unknown one, or a known
//! one of an unexpected type: what it cannot read is `None`.

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;

use crate::Timings;

/// A chat completion or a stream chunk, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ChatReply {
    #[serde(deserialize_with = "lenient")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_vec")]
    pub choices: Vec<ReplyChoice>,
    #[serde(deserialize_with = "lenient")]
    pub usage: Option<ReplyUsage>,
    /// The server's `timings` object as sent (switchyard and llama-server
    /// send one); [`ChatReply::timings`] reads it as [`Timings`].
    #[serde(deserialize_with = "object")]
    pub timings: Option<Value>,
    /// An error reported in the body: a stream's error event, or an error body.
    #[serde(deserialize_with = "error")]
    pub error: Option<ReplyError>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReplyChoice {
    #[serde(deserialize_with = "lenient")]
    pub index: Option<u32>,
    /// A completion's message.
    #[serde(deserialize_with = "lenient")]
    pub message: Option<ReplyPart>,
    /// A chunk's delta.
    #[serde(deserialize_with = "lenient")]
    pub delta: Option<ReplyPart>,
    #[serde(deserialize_with = "lenient")]
    pub logprobs: Option<ReplyLogprobs>,
    /// As sent: a server may use reasons OpenAI does not.
    #[serde(deserialize_with = "lenient")]
    pub finish_reason: Option<String>,
}

impl ReplyChoice {
    /// The delta of a chunk, else the message of a completion.
    pub fn part(&self) -> Option<&ReplyPart> {
        self.delta.as_ref().or(self.message.as_ref())
    }
}

/// A message or a delta.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReplyPart {
    #[serde(deserialize_with = "lenient")]
    pub role: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub content: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReplyLogprobs {
    #[serde(deserialize_with = "lenient_vec")]
    pub content: Vec<ReplyToken>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReplyToken {
    #[serde(deserialize_with = "lenient")]
    pub token: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub logprob: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ReplyUsage {
    #[serde(deserialize_with = "lenient")]
    pub prompt_tokens: Option<u32>,
    #[serde(deserialize_with = "lenient")]
    pub completion_tokens: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyError {
    /// `error.message`, when the error has one.
    pub message: Option<String>,
}

impl ChatReply {
    /// Reads one chunk or completion. Fails only on text that is not JSON;
    /// JSON of any other shape reads as an empty reply.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
            .or_else(|e| serde_json::from_str::<IgnoredAny>(text).map(|_| Self::default()).map_err(|_| e))
    }

    /// [`ChatReply::from_json`] of bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
            .or_else(|e| serde_json::from_slice::<IgnoredAny>(bytes).map(|_| Self::default()).map_err(|_| e))
    }

    /// The first choice, which is the answer (switchyard never sends `n` > 1).
    pub fn choice(&self) -> Option<&ReplyChoice> {
        self.choices.first()
    }

    /// The first choice's content (of its delta or its message), if any.
    pub fn content(&self) -> Option<&str> {
        self.choice()?.part()?.content.as_deref()
    }

    /// The first choice's refusal (of its delta or its message), if any.
    pub fn refusal(&self) -> Option<&str> {
        self.choice()?.part()?.refusal.as_deref()
    }

    /// The first choice's token logprobs, in order.
    pub fn logprobs(&self) -> impl Iterator<Item = f64> + '_ {
        self.choice()
            .and_then(|c| c.logprobs.as_ref())
            .into_iter()
            .flat_map(|l| l.content.iter().filter_map(|t| t.logprob))
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.choice()?.finish_reason.as_deref()
    }

    /// `timings` as switchyard and llama-server send them, if they read as such.
    pub fn timings(&self) -> Option<Timings> {
        Timings::deserialize(self.timings.as_ref()?).ok()
    }
}

/// The field as `T`, or `None` when it is null or of another shape.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(T::deserialize(Value::deserialize(d)?).ok())
}

/// The elements of an array that read as `T`; empty for anything else.
fn lenient_vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.into_iter().filter_map(|v| T::deserialize(v).ok()).collect(),
        _ => Vec::new(),
    })
}

/// A JSON object, kept as sent; `None` for anything else.
fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(Some(Value::deserialize(d)?).filter(Value::is_object))
}

/// Any non-null `error` is an error, with its `message` if it has one.
fn error<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ReplyError>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok((!v.is_null()).then(|| ReplyError { message: v.get("message").and_then(Value::as_str).map(str::to_string) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_completion_and_a_chunk_read_the_same_way() {
        let completion = ChatReply::from_json(
            &json!({
                "id": "c1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": null,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris", "refusal": null},
                             "logprobs": {"content": [{"token": "Paris", "logprob": -0.25, "bytes": [80], "top_logprobs": []}]},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                "timings": {"prompt_n": 5, "prompt_ms": 1.5, "predicted_n": 1, "predicted_ms": 0.5, "queue_ms": 0.1, "ttft_ms": 2.0, "total_ms": 2.5},
                "a_field_from_the_future": {"x": 1}
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(
            (completion.model.as_deref(), completion.content(), completion.refusal()),
            (Some("m"), Some("Paris"), None)
        );
        assert_eq!(completion.logprobs().collect::<Vec<_>>(), [-0.25]);
        assert_eq!(completion.usage, Some(ReplyUsage { prompt_tokens: Some(5), completion_tokens: Some(1) }));
        assert_eq!((completion.finish_reason(), completion.timings().map(|t| t.predicted_n)), (Some("stop"), Some(1)));
        assert_eq!(completion.error, None);

        let chunk =
            ChatReply::from_json(r#"{"choices":[{"index":0,"delta":{"refusal":"no"},"finish_reason":null}]}"#).unwrap();
        assert_eq!((chunk.content(), chunk.refusal(), chunk.usage, chunk.timings()), (None, Some("no"), None, None));
    }

    #[test]
    fn missing_odd_and_unknown_fields_read_as_none() {
        // Usage-only last chunk, with no choices.
        let usage =
            ChatReply::from_json(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#).unwrap();
        assert_eq!((usage.content(), usage.usage.and_then(|u| u.completion_tokens)), (None, Some(7)));
        // Fields of the wrong type, a finish reason OpenAI has no name for, timings of another server's shape.
        let odd = ChatReply::from_json(
            r#"{"model":7,"choices":[{"delta":{"content":["x"],"role":"assistant"},"finish_reason":"eos_token",
                "logprobs":{"content":[{"logprob":"low"},{"token":"b","logprob":-1.0},3]}}],
                "usage":{"prompt_tokens":"many","completion_tokens":2},"timings":{"predicted_per_second":40.0},"error":null}"#,
        )
        .unwrap();
        assert_eq!((odd.model.as_deref(), odd.content(), odd.finish_reason()), (None, None, Some("eos_token")));
        assert_eq!(odd.logprobs().collect::<Vec<_>>(), [-1.0], "unreadable logprobs are skipped one by one");
        assert_eq!(odd.usage, Some(ReplyUsage { prompt_tokens: None, completion_tokens: Some(2) }));
        assert!(odd.timings.is_some() && odd.timings().is_none(), "kept as sent, not read as switchyard's");
        assert_eq!(odd.error, None, "a null error is no error");
        // A delta that is not an object: the message is read instead.
        let fallback = ChatReply::from_json(r#"{"choices":[{"delta":"?","message":{"content":"whole"}}]}"#).unwrap();
        assert_eq!(fallback.content(), Some("whole"));
        // JSON of another shape is an empty reply; text that is not JSON is an error.
        assert_eq!(ChatReply::from_json("[1, 2]").unwrap(), ChatReply::default());
        assert_eq!(ChatReply::from_slice(b"\"done\"").unwrap(), ChatReply::default());
        assert!(ChatReply::from_json("{oops").is_err());
        assert!(ChatReply::from_slice(b"").is_err());
    }

    #[test]
    fn any_error_field_is_an_error() {
        let e = ChatReply::from_json(r#"{"error":{"message":"queue full","type":"rate_limit_error"}}"#).unwrap();
        assert_eq!(e.error, Some(ReplyError { message: Some("queue full".into()) }));
        let bare = ChatReply::from_json(r#"{"error":"boom"}"#).unwrap();
        assert_eq!(bare.error, Some(ReplyError { message: None }));
    }
}
