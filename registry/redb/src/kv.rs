//! The key/value store's transactions: keys are strings, values raw bytes, and each entry
//! carries the change indexes that created and last modified it, which is what check-and-set
//! and blocking queries work from.

use redb::{ReadableDatabase, ReadableTable};
use shoal_registry::{Committed, KvEntry, Subject};

use crate::db::{Area, Db, DbResult, Write, bump_change_index, read_indexes};
use crate::tables::{KV, META};

impl Db {
    /// The entry at `key`, and the index a blocking query on it waits past: the entry's modify
    /// index, or the key/value store's index when the key is missing (so a deletion, or a
    /// creation, moves it).
    pub(crate) fn kv_get(&self, key: &str) -> DbResult<(Option<KvEntry>, u64)> {
        let txn = self.database.begin_read()?;
        let kv_index = read_indexes(&txn.open_table(META)?)?.kv;
        let entry = txn
            .open_table(KV)?
            .get(key)?
            .map(|value| entry(key, value.value()));
        let index = entry.as_ref().map_or(kv_index, |e| e.modify_index);
        Ok((entry, index))
    }

    /// Every entry whose key starts with `prefix`, in key order, and the key/value store's
    /// index.
    pub(crate) fn kv_list(&self, prefix: &str) -> DbResult<(Vec<KvEntry>, u64)> {
        let txn = self.database.begin_read()?;
        let kv_index = read_indexes(&txn.open_table(META)?)?.kv;
        let table = txn.open_table(KV)?;
        let mut entries = Vec::new();
        for item in table.range(prefix..)? {
            let (key, value) = item?;
            if !key.value().starts_with(prefix) {
                break;
            }
            entries.push(entry(key.value(), value.value()));
        }
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
                .map(|value| entry(key, value.value()));
            let cas_holds = match (cas, &existing) {
                (None, _) => true,
                (Some(0), existing) => existing.is_none(),
                (Some(index), Some(existing)) => existing.modify_index == index,
                (Some(_), None) => false,
            };
            if !cas_holds {
                return Ok(Write::Abort(false));
            }
            let change_index = bump_change_index(txn, &[Area::Kv])?;
            let create_index = existing.map_or(change_index, |e| e.create_index);
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
                for found in &keys {
                    table.remove(found.as_str())?;
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
}

fn entry(key: &str, (create_index, modify_index, flags, value): (u64, u64, u64, &[u8])) -> KvEntry {
    KvEntry {
        key: key.to_owned(),
        value: value.to_vec(),
        flags,
        create_index,
        modify_index,
    }
}
