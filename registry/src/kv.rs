//! The key/value store of the Consul-compatible API: keys are strings, values raw bytes of at
//! most [`MAX_KV_VALUE_SIZE`], and each entry carries the change indexes that created and last
//! modified it, which is what check-and-set and blocking queries work from.

use redb::{ReadableDatabase, ReadableTable};

use crate::store::{Area, Write, bump_change_index, read_indexes};
use crate::tables::{KV, META};
use shoal_spec::FieldError;

use crate::{Error, Registry, Result};

/// The largest value a key may hold, as in Consul: 512 KiB.
pub const MAX_KV_VALUE_SIZE: usize = 512 * 1024;

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Registry {
    /// The entry at `key`, and the index a blocking query on it waits past: the entry's modify
    /// index, or the key/value store's index when the key is missing (so a deletion, or a
    /// creation, moves it).
    pub fn kv_get(&self, key: &str) -> Result<(Option<KvEntry>, u64)> {
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
    pub fn kv_list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
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
    pub fn kv_put(&self, key: &str, value: &[u8], flags: u64, cas: Option<u64>) -> Result<bool> {
        if key.is_empty() {
            return Err(Error::Invalid(FieldError::new("key", "missing key name")));
        }
        if value.len() > MAX_KV_VALUE_SIZE {
            return Err(Error::Invalid(FieldError::new(
                "value",
                format!(
                    "{} bytes exceeds the limit of {MAX_KV_VALUE_SIZE} bytes",
                    value.len()
                ),
            )));
        }
        self.write(|txn| {
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
    pub fn kv_delete(&self, key: &str, recurse: bool, cas: Option<u64>) -> Result<bool> {
        if key.is_empty() && !recurse {
            return Err(Error::Invalid(FieldError::new("key", "missing key name")));
        }
        self.write(|txn| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_backends;

    #[test]
    fn put_get_list_delete() {
        on_both_backends(|registry| {
            let (missing, index) = registry.kv_get("a").unwrap();
            assert_eq!((missing, index), (None, 1));
            assert!(registry.kv_put("a/b", b"one", 7, None).unwrap());
            assert!(registry.kv_put("a/c", b"two", 0, None).unwrap());
            assert!(registry.kv_put("b", b"", 0, None).unwrap());
            let (entry, index) = registry.kv_get("a/b").unwrap();
            let entry = entry.unwrap();
            assert_eq!(
                (entry.value.as_slice(), entry.flags),
                (b"one".as_slice(), 7)
            );
            assert_eq!(index, entry.modify_index);
            let (listed, kv_index) = registry.kv_list("a/").unwrap();
            let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, ["a/b", "a/c"]);
            assert_eq!(kv_index, registry.indexes().unwrap().kv);
            assert_eq!(registry.kv_list("").unwrap().0.len(), 3);

            assert!(registry.kv_delete("a/", true, None).unwrap());
            assert_eq!(registry.kv_list("").unwrap().0.len(), 1);
            assert!(registry.kv_delete("b", false, None).unwrap());
            assert!(registry.kv_delete("b", false, None).unwrap());
            assert!(registry.kv_list("").unwrap().0.is_empty());
        });
    }

    #[test]
    fn updates_keep_the_create_index_and_move_the_modify_index() {
        on_both_backends(|registry| {
            registry.kv_put("k", b"1", 0, None).unwrap();
            let first = registry.kv_get("k").unwrap().0.unwrap();
            registry.kv_put("k", b"2", 0, None).unwrap();
            let second = registry.kv_get("k").unwrap().0.unwrap();
            assert_eq!(second.create_index, first.create_index);
            assert!(second.modify_index > first.modify_index);
        });
    }

    #[test]
    fn check_and_set() {
        on_both_backends(|registry| {
            assert!(registry.kv_put("k", b"1", 0, Some(0)).unwrap());
            assert!(!registry.kv_put("k", b"2", 0, Some(0)).unwrap());
            let index = registry.kv_get("k").unwrap().0.unwrap().modify_index;
            assert!(!registry.kv_put("k", b"3", 0, Some(index + 100)).unwrap());
            assert!(registry.kv_put("k", b"4", 0, Some(index)).unwrap());
            assert_eq!(registry.kv_get("k").unwrap().0.unwrap().value, b"4");
            let index = registry.kv_get("k").unwrap().0.unwrap().modify_index;
            assert!(!registry.kv_delete("k", false, Some(index - 1)).unwrap());
            assert!(registry.kv_delete("k", false, Some(index)).unwrap());
            assert!(!registry.kv_put("gone", b"", 0, Some(5)).unwrap());
        });
    }

    #[test]
    fn only_changes_move_the_kv_index() {
        on_both_backends(|registry| {
            let start = registry.indexes().unwrap();
            registry.kv_put("k", b"1", 0, None).unwrap();
            let after_put = registry.indexes().unwrap();
            assert_eq!(after_put.kv, after_put.change);
            assert_eq!(
                (after_put.catalog, after_put.health),
                (start.catalog, start.health)
            );
            registry.kv_delete("missing", false, None).unwrap();
            registry.kv_put("k", b"x", 0, Some(0)).unwrap();
            assert_eq!(registry.indexes().unwrap(), after_put);
        });
    }

    #[test]
    fn bad_input_writes_nothing() {
        on_both_backends(|registry| {
            let start = registry.indexes().unwrap();
            assert!(matches!(
                registry.kv_put("", b"", 0, None),
                Err(Error::Invalid(e)) if e.field == "key"
            ));
            let too_big = vec![0; MAX_KV_VALUE_SIZE + 1];
            assert!(matches!(
                registry.kv_put("k", &too_big, 0, None),
                Err(Error::Invalid(e)) if e.field == "value"
            ));
            assert!(registry.kv_put("k", &too_big[1..], 0, None).unwrap());
            assert!(matches!(
                registry.kv_delete("", false, None),
                Err(Error::Invalid(e)) if e.field == "key"
            ));
            assert_eq!(registry.indexes().unwrap().kv, start.kv + 1);
        });
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let (entry, indexes) = {
            let registry = Registry::open(&path).unwrap();
            registry.kv_put("k", b"durable", 3, None).unwrap();
            (registry.kv_get("k").unwrap().0, registry.indexes().unwrap())
        };
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.kv_get("k").unwrap().0, entry);
        assert_eq!(registry.indexes().unwrap(), indexes);
        registry.kv_put("k", b"again", 3, None).unwrap();
        assert!(registry.indexes().unwrap().kv > indexes.kv);
    }
}
