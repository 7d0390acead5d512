//! Errors in OpenAI's JSON shape (`{"error": {"message", "type", "param", "code"}}`), so
//! OpenAI clients surface the message instead of failing to parse the body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What an HTTP request failed with; every one becomes a JSON error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A 400 naming the field at fault (`param`), as OpenAI's errors do.
    pub fn bad_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.into()), ..Self::bad_request(message) }
    }

    /// A parameter OpenAI defines that tandem does not implement yet: refused rather than
    /// ignored, so a client never gets output that silently differs from what it asked for.
    pub fn unsupported(param: &str, why: &str) -> Self {
        ApiError {
            code: Some("unsupported_parameter"),
            ..Self::bad_param(param, format!("{param}: {why} is not supported yet"))
        }
    }

    pub fn model_not_found(name: &str, known: &[String]) -> Self {
        let message =
            format!("the model '{name}' does not exist; this server has: {}", known.join(", "));
        ApiError {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this method is not allowed on this path",
        )
    }

    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key (send `Authorization: Bearer KEY`)",
            )
        }
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// The model's waiting queue is full: 429, which OpenAI clients retry with back-off.
    pub fn queue_full(model: &str, limit: usize) -> Self {
        let message = format!(
            "the model '{model}' has {limit} requests waiting already (--max-waiting); retry later"
        );
        ApiError {
            code: Some("queue_full"),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

/// The engine's errors: what a request could never run with is the client's fault (400);
/// anything else is the server's.
impl From<tandem_core::Error> for ApiError {
    fn from(e: tandem_core::Error) -> Self {
        use tandem_core::Error as E;
        match e {
            E::PromptTooLong { .. }
            | E::RequestTooLarge { .. }
            | E::InvalidParameter(_)
            | E::Tokenizer(_)
            | E::ChatTemplate(_) => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
