//! The key/value store of the Consul-compatible API: keys are strings, values raw bytes of at
//! most [`MAX_KV_VALUE_SIZE`], and each entry carries the change indexes that created and last
//! modified it, which is what check-and-set and blocking queries work from.

use shoal_spec::FieldError;

use crate::{Error, Result};

/// The largest value a key may hold, as in Consul: 512 KiB.
pub const MAX_KV_VALUE_SIZE: usize = 512 * 1024;

/// Refuses a write of a `value_len`-byte value at `key` that no backend may store: an empty
/// key, or a value over [`MAX_KV_VALUE_SIZE`].
pub fn check_put(key: &str, value_len: usize) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Invalid(FieldError::new("key", "missing key name")));
    }
    if value_len > MAX_KV_VALUE_SIZE {
        return Err(Error::Invalid(FieldError::new(
            "value",
            format!("{value_len} bytes exceeds the limit of {MAX_KV_VALUE_SIZE} bytes"),
        )));
    }
    Ok(())
}

/// Refuses a delete of the empty key that is not recursive.
pub fn check_delete(key: &str, recurse: bool) -> Result<()> {
    if key.is_empty() && !recurse {
        return Err(Error::Invalid(FieldError::new("key", "missing key name")));
    }
    Ok(())
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// An opaque number clients attach to the value.
    pub flags: u64,
    /// The change index of the write that created the key.
    pub create_index: u64,
    /// The change index of the newest write of the key.
    pub modify_index: u64,
    /// How many times the key was locked, by one session after another (a session locking
    /// what it holds does not count).
    pub lock_index: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

/// How a key is locked: what backends keep beside an entry's value.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct KvLock {
    /// [`KvEntry::lock_index`].
    pub lock_index: u64,
    /// [`KvEntry::session`].
    pub session: Option<String>,
}

impl KvEntry {
    /// What a backend keeps beside the value; `None` for a key never locked.
    pub fn lock(&self) -> Option<KvLock> {
        (self.lock_index > 0 || self.session.is_some()).then(|| KvLock {
            lock_index: self.lock_index,
            session: self.session.clone(),
        })
    }
}

/// The most operations one transaction may hold, as in Consul.
pub const MAX_TXN_OPS: usize = 64;

/// One operation of a key/value transaction ([`Store::kv_txn`](crate::Store::kv_txn)), with
/// Consul's verbs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Sets the key (keeping its lock).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The flags.
        flags: u64,
    },
    /// Sets the key if its modify index is `index` (0: if it does not exist).
    Cas {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The flags.
        flags: u64,
        /// The modify index expected.
        index: u64,
    },
    /// Locks the key for `session` and sets it: Consul's `?acquire=`.
    Lock {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The flags.
        flags: u64,
        /// The session taking the lock.
        session: String,
    },
    /// Unlocks the key held by `session` and sets it: Consul's `?release=`.
    Unlock {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The flags.
        flags: u64,
        /// The session holding the lock.
        session: String,
    },
    /// Reads the key, which must exist.
    Get {
        /// The key.
        key: String,
    },
    /// Reads every key under the prefix.
    GetTree {
        /// The prefix.
        key: String,
    },
    /// Fails unless the key's modify index is `index`.
    CheckIndex {
        /// The key.
        key: String,
        /// The modify index expected.
        index: u64,
    },
    /// Fails unless `session` holds the key's lock.
    CheckSession {
        /// The key.
        key: String,
        /// The session expected.
        session: String,
    },
    /// Fails if the key exists.
    CheckNotExists {
        /// The key.
        key: String,
    },
    /// Deletes the key.
    Delete {
        /// The key.
        key: String,
    },
    /// Deletes every key under the prefix.
    DeleteTree {
        /// The prefix.
        key: String,
    },
    /// Deletes the key if its modify index is `index`.
    DeleteCas {
        /// The key.
        key: String,
        /// The modify index expected.
        index: u64,
    },
}

impl KvOp {
    /// The key (or prefix) it works on.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Lock { key, .. }
            | KvOp::Unlock { key, .. }
            | KvOp::Get { key }
            | KvOp::GetTree { key }
            | KvOp::CheckIndex { key, .. }
            | KvOp::CheckSession { key, .. }
            | KvOp::CheckNotExists { key }
            | KvOp::Delete { key }
            | KvOp::DeleteTree { key }
            | KvOp::DeleteCas { key, .. } => key,
        }
    }

    /// Whether it works on every key under a prefix.
    pub fn is_tree(&self) -> bool {
        matches!(self, KvOp::GetTree { .. } | KvOp::DeleteTree { .. })
    }

    /// Whether it writes.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            KvOp::Set { .. }
                | KvOp::Cas { .. }
                | KvOp::Lock { .. }
                | KvOp::Unlock { .. }
                | KvOp::Delete { .. }
                | KvOp::DeleteTree { .. }
                | KvOp::DeleteCas { .. }
        )
    }

    /// The session it names, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            KvOp::Lock { session, .. }
            | KvOp::Unlock { session, .. }
            | KvOp::CheckSession { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Refuses what no backend may store, naming the operation's field.
    pub fn validate(&self) -> Result<()> {
        match self {
            KvOp::Set { key, value, .. }
            | KvOp::Cas { key, value, .. }
            | KvOp::Lock { key, value, .. }
            | KvOp::Unlock { key, value, .. } => check_put(key, value.len()),
            KvOp::DeleteTree { .. } | KvOp::GetTree { .. } => Ok(()),
            other => check_delete(other.key(), false),
        }
    }
}

/// Why an operation of a transaction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// It named a session that does not exist: Consul answers its KV endpoint's `?acquire`
    /// with 500 `invalid session`.
    InvalidSession,
    /// Another session holds the lock, or its lock-delay runs.
    LockHeld,
    /// A check or a compare-and-set failed, or a key it needed is missing.
    Failed,
}

/// An operation of a transaction that failed, and why: the whole transaction wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    /// Its position in the transaction, from 0.
    pub op_index: usize,
    /// Consul's words for what went wrong.
    pub what: String,
    /// Which kind of failure.
    pub failure: TxnFailure,
}

/// What a transaction did: every operation's entries (the entry a write left, without its
/// value, as Consul answers; the entries a read found), or the operations that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation succeeded and the writes are committed.
    Committed(Vec<KvEntry>),
    /// Some failed; nothing was written.
    Refused(Vec<TxnError>),
}

/// What [`plan`] reads through: a backend's view of the store inside its transaction (or as
/// read just before it).
pub trait KvRead {
    /// The entry at `key`.
    fn entry(&mut self, key: &str) -> Result<Option<KvEntry>>;
    /// Every entry under `prefix`, in key order.
    fn entries(&mut self, prefix: &str) -> Result<Vec<KvEntry>>;
    /// Whether the session `id` exists.
    fn session_exists(&mut self, id: &str) -> Result<bool>;
    /// Until when (Unix milliseconds) `key` may not be locked, after the invalidation of a
    /// session that held it.
    fn lock_delay(&mut self, key: &str) -> Result<Option<u64>>;
}

/// The writes a transaction makes, key by key: the entry to store (its value, flags and lock;
/// its indexes filled in by the backend), or `None` to delete the key.
pub type KvWrites = std::collections::BTreeMap<String, Option<KvEntry>>;

/// Runs `ops` against `store` as one transaction, as Consul's state store does: each
/// operation sees the writes of those before it. Returns the outcome, and the writes to
/// commit when it is [`TxnOutcome::Committed`]. Entries written carry `change_index` as their
/// modify index (and create index when new): backends that learn the index only at commit
/// pass a placeholder no client can name (`u64::MAX`) and fill it in afterwards.
pub fn plan(
    ops: &[KvOp],
    store: &mut dyn KvRead,
    change_index: u64,
    now_unix_ms: u64,
) -> Result<(TxnOutcome, KvWrites)> {
    let mut writes = KvWrites::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let mut fail = |failure: TxnFailure, what: String| {
            errors.push(TxnError {
                op_index,
                what,
                failure,
            })
        };
        let key = op.key();
        let current = |store: &mut dyn KvRead, writes: &KvWrites| -> Result<Option<KvEntry>> {
            match writes.get(key) {
                Some(written) => Ok(written.clone()),
                None => store.entry(key),
            }
        };
        let existing = if op.is_tree() {
            None
        } else {
            current(store, &writes)?
        };
        // The entry `op` leaves at `key`, from the one there now.
        let set = |value: &[u8], flags: u64, lock: Option<KvLock>| {
            let lock = lock.or_else(|| existing.as_ref().and_then(KvEntry::lock));
            KvEntry {
                key: key.to_owned(),
                value: value.to_vec(),
                flags,
                create_index: existing.as_ref().map_or(change_index, |e| e.create_index),
                modify_index: change_index,
                lock_index: lock.as_ref().map_or(0, |l| l.lock_index),
                session: lock.and_then(|l| l.session),
            }
        };
        match op {
            KvOp::Set { value, flags, .. } => {
                let entry = set(value, *flags, None);
                results.push(KvEntry {
                    value: Vec::new(),
                    ..entry.clone()
                });
                writes.insert(key.to_owned(), Some(entry));
            }
            KvOp::Cas {
                value,
                flags,
                index,
                ..
            } => {
                let holds = match &existing {
                    None => *index == 0,
                    Some(entry) => entry.modify_index == *index,
                };
                if !holds {
                    fail(
                        TxnFailure::Failed,
                        format!("failed to set key {key:?}, index is stale"),
                    );
                    continue;
                }
                let entry = set(value, *flags, None);
                results.push(KvEntry {
                    value: Vec::new(),
                    ..entry.clone()
                });
                writes.insert(key.to_owned(), Some(entry));
            }
            KvOp::Lock {
                value,
                flags,
                session,
                ..
            } => {
                if !store.session_exists(session)? {
                    fail(
                        TxnFailure::InvalidSession,
                        format!("invalid session {session:?}"),
                    );
                    continue;
                }
                let lock_index = match existing
                    .as_ref()
                    .map(|e| (e.session.as_deref(), e.lock_index))
                {
                    Some((Some(holder), lock_index)) if holder == session => lock_index,
                    Some((Some(_), _)) => {
                        fail(
                            TxnFailure::LockHeld,
                            format!("failed to lock key {key:?}, lock is already held"),
                        );
                        continue;
                    }
                    held_before => {
                        if store
                            .lock_delay(key)?
                            .is_some_and(|until| until > now_unix_ms)
                        {
                            fail(
                                TxnFailure::LockHeld,
                                format!("failed to lock key {key:?}, lock delay is in effect"),
                            );
                            continue;
                        }
                        held_before.map_or(0, |(_, lock_index)| lock_index) + 1
                    }
                };
                let entry = set(
                    value,
                    *flags,
                    Some(KvLock {
                        lock_index,
                        session: Some(session.clone()),
                    }),
                );
                results.push(KvEntry {
                    value: Vec::new(),
                    ..entry.clone()
                });
                writes.insert(key.to_owned(), Some(entry));
            }
            KvOp::Unlock {
                value,
                flags,
                session,
                ..
            } => {
                let holds = existing
                    .as_ref()
                    .is_some_and(|e| e.session.as_deref() == Some(session.as_str()));
                if !holds {
                    fail(
                        TxnFailure::LockHeld,
                        format!(
                            "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                        ),
                    );
                    continue;
                }
                let lock_index = existing.as_ref().map_or(0, |e| e.lock_index);
                let entry = set(
                    value,
                    *flags,
                    Some(KvLock {
                        lock_index,
                        session: None,
                    }),
                );
                results.push(KvEntry {
                    value: Vec::new(),
                    ..entry.clone()
                });
                writes.insert(key.to_owned(), Some(entry));
            }
            KvOp::Get { .. } => match existing {
                Some(entry) => results.push(entry),
                None => fail(TxnFailure::Failed, format!("key {key:?} doesn't exist")),
            },
            KvOp::GetTree { .. } => {
                let mut found: std::collections::BTreeMap<String, KvEntry> = store
                    .entries(key)?
                    .into_iter()
                    .map(|e| (e.key.clone(), e))
                    .collect();
                for (written, entry) in writes.range(key.to_owned()..) {
                    if !written.starts_with(key) {
                        break;
                    }
                    match entry {
                        Some(entry) => found.insert(written.clone(), entry.clone()),
                        None => found.remove(written),
                    };
                }
                results.extend(found.into_values());
            }
            KvOp::CheckIndex { index, .. } => match existing {
                Some(entry) if entry.modify_index == *index => results.push(entry),
                Some(entry) => fail(
                    TxnFailure::Failed,
                    format!(
                        "current modify index {} != {index} for key {key:?}",
                        entry.modify_index
                    ),
                ),
                None => fail(TxnFailure::Failed, format!("key {key:?} doesn't exist")),
            },
            KvOp::CheckSession { session, .. } => match existing {
                Some(entry) if entry.session.as_deref() == Some(session.as_str()) => {
                    results.push(entry)
                }
                Some(entry) => fail(
                    TxnFailure::Failed,
                    format!(
                        "current session {:?} != {session:?} for key {key:?}",
                        entry.session.unwrap_or_default()
                    ),
                ),
                None => fail(TxnFailure::Failed, format!("key {key:?} doesn't exist")),
            },
            KvOp::CheckNotExists { .. } => {
                if existing.is_some() {
                    fail(TxnFailure::Failed, format!("key {key:?} exists"));
                }
            }
            KvOp::Delete { .. } => {
                writes.insert(key.to_owned(), None);
            }
            KvOp::DeleteCas { index, .. } => {
                // A key that is not there is deleted already, as Consul answers.
                let holds = existing.as_ref().is_none_or(|e| e.modify_index == *index);
                if !holds {
                    fail(
                        TxnFailure::Failed,
                        format!("failed to delete key {key:?}, index is stale"),
                    );
                    continue;
                }
                writes.insert(key.to_owned(), None);
            }
            KvOp::DeleteTree { .. } => {
                let stored: Vec<String> = store.entries(key)?.into_iter().map(|e| e.key).collect();
                let written: Vec<String> = writes
                    .range(key.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(key))
                    .map(|(k, _)| k.clone())
                    .collect();
                for doomed in stored.into_iter().chain(written) {
                    writes.insert(doomed, None);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Ok((TxnOutcome::Refused(errors), KvWrites::new()));
    }
    Ok((TxnOutcome::Committed(results), writes))
}

/// The longest prefix every written key shares: what a transaction's change names
/// ([`Subject::Kv`](crate::Subject::Kv)), so a consumer reloads every key it may have touched.
pub fn written_prefix(writes: &KvWrites) -> String {
    let mut keys = writes.keys();
    let Some(first) = keys.next() else {
        return String::new();
    };
    let mut prefix = first.as_str();
    for key in keys {
        let shared = prefix
            .char_indices()
            .zip(key.chars())
            .find(|((_, a), b)| a != b)
            .map_or(prefix.len().min(key.len()), |((at, _), _)| at);
        let mut end = shared;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix = &prefix[..end];
    }
    prefix.to_owned()
}
