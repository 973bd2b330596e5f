//! [`KubeError`]: a failure in the Kubernetes API's wire format, a `Status` object, whose
//! `reason` clients branch on (kubectl prints `Error from server (<reason>): <message>`, the
//! Python client raises `ApiException` with it as the body).
//!
//! [`node::Error`](shoal_node::Error) is mapped to it here, once. Capacity refusals never
//! become 409, which clients read as AlreadyExists or Conflict: a workload that does not fit is
//! stored and waits (Pending), so only the quota-style 403 is left for what cannot wait.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_node::{Conflict, Error};

/// A Kubernetes API failure: the HTTP status, the `Status` reason and a message.
#[derive(Debug)]
pub(crate) struct KubeError {
    pub(crate) code: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    /// The object the failure is about, `(kind, name)`, and the fields at fault.
    pub(crate) details: Option<Box<Details>>,
}

#[derive(Debug, Default)]
pub(crate) struct Details {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) group: String,
    /// `(field, reason, message)` of each cause.
    pub(crate) causes: Vec<(String, &'static str, String)>,
}

pub(crate) type KubeResult<T> = Result<T, KubeError>;

impl KubeError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        KubeError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        KubeError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 for `kind` `name`, as kube-apiserver words it: `pods "web" not found`.
    pub(crate) fn not_found(resource: &str, name: &str) -> Self {
        KubeError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource} \"{name}\" not found"),
        )
        .about(resource, name)
    }

    /// 409 AlreadyExists for a create of an existing object.
    pub(crate) fn already_exists(resource: &str, name: &str) -> Self {
        KubeError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .about(resource, name)
    }

    /// 422 Invalid: `field` of the `kind` object `name` is refused for `reason`.
    pub(crate) fn invalid(kind: &str, name: &str, field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let mut error = KubeError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {reason}"),
        )
        .about(kind, name);
        if let Some(details) = &mut error.details {
            details
                .causes
                .push((field.to_string(), "FieldValueInvalid", reason));
        }
        error
    }

    /// Names the object the error is about in `details`.
    pub(crate) fn about(mut self, kind: &str, name: &str) -> Self {
        let details = self.details.get_or_insert_with(Box::default);
        details.kind = kind.to_string();
        details.name = name.to_string();
        self
    }

    /// Maps a node error about the object `kind` `name` (`kind` as the resource, `pods`,
    /// `deployments.apps`).
    pub(crate) fn from_node(error: Error, kind: &str, name: &str) -> Self {
        let message = error.to_string();
        let (code, reason) = match &error {
            Error::NotFound { .. } => return KubeError::not_found(kind, name),
            Error::Conflict(Conflict::Exists { .. }) => {
                return KubeError::already_exists(kind, name);
            }
            Error::Conflict(Conflict::Stale { .. }) => {
                let message = format!(
                    "Operation cannot be fulfilled on {kind} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again"
                );
                return KubeError::new(StatusCode::CONFLICT, "Conflict", message).about(kind, name);
            }
            Error::Invalid(field) => {
                return KubeError::invalid(kind, name, &field.field, field.reason.clone());
            }
            Error::ModuleNotFound(_) | Error::Module(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
            }
            Error::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            // Not 409: a client reads 409 as AlreadyExists or Conflict and retries or gives
            // up wrongly. kube-apiserver refuses what exceeds a quota with 403.
            Error::InsufficientCapacity { .. } | Error::NoRoomInCluster { .. } => {
                (StatusCode::FORBIDDEN, "Forbidden")
            }
            Error::Unavailable(_) | Error::ClusterUnavailable(_) | Error::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        KubeError::new(code, reason, message).about(kind, name)
    }

    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            let (group, kind) = match details.kind.split_once('.') {
                Some((kind, group)) => (group.to_string(), kind.to_string()),
                None => (details.group.clone(), details.kind.clone()),
            };
            let mut object = json!({ "name": details.name, "kind": kind });
            if !group.is_empty() {
                object["group"] = json!(group);
            }
            if !details.causes.is_empty() {
                object["causes"] = details
                    .causes
                    .iter()
                    .map(|(field, reason, message)| {
                        json!({ "reason": reason, "message": message, "field": field })
                    })
                    .collect();
            }
            status["details"] = object;
        }
        status
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        if self.code.is_server_error() {
            tracing::warn!(status = %self.code, reason = self.reason, error = %self.message, "kubernetes request failed");
        }
        (self.code, axum::Json(self.to_status())).into_response()
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
