//! Typed API errors, rendered as OpenAI error bodies with the right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use switchyard_engine::SubmitError;
use switchyard_wire::{ErrorBody, ErrorDetail};

/// The code of a prompt that does not fit a route's context.
pub const CONTEXT_LENGTH_EXCEEDED: &str = "context_length_exceeded";

/// Who caused a failed route attempt.
///
/// Invariant: only [`Fault::Route`] costs the route anything (a breaker
/// failure, a same-route retry, a retry-budget withdrawal), so no request,
/// however malformed or long, can push a route's breaker open for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The backend was unavailable, overloaded, slow or broken: worth a
    /// retry (within budget) and then the next route.
    Route,
    /// The prompt does not fit this route's context; a fallback with a
    /// larger one may still serve it, but not a retry here.
    TooLongForRoute,
    /// The request itself is wrong: answered as is, nothing else is tried.
    Request,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    /// Seconds, for 429/503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, code: None, param: None, message: message.into(), retry_after: None }
    }

    /// 400: the request is malformed or asks for something not supported.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self { param: param.into(), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist. Available models: {}.", available.join(", ")),
            )
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("Unknown endpoint {path}."))
            .with_code("unknown_url")
    }

    /// 504: a backend did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message).with_code("backend_timeout")
    }

    /// 502: a backend failed or could not be reached.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", message).with_code("backend_error")
    }

    /// Whose fault the error is, which decides what a fallback chain does
    /// with it (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self.status.as_u16() {
            429 | 500..=599 => Fault::Route,
            _ if self.code == Some(CONTEXT_LENGTH_EXCEEDED) => Fault::TooLongForRoute,
            _ => Fault::Request,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::ContextExceeded { .. } => {
                Self::invalid(Some("messages".into()), message).with_code(CONTEXT_LENGTH_EXCEEDED)
            }
            SubmitError::EmptyPrompt => Self::invalid(Some("messages".into()), message),
            SubmitError::InvalidFormat(_) => {
                Self::invalid(Some("response_format".into()), message).with_code("invalid_response_format")
            }
            SubmitError::QueueFull(_) => Self {
                retry_after: Some(1),
                code: Some("queue_full"),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            SubmitError::Stopped => Self {
                retry_after: Some(5),
                code: Some("engine_unavailable"),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
        }
    }
}

/// Why a response is an error, as its body says: carried on the response
/// so layers outside the handler (the audit trail) need not parse it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub message: String,
    pub code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // For the audit trail, which records refusals from the response.
        resp.extensions_mut().insert(Refusal { message: self.message, code: self.code });
        resp
    }
}
