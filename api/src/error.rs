//! [`ApiError`]: how the management API reports a failure: a status, a stable kind and a
//! message, in the JSON shape every shoal HTTP answer shares (the gateway's
//! [`error_response`](shoal_gateway::error_response)).
//!
//! [`node::Error`](shoal_node::Error) is mapped to it here, once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_node::{Conflict, Error};

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
        shoal_gateway::error_response(self.status, self.kind, &self.message)
            .map(axum::body::Body::new)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let message = error.to_string();
        match &error {
            Error::NotFound { .. } => ApiError::not_found(message),
            Error::ModuleNotFound(_) => {
                ApiError::bad_request(format!("{message}: upload it first with POST /v1/modules"))
            }
            Error::Conflict(conflict) => {
                let kind = match conflict {
                    Conflict::ModuleInUse { .. } => "in-use",
                    Conflict::NameTaken { .. } => "name-taken",
                    _ => "conflict",
                };
                ApiError::new(StatusCode::CONFLICT, kind, message)
            }
            Error::Invalid(_) => ApiError::bad_request(message),
            Error::InsufficientCapacity { .. } | Error::NoRoomInCluster { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient-capacity", message)
            }
            Error::Module(module) => ApiError::new(
                shoal_gateway::runtime_error_status(module),
                module.kind(),
                message,
            ),
            Error::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            Error::ClusterUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster-unavailable",
                message,
            ),
            Error::Storage(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage-full", message)
            }
            Error::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", message)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl From<shoal_spec::Error> for ApiError {
    fn from(error: shoal_spec::Error) -> ApiError {
        ApiError::bad_request(error.to_string())
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
