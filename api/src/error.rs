//! `ApiError`: every failure the HTTP surfaces report, as a status, a stable kind and
//! a message, rendered as `{"error": "...", "kind": "..."}` with the kind repeated in
//! the `x-shoal-error` header so scripts can branch without parsing the body.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The header that names the kind of a failure on every error response.
pub const ERROR_KIND_HEADER: &str = "x-shoal-error";

/// A failure with its status, kind and a message for people.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short kebab-case name callers can branch on.
    pub kind: &'static str,
    /// What went wrong, naming the field or limit involved.
    pub message: String,
}

impl ApiError {
    /// A failure with the given status and kind.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is wrong; the message says which part.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 404 for a named thing.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 500: our fault, never the caller's.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {error}"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, kind = self.kind, error = %self.message, "request failed");
        }
        let body = serde_json::json!({ "error": self.message, "kind": self.kind });
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(ERROR_KIND_HEADER, HeaderValue::from_static(self.kind));
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read: the connection cannot carry another
            // request, and a client that tried would see it reset.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        if self.kind == "overloaded" {
            // Queues drain in about a request's time; a second is a polite first retry.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<shoal_registry::Error> for ApiError {
    fn from(error: shoal_registry::Error) -> ApiError {
        use shoal_registry::Error as E;
        let message = error.to_string();
        match error {
            E::NotFound { .. } => ApiError::not_found(message),
            E::ModuleInUse { .. } => ApiError::new(StatusCode::CONFLICT, "in-use", message),
            E::NameTaken { .. } => ApiError::new(StatusCode::CONFLICT, "name-taken", message),
            E::ModuleNotFound(_) => {
                ApiError::bad_request(format!("{message}: upload it first with POST /v1/modules"))
            }
            E::Invalid { .. } => ApiError::bad_request(message),
            _ => ApiError::internal(message),
        }
    }
}

impl From<shoal_spec::Error> for ApiError {
    fn from(error: shoal_spec::Error) -> ApiError {
        ApiError::bad_request(error.to_string())
    }
}

impl From<shoal_runtime::Error> for ApiError {
    fn from(error: shoal_runtime::Error) -> ApiError {
        use shoal_runtime::Error as E;
        let status = match &error {
            E::InvalidModule(_) => StatusCode::BAD_REQUEST,
            E::Trap(_)
            | E::MemoryLimit { .. }
            | E::BadCgiOutput(_)
            | E::Exit(_)
            | E::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            E::OutOfFuel { .. } | E::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            E::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.kind(), error.to_string())
    }
}

/// The crate's handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error and its causes, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
