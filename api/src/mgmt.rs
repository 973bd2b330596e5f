//! The management API: modules, services and the node, as JSON over HTTP.
//!
//! Every route is listed in [`ROUTES`], which a test checks against the router and
//! the README, so the documentation cannot drift from the code.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde::Serialize;
use shoal_node::{Node, NodeStatus, NodeView, ServiceStatus};
use shoal_registry::{EventRecord, ModuleRecord, RevisionRecord, ServiceRecord};
use shoal_spec::{Digest, ServiceName, ServiceSpec};

use crate::error::{ApiError, ApiResult};

/// Every management route, as `METHOD path`: checked against the router by a test.
pub const ROUTES: &[&str] = &[
    "GET /v1/node",
    "GET /v1/nodes",
    "POST /v1/modules",
    "GET /v1/modules",
    "GET /v1/modules/{digest}",
    "DELETE /v1/modules/{digest}",
    "GET /v1/services",
    "PUT /v1/services/{name}",
    "GET /v1/services/{name}",
    "DELETE /v1/services/{name}",
    "GET /v1/services/{name}/revisions",
    "POST /v1/services/{name}/rollback",
    "GET /v1/services/{name}/status",
    "GET /v1/services/{name}/events",
    "GET /v1/services/{name}/logs",
    "POST /v1/deploy/{name}",
    "GET /metrics",
    "GET /ui",
    "GET /ui/config",
    "GET /ui/stream",
];

/// The management API's router.
pub fn app(node: Node) -> Router {
    Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/modules", post(upload_module).get(list_modules))
        .route(
            "/v1/modules/{digest}",
            get(get_module).delete(delete_module),
        )
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/v1/services/{name}/revisions", get(list_revisions))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/status", get(service_status))
        .route("/v1/services/{name}/events", get(service_events))
        .route("/v1/services/{name}/logs", get(service_logs))
        .route("/v1/deploy/{name}", post(deploy))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/ui/stream", get(crate::ui::stream))
        // An empty name is a bad name, not an unknown route.
        .route("/v1/services/", any(empty_name))
        .route("/v1/deploy/", any(empty_name))
        .layer(middleware::from_fn_with_state(
            node.clone(),
            crate::auth::require_bearer,
        ))
        // The page is static and public: what it shows comes through the routes above.
        .route("/ui", get(crate::ui::page))
        .route("/ui/config", get(crate::ui::config))
        .merge(crate::consul::routes(node.clone()))
        .merge(crate::peer::routes(node.clone()))
        .merge(crate::kube::routes(node.clone()))
        .fallback(|uri: axum::http::Uri| async move {
            if crate::kube::PREFIXES
                .iter()
                .any(|p| uri.path().starts_with(p))
            {
                crate::kube::unknown_path(uri.path())
            } else if crate::consul::PREFIXES
                .iter()
                .any(|p| uri.path().starts_with(p))
            {
                crate::consul::unknown_path()
            } else {
                ApiError::not_found("no such API route; see GET /v1/node").into_response()
            }
        })
        .with_state(node)
}

/// A JSON body parsed with the path of a bad field in the message, and our error shape
/// for every rejection.
struct SpecJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for SpecJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "the body is empty: expected a JSON object",
            ));
        }
        Ok(SpecJson(shoal_spec::from_json(&bytes)?))
    }
}

#[derive(Serialize)]
struct ModuleView {
    digest: String,
    size: u64,
    kind: String,
    created: String,
    /// The names it was given, which resolve to it while no newer module has them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    names: Vec<String>,
}

impl From<ModuleRecord> for ModuleView {
    fn from(record: ModuleRecord) -> ModuleView {
        ModuleView {
            digest: record.digest.to_string(),
            size: record.size,
            kind: record.kind.to_string(),
            created: timestamp(record.created_unix_ms),
            names: record.names.into_keys().collect(),
        }
    }
}

#[derive(Serialize)]
struct ServiceView {
    name: String,
    revision: u64,
    spec: ServiceSpec,
    kind: Option<String>,
    /// Whether the running code came from the artifact cache (no compile at load).
    cached: Option<bool>,
    /// `baseline` (Winch's code) or `optimized` (Cranelift's): what new instances start on.
    tier: Option<&'static str>,
    url: Option<String>,
    host: String,
    created: String,
    updated: String,
}

#[derive(Serialize)]
struct RevisionView {
    revision: u64,
    spec: ServiceSpec,
    created: String,
}

impl From<RevisionRecord> for RevisionView {
    fn from(record: RevisionRecord) -> RevisionView {
        RevisionView {
            revision: record.revision,
            spec: record.spec,
            created: timestamp(record.created_unix_ms),
        }
    }
}

/// 201 for what a request created, 200 for what it found or updated.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn timestamp(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

fn service_view(node: &Node, record: ServiceRecord) -> ServiceView {
    let running = node
        .wasm_service(record.name.as_str())
        .filter(|running| running.record.revision == record.revision);
    let name = record.name.to_string();
    ServiceView {
        url: node
            .gateway_addr()
            .map(|addr| format!("http://{addr}/{name}/")),
        host: format!("{name}.{}", node.config().domain),
        kind: running.as_ref().map(|r| r.kind.to_string()),
        cached: running.as_ref().map(|r| r.from_cache),
        tier: running.as_ref().map(|r| r.tier.as_str()),
        name,
        revision: record.revision,
        spec: record.spec,
        created: timestamp(record.created_unix_ms),
        updated: timestamp(record.updated_unix_ms),
    }
}

async fn node_info(State(node): State<Node>) -> ApiResult<Json<NodeStatus>> {
    Ok(Json(node.status().await?))
}

/// Every node of the cluster, this one first; this node alone when it has no cluster.
async fn list_nodes(State(node): State<Node>) -> Json<Vec<NodeView>> {
    Json(node.nodes())
}

#[derive(Serialize)]
struct EventView {
    time: String,
    from: u32,
    to: u32,
    reason: String,
}

impl From<EventRecord> for EventView {
    fn from(event: EventRecord) -> EventView {
        EventView {
            time: timestamp(event.time_unix_ms),
            from: event.from,
            to: event.to,
            reason: event.reason,
        }
    }
}

/// A service's status with its ten newest scale events.
#[derive(Serialize)]
struct StatusView {
    #[serde(flatten)]
    status: ServiceStatus,
    events: Vec<EventView>,
}

/// The numbers a service's scaling acts on.
async fn service_status(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<StatusView>> {
    let name = parse_name(&name)?;
    let status = node.service_status(&name)?;
    let events = node.events(&name, Some(10)).await?;
    Ok(Json(StatusView {
        status,
        events: events.into_iter().map(EventView::from).collect(),
    }))
}

/// A service's scale events, oldest first.
async fn service_events(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<EventView>>> {
    let name = parse_name(&name)?;
    let events = node.events(&name, None).await?;
    Ok(Json(events.into_iter().map(EventView::from).collect()))
}

/// What the service's guests wrote, oldest first: `?tail=N`, `?since=10m` (or an RFC 3339
/// time), `?follow=true` to keep streaming, `?timestamps=false` to leave the times out.
async fn service_logs(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<axum::response::Response> {
    let name = parse_name(&name)?;
    let mut logs = crate::logs::LogQuery {
        replica: None,
        since: None,
        tail: None,
        follow: false,
        timestamps: true,
        origin: true,
    };
    let flag = |key: &str, value: &str| match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "invalid {key}: {other:?} is not true or false"
        ))),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "tail" => {
                logs.tail = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid tail: {value:?} is not a whole number"))
                })?);
            }
            "since" => {
                logs.since = Some(
                    crate::logs::parse_since(&value)
                        .map_err(|reason| ApiError::bad_request(format!("invalid {reason}")))?,
                );
            }
            "follow" => logs.follow = flag("follow", &value)?,
            "timestamps" => logs.timestamps = flag("timestamps", &value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: expected tail, since, follow or timestamps"
                )));
            }
        }
    }
    let log = node.logs(&name)?;
    Ok(crate::logs::respond(log, logs, node.draining()))
}

/// Reads a whole body, refusing it with 413 past `limit` bytes.
pub(crate) async fn read_module(body: Body, limit: u64) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "the module exceeds the upload limit of {limit} bytes (shoal up --max-module-size)"
            ),
        )
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = body;
    let mut kept = bytes::BytesMut::new();
    let mut over = 0usize;
    // Past the limit the rest is read and dropped, up to as much again and for a second or
    // two: a client still sending when the 413 comes would see its connection reset instead.
    let drained_by = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let frame = if over == 0 {
            body.frame().await
        } else {
            match tokio::time::timeout_at(drained_by, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(too_large()),
            }
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over > 0 || kept.len() + data.len() > limit {
            over += data.len();
            if over > limit {
                return Err(too_large());
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over > 0 {
        return Err(too_large());
    }
    Ok(kept.freeze())
}

async fn upload_module(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModuleView>)> {
    let bytes = read_module(body, node.config().max_module_size).await?;
    let mut name = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "name" => name = Some(value.into_owned()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: expected name"
                )));
            }
        }
    }
    let (record, created) = store_upload(&node, bytes, name.as_deref()).await?;
    Ok((created_or_ok(created), Json(record.into())))
}

/// Stores an upload: wasm, which the node compiles, or a precompiled package (`shoal
/// compile`), machine code the node would run as it is, so installed only for a caller that
/// presented the node's token; a node started without one has no such caller.
async fn store_upload(
    node: &Node,
    bytes: Bytes,
    name: Option<&str>,
) -> ApiResult<(shoal_registry::ModuleRecord, bool)> {
    if !shoal_node::is_precompiled(&bytes) {
        return Ok(node.add_named_module(bytes, name).await?);
    }
    if node.config().token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "precompiled-refused",
            "precompiled machine code is installed only by a node started with --token \
             (SHOAL_TOKEN), for callers that send it; upload the .wasm instead to have this \
             node compile it",
        ));
    }
    Ok(node.install_precompiled(bytes, name).await?)
}

async fn list_modules(State(node): State<Node>) -> ApiResult<Json<Vec<ModuleView>>> {
    let modules = node.modules().await?;
    Ok(Json(modules.into_iter().map(ModuleView::from).collect()))
}

fn parse_digest(digest: &str) -> ApiResult<Digest> {
    Ok(digest.parse::<Digest>()?)
}

async fn get_module(
    State(node): State<Node>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ModuleView>> {
    let digest = parse_digest(&digest)?;
    Ok(Json(node.module(&digest).await?.into()))
}

async fn delete_module(
    State(node): State<Node>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ModuleView>> {
    let record = node.delete_module(&parse_digest(&digest)?).await?;
    Ok(Json(record.into()))
}

async fn empty_name() -> ApiError {
    parse_name("").expect_err("the empty name is invalid")
}

fn parse_name(name: &str) -> ApiResult<ServiceName> {
    Ok(name.parse::<ServiceName>()?)
}

async fn list_services(State(node): State<Node>) -> ApiResult<Json<Vec<ServiceView>>> {
    let services = node.services().await?;
    Ok(Json(
        services
            .into_iter()
            .map(|record| service_view(&node, record))
            .collect(),
    ))
}

async fn get_service(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    let record = node.service(&parse_name(&name)?).await?;
    Ok(Json(service_view(&node, record)))
}

async fn put_service(
    State(node): State<Node>,
    Path(name): Path<String>,
    SpecJson(spec): SpecJson<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let name = parse_name(&name)?;
    let (record, created) = node.put_service(name, spec).await?;
    Ok((created_or_ok(created), Json(service_view(&node, record))))
}

async fn delete_service(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    let record = node.delete_service(&parse_name(&name)?).await?;
    Ok(Json(service_view(&node, record)))
}

async fn list_revisions(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<RevisionView>>> {
    let revisions = node.revisions(&parse_name(&name)?).await?;
    Ok(Json(
        revisions.into_iter().map(RevisionView::from).collect(),
    ))
}

/// Makes an earlier revision current again: `?to=N`, or the one before the current one.
async fn rollback(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<ServiceView>> {
    let mut to = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "to" => {
                to = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid to {value:?}: expected a revision number"
                    ))
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: rollback takes `to`"
                )));
            }
        }
    }
    let record = node.rollback(&parse_name(&name)?, to).await?;
    Ok(Json(service_view(&node, record)))
}

/// One request for curl users: the body is the module, the query the spec
/// (`memory`, `fuel`, `timeout`, `max_request_body`, `max_response`, `max_stderr`,
/// repeated `env=K=V` and `arg=A`).
async fn deploy(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    // Read the body first even when the query is bad: answering before the client has
    // sent its upload makes many clients see a reset connection instead of our 400.
    let bytes = read_module(body, node.config().max_module_size).await?;
    let name = parse_name(&name)?;
    let query = query.unwrap_or_default();
    // Parse the spec before storing anything, so bad input leaves nothing behind.
    let mut limits = serde_json::Map::new();
    let mut env = BTreeMap::new();
    let mut args = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "memory" | "timeout" | "max_request_body" | "max_response" | "max_stderr" => {
                limits.insert(
                    key.into_owned(),
                    serde_json::Value::String(value.into_owned()),
                );
            }
            "fuel" => {
                let fuel = value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid limits.fuel: {value:?} is not a whole number"
                    ))
                })?;
                limits.insert("fuel".into(), fuel.into());
            }
            "env" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("invalid env: {value:?} is not K=V"))
                })?;
                env.insert(k.to_owned(), v.to_owned());
            }
            "arg" => args.push(value.into_owned()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: expected memory, fuel, timeout, max_request_body, \
                     max_response, max_stderr, env or arg"
                )));
            }
        }
    }
    let limits: shoal_spec::Limits =
        shoal_spec::from_json_value_at("limits", serde_json::Value::Object(limits))?;
    node.check_limits(&limits)?;
    let (module, _) = store_upload(&node, bytes, None).await?;
    let spec = ServiceSpec {
        limits,
        env,
        args,
        ..ServiceSpec::new(module.digest)
    };
    let (record, created) = node.put_service(name, spec).await?;
    Ok((created_or_ok(created), Json(service_view(&node, record))))
}
