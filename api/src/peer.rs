//! The peer routes: what the nodes of a cluster ask of each other, on the management
//! listener, authenticated by the cluster's secret (not the management token: a peer is not
//! an operator, and an operator's token does not open these).
//!
//! Module bytes move here: an upload is copied to a second node before it is acknowledged,
//! and a node that has to run a module it lacks fetches it from one that has it (and checks
//! the digest, `shoal_node::Node::fetch_module`). A node alone answers 404: it has no peers.
//! Guests never reach these routes: they have no network, and the gateway forwards to peers'
//! gateways, never to their APIs.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use shoal_node::Node;
use shoal_spec::{Digest, ModuleKind};

use crate::error::{ApiError, ApiResult};

/// Every peer route, as `METHOD path`: checked against the router and the README by tests.
pub const ROUTES: &[&str] = &[
    "GET /v1/peer/modules/{digest}",
    "PUT /v1/peer/modules/{digest}",
    "GET /v1/peer/logs/{name}",
];

/// The peer routes, behind the cluster's secret.
pub(crate) fn routes(node: Node) -> Router<Node> {
    Router::new()
        .route(
            "/v1/peer/modules/{digest}",
            get(module_bytes).put(keep_module_bytes),
        )
        .route("/v1/peer/logs/{name}", get(service_log))
        .layer(middleware::from_fn_with_state(node, require_peer))
}

/// `Authorization: Bearer <the cluster's secret>`, else 401; 404 on a node alone.
async fn require_peer(State(node): State<Node>, request: Request, next: Next) -> Response {
    if node.cluster().is_none() {
        return ApiError::not_found("this node is not in a cluster: it has no peer routes")
            .into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if node.is_peer_token(token) => next.run(request).await,
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "peer routes take the cluster's secret as a bearer token",
        )
        .into_response(),
    }
}

async fn module_bytes(State(node): State<Node>, Path(digest): Path<String>) -> ApiResult<Response> {
    let digest: Digest = digest.parse()?;
    match node.local_module_bytes(&digest).await? {
        Some(bytes) => Ok((
            [(header::CONTENT_TYPE, "application/wasm")],
            Body::from(bytes),
        )
            .into_response()),
        None => Err(ApiError::not_found(format!(
            "this node has no copy of module {digest}"
        ))),
    }
}

#[derive(Deserialize)]
struct KindQuery {
    kind: ModuleKind,
}

async fn keep_module_bytes(
    State(node): State<Node>,
    Path(digest): Path<String>,
    query: Result<Query<KindQuery>, QueryRejection>,
    body: Body,
) -> ApiResult<StatusCode> {
    let digest: Digest = digest.parse()?;
    let Ok(Query(query)) = query else {
        return Err(ApiError::bad_request(
            "invalid kind: the query must say kind=http or kind=cgi",
        ));
    };
    let bytes = crate::mgmt::read_module(body, node.config().max_module_size).await?;
    node.keep_module_bytes(&digest, query.kind, bytes).await?;
    Ok(StatusCode::CREATED)
}

/// What this node's replicas of a service wrote, for a peer answering `kubectl logs` for a pod
/// that runs here: `replica`, `tail`, `since` (RFC 3339), `follow`, `timestamps`.
async fn service_log(
    State(node): State<Node>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Response> {
    let name: shoal_spec::ServiceName = name.parse()?;
    let mut logs = crate::logs::LogQuery {
        replica: None,
        since: None,
        tail: None,
        follow: false,
        timestamps: false,
        origin: false,
    };
    let bad = |key: &str| ApiError::bad_request(format!("invalid {key}"));
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "replica" => logs.replica = Some(value.parse().map_err(|_| bad("replica"))?),
            "tail" => logs.tail = Some(value.parse().map_err(|_| bad("tail"))?),
            "since" => {
                logs.since = Some(crate::logs::parse_since(&value).map_err(ApiError::bad_request)?)
            }
            "follow" => logs.follow = value == "true",
            "timestamps" => logs.timestamps = value == "true",
            _ => {}
        }
    }
    Ok(crate::logs::respond(
        node.logs(&name)?,
        logs,
        node.draining(),
    ))
}
