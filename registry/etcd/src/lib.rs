//! The cluster store: the state every node of a cluster shares, in etcd, behind the same
//! [`Store`] trait as a single node's redb file.
//!
//! etcd holds small records only (`keys.rs` has the layout). Module bytes never go into etcd:
//! they stay in each node's local store (`Options::blobs`, a redb file), and etcd holds the
//! module's record.
//!
//! **How a write stays correct with several writers.** Every write reads what it decides on,
//! decides exactly as the redb backend does, then commits one etcd transaction whose compares
//! say "nothing I read has changed" (a key's `mod_revision`, a key's absence, or the catalog's
//! guard key); if another writer got there first, the compares fail, nothing is written, and
//! the write reads and decides again. So a name has one owner, a service moves one revision at
//! a time, and a compare-and-set is exact, whichever node writes.
//!
//! **Indexes.** Every transaction also rewrites `index/change` (with what it touched) and the
//! `index/` key of each area it changed; an index is that key's `mod_revision`. The watch
//! (`watch.rs`) follows `index/` alone: one event per change, in revision order, with its
//! subject and the area indexes right after it.
//!
//! **Architecture Invariant:** this crate knows etcd and the store seam, nothing of HTTP,
//! wasmtime or the node.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod catalog;
mod conn;
mod keys;
mod members;
mod services;
mod sessions;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use etcd_client::{Compare, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use shoal_registry::codec::{StoredRecord, decode};
use shoal_registry::{
    CatalogSnapshot, ChangeStream, CheckDefinition, CheckRecord, CheckStatus, Clock, Committed,
    Error, EventRecord, Expect, ExternalNode, Indexes, KvEntry, KvOp, ModuleRecord, Registration,
    Result, RevisionRecord, RouteRecord, ServiceRecord, SessionRecord, Store, Subject, SystemClock,
    TxnOutcome, WaitingRecord,
};
use shoal_spec::{Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::conn::{Connection, Retry};

use crate::keys::{Area, Keys};
pub use crate::members::{DEFAULT_NODE_TTL, EtcdNodes};

/// The prefix every key of a cluster's state is under, by default.
pub const DEFAULT_PREFIX: &str = "/shoal/v1/";

/// How an [`EtcdStore`] is set up.
#[derive(Clone)]
pub struct Options {
    /// The etcd members, `host:port` or URLs.
    pub endpoints: Vec<String>,
    /// The prefix of every key ([`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Where record times come from.
    pub clock: Arc<dyn Clock>,
    /// The node's local store, which keeps the bytes of modules: etcd holds their records.
    pub blobs: Arc<dyn Store>,
}

impl Options {
    /// Options for the cluster at `endpoints`, keeping module bytes in `blobs`.
    pub fn new(endpoints: Vec<String>, blobs: Arc<dyn Store>) -> Options {
        Options {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            clock: Arc::new(SystemClock),
            blobs,
        }
    }
}

/// A [`Store`] in an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    conn: Connection,
    keys: Keys,
    clock: Arc<dyn Clock>,
    blobs: Arc<dyn Store>,
    /// Sends `true` on close: calls fail from then on and watches end.
    closed: tokio::sync::watch::Sender<bool>,
    /// The newest revision a response carried.
    seen: AtomicI64,
}

/// Transactions that lose a race this many times in a row give up as unavailable.
const MAX_ATTEMPTS: usize = 64;

/// How many times a transaction whose answer was lost, and which did not commit, is sent.
const COMMIT_ATTEMPTS: usize = 3;

/// A value no other transaction of any node carries: this process's random hasher keys, and a
/// count.
fn nonce() -> String {
    use std::hash::BuildHasher as _;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    format!(
        "{:016x}{:016x}{count:x}",
        keys.hash_one(0_u8),
        keys.hash_one(1_u8)
    )
}

impl EtcdStore {
    /// A store on the etcd cluster at `options.endpoints`. Nothing is sent yet: an
    /// unreachable cluster is found out at the first call, which fails with
    /// [`Error::Unavailable`].
    pub async fn connect(options: Options) -> Result<EtcdStore> {
        let conn = Connection::new(&options.endpoints).await?;
        let store = EtcdStore {
            shared: Arc::new(Shared {
                conn,
                keys: Keys::new(&options.prefix),
                clock: options.clock,
                blobs: options.blobs,
                closed: tokio::sync::watch::Sender::new(false),
                seen: AtomicI64::new(0),
            }),
        };
        tokio::spawn(sessions::expire_sessions(Arc::downgrade(&store.shared)));
        Ok(store)
    }

    fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    fn open(&self) -> Result<()> {
        if *self.shared.closed.borrow() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Reads every key of `gets` as of one revision (one transaction of reads), returning the
    /// revision and each get's pairs.
    async fn read(&self, gets: Vec<Get>) -> Result<Snapshot> {
        self.open()?;
        let txn = Txn::new().and_then(
            gets.into_iter()
                .map(|get| TxnOp::get(get.key, get.options))
                .collect::<Vec<_>>(),
        );
        let response = self.txn(Retry::Read, &txn).await?;
        let at = response.header().map_or(0, |header| header.revision());
        self.saw(at);
        Ok(Snapshot {
            revision: at,
            ranges: response
                .op_responses()
                .into_iter()
                .map(|op| match op {
                    TxnOpResponse::Get(mut get) => get.take_kvs(),
                    _ => Vec::new(),
                })
                .collect(),
        })
    }

    /// [`EtcdStore::read`] for more gets than etcd takes in one transaction: in as many as
    /// needed, the later ones pinned to the revision of the first, so all read one moment.
    async fn read_pinned(&self, gets: Vec<Get>) -> Result<Snapshot> {
        const PER_TXN: usize = 100;
        if gets.len() <= PER_TXN {
            return self.read(gets).await;
        }
        let mut chunks = gets.chunks(PER_TXN);
        let first = chunks.next().map(<[Get]>::to_vec).unwrap_or_default();
        let mut snapshot = self.read(first).await?;
        for chunk in chunks {
            let pinned = chunk
                .iter()
                .map(|get| Get {
                    key: get.key.clone(),
                    options: Some(
                        get.options
                            .clone()
                            .unwrap_or_default()
                            .with_revision(snapshot.revision),
                    ),
                })
                .collect();
            let more = self.read(pinned).await?;
            snapshot.ranges.extend(more.ranges);
        }
        Ok(snapshot)
    }

    /// Commits `write` if its compares hold: its operations, `index/change` set to its subject
    /// and the index of each of its areas. Returns the revision it committed at, or `None` if
    /// a compare failed and nothing was written.
    ///
    /// A transaction whose answer was lost (the member died, the connection broke) may have
    /// committed or not. Each carries a nonce in `index/change`, so the store finds out from
    /// the history of that key since the last revision it had seen, on another member: a
    /// committed one is reported as such (a compare-and-set that happened is never reported
    /// as failed), one that did not commit is sent again.
    async fn commit(&self, write: Write) -> Result<Option<u64>> {
        self.open()?;
        let keys = self.keys();
        let nonce = nonce();
        let mut ops = write.ops;
        ops.push(TxnOp::put(
            keys.index(Area::Change),
            keys::encode_change(&write.subject, &nonce),
            None,
        ));
        for area in write.areas {
            ops.push(TxnOp::put(keys.index(*area), "", None));
        }
        let txn = Txn::new().when(write.compares).and_then(ops);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.shared.seen.load(Ordering::Relaxed);
            let sent = self.txn(Retry::Write, &txn).await;
            let error = match sent {
                Ok(response) => {
                    let at = response.header().map_or(0, |header| header.revision());
                    self.saw(at);
                    return Ok(response.succeeded().then(|| revision(at)));
                }
                Err(error @ Error::Unavailable(_)) => error,
                Err(error) => return Err(error),
            };
            if before == 0 || attempts >= COMMIT_ATTEMPTS {
                return Err(error);
            }
            match self.committed_since(before, &nonce).await {
                Ok(Some(at)) => return Ok(Some(at)),
                Ok(None) => {
                    tracing::debug!(%error, "a transaction did not commit; sending it again")
                }
                Err(_) => return Err(error),
            }
        }
    }

    /// The revision at which the transaction carrying `nonce` committed after revision
    /// `after`, or `None` if none did (yet).
    async fn committed_since(&self, after: i64, nonce: &str) -> Result<Option<u64>> {
        let key = self.keys().index(Area::Change);
        let snapshot = self.read(vec![Get::key(key.clone())]).await?;
        let Some(newest) = snapshot.one(0).filter(|kv| kv.mod_revision() > after) else {
            return Ok(None);
        };
        if keys::change_nonce(newest.value()) == Some(nonce) {
            return Ok(Some(revision(newest.mod_revision())));
        }
        // Others wrote since: look through every version of the key after `after`.
        let target = newest.mod_revision();
        let (member, mut client) = self.shared.conn.watch_client();
        let unavailable = |error: &etcd_client::Error| {
            conn::unavailable(self.shared.conn.endpoint(member), error)
        };
        let options = WatchOptions::new().with_start_revision(after + 1);
        let mut stream = client
            .watch(key, Some(options))
            .await
            .map_err(|error| unavailable(&error))?;
        loop {
            let response = tokio::time::timeout(conn::REQUEST_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    Error::Unavailable("reading the history of index/change timed out".into())
                })?
                .map_err(|error| unavailable(&error))?
                .ok_or_else(|| Error::Unavailable("the history of index/change ended".into()))?;
            if response.canceled() {
                return Err(Error::Unavailable(format!(
                    "the history of index/change is gone: {}",
                    response.cancel_reason()
                )));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if keys::change_nonce(kv.value()) == Some(nonce) {
                    return Ok(Some(revision(kv.mod_revision())));
                }
                if kv.mod_revision() >= target {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends one transaction to the member in use, as [`Connection::kv`] allows `retry`.
    pub(crate) async fn txn(&self, retry: Retry, txn: &Txn) -> Result<etcd_client::TxnResponse> {
        self.shared
            .conn
            .kv(retry, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await
    }

    /// Grants a lease of `seconds`.
    pub(crate) async fn grant_lease(&self, seconds: i64) -> Result<i64> {
        let granted = self
            .shared
            .conn
            .call(Retry::Write, |client| async move {
                client.lease_client().grant(seconds, None).await
            })
            .await?;
        Ok(granted.id())
    }

    /// Gives a lease up, deleting the keys under it; a failure only leaves it to lapse.
    pub(crate) async fn revoke_lease(&self, lease: i64) {
        let revoked = self
            .shared
            .conn
            .call(Retry::Read, |client| async move {
                client.lease_client().revoke(lease).await
            })
            .await;
        if let Err(error) = revoked {
            tracing::debug!(%error, lease, "revoking a lease failed; it will lapse");
        }
    }

    /// Renews a lease once (`what` names it in errors): `Ok(false)` when etcd no longer has
    /// it.
    pub(crate) async fn keep_lease(&self, lease: i64, what: &str) -> Result<bool> {
        let (member, client) = self.shared.conn.client();
        let renewed = tokio::time::timeout(conn::REQUEST_TIMEOUT, async move {
            client.lease_client().keep_alive(lease).await
        })
        .await;
        match renewed {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
            Ok(Err(error)) => {
                self.shared.conn.move_on_from(member);
                Err(conn::unavailable(self.shared.conn.endpoint(member), &error))
            }
            Err(_) => {
                self.shared.conn.move_on_from(member);
                Err(Error::Unavailable(format!("renewing {what} timed out")))
            }
        }
    }

    /// Notes a revision a response carried: a later transaction commits after it.
    fn saw(&self, at: i64) {
        self.shared.seen.fetch_max(at, Ordering::Relaxed);
    }

    /// Runs `attempt` until it decides: each attempt reads, decides, and commits or not; a
    /// `None` is a lost race, and the next attempt reads again.
    async fn decide<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(outcome) = attempt().await? {
                return Ok(outcome);
            }
        }
        Err(Error::Unavailable(format!(
            "a write lost {MAX_ATTEMPTS} races in a row with other writers"
        )))
    }

    /// The indexes from the pairs under [`Keys::indexes`]; an area never written is at 1.
    fn indexes_of(&self, kvs: &[KeyValue]) -> Indexes {
        let mut indexes = Indexes {
            change: 1,
            catalog: 1,
            health: 1,
            kv: 1,
        };
        for kv in kvs {
            let Some(area) = kv
                .key_str()
                .ok()
                .and_then(|key| self.keys().index_area(key))
            else {
                continue;
            };
            *area_index(&mut indexes, area) = revision(kv.mod_revision());
        }
        indexes
    }

    /// A get of every index, for [`EtcdStore::indexes_of`].
    fn get_indexes(&self) -> Get {
        Get::prefix(self.keys().indexes())
    }

    /// A get of the change index alone.
    fn get_change_index(&self) -> Get {
        Get::key(self.keys().index(Area::Change))
    }
}

/// The field of `indexes` that `area`'s index goes in.
pub(crate) fn area_index(indexes: &mut Indexes, area: Area) -> &mut u64 {
    match area {
        Area::Change => &mut indexes.change,
        Area::Catalog => &mut indexes.catalog,
        Area::Health => &mut indexes.health,
        Area::Kv => &mut indexes.kv,
    }
}

/// One get of a snapshot.
#[derive(Clone)]
struct Get {
    key: String,
    options: Option<GetOptions>,
}

impl Get {
    fn key(key: String) -> Get {
        Get { key, options: None }
    }

    fn prefix(key: String) -> Get {
        Get {
            key,
            options: Some(GetOptions::new().with_prefix()),
        }
    }
}

/// What a transaction of reads returned.
struct Snapshot {
    revision: i64,
    ranges: Vec<Vec<KeyValue>>,
}

impl Snapshot {
    /// The one pair of get `at`, if the key exists.
    fn one(&self, at: usize) -> Option<&KeyValue> {
        self.ranges[at].first()
    }

    /// The change index, from get `at` of [`EtcdStore::get_change_index`].
    fn change_index(&self, at: usize) -> u64 {
        self.one(at).map_or(1, |kv| revision(kv.mod_revision()))
    }

    /// The `mod_revision` of the key of get `at`; 0 if it does not exist, as etcd compares it.
    fn mod_revision(&self, at: usize) -> i64 {
        self.one(at).map_or(0, KeyValue::mod_revision)
    }
}

/// A transaction to commit.
struct Write {
    subject: Subject,
    areas: &'static [Area],
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

fn revision(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

fn key_str(kv: &KeyValue) -> Result<&str> {
    kv.key_str()
        .map_err(|_| Error::Corrupt("a key in etcd is not UTF-8".into()))
}

/// Decodes a record stored in etcd.
fn record<R: StoredRecord>(kv: &KeyValue) -> Result<R> {
    decode(kv.value(), key_str(kv)?)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn put_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: Bytes,
    ) -> Result<Committed<(ModuleRecord, bool)>> {
        self.put_module_record(digest, kind, bytes).await
    }

    async fn module(&self, digest: &Digest) -> Result<Option<ModuleRecord>> {
        self.module_record(digest).await
    }

    async fn name_module(&self, digest: &Digest, name: &str) -> Result<Committed<ModuleRecord>> {
        self.name_module_record(digest, name).await
    }

    async fn put_route(
        &self,
        name: &ServiceName,
        spec: RouteSpec,
        expect: Expect,
    ) -> Result<Committed<(RouteRecord, bool)>> {
        self.put_route_record(name, spec, expect).await
    }

    async fn route(&self, name: &ServiceName) -> Result<Option<RouteRecord>> {
        self.route_record(name).await
    }

    async fn routes(&self) -> Result<Vec<RouteRecord>> {
        self.route_records().await
    }

    async fn delete_route(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<RouteRecord>> {
        self.delete_route_record(name, expect).await
    }

    async fn put_waiting(
        &self,
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(WaitingRecord, bool)>> {
        self.put_waiting_record(name, image, spec, expect).await
    }

    async fn waiting(&self) -> Result<Vec<WaitingRecord>> {
        self.waiting_records().await
    }

    async fn delete_waiting(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<WaitingRecord>> {
        self.delete_waiting_record(name, expect).await
    }

    async fn module_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.open()?;
        self.shared.blobs.module_bytes(digest).await
    }

    async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        self.module_records().await
    }

    async fn delete_module(&self, digest: &Digest) -> Result<Committed<ModuleRecord>> {
        self.delete_module_record(digest).await
    }

    async fn put_service(
        &self,
        name: &ServiceName,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(ServiceRecord, bool)>> {
        self.put_service_record(name, spec, expect).await
    }

    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        self.service_record(name).await
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        self.service_records().await
    }

    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        self.revision_records(name).await
    }

    async fn delete_service(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<ServiceRecord>> {
        self.delete_service_record(name, expect).await
    }

    async fn record_event(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: String,
    ) -> Result<Committed<EventRecord>> {
        self.record_event_record(name, from, to, reason).await
    }

    async fn events(&self, name: &ServiceName, limit: usize) -> Result<Vec<EventRecord>> {
        self.event_records(name, limit).await
    }

    async fn register_service(
        &self,
        registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Committed<Registration>> {
        self.register(registration, checks, replace_existing_checks)
            .await
    }

    async fn deregister_service(&self, id: &str) -> Result<Committed<bool>> {
        self.deregister(id).await
    }

    async fn register_check(&self, definition: CheckDefinition) -> Result<Committed<CheckRecord>> {
        self.add_check(definition).await
    }

    async fn deregister_check(&self, id: &str) -> Result<Committed<bool>> {
        self.remove_check(id).await
    }

    async fn update_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<Committed<Option<CheckRecord>>> {
        self.set_check_state(id, status, output).await
    }

    async fn catalog(&self) -> Result<CatalogSnapshot> {
        self.catalog_snapshot().await
    }

    async fn kv_get(&self, key: &str) -> Result<(Option<KvEntry>, u64)> {
        self.kv_read(key).await
    }

    async fn kv_list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
        self.kv_read_prefix(prefix).await
    }

    async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        self.kv_write(key, value, flags, cas).await
    }

    async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        self.kv_remove(key, recurse, cas).await
    }

    async fn register_node(
        &self,
        node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<Committed<ExternalNode>> {
        self.register_external_node(node, registration, checks)
            .await
    }

    async fn deregister_node(&self, name: &str) -> Result<Committed<bool>> {
        self.deregister_external_node(name).await
    }

    async fn kv_txn(&self, ops: Vec<KvOp>) -> Result<Committed<TxnOutcome>> {
        self.kv_transaction(ops).await
    }

    async fn create_session(&self, session: SessionRecord) -> Result<Committed<SessionRecord>> {
        self.create_session_record(session).await
    }

    async fn renew_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.renew_session_lease(id).await
    }

    async fn destroy_session(&self, id: &str) -> Result<Committed<bool>> {
        self.invalidate_session(id).await
    }

    async fn sessions(&self) -> Result<(Vec<SessionRecord>, u64)> {
        self.session_records().await
    }

    async fn indexes(&self) -> Result<Indexes> {
        let snapshot = self.read(vec![self.get_indexes()]).await?;
        Ok(self.indexes_of(&snapshot.ranges[0]))
    }

    fn watch(&self, from_index: u64) -> ChangeStream {
        self.watch_changes(from_index)
    }

    async fn close(&self) {
        self.shared.closed.send_replace(true);
        self.shared.blobs.close().await;
    }
}
