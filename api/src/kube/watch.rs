//! Watches: `?watch=true` on a list streams `{"type","object"}\n` events (chunked JSON, one
//! per line, as client-go and the Python client split them) until `timeoutSeconds` or the
//! server's limit, after which kubectl's `get -w` exits and the Python client reconnects from
//! the last resourceVersion it saw.
//!
//! Events come from the node's change feed: each applied change (this node's writes, another
//! node's, scale events) re-reads the objects and sends what differs from what the watcher was
//! last sent, each carrying the change index as its resourceVersion. A watch resumed from an
//! older resourceVersion first gets what changed since (from the store's feed), or `410 Gone`
//! when the store no longer has it, as kube-apiserver answers for a compacted revision.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};
use shoal_node::Node;
use shoal_registry::Subject;
use tokio::sync::mpsc;

use super::objects::{Kind, at};
use super::status::{KubeError, KubeResult};
use super::{Query, Snapshot, table};

/// How long a watch is held without a `timeoutSeconds`: kube-apiserver's
/// `--min-request-timeout`.
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// How often a watch re-reads without a change: in a cluster, peers' replica counts come
/// from their reports, which are not in the store's change feed.
const REREAD_EVERY: Duration = Duration::from_secs(2);

/// What the watcher was last sent, by object name.
type Sent = BTreeMap<String, Value>;

fn name_of(object: &Value) -> String {
    at(object, "metadata.name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Objects equal but for their resourceVersion.
fn same(a: &Value, b: &Value) -> bool {
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        object
    };
    strip(a) == strip(b)
}

struct Watcher {
    kind: Kind,
    query: Query,
    as_table: bool,
    events: mpsc::Sender<Bytes>,
}

impl Watcher {
    /// Sends one event; false once the client has gone.
    async fn send(&self, kind: &str, object: &Value, index: u64) -> bool {
        let object = if self.as_table {
            table::table(self.kind, index, std::slice::from_ref(object))
        } else {
            object.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        self.events.send(Bytes::from(line)).await.is_ok()
    }

    fn select(&self, snapshot: &Snapshot) -> Sent {
        // The field selector was checked when the watch began.
        self.query
            .filter(snapshot.objects(self.kind))
            .into_iter()
            .map(|object| (name_of(&object), object))
            .collect()
    }

    /// Sends what differs between `sent` and `now`; false once the client has gone.
    async fn send_changes(&self, sent: &mut Sent, now: Sent, index: u64) -> bool {
        for (name, object) in &now {
            let kind = match sent.get(name) {
                None => "ADDED",
                Some(before) if !same(before, object) => "MODIFIED",
                Some(_) => continue,
            };
            if !self.send(kind, object, index).await {
                return false;
            }
        }
        for (name, before) in sent.iter() {
            if !now.contains_key(name) {
                let mut last = before.clone();
                last["metadata"]["resourceVersion"] = json!(index.to_string());
                if !self.send("DELETED", &last, index).await {
                    return false;
                }
            }
        }
        *sent = now;
        true
    }
}

/// Answers a watch request.
pub(super) async fn serve(
    node: Node,
    kind: Kind,
    query: Query,
    as_table: bool,
) -> KubeResult<Response> {
    let mut changes = node.changes();
    let snapshot = Snapshot::read(&node).await?;
    let from = match query.resource_version.as_deref() {
        None | Some("" | "0") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            KubeError::bad_request(format!(
                "resourceVersion {text:?} is not one this server gave"
            ))
        })?),
    };
    let limit = query
        .timeout_seconds
        .map_or(MAX_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let (events, received) = mpsc::channel::<Bytes>(64);
    let watcher = Watcher {
        kind,
        query,
        as_table,
        events,
    };
    // Resuming: which services changed after `from`, or Gone when the store no longer knows.
    let touched = match from {
        Some(from) if from < snapshot.index => match changed_since(&node, from, snapshot.index)
            .await
        {
            Ok(touched) => Some(touched),
            Err(()) => {
                let gone = KubeError::new(
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {from} ({})", snapshot.index),
                );
                let mut line =
                    serde_json::to_vec(&json!({ "type": "ERROR", "object": gone.to_status() }))
                        .unwrap_or_default();
                line.push(b'\n');
                return Ok(stream_response(
                    futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(line))])
                        .boxed(),
                ));
            }
        },
        _ => None,
    };
    let touched = match (from, touched) {
        (Some(from), Some(names)) => Some(classify(&node, from, names).await),
        _ => None,
    };
    tokio::spawn(async move {
        let now = watcher.select(&snapshot);
        // From nothing, every object is new; from the current index, nothing is; from an older
        // one, what changed since is sent as it is now: ADDED if it was created since, else
        // MODIFIED (and DELETED, named only, for a Deployment or Service deleted since).
        let mut sent: Sent = match (from, &touched) {
            (None, _) => Sent::new(),
            (Some(_), None) => now.clone(),
            (Some(_), Some(touched)) => {
                let mut sent = Sent::new();
                for (name, object) in &now {
                    match touched
                        .iter()
                        .find(|(service, _)| belongs_to(object, service))
                    {
                        None => {
                            sent.insert(name.clone(), object.clone());
                        }
                        // Known before, so changed: a placeholder that differs from it.
                        Some((_, Since::Before)) => {
                            sent.insert(name.clone(), Value::Null);
                        }
                        Some(_) => {}
                    }
                }
                let by_name = matches!(watcher.kind, Kind::Deployment | Kind::Service);
                if by_name && watcher.query.label_selector.is_empty() {
                    for (service, since) in touched {
                        if *since == Since::Gone && !now.contains_key(service) {
                            sent.insert(service.clone(), named_only(watcher.kind, service));
                        }
                    }
                }
                sent
            }
        };
        if !watcher.send_changes(&mut sent, now, snapshot.index).await {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        // A watch ends when the node stops, so the server can drain.
        let draining = node.draining();
        tokio::pin!(draining);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                () = &mut draining => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(REREAD_EVERY) => {}
                _ = watcher.events.closed() => return,
            }
            let Ok(snapshot) = Snapshot::read(&node).await else {
                return;
            };
            let now = watcher.select(&snapshot);
            if !watcher.send_changes(&mut sent, now, snapshot.index).await {
                return;
            }
        }
    });
    let body = futures::stream::unfold(received, |mut received| async move {
        let chunk = received.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), received))
    });
    Ok(stream_response(body.boxed()))
}

fn stream_response(
    body: futures::stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>>,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Whether `object` shows the service (or route) `service`: a Pod by its label, a Deployment
/// or a Service by its name.
fn belongs_to(object: &Value, service: &str) -> bool {
    at(object, "metadata.name").and_then(Value::as_str) == Some(service)
        || at(object, "metadata.labels")
            .and_then(|labels| labels.get(super::objects::SERVICE_LABEL))
            .and_then(Value::as_str)
            == Some(service)
}

/// The services that changed after `from` up to `until`, from the store's feed; `Err` when
/// the feed no longer reaches back to `from`.
async fn changed_since(node: &Node, from: u64, until: u64) -> Result<Vec<String>, ()> {
    let mut feed = node.store().watch(from);
    let mut touched = Vec::new();
    while let Ok(Some(change)) = tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
        let change = change.map_err(|_| ())?;
        let index = change.index();
        if let Subject::Service(name)
        | Subject::Events(name)
        | Subject::Route(name)
        | Subject::Waiting(name) = change.subject
        {
            touched.push(name.to_string());
        }
        if index >= until {
            break;
        }
    }
    Ok(touched)
}

/// Whether a service touched since a watch's version was there before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// It existed at the version: its changes are MODIFIED.
    Before,
    /// It was created after: ADDED.
    Created,
    /// It exists no more.
    Gone,
}

/// Sorts the services (and routes) touched after `from` by whether they existed then: a
/// service's first revision is its creation.
async fn classify(node: &Node, from: u64, names: Vec<String>) -> Vec<(String, Since)> {
    let mut classified: Vec<(String, Since)> = Vec::new();
    for name in names {
        if classified.iter().any(|(known, _)| *known == name) {
            continue;
        }
        let Ok(service) = name.parse::<shoal_spec::ServiceName>() else {
            continue;
        };
        let created = match node.revisions(&service).await {
            Ok(revisions) => revisions.first().map(|first| first.change_index),
            // A route keeps no creation index: its changes are MODIFIED.
            Err(_) => node
                .routes()
                .into_iter()
                .find(|route| route.name == service)
                .map(|_| 0),
        };
        let since = match created {
            Some(index) if index > from => Since::Created,
            Some(_) => Since::Before,
            None => Since::Gone,
        };
        classified.push((name, since));
    }
    classified
}

/// The last state of an object gone before a resumed watch could read it: its name.
fn named_only(kind: Kind, name: &str) -> Value {
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": { "name": name, "namespace": super::objects::NAMESPACE },
    })
}
