//! [`Registry`]: the transactions over the tables in `tables.rs`, for modules, services and
//! their revisions, and each service's bounded history of scale events.
//!
//! **Invariants:**
//! every change is exactly one redb write transaction, committed with redb's default (durable)
//! commit, so an acknowledged change survives `kill -9`;
//! every change of configuration (modules and services) increments the change index in that
//! same transaction, and a request that changes nothing (an existing module, an unchanged spec,
//! a failed check) commits nothing;
//! recording a scale event is a write too, an observation rather than configuration, which
//! bumps the change index for health watchers only;
//! no transaction outlives the method that began it.
//! redb serializes write transactions (`begin_write` blocks while another is live), which is
//! what makes the check-then-write sequences here, like "is this module used?", race free.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use shoal_spec::{Digest, FieldError, ModuleKind, ServiceName, ServiceSpec};

use crate::record::{EventRecord, ModuleRecord, RevisionRecord, SCHEMA_VERSION, ServiceRecord};
use crate::tables::{
    CHANGE_INDEX_KEY, CHECKS, EVENTS, INDEX_CATALOG_KEY, INDEX_HEALTH_KEY, INDEX_KV_KEY, KV, META,
    MODULE_BYTES, MODULES, REGISTRATIONS, REVISIONS, SERVICES,
};
use crate::{Error, Result};

/// The scale events kept per service: recording one more prunes the oldest.
pub const MAX_EVENTS_PER_SERVICE: usize = 100;

/// The durable registry of one node: modules, services, service revisions and the recent scale
/// events of each service, in one redb database.
///
/// All methods are synchronous and may block on disk IO, or on another thread's write; call
/// them from async code through `spawn_blocking`.
/// A `Registry` is `Send + Sync`: share it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    pub(crate) database: Database,
}

/// What a write transaction's body asks for once it has succeeded.
pub(crate) enum Write<T> {
    /// Something changed: commit durably, then return the value.
    Commit(T),
    /// Nothing changed: abort, then return the value.
    Abort(T),
}

impl Registry {
    /// Opens the registry in the file at `path`, creating the file and its tables if missing.
    ///
    /// The parent directory must exist.
    /// A file can be open in one `Registry` at a time; opening it again fails with
    /// [`Error::Storage`] until the first is dropped.
    pub fn open(path: &Path) -> Result<Registry> {
        Registry::init(Database::create(path)?)
    }

    /// A registry held in memory only, for tests.
    pub fn in_memory() -> Result<Registry> {
        Registry::init(Database::builder().create_with_backend(InMemoryBackend::new())?)
    }

    /// Creates any missing table, and the change index at 1, so that reads never find them
    /// missing.
    fn init(database: Database) -> Result<Registry> {
        let registry = Registry { database };
        registry.write(|txn| {
            txn.open_table(MODULES)?;
            txn.open_table(MODULE_BYTES)?;
            txn.open_table(SERVICES)?;
            txn.open_table(REVISIONS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(REGISTRATIONS)?;
            txn.open_table(CHECKS)?;
            txn.open_table(KV)?;
            let mut meta = txn.open_table(META)?;
            let missing_change_index = meta.get(CHANGE_INDEX_KEY)?.is_none();
            if missing_change_index {
                meta.insert(CHANGE_INDEX_KEY, 1)?;
            }
            Ok(Write::Commit(()))
        })?;
        Ok(registry)
    }

    /// Stores a module's bytes and record in one transaction, returning the record and whether
    /// it was created.
    ///
    /// Idempotent by digest: if the module is already stored, its existing record (with its
    /// first creation time and kind) is returned with `false` and nothing changes.
    /// `digest` must be the digest of `bytes`, or this fails with [`Error::Invalid`].
    pub fn put_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: &[u8],
    ) -> Result<(ModuleRecord, bool)> {
        // A content address that does not match the content would make every later lookup lie,
        // so the cost of hashing again is worth paying.
        let actual_digest = Digest::of(bytes);
        if actual_digest != *digest {
            return Err(Error::Invalid(FieldError::new(
                "digest",
                format!("{digest} does not match the module bytes, which hash to {actual_digest}"),
            )));
        }
        let (record, created) = self.write(|txn| {
            let mut modules = txn.open_table(MODULES)?;
            let existing = modules
                .get(digest.as_str())?
                .map(|value| decode::<ModuleRecord>(value.value(), digest.as_str()))
                .transpose()?;
            if let Some(existing) = existing {
                return Ok(Write::Abort((existing, false)));
            }
            let record = ModuleRecord {
                version: SCHEMA_VERSION,
                digest: digest.clone(),
                size: bytes.len() as u64,
                kind,
                created_unix_ms: now_unix_ms(),
                change_index: bump_change_index(txn, &[])?,
            };
            modules.insert(digest.as_str(), encode(&record).as_slice())?;
            txn.open_table(MODULE_BYTES)?
                .insert(digest.as_str(), bytes)?;
            Ok(Write::Commit((record, true)))
        })?;
        if created {
            tracing::debug!(%digest, %kind, size = record.size, change_index = record.change_index, "stored module");
        }
        Ok((record, created))
    }

    /// The record of a stored module.
    pub fn module(&self, digest: &Digest) -> Result<Option<ModuleRecord>> {
        let txn = self.database.begin_read()?;
        let modules = txn.open_table(MODULES)?;
        let record = modules
            .get(digest.as_str())?
            .map(|value| decode(value.value(), digest.as_str()))
            .transpose()?;
        Ok(record)
    }

    /// The bytes of a stored module.
    pub fn module_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let txn = self.database.begin_read()?;
        let module_bytes = txn.open_table(MODULE_BYTES)?;
        let bytes = module_bytes
            .get(digest.as_str())?
            .map(|value| value.value().to_vec());
        Ok(bytes)
    }

    /// The records of all stored modules, sorted by digest.
    pub fn modules(&self) -> Result<Vec<ModuleRecord>> {
        let txn = self.database.begin_read()?;
        let modules = txn.open_table(MODULES)?;
        let mut records = Vec::new();
        for entry in modules.iter()? {
            let (key, value) = entry?;
            records.push(decode(value.value(), key.value())?);
        }
        Ok(records)
    }

    /// Deletes a module's record and bytes, returning the record.
    ///
    /// Fails with [`Error::NotFound`] if it is not stored, and with [`Error::ModuleInUse`] if
    /// the current spec of any service uses it.
    /// Earlier revisions may still name it; rolling back to one of them then fails with
    /// [`Error::ModuleNotFound`] until the module is stored again.
    pub fn delete_module(&self, digest: &Digest) -> Result<ModuleRecord> {
        let record = self.write(|txn| {
            let mut modules = txn.open_table(MODULES)?;
            let record: ModuleRecord = match modules.get(digest.as_str())? {
                Some(value) => decode(value.value(), digest.as_str())?,
                None => {
                    return Err(Error::NotFound {
                        kind: "module",
                        key: digest.to_string(),
                    });
                }
            };
            let services = txn.open_table(SERVICES)?;
            let mut users = Vec::new();
            for entry in services.iter()? {
                let (key, value) = entry?;
                let service: ServiceRecord = decode(value.value(), key.value())?;
                if service.spec.module == *digest {
                    users.push(service.name.to_string());
                }
            }
            if !users.is_empty() {
                return Err(Error::ModuleInUse {
                    digest: digest.clone(),
                    services: users,
                });
            }
            modules.remove(digest.as_str())?;
            txn.open_table(MODULE_BYTES)?.remove(digest.as_str())?;
            bump_change_index(txn, &[])?;
            Ok(Write::Commit(record))
        })?;
        tracing::debug!(%digest, "deleted module");
        Ok(record)
    }

    /// Creates or updates a service, returning its record and whether it was created.
    ///
    /// The spec is [normalized](ServiceSpec::normalize) first, so what is stored, and compared,
    /// always shows the memory limit in force in `limits.memory`.
    /// A new spec becomes the next revision (1 for a new service), stored with the service
    /// record and a new change index in one transaction.
    /// A spec equal to the current one changes nothing and returns the current record with
    /// `false`, like `kubectl apply`.
    /// Fails with [`Error::Invalid`] if the spec does not [validate](ServiceSpec::validate),
    /// and with [`Error::ModuleNotFound`] if its module is not stored; then nothing is written.
    pub fn put_service(
        &self,
        name: &ServiceName,
        mut spec: ServiceSpec,
    ) -> Result<(ServiceRecord, bool)> {
        spec.normalize();
        spec.validate()?;
        let (record, created, changed) = self.write(|txn| {
            let module_exists = txn
                .open_table(MODULES)?
                .get(spec.module.as_str())?
                .is_some();
            if !module_exists {
                return Err(Error::ModuleNotFound(spec.module.clone()));
            }
            if crate::catalog::name_is_registered(txn, name.as_str())? {
                return Err(Error::NameTaken {
                    name: name.to_string(),
                    owner: "service instances registered through the Consul API",
                });
            }
            let mut services = txn.open_table(SERVICES)?;
            let current = services
                .get(name.as_str())?
                .map(|value| decode::<ServiceRecord>(value.value(), name.as_str()))
                .transpose()?;
            if let Some(current) = current.as_ref().filter(|current| current.spec == spec) {
                return Ok(Write::Abort((current.clone(), false, false)));
            }
            let change_index = bump_change_index(txn, &[Area::Catalog])?;
            let now = now_unix_ms();
            let (revision, created_unix_ms) = match &current {
                Some(current) => (current.revision + 1, current.created_unix_ms),
                None => (1, now),
            };
            let revision_record = RevisionRecord {
                version: SCHEMA_VERSION,
                name: name.clone(),
                revision,
                spec: spec.clone(),
                created_unix_ms: now,
                change_index,
            };
            let record = ServiceRecord {
                version: SCHEMA_VERSION,
                name: name.clone(),
                revision,
                spec,
                created_unix_ms,
                updated_unix_ms: now,
                change_index,
            };
            services.insert(name.as_str(), encode(&record).as_slice())?;
            txn.open_table(REVISIONS)?.insert(
                (name.as_str(), revision),
                encode(&revision_record).as_slice(),
            )?;
            Ok(Write::Commit((record, current.is_none(), true)))
        })?;
        if changed {
            tracing::debug!(%name, revision = record.revision, change_index = record.change_index, "stored service");
        }
        Ok((record, created))
    }

    /// The current record of a service.
    pub fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        let txn = self.database.begin_read()?;
        let services = txn.open_table(SERVICES)?;
        let record = services
            .get(name.as_str())?
            .map(|value| decode(value.value(), name.as_str()))
            .transpose()?;
        Ok(record)
    }

    /// The current records of all services, sorted by name.
    pub fn services(&self) -> Result<Vec<ServiceRecord>> {
        let txn = self.database.begin_read()?;
        let services = txn.open_table(SERVICES)?;
        let mut records = Vec::new();
        for entry in services.iter()? {
            let (key, value) = entry?;
            records.push(decode(value.value(), key.value())?);
        }
        Ok(records)
    }

    /// Every revision of a service, oldest first; the last is the current spec.
    ///
    /// Fails with [`Error::NotFound`] if the service does not exist.
    pub fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        let txn = self.database.begin_read()?;
        let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
        if !service_exists {
            return Err(service_not_found(name));
        }
        let revisions = txn.open_table(REVISIONS)?;
        let mut records = Vec::new();
        for entry in revisions.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
            let (key, value) = entry?;
            let (_, revision) = key.value();
            records.push(decode(
                value.value(),
                &format!("{name} revision {revision}"),
            )?);
        }
        Ok(records)
    }

    /// Deletes a service, its revision history and its scale events, returning its last record.
    ///
    /// Fails with [`Error::NotFound`] if it does not exist.
    /// A service created later under the same name starts again at revision 1 and event 1.
    pub fn delete_service(&self, name: &ServiceName) -> Result<ServiceRecord> {
        let record = self.write(|txn| {
            let mut services = txn.open_table(SERVICES)?;
            let record: ServiceRecord = match services.remove(name.as_str())? {
                Some(value) => decode(value.value(), name.as_str())?,
                None => return Err(service_not_found(name)),
            };
            txn.open_table(REVISIONS)?
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, _| false)?;
            txn.open_table(EVENTS)?
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, _| false)?;
            bump_change_index(txn, &[Area::Catalog])?;
            Ok(Write::Commit(record))
        })?;
        tracing::debug!(%name, "deleted service");
        Ok(record)
    }

    /// Records a scale decision of a service as its next [`EventRecord`], and prunes its
    /// oldest events beyond [`MAX_EVENTS_PER_SERVICE`], in one write transaction.
    ///
    /// A replica count is what health reports for a wasm service, so recording an event bumps
    /// the change index in the health area only: watchers of the catalog and the key/value
    /// store are not woken by the autoscaler, and no service revision changes.
    /// Sequence numbers continue from the newest event kept, so they are never reused while
    /// the service exists.
    /// Fails with [`Error::NotFound`] if the service does not exist; then nothing is written.
    pub fn record_event(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: &str,
    ) -> Result<EventRecord> {
        let record = self.write(|txn| {
            let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
            if !service_exists {
                return Err(service_not_found(name));
            }
            let mut events = txn.open_table(EVENTS)?;
            let newest_seq = events
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
                .next_back()
                .transpose()?
                .map_or(0, |(key, _)| key.value().1);
            let seq = newest_seq.checked_add(1).ok_or_else(|| {
                Error::Corrupt(format!("the event sequence of {name} cannot grow"))
            })?;
            let record = EventRecord {
                version: SCHEMA_VERSION,
                service: name.clone(),
                seq,
                time_unix_ms: now_unix_ms(),
                from,
                to,
                reason: reason.to_owned(),
            };
            events.insert((name.as_str(), seq), encode(&record).as_slice())?;
            bump_change_index(txn, &[Area::Health])?;
            // Sequence numbers have no gaps, so the newest events kept are exactly these.
            let oldest_kept_seq = seq.saturating_sub(MAX_EVENTS_PER_SERVICE as u64 - 1);
            events.retain_in(
                (name.as_str(), 0)..(name.as_str(), oldest_kept_seq),
                |_, _| false,
            )?;
            Ok(Write::Commit(record))
        })?;
        tracing::debug!(%name, seq = record.seq, from, to, reason, "recorded scale event");
        Ok(record)
    }

    /// The newest `limit` scale events of a service, oldest first.
    ///
    /// At most [`MAX_EVENTS_PER_SERVICE`] are kept, so a larger `limit` gives them all.
    /// Fails with [`Error::NotFound`] if the service does not exist.
    pub fn events(&self, name: &ServiceName, limit: usize) -> Result<Vec<EventRecord>> {
        let txn = self.database.begin_read()?;
        let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
        if !service_exists {
            return Err(service_not_found(name));
        }
        let events = txn.open_table(EVENTS)?;
        let mut records = Vec::new();
        let newest_first = events
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?
            .rev()
            .take(limit);
        for entry in newest_first {
            let (key, value) = entry?;
            let (_, seq) = key.value();
            records.push(decode(value.value(), &format!("{name} event {seq}"))?);
        }
        records.reverse();
        Ok(records)
    }

    /// The change index: 1 for an empty registry, and incremented, durably, by every change.
    ///
    /// It is never 0, so a watcher can start from 0 and see everything.
    /// Records carry the change index of the change that wrote them.
    pub fn change_index(&self) -> Result<u64> {
        let txn = self.database.begin_read()?;
        let meta = txn.open_table(META)?;
        let change_index = meta
            .get(CHANGE_INDEX_KEY)?
            .map(|value| value.value())
            .ok_or_else(missing_change_index)?;
        Ok(change_index)
    }

    /// The change index and the index of each watched area, read together.
    pub fn indexes(&self) -> Result<Indexes> {
        let txn = self.database.begin_read()?;
        read_indexes(&txn.open_table(META)?)
    }

    /// Runs `body` in one write transaction, commits or aborts as it asks, and aborts if it
    /// fails.
    pub(crate) fn write<T>(
        &self,
        body: impl FnOnce(&WriteTransaction) -> Result<Write<T>>,
    ) -> Result<T> {
        let txn = self.database.begin_write()?;
        match body(&txn) {
            Ok(Write::Commit(value)) => {
                txn.commit()?;
                Ok(value)
            }
            Ok(Write::Abort(value)) => {
                txn.abort()?;
                Ok(value)
            }
            Err(err) => {
                // The body's error is what the caller needs; a failure to abort on top of it
                // (the transaction is discarded either way) is only worth a log line.
                if let Err(abort_err) = txn.abort() {
                    tracing::warn!(error = %abort_err, "failed to abort a registry transaction");
                }
                Err(err)
            }
        }
    }
}

/// The parts of the registry that Consul-style blocking queries watch apart, so that a watcher
/// of one is not woken by changes to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    /// Which services exist: wasm services and registered ones.
    Catalog,
    /// What health reports: check states, and the replicas of wasm services.
    Health,
    /// The key/value store.
    Kv,
}

impl Area {
    fn key(self) -> &'static str {
        match self {
            Area::Catalog => INDEX_CATALOG_KEY,
            Area::Health => INDEX_HEALTH_KEY,
            Area::Kv => INDEX_KV_KEY,
        }
    }
}

/// The change index, and the change index of the last change to each watched area.
///
/// Every value is at least 1, and none ever decreases, across restarts too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Indexes {
    /// The change index of the newest change of any kind.
    pub change: u64,
    /// Of the newest change to which services exist.
    pub catalog: u64,
    /// Of the newest change to check states or replica counts.
    pub health: u64,
    /// Of the newest change to the key/value store.
    pub kv: u64,
}

/// Reads the [`Indexes`] from an open META table.
pub(crate) fn read_indexes(meta: &impl ReadableTable<&'static str, u64>) -> Result<Indexes> {
    let read = |key: &str| -> Result<u64> { Ok(meta.get(key)?.map_or(1, |value| value.value())) };
    let change = meta
        .get(CHANGE_INDEX_KEY)?
        .map(|value| value.value())
        .ok_or_else(missing_change_index)?;
    Ok(Indexes {
        change,
        catalog: read(INDEX_CATALOG_KEY)?,
        health: read(INDEX_HEALTH_KEY)?,
        kv: read(INDEX_KV_KEY)?,
    })
}

/// Increments the change index within `txn`, marks `areas` as changed at the new value, and
/// returns it.
pub(crate) fn bump_change_index(txn: &WriteTransaction, areas: &[Area]) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let current = meta
        .get(CHANGE_INDEX_KEY)?
        .map(|value| value.value())
        .ok_or_else(missing_change_index)?;
    let next = current
        .checked_add(1)
        .ok_or_else(|| Error::Corrupt(format!("the change index {current} cannot grow")))?;
    meta.insert(CHANGE_INDEX_KEY, next)?;
    for area in areas {
        meta.insert(area.key(), next)?;
    }
    Ok(next)
}

fn missing_change_index() -> Error {
    Error::Corrupt("the change index is missing".into())
}

fn service_not_found(name: &ServiceName) -> Error {
    Error::NotFound {
        kind: "service",
        key: name.to_string(),
    }
}

/// The milliseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A record type stored as JSON, named in corruption errors.
pub(crate) trait StoredRecord: Serialize + DeserializeOwned {
    /// What the record describes, e.g. `"module"`.
    const KIND: &'static str;
}

impl StoredRecord for ModuleRecord {
    const KIND: &'static str = "module";
}

impl StoredRecord for ServiceRecord {
    const KIND: &'static str = "service";
}

impl StoredRecord for EventRecord {
    const KIND: &'static str = "event";
}

impl StoredRecord for RevisionRecord {
    const KIND: &'static str = "revision";
}

pub(crate) fn encode<R: StoredRecord>(record: &R) -> Vec<u8> {
    serde_json::to_vec(record)
        .expect("records always serialize: every map has string keys and no serializer fails")
}

/// Decodes the record stored under `key`, refusing schema versions this build does not know.
pub(crate) fn decode<R: StoredRecord>(bytes: &[u8], key: &str) -> Result<R> {
    /// Just the version, read first so that a record from a newer shoal is reported as such
    /// rather than as whichever field no longer fits.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }

    let corrupt = |problem: String| Error::Corrupt(format!("{} record {key:?} {problem}", R::KIND));
    let Versioned { version } =
        serde_json::from_slice(bytes).map_err(|err| corrupt(format!("does not decode: {err}")))?;
    if version != SCHEMA_VERSION {
        return Err(corrupt(format!(
            "has schema version {version}, but this shoal reads version {SCHEMA_VERSION}"
        )));
    }
    serde_json::from_slice(bytes).map_err(|err| corrupt(format!("does not decode: {err}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use shoal_spec::ByteSize;

    use super::*;

    /// Runs `test` against an in-memory registry and against one in a file.
    pub(crate) fn on_both_backends(test: impl Fn(&Registry)) {
        test(&Registry::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        test(&Registry::open(&dir.path().join("registry.redb")).unwrap());
    }

    fn name(text: &str) -> ServiceName {
        text.parse().unwrap()
    }

    /// Stores a module made of `bytes`, returning its digest.
    fn store_module(registry: &Registry, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        registry
            .put_module(&digest, ModuleKind::Http, bytes)
            .unwrap();
        digest
    }

    fn spec_with_env(module: &Digest, value: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(module.clone());
        spec.env.insert("GREETING".into(), value.into());
        spec
    }

    #[test]
    fn registry_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Registry>();
    }

    #[test]
    fn modules_put_get_list_delete() {
        on_both_backends(|registry| {
            let first_bytes = b"\0asm first".as_slice();
            let second_bytes = b"\0asm second".as_slice();
            let first = Digest::of(first_bytes);
            let second = Digest::of(second_bytes);
            assert_eq!(registry.module(&first).unwrap(), None);
            assert_eq!(registry.module_bytes(&first).unwrap(), None);
            assert_eq!(registry.modules().unwrap(), vec![]);

            let (record, created) = registry
                .put_module(&first, ModuleKind::Http, first_bytes)
                .unwrap();
            assert!(created);
            assert_eq!(record.version, SCHEMA_VERSION);
            assert_eq!(record.digest, first);
            assert_eq!(record.size, first_bytes.len() as u64);
            assert_eq!(record.kind, ModuleKind::Http);
            assert_eq!(record.change_index, registry.change_index().unwrap());
            let (second_record, _) = registry
                .put_module(&second, ModuleKind::Cgi, second_bytes)
                .unwrap();

            assert_eq!(registry.module(&first).unwrap(), Some(record.clone()));
            let mut expected = vec![record.clone(), second_record.clone()];
            expected.sort_by(|left, right| left.digest.cmp(&right.digest));
            assert_eq!(registry.modules().unwrap(), expected);

            assert_eq!(registry.delete_module(&first).unwrap(), record);
            assert_eq!(registry.module(&first).unwrap(), None);
            assert_eq!(registry.module_bytes(&first).unwrap(), None);
            assert_eq!(registry.modules().unwrap(), vec![second_record]);
            assert!(matches!(
                registry.delete_module(&first),
                Err(Error::NotFound { kind: "module", key }) if key == first.as_str()
            ));
        });
    }

    #[test]
    fn put_module_is_idempotent() {
        on_both_backends(|registry| {
            let bytes = b"\0asm idempotent".as_slice();
            let digest = Digest::of(bytes);
            let (first, created) = registry
                .put_module(&digest, ModuleKind::Http, bytes)
                .unwrap();
            assert!(created);
            let change_index = registry.change_index().unwrap();
            // Let the clock move, so a rewritten creation time would show.
            std::thread::sleep(Duration::from_millis(5));
            let (again, created) = registry
                .put_module(&digest, ModuleKind::Http, bytes)
                .unwrap();
            assert!(!created);
            assert_eq!(again, first);
            assert_eq!(registry.change_index().unwrap(), change_index);
            assert_eq!(registry.modules().unwrap().len(), 1);
        });
    }

    #[test]
    fn put_module_refuses_a_wrong_digest() {
        on_both_backends(|registry| {
            let digest = Digest::of(b"other bytes");
            let err = registry
                .put_module(&digest, ModuleKind::Http, b"bytes")
                .unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(e) if e.field == "digest" && e.reason.contains("does not match the module bytes")),
                "{err}"
            );
            assert_eq!(registry.modules().unwrap(), vec![]);
            assert_eq!(registry.change_index().unwrap(), 1);
        });
    }

    #[test]
    fn module_bytes_round_trip() {
        on_both_backends(|registry| {
            let large: Vec<u8> = (0..3_000_000_u32).map(|idx| (idx % 251) as u8).collect();
            for bytes in [b"".as_slice(), b"\0asm\x01\0\0\0", large.as_slice()] {
                let digest = store_module(registry, bytes);
                assert_eq!(
                    registry.module_bytes(&digest).unwrap().as_deref(),
                    Some(bytes)
                );
                assert_eq!(
                    registry.module(&digest).unwrap().unwrap().size,
                    bytes.len() as u64
                );
            }
        });
    }

    #[test]
    fn modules_in_use_cannot_be_deleted() {
        on_both_backends(|registry| {
            let used = store_module(registry, b"used");
            let unused = store_module(registry, b"unused");
            registry
                .put_service(&name("web"), ServiceSpec::new(used.clone()))
                .unwrap();
            registry
                .put_service(&name("api"), ServiceSpec::new(used.clone()))
                .unwrap();
            let change_index = registry.change_index().unwrap();

            match registry.delete_module(&used) {
                Err(Error::ModuleInUse { digest, services }) => {
                    assert_eq!(digest, used);
                    assert_eq!(services, vec!["api".to_string(), "web".to_string()]);
                }
                other => panic!("expected ModuleInUse, got {other:?}"),
            }
            assert!(registry.module(&used).unwrap().is_some());
            assert!(registry.module_bytes(&used).unwrap().is_some());
            assert_eq!(registry.change_index().unwrap(), change_index);

            // Moving one service away still leaves the other using it.
            registry
                .put_service(&name("api"), ServiceSpec::new(unused.clone()))
                .unwrap();
            assert!(matches!(
                registry.delete_module(&used),
                Err(Error::ModuleInUse { services, .. }) if services == ["web"]
            ));
            registry.delete_service(&name("web")).unwrap();
            registry.delete_module(&used).unwrap();
            assert!(matches!(
                registry.delete_module(&unused),
                Err(Error::ModuleInUse { services, .. }) if services == ["api"]
            ));
        });
    }

    #[test]
    fn put_service_with_an_unknown_module_writes_nothing() {
        on_both_backends(|registry| {
            let missing = Digest::of(b"never stored");
            let change_index = registry.change_index().unwrap();
            match registry.put_service(&name("web"), ServiceSpec::new(missing.clone())) {
                Err(Error::ModuleNotFound(digest)) => assert_eq!(digest, missing),
                other => panic!("expected ModuleNotFound, got {other:?}"),
            }
            assert_eq!(registry.change_index().unwrap(), change_index);
            assert_eq!(registry.service(&name("web")).unwrap(), None);
            assert_eq!(registry.services().unwrap(), vec![]);
            assert!(matches!(
                registry.revisions(&name("web")),
                Err(Error::NotFound {
                    kind: "service",
                    ..
                })
            ));
        });
    }

    #[test]
    fn put_service_with_invalid_limits_writes_nothing() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            let change_index = registry.change_index().unwrap();
            let mut spec = ServiceSpec::new(module);
            spec.limits.memory = ByteSize(0);
            assert!(matches!(
                registry.put_service(&name("web"), spec),
                Err(Error::Invalid(e)) if e.field == "limits.memory"
            ));
            assert_eq!(registry.change_index().unwrap(), change_index);
            assert_eq!(registry.service(&name("web")).unwrap(), None);
        });
    }

    #[test]
    fn revisions_grow_and_unchanged_specs_are_no_ops() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            let web = name("web");

            let (first, created) = registry
                .put_service(&web, spec_with_env(&module, "one"))
                .unwrap();
            assert!(created);
            assert_eq!(first.revision, 1);
            assert_eq!(first.version, SCHEMA_VERSION);
            assert_eq!(first.created_unix_ms, first.updated_unix_ms);
            assert_eq!(first.change_index, registry.change_index().unwrap());

            std::thread::sleep(Duration::from_millis(5));
            let (second, created) = registry
                .put_service(&web, spec_with_env(&module, "two"))
                .unwrap();
            assert!(!created);
            assert_eq!(second.revision, 2);
            assert_eq!(second.created_unix_ms, first.created_unix_ms);
            assert!(second.updated_unix_ms > first.updated_unix_ms);
            assert!(second.change_index > first.change_index);

            // The same spec again: no new revision, no change.
            let change_index = registry.change_index().unwrap();
            let (unchanged, created) = registry
                .put_service(&web, spec_with_env(&module, "two"))
                .unwrap();
            assert!(!created);
            assert_eq!(unchanged, second);
            assert_eq!(registry.change_index().unwrap(), change_index);

            let (third, _) = registry
                .put_service(&web, spec_with_env(&module, "three"))
                .unwrap();
            assert_eq!(third.revision, 3);
            assert_eq!(registry.service(&web).unwrap(), Some(third.clone()));

            let revisions = registry.revisions(&web).unwrap();
            let numbers: Vec<u64> = revisions.iter().map(|revision| revision.revision).collect();
            assert_eq!(numbers, [1, 2, 3]);
            let greetings: Vec<&str> = revisions
                .iter()
                .map(|revision| revision.spec.env["GREETING"].as_str())
                .collect();
            assert_eq!(greetings, ["one", "two", "three"]);
            assert!(revisions.iter().all(|revision| revision.name == web));
            assert_eq!(revisions[2].change_index, third.change_index);
            assert_eq!(revisions[2].created_unix_ms, third.updated_unix_ms);
        });
    }

    #[test]
    fn services_are_listed_by_name() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            for text in ["zeta", "alpha", "mid-1", "mid"] {
                registry
                    .put_service(&name(text), ServiceSpec::new(module.clone()))
                    .unwrap();
            }
            let names: Vec<String> = registry
                .services()
                .unwrap()
                .into_iter()
                .map(|service| service.name.to_string())
                .collect();
            assert_eq!(names, ["alpha", "mid", "mid-1", "zeta"]);
        });
    }

    #[test]
    fn delete_service_removes_its_revisions_only() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            // "a" is a prefix of "ab": deleting one must not touch the other's revisions.
            for text in ["a", "ab"] {
                for value in ["one", "two"] {
                    registry
                        .put_service(&name(text), spec_with_env(&module, value))
                        .unwrap();
                }
            }
            let change_index = registry.change_index().unwrap();
            let deleted = registry.delete_service(&name("a")).unwrap();
            assert_eq!(deleted.revision, 2);
            assert!(registry.change_index().unwrap() > change_index);
            assert_eq!(registry.service(&name("a")).unwrap(), None);
            assert!(matches!(
                registry.revisions(&name("a")),
                Err(Error::NotFound { kind: "service", key }) if key == "a"
            ));
            assert_eq!(registry.revisions(&name("ab")).unwrap().len(), 2);
            let err = registry.delete_service(&name("a")).unwrap_err();
            assert_eq!(err.to_string(), "service \"a\" not found");

            // Created again, the service starts a new history.
            let (recreated, created) = registry
                .put_service(&name("a"), spec_with_env(&module, "one"))
                .unwrap();
            assert!(created);
            assert_eq!(recreated.revision, 1);
            assert_eq!(registry.revisions(&name("a")).unwrap().len(), 1);
        });
    }

    #[test]
    fn change_index_starts_at_one_and_grows_with_every_change() {
        on_both_backends(|registry| {
            let mut seen = vec![registry.change_index().unwrap()];
            assert_eq!(seen[0], 1);
            let module = store_module(registry, b"module");
            seen.push(registry.change_index().unwrap());
            registry
                .put_service(&name("web"), spec_with_env(&module, "one"))
                .unwrap();
            seen.push(registry.change_index().unwrap());
            registry
                .put_service(&name("web"), spec_with_env(&module, "two"))
                .unwrap();
            seen.push(registry.change_index().unwrap());
            registry.delete_service(&name("web")).unwrap();
            seen.push(registry.change_index().unwrap());
            registry.delete_module(&module).unwrap();
            seen.push(registry.change_index().unwrap());
            assert!(
                seen.windows(2).all(|pair| pair[0] < pair[1]),
                "change index must strictly grow: {seen:?}"
            );
        });
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let web = name("web");
        let (module, service, revisions, change_index) = {
            let registry = Registry::open(&path).unwrap();
            let module = store_module(&registry, b"durable module");
            registry
                .put_service(&web, spec_with_env(&module, "one"))
                .unwrap();
            let (service, _) = registry
                .put_service(&web, spec_with_env(&module, "two"))
                .unwrap();
            let revisions = registry.revisions(&web).unwrap();
            (module, service, revisions, registry.change_index().unwrap())
        };

        let registry = Registry::open(&path).unwrap();
        assert_eq!(
            registry.module_bytes(&module).unwrap().as_deref(),
            Some(b"durable module".as_slice())
        );
        assert_eq!(registry.module(&module).unwrap().unwrap().digest, module);
        assert_eq!(registry.service(&web).unwrap(), Some(service));
        assert_eq!(registry.revisions(&web).unwrap(), revisions);
        assert_eq!(registry.change_index().unwrap(), change_index);

        let (third, _) = registry
            .put_service(&web, spec_with_env(&module, "three"))
            .unwrap();
        assert_eq!(third.revision, 3);
        assert!(third.change_index > change_index);
        assert_eq!(registry.change_index().unwrap(), third.change_index);
    }

    #[test]
    fn opening_a_file_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let _registry = Registry::open(&path).unwrap();
        assert!(matches!(Registry::open(&path), Err(Error::Storage(_))));
    }

    #[test]
    fn corrupt_records_are_reported() {
        let registry = Registry::in_memory().unwrap();
        let txn = registry.database.begin_write().unwrap();
        {
            let mut services = txn.open_table(SERVICES).unwrap();
            services.insert("garbage", b"not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let err = registry.services().unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(message) if message.starts_with("service record \"garbage\" does not decode")),
            "{err}"
        );

        let registry = Registry::in_memory().unwrap();
        let txn = registry.database.begin_write().unwrap();
        {
            let mut modules = txn.open_table(MODULES).unwrap();
            modules
                .insert(
                    "future",
                    br#"{"version": 2, "shape": "unknown"}"#.as_slice(),
                )
                .unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(
            registry.modules().unwrap_err().to_string(),
            "corrupt registry: module record \"future\" has schema version 2, \
             but this shoal reads version 1"
        );
    }

    #[test]
    fn events_are_numbered_from_one_and_read_oldest_first() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"events");
            let web = name("web");
            registry
                .put_service(&web, ServiceSpec::new(module))
                .unwrap();
            assert_eq!(registry.events(&web, 10).unwrap(), vec![]);
            let before = now_unix_ms();
            let first = registry.record_event(&web, 0, 1, "cold start").unwrap();
            assert_eq!(first.version, SCHEMA_VERSION);
            assert_eq!(first.service, web);
            assert_eq!(first.seq, 1);
            assert!(first.time_unix_ms >= before);
            assert_eq!(
                (first.from, first.to, first.reason.as_str()),
                (0, 1, "cold start")
            );
            registry.record_event(&web, 1, 3, "load").unwrap();
            registry.record_event(&web, 3, 2, "idle").unwrap();

            let all = registry.events(&web, 10).unwrap();
            let seqs: Vec<u64> = all.iter().map(|event| event.seq).collect();
            assert_eq!(seqs, [1, 2, 3]);
            assert_eq!(all[0], first);
            let reasons: Vec<&str> = all.iter().map(|event| event.reason.as_str()).collect();
            assert_eq!(reasons, ["cold start", "load", "idle"]);
            let newest_two: Vec<u64> = registry
                .events(&web, 2)
                .unwrap()
                .iter()
                .map(|event| event.seq)
                .collect();
            assert_eq!(newest_two, [2, 3]);
            assert_eq!(registry.events(&web, 0).unwrap(), vec![]);
        });
    }

    #[test]
    fn events_keep_the_newest_hundred() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"events");
            let web = name("web");
            registry
                .put_service(&web, ServiceSpec::new(module))
                .unwrap();
            for n_replicas in 1..=105_u32 {
                let event = registry
                    .record_event(&web, n_replicas - 1, n_replicas, "load")
                    .unwrap();
                assert_eq!(event.seq, u64::from(n_replicas));
            }
            let kept = registry.events(&web, usize::MAX).unwrap();
            assert_eq!(kept.len(), MAX_EVENTS_PER_SERVICE);
            let seqs: Vec<u64> = kept.iter().map(|event| event.seq).collect();
            assert_eq!(seqs, (6..=105).collect::<Vec<u64>>());
            assert!(kept.iter().all(|event| u64::from(event.to) == event.seq));

            let newest_three: Vec<u64> = registry
                .events(&web, 3)
                .unwrap()
                .iter()
                .map(|event| event.seq)
                .collect();
            assert_eq!(newest_three, [103, 104, 105]);
            // Pruned numbers are never handed out again.
            assert_eq!(
                registry.record_event(&web, 105, 106, "load").unwrap().seq,
                106
            );
            assert_eq!(registry.events(&web, 1000).unwrap()[0].seq, 7);
        });
    }

    #[test]
    fn events_of_an_unknown_service_are_not_found() {
        on_both_backends(|registry| {
            let ghost = name("ghost");
            let change_index = registry.change_index().unwrap();
            assert!(matches!(
                registry.record_event(&ghost, 0, 1, "load"),
                Err(Error::NotFound { kind: "service", key }) if key == "ghost"
            ));
            assert!(matches!(
                registry.events(&ghost, 10),
                Err(Error::NotFound { kind: "service", key }) if key == "ghost"
            ));
            // Nothing was written for it: created now, it has no events.
            let module = store_module(registry, b"events");
            registry
                .put_service(&ghost, ServiceSpec::new(module))
                .unwrap();
            assert_eq!(registry.events(&ghost, 10).unwrap(), vec![]);
            assert!(registry.change_index().unwrap() > change_index);
        });
    }

    #[test]
    fn recording_events_changes_the_health_area_only() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"events");
            let web = name("web");
            let (record, _) = registry
                .put_service(&web, ServiceSpec::new(module))
                .unwrap();
            let before = registry.indexes().unwrap();
            for n_replicas in 1..=3 {
                registry
                    .record_event(&web, n_replicas - 1, n_replicas, "load")
                    .unwrap();
            }
            let after = registry.indexes().unwrap();
            assert_eq!(after.change, before.change + 3);
            assert_eq!(after.health, after.change);
            assert_eq!((after.catalog, after.kv), (before.catalog, before.kv));
            assert_eq!(registry.service(&web).unwrap(), Some(record));
            assert_eq!(registry.revisions(&web).unwrap().len(), 1);
        });
    }

    #[test]
    fn delete_service_removes_its_events_only() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"events");
            // "a" is a prefix of "ab": deleting one must not touch the other's events.
            for text in ["a", "ab"] {
                registry
                    .put_service(&name(text), ServiceSpec::new(module.clone()))
                    .unwrap();
                for n_replicas in 1..=3 {
                    registry
                        .record_event(&name(text), n_replicas - 1, n_replicas, "load")
                        .unwrap();
                }
            }
            registry.delete_service(&name("a")).unwrap();
            assert!(matches!(
                registry.events(&name("a"), 10),
                Err(Error::NotFound { .. })
            ));
            assert_eq!(registry.events(&name("ab"), 10).unwrap().len(), 3);

            // Created again, the service starts a new history of events too.
            registry
                .put_service(&name("a"), ServiceSpec::new(module))
                .unwrap();
            assert_eq!(registry.events(&name("a"), 10).unwrap(), vec![]);
            assert_eq!(
                registry
                    .record_event(&name("a"), 0, 1, "cold start")
                    .unwrap()
                    .seq,
                1
            );
        });
    }

    #[test]
    fn events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let web = name("web");
        let events = {
            let registry = Registry::open(&path).unwrap();
            let module = store_module(&registry, b"events");
            registry
                .put_service(&web, ServiceSpec::new(module))
                .unwrap();
            registry.record_event(&web, 0, 1, "cold start").unwrap();
            registry.record_event(&web, 1, 2, "load").unwrap();
            registry.events(&web, 10).unwrap()
        };
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.events(&web, 10).unwrap(), events);
        assert_eq!(registry.record_event(&web, 2, 1, "idle").unwrap().seq, 3);
    }

    #[test]
    fn put_service_stores_specs_normalized() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            let web = name("web");
            let mut spec = ServiceSpec::new(module);
            spec.resources.limits.memory = Some(ByteSize(32 << 20));
            assert_eq!(spec.limits.memory, ByteSize(64 << 20));
            let (record, created) = registry.put_service(&web, spec.clone()).unwrap();
            assert!(created);
            assert_eq!(record.spec.limits.memory, ByteSize(32 << 20));
            assert_eq!(registry.revisions(&web).unwrap()[0].spec, record.spec);

            // The same spec, in either spelling, is no change.
            let change_index = registry.change_index().unwrap();
            let (again, created) = registry.put_service(&web, spec.clone()).unwrap();
            assert!(!created);
            assert_eq!(again, record);
            let mut normalized = spec;
            normalized.normalize();
            let (again, _) = registry.put_service(&web, normalized).unwrap();
            assert_eq!(again, record);
            assert_eq!(registry.change_index().unwrap(), change_index);
        });
    }

    #[test]
    fn put_service_with_invalid_workload_writes_nothing() {
        on_both_backends(|registry| {
            let module = store_module(registry, b"module");
            let change_index = registry.change_index().unwrap();
            let mut spec = ServiceSpec::new(module);
            spec.scale.min = 4;
            spec.scale.max = 3;
            let err = registry.put_service(&name("web"), spec).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(e) if e.field == "scale.min" && e.reason == "must not exceed scale.max (3)"),
                "{err}"
            );
            assert_eq!(registry.change_index().unwrap(), change_index);
            assert_eq!(registry.services().unwrap(), vec![]);
        });
    }

    #[test]
    fn records_written_before_the_workload_fields_still_decode() {
        let registry = Registry::in_memory().unwrap();
        let module = store_module(&registry, b"old module");
        // A service record exactly as the first version of shoal wrote it.
        let old_spec = format!(
            r#"{{"module":"{module}","limits":{{"memory":"128Mi","fuel":5000000000,"timeout":"10s",
            "max_request_body":"10Mi","max_response":"16Mi","max_stderr":"64Ki"}},
            "env":{{"GREETING":"hi"}},"args":[]}}"#
        );
        let old_service = format!(
            r#"{{"version":1,"name":"old","revision":1,"spec":{old_spec},
            "created_unix_ms":1700000000000,"updated_unix_ms":1700000000000,"change_index":3}}"#
        );
        let old_revision = format!(
            r#"{{"version":1,"name":"old","revision":1,"spec":{old_spec},
            "created_unix_ms":1700000000000,"change_index":3}}"#
        );
        let txn = registry.database.begin_write().unwrap();
        {
            let mut services = txn.open_table(SERVICES).unwrap();
            services.insert("old", old_service.as_bytes()).unwrap();
            let mut revisions = txn.open_table(REVISIONS).unwrap();
            revisions
                .insert(("old", 1), old_revision.as_bytes())
                .unwrap();
        }
        txn.commit().unwrap();

        let mut expected = spec_with_env(&module, "hi");
        expected.limits.memory = ByteSize(128 << 20);
        let record = registry.service(&name("old")).unwrap().unwrap();
        assert_eq!(record.spec, expected);
        assert_eq!(record.spec.scale, shoal_spec::Scale::default());
        assert_eq!(registry.revisions(&name("old")).unwrap()[0].spec, expected);
        // Applying the same spec again is recognised as no change.
        let (again, created) = registry.put_service(&name("old"), expected).unwrap();
        assert!(!created);
        assert_eq!(again, record);
        // And events can be recorded for it.
        assert_eq!(
            registry
                .record_event(&name("old"), 1, 2, "load")
                .unwrap()
                .seq,
            1
        );
    }

    #[test]
    fn files_from_before_events_gain_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        {
            // The tables the first version of shoal created, and no `events`.
            let database = Database::create(&path).unwrap();
            let txn = database.begin_write().unwrap();
            txn.open_table(MODULES).unwrap();
            txn.open_table(MODULE_BYTES).unwrap();
            txn.open_table(SERVICES).unwrap();
            txn.open_table(REVISIONS).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(CHANGE_INDEX_KEY, 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        let module = store_module(&registry, b"module");
        registry
            .put_service(&name("web"), ServiceSpec::new(module))
            .unwrap();
        assert_eq!(registry.events(&name("web"), 10).unwrap(), vec![]);
        assert_eq!(
            registry
                .record_event(&name("web"), 0, 1, "cold start")
                .unwrap()
                .seq,
            1
        );
    }
}
