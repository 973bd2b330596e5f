//! The Consul catalog and key/value store as etcd transactions.
//!
//! Writes that add or remove registrations or checks rewrite `catalog/guard` and compare it,
//! so they are serialized cluster-wide against each other and against wasm services taking a
//! name. A check's state update compares only its own key: heartbeats from every node do not
//! contend with each other.

use std::collections::HashMap;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, DeleteOptions, KeyValue, TxnOp};
use shoal_registry::codec::encode;
use shoal_registry::{
    CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, Committed, Error, ExternalNode,
    KvEntry, KvLock, Registration, Result, SCHEMA_VERSION, Subject,
};
use shoal_spec::FieldError;

use crate::keys::{Area, CatalogEntry};
use crate::{EtcdStore, Get, Snapshot, Write, key_str, record, revision};

/// The catalog as read: registrations and checks by ID, with their keys' revisions, and the
/// guard's `mod_revision`.
struct Catalog {
    nodes: HashMap<String, (ExternalNode, i64)>,
    registrations: HashMap<String, (Registration, i64)>,
    checks: HashMap<String, (CheckRecord, i64)>,
    guard: i64,
}

impl EtcdStore {
    /// Reads the catalog from get `at` of `snapshot` (a prefix get of [`crate::Keys::catalog`]).
    fn catalog_from(&self, snapshot: &Snapshot, at: usize) -> Result<Catalog> {
        let mut catalog = Catalog {
            nodes: HashMap::new(),
            registrations: HashMap::new(),
            checks: HashMap::new(),
            guard: 0,
        };
        for kv in &snapshot.ranges[at] {
            match self.keys().catalog_entry(key_str(kv)?) {
                Some(CatalogEntry::Registration(id)) => {
                    catalog
                        .registrations
                        .insert(id.to_owned(), (registration_from(kv)?, kv.mod_revision()));
                }
                Some(CatalogEntry::Check(id)) => {
                    catalog
                        .checks
                        .insert(id.to_owned(), (check_from(kv)?, kv.mod_revision()));
                }
                Some(CatalogEntry::Node(name)) => {
                    let mut node: ExternalNode = record(kv)?;
                    node.create_index = revision(kv.create_revision());
                    node.modify_index = revision(kv.mod_revision());
                    catalog
                        .nodes
                        .insert(name.to_owned(), (node, kv.mod_revision()));
                }
                None => catalog.guard = kv.mod_revision(),
            }
        }
        Ok(catalog)
    }

    /// A get of the whole catalog.
    fn get_catalog(&self) -> Get {
        Get::prefix(self.keys().catalog())
    }

    fn guard_holds(&self, catalog: &Catalog) -> Compare {
        Compare::mod_revision(self.keys().catalog_guard(), CompareOp::Equal, catalog.guard)
    }

    fn rewrite_guard(&self) -> TxnOp {
        TxnOp::put(self.keys().catalog_guard(), "", None)
    }

    pub(crate) async fn register(
        &self,
        mut registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Committed<Registration>> {
        if registration.id.is_empty() {
            registration.id = registration.name.clone();
        }
        if registration.name.is_empty() {
            return Err(Error::Invalid(FieldError::new(
                "name",
                "missing service name",
            )));
        }
        registration.version = SCHEMA_VERSION;
        let service_key = registration
            .name
            .parse()
            .ok()
            .map(|name| self.keys().service(&name));
        self.decide(|| async {
            let mut gets = vec![self.get_catalog()];
            if let Some(key) = &service_key {
                gets.push(Get::key(key.clone()));
            }
            let snapshot = self.read(gets).await?;
            if service_key.is_some() && snapshot.one(1).is_some() {
                return Err(Error::NameTaken {
                    name: registration.name.clone(),
                    owner: "a wasm service deployed in the cluster",
                });
            }
            let catalog = self.catalog_from(&snapshot, 0)?;
            let mut compares = vec![self.guard_holds(&catalog)];
            if let Some(key) = &service_key {
                compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
            }
            let existing = catalog.registrations.get(&registration.id);
            // The indexes are known once committed: the existing create index, or this one.
            let mut stored = registration.clone();
            let mut ops = Vec::new();
            self.registration_ops(
                &catalog,
                &stored,
                &checks,
                replace_existing_checks,
                &mut compares,
                &mut ops,
            );
            ops.push(self.rewrite_guard());
            let create_index = existing.map(|(existing, _)| existing.create_index);
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Catalog, Area::Health],
                compares,
                ops,
            };
            Ok(self.commit(write).await?.map(|index| {
                stored.create_index = create_index.unwrap_or(index);
                stored.modify_index = index;
                Committed {
                    value: stored,
                    index,
                }
            }))
        })
        .await
    }

    /// The compares and operations that store `stored` with `checks` (and, with `replace`,
    /// remove its checks left out), against `catalog` as read.
    fn registration_ops(
        &self,
        catalog: &Catalog,
        stored: &Registration,
        checks: &[CheckDefinition],
        replace: bool,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) {
        ops.push(TxnOp::put(
            self.keys().registration(&stored.id),
            encode(stored),
            None,
        ));
        if replace {
            for (id, (check, modified)) in &catalog.checks {
                let kept = checks.iter().any(|definition| definition.id == *id);
                if !kept && check.definition.service_id.as_deref() == Some(stored.id.as_str()) {
                    compares.push(Compare::mod_revision(
                        self.keys().check(id),
                        CompareOp::Equal,
                        *modified,
                    ));
                    ops.push(TxnOp::delete(self.keys().check(id), None));
                }
            }
        }
        for definition in checks {
            let mut definition = definition.clone();
            definition.service_id = Some(stored.id.clone());
            self.check_ops(catalog, definition, Some(stored), compares, ops);
        }
    }

    /// The compare and operation that store the check `definition` of `registration` (or of
    /// its node), keeping its state unless it sets one.
    fn check_ops(
        &self,
        catalog: &Catalog,
        definition: CheckDefinition,
        registration: Option<&Registration>,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) {
        let existing_check = catalog.checks.get(&definition.id);
        // Keeping a check's state means comparing it: a state written meanwhile wins.
        compares.push(Compare::mod_revision(
            self.keys().check(&definition.id),
            CompareOp::Equal,
            existing_check.map_or(0, |(_, modified)| *modified),
        ));
        let check = CheckRecord::from_definition(
            definition,
            existing_check.map(|(check, _)| check),
            registration,
            0,
        );
        ops.push(TxnOp::put(
            self.keys().check(&check.definition.id),
            encode(&check),
            None,
        ));
    }

    /// See [`Store::register_node`](shoal_registry::Store::register_node).
    pub(crate) async fn register_external_node(
        &self,
        mut node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<Committed<ExternalNode>> {
        if node.name.is_empty() {
            return Err(Error::Invalid(FieldError::new("Node", "missing node name")));
        }
        node.version = SCHEMA_VERSION;
        let registration = match registration {
            Some(mut registration) => {
                if registration.id.is_empty() {
                    registration.id = registration.name.clone();
                }
                if registration.name.is_empty() {
                    return Err(Error::Invalid(FieldError::new(
                        "name",
                        "missing service name",
                    )));
                }
                registration.version = SCHEMA_VERSION;
                registration.node = node.name.clone();
                Some(registration)
            }
            None => None,
        };
        let checks: Vec<CheckDefinition> = checks
            .into_iter()
            .map(|mut check| {
                check.node = node.name.clone();
                check
            })
            .collect();
        let service_key = registration
            .as_ref()
            .and_then(|registration| registration.name.parse().ok())
            .map(|name| self.keys().service(&name));
        self.decide(|| async {
            let mut gets = vec![self.get_catalog()];
            if let Some(key) = &service_key {
                gets.push(Get::key(key.clone()));
            }
            let snapshot = self.read(gets).await?;
            if let Some(registration) = &registration
                && service_key.is_some()
                && snapshot.one(1).is_some()
            {
                return Err(Error::NameTaken {
                    name: registration.name.clone(),
                    owner: "a wasm service deployed in the cluster",
                });
            }
            let catalog = self.catalog_from(&snapshot, 0)?;
            let mut compares = vec![self.guard_holds(&catalog)];
            if let Some(key) = &service_key {
                compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
            }
            let mut ops = vec![TxnOp::put(
                self.keys().external_node(&node.name),
                encode(&node),
                None,
            )];
            // The checks of the instance registered now go with it; the others (of the node,
            // or of its instances registered earlier) are added on their own.
            let registered = registration.as_ref().map(|r| r.id.clone());
            let (own, others): (Vec<_>, Vec<_>) = checks
                .iter()
                .cloned()
                .partition(|check| registered.is_some() && check.service_id == registered);
            if let Some(registration) = &registration {
                self.registration_ops(&catalog, registration, &own, false, &mut compares, &mut ops);
            }
            for check in others {
                let instance = match &check.service_id {
                    Some(service_id) => Some(
                        catalog
                            .registrations
                            .get(service_id)
                            .map(|(registration, _)| registration)
                            .ok_or_else(|| Error::NotFound {
                                kind: "service",
                                key: service_id.clone(),
                            })?,
                    ),
                    None => None,
                };
                self.check_ops(&catalog, check, instance, &mut compares, &mut ops);
            }
            ops.push(self.rewrite_guard());
            let create_index = catalog.nodes.get(&node.name).map(|(n, _)| n.create_index);
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Catalog, Area::Health],
                compares,
                ops,
            };
            Ok(self.commit(write).await?.map(|index| {
                let mut stored = node.clone();
                stored.create_index = create_index.unwrap_or(index);
                stored.modify_index = index;
                Committed {
                    value: stored,
                    index,
                }
            }))
        })
        .await
    }

    /// See [`Store::deregister_node`](shoal_registry::Store::deregister_node).
    pub(crate) async fn deregister_external_node(&self, name: &str) -> Result<Committed<bool>> {
        self.decide(|| async {
            let snapshot = self
                .read(vec![self.get_catalog(), self.get_change_index()])
                .await?;
            let catalog = self.catalog_from(&snapshot, 0)?;
            if !catalog.nodes.contains_key(name) {
                return Ok(Some(Committed {
                    value: false,
                    index: snapshot.change_index(1),
                }));
            }
            let mut ops = vec![TxnOp::delete(self.keys().external_node(name), None)];
            for (id, (registration, _)) in &catalog.registrations {
                if registration.node == name {
                    ops.push(TxnOp::delete(self.keys().registration(id), None));
                }
            }
            for (id, (check, _)) in &catalog.checks {
                if check.definition.node == name {
                    ops.push(TxnOp::delete(self.keys().check(id), None));
                }
            }
            ops.push(self.rewrite_guard());
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Catalog, Area::Health],
                compares: vec![self.guard_holds(&catalog)],
                ops,
            };
            Ok(self
                .commit(write)
                .await?
                .map(|index| Committed { value: true, index }))
        })
        .await
    }

    pub(crate) async fn deregister(&self, id: &str) -> Result<Committed<bool>> {
        self.decide(|| async {
            let snapshot = self
                .read(vec![self.get_catalog(), self.get_change_index()])
                .await?;
            let catalog = self.catalog_from(&snapshot, 0)?;
            if !catalog.registrations.contains_key(id) {
                return Ok(Some(Committed {
                    value: false,
                    index: snapshot.change_index(1),
                }));
            }
            let mut ops = vec![TxnOp::delete(self.keys().registration(id), None)];
            for (check_id, (check, _)) in &catalog.checks {
                if check.definition.service_id.as_deref() == Some(id) {
                    ops.push(TxnOp::delete(self.keys().check(check_id), None));
                }
            }
            ops.push(self.rewrite_guard());
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Catalog, Area::Health],
                compares: vec![self.guard_holds(&catalog)],
                ops,
            };
            Ok(self
                .commit(write)
                .await?
                .map(|index| Committed { value: true, index }))
        })
        .await
    }

    pub(crate) async fn add_check(
        &self,
        definition: CheckDefinition,
    ) -> Result<Committed<CheckRecord>> {
        self.decide(|| async {
            let snapshot = self.read(vec![self.get_catalog()]).await?;
            let catalog = self.catalog_from(&snapshot, 0)?;
            let registration = match &definition.service_id {
                Some(service_id) => Some(
                    catalog
                        .registrations
                        .get(service_id)
                        .map(|(registration, _)| registration)
                        .ok_or_else(|| Error::NotFound {
                            kind: "service",
                            key: service_id.clone(),
                        })?,
                ),
                None => None,
            };
            let existing = catalog.checks.get(&definition.id);
            let mut check = CheckRecord::from_definition(
                definition.clone(),
                existing.map(|(check, _)| check),
                registration,
                0,
            );
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Health],
                compares: vec![
                    self.guard_holds(&catalog),
                    Compare::mod_revision(
                        self.keys().check(&definition.id),
                        CompareOp::Equal,
                        existing.map_or(0, |(_, modified)| *modified),
                    ),
                ],
                ops: vec![
                    TxnOp::put(self.keys().check(&definition.id), encode(&check), None),
                    self.rewrite_guard(),
                ],
            };
            let create_index = existing.map(|(existing, _)| existing.create_index);
            Ok(self.commit(write).await?.map(|index| {
                check.create_index = create_index.unwrap_or(index);
                check.modify_index = index;
                Committed {
                    value: check,
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn remove_check(&self, id: &str) -> Result<Committed<bool>> {
        self.decide(|| async {
            let snapshot = self
                .read(vec![self.get_catalog(), self.get_change_index()])
                .await?;
            let catalog = self.catalog_from(&snapshot, 0)?;
            if !catalog.checks.contains_key(id) {
                return Ok(Some(Committed {
                    value: false,
                    index: snapshot.change_index(1),
                }));
            }
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Health],
                compares: vec![self.guard_holds(&catalog)],
                ops: vec![
                    TxnOp::delete(self.keys().check(id), None),
                    self.rewrite_guard(),
                ],
            };
            Ok(self
                .commit(write)
                .await?
                .map(|index| Committed { value: true, index }))
        })
        .await
    }

    pub(crate) async fn set_check_state(
        &self,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<Committed<Option<CheckRecord>>> {
        let key = self.keys().check(id);
        self.decide(|| async {
            let snapshot = self
                .read(vec![Get::key(key.clone()), self.get_change_index()])
                .await?;
            let Some(found) = snapshot.one(0) else {
                return Ok(Some(Committed {
                    value: None,
                    index: snapshot.change_index(1),
                }));
            };
            let mut check = check_from(found)?;
            if check.status == status && check.output == output {
                return Ok(Some(Committed {
                    value: Some(check),
                    index: snapshot.change_index(1),
                }));
            }
            check.status = status;
            check.output = output.clone();
            let write = Write {
                subject: Subject::Catalog,
                areas: &[Area::Health],
                compares: vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    found.mod_revision(),
                )],
                ops: vec![TxnOp::put(key.clone(), encode(&check), None)],
            };
            Ok(self.commit(write).await?.map(|index| {
                check.modify_index = index;
                Committed {
                    value: Some(check),
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn catalog_snapshot(&self) -> Result<CatalogSnapshot> {
        let snapshot = self
            .read(vec![self.get_catalog(), self.get_indexes()])
            .await?;
        let catalog = self.catalog_from(&snapshot, 0)?;
        let mut registrations: Vec<Registration> = catalog
            .registrations
            .into_values()
            .map(|(registration, _)| registration)
            .collect();
        registrations.sort_by(|a, b| a.id.cmp(&b.id));
        let mut checks: Vec<CheckRecord> = catalog
            .checks
            .into_values()
            .map(|(check, _)| check)
            .collect();
        checks.sort_by(|a, b| a.definition.id.cmp(&b.definition.id));
        let mut nodes: Vec<ExternalNode> =
            catalog.nodes.into_values().map(|(node, _)| node).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(CatalogSnapshot {
            nodes,
            registrations,
            checks,
            indexes: self.indexes_of(&snapshot.ranges[1]),
        })
    }

    // The key/value store.

    pub(crate) async fn kv_read(&self, key: &str) -> Result<(Option<KvEntry>, u64)> {
        let snapshot = self
            .read(vec![
                Get::key(self.keys().kv(key)),
                Get::key(self.keys().kv_lock(key)),
                self.get_indexes(),
            ])
            .await?;
        let entry = snapshot
            .one(0)
            .map(|kv| kv_entry(key, kv, snapshot.one(1)))
            .transpose()?;
        let index = entry
            .as_ref()
            .map_or(self.indexes_of(&snapshot.ranges[2]).kv, |e| e.modify_index);
        Ok((entry, index))
    }

    pub(crate) async fn kv_read_prefix(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
        let snapshot = self
            .read(vec![
                Get::prefix(self.keys().kv(prefix)),
                Get::prefix(self.keys().kv_lock(prefix)),
                self.get_indexes(),
            ])
            .await?;
        let entries = self.kv_entries(&snapshot.ranges[0], &snapshot.ranges[1])?;
        Ok((entries, self.indexes_of(&snapshot.ranges[2]).kv))
    }

    /// The entries of the pairs of a prefix get of `kv/`, each with its lock from the pairs
    /// of the same prefix under `kvlock/`.
    pub(crate) fn kv_entries(
        &self,
        values: &[KeyValue],
        locks: &[KeyValue],
    ) -> Result<Vec<KvEntry>> {
        let mut locks_by_key = HashMap::with_capacity(locks.len());
        for lock in locks {
            if let Some(key) = self.keys().kv_lock_key(key_str(lock)?) {
                locks_by_key.insert(key, lock);
            }
        }
        let mut entries = Vec::with_capacity(values.len());
        for kv in values {
            let key = self
                .keys()
                .kv_key(key_str(kv)?)
                .ok_or_else(|| Error::Corrupt("a key/value key outside kv/".into()))?;
            entries.push(kv_entry(key, kv, locks_by_key.get(key).copied())?);
        }
        Ok(entries)
    }

    pub(crate) async fn kv_write(
        &self,
        key: &str,
        value: Bytes,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        shoal_registry::check_put(key, value.len())?;
        let stored_key = self.keys().kv(key);
        // The key's lock, under `kvlock/`, stays as it is, as in Consul.
        let stored = encode_value(flags, &value);
        let compares = match cas {
            None => vec![],
            Some(cas) => vec![Compare::mod_revision(
                stored_key.clone(),
                CompareOp::Equal,
                i64::try_from(cas).unwrap_or(i64::MAX),
            )],
        };
        let write = Write {
            subject: Subject::Kv(key.to_owned()),
            areas: &[Area::Kv],
            compares,
            ops: vec![TxnOp::put(stored_key, stored, None)],
        };
        match self.commit(write).await? {
            Some(index) => Ok(Committed { value: true, index }),
            None => Ok(Committed {
                value: false,
                index: self.current_change_index().await?,
            }),
        }
    }

    pub(crate) async fn kv_remove(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        shoal_registry::check_delete(key, recurse)?;
        let stored_key = self.keys().kv(key);
        let (compares, delete) = if recurse {
            // Over a range, a compare holds if it holds for every key, and for an empty range
            // it is made against a missing key: "some key exists".
            (
                vec![Compare::version(stored_key.clone(), CompareOp::Greater, 0).with_prefix()],
                vec![
                    TxnOp::delete(stored_key.clone(), Some(DeleteOptions::new().with_prefix())),
                    TxnOp::delete(
                        self.keys().kv_lock(key),
                        Some(DeleteOptions::new().with_prefix()),
                    ),
                ],
            )
        } else {
            let mut compares = vec![Compare::version(stored_key.clone(), CompareOp::Greater, 0)];
            if let Some(cas) = cas {
                compares.push(Compare::mod_revision(
                    stored_key.clone(),
                    CompareOp::Equal,
                    i64::try_from(cas).unwrap_or(i64::MAX),
                ));
            }
            (
                compares,
                vec![
                    TxnOp::delete(stored_key.clone(), None),
                    TxnOp::delete(self.keys().kv_lock(key), None),
                ],
            )
        };
        let write = Write {
            subject: Subject::Kv(key.to_owned()),
            areas: &[Area::Kv],
            compares,
            ops: delete,
        };
        if let Some(index) = self.commit(write).await? {
            return Ok(Committed { value: true, index });
        }
        // Nothing was deleted: either there was nothing to delete (a success, unless a
        // check-and-set named an index the missing key cannot have) or the index differed.
        let snapshot = self
            .read(vec![Get::key(stored_key), self.get_change_index()])
            .await?;
        let deleted_nothing_as_asked = match cas {
            Some(cas) if !recurse => snapshot.one(0).is_none() && cas == 0,
            _ => snapshot.one(0).is_none() || recurse,
        };
        Ok(Committed {
            value: deleted_nothing_as_asked,
            index: snapshot.change_index(1),
        })
    }

    /// The change index now.
    pub(crate) async fn current_change_index(&self) -> Result<u64> {
        let snapshot = self.read(vec![self.get_change_index()]).await?;
        Ok(snapshot.change_index(0))
    }
}

fn registration_from(kv: &KeyValue) -> Result<Registration> {
    let mut registration: Registration = record(kv)?;
    registration.create_index = revision(kv.create_revision());
    registration.modify_index = revision(kv.mod_revision());
    Ok(registration)
}

fn check_from(kv: &KeyValue) -> Result<CheckRecord> {
    let mut check: CheckRecord = record(kv)?;
    check.create_index = revision(kv.create_revision());
    check.modify_index = revision(kv.mod_revision());
    Ok(check)
}

/// An entry from its pair under `kv/` and its lock's under `kvlock/`, if it has one.
pub(crate) fn kv_entry(key: &str, kv: &KeyValue, lock: Option<&KeyValue>) -> Result<KvEntry> {
    let stored = kv.value();
    let (flags, value) = stored
        .split_first_chunk::<8>()
        .ok_or_else(|| Error::Corrupt(format!("key/value entry {key:?} lacks its flags")))?;
    let lock = lock
        .map(|lock| decode_lock(key, lock.value()))
        .transpose()?;
    let lock = lock.unwrap_or_default();
    Ok(KvEntry {
        key: key.to_owned(),
        value: value.to_vec(),
        flags: u64::from_be_bytes(*flags),
        create_index: revision(kv.create_revision()),
        modify_index: revision(kv.mod_revision()),
        lock_index: lock.lock_index,
        session: lock.session,
    })
}

/// The value of `kvlock/<key>`.
pub(crate) fn encode_lock(lock: &KvLock) -> Vec<u8> {
    let session = lock.session.as_deref().unwrap_or_default();
    let mut stored = Vec::with_capacity(8 + session.len());
    stored.extend_from_slice(&lock.lock_index.to_be_bytes());
    stored.extend_from_slice(session.as_bytes());
    stored
}

fn decode_lock(key: &str, stored: &[u8]) -> Result<KvLock> {
    let corrupt = || Error::Corrupt(format!("the lock of key {key:?} does not decode"));
    let (lock_index, session) = stored.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let session = std::str::from_utf8(session).map_err(|_| corrupt())?;
    Ok(KvLock {
        lock_index: u64::from_be_bytes(*lock_index),
        session: (!session.is_empty()).then(|| session.to_owned()),
    })
}

/// The value of `kv/<key>`.
pub(crate) fn encode_value(flags: u64, value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(8 + value.len());
    stored.extend_from_slice(&flags.to_be_bytes());
    stored.extend_from_slice(value);
    stored
}
