//! `/v1/session/*`: sessions, which hold locks on keys (`?acquire=` and `?release=` in
//! `kv.rs`, `lock` and `unlock` in `txn.rs`).
//!
//! What clients send and read (`../shared/reference/consul-more.md`): the create body's keys
//! in any case (python-consul and Patroni send `lockdelay`, `ttl`, `behavior`, `checks`),
//! durations as Go strings or numbers (a `LockDelay` number below 1000 is seconds, as Consul
//! reads it); a TTL outside 10 s to 24 h is refused with `Invalid Session TTL`, which Patroni
//! looks for; renewing a session that is gone is 404, which Go's client and Patroni take to
//! mean it expired.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_node::Node;
use shoal_registry::{NODE_HEALTH_CHECK, SessionBehavior, SessionRecord};

use super::decode::{Field, Shape, aliased, decode, field, format_go_duration, parse_go_duration};
use super::{ConsulError, ConsulResult, Query, blocking, json, read_json};

const SERVICE_CHECK: &[Field] = &[field("ID", Shape::Plain), field("Namespace", Shape::Plain)];

const SESSION: &[Field] = &[
    aliased("LockDelay", &["lock_delay"], Shape::Plain),
    field("Name", Shape::Plain),
    field("Node", Shape::Plain),
    field("Checks", Shape::Plain),
    field("NodeChecks", Shape::Plain),
    field("ServiceChecks", Shape::ArrayOf(SERVICE_CHECK)),
    field("Behavior", Shape::Plain),
    field("TTL", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct SessionBody {
    lock_delay: Option<Value>,
    name: Option<String>,
    node: Option<String>,
    checks: Option<Vec<String>>,
    node_checks: Option<Vec<String>>,
    service_checks: Option<Vec<ServiceCheckBody>>,
    behavior: Option<String>,
    #[serde(rename = "TTL")]
    ttl: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceCheckBody {
    #[serde(rename = "ID")]
    id: String,
    #[allow(
        dead_code,
        reason = "namespaces are refused elsewhere; the ID is what counts"
    )]
    namespace: Option<String>,
}

/// A session, as Consul shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SessionEntry {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    node: String,
    /// In nanoseconds, as Go encodes a duration.
    lock_delay: u64,
    behavior: &'static str,
    #[serde(rename = "TTL")]
    ttl: String,
    checks: Vec<String>,
    node_checks: Vec<String>,
    service_checks: Option<Vec<String>>,
    create_index: u64,
    modify_index: u64,
}

fn entry(session: &SessionRecord) -> SessionEntry {
    SessionEntry {
        id: session.id.clone(),
        name: session.name.clone(),
        node: session.node.clone(),
        lock_delay: u64::try_from(session.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        behavior: session.behavior.as_str(),
        ttl: session.ttl.map(format_go_duration).unwrap_or_default(),
        checks: session.checks.clone(),
        node_checks: session.checks.clone(),
        service_checks: None,
        create_index: session.create_index,
        modify_index: session.modify_index,
    }
}

/// A `LockDelay` as Consul reads it: a Go duration string, or a number that is nanoseconds,
/// or seconds when below 1000.
fn lock_delay(value: &Value) -> ConsulResult<Duration> {
    let invalid =
        || ConsulError::bad_request(format!("Request decode failed: invalid LockDelay {value}"));
    match value {
        Value::Number(number) => {
            let number = number.as_u64().ok_or_else(invalid)?;
            Ok(if number < 1000 {
                Duration::from_secs(number)
            } else {
                Duration::from_nanos(number)
            })
        }
        Value::String(text) => parse_go_duration(text).map_err(|_| invalid()),
        Value::Null => Ok(shoal_registry::DEFAULT_LOCK_DELAY),
        _ => Err(invalid()),
    }
}

/// `PUT /v1/session/create`: `{"ID": ...}`.
pub(super) async fn create(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let body: SessionBody = if body.iter().all(u8::is_ascii_whitespace) {
        SessionBody::default()
    } else {
        decode(&body, SESSION).map_err(ConsulError::bad_request)?
    };
    for (what, value) in [
        ("namespace", &body.namespace),
        ("partition", &body.partition),
    ] {
        if let Some(value) = value
            && !value.is_empty()
            && value != "default"
        {
            return Err(ConsulError::bad_request(format!(
                "{what} {value:?}: namespaces and partitions are a Consul Enterprise feature"
            )));
        }
    }
    let mut session = SessionRecord::new(String::new(), body.node.unwrap_or_default());
    session.name = body.name.unwrap_or_default();
    session.behavior = match body.behavior.as_deref() {
        None | Some("" | "release") => SessionBehavior::Release,
        Some("delete") => SessionBehavior::Delete,
        Some(other) => {
            return Err(ConsulError::bad_request(format!(
                "Invalid Behavior setting '{other}'"
            )));
        }
    };
    session.ttl = match body.ttl.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_go_duration(text).map_err(|e| {
            ConsulError::bad_request(format!("Request decode failed: invalid TTL {text:?}: {e}"))
        })?),
    };
    session.lock_delay = lock_delay(body.lock_delay.as_ref().unwrap_or(&Value::Null))?;
    // Consul's default is the node's health, unless the creator names checks (`[]`: none).
    session.checks = match (body.checks, body.node_checks) {
        (None, None) => vec![NODE_HEALTH_CHECK.to_owned()],
        (checks, node_checks) => {
            let mut all: Vec<String> = checks.unwrap_or_default();
            for check in node_checks.unwrap_or_default() {
                if !all.contains(&check) {
                    all.push(check);
                }
            }
            all
        }
    };
    for check in body.service_checks.unwrap_or_default() {
        if !session.checks.contains(&check.id) {
            session.checks.push(check.id);
        }
    }
    let created = node
        .create_session(session)
        .await
        .map_err(|error| match error {
            // A TTL out of range, missing or critical checks, an unknown node: Consul answers
            // 500 (and Patroni reads the body of the first).
            shoal_node::Error::Invalid(field) => {
                ConsulError::new(StatusCode::INTERNAL_SERVER_ERROR, field.reason)
            }
            other => other.into(),
        })?;
    #[derive(Serialize)]
    struct Created {
        #[serde(rename = "ID")]
        id: String,
    }
    Ok(json(&query, &Created { id: created.id }))
}

/// `PUT /v1/session/destroy/{id}`: `true`, whether or not it existed, as in Consul.
pub(super) async fn destroy(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    node.destroy_session(&id).await?;
    Ok(json(&query, &true))
}

/// `PUT /v1/session/renew/{id}`: the session, in a list; 404 when it is gone.
pub(super) async fn renew(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    match node.renew_session(&id).await? {
        Some(session) => Ok(json(&query, &[entry(&session)])),
        None => Err(ConsulError::new(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )),
    }
}

/// The sessions `keep` keeps, as a blocking read.
async fn listed(
    node: &Node,
    query: &Query,
    keep: impl Fn(&SessionRecord) -> bool,
) -> ConsulResult<Response> {
    let (sessions, index) = blocking(node, query, || async {
        let (sessions, index) = node.sessions().await?;
        let entries: Vec<SessionEntry> = sessions.iter().filter(|s| keep(s)).map(entry).collect();
        Ok((entries, index))
    })
    .await?;
    Ok(read_json(query, &sessions, index))
}

/// `GET /v1/session/info/{id}`: the session in a list, or `[]`.
pub(super) async fn info(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    listed(&node, &query, |s| s.id == id).await
}

/// `GET /v1/session/node/{node}`: the sessions of a node.
pub(super) async fn of_node(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    listed(&node, &query, |s| s.node == name).await
}

/// `GET /v1/session/list`: every session.
pub(super) async fn list(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    listed(&node, &query, |_| true).await
}
