//! The token rules of both APIs on the management listener, in one place.
//!
//! A node serving on a non-loopback address must have a token ([`check_exposure`]); with one,
//! every call must present it. The management API reads `Authorization: Bearer` and answers
//! 401 in its JSON shape; the Consul API reads it the ways Consul reads ACL tokens
//! (`X-Consul-Token`, `Authorization: Bearer`, `?token=`) and answers 403 in plain text.
//! Tokens are compared in constant time.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_node::Node;
use subtle::ConstantTimeEq as _;

use crate::consul::ConsulError;
use crate::error::ApiError;

/// Refuses a non-loopback API address when there is no token: whoever reaches the API can run
/// code on this machine.
pub fn check_exposure(api_addr: std::net::SocketAddr, has_token: bool) -> anyhow::Result<()> {
    if !api_addr.ip().is_loopback() && !has_token {
        anyhow::bail!(
            "refusing to serve the management API on {api_addr} without a token: \
             anyone who reaches it can run code here; pass --token or set SHOAL_TOKEN"
        );
    }
    Ok(())
}

fn matches(presented: &str, token: &str) -> bool {
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// What a request's `Authorization: Bearer` says against the node's token.
enum Bearer {
    /// The node has no token, or the request carries it: let it through.
    Pass,
    /// No bearer token.
    Missing,
    /// A bearer token that is not the node's.
    Wrong,
}

fn check_bearer(node: &Node, request: &Request) -> Bearer {
    let Some(token) = &node.config().token else {
        return Bearer::Pass;
    };
    match bearer(request) {
        Some(presented) if matches(presented, token) => Bearer::Pass,
        Some(_) => Bearer::Wrong,
        None => Bearer::Missing,
    }
}

/// The management API's rule: `Authorization: Bearer <token>`, else 401.
pub(crate) async fn require_bearer(
    State(node): State<Node>,
    request: Request,
    next: Next,
) -> Response {
    let message = match check_bearer(&node, &request) {
        Bearer::Pass => return next.run(request).await,
        Bearer::Wrong => "the bearer token is wrong",
        Bearer::Missing => {
            "this node requires a token: send Authorization: Bearer <token> (shoal --token or SHOAL_TOKEN)"
        }
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response()
}

/// The Kubernetes API's rule: `Authorization: Bearer <token>` (kubectl sends it only over
/// TLS), else 401 as a `Status`, which kubectl words "You must be logged in to the server".
pub(crate) async fn require_kube_token(
    State(node): State<Node>,
    request: Request,
    next: Next,
) -> Response {
    match check_bearer(&node, &request) {
        Bearer::Pass => next.run(request).await,
        Bearer::Missing | Bearer::Wrong => crate::kube::unauthorized().into_response(),
    }
}

/// The Consul API's rule: the token from `X-Consul-Token`, `Authorization: Bearer` or
/// `?token=`, as Consul reads ACL tokens, else 403.
pub(crate) async fn require_consul_token(
    State(node): State<Node>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &node.config().token else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_bearer = bearer(&request).map(str::to_owned);
    let from_query = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    match from_header.or(from_bearer).or(from_query) {
        Some(presented) if matches(&presented, token) => next.run(request).await,
        Some(_) => ConsulError::new(StatusCode::FORBIDDEN, "ACL not found").into_response(),
        None => ConsulError::new(
            StatusCode::FORBIDDEN,
            "Permission denied: this node requires a token (X-Consul-Token, Authorization: Bearer, or ?token=)",
        )
        .into_response(),
    }
}
