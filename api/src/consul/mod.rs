//! The Consul-compatible HTTP API, on the management listener: existing Consul clients
//! register, discover, health-check and store keys against shoal's registry.
//!
//! `../shared/reference/consul-and-kubernetes-wire.md` is the contract; what matters most:
//! - bodies are decoded the way Go decodes them (`decode.rs`): keys in any case, Consul's
//!   snake_case aliases, no Content-Type needed, unknown fields refused with 400;
//! - errors are plain text, with Consul's status codes and messages;
//! - every catalog, health and KV read carries `X-Consul-Index` (never 0),
//!   `X-Consul-KnownLeader` and `X-Consul-LastContact`, 404s included;
//! - those reads are blocking queries when given `?index=`: they return as soon as the data
//!   they watch changes past that index, or when `?wait=` (default 5 minutes, at most 10,
//!   plus up to a sixteenth of jitter) runs out ([`blocking`]).
//!
//! One store serves two kinds of service: instances registered here (an address and a port),
//! and wasm services deployed through the management API, which show in the catalog with
//! their replicas as instances, at the gateway's address (`catalog_health.rs`).
//!
//! # Layout
//! - `agent.rs`: `/v1/agent/*`, registering services and checks, TTL reports;
//! - `catalog_health.rs`: `/v1/catalog/*` and `/v1/health/*`;
//! - `wire.rs`: the JSON shapes Consul answers in, as typed structs;
//! - `identity.rs`: who this node is, in Consul's terms;
//! - `nodes.rs`: the agent itself, the members and datacenters, and what is on one node;
//! - `kv.rs`: `/v1/kv/*`, with `?acquire` and `?release`;
//! - `session.rs`: `/v1/session/*`, which locks hang from;
//! - `txn.rs`: `/v1/txn`, key/value operations applied atomically;
//! - `decode.rs`: Consul's JSON decoding rules and Go durations;
//! - `filter.rs`: `?filter=` expressions.

mod agent;
mod catalog_health;
pub(crate) mod decode;
mod filter;
mod identity;
mod kv;
mod nodes;
mod session;
mod txn;
mod wire;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;
use shoal_node::Node;
use shoal_registry::CheckStatus;

pub(crate) use self::identity::ConsulNode;

/// Every Consul route, as `METHOD path`: checked against the router by a test, and listed in
/// the README.
pub const ROUTES: &[&str] = &[
    "PUT /v1/agent/service/register",
    "PUT /v1/agent/service/deregister/{id}",
    "GET /v1/agent/services",
    "GET /v1/agent/service/{id}",
    "GET /v1/agent/checks",
    "PUT /v1/agent/check/register",
    "PUT /v1/agent/check/deregister/{id}",
    "PUT /v1/agent/check/pass/{id}",
    "PUT /v1/agent/check/warn/{id}",
    "PUT /v1/agent/check/fail/{id}",
    "PUT /v1/agent/check/update/{id}",
    "PUT /v1/agent/service/maintenance/{id}",
    "PUT /v1/agent/maintenance",
    "GET /v1/agent/health/service/name/{name}",
    "GET /v1/agent/health/service/id/{id}",
    "GET /v1/agent/self",
    "GET /v1/agent/members",
    "PUT /v1/catalog/register",
    "PUT /v1/catalog/deregister",
    "GET /v1/catalog/services",
    "GET /v1/catalog/service/{name}",
    "GET /v1/catalog/nodes",
    "GET /v1/catalog/datacenters",
    "GET /v1/catalog/node/{node}",
    "GET /v1/catalog/node-services/{node}",
    "GET /v1/health/service/{name}",
    "GET /v1/health/checks/{name}",
    "GET /v1/health/state/{state}",
    "GET /v1/health/node/{node}",
    "GET /v1/kv/{key}",
    "PUT /v1/kv/{key}",
    "DELETE /v1/kv/{key}",
    "PUT /v1/txn",
    "PUT /v1/session/create",
    "PUT /v1/session/destroy/{id}",
    "PUT /v1/session/renew/{id}",
    "GET /v1/session/info/{id}",
    "GET /v1/session/node/{node}",
    "GET /v1/session/list",
    "GET /v1/status/leader",
    "GET /v1/status/peers",
];

/// The path prefixes the Consul API answers under, so unknown paths below them get Consul's
/// plain-text 404 rather than the management API's JSON one.
pub(crate) const PREFIXES: &[&str] = &[
    "/v1/acl/",
    "/v1/agent/",
    "/v1/catalog/",
    "/v1/config",
    "/v1/connect/",
    "/v1/coordinate/",
    "/v1/discovery-chain/",
    "/v1/event/",
    "/v1/health/",
    "/v1/internal/",
    "/v1/kv",
    "/v1/operator/",
    "/v1/peering",
    "/v1/query",
    "/v1/session/",
    "/v1/snapshot",
    "/v1/status/",
    "/v1/txn",
];

/// The Consul API's router; the management API merges it.
pub(crate) fn routes(node: Node) -> Router<Node> {
    Router::new()
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(agent::deregister_service),
        )
        .route(
            "/v1/agent/service/maintenance/{*id}",
            put(agent::service_maintenance),
        )
        .route("/v1/agent/maintenance", put(agent::node_maintenance))
        .route("/v1/agent/check/update/{*id}", put(agent::check_update))
        .route(
            "/v1/agent/health/service/name/{*name}",
            get(agent::health_by_name),
        )
        .route(
            "/v1/agent/health/service/id/{*id}",
            get(agent::health_by_id),
        )
        .route("/v1/agent/self", get(nodes::agent_self))
        .route("/v1/agent/members", get(nodes::members))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/{*id}", get(agent::service))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{*id}",
            put(agent::deregister_check),
        )
        .route(
            "/v1/agent/check/pass/{*id}",
            put(|s, p, q| agent::ttl_report(CheckStatus::Passing, s, p, q)),
        )
        .route(
            "/v1/agent/check/warn/{*id}",
            put(|s, p, q| agent::ttl_report(CheckStatus::Warning, s, p, q)),
        )
        .route(
            "/v1/agent/check/fail/{*id}",
            put(|s, p, q| agent::ttl_report(CheckStatus::Critical, s, p, q)),
        )
        .route("/v1/catalog/register", put(nodes::catalog_register))
        .route("/v1/catalog/deregister", put(nodes::catalog_deregister))
        .route("/v1/catalog/services", get(catalog_health::services))
        .route("/v1/catalog/service/{name}", get(catalog_health::service))
        .route("/v1/catalog/nodes", get(catalog_health::nodes))
        .route("/v1/catalog/datacenters", get(nodes::datacenters))
        .route("/v1/catalog/node/{node}", get(nodes::catalog_node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(nodes::catalog_node_services),
        )
        .route("/v1/health/node/{node}", get(nodes::health_node))
        .route(
            "/v1/health/service/{name}",
            get(catalog_health::health_service),
        )
        .route(
            "/v1/health/checks/{name}",
            get(catalog_health::health_checks),
        )
        .route(
            "/v1/health/state/{state}",
            get(catalog_health::health_state),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route("/v1/txn", put(txn::txn))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::of_node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .layer(middleware::map_response_with_state(
            node.clone(),
            flag_stale_reads,
        ))
        .layer(middleware::from_fn_with_state(
            node,
            crate::auth::require_consul_token,
        ))
}

/// In a cluster, a node that cannot renew its membership in etcd, or could not catch up with
/// it for this read, answers from what it last knew: it says so as Consul does when its
/// servers have no leader (and such an answer's index may be older than another node's).
async fn flag_stale_reads(State(node): State<Node>, mut response: Response) -> Response {
    let stale = node
        .cluster()
        .is_some_and(|joined| !joined.membership.holds() || node.behind());
    if stale && response.headers().contains_key("x-consul-knownleader") {
        response
            .headers_mut()
            .insert("x-consul-knownleader", HeaderValue::from_static("false"));
    }
    response
}

/// Consul's answer to a path it does not know, for the fallback.
pub(crate) fn unknown_path() -> Response {
    ConsulError::new(
        StatusCode::NOT_FOUND,
        "Invalid URL path: not a recognized HTTP API endpoint",
    )
    .into_response()
}

/// A Consul error: a status and a plain-text body.
#[derive(Debug)]
pub(crate) struct ConsulError {
    status: StatusCode,
    message: String,
    /// Index headers to carry, for reads that fail after finding their index (KV 404s).
    index: Option<u64>,
}

impl ConsulError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ConsulError {
        ConsulError {
            status,
            message: message.into(),
            index: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ConsulError {
        ConsulError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 404 that still carries the read's index headers, as Consul's KV does.
    pub(crate) fn not_found_at(index: u64) -> ConsulError {
        ConsulError {
            status: StatusCode::NOT_FOUND,
            message: String::new(),
            index: Some(index),
        }
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "consul request failed");
        }
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response();
        if let Some(index) = self.index {
            set_read_headers(response.headers_mut(), index);
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<shoal_node::Error> for ConsulError {
    fn from(error: shoal_node::Error) -> ConsulError {
        // What Consul answers a write when its servers have no leader.
        if let shoal_node::Error::ClusterUnavailable(_) = error {
            return ConsulError::new(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
        }
        let api = crate::error::ApiError::from(error);
        ConsulError::new(api.status, api.message)
    }
}

pub(crate) type ConsulResult<T> = Result<T, ConsulError>;

/// A request's query parameters, in order, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A flag such as `?recurse`, `?passing=1` or `?keys=True`: present with no value, or a
    /// value Go's `strconv.ParseBool` reads as true.
    pub(crate) fn flag(&self, key: &str) -> ConsulResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some("") => Ok(true),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(_) => Err(ConsulError::bad_request(format!(
                "Invalid value for ?{key}"
            ))),
        }
    }

    /// A number such as `?cas=` or `?flags=`.
    pub(crate) fn number(&self, key: &str) -> ConsulResult<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ConsulError::bad_request(format!("Invalid value for ?{key}: {v:?}"))
                })
            })
            .transpose()
    }

    /// Takes `?filter=` out of the query, parsed for elements of `schema`: what a listing
    /// that filters calls before anything else (and [`Query::check_common`] refuses a filter
    /// left in, rather than ignore it).
    pub(crate) fn take_filter(
        &mut self,
        schema: filter::Schema,
    ) -> ConsulResult<Option<filter::Filter>> {
        let Some(at) = self.0.iter().position(|(k, _)| k == "filter") else {
            return Ok(None);
        };
        let (_, text) = self.0.remove(at);
        if text.trim().is_empty() {
            return Ok(None);
        }
        filter::Filter::parse(&text, schema)
            .map(Some)
            .map_err(|error| ConsulError::bad_request(error.to_string()))
    }

    /// Checks what every read accepts: the datacenter, the consistency mode, and no filter
    /// left (a listing that filters took it out; anywhere else it is refused rather than
    /// ignored).
    pub(crate) fn check_common(&self, node: &Node) -> ConsulResult<()> {
        if let Some(dc) = self.get("dc")
            && !dc.is_empty()
            && dc != node.config().datacenter
        {
            return Err(ConsulError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
            ));
        }
        if self.has("stale") && self.has("consistent") {
            return Err(ConsulError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        if self.get("filter").is_some_and(|f| !f.trim().is_empty()) {
            return Err(ConsulError::bad_request(
                "?filter is not supported on this endpoint",
            ));
        }
        Ok(())
    }

    /// `?pretty`: indent the JSON.
    pub(crate) fn pretty(&self) -> bool {
        self.has("pretty")
    }
}

/// How long a blocking query waits when `?wait` is not given, and the most it may wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The `?index` and `?wait` of a read: blocking when `index` is above 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    index: u64,
    wait: Duration,
}

impl Blocking {
    pub(crate) fn parse(query: &Query) -> ConsulResult<Blocking> {
        let wait = match query.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(text) => decode::parse_go_duration(text)
                .map_err(|_| ConsulError::bad_request("Invalid wait time"))?,
        };
        let index = match query.get("index") {
            None | Some("") => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| ConsulError::bad_request("Invalid index"))?,
        };
        Ok(Blocking {
            index,
            wait: wait.min(MAX_WAIT),
        })
    }
}

/// Keeps the elements of a listing that `filter` matches (all of them without one).
pub(crate) fn filtered<T: Serialize>(filter: Option<&filter::Filter>, items: Vec<T>) -> Vec<T> {
    let Some(filter) = filter else {
        return items;
    };
    items
        .into_iter()
        .filter(|item| serde_json::to_value(item).is_ok_and(|value| filter.matches(&value)))
        .collect()
}

/// Runs a read; as a blocking query when asked, re-running it after every change until its
/// index passes the client's or the wait (plus up to a sixteenth of jitter) runs out.
///
/// `read` returns the data and the index of the newest change it reflects. The change
/// notification is subscribed before each read, so a change that lands while reading is never
/// missed.
pub(crate) async fn blocking<T, F, Fut>(
    node: &Node,
    query: &Query,
    read: F,
) -> ConsulResult<(T, u64)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ConsulResult<(T, u64)>>,
{
    query.check_common(node)?;
    let blocking = Blocking::parse(query)?;
    // In a cluster, answer as of the store's present (unless `?stale`, as Consul's stale
    // mode): another node may have shown this client a newer index than this node applied,
    // and an index never goes back.
    if query.get("stale").is_none() {
        node.catch_up().await;
    }
    let mut changes = node.changes();
    let (mut value, mut index) = read().await?;
    if blocking.index == 0 || index > blocking.index {
        return Ok((value, index));
    }
    let jitter = blocking.wait.mul_f64(fastrand::f64() / 16.0);
    let deadline = tokio::time::Instant::now() + blocking.wait + jitter;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The node is shutting down: answer with what we have.
                    return Ok((value, index));
                }
                changes.borrow_and_update();
                (value, index) = read().await?;
                if index > blocking.index {
                    return Ok((value, index));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok((value, index)),
        }
    }
}

/// Sets the headers Consul puts on every catalog, health and KV read.
pub(crate) fn set_read_headers(headers: &mut HeaderMap, index: u64) {
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    headers.insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static("leader"),
    );
}

/// A JSON answer, indented with `?pretty`.
pub(crate) fn json<T: Serialize>(query: &Query, value: &T) -> Response {
    let body = if query.pretty() {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    }
    .expect("consul views always serialize");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JSON answer to a read, with the index headers, and the consistency it was read with.
pub(crate) fn read_json<T: Serialize>(query: &Query, value: &T, index: u64) -> Response {
    let mut response = json(query, value);
    set_read_headers(response.headers_mut(), index);
    // `?stale` skips catching up with the cluster; `?consistent` reads as the default does,
    // which is already as of the store's present.
    let consistency = if query.has("stale") {
        "stale"
    } else if query.has("consistent") {
        "consistent"
    } else {
        "leader"
    };
    response.headers_mut().insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static(consistency),
    );
    response
}

/// 200 with an empty body: what Consul's agent endpoints answer to a change.
pub(crate) fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// `/v1/status/leader`: this node, as the raft address Consul would give.
async fn status_leader(State(node): State<Node>) -> Response {
    json(&Query::default(), &ConsulNode::of(&node).raft_address)
}

/// `/v1/status/peers`: just this node.
async fn status_peers(State(node): State<Node>) -> Response {
    json(&Query::default(), &[&ConsulNode::of(&node).raft_address])
}
