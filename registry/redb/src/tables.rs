//! Every redb table of the registry, declared in one place so the whole on-disk layout can be
//! read at a glance.
//!
//! Records are stored as JSON (`serde_json`) so that a `version` field can evolve them; module
//! bytes are stored apart from their record so that listing modules never reads the bytes.
//! Renaming a table or changing its key or value type is a schema change: old files would no
//! longer open.
//! Adding a table is not: opening a registry creates any table its file lacks, which is how
//! files written before [`EVENTS`], [`ROUTES`], [`WAITING`] or the session tables existed gain
//! them.

use redb::TableDefinition;

/// Module records ([`ModuleRecord`](crate::ModuleRecord) as JSON), keyed by digest string.
pub(crate) const MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");

/// The raw bytes of each module, keyed by digest string.
pub(crate) const MODULE_BYTES: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("module_bytes");

/// The current record of each service ([`ServiceRecord`](crate::ServiceRecord) as JSON), keyed
/// by service name.
pub(crate) const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");

/// Route name → [`RouteRecord`](shoal_registry::RouteRecord) as versioned JSON.
pub(crate) const ROUTES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("routes");

/// Service name → [`WaitingRecord`](shoal_registry::WaitingRecord) as versioned JSON: services
/// waiting for their module.
pub(crate) const WAITING: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("waiting");

/// Every revision of every service ([`RevisionRecord`](crate::RevisionRecord) as JSON), keyed by
/// (service name, revision), so one service's revisions are a contiguous range in order.
pub(crate) const REVISIONS: TableDefinition<'_, (&str, u64), &[u8]> =
    TableDefinition::new("revisions");

/// The newest scale events of every service ([`EventRecord`](crate::EventRecord) as JSON),
/// keyed by (service name, sequence number), so one service's events are a contiguous range in
/// order, and pruning the oldest is deleting the front of that range.
pub(crate) const EVENTS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("events");

/// Service instances registered through the Consul-compatible API
/// ([`Registration`](crate::Registration) as JSON), keyed by instance ID.
pub(crate) const REGISTRATIONS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("registrations");

/// Nodes registered through the catalog ([`ExternalNode`](shoal_registry::ExternalNode) as
/// JSON), keyed by name.
pub(crate) const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");

/// Health checks and their state ([`CheckRecord`](crate::CheckRecord) as JSON), keyed by check ID.
pub(crate) const CHECKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checks");

/// The key/value store: key to (create index, modify index, flags, value).
/// Values are raw bytes, not JSON, so a 512 KiB value costs 512 KiB.
pub(crate) const KV: TableDefinition<'_, &str, (u64, u64, u64, &[u8])> = TableDefinition::new("kv");

/// How each key that was ever locked is locked: key to (lock index, holding session or "").
/// Apart from [`KV`], whose layout predates locks.
pub(crate) const KV_LOCKS: TableDefinition<'_, &str, (u64, &str)> =
    TableDefinition::new("kv_locks");

/// Keys that may not be locked until a time (Unix milliseconds): the lock-delay after the
/// session holding them was invalidated.
pub(crate) const LOCK_DELAYS: TableDefinition<'_, &str, u64> = TableDefinition::new("lock_delays");

/// Sessions ([`SessionRecord`](shoal_registry::SessionRecord) as JSON), keyed by ID.
pub(crate) const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");

/// Single values describing the whole database, keyed by [`CHANGE_INDEX_KEY`] and friends.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The key in [`META`] of the change index, which every change increments.
pub(crate) const CHANGE_INDEX_KEY: &str = "change_index";

/// The keys in [`META`] of the change index of the newest change to each watched area.
pub(crate) const INDEX_CATALOG_KEY: &str = "index.catalog";
/// See [`INDEX_CATALOG_KEY`].
pub(crate) const INDEX_HEALTH_KEY: &str = "index.health";
/// See [`INDEX_CATALOG_KEY`].
pub(crate) const INDEX_KV_KEY: &str = "index.kv";
