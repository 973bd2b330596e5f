//! Reading a service's guest log over HTTP, for the management API
//! (`GET /v1/services/{name}/logs`) and the Kubernetes API (`…/pods/{name}/log`): the kept
//! lines a filter selects, the newest `tail` of them, then (with `follow`) each new line as
//! it is written, as `text/plain`, until the client goes or the service is deleted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use shoal_node::{GuestLog, LogLine};
use tokio::sync::broadcast::error::RecvError;

/// What to read of a log.
pub(crate) struct LogQuery {
    /// Only lines of this replica.
    pub(crate) replica: Option<u64>,
    /// Only lines written at or after this time.
    pub(crate) since: Option<SystemTime>,
    /// Only the newest this many kept lines.
    pub(crate) tail: Option<usize>,
    /// Then every new line, until the client goes.
    pub(crate) follow: bool,
    /// Each line prefixed by its RFC 3339 time (kubectl's `--timestamps`).
    pub(crate) timestamps: bool,
    /// Each line prefixed by its replica and stream (`shoal logs`).
    pub(crate) origin: bool,
}

impl LogQuery {
    fn selects(&self, line: &LogLine) -> bool {
        self.replica.is_none_or(|replica| line.replica == replica)
            && self.since.is_none_or(|since| line.time >= since)
    }

    fn format(&self, line: &LogLine) -> Bytes {
        let mut text = String::with_capacity(line.text.len() + 48);
        if self.timestamps {
            text.push_str(&humantime::format_rfc3339_nanos(line.time).to_string());
            text.push(' ');
        }
        if self.origin {
            text.push_str(&format!(
                "replica-{} {}: ",
                line.replica,
                line.stream.as_str()
            ));
        }
        text.push_str(&line.text);
        text.push('\n');
        Bytes::from(text)
    }
}

/// Parses a `since` of either form: a duration back from now (`10m`) or an RFC 3339 time.
pub(crate) fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("since {text:?} is neither a duration (\"10m\") nor an RFC 3339 time")
    })?;
    Ok(SystemTime::now()
        .checked_sub(back)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

/// The answer: the selected lines, and with `follow` a stream of the new ones, which ends
/// when the service is deleted or `until` resolves (the node's shutdown).
pub(crate) fn respond(
    log: Arc<GuestLog>,
    query: LogQuery,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let select = |line: &LogLine| query.selects(line);
    if !query.follow {
        let lines = log.lines(select, query.tail);
        let body: Vec<u8> = lines.iter().flat_map(|line| query.format(line)).collect();
        return (content_type, body).into_response();
    }
    let (kept, live) = log.follow(select, query.tail);
    let kept: Vec<Bytes> = kept.iter().map(|line| query.format(line)).collect();
    // The log is held weakly: a deleted service's log ends the stream.
    let weak = Arc::downgrade(&log);
    drop(log);
    let live = futures::stream::unfold((live, weak, query), |(mut live, weak, query)| async move {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), live.recv()).await;
            match next {
                Ok(Ok(line)) if query.selects(&line) => {
                    let chunk = query.format(&line);
                    return Some((chunk, (live, weak, query)));
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(missed))) => {
                    let chunk =
                        Bytes::from(format!("({missed} lines missed: the reader fell behind)\n"));
                    return Some((chunk, (live, weak, query)));
                }
                Ok(Err(RecvError::Closed)) => return None,
                // Quiet: check that the service still exists.
                Err(_) if weak.strong_count() == 0 => return None,
                Err(_) => {}
            }
        }
    });
    let body = futures::stream::iter(kept)
        .chain(live.take_until(until))
        .map(Ok::<_, std::convert::Infallible>);
    (content_type, Body::from_stream(body)).into_response()
}
