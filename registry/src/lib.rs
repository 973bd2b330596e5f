//! The store seam: everything a shoal node keeps, behind one async [`Store`] trait with a
//! change feed, so the node does not care whether its state is in a local redb file or in a
//! cluster's etcd.
//!
//! What a store keeps:
//! - modules: each module's bytes and its [`ModuleRecord`], keyed by digest, with the names
//!   it was given (a name resolves to the module given it last, [`module_named`]);
//! - services: each service's current [`ServiceRecord`], every [`RevisionRecord`] until the
//!   service is deleted, and its newest [`MAX_EVENTS_PER_SERVICE`] scale events
//!   ([`EventRecord`]);
//! - routes: the names the gateway answers for by selecting services by their labels
//!   ([`RouteRecord`], a Kubernetes Service);
//! - services waiting for their module: written with an image that names no stored module
//!   yet ([`WaitingRecord`], a Pod in `ErrImagePull`);
//! - the Consul catalog: instances registered from outside ([`Registration`]) and their checks
//!   with their state ([`CheckRecord`]);
//! - a key/value store ([`KvEntry`]), with locks held by sessions ([`SessionRecord`]);
//! - the change index, Consul's `X-Consul-Index`, with the index of the newest change to each
//!   watched area ([`Indexes`]).
//!
//! **The contract every backend keeps** (and [`conformance`] checks):
//! - every change is atomic and durable once acknowledged, and moves the change index forward
//!   (by one in redb; to the cluster's next revision in etcd); a request that changes nothing
//!   commits nothing and moves nothing;
//! - [`Store::watch`] yields every committed change after an index, in order, whoever wrote it
//!   (this node, another node, a tool writing to the backend), or [`Error::Compacted`] when the
//!   store no longer has them, after which the caller lists everything again;
//! - writes that two writers could race are conditional: a service is written against the
//!   revision the writer saw ([`Expect`]), a name has one owner (a wasm service or registered
//!   instances) checked inside the write, key/value writes take a check-and-set index;
//! - any call may fail with [`Error::Unavailable`], which the caller may retry: a remote store
//!   can be unreachable for a while.
//!
//! **Architecture Invariant:** this crate knows no backend: no redb, no etcd client, no
//! wasmtime, no HTTP. Backends live in their own crates (`registry/redb`).
//!
//! # Layout
//! - `record.rs`: the records of modules, services, revisions, routes and events.
//! - `catalog.rs`: the records of the Consul catalog: registrations and checks.
//! - `kv.rs`: key/value entries, and the transactions over them ([`plan`], once for every
//!   backend).
//! - `session.rs`: sessions, which hold locks on keys.
//! - `changes.rs`: [`Change`] and [`ChangeLog`], the change feed a backend without its own
//!   watch (redb) keeps in memory.
//! - `cluster.rs`: the nodes sharing a store: membership and what each node reports.
//! - `codec.rs`: how every backend stores a record (versioned JSON).
//! - `snapshot.rs`: what a node of a cluster last knew, and a read-only store over it.
//! - `conformance.rs` (feature `conformance`): the tests every backend runs.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod catalog;
mod changes;
pub mod cluster;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
mod kv;
mod record;
mod session;
pub mod snapshot;

use bytes::Bytes;
use shoal_spec::{Digest, FieldError, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

pub use self::catalog::{
    CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, ExternalNode, Probe, Registration,
    TaggedAddress, Weights,
};
pub use self::changes::{Change, ChangeLog, ChangeStream, Subject};
pub use self::kv::{
    KvEntry, KvLock, KvOp, KvRead, KvWrites, MAX_KV_VALUE_SIZE, MAX_TXN_OPS, TxnError, TxnFailure,
    TxnOutcome, check_delete, check_put, plan, written_prefix,
};
pub use self::record::{
    EventRecord, MAX_EVENTS_PER_SERVICE, ModuleRecord, RevisionRecord, RouteRecord, SCHEMA_VERSION,
    ServiceRecord, WaitingRecord, check_digest, check_unused, module_named, module_of_image,
};
pub use self::session::{
    DEFAULT_LOCK_DELAY, MAX_LOCK_DELAY, NODE_HEALTH_CHECK, SESSION_TTL_MAX, SESSION_TTL_MIN,
    SessionBehavior, SessionRecord, TTL_MULTIPLIER,
};

/// The errors of every store operation.
///
/// Only the variants callers branch on are distinct; everything the caller can only report is
/// [`Error::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The addressed module, service, route or check does not exist.
    #[error("{kind} \"{key}\" not found")]
    NotFound {
        /// What was looked for: `"module"`, `"service"`, `"route"`, `"waiting service"` or
        /// `"check"`.
        kind: &'static str,
        /// The digest, name or ID that was looked for.
        key: String,
    },
    /// A module cannot be deleted because current service specs refer to it.
    #[error("module {digest} is used by services {}", services.join(", "))]
    ModuleInUse {
        /// The module that was to be deleted.
        digest: Digest,
        /// The names of the services using it, sorted.
        services: Vec<String>,
    },
    /// A service name is held by something else: a wasm service, or registered instances.
    /// The gateway routes by name, so a name has one owner.
    #[error("service name \"{name}\" is taken by {owner}")]
    NameTaken {
        /// The name.
        name: String,
        /// Who holds it, in words.
        owner: &'static str,
    },
    /// A service spec names a module that is not stored.
    #[error("module {0} not found")]
    ModuleNotFound(Digest),
    /// A conditional write found something else than it expected: another writer got there
    /// first. Read again and decide again.
    #[error("{kind} \"{name}\" changed meanwhile: expected {expected}, found {found}")]
    Conflict {
        /// What was written: `"service"`, `"route"` or `"waiting service"`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What the writer expected, in words (`revision 3`, `no service`, `change index 7`).
        expected: String,
        /// What the store holds, in words.
        found: String,
    },
    /// An input failed validation; the error names the field.
    #[error("{0}")]
    Invalid(FieldError),
    /// The store cannot be reached or did not answer in time; the call may be retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// [`Store::watch`] was asked for changes the store no longer keeps: list again.
    #[error(
        "changes after index {requested} are no longer kept (the oldest kept follows {oldest})"
    )]
    Compacted {
        /// The index the watch was to start after.
        requested: u64,
        /// The watch could start after this index, or later.
        oldest: u64,
    },
    /// A node's name is held by another live node of the cluster.
    #[error(
        "node name \"{name}\" is held by a live node (at {api}); give this node another name, or stop that one"
    )]
    NodeNameTaken {
        /// The name.
        name: String,
        /// Where the node holding it says its management API is.
        api: String,
    },
    /// The disk under the store is full: the write did not happen.
    #[error("the disk is full: {0}")]
    Full(String),
    /// The store was closed ([`Store::close`]); nothing more can be read or written.
    #[error("the store is closed")]
    Closed,
    /// The backend failed; the cause is the [source](std::error::Error::source).
    #[error("the store failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record does not decode, or the store lacks something it always writes.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl From<shoal_spec::Error> for Error {
    fn from(error: shoal_spec::Error) -> Error {
        match error {
            shoal_spec::Error::Invalid(error) => Error::Invalid(error),
            other => Error::Invalid(FieldError::new("body", other.to_string())),
        }
    }
}

/// The result of every store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The value of a write, and the store's change index right after it: the index of the change
/// the write made, or, for a write that changed nothing, the newest index at the time.
///
/// A reader of a watch who has seen this index has seen the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    /// What the write returned.
    pub value: T,
    /// The change index after the write.
    pub index: u64,
}

/// What a conditional service or route write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything: write unconditionally.
    Any,
    /// Nothing of that name.
    Absent,
    /// A service at this revision; a route whose `change_index` is this (a route has no
    /// revision number, and its change index moves with every write to it, in every backend).
    Revision(u64),
}

impl Expect {
    /// Fails with [`Error::Conflict`] unless `current`, the service `name` as the store holds
    /// it, is what this expects.
    pub fn check(self, name: &ServiceName, current: Option<&ServiceRecord>) -> Result<()> {
        self.check_version(
            "service",
            "revision",
            name,
            current.map(|current| current.revision),
        )
    }

    /// Fails with [`Error::Conflict`] unless `current`, the route `name` as the store holds
    /// it, is what this expects; [`Expect::Revision`] is compared with its `change_index`.
    pub fn check_route(self, name: &ServiceName, current: Option<&RouteRecord>) -> Result<()> {
        self.check_version(
            "route",
            "change index",
            name,
            current.map(|current| current.change_index),
        )
    }

    /// Fails with [`Error::Conflict`] unless `current`, the waiting service `name` as the
    /// store holds it, is what this expects; [`Expect::Revision`] is compared with its
    /// `change_index`.
    pub fn check_waiting(self, name: &ServiceName, current: Option<&WaitingRecord>) -> Result<()> {
        self.check_version(
            "waiting service",
            "change index",
            name,
            current.map(|current| current.change_index),
        )
    }

    fn check_version(
        self,
        kind: &'static str,
        version: &str,
        name: &ServiceName,
        current: Option<u64>,
    ) -> Result<()> {
        let holds = match (self, current) {
            (Expect::Any, _) | (Expect::Absent, None) => true,
            (Expect::Revision(expected), Some(current)) => current == expected,
            _ => false,
        };
        if holds {
            return Ok(());
        }
        let describe = |found: Option<u64>| {
            found.map_or_else(
                || format!("no {kind}"),
                |found| format!("{version} {found}"),
            )
        };
        let expected = match self {
            Expect::Revision(expected) => describe(Some(expected)),
            _ => describe(None),
        };
        Err(Error::Conflict {
            kind,
            name: name.to_string(),
            expected,
            found: describe(current),
        })
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

/// Where a store reads the time for the records it stamps; tests substitute their own.
pub trait Clock: Send + Sync + 'static {
    /// The milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// Everything a node keeps, wherever it keeps it.
///
/// Every method may fail with [`Error::Unavailable`] (retry later) or [`Error::Closed`].
/// Writes return [`Committed`], so the writer can wait until its own change has come through
/// the [watch](Store::watch) before it answers.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // Modules.

    /// Stores a module's bytes and record, returning the record and whether it was created.
    ///
    /// Idempotent by digest: an already stored module keeps its record (first creation time,
    /// kind) and nothing changes. Fails with [`Error::Invalid`] when `digest` is not the
    /// digest of `bytes`.
    async fn put_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: Bytes,
    ) -> Result<Committed<(ModuleRecord, bool)>>;

    /// Gives the stored module `digest` the name `name`, which then resolves to it
    /// ([`module_named`]) until another module is given it; a module keeps every name it was
    /// given. Giving a module a name it has changes nothing. [`Error::NotFound`] when the
    /// module is not stored, [`Error::Invalid`] for an empty name.
    async fn name_module(&self, digest: &Digest, name: &str) -> Result<Committed<ModuleRecord>>;

    /// The record of a stored module.
    async fn module(&self, digest: &Digest) -> Result<Option<ModuleRecord>>;

    /// The bytes of a stored module.
    async fn module_bytes(&self, digest: &Digest) -> Result<Option<Bytes>>;

    /// Every module's record, by digest.
    async fn modules(&self) -> Result<Vec<ModuleRecord>>;

    /// Deletes a module, returning its record; [`Error::ModuleInUse`] while the current spec of
    /// a service names it, [`Error::NotFound`] when it is not stored.
    async fn delete_module(&self, digest: &Digest) -> Result<Committed<ModuleRecord>>;

    // Services.

    /// Creates or updates a service when the store holds what `expect` says, returning its
    /// record and whether it was created.
    ///
    /// The spec is normalized and validated first. A new spec becomes the next revision (1 for
    /// a new service); a spec equal to the current one changes nothing, like `kubectl apply`.
    /// Fails with [`Error::Conflict`] when `expect` does not hold, [`Error::ModuleNotFound`]
    /// when the module is not stored, [`Error::NameTaken`] when registered instances hold the
    /// name; then nothing is written.
    async fn put_service(
        &self,
        name: &ServiceName,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(ServiceRecord, bool)>>;

    /// The current record of a service.
    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>>;

    /// Every service's current record, by name.
    async fn services(&self) -> Result<Vec<ServiceRecord>>;

    /// Every revision of a service, oldest first; [`Error::NotFound`] for an unknown service.
    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>>;

    /// Deletes a service with its revisions and events when the store holds what `expect`
    /// says, returning its last record.
    async fn delete_service(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<ServiceRecord>>;

    // Routes.

    /// Creates or updates a route when the store holds what `expect` says, returning its
    /// record and whether it was created.
    ///
    /// A route has no revision number: [`Expect::Revision`] names the route's `change_index`,
    /// which every write to it moves. The spec is validated first ([`Error::Invalid`]); a spec
    /// equal to the current one changes nothing. A route changes which names the gateway
    /// answers, so a write moves the catalog area's index, as a registration does. A route
    /// may share its name with a service or registered instances: the node decides which
    /// leads, so the store does not check. Fails with [`Error::Conflict`] when `expect` does
    /// not hold; then nothing is written.
    async fn put_route(
        &self,
        name: &ServiceName,
        spec: RouteSpec,
        expect: Expect,
    ) -> Result<Committed<(RouteRecord, bool)>>;

    /// The current record of a route.
    async fn route(&self, name: &ServiceName) -> Result<Option<RouteRecord>>;

    /// Every route, by name.
    async fn routes(&self) -> Result<Vec<RouteRecord>>;

    /// Deletes a route when `expect` holds (as for [`Store::put_route`]), returning its last
    /// record; [`Error::NotFound`] when there is none.
    async fn delete_route(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<RouteRecord>>;

    // Services waiting for their module.

    /// Creates or updates the service `name` waiting for the module `image` names, when the
    /// store holds what `expect` says ([`Expect::Revision`] names the record's
    /// `change_index`), returning its record and whether it was created.
    ///
    /// The spec is validated first ([`Error::Invalid`]); an image and spec equal to the
    /// current ones change nothing. The store does not look at modules or services: the node
    /// writes a waiting service when the image resolves to nothing, and turns it into a service
    /// when it does. Fails with [`Error::Conflict`] when `expect` does not hold.
    async fn put_waiting(
        &self,
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(WaitingRecord, bool)>>;

    /// Every service waiting for its module, by name.
    async fn waiting(&self) -> Result<Vec<WaitingRecord>>;

    /// Deletes the waiting service `name` when `expect` holds, returning its last record;
    /// [`Error::NotFound`] when there is none.
    async fn delete_waiting(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<WaitingRecord>>;

    /// Records a scale decision as the service's next event, keeping the newest
    /// [`MAX_EVENTS_PER_SERVICE`]; it changes the health area only.
    async fn record_event(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: String,
    ) -> Result<Committed<EventRecord>>;

    /// The newest `limit` events of a service, oldest first.
    async fn events(&self, name: &ServiceName, limit: usize) -> Result<Vec<EventRecord>>;

    // The Consul catalog.

    /// Registers (or re-registers) an instance with its checks in one change. With
    /// `replace_existing_checks`, the instance's checks left out are removed.
    /// [`Error::NameTaken`] when a wasm service has the name.
    async fn register_service(
        &self,
        registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Committed<Registration>>;

    /// Removes an instance and its checks; `false` if there was none.
    async fn deregister_service(&self, id: &str) -> Result<Committed<bool>>;

    /// Adds or replaces a check; [`Error::NotFound`] when it names an unknown instance.
    async fn register_check(&self, definition: CheckDefinition) -> Result<Committed<CheckRecord>>;

    /// Removes a check; `false` if there was none.
    async fn deregister_check(&self, id: &str) -> Result<Committed<bool>>;

    /// Sets a check's state, writing only if the status or output changed; `None` for an
    /// unknown check.
    async fn update_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<Committed<Option<CheckRecord>>>;

    /// Registers (or updates) a node of the catalog with, optionally, one instance on it
    /// and checks (of the instance, or of the node when they name no instance), in one change:
    /// Consul's `/v1/catalog/register`. The registration and the checks carry the node's name
    /// as theirs. [`Error::NameTaken`] when a wasm service has the instance's name; then
    /// nothing is written.
    async fn register_node(
        &self,
        node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<Committed<ExternalNode>>;

    /// Removes a node of the catalog with every instance and check on it; `false` if there
    /// was none.
    async fn deregister_node(&self, name: &str) -> Result<Committed<bool>>;

    /// Every registration and check, with the indexes, as of one moment.
    async fn catalog(&self) -> Result<CatalogSnapshot>;

    // The key/value store.

    /// The entry at `key`, and the index a blocking query on it waits past: the entry's
    /// modify index, or the key/value area's index when it is missing.
    async fn kv_get(&self, key: &str) -> Result<(Option<KvEntry>, u64)>;

    /// Every entry under `prefix`, by key, and the key/value area's index.
    async fn kv_list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)>;

    /// Sets `key`; with `cas`, only if its modify index is `cas` (0: only if absent). Returns
    /// whether it was written.
    async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<Committed<bool>>;

    /// Deletes `key`, or with `recurse` every key under it; with `cas`, only if the key's
    /// modify index is `cas`. Returns whether the delete happened.
    async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<Committed<bool>>;

    /// Runs `ops` (at most [`MAX_TXN_OPS`]) as one atomic change, with Consul's semantics
    /// ([`plan`]): all of them, or, when any fails, none ([`TxnOutcome::Refused`], nothing
    /// written). Plain writes keep a key's lock; [`KvOp::Lock`] and [`KvOp::Unlock`] are
    /// Consul's `?acquire` and `?release`. Fails with [`Error::Invalid`] for an operation no
    /// backend may store.
    async fn kv_txn(&self, ops: Vec<KvOp>) -> Result<Committed<TxnOutcome>>;

    // Sessions.

    /// Creates a session (its ID chosen by the caller, validated first), whose TTL, if it has
    /// one, starts now. [`Error::Conflict`] if the ID exists.
    async fn create_session(&self, session: SessionRecord) -> Result<Committed<SessionRecord>>;

    /// Restarts a session's TTL; `None` when it does not exist (it was destroyed, or lapsed).
    /// Changes nothing in the change feed.
    async fn renew_session(&self, id: &str) -> Result<Option<SessionRecord>>;

    /// Invalidates a session: deletes it, releases or deletes (by its behavior) every key it
    /// holds, and starts its lock-delay on them, in one change. `false` if it did not exist.
    ///
    /// The store does this itself to a session that was not renewed for
    /// [`TTL_MULTIPLIER`] times its TTL, counted from its creation, its last renewal, or
    /// the store's opening, whichever is latest.
    async fn destroy_session(&self, id: &str) -> Result<Committed<bool>>;

    /// Every session, by ID, and the change index.
    async fn sessions(&self) -> Result<(Vec<SessionRecord>, u64)>;

    // Indexes and changes.

    /// The change index and the index of each area, read together.
    async fn indexes(&self) -> Result<Indexes>;

    /// Every committed change after `from_index`, in order, then each new one as it commits;
    /// [`Error::Compacted`] (and the end of the stream) when the store no longer has them.
    fn watch(&self, from_index: u64) -> ChangeStream;

    /// Stops serving calls (later ones fail with [`Error::Closed`]), waits for those running,
    /// and lets go of the backend's resources: a file, a connection.
    async fn close(&self);
}
