//! The change feed: what [`Store::watch`](crate::Store::watch) yields, and [`ChangeLog`], the
//! feed a backend without a watch of its own keeps in memory.
//!
//! A change names what it touched ([`Subject`]) and carries the indexes right after it, so a
//! consumer knows both what to reload and which blocking queries to wake without another read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use shoal_spec::{Digest, ServiceName};

use crate::{Error, Indexes, Result};

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The indexes right after the change; `indexes.change` is the change's own index.
    pub indexes: Indexes,
    /// What it touched.
    pub subject: Subject,
}

impl Change {
    /// The change's index.
    pub fn index(&self) -> u64 {
        self.indexes.change
    }
}

/// What a change touched; the consumer reads the current state of it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A module was stored, named or deleted.
    Module(Digest),
    /// A service was created, updated or deleted.
    Service(ServiceName),
    /// A scale event of a service was recorded.
    Events(ServiceName),
    /// Registrations or checks changed, check states included.
    Catalog,
    /// A key, or with a recursive delete every key under it, changed.
    Kv(String),
    /// A route was created, updated or deleted.
    Route(ServiceName),
    /// A service waiting for its module was created, updated or deleted.
    Waiting(ServiceName),
    /// A session was created or invalidated (with the keys it held).
    Session(String),
}

/// A stream of changes, as [`Store::watch`](crate::Store::watch) returns it.
pub type ChangeStream = BoxStream<'static, Result<Change>>;

/// The newest changes of a store, in memory, and the watches that follow them.
///
/// A backend pushes each change after it is durable and in commit order (the redb backend
/// pushes under its writer lock). The log keeps the newest `capacity` changes; a watch asking
/// for older ones gets [`Error::Compacted`], as etcd answers a watch on a compacted revision.
/// A new log starts empty at the store's current index: after a restart, only a watch from
/// that index on can be served, which is what a node that has just listed everything asks.
pub struct ChangeLog {
    state: Mutex<LogState>,
    capacity: usize,
    /// The newest index pushed, for watches to wait on.
    newest: tokio::sync::watch::Sender<u64>,
}

struct LogState {
    /// The index before the oldest change kept: a watch from here on can be served.
    floor: u64,
    changes: VecDeque<Change>,
}

impl ChangeLog {
    /// An empty log for a store whose newest change is `current_index`, keeping at most
    /// `capacity` changes.
    pub fn new(current_index: u64, capacity: usize) -> Arc<ChangeLog> {
        Arc::new(ChangeLog {
            state: Mutex::new(LogState {
                floor: current_index,
                changes: VecDeque::with_capacity(capacity.min(1024)),
            }),
            capacity: capacity.max(1),
            newest: tokio::sync::watch::Sender::new(current_index),
        })
    }

    /// Appends a committed change; changes must come in index order.
    pub fn push(&self, change: Change) {
        let index = change.index();
        {
            let mut state = self.lock();
            if state.changes.len() == self.capacity
                && let Some(oldest) = state.changes.pop_front()
            {
                state.floor = oldest.index();
            }
            state.changes.push_back(change);
        }
        self.newest.send_replace(index);
    }

    /// Every change after `from_index`, then each new one; see
    /// [`Store::watch`](crate::Store::watch).
    pub fn watch(self: &Arc<Self>, from_index: u64) -> ChangeStream {
        let log = self.clone();
        let newest = self.newest.subscribe();
        let state = (log, newest, from_index, VecDeque::new(), false);
        Box::pin(futures::stream::unfold(
            state,
            |(log, mut newest, mut cursor, mut ready, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    if let Some(change) = ready.pop_front() {
                        return Some((Ok(change), (log, newest, cursor, ready, false)));
                    }
                    // Marked seen before reading, so a push after the read wakes the wait.
                    newest.borrow_and_update();
                    match log.after(cursor) {
                        Err(error) => {
                            return Some((Err(error), (log, newest, cursor, ready, true)));
                        }
                        Ok(changes) => {
                            if let Some(last) = changes.last() {
                                cursor = last.index();
                            }
                            ready.extend(changes);
                        }
                    }
                    if ready.is_empty() && newest.changed().await.is_err() {
                        return None;
                    }
                }
            },
        ))
    }

    /// The changes after `cursor` that the log holds, or [`Error::Compacted`] when it no longer
    /// holds all of them.
    fn after(&self, cursor: u64) -> Result<Vec<Change>> {
        let state = self.lock();
        if cursor < state.floor {
            return Err(Error::Compacted {
                requested: cursor,
                oldest: state.floor,
            });
        }
        Ok(state
            .changes
            .iter()
            .filter(|change| change.index() > cursor)
            .cloned()
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn change(index: u64) -> Change {
        Change {
            indexes: Indexes {
                change: index,
                catalog: 1,
                health: 1,
                kv: index,
            },
            subject: Subject::Kv(format!("k{index}")),
        }
    }

    #[tokio::test]
    async fn a_watch_sees_what_was_kept_then_what_comes() {
        let log = ChangeLog::new(1, 3);
        log.push(change(2));
        log.push(change(3));
        let mut watch = log.watch(1);
        assert_eq!(watch.next().await.unwrap().unwrap().index(), 2);
        assert_eq!(watch.next().await.unwrap().unwrap().index(), 3);
        let pusher = log.clone();
        tokio::spawn(async move { pusher.push(change(4)) });
        assert_eq!(watch.next().await.unwrap().unwrap().index(), 4);
        // From the newest index on, nothing is owed until the next push.
        let mut from_now = log.watch(4);
        log.push(change(5));
        assert_eq!(from_now.next().await.unwrap().unwrap().index(), 5);
    }

    #[tokio::test]
    async fn a_watch_before_what_is_kept_is_compacted() {
        let log = ChangeLog::new(10, 2);
        assert!(matches!(
            log.watch(9).next().await,
            Some(Err(Error::Compacted {
                requested: 9,
                oldest: 10
            }))
        ));
        for index in 11..=13 {
            log.push(change(index));
        }
        // 11 was dropped to keep two: a watch from 10 would miss it.
        let mut watch = log.watch(10);
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::Compacted { oldest: 11, .. }))
        ));
        assert!(watch.next().await.is_none());
        assert_eq!(log.watch(11).next().await.unwrap().unwrap().index(), 12);
    }
}
