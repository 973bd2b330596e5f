//! The default store: a node's whole state in one redb file (`{data_dir}/shoal.redb`), so
//! every acknowledged change survives `kill -9`, with no server to run.
//!
//! [`RedbStore`] implements [`Store`] over a synchronous core (`db.rs`, `catalog.rs`, `kv.rs`,
//! the tables in `tables.rs`). redb is synchronous and allows one writer at a time, so every
//! call runs on a tokio blocking thread, and no transaction outlives the call that began it.
//! redb has no watch of its own: committed changes go into a [`ChangeLog`] in memory, which
//! serves [`Store::watch`] for the changes since the store was opened.
//!
//! [`Store::close`] lets go of the file even while handles to the store live on (a connection
//! task finishing late), so the next node can open it at once.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod catalog;
mod db;
mod kv;
mod session;
mod tables;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redb::Database;
use redb::backends::InMemoryBackend;
use shoal_registry::{
    CatalogSnapshot, ChangeLog, ChangeStream, CheckDefinition, CheckRecord, CheckStatus, Clock,
    Committed, Error, EventRecord, Expect, ExternalNode, Indexes, KvEntry, KvOp, ModuleRecord,
    Registration, Result, RevisionRecord, RouteRecord, ServiceRecord, SessionRecord, Store,
    SystemClock, TxnOutcome, WaitingRecord,
};
use shoal_spec::{Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::db::Db;

/// How a [`RedbStore`] is set up.
#[derive(Clone)]
pub struct Options {
    /// Where record times come from.
    pub clock: Arc<dyn Clock>,
    /// The changes kept in memory for watches that fall behind.
    pub log_capacity: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            clock: Arc::new(SystemClock),
            log_capacity: 4096,
        }
    }
}

/// A [`Store`] in one redb database, on a file or in memory. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Taken out by [`Store::close`]; calls running on blocking threads hold their own `Arc`.
    db: ArcSwapOption<Db>,
    /// The log outlives the database, so watches end cleanly after a close.
    log: Arc<ChangeLog>,
    calls: Arc<BlockingCalls>,
    timers: Arc<SessionTimers>,
}

impl RedbStore {
    /// Opens (or creates) the store in the file at `path`, whose directory must exist.
    ///
    /// A file can be open in one store at a time; opening it again fails with
    /// [`Error::Storage`] until the first is closed or dropped.
    pub async fn open(path: &Path, options: Options) -> Result<RedbStore> {
        let path = path.to_owned();
        let db = tokio::task::spawn_blocking(move || {
            let mut db = Db::init(
                Database::create(&path).map_err(db::DbError::from)?,
                options.clock,
                options.log_capacity,
            )?;
            db.dir = path.parent().map(Path::to_owned);
            Ok::<_, db::DbError>(db)
        })
        .await
        .map_err(|error| Error::Storage(Box::new(error)))?
        .map_err(|error| error.0)?;
        let store = RedbStore::new(db);
        // Every session's clock starts again.
        let (sessions, _) = store.sessions().await?;
        for session in &sessions {
            store.shared.timers.start(&store, session);
        }
        Ok(store)
    }

    /// A store held in memory only: nothing survives it.
    pub fn in_memory(options: Options) -> Result<RedbStore> {
        let database = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(|error| db::DbError::from(error).0)?;
        let db = Db::init(database, options.clock, options.log_capacity).map_err(|e| e.0)?;
        Ok(RedbStore::new(db))
    }

    fn new(db: Db) -> RedbStore {
        let log = db.log.clone();
        RedbStore {
            shared: Arc::new(Shared {
                db: ArcSwapOption::from_pointee(db),
                log,
                calls: Arc::default(),
                timers: Arc::default(),
            }),
        }
    }

    /// Runs `call` on the database on a blocking thread.
    async fn call<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> db::DbResult<T> + Send + 'static,
    {
        let db = self.shared.db.load_full().ok_or(Error::Closed)?;
        let running = self.shared.calls.enter();
        tokio::task::spawn_blocking(move || {
            let result = call(&db);
            // The database goes before the count does, so a close waiting on the count finds
            // the file released.
            drop(db);
            drop(running);
            result
        })
        .await
        .map_err(|error| Error::Storage(Box::new(error)))?
        .map_err(|error| error.0)
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn put_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: Bytes,
    ) -> Result<Committed<(ModuleRecord, bool)>> {
        let digest = digest.clone();
        self.call(move |db| db.put_module(&digest, kind, &bytes))
            .await
    }

    async fn module(&self, digest: &Digest) -> Result<Option<ModuleRecord>> {
        let digest = digest.clone();
        self.call(move |db| db.module(&digest)).await
    }

    async fn name_module(&self, digest: &Digest, name: &str) -> Result<Committed<ModuleRecord>> {
        let (digest, name) = (digest.clone(), name.to_owned());
        self.call(move |db| db.name_module(&digest, &name)).await
    }

    async fn module_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let digest = digest.clone();
        let bytes = self.call(move |db| db.module_bytes(&digest)).await?;
        Ok(bytes.map(Bytes::from))
    }

    async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        self.call(|db| db.modules()).await
    }

    async fn delete_module(&self, digest: &Digest) -> Result<Committed<ModuleRecord>> {
        let digest = digest.clone();
        self.call(move |db| db.delete_module(&digest)).await
    }

    async fn put_service(
        &self,
        name: &ServiceName,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(ServiceRecord, bool)>> {
        let name = name.clone();
        self.call(move |db| db.put_service(&name, spec, expect))
            .await
    }

    async fn put_route(
        &self,
        name: &ServiceName,
        spec: RouteSpec,
        expect: Expect,
    ) -> Result<Committed<(RouteRecord, bool)>> {
        let name = name.clone();
        self.call(move |db| db.put_route(&name, spec, expect)).await
    }

    async fn route(&self, name: &ServiceName) -> Result<Option<RouteRecord>> {
        let name = name.clone();
        self.call(move |db| db.route(&name)).await
    }

    async fn routes(&self) -> Result<Vec<RouteRecord>> {
        self.call(|db| db.routes()).await
    }

    async fn delete_route(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<RouteRecord>> {
        let name = name.clone();
        self.call(move |db| db.delete_route(&name, expect)).await
    }

    async fn put_waiting(
        &self,
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(WaitingRecord, bool)>> {
        let (name, image) = (name.clone(), image.to_owned());
        self.call(move |db| db.put_waiting(&name, &image, spec, expect))
            .await
    }

    async fn waiting(&self) -> Result<Vec<WaitingRecord>> {
        self.call(|db| db.waiting()).await
    }

    async fn delete_waiting(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<WaitingRecord>> {
        let name = name.clone();
        self.call(move |db| db.delete_waiting(&name, expect)).await
    }

    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        let name = name.clone();
        self.call(move |db| db.service(&name)).await
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        self.call(|db| db.services()).await
    }

    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        let name = name.clone();
        self.call(move |db| db.revisions(&name)).await
    }

    async fn delete_service(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<ServiceRecord>> {
        let name = name.clone();
        self.call(move |db| db.delete_service(&name, expect)).await
    }

    async fn record_event(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: String,
    ) -> Result<Committed<EventRecord>> {
        let name = name.clone();
        self.call(move |db| db.record_event(&name, from, to, &reason))
            .await
    }

    async fn events(&self, name: &ServiceName, limit: usize) -> Result<Vec<EventRecord>> {
        let name = name.clone();
        self.call(move |db| db.events(&name, limit)).await
    }

    async fn register_service(
        &self,
        registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Committed<Registration>> {
        self.call(move |db| db.register_service(registration, checks, replace_existing_checks))
            .await
    }

    async fn deregister_service(&self, id: &str) -> Result<Committed<bool>> {
        let id = id.to_owned();
        self.call(move |db| db.deregister_service(&id)).await
    }

    async fn register_check(&self, definition: CheckDefinition) -> Result<Committed<CheckRecord>> {
        self.call(move |db| db.register_check(definition)).await
    }

    async fn deregister_check(&self, id: &str) -> Result<Committed<bool>> {
        let id = id.to_owned();
        self.call(move |db| db.deregister_check(&id)).await
    }

    async fn update_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<Committed<Option<CheckRecord>>> {
        let id = id.to_owned();
        self.call(move |db| db.update_check(&id, status, &output))
            .await
    }

    async fn register_node(
        &self,
        node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<Committed<ExternalNode>> {
        self.call(move |db| db.register_node(node, registration, checks))
            .await
    }

    async fn deregister_node(&self, name: &str) -> Result<Committed<bool>> {
        let name = name.to_owned();
        self.call(move |db| db.deregister_node(&name)).await
    }

    async fn catalog(&self) -> Result<CatalogSnapshot> {
        self.call(|db| db.catalog()).await
    }

    async fn kv_get(&self, key: &str) -> Result<(Option<KvEntry>, u64)> {
        let key = key.to_owned();
        self.call(move |db| db.kv_get(&key)).await
    }

    async fn kv_list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
        let prefix = prefix.to_owned();
        self.call(move |db| db.kv_list(&prefix)).await
    }

    async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        let key = key.to_owned();
        self.call(move |db| db.kv_put(&key, &value, flags, cas))
            .await
    }

    async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        let key = key.to_owned();
        self.call(move |db| db.kv_delete(&key, recurse, cas)).await
    }

    async fn kv_txn(&self, ops: Vec<KvOp>) -> Result<Committed<TxnOutcome>> {
        self.call(move |db| db.kv_txn(&ops)).await
    }

    async fn create_session(&self, session: SessionRecord) -> Result<Committed<SessionRecord>> {
        let committed = self.call(move |db| db.create_session(session)).await?;
        self.shared.timers.start(self, &committed.value);
        Ok(committed)
    }

    async fn renew_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let id = id.to_owned();
        let session = self.call(move |db| db.session(&id)).await?;
        if let Some(session) = &session {
            self.shared.timers.start(self, session);
        }
        Ok(session)
    }

    async fn destroy_session(&self, id: &str) -> Result<Committed<bool>> {
        let owned = id.to_owned();
        let committed = self.call(move |db| db.destroy_session(&owned)).await?;
        self.shared.timers.stop(id);
        Ok(committed)
    }

    async fn sessions(&self) -> Result<(Vec<SessionRecord>, u64)> {
        self.call(|db| db.sessions()).await
    }

    async fn indexes(&self) -> Result<Indexes> {
        self.call(|db| db.indexes()).await
    }

    fn watch(&self, from_index: u64) -> ChangeStream {
        self.shared.log.watch(from_index)
    }

    async fn close(&self) {
        // Later calls fail; the file closes when the last call still running on a blocking
        // thread (a task aborted while it waited leaves its call running) lets go.
        self.shared.db.store(None);
        self.shared.timers.close();
        self.shared.calls.wait_idle().await;
    }
}

/// The TTL clocks of sessions: when each lapses unless renewed. They live in memory and start
/// again when the store opens (as Consul's do when it boots), so a restart never cuts a session
/// short, and a session whose holder is gone lapses one TTL span after the restart.
#[derive(Default)]
struct SessionTimers {
    deadlines: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    changed: tokio::sync::Notify,
    /// Whether the task that invalidates lapsed sessions runs.
    running: std::sync::atomic::AtomicBool,
    closed: std::sync::atomic::AtomicBool,
}

impl SessionTimers {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::time::Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (Re)starts the clock of `session`, if it has a TTL, and the task that acts on it.
    fn start(&self, store: &RedbStore, session: &SessionRecord) {
        let Some(after) = session.lapses_after() else {
            return;
        };
        self.lock()
            .insert(session.id.clone(), tokio::time::Instant::now() + after);
        self.changed.notify_one();
        if !self.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(expire_sessions(Arc::downgrade(&store.shared)));
        }
    }

    fn stop(&self, id: &str) {
        self.lock().remove(id);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The sessions whose clock ran out, and when the next one will.
    fn lapsed(&self) -> (Vec<String>, Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        let deadlines = self.lock();
        let lapsed = deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let next = deadlines
            .values()
            .filter(|deadline| **deadline > now)
            .min()
            .copied();
        (lapsed, next)
    }
}

/// How soon an invalidation that failed is tried again.
const RETRY_LAPSED: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a task with no clock to wait for looks whether its store is gone.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Invalidates sessions as their clocks run out, until the store closes or is dropped.
async fn expire_sessions(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let store = RedbStore { shared: strong };
        let timers = store.shared.timers.clone();
        let changed = timers.changed.notified();
        let mut changed = std::pin::pin!(changed);
        // Registered before reading the clocks, so a renewal in between still wakes us.
        changed.as_mut().enable();
        if timers.closed.load(Ordering::SeqCst) {
            return;
        }
        let (lapsed, mut next) = timers.lapsed();
        for id in lapsed {
            // Renewed since it was read: its clock was set again.
            let still_lapsed = timers
                .lock()
                .get(&id)
                .is_some_and(|deadline| *deadline <= tokio::time::Instant::now());
            if !still_lapsed {
                continue;
            }
            match store.destroy_session(&id).await {
                Ok(_) => tracing::info!(session = %id, "a session's TTL lapsed: invalidated"),
                Err(Error::Closed) => return,
                Err(error) => {
                    tracing::warn!(session = %id, %error, "cannot invalidate a lapsed session; trying again in a second");
                    let again = tokio::time::Instant::now() + RETRY_LAPSED;
                    next = Some(next.map_or(again, |next| next.min(again)));
                }
            }
        }
        drop(store);
        // Woken by a clock set or stopped, the next deadline, or now and then to find out
        // whether the store was dropped without being closed.
        let wake = next.unwrap_or_else(|| tokio::time::Instant::now() + IDLE_CHECK);
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Counts calls running on blocking threads, so that closing can wait for them.
#[derive(Default)]
struct BlockingCalls {
    running: AtomicU64,
    idle: tokio::sync::Notify,
}

/// One call on a blocking thread; dropping it ends the call.
struct BlockingCall(Arc<BlockingCalls>);

impl BlockingCalls {
    fn enter(self: &Arc<Self>) -> BlockingCall {
        self.running.fetch_add(1, Ordering::SeqCst);
        BlockingCall(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a call ending in between still wakes us.
            notified.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for BlockingCall {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use shoal_registry::Subject;

    use super::*;
    use crate::tables::{CHANGE_INDEX_KEY, META, MODULE_BYTES, MODULES, REVISIONS, SERVICES};

    fn name(text: &str) -> ServiceName {
        text.parse().unwrap()
    }

    /// Writes raw records into the store's database, as another version of shoal might have.
    fn write_raw(store: &RedbStore, body: impl FnOnce(&redb::WriteTransaction)) {
        let db = store.shared.db.load_full().unwrap();
        let txn = db.database.begin_write().unwrap();
        body(&txn);
        txn.commit().unwrap();
    }

    async fn store_module(store: &RedbStore, bytes: &'static [u8]) -> Digest {
        let digest = Digest::of(bytes);
        store
            .put_module(&digest, ModuleKind::Http, Bytes::from_static(bytes))
            .await
            .unwrap();
        digest
    }

    #[tokio::test]
    async fn opening_a_file_twice_is_refused_until_the_first_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let first = RedbStore::open(&path, Options::default()).await.unwrap();
        assert!(matches!(
            RedbStore::open(&path, Options::default()).await,
            Err(Error::Storage(_))
        ));
        // A handle that lives on, as a connection task finishing late holds one, does not
        // keep the file.
        let handle = first.clone();
        first.close().await;
        let second = RedbStore::open(&path, Options::default()).await.unwrap();
        assert!(matches!(handle.modules().await, Err(Error::Closed)));
        second.close().await;
    }

    #[tokio::test]
    async fn corrupt_records_are_reported() {
        let store = RedbStore::in_memory(Options::default()).unwrap();
        write_raw(&store, |txn| {
            let mut services = txn.open_table(SERVICES).unwrap();
            services.insert("garbage", b"not json".as_slice()).unwrap();
        });
        let err = store.services().await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(message) if message.starts_with("service record \"garbage\" does not decode")),
            "{err}"
        );

        let store = RedbStore::in_memory(Options::default()).unwrap();
        write_raw(&store, |txn| {
            let mut modules = txn.open_table(MODULES).unwrap();
            modules
                .insert(
                    "future",
                    br#"{"version": 2, "shape": "unknown"}"#.as_slice(),
                )
                .unwrap();
        });
        assert_eq!(
            store.modules().await.unwrap_err().to_string(),
            "corrupt store: module record \"future\" has schema version 2, \
             but this shoal reads version 1"
        );
    }

    #[tokio::test]
    async fn records_written_before_the_workload_fields_still_decode() {
        let store = RedbStore::in_memory(Options::default()).unwrap();
        let module = store_module(&store, b"old module").await;
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
        write_raw(&store, |txn| {
            let mut services = txn.open_table(SERVICES).unwrap();
            services.insert("old", old_service.as_bytes()).unwrap();
            let mut revisions = txn.open_table(REVISIONS).unwrap();
            revisions
                .insert(("old", 1), old_revision.as_bytes())
                .unwrap();
        });

        let mut expected = ServiceSpec::new(module);
        expected.env.insert("GREETING".into(), "hi".into());
        expected.limits.memory = shoal_spec::ByteSize(128 << 20);
        let record = store.service(&name("old")).await.unwrap().unwrap();
        assert_eq!(record.spec, expected);
        assert_eq!(record.spec.scale, shoal_spec::Scale::default());
        assert_eq!(
            store.revisions(&name("old")).await.unwrap()[0].spec,
            expected
        );
        // Applying the same spec again is recognised as no change.
        let again = store
            .put_service(&name("old"), expected, Expect::Revision(1))
            .await
            .unwrap();
        assert_eq!(again.value, (record, false));
        // And events can be recorded for it.
        let event = store
            .record_event(&name("old"), 1, 2, "load".into())
            .await
            .unwrap();
        assert_eq!(event.value.seq, 1);
    }

    #[tokio::test]
    async fn files_from_before_events_and_routes_gain_the_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
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
        let store = RedbStore::open(&path, Options::default()).await.unwrap();
        let module = store_module(&store, b"module").await;
        store
            .put_service(&name("web"), ServiceSpec::new(module), Expect::Absent)
            .await
            .unwrap();
        assert_eq!(store.events(&name("web"), 10).await.unwrap(), vec![]);
        assert_eq!(store.routes().await.unwrap(), vec![]);
        let event = store
            .record_event(&name("web"), 0, 1, "cold start".into())
            .await
            .unwrap();
        assert_eq!(event.value.seq, 1);
    }

    #[tokio::test]
    async fn the_change_log_starts_at_the_index_the_store_opens_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.redb");
        let store = RedbStore::open(&path, Options::default()).await.unwrap();
        store_module(&store, b"one").await;
        let index = store.indexes().await.unwrap().change;
        store.close().await;
        // The log is in memory: after reopening, a watch from before the restart cannot be
        // served, and says so; a watch from now on can.
        let store = RedbStore::open(&path, Options::default()).await.unwrap();
        assert!(matches!(
            store.watch(index - 1).next().await,
            Some(Err(Error::Compacted { oldest, .. })) if oldest == index
        ));
        let mut watch = store.watch(index);
        let module = store_module(&store, b"two").await;
        let change = watch.next().await.unwrap().unwrap();
        assert_eq!(change.subject, Subject::Module(module));
        assert_eq!(change.index(), index + 1);
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_the_log_is_compacted() {
        let options = Options {
            log_capacity: 4,
            ..Options::default()
        };
        let store = RedbStore::in_memory(options).unwrap();
        let start = store.indexes().await.unwrap().change;
        let mut watch = store.watch(start);
        for n in 0..10_u32 {
            store
                .kv_put(&format!("k{n}"), Bytes::new(), 0, None)
                .await
                .unwrap();
        }
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::Compacted { requested, .. })) if requested == start
        ));
        assert!(watch.next().await.is_none());
    }

    /// `SnapshotStore` lives in shoal-registry, which has no store of its own to keep module
    /// bytes in, so it is tested here, over this one.
    #[tokio::test]
    async fn a_snapshot_store_answers_routes_from_what_it_last_knew_and_refuses_route_writes() {
        use shoal_registry::snapshot::{LastKnown, SnapshotStore};
        use shoal_spec::RouteSpec;

        // A last-known file written before routes were kept reads as knowing none.
        let old: LastKnown = serde_json::from_str(
            r#"{"version":1,"change_index":7,"services":[],"registrations":[],"checks":[]}"#,
        )
        .unwrap();
        assert_eq!(old.routes, vec![]);
        let route = |text: &str| RouteRecord {
            version: shoal_registry::SCHEMA_VERSION,
            name: name(text),
            spec: RouteSpec {
                selector: [("app".to_owned(), text.to_owned())].into(),
                kubernetes: None,
            },
            created_unix_ms: 1,
            updated_unix_ms: 1,
            change_index: 5,
        };
        let last = old.with_routes(vec![route("web"), route("api")]);
        let blobs = Arc::new(RedbStore::in_memory(Options::default()).unwrap());
        let module = store_module(&blobs, b"module").await;
        let store = SnapshotStore::new(last, blobs);
        assert_eq!(
            store.routes().await.unwrap(),
            vec![route("api"), route("web")],
            "routes are listed by name"
        );
        assert_eq!(store.route(&name("web")).await.unwrap(), Some(route("web")));
        assert_eq!(store.route(&name("other")).await.unwrap(), None);
        assert!(matches!(
            store
                .put_route(&name("web"), route("x").spec, Expect::Any)
                .await,
            Err(Error::Unavailable(_))
        ));
        assert!(matches!(
            store.delete_route(&name("web"), Expect::Any).await,
            Err(Error::Unavailable(_))
        ));
        assert!(matches!(
            store.name_module(&module, "hello").await,
            Err(Error::Unavailable(_))
        ));
    }
}
