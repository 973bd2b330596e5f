//! The key/value store's transactions: keys are strings, values raw bytes, and each entry
//! carries the change indexes that created and last modified it, which is what check-and-set
//! and blocking queries work from.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use shoal_registry::{
    Committed, KvEntry, KvLock, KvOp, KvRead, KvWrites, Result, Subject, TxnOutcome,
};

use crate::db::{Area, Db, DbResult, Write, bump_change_index, read_indexes};
use crate::tables::{KV, KV_LOCKS, LOCK_DELAYS, META, SESSIONS};

impl Db {
    /// The entry at `key`, and the index a blocking query on it waits past: the entry's modify
    /// index, or the key/value store's index when the key is missing (so a deletion, or a
    /// creation, moves it).
    pub(crate) fn kv_get(&self, key: &str) -> DbResult<(Option<KvEntry>, u64)> {
        let txn = self.database.begin_read()?;
        let kv_index = read_indexes(&txn.open_table(META)?)?.kv;
        let locks = txn.open_table(KV_LOCKS)?;
        let entry = match txn.open_table(KV)?.get(key)? {
            Some(value) => Some(entry(key, value.value(), &locks)?),
            None => None,
        };
        let index = entry.as_ref().map_or(kv_index, |e| e.modify_index);
        Ok((entry, index))
    }

    /// Every entry whose key starts with `prefix`, in key order, and the key/value store's
    /// index.
    pub(crate) fn kv_list(&self, prefix: &str) -> DbResult<(Vec<KvEntry>, u64)> {
        let txn = self.database.begin_read()?;
        let kv_index = read_indexes(&txn.open_table(META)?)?.kv;
        let entries = list(&txn.open_table(KV)?, &txn.open_table(KV_LOCKS)?, prefix)?;
        Ok((entries, kv_index))
    }

    /// Sets `key` to `value` with `flags`, returning whether it was written.
    ///
    /// With `cas`, writes only if the key's modify index is `cas`, or, for `cas == 0`, only if
    /// the key does not exist; a failed check writes nothing and returns `false`.
    /// Fails with [`Error::Invalid`] for an empty key or a value over [`MAX_KV_VALUE_SIZE`].
    pub(crate) fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
    ) -> DbResult<Committed<bool>> {
        shoal_registry::check_put(key, value.len())?;
        self.write(Subject::Kv(key.to_owned()), |txn| {
            let existing = txn
                .open_table(KV)?
                .get(key)?
                .map(|value| (value.value().0, value.value().1));
            let cas_holds = match (cas, &existing) {
                (None, _) => true,
                (Some(0), existing) => existing.is_none(),
                (Some(index), Some((_, modify_index))) => *modify_index == index,
                (Some(_), None) => false,
            };
            if !cas_holds {
                return Ok(Write::Abort(false));
            }
            let change_index = bump_change_index(txn, &[Area::Kv])?;
            // The key's lock, if any, stays as it is, as in Consul.
            let create_index = existing.map_or(change_index, |(create_index, _)| create_index);
            txn.open_table(KV)?
                .insert(key, (create_index, change_index, flags, value))?;
            Ok(Write::Commit(true))
        })
    }

    /// Deletes `key`, or with `recurse` every key starting with it, returning whether the
    /// delete happened (deleting nothing is a success).
    ///
    /// With `cas` (and not `recurse`), deletes only if the key's modify index is `cas`.
    pub(crate) fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> DbResult<Committed<bool>> {
        shoal_registry::check_delete(key, recurse)?;
        self.write(Subject::Kv(key.to_owned()), |txn| {
            let mut table = txn.open_table(KV)?;
            let n_deleted = if recurse {
                let keys: Vec<String> = {
                    let mut keys = Vec::new();
                    for item in table.range(key..)? {
                        let (found, _) = item?;
                        if !found.value().starts_with(key) {
                            break;
                        }
                        keys.push(found.value().to_owned());
                    }
                    keys
                };
                let mut locks = txn.open_table(KV_LOCKS)?;
                for found in &keys {
                    table.remove(found.as_str())?;
                    locks.remove(found.as_str())?;
                }
                keys.len()
            } else {
                let modify_index = table.get(key)?.map(|value| value.value().1);
                match (cas, modify_index) {
                    (Some(cas), Some(index)) if cas != index => return Ok(Write::Abort(false)),
                    (Some(cas), None) if cas != 0 => return Ok(Write::Abort(false)),
                    (_, None) => 0,
                    (_, Some(_)) => {
                        table.remove(key)?;
                        txn.open_table(KV_LOCKS)?.remove(key)?;
                        1
                    }
                }
            };
            drop(table);
            if n_deleted == 0 {
                return Ok(Write::Abort(true));
            }
            bump_change_index(txn, &[Area::Kv])?;
            Ok(Write::Commit(true))
        })
    }

    /// Runs a transaction of key/value operations in one redb write transaction; see
    /// [`Store::kv_txn`](shoal_registry::Store::kv_txn).
    pub(crate) fn kv_txn(&self, ops: &[KvOp]) -> DbResult<Committed<TxnOutcome>> {
        for op in ops {
            op.validate()?;
        }
        let now = self.clock.now_unix_ms();
        let committed = self.write_with_subject(|txn| {
            let next = read_indexes(&txn.open_table(META)?)?.change + 1;
            let (outcome, writes) = {
                let mut view = TxnView { txn };
                shoal_registry::plan(ops, &mut view, next, now)?
            };
            if writes.is_empty() {
                return Ok((Write::Abort(outcome), Subject::Kv(String::new())));
            }
            let change_index = bump_change_index(txn, &[Area::Kv])?;
            debug_assert_eq!(change_index, next);
            apply_writes(txn, &writes)?;
            let subject = Subject::Kv(shoal_registry::written_prefix(&writes));
            Ok((Write::Commit(outcome), subject))
        })?;
        Ok(committed)
    }
}

/// Stores `writes` (entries with their indexes set, or deletions) with their locks; a key
/// locked anew loses its expired lock-delay.
pub(crate) fn apply_writes(txn: &WriteTransaction, writes: &KvWrites) -> DbResult<()> {
    let mut kv = txn.open_table(KV)?;
    let mut locks = txn.open_table(KV_LOCKS)?;
    let mut delays = txn.open_table(LOCK_DELAYS)?;
    for (key, written) in writes {
        match written {
            Some(entry) => {
                kv.insert(
                    key.as_str(),
                    (
                        entry.create_index,
                        entry.modify_index,
                        entry.flags,
                        entry.value.as_slice(),
                    ),
                )?;
                match entry.lock() {
                    Some(lock) => {
                        if lock.session.is_some() {
                            delays.remove(key.as_str())?;
                        }
                        locks.insert(
                            key.as_str(),
                            (lock.lock_index, lock.session.as_deref().unwrap_or_default()),
                        )?;
                    }
                    None => {
                        locks.remove(key.as_str())?;
                    }
                }
            }
            None => {
                kv.remove(key.as_str())?;
                locks.remove(key.as_str())?;
            }
        }
    }
    Ok(())
}

/// The store as a transaction sees it, for [`shoal_registry::plan`].
struct TxnView<'t> {
    txn: &'t WriteTransaction,
}

impl KvRead for TxnView<'_> {
    fn entry(&mut self, key: &str) -> Result<Option<KvEntry>> {
        let read = || -> DbResult<Option<KvEntry>> {
            let locks = self.txn.open_table(KV_LOCKS)?;
            match self.txn.open_table(KV)?.get(key)? {
                Some(value) => Ok(Some(entry(key, value.value(), &locks)?)),
                None => Ok(None),
            }
        };
        read().map_err(|error| error.0)
    }

    fn entries(&mut self, prefix: &str) -> Result<Vec<KvEntry>> {
        let read = || -> DbResult<Vec<KvEntry>> {
            list(
                &self.txn.open_table(KV)?,
                &self.txn.open_table(KV_LOCKS)?,
                prefix,
            )
        };
        read().map_err(|error| error.0)
    }

    fn session_exists(&mut self, id: &str) -> Result<bool> {
        let read = || -> DbResult<bool> { Ok(self.txn.open_table(SESSIONS)?.get(id)?.is_some()) };
        read().map_err(|error| error.0)
    }

    fn lock_delay(&mut self, key: &str) -> Result<Option<u64>> {
        let read = || -> DbResult<Option<u64>> {
            Ok(self
                .txn
                .open_table(LOCK_DELAYS)?
                .get(key)?
                .map(|until| until.value()))
        };
        read().map_err(|error| error.0)
    }
}

/// Every entry under `prefix`, in key order, with its lock.
fn list(
    kv: &impl ReadableTable<&'static str, (u64, u64, u64, &'static [u8])>,
    locks: &impl ReadableTable<&'static str, (u64, &'static str)>,
    prefix: &str,
) -> DbResult<Vec<KvEntry>> {
    let mut entries = Vec::new();
    for item in kv.range(prefix..)? {
        let (key, value) = item?;
        if !key.value().starts_with(prefix) {
            break;
        }
        entries.push(entry(key.value(), value.value(), locks)?);
    }
    Ok(entries)
}

fn entry(
    key: &str,
    (create_index, modify_index, flags, value): (u64, u64, u64, &[u8]),
    locks: &impl ReadableTable<&'static str, (u64, &'static str)>,
) -> DbResult<KvEntry> {
    let lock = locks.get(key)?.map(|lock| {
        let (lock_index, session) = lock.value();
        KvLock {
            lock_index,
            session: (!session.is_empty()).then(|| session.to_owned()),
        }
    });
    let lock = lock.unwrap_or_default();
    Ok(KvEntry {
        key: key.to_owned(),
        value: value.to_vec(),
        flags,
        create_index,
        modify_index,
        lock_index: lock.lock_index,
        session: lock.session,
    })
}
