//! [`Db`]: the synchronous core of the redb store, the transactions over the tables in
//! `tables.rs` for modules and their names, services and their revisions, each service's
//! bounded history of scale events, and routes (`catalog.rs` and `kv.rs` add theirs).
//!
//! **Invariants:**
//! every change is exactly one redb write transaction, committed with redb's default (durable)
//! commit, so an acknowledged change survives `kill -9`;
//! every change of configuration (modules, their names, services and routes) increments the change index in that
//! same transaction, and a request that changes nothing (an existing module, an unchanged spec,
//! a failed check) commits nothing;
//! recording a scale event is a write too, an observation rather than configuration, which
//! bumps the change index for health watchers only;
//! no transaction outlives the method that began it;
//! a committed change goes into the [`ChangeLog`] under the writer lock, so the log is in
//! commit order.
//! redb serializes write transactions (`begin_write` blocks while another is live), which is
//! what makes the check-then-write sequences here, like "is this module used?", race free.

use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use shoal_registry::codec::StoredRecord;
use shoal_registry::{
    Change, ChangeLog, Clock, Committed, Error, EventRecord, Expect, Indexes,
    MAX_EVENTS_PER_SERVICE, ModuleRecord, RevisionRecord, RouteRecord, SCHEMA_VERSION,
    ServiceRecord, Subject, WaitingRecord,
};
use shoal_spec::{Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::tables::{
    CHANGE_INDEX_KEY, CHECKS, EVENTS, INDEX_CATALOG_KEY, INDEX_HEALTH_KEY, INDEX_KV_KEY, KV,
    KV_LOCKS, LOCK_DELAYS, META, MODULE_BYTES, MODULES, NODES, REGISTRATIONS, REVISIONS, ROUTES,
    SERVICES, SESSIONS, WAITING,
};

/// One redb database holding a node's state, and the log of its changes.
///
/// All methods are synchronous and may block on disk IO, or on another thread's write;
/// [`RedbStore`](crate::RedbStore) calls them on blocking threads.
pub(crate) struct Db {
    pub(crate) database: Database,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) log: Arc<ChangeLog>,
    /// Held from a write's start until its change is in the log, so the log is in commit
    /// order; redb's own write lock is released at commit, before the push.
    writer: Mutex<()>,
    /// The directory of the file, whose free space is checked before each write; `None` in
    /// memory.
    pub(crate) dir: Option<std::path::PathBuf>,
}

/// Free space a write leaves on the disk, beyond twice what it stores: redb writes pages
/// copy-on-write and grows its file in steps. A write that failed for want of space would make
/// redb refuse every later call until the file is opened again, so a write that might not fit
/// is refused before it starts.
const SPACE_RESERVE: u64 = 1 << 20;

impl Db {
    /// Takes over `database`, creating any missing table and the change index at 1, so that
    /// reads never find them missing, and starts the change log at the current index.
    pub(crate) fn init(
        database: Database,
        clock: Arc<dyn Clock>,
        log_capacity: usize,
    ) -> DbResult<Db> {
        let txn = database.begin_write()?;
        {
            txn.open_table(MODULES)?;
            txn.open_table(MODULE_BYTES)?;
            txn.open_table(SERVICES)?;
            txn.open_table(ROUTES)?;
            txn.open_table(WAITING)?;
            txn.open_table(REVISIONS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(REGISTRATIONS)?;
            txn.open_table(CHECKS)?;
            txn.open_table(KV)?;
            txn.open_table(KV_LOCKS)?;
            txn.open_table(LOCK_DELAYS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(NODES)?;
            let mut meta = txn.open_table(META)?;
            let missing_change_index = meta.get(CHANGE_INDEX_KEY)?.is_none();
            if missing_change_index {
                meta.insert(CHANGE_INDEX_KEY, 1)?;
            }
        }
        txn.commit()?;
        let current = Db::read_change_index(&database)?;
        Ok(Db {
            database,
            clock,
            log: ChangeLog::new(current, log_capacity),
            writer: Mutex::new(()),
            dir: None,
        })
    }

    /// Refuses a write of about `bytes` that the disk may not have room for.
    pub(crate) fn check_space(&self, bytes: u64) -> DbResult<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let Ok(stat) = rustix::fs::statvfs(dir) else {
            return Ok(());
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let needed = bytes.saturating_mul(2).saturating_add(SPACE_RESERVE);
        if free < needed {
            return Err(DbError(Error::Full(format!(
                "{}: {free} bytes free under {}, and a write of {bytes} bytes needs {needed}",
                std::io::Error::from_raw_os_error(28),
                dir.display()
            ))));
        }
        Ok(())
    }

    fn read_change_index(database: &Database) -> DbResult<u64> {
        let txn = database.begin_read()?;
        let meta = txn.open_table(META)?;
        let change_index = meta
            .get(CHANGE_INDEX_KEY)?
            .map(|value| value.value())
            .ok_or_else(missing_change_index)?;
        Ok(change_index)
    }

    /// Stores a module's bytes and record in one transaction, returning the record and whether
    /// it was created; see [`Store::put_module`](shoal_registry::Store::put_module).
    pub(crate) fn put_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: &[u8],
    ) -> DbResult<Committed<(ModuleRecord, bool)>> {
        shoal_registry::check_digest(digest, bytes)?;
        self.check_space(bytes.len() as u64)?;
        let committed = self.write(Subject::Module(digest.clone()), |txn| {
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
                created_unix_ms: self.clock.now_unix_ms(),
                change_index: bump_change_index(txn, &[])?,
                names: Default::default(),
            };
            modules.insert(digest.as_str(), encode(&record).as_slice())?;
            txn.open_table(MODULE_BYTES)?
                .insert(digest.as_str(), bytes)?;
            Ok(Write::Commit((record, true)))
        })?;
        if committed.value.1 {
            tracing::debug!(%digest, %kind, size = bytes.len(), index = committed.index, "stored module");
        }
        Ok(committed)
    }

    /// Gives a stored module a name; see
    /// [`Store::name_module`](shoal_registry::Store::name_module).
    pub(crate) fn name_module(
        &self,
        digest: &Digest,
        name: &str,
    ) -> DbResult<Committed<ModuleRecord>> {
        if name.is_empty() {
            return Err(
                Error::Invalid(shoal_spec::FieldError::new("name", "must not be empty")).into(),
            );
        }
        self.write(Subject::Module(digest.clone()), |txn| {
            let mut modules = txn.open_table(MODULES)?;
            let mut record: ModuleRecord = match modules.get(digest.as_str())? {
                Some(value) => decode(value.value(), digest.as_str())?,
                None => return Err(module_not_found(digest).into()),
            };
            if record.names.contains_key(name) {
                return Ok(Write::Abort(record));
            }
            let index = bump_change_index(txn, &[])?;
            record.names.insert(name.to_owned(), index);
            modules.insert(digest.as_str(), encode(&record).as_slice())?;
            Ok(Write::Commit(record))
        })
    }

    /// Creates or updates a route when `expect` holds; see
    /// [`Store::put_route`](shoal_registry::Store::put_route).
    pub(crate) fn put_route(
        &self,
        name: &ServiceName,
        spec: RouteSpec,
        expect: Expect,
    ) -> DbResult<Committed<(RouteRecord, bool)>> {
        spec.validate().map_err(Error::from)?;
        self.put_named(
            ROUTES,
            Subject::Route(name.clone()),
            &[Area::Catalog],
            name,
            |current: Option<&RouteRecord>| expect.check_route(name, current),
            |current| current.spec == spec,
            |current, change_index, now| {
                RouteRecord::written(name, spec.clone(), current, now, change_index)
            },
        )
    }

    /// The current record of a route.
    pub(crate) fn route(&self, name: &ServiceName) -> DbResult<Option<RouteRecord>> {
        let txn = self.database.begin_read()?;
        let routes = txn.open_table(ROUTES)?;
        let record = routes
            .get(name.as_str())?
            .map(|value| decode(value.value(), name.as_str()))
            .transpose()?;
        Ok(record)
    }

    /// Every route, by name.
    pub(crate) fn routes(&self) -> DbResult<Vec<RouteRecord>> {
        self.read_all(ROUTES)
    }

    /// Deletes a route when `expect` holds, returning its last record.
    pub(crate) fn delete_route(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> DbResult<Committed<RouteRecord>> {
        self.delete_named(
            ROUTES,
            Subject::Route(name.clone()),
            &[Area::Catalog],
            name,
            |current| expect.check_route(name, current),
        )
    }

    /// Creates or updates a service waiting for its module when `expect` holds; see
    /// [`Store::put_waiting`](shoal_registry::Store::put_waiting).
    pub(crate) fn put_waiting(
        &self,
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        expect: Expect,
    ) -> DbResult<Committed<(WaitingRecord, bool)>> {
        spec.validate().map_err(Error::from)?;
        self.put_named(
            WAITING,
            Subject::Waiting(name.clone()),
            &[],
            name,
            |current: Option<&WaitingRecord>| expect.check_waiting(name, current),
            |current| current.image == image && current.spec == spec,
            |current, change_index, now| {
                WaitingRecord::written(name, image, spec.clone(), current, now, change_index)
            },
        )
    }

    /// Every service waiting for its module, by name.
    pub(crate) fn waiting(&self) -> DbResult<Vec<WaitingRecord>> {
        self.read_all(WAITING)
    }

    /// Deletes a waiting service when `expect` holds, returning its last record.
    pub(crate) fn delete_waiting(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> DbResult<Committed<WaitingRecord>> {
        self.delete_named(
            WAITING,
            Subject::Waiting(name.clone()),
            &[],
            name,
            |current| expect.check_waiting(name, current),
        )
    }

    /// Writes the record `build` makes as `name` in `table`, when `check` accepts the current
    /// one and `unchanged` does not; answers the record and whether it was created.
    #[allow(clippy::too_many_arguments)]
    fn put_named<R: StoredRecord + Clone>(
        &self,
        table: redb::TableDefinition<'_, &str, &[u8]>,
        subject: Subject,
        areas: &[Area],
        name: &ServiceName,
        check: impl FnOnce(Option<&R>) -> shoal_registry::Result<()>,
        unchanged: impl FnOnce(&R) -> bool,
        build: impl FnOnce(Option<&R>, u64, u64) -> R,
    ) -> DbResult<Committed<(R, bool)>> {
        self.write(subject, |txn| {
            let mut records = txn.open_table(table)?;
            let current: Option<R> = records
                .get(name.as_str())?
                .map(|value| decode(value.value(), name.as_str()))
                .transpose()?;
            check(current.as_ref())?;
            if let Some(current) = current.as_ref().filter(|current| unchanged(current)) {
                return Ok(Write::Abort((current.clone(), false)));
            }
            let change_index = bump_change_index(txn, areas)?;
            let record = build(current.as_ref(), change_index, self.clock.now_unix_ms());
            records.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(Write::Commit((record, current.is_none())))
        })
    }

    /// Deletes the record `name` of `table` when `check` accepts it, returning it.
    fn delete_named<R: StoredRecord>(
        &self,
        table: redb::TableDefinition<'_, &str, &[u8]>,
        subject: Subject,
        areas: &[Area],
        name: &ServiceName,
        check: impl FnOnce(Option<&R>) -> shoal_registry::Result<()>,
    ) -> DbResult<Committed<R>> {
        self.write(subject, |txn| {
            let mut records = txn.open_table(table)?;
            let current: Option<R> = records
                .get(name.as_str())?
                .map(|value| decode(value.value(), name.as_str()))
                .transpose()?;
            check(current.as_ref())?;
            let Some(record) = current else {
                return Err(Error::NotFound {
                    kind: R::KIND,
                    key: name.to_string(),
                }
                .into());
            };
            records.remove(name.as_str())?;
            bump_change_index(txn, areas)?;
            Ok(Write::Commit(record))
        })
    }

    /// The record of a stored module.
    pub(crate) fn module(&self, digest: &Digest) -> DbResult<Option<ModuleRecord>> {
        let txn = self.database.begin_read()?;
        let modules = txn.open_table(MODULES)?;
        let record = modules
            .get(digest.as_str())?
            .map(|value| decode(value.value(), digest.as_str()))
            .transpose()?;
        Ok(record)
    }

    /// The bytes of a stored module.
    pub(crate) fn module_bytes(&self, digest: &Digest) -> DbResult<Option<Vec<u8>>> {
        let txn = self.database.begin_read()?;
        let module_bytes = txn.open_table(MODULE_BYTES)?;
        let bytes = module_bytes
            .get(digest.as_str())?
            .map(|value| value.value().to_vec());
        Ok(bytes)
    }

    /// The records of all stored modules, sorted by digest.
    pub(crate) fn modules(&self) -> DbResult<Vec<ModuleRecord>> {
        self.read_all(MODULES)
    }

    /// Deletes a module's record and bytes, returning the record; see
    /// [`Store::delete_module`](shoal_registry::Store::delete_module).
    ///
    /// Earlier revisions may still name it; rolling back to one of them then fails with
    /// [`Error::ModuleNotFound`] until the module is stored again.
    pub(crate) fn delete_module(&self, digest: &Digest) -> DbResult<Committed<ModuleRecord>> {
        let committed = self.write(Subject::Module(digest.clone()), |txn| {
            let mut modules = txn.open_table(MODULES)?;
            let record: ModuleRecord = match modules.get(digest.as_str())? {
                Some(value) => decode(value.value(), digest.as_str())?,
                None => {
                    return Err(Error::NotFound {
                        kind: "module",
                        key: digest.to_string(),
                    }
                    .into());
                }
            };
            let services = txn.open_table(SERVICES)?;
            let mut current = Vec::new();
            for entry in services.iter()? {
                let (key, value) = entry?;
                current.push(decode::<ServiceRecord>(value.value(), key.value())?);
            }
            shoal_registry::check_unused(digest, current)?;
            modules.remove(digest.as_str())?;
            txn.open_table(MODULE_BYTES)?.remove(digest.as_str())?;
            bump_change_index(txn, &[])?;
            Ok(Write::Commit(record))
        })?;
        tracing::debug!(%digest, "deleted module");
        Ok(committed)
    }

    /// Creates or updates a service when `expect` holds; see
    /// [`Store::put_service`](shoal_registry::Store::put_service).
    pub(crate) fn put_service(
        &self,
        name: &ServiceName,
        mut spec: ServiceSpec,
        expect: Expect,
    ) -> DbResult<Committed<(ServiceRecord, bool)>> {
        spec.normalize();
        spec.validate().map_err(Error::from)?;
        let committed = self.write(Subject::Service(name.clone()), |txn| {
            let module_exists = txn
                .open_table(MODULES)?
                .get(spec.module.as_str())?
                .is_some();
            if !module_exists {
                return Err(Error::ModuleNotFound(spec.module.clone()).into());
            }
            if crate::catalog::name_is_registered(txn, name.as_str())? {
                return Err(Error::NameTaken {
                    name: name.to_string(),
                    owner: "service instances registered through the Consul API",
                }
                .into());
            }
            let mut services = txn.open_table(SERVICES)?;
            let current = services
                .get(name.as_str())?
                .map(|value| decode::<ServiceRecord>(value.value(), name.as_str()))
                .transpose()?;
            expect.check(name, current.as_ref())?;
            if let Some(current) = current.as_ref().filter(|current| current.spec == spec) {
                return Ok(Write::Abort((current.clone(), false)));
            }
            let change_index = bump_change_index(txn, &[Area::Catalog])?;
            let now = self.clock.now_unix_ms();
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
            Ok(Write::Commit((record, current.is_none())))
        })?;
        let (record, _) = &committed.value;
        if record.change_index == committed.index {
            tracing::debug!(%name, revision = record.revision, index = committed.index, "stored service");
        }
        Ok(committed)
    }

    /// The current record of a service.
    pub(crate) fn service(&self, name: &ServiceName) -> DbResult<Option<ServiceRecord>> {
        let txn = self.database.begin_read()?;
        let services = txn.open_table(SERVICES)?;
        let record = services
            .get(name.as_str())?
            .map(|value| decode(value.value(), name.as_str()))
            .transpose()?;
        Ok(record)
    }

    /// The current records of all services, sorted by name.
    pub(crate) fn services(&self) -> DbResult<Vec<ServiceRecord>> {
        self.read_all(SERVICES)
    }

    /// Every record of a table keyed by a string, in key order.
    fn read_all<R: StoredRecord>(
        &self,
        table: redb::TableDefinition<'_, &str, &[u8]>,
    ) -> DbResult<Vec<R>> {
        let txn = self.database.begin_read()?;
        let table = txn.open_table(table)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            records.push(decode(value.value(), key.value())?);
        }
        Ok(records)
    }

    /// Every revision of a service, oldest first; the last is the current spec.
    pub(crate) fn revisions(&self, name: &ServiceName) -> DbResult<Vec<RevisionRecord>> {
        let txn = self.database.begin_read()?;
        let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
        if !service_exists {
            return Err(service_not_found(name).into());
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

    /// Deletes a service, its revision history and its scale events when `expect` holds,
    /// returning its last record.
    ///
    /// A service created later under the same name starts again at revision 1 and event 1.
    pub(crate) fn delete_service(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> DbResult<Committed<ServiceRecord>> {
        let committed = self.write(Subject::Service(name.clone()), |txn| {
            let mut services = txn.open_table(SERVICES)?;
            let current: Option<ServiceRecord> = services
                .get(name.as_str())?
                .map(|value| decode(value.value(), name.as_str()))
                .transpose()?;
            expect.check(name, current.as_ref())?;
            let Some(record) = current else {
                return Err(service_not_found(name).into());
            };
            services.remove(name.as_str())?;
            txn.open_table(REVISIONS)?
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, _| false)?;
            txn.open_table(EVENTS)?
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, _| false)?;
            bump_change_index(txn, &[Area::Catalog])?;
            Ok(Write::Commit(record))
        })?;
        tracing::debug!(%name, "deleted service");
        Ok(committed)
    }

    /// Records a scale decision of a service as its next [`EventRecord`], and prunes its
    /// oldest events beyond [`MAX_EVENTS_PER_SERVICE`], in one write transaction.
    ///
    /// A replica count is what health reports for a wasm service, so recording an event bumps
    /// the change index in the health area only: watchers of the catalog and the key/value
    /// store are not woken by the autoscaler, and no service revision changes.
    /// Sequence numbers continue from the newest event kept, so they are never reused while
    /// the service exists.
    pub(crate) fn record_event(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: &str,
    ) -> DbResult<Committed<EventRecord>> {
        let committed = self.write(Subject::Events(name.clone()), |txn| {
            let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
            if !service_exists {
                return Err(service_not_found(name).into());
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
                time_unix_ms: self.clock.now_unix_ms(),
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
        tracing::debug!(%name, seq = committed.value.seq, from, to, reason, "recorded scale event");
        Ok(committed)
    }

    /// The newest `limit` scale events of a service, oldest first.
    pub(crate) fn events(&self, name: &ServiceName, limit: usize) -> DbResult<Vec<EventRecord>> {
        let txn = self.database.begin_read()?;
        let service_exists = txn.open_table(SERVICES)?.get(name.as_str())?.is_some();
        if !service_exists {
            return Err(service_not_found(name).into());
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

    /// The change index and the index of each watched area, read together.
    pub(crate) fn indexes(&self) -> DbResult<Indexes> {
        let txn = self.database.begin_read()?;
        read_indexes(&txn.open_table(META)?)
    }

    /// Runs `body` in one write transaction and commits or aborts as it asks (aborting if it
    /// fails); a commit goes into the change log as a change to `subject`.
    pub(crate) fn write<T>(
        &self,
        subject: Subject,
        body: impl FnOnce(&WriteTransaction) -> DbResult<Write<T>>,
    ) -> DbResult<Committed<T>> {
        self.write_with_subject(|txn| Ok((body(txn)?, subject)))
    }

    /// [`Db::write`], for a body that finds out what it changed as it goes: it returns the
    /// subject of its change with it (which an abort ignores).
    pub(crate) fn write_with_subject<T>(
        &self,
        body: impl FnOnce(&WriteTransaction) -> DbResult<(Write<T>, Subject)>,
    ) -> DbResult<Committed<T>> {
        self.check_space(0)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.database.begin_write()?;
        let outcome = body(&txn).and_then(|(write, subject)| {
            let indexes = read_indexes(&txn.open_table(META)?)?;
            Ok((write, subject, indexes))
        });
        match outcome {
            Ok((Write::Commit(value), subject, indexes)) => {
                txn.commit()?;
                self.log.push(Change { indexes, subject });
                Ok(Committed {
                    value,
                    index: indexes.change,
                })
            }
            Ok((Write::Abort(value), _, indexes)) => {
                txn.abort()?;
                Ok(Committed {
                    value,
                    index: indexes.change,
                })
            }
            Err(err) => {
                // The body's error is what the caller needs; a failure to abort on top of it
                // (the transaction is discarded either way) is only worth a log line.
                if let Err(abort_err) = txn.abort() {
                    tracing::warn!(error = %abort_err, "failed to abort a store transaction");
                }
                Err(err)
            }
        }
    }
}

/// What a write transaction's body asks for once it has succeeded.
pub(crate) enum Write<T> {
    /// Something changed: commit durably, then return the value.
    Commit(T),
    /// Nothing changed: abort, then return the value.
    Abort(T),
}

/// An error inside the redb core: the store's own, or one of redb's, which the store reports
/// as [`Error::Storage`]. (A `From<redb::Error>` for the store's error would be an orphan.)
#[derive(Debug)]
pub(crate) struct DbError(pub(crate) Error);

/// The result of the redb core.
pub(crate) type DbResult<T> = std::result::Result<T, DbError>;

impl From<Error> for DbError {
    fn from(error: Error) -> DbError {
        DbError(error)
    }
}

/// Converts each of redb's per-operation errors through `redb::Error`, which redb provides as
/// the superset of all of them.
macro_rules! storage_error_from {
    ($($redb_error:ty),* $(,)?) => {
        $(
            impl From<$redb_error> for DbError {
                fn from(error: $redb_error) -> DbError {
                    DbError(storage_error(redb::Error::from(error)))
                }
            }
        )*
    };
}

/// A full disk is told apart: the caller can say what to do about it.
fn storage_error(error: redb::Error) -> Error {
    match &error {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            Error::Full(io.to_string())
        }
        _ => Error::Storage(Box::new(error)),
    }
}

storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

/// The parts of the store that Consul-style blocking queries watch apart, so that a watcher of
/// one is not woken by changes to another.
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

/// Reads the [`Indexes`] from an open META table.
pub(crate) fn read_indexes(meta: &impl ReadableTable<&'static str, u64>) -> DbResult<Indexes> {
    let read = |key: &str| -> DbResult<u64> { Ok(meta.get(key)?.map_or(1, |value| value.value())) };
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
pub(crate) fn bump_change_index(txn: &WriteTransaction, areas: &[Area]) -> DbResult<u64> {
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

pub(crate) use shoal_registry::codec::encode;

/// Decodes the record stored under `key`; see [`shoal_registry::codec::decode`].
pub(crate) fn decode<R: StoredRecord>(bytes: &[u8], key: &str) -> DbResult<R> {
    Ok(shoal_registry::codec::decode(bytes, key)?)
}

fn module_not_found(digest: &Digest) -> Error {
    Error::NotFound {
        kind: "module",
        key: digest.to_string(),
    }
}
