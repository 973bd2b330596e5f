//! The error shape every shoal HTTP answer shares, gateway and management API alike:
//! `{"error": "...", "kind": "..."}` with the kind repeated in the `x-shoal-error` header, so
//! scripts can branch without parsing the body.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, Full};

use crate::Body;

/// The header that names the kind of a failure on every error response.
pub const ERROR_KIND_HEADER: &str = "x-shoal-error";

/// Set on a response whose request found the service at zero replicas and started one.
pub const COLD_START_HEADER: &str = "x-shoal-cold-start";

/// An error response: the status, a stable kebab-case kind, and a message for people.
pub fn error_response(
    status: StatusCode,
    kind: &'static str,
    message: &str,
) -> http::Response<Body> {
    let body = serde_json::json!({ "error": message, "kind": kind }).to_string();
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(ERROR_KIND_HEADER, HeaderValue::from_static(kind));
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: the connection cannot carry another request,
        // and a client that tried would see it reset.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if kind == "overloaded" || kind == "cluster-unavailable" {
        // Queues drain in about a request's time, and etcd elects a leader in one or two
        // seconds: a second is a polite first retry.
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The status a guest's outcome is answered with.
pub fn runtime_error_status(error: &shoal_runtime::Error) -> StatusCode {
    use shoal_runtime::Error as E;
    match error {
        E::InvalidModule(_) | E::NoCompiler(_) | E::Precompiled(_) => StatusCode::BAD_REQUEST,
        E::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
        E::Trap(_)
        | E::MemoryLimit { .. }
        | E::BadCgiOutput(_)
        | E::Exit(_)
        | E::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
        E::OutOfFuel { .. } | E::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        E::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
