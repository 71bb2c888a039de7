//! The tools' client for a switchyard server's `/admin` API (policy
//! apply and rollback, injected faults): one base URL, one key, JSON in
//! and out, and every non-2xx answer turned into an error that carries
//! the server's own message (which names what was wrong).

use serde_json::Value;

pub use reqwest::Method;

/// A switchyard server, as an operator reaches it.
#[derive(Debug, Clone)]
pub struct Admin {
    client: reqwest::Client,
    base: String,
    /// `Bearer` key; `None` for a server without keys.
    key: Option<String>,
}

/// What an admin call sends.
pub enum Body {
    None,
    Json(Value),
    /// A file as is (a policy's TOML).
    Text(String),
}

impl Admin {
    /// `base`: the server's root (`http://127.0.0.1:8080`), with or
    /// without a trailing `/` or `/v1`.
    pub fn new(base: &str, key: Option<String>) -> Self {
        let base = base.trim_end_matches('/').trim_end_matches("/v1").to_string();
        Self { client: reqwest::Client::new(), base, key }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The `Authorization` header a chat request to this server needs.
    pub fn auth_header(&self) -> Option<(String, String)> {
        self.key.as_ref().map(|k| ("authorization".to_string(), format!("Bearer {k}")))
    }

    /// Calls `path` and returns the answer's JSON (`null` for an empty
    /// body). A non-2xx answer is an error with its status and message.
    pub async fn call(&self, method: Method, path: &str, body: Body) -> Result<Value, String> {
        let mut req = self.client.request(method.clone(), format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Text(t) => req.header("content-type", "text/plain; charset=utf-8").body(t),
        };
        let resp = req.send().await.map_err(|e| format!("{method} {path}: cannot reach {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(json);
        }
        let message =
            json.pointer("/error/message").and_then(Value::as_str).map_or_else(|| json.to_string(), str::to_string);
        Err(format!("{method} {path}: {status}: {message}"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, String> {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| format!("GET /metrics: cannot reach {}: {e}", self.base))?;
        resp.text().await.map_err(|e| format!("GET /metrics: {e}"))
    }
}
