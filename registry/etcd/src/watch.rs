//! [`Store::watch`](shoal_registry::Store::watch) on etcd: a watch of the `index/` keys, one
//! event per change, resumed on the next member when the one in use fails.
//!
//! Every transaction rewrites `index/change` with what it touched, and the `index/` key of
//! each area it changed, all at the transaction's revision; etcd delivers the events of one
//! revision together. So each revision seen is one [`Change`], and the area indexes after it
//! are known without another read. The indexes as of the watch's start are read first, at
//! that revision.
//!
//! A watch ends with [`Error::Compacted`] when etcd no longer has the revisions asked for, as
//! the redb backend's in-memory log does; the node then lists everything again.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use shoal_registry::{Change, ChangeStream, Error, Indexes, Result};

use crate::keys::{self, Area};
use crate::{EtcdStore, Get, area_index, revision};

/// How long to wait before watching again after a member failed.
const RETRY_AFTER: Duration = Duration::from_millis(200);

impl EtcdStore {
    pub(crate) fn watch_changes(&self, from_index: u64) -> ChangeStream {
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        let store = self.clone();
        tokio::spawn(async move {
            let mut closed = store.shared.closed.subscribe();
            tokio::select! {
                () = follow(&store, from_index, &sender) => {}
                () = sender.closed() => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
        });
        Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        ))
    }
}

/// Sends every change after `from_index` to `sender`, until it fails to.
async fn follow(
    store: &EtcdStore,
    from_index: u64,
    sender: &tokio::sync::mpsc::Sender<Result<Change>>,
) {
    let mut cursor = from_index.max(1);
    let mut indexes = loop {
        match indexes_at(store, cursor).await {
            Ok(indexes) => break indexes,
            Err(error @ Error::Compacted { .. }) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "reading the indexes to watch from");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    let key = store.keys().indexes();
    loop {
        let (member, mut client) = store.shared.conn.watch_client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(i64::try_from(cursor + 1).unwrap_or(i64::MAX))
            .with_progress_notify();
        let mut stream = match client.watch(key.clone(), Some(options)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(endpoint = store.shared.conn.endpoint(member), %error, "watch failed to start");
                store.shared.conn.move_on_from(member);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(endpoint = store.shared.conn.endpoint(member), %error, "watch ended");
                    break;
                }
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    let _ = sender
                        .send(Err(Error::Compacted {
                            requested: cursor,
                            oldest: revision(response.compact_revision()),
                        }))
                        .await;
                    return;
                }
                tracing::debug!(reason = response.cancel_reason(), "watch cancelled");
                break;
            }
            let mut pending: Option<(u64, Option<shoal_registry::Subject>)> = None;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let at = revision(kv.mod_revision());
                if let Some((pending_at, subject)) =
                    pending.take_if(|(pending_at, _)| *pending_at != at)
                    && !deliver(sender, &mut indexes, &mut cursor, pending_at, subject).await
                {
                    return;
                }
                let entry = pending.get_or_insert((at, None));
                if event.event_type() != EventType::Put {
                    continue;
                }
                let Some(area) = kv
                    .key_str()
                    .ok()
                    .and_then(|key| store.keys().index_area(key))
                else {
                    continue;
                };
                *area_index(&mut indexes, area) = at;
                if area == Area::Change {
                    entry.1 = keys::decode_subject(kv.value());
                }
            }
            if let Some((at, subject)) = pending
                && !deliver(sender, &mut indexes, &mut cursor, at, subject).await
            {
                return;
            }
        }
        store.shared.conn.move_on_from(member);
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Sends the change of revision `at`, if it named a subject this shoal knows; `false` when
/// nobody listens any more.
async fn deliver(
    sender: &tokio::sync::mpsc::Sender<Result<Change>>,
    indexes: &mut Indexes,
    cursor: &mut u64,
    at: u64,
    subject: Option<shoal_registry::Subject>,
) -> bool {
    *cursor = at;
    let Some(subject) = subject else {
        return true;
    };
    indexes.change = at;
    sender
        .send(Ok(Change {
            indexes: *indexes,
            subject,
        }))
        .await
        .is_ok()
}

/// The indexes as of revision `at`.
async fn indexes_at(store: &EtcdStore, at: u64) -> Result<Indexes> {
    let get = Get {
        key: store.keys().indexes(),
        options: Some(
            GetOptions::new()
                .with_prefix()
                .with_revision(i64::try_from(at).unwrap_or(i64::MAX)),
        ),
    };
    match store.read(vec![get]).await {
        Ok(snapshot) => Ok(store.indexes_of(&snapshot.ranges[0])),
        Err(Error::Unavailable(message)) if message.contains("compacted") => {
            Err(Error::Compacted {
                requested: at,
                oldest: at,
            })
        }
        Err(error) => Err(error),
    }
}
