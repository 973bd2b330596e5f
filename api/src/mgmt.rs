//! The management API: modules, services and the node, as JSON over HTTP.
//!
//! Every route is listed in [`ROUTES`], which a test checks against the router and
//! the README, so the documentation cannot drift from the code.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use serde::Serialize;
use shoal_registry::{EventRecord, ModuleRecord, RevisionRecord, ServiceRecord};
use shoal_runtime::Resources;
use shoal_spec::{ByteSize, Cpu, Digest, ServiceName, ServiceSpec};

use crate::error::{ApiError, ApiResult};
use crate::node::Node;

/// Every management route, as `METHOD path`: checked against the router by a test.
pub const ROUTES: &[&str] = &[
    "GET /v1/node",
    "POST /v1/modules",
    "GET /v1/modules",
    "GET /v1/modules/{digest}",
    "DELETE /v1/modules/{digest}",
    "GET /v1/services",
    "PUT /v1/services/{name}",
    "GET /v1/services/{name}",
    "DELETE /v1/services/{name}",
    "GET /v1/services/{name}/revisions",
    "GET /v1/services/{name}/status",
    "GET /v1/services/{name}/events",
    "POST /v1/deploy/{name}",
];

/// The management API's router.
pub fn app(node: Node) -> Router {
    Router::new()
        .route("/v1/node", get(node_info))
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
        .route("/v1/services/{name}/status", get(service_status))
        .route("/v1/services/{name}/events", get(service_events))
        .route("/v1/deploy/{name}", post(deploy))
        // An empty name is a bad name, not an unknown route.
        .route("/v1/services/", any(empty_name))
        .route("/v1/deploy/", any(empty_name))
        .layer(middleware::from_fn_with_state(node.clone(), require_token))
        .merge(crate::consul::routes(node.clone()))
        .fallback(|uri: axum::http::Uri| async move {
            if crate::consul::PREFIXES
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

/// Requires `Authorization: Bearer <token>` when the node has a token.
async fn require_token(State(node): State<Node>, request: Request, next: Next) -> Response {
    let Some(token) = &node.config().token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is wrong").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this node requires a token: send Authorization: Bearer <token> (shoal --token or SHOAL_TOKEN)",
        )
        .into_response(),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
}

impl From<ModuleRecord> for ModuleView {
    fn from(record: ModuleRecord) -> ModuleView {
        ModuleView {
            digest: record.digest.to_string(),
            size: record.size,
            kind: record.kind.to_string(),
            created: timestamp(record.created_unix_ms),
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

fn timestamp(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

fn service_view(node: &Node, record: ServiceRecord) -> ServiceView {
    let route = node
        .route(record.name.as_str())
        .filter(|route| route.revision == record.revision);
    let name = record.name.to_string();
    ServiceView {
        url: node
            .gateway_addr()
            .map(|addr| format!("http://{addr}/{name}/")),
        host: format!("{name}.{}", node.config().domain),
        kind: route
            .as_ref()
            .map(|r| r.pool.service().kind().as_str().to_owned()),
        cached: route.as_ref().map(|r| r.pool.service().from_cache()),
        name,
        revision: record.revision,
        spec: record.spec,
        created: timestamp(record.created_unix_ms),
        updated: timestamp(record.updated_unix_ms),
    }
}

async fn node_info(State(node): State<Node>) -> ApiResult<Json<serde_json::Value>> {
    let (n_modules, change_index) = node
        .registry(|r| Ok((r.modules()?.len(), r.change_index()?)))
        .await?;
    let runtime = node.runtime();
    let stats = runtime.compile_stats();
    let routes = node.routes();
    let capacity = node.capacity().total();
    let reserved = node.capacity().reserved();
    Ok(Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gateway": node.gateway_addr().map(|addr| format!("http://{addr}")),
        "domain": node.config().domain,
        "data_dir": node.config().data_dir,
        "allocator": runtime.allocator().as_str(),
        "services": node.n_routes(),
        "in_flight": node.in_flight(),
        "replicas": routes.values().map(|route| route.pool.status().replicas).sum::<u32>(),
        "capacity": resources_json(capacity),
        "reserved": resources_json(reserved),
        "free": resources_json(Resources {
            memory: capacity.memory.saturating_sub(reserved.memory),
            cpu_millis: capacity.cpu_millis.saturating_sub(reserved.cpu_millis),
        }),
        "resource_allocation": allocation_json(reserved, capacity),
        "fuel_per_cpu_second": node.fuel_per_cpu_second(),
        "modules": n_modules,
        "change_index": change_index,
        "max_module_size": node.config().max_module_size,
        "compile": {
            "compiled": stats.compiled,
            "cache_hits": stats.cache_hits,
            "cache_rejected": stats.cache_rejected,
        },
        "default_limits": shoal_spec::Limits::default(),
    })))
}

fn resources_json(resources: Resources) -> serde_json::Value {
    serde_json::json!({
        "memory": ByteSize(resources.memory).to_string(),
        "cpu": Cpu(resources.cpu_millis).to_string(),
    })
}

/// `resource_allocation = performance_need / resource_limit`: the share of the node's
/// capacity that `need` takes.
fn allocation_json(need: Resources, capacity: Resources) -> serde_json::Value {
    let ratio = |need: u64, capacity: u64| {
        if capacity == 0 {
            0.0
        } else {
            need as f64 / capacity as f64
        }
    };
    serde_json::json!({
        "memory": ratio(need.memory, capacity.memory),
        "cpu": ratio(need.cpu_millis, capacity.cpu_millis),
    })
}

fn millis(duration: Option<std::time::Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn event_json(event: EventRecord) -> serde_json::Value {
    serde_json::json!({
        "time": timestamp(event.time_unix_ms),
        "from": event.from,
        "to": event.to,
        "reason": event.reason,
    })
}

/// The numbers a service's scaling acts on.
async fn service_status(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = parse_name(&name)?;
    let Some(route) = node.route(name.as_str()) else {
        return Err(ApiError::not_found(format!("service \"{name}\" not found")));
    };
    let events = node.registry(move |r| r.events(&name, 10)).await?;
    let status = route.pool.status();
    let per_replica = route.pool.replica_spec().requests;
    let capacity = node.capacity().total();
    let settings = &status.settings;
    let load = if status.replicas == 0 {
        0.0
    } else {
        f64::from(status.in_flight) / f64::from(status.replicas)
    };
    Ok(Json(serde_json::json!({
        "name": route.pool.service().name(),
        "revision": route.revision,
        "isolation": route.spec.isolation.to_string(),
        "replicas": {
            "current": status.replicas,
            "desired": status.desired,
            "min": settings.min,
            "max": settings.max,
            "busy": status.busy,
            "idle": status.idle,
        },
        "in_flight": status.in_flight,
        "queued": status.queued,
        "load": {
            "per_replica": load,
            "stable_demand": status.stable_demand,
            "panic_demand": status.panic_demand,
            "panicking": status.panicking,
        },
        "requests": {
            "total": status.requests,
            "per_second": status.request_rate,
            "cold_starts": status.cold_starts,
            "rejected": status.rejected,
        },
        "latency_ms": { "p50": millis(status.latency_p50), "p99": millis(status.latency_p99) },
        "resources": {
            "per_replica": resources_json(per_replica),
            "reserved": resources_json(status.reserved),
            "cpu_limit": route.spec.cpu_limit().map(|cpu| cpu.to_string()),
        },
        "resource_allocation": {
            "per_replica": allocation_json(per_replica, capacity),
            "total": allocation_json(status.reserved, capacity),
        },
        "scale": {
            "min": settings.min,
            "max": settings.max,
            "concurrency": settings.concurrency,
            "target": settings.target_percent,
            "stable_window": duration(settings.stable_window),
            "panic_window": duration(settings.panic_window),
            "scale_down_delay": duration(settings.scale_down_delay),
            "idle_timeout": duration(settings.idle_timeout),
            "queue_limit": settings.queue_limit,
            "queue_timeout": duration(settings.queue_timeout),
        },
        "events": events.into_iter().map(event_json).collect::<Vec<_>>(),
    })))
}

/// A service's scale events, oldest first.
async fn service_events(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let name = parse_name(&name)?;
    let events = node
        .registry(move |r| r.events(&name, shoal_registry::MAX_EVENTS_PER_SERVICE))
        .await?;
    Ok(Json(events.into_iter().map(event_json).collect()))
}

/// Reads a whole body, refusing it with 413 past `limit` bytes.
async fn read_module(body: Body, limit: u64) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "the module exceeds the upload limit of {limit} bytes (shoal up --max-module-size)"
            ),
        )
    };
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
    }
}

async fn upload_module(
    State(node): State<Node>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModuleView>)> {
    let bytes = read_module(body, node.config().max_module_size).await?;
    let (record, created) = node.add_module(bytes).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record.into())))
}

async fn list_modules(State(node): State<Node>) -> ApiResult<Json<Vec<ModuleView>>> {
    let modules = node.registry(|r| r.modules()).await?;
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
    let shown = digest.to_string();
    match node.registry(move |r| r.module(&digest)).await? {
        Some(record) => Ok(Json(record.into())),
        None => Err(ApiError::not_found(format!("module {shown} not found"))),
    }
}

async fn delete_module(
    State(node): State<Node>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ModuleView>> {
    let record = node.delete_module(parse_digest(&digest)?).await?;
    Ok(Json(record.into()))
}

async fn empty_name() -> ApiError {
    parse_name("").expect_err("the empty name is invalid")
}

fn parse_name(name: &str) -> ApiResult<ServiceName> {
    Ok(name.parse::<ServiceName>()?)
}

async fn list_services(State(node): State<Node>) -> ApiResult<Json<Vec<ServiceView>>> {
    let services = node.registry(|r| r.services()).await?;
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
    let name = parse_name(&name)?;
    let shown = name.to_string();
    match node.registry(move |r| r.service(&name)).await? {
        Some(record) => Ok(Json(service_view(&node, record))),
        None => Err(ApiError::not_found(format!(
            "service \"{shown}\" not found"
        ))),
    }
}

async fn put_service(
    State(node): State<Node>,
    Path(name): Path<String>,
    SpecJson(spec): SpecJson<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let name = parse_name(&name)?;
    let (record, created) = node.put_service(name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(service_view(&node, record))))
}

async fn delete_service(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    let record = node.delete_service(parse_name(&name)?).await?;
    Ok(Json(service_view(&node, record)))
}

async fn list_revisions(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<RevisionView>>> {
    let name = parse_name(&name)?;
    let shown = name.to_string();
    let revisions = node.registry(move |r| r.revisions(&name)).await?;
    if revisions.is_empty() {
        return Err(ApiError::not_found(format!(
            "service \"{shown}\" not found"
        )));
    }
    Ok(Json(
        revisions.into_iter().map(RevisionView::from).collect(),
    ))
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
    let (module, _) = node.add_module(bytes).await?;
    let spec = ServiceSpec {
        limits,
        env,
        args,
        ..ServiceSpec::new(module.digest)
    };
    let (record, created) = node.put_service(name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(service_view(&node, record))))
}
