//! The dashboard: `GET /ui`, one page embedded in the binary (nothing is loaded from the
//! internet: edge sites are offline), and `GET /ui/stream`, server-sent events carrying the
//! node's typed status once a second: the node, the cluster's nodes, and every service this
//! node runs with its replicas, rate, latency, errors by kind, CPU and memory. The page plots
//! the last minutes from them, and deploys, scales and deletes through the management API,
//! so it gets the same validation and the same error messages.
//!
//! The page itself is static and public; everything it shows or does goes through routes
//! behind the token rule, with the token the page asks for once (kept in the tab's
//! `sessionStorage`). `GET /ui/config` (public) tells it whether to ask.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json};
use futures::Stream;
use serde::Serialize;
use shoal_node::{Node, NodeStatus, NodeView, ServiceStatus};

/// The page.
const PAGE: &str = include_str!("ui/index.html");

/// How often the stream sends the status.
const EVERY: Duration = Duration::from_secs(1);

/// `GET /ui`.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // The page loads nothing from elsewhere, and may not be framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        Html(PAGE),
    )
}

#[derive(Serialize)]
pub(crate) struct Config {
    /// Whether the API takes a token, which the page then asks for.
    token_required: bool,
}

/// `GET /ui/config`: what the page needs before it has a token.
pub(crate) async fn config(State(node): State<Node>) -> Json<Config> {
    Json(Config {
        token_required: node.config().token.is_some(),
    })
}

/// One message of the stream.
#[derive(Serialize)]
struct Snapshot {
    time_unix_ms: u64,
    node: NodeStatus,
    nodes: Vec<NodeView>,
    services: Vec<ServiceView>,
}

/// A service's status, with what the page shows that the status API leaves out.
#[derive(Serialize)]
struct ServiceView {
    #[serde(flatten)]
    status: ServiceStatus,
    /// Requests by outcome since the service's pool started: `{"ok": 12, "trap": 1}`.
    outcomes: std::collections::BTreeMap<&'static str, u64>,
}

async fn snapshot(node: &Node) -> Option<Snapshot> {
    let status = node.status().await.ok()?;
    let services = node
        .service_statuses()
        .into_iter()
        .map(|status| {
            let mut outcomes = std::collections::BTreeMap::new();
            for (outcome, _, count) in &status.metrics.outcomes {
                *outcomes.entry(*outcome).or_default() += count;
            }
            ServiceView { status, outcomes }
        })
        .collect();
    let time_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    Some(Snapshot {
        time_unix_ms,
        node: status,
        nodes: node.nodes(),
        services,
    })
}

/// `GET /ui/stream`: the status as an event now, then once a second.
pub(crate) async fn stream(
    State(node): State<Node>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold((node, true), |(node, first)| async move {
        if !first {
            // The stream ends when the node stops, so the server can drain.
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = node.draining() => return None,
            }
        }
        let snapshot = snapshot(&node).await?;
        let event = Event::default()
            .event("status")
            .json_data(&snapshot)
            .unwrap_or_else(|_| Event::default().comment("unencodable status"));
        Some((Ok(event), (node, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
