//! Sessions and key/value transactions on etcd.
//!
//! A session with a TTL has an etcd lease of its own (of [`TTL_MULTIPLIER`] times its TTL, as
//! Consul lets a session run), and `session-alive/<id>` under it: a renewal, through any node,
//! keeps the lease alive, so the session means the same on every node. When the lease lapses,
//! etcd deletes that key; every node watches for it ([`expire_sessions`]) and invalidates the
//! session, one of them winning (the invalidation compares the session's record, so it happens
//! once). A node that starts looks for sessions whose key is already gone.
//!
//! A transaction reads every key its operations may look at as of one revision, decides with
//! [`shoal_registry::plan`] as the redb backend does, and commits only if `index/kv` (which
//! every key/value write rewrites) and the sessions it named are unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, TxnOp, WatchOptions};
use shoal_registry::codec::encode;
use shoal_registry::{
    Committed, Error, KvEntry, KvLock, KvOp, KvRead, KvWrites, Result, SessionBehavior,
    SessionRecord, Subject, TxnOutcome,
};
use shoal_spec::FieldError;

use crate::catalog::{encode_lock, encode_value};
use crate::conn;
use crate::keys::Area;
use crate::{EtcdStore, Get, Shared, Write, key_str, record, revision};

/// The most operations etcd takes in one transaction (its `--max-txn-ops` default).
const MAX_TXN_OPS: usize = 128;

/// The index of what a transaction writes, until it commits.
const PENDING: u64 = u64::MAX;

/// How long to wait before watching again after a member failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What a transaction read: every entry its operations may look at, the sessions they name,
/// and the lock-delays of their keys.
struct Prefetched {
    entries: BTreeMap<String, KvEntry>,
    sessions: HashMap<String, bool>,
    delays: HashMap<String, u64>,
}

impl KvRead for Prefetched {
    fn entry(&mut self, key: &str) -> Result<Option<KvEntry>> {
        Ok(self.entries.get(key).cloned())
    }

    fn entries(&mut self, prefix: &str) -> Result<Vec<KvEntry>> {
        Ok(self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    fn session_exists(&mut self, id: &str) -> Result<bool> {
        Ok(self.sessions.get(id).copied().unwrap_or(false))
    }

    fn lock_delay(&mut self, key: &str) -> Result<Option<u64>> {
        Ok(self.delays.get(key).copied())
    }
}

fn session_from(kv: &etcd_client::KeyValue) -> Result<SessionRecord> {
    let mut session: SessionRecord = record(kv)?;
    session.create_index = revision(kv.create_revision());
    session.modify_index = revision(kv.create_revision());
    Ok(session)
}

fn decode_delay(stored: &[u8]) -> Option<u64> {
    stored
        .first_chunk::<8>()
        .map(|until| u64::from_be_bytes(*until))
}

impl EtcdStore {
    /// See [`Store::kv_txn`](shoal_registry::Store::kv_txn).
    pub(crate) async fn kv_transaction(&self, ops: Vec<KvOp>) -> Result<Committed<TxnOutcome>> {
        for op in &ops {
            op.validate()?;
        }
        let keys = self.keys();
        let mut gets = vec![Get::key(keys.index(Area::Kv)), self.get_change_index()];
        let mut named_sessions: Vec<&str> = ops.iter().filter_map(KvOp::session).collect();
        named_sessions.sort_unstable();
        named_sessions.dedup();
        for op in &ops {
            let key = op.key();
            if op.is_tree() {
                gets.push(Get::prefix(keys.kv(key)));
                gets.push(Get::prefix(keys.kv_lock(key)));
            } else {
                gets.push(Get::key(keys.kv(key)));
                gets.push(Get::key(keys.kv_lock(key)));
                gets.push(Get::key(keys.kv_delay(key)));
            }
        }
        let sessions_at = gets.len();
        for id in &named_sessions {
            gets.push(Get::key(keys.session(id)));
        }
        let now = self.shared.clock.now_unix_ms();
        self.decide(|| async {
            let snapshot = self.read_pinned(gets.clone()).await?;
            let kv_guard = snapshot.mod_revision(0);
            let mut values = Vec::new();
            let mut locks = Vec::new();
            let mut delays = HashMap::new();
            for range in &snapshot.ranges[2..sessions_at] {
                for kv in range {
                    let key = key_str(kv)?;
                    if keys.kv_key(key).is_some() {
                        values.push(kv.clone());
                    } else if keys.kv_lock_key(key).is_some() {
                        locks.push(kv.clone());
                    } else if let Some(until) = decode_delay(kv.value()) {
                        let user_key = key
                            .strip_prefix(&keys.kv_delay(""))
                            .unwrap_or_default()
                            .to_owned();
                        delays.insert(user_key, until);
                    }
                }
            }
            let entries: BTreeMap<String, KvEntry> = self
                .kv_entries(&values, &locks)?
                .into_iter()
                .map(|entry| (entry.key.clone(), entry))
                .collect();
            let locks_before: HashMap<String, KvLock> = entries
                .values()
                .filter_map(|entry| Some((entry.key.clone(), entry.lock()?)))
                .collect();
            let mut compares = vec![Compare::mod_revision(
                keys.index(Area::Kv),
                CompareOp::Equal,
                kv_guard,
            )];
            let mut sessions = HashMap::new();
            for (at, id) in named_sessions.iter().enumerate() {
                let found = snapshot.one(sessions_at + at);
                sessions.insert((*id).to_owned(), found.is_some());
                compares.push(Compare::mod_revision(
                    keys.session(id),
                    CompareOp::Equal,
                    found.map_or(0, etcd_client::KeyValue::mod_revision),
                ));
            }
            let mut view = Prefetched {
                entries,
                sessions,
                delays,
            };
            // The revision is known only at commit: entries written carry a placeholder no
            // client can name (so a check of an index written earlier in the transaction
            // fails, as it does in redb), filled in below.
            let (outcome, writes) = shoal_registry::plan(&ops, &mut view, PENDING, now)?;
            if writes.is_empty() {
                return Ok(Some(Committed {
                    value: outcome,
                    index: snapshot.change_index(1),
                }));
            }
            let ops = self.write_ops(&writes, &locks_before, &view.delays);
            if ops.len() + 2 > MAX_TXN_OPS {
                return Err(Error::Invalid(FieldError::new(
                    "ops",
                    format!(
                        "this transaction writes {} etcd keys, more than etcd takes in one ({MAX_TXN_OPS}): split it",
                        ops.len() + 2
                    ),
                )));
            }
            let write = Write {
                subject: Subject::Kv(shoal_registry::written_prefix(&writes)),
                areas: &[Area::Kv],
                compares,
                ops,
            };
            let Some(index) = self.commit(write).await? else {
                return Ok(None);
            };
            let outcome = match outcome {
                TxnOutcome::Committed(mut results) => {
                    for entry in &mut results {
                        if entry.modify_index == PENDING {
                            entry.modify_index = index;
                        }
                        if entry.create_index == PENDING {
                            entry.create_index = index;
                        }
                    }
                    TxnOutcome::Committed(results)
                }
                refused => refused,
            };
            Ok(Some(Committed {
                value: outcome,
                index,
            }))
        })
        .await
    }

    /// The etcd operations that store `writes`: each key's value, and its lock when it
    /// changed; a key locked anew loses its lock-delay.
    fn write_ops(
        &self,
        writes: &KvWrites,
        locks_before: &HashMap<String, KvLock>,
        delays: &HashMap<String, u64>,
    ) -> Vec<TxnOp> {
        let keys = self.keys();
        let mut ops = Vec::with_capacity(writes.len());
        for (key, written) in writes {
            let before = locks_before.get(key);
            let had_lock = before.is_some();
            match written {
                Some(entry) => {
                    ops.push(TxnOp::put(
                        keys.kv(key),
                        encode_value(entry.flags, &entry.value),
                        None,
                    ));
                    match entry.lock() {
                        Some(lock) => {
                            if before != Some(&lock) {
                                ops.push(TxnOp::put(keys.kv_lock(key), encode_lock(&lock), None));
                            }
                            if lock.session.is_some() && delays.contains_key(key) {
                                ops.push(TxnOp::delete(keys.kv_delay(key), None));
                            }
                        }
                        None if had_lock => ops.push(TxnOp::delete(keys.kv_lock(key), None)),
                        None => {}
                    }
                }
                None => {
                    ops.push(TxnOp::delete(keys.kv(key), None));
                    if had_lock {
                        ops.push(TxnOp::delete(keys.kv_lock(key), None));
                    }
                }
            }
        }
        ops
    }

    /// See [`Store::create_session`](shoal_registry::Store::create_session).
    pub(crate) async fn create_session_record(
        &self,
        mut session: SessionRecord,
    ) -> Result<Committed<SessionRecord>> {
        session.validate(Duration::ZERO)?;
        let keys = self.keys();
        let key = keys.session(&session.id);
        let lease = match session.lapses_after() {
            Some(after) => Some(self.grant(after).await?),
            None => None,
        };
        let mut ops = vec![TxnOp::put(key.clone(), encode(&session), None)];
        if let Some(lease) = lease {
            ops.push(TxnOp::put(
                keys.session_alive(&session.id),
                "",
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        let write = Write {
            subject: Subject::Session(session.id.clone()),
            areas: &[],
            compares: vec![Compare::version(key, CompareOp::Equal, 0)],
            ops,
        };
        match self.commit(write).await {
            Ok(Some(index)) => {
                session.create_index = index;
                session.modify_index = index;
                Ok(Committed {
                    value: session,
                    index,
                })
            }
            Ok(None) => {
                if let Some(lease) = lease {
                    self.revoke(lease).await;
                }
                Err(Error::Conflict {
                    kind: "session",
                    name: session.id,
                    expected: "no session".into(),
                    found: "a session".into(),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// See [`Store::renew_session`](shoal_registry::Store::renew_session): keeps the
    /// session's lease alive.
    pub(crate) async fn renew_session_lease(&self, id: &str) -> Result<Option<SessionRecord>> {
        let keys = self.keys();
        let snapshot = self
            .read(vec![
                Get::key(keys.session(id)),
                Get::key(keys.session_alive(id)),
            ])
            .await?;
        let Some(found) = snapshot.one(0) else {
            return Ok(None);
        };
        let session = session_from(found)?;
        if session.ttl.is_none() {
            return Ok(Some(session));
        }
        // Lapsed: a node is invalidating it, or will.
        let Some(alive) = snapshot.one(1) else {
            return Ok(None);
        };
        if self.keep_lease(alive.lease(), "a session").await? {
            Ok(Some(session))
        } else {
            Ok(None)
        }
    }

    /// Every session, and the change index.
    pub(crate) async fn session_records(&self) -> Result<(Vec<SessionRecord>, u64)> {
        let snapshot = self
            .read(vec![
                Get::prefix(self.keys().sessions()),
                self.get_change_index(),
            ])
            .await?;
        let sessions = snapshot.ranges[0]
            .iter()
            .map(session_from)
            .collect::<Result<Vec<_>>>()?;
        Ok((sessions, snapshot.change_index(1)))
    }

    /// See [`Store::destroy_session`](shoal_registry::Store::destroy_session).
    pub(crate) async fn invalidate_session(&self, id: &str) -> Result<Committed<bool>> {
        let keys = self.keys();
        let now = self.shared.clock.now_unix_ms();
        let lease = self
            .decide(|| async {
                let snapshot = self
                    .read(vec![
                        Get::key(keys.session(id)),
                        Get::key(keys.session_alive(id)),
                        Get::prefix(keys.kv_lock("")),
                        self.get_change_index(),
                    ])
                    .await?;
                let Some(found) = snapshot.one(0) else {
                    return Ok(Some((None, false, snapshot.change_index(3))));
                };
                let session = session_from(found)?;
                let lease = snapshot.one(1).map(etcd_client::KeyValue::lease);
                let mut held = Vec::new();
                for lock in &snapshot.ranges[2] {
                    let Some(key) = keys.kv_lock_key(key_str(lock)?) else {
                        continue;
                    };
                    let value = lock.value();
                    if value.len() > 8 && &value[8..] == id.as_bytes() {
                        held.push(key.to_owned());
                    }
                }
                // No lock taken or changed since the read (a key taken by this session meanwhile
                // must be released too); other key/value writes do not matter here.
                let mut compares = vec![
                    Compare::mod_revision(keys.session(id), CompareOp::Equal, found.mod_revision()),
                    Compare::mod_revision(keys.kv_lock(""), CompareOp::Less, snapshot.revision + 1)
                        .with_prefix(),
                ];
                let mut ops = vec![
                    TxnOp::delete(keys.session(id), None),
                    TxnOp::delete(keys.session_alive(id), None),
                ];
                if !held.is_empty() {
                    let (entries, _) = {
                        let values = self
                            .read(
                                held.iter()
                                    .flat_map(|key| {
                                        [Get::key(keys.kv(key)), Get::key(keys.kv_lock(key))]
                                    })
                                    .collect(),
                            )
                            .await?;
                        let mut entries = Vec::new();
                        for pair in values.ranges.chunks(2) {
                            if let ([value], lock) = (pair[0].as_slice(), pair[1].as_slice()) {
                                let key = keys.kv_key(key_str(value)?).unwrap_or_default();
                                entries.push(crate::catalog::kv_entry(key, value, lock.first())?);
                                compares.push(Compare::mod_revision(
                                    keys.kv(key),
                                    CompareOp::Equal,
                                    value.mod_revision(),
                                ));
                            }
                        }
                        (entries, ())
                    };
                    let until = now.saturating_add(
                        u64::try_from(session.lock_delay.as_millis()).unwrap_or(u64::MAX),
                    );
                    for entry in entries {
                        let key = entry.key.clone();
                        match session.behavior {
                            SessionBehavior::Release => {
                                ops.push(TxnOp::put(
                                    keys.kv(&key),
                                    encode_value(entry.flags, &entry.value),
                                    None,
                                ));
                                let mut lock = entry.lock().unwrap_or_default();
                                lock.session = None;
                                ops.push(TxnOp::put(keys.kv_lock(&key), encode_lock(&lock), None));
                            }
                            SessionBehavior::Delete => {
                                ops.push(TxnOp::delete(keys.kv(&key), None));
                                ops.push(TxnOp::delete(keys.kv_lock(&key), None));
                            }
                        }
                        if !session.lock_delay.is_zero() {
                            ops.push(TxnOp::put(
                                keys.kv_delay(&key),
                                until.to_be_bytes().to_vec(),
                                None,
                            ));
                        }
                    }
                }
                let areas: &'static [Area] = if held.is_empty() { &[] } else { &[Area::Kv] };
                let write = Write {
                    subject: Subject::Session(id.to_owned()),
                    areas,
                    compares,
                    ops,
                };
                Ok(self.commit(write).await?.map(|index| (lease, true, index)))
            })
            .await?;
        let (lease, destroyed, index) = lease;
        if let Some(lease) = lease {
            self.revoke(lease).await;
        }
        Ok(Committed {
            value: destroyed,
            index,
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        let seconds = i64::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
        self.grant_lease(seconds).await
    }

    async fn revoke(&self, lease: i64) {
        self.revoke_lease(lease).await;
    }

    /// Invalidates every session with a TTL whose lease is gone; returns the revision read.
    async fn sweep_lapsed(&self) -> Result<i64> {
        let keys = self.keys();
        let snapshot = self
            .read(vec![
                Get::prefix(keys.sessions()),
                Get::prefix(keys.session_alive("")),
            ])
            .await?;
        let alive: Vec<&str> = snapshot.ranges[1]
            .iter()
            .filter_map(|kv| keys.session_alive_id(kv.key_str().ok()?))
            .collect();
        for found in &snapshot.ranges[0] {
            let session = session_from(found)?;
            if session.ttl.is_some() && !alive.contains(&session.id.as_str()) {
                self.lapsed(&session.id).await?;
            }
        }
        Ok(snapshot.revision)
    }

    /// Invalidates a session whose lease lapsed; an error means it must be tried again.
    async fn lapsed(&self, id: &str) -> Result<()> {
        if self.invalidate_session(id).await?.value {
            tracing::info!(session = %id, "a session's TTL lapsed: invalidated");
        }
        Ok(())
    }
}

/// Invalidates sessions whose lease lapsed, as etcd deletes their `session-alive/` keys, until
/// the store closes or is dropped.
pub(crate) async fn expire_sessions(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let store = EtcdStore { shared: strong };
        if store.open().is_err() {
            return;
        }
        let mut closed = store.shared.closed.subscribe();
        let followed = tokio::select! {
            followed = follow_lapses(&store) => followed,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if let Err(error) = followed {
            tracing::debug!(%error, "following sessions' leases");
        }
        drop(store);
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Sweeps, then watches `session-alive/` for deletions, until the watch fails.
async fn follow_lapses(store: &EtcdStore) -> Result<()> {
    let swept_at = store.sweep_lapsed().await?;
    let keys = store.keys();
    let (member, mut client) = store.shared.conn.watch_client();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(swept_at + 1);
    let mut stream = client
        .watch(keys.session_alive(""), Some(options))
        .await
        .map_err(|error| conn::unavailable(store.shared.conn.endpoint(member), &error))?;
    loop {
        let Some(response) = stream
            .message()
            .await
            .map_err(|error| conn::unavailable(store.shared.conn.endpoint(member), &error))?
        else {
            store.shared.conn.move_on_from(member);
            return Err(Error::Unavailable("the watch of sessions ended".into()));
        };
        if response.canceled() {
            return Err(Error::Unavailable(format!(
                "the watch of sessions was cancelled: {}",
                response.cancel_reason()
            )));
        }
        for event in response.events() {
            if event.event_type() != EventType::Delete {
                continue;
            }
            let Some(id) = event
                .kv()
                .and_then(|kv| kv.key_str().ok())
                .and_then(|key| keys.session_alive_id(key))
            else {
                continue;
            };
            // A failure ends the watch: the sweep that follows finds the session again.
            store.lapsed(id).await?;
        }
    }
}
