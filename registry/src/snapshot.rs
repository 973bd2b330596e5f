//! The last state a node of a cluster knew, and a read-only [`Store`] over it.
//!
//! A node of a cluster keeps a [`LastKnown`] on its disk, rewritten as the state it applies
//! changes. Started while the cluster's store cannot be reached, it opens on a
//! [`SnapshotStore`] instead: it runs and routes what it last knew, answers reads from it, and
//! refuses every write as [`Error::Unavailable`], so nothing is half-written and a client
//! knows to retry. Module bytes come from the node's own disk (`blobs`), as they always do,
//! and so do module records: those carry no names in a cluster (the cluster's store keeps
//! them), so a module name does not resolve while the node runs on what it last knew.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_spec::{Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::{
    CatalogSnapshot, ChangeStream, CheckDefinition, CheckRecord, CheckStatus, Committed, Error,
    EventRecord, Expect, ExternalNode, Indexes, KvEntry, KvOp, ModuleRecord, Registration, Result,
    RevisionRecord, RouteRecord, SCHEMA_VERSION, ServiceRecord, SessionRecord, Store, TxnOutcome,
    WaitingRecord,
};

/// What a node of a cluster last knew of the cluster's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnown {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The change index it was at.
    pub change_index: u64,
    /// Every service, by name.
    pub services: Vec<ServiceRecord>,
    /// Every node registered through the catalog.
    #[serde(default)]
    pub nodes: Vec<ExternalNode>,
    /// Every registered instance.
    pub registrations: Vec<Registration>,
    /// Every check, with its last state.
    pub checks: Vec<CheckRecord>,
    /// Every route (Kubernetes Service), by name.
    #[serde(default)]
    pub routes: Vec<RouteRecord>,
}

impl LastKnown {
    /// A snapshot of these services and this catalog, as of `change_index`.
    pub fn new(change_index: u64, services: Vec<ServiceRecord>, catalog: &CatalogSnapshot) -> Self {
        LastKnown {
            version: SCHEMA_VERSION,
            change_index,
            services,
            nodes: catalog.nodes.clone(),
            registrations: catalog.registrations.clone(),
            checks: catalog.checks.clone(),
            routes: Vec::new(),
        }
    }

    /// The same, with these routes (sorted by name, as [`Store::routes`] answers).
    pub fn with_routes(mut self, mut routes: Vec<RouteRecord>) -> Self {
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes = routes;
        self
    }
}

/// A read-only [`Store`] over a [`LastKnown`], with module bytes and records from `blobs`.
pub struct SnapshotStore {
    last: LastKnown,
    blobs: Arc<dyn Store>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl SnapshotStore {
    /// A store answering reads from `last`, and module reads from `blobs`.
    pub fn new(last: LastKnown, blobs: Arc<dyn Store>) -> SnapshotStore {
        SnapshotStore {
            last,
            blobs,
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    fn indexes_now(&self) -> Indexes {
        let at = self.last.change_index.max(1);
        Indexes {
            change: at,
            catalog: at,
            health: at,
            kv: at,
        }
    }
}

/// Why every write is refused.
fn read_only() -> Error {
    Error::Unavailable(
        "the cluster's store could not be reached when this node started: it serves what it last knew, read-only".into(),
    )
}

#[async_trait::async_trait]
impl Store for SnapshotStore {
    async fn put_module(
        &self,
        _digest: &Digest,
        _kind: ModuleKind,
        _bytes: Bytes,
    ) -> Result<Committed<(ModuleRecord, bool)>> {
        Err(read_only())
    }

    async fn module(&self, digest: &Digest) -> Result<Option<ModuleRecord>> {
        self.blobs.module(digest).await
    }

    async fn module_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.blobs.module_bytes(digest).await
    }

    async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        self.blobs.modules().await
    }

    async fn delete_module(&self, _digest: &Digest) -> Result<Committed<ModuleRecord>> {
        Err(read_only())
    }

    async fn name_module(&self, _digest: &Digest, _name: &str) -> Result<Committed<ModuleRecord>> {
        Err(read_only())
    }

    async fn put_route(
        &self,
        _name: &ServiceName,
        _spec: RouteSpec,
        _expect: Expect,
    ) -> Result<Committed<(RouteRecord, bool)>> {
        Err(read_only())
    }

    async fn route(&self, name: &ServiceName) -> Result<Option<RouteRecord>> {
        Ok(self.last.routes.iter().find(|r| r.name == *name).cloned())
    }

    async fn routes(&self) -> Result<Vec<RouteRecord>> {
        Ok(self.last.routes.clone())
    }

    async fn delete_route(
        &self,
        _name: &ServiceName,
        _expect: Expect,
    ) -> Result<Committed<RouteRecord>> {
        Err(read_only())
    }

    async fn put_waiting(
        &self,
        _name: &ServiceName,
        _image: &str,
        _spec: ServiceSpec,
        _expect: Expect,
    ) -> Result<Committed<(WaitingRecord, bool)>> {
        Err(read_only())
    }

    /// Not kept in [`LastKnown`]: nothing waiting runs, and it cannot be resolved while
    /// writes are refused.
    async fn waiting(&self) -> Result<Vec<WaitingRecord>> {
        Ok(Vec::new())
    }

    async fn delete_waiting(
        &self,
        _name: &ServiceName,
        _expect: Expect,
    ) -> Result<Committed<WaitingRecord>> {
        Err(read_only())
    }

    async fn put_service(
        &self,
        _name: &ServiceName,
        _spec: ServiceSpec,
        _expect: Expect,
    ) -> Result<Committed<(ServiceRecord, bool)>> {
        Err(read_only())
    }

    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        Ok(self.last.services.iter().find(|s| s.name == *name).cloned())
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>> {
        Ok(self.last.services.clone())
    }

    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        // Only the current revision is kept.
        let service = self.service(name).await?.ok_or_else(|| Error::NotFound {
            kind: "service",
            key: name.to_string(),
        })?;
        Ok(vec![RevisionRecord {
            version: SCHEMA_VERSION,
            name: service.name,
            revision: service.revision,
            spec: service.spec,
            created_unix_ms: service.updated_unix_ms,
            change_index: service.change_index,
        }])
    }

    async fn delete_service(
        &self,
        _name: &ServiceName,
        _expect: Expect,
    ) -> Result<Committed<ServiceRecord>> {
        Err(read_only())
    }

    async fn record_event(
        &self,
        _name: &ServiceName,
        _from: u32,
        _to: u32,
        _reason: String,
    ) -> Result<Committed<EventRecord>> {
        Err(read_only())
    }

    async fn events(&self, _name: &ServiceName, _limit: usize) -> Result<Vec<EventRecord>> {
        Ok(Vec::new())
    }

    async fn register_service(
        &self,
        _registration: Registration,
        _checks: Vec<CheckDefinition>,
        _replace_existing_checks: bool,
    ) -> Result<Committed<Registration>> {
        Err(read_only())
    }

    async fn deregister_service(&self, _id: &str) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn register_check(&self, _definition: CheckDefinition) -> Result<Committed<CheckRecord>> {
        Err(read_only())
    }

    async fn deregister_check(&self, _id: &str) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn update_check(
        &self,
        _id: &str,
        _status: CheckStatus,
        _output: String,
    ) -> Result<Committed<Option<CheckRecord>>> {
        Err(read_only())
    }

    async fn catalog(&self) -> Result<CatalogSnapshot> {
        Ok(CatalogSnapshot {
            nodes: self.last.nodes.clone(),
            registrations: self.last.registrations.clone(),
            checks: self.last.checks.clone(),
            indexes: self.indexes_now(),
        })
    }

    async fn kv_get(&self, _key: &str) -> Result<(Option<KvEntry>, u64)> {
        Err(read_only())
    }

    async fn kv_list(&self, _prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
        Err(read_only())
    }

    async fn kv_put(
        &self,
        _key: &str,
        _value: Bytes,
        _flags: u64,
        _cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn kv_delete(
        &self,
        _key: &str,
        _recurse: bool,
        _cas: Option<u64>,
    ) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn register_node(
        &self,
        _node: ExternalNode,
        _registration: Option<Registration>,
        _checks: Vec<CheckDefinition>,
    ) -> Result<Committed<ExternalNode>> {
        Err(read_only())
    }

    async fn deregister_node(&self, _name: &str) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn kv_txn(&self, _ops: Vec<KvOp>) -> Result<Committed<TxnOutcome>> {
        Err(read_only())
    }

    async fn create_session(&self, _session: SessionRecord) -> Result<Committed<SessionRecord>> {
        Err(read_only())
    }

    async fn renew_session(&self, _id: &str) -> Result<Option<SessionRecord>> {
        Err(read_only())
    }

    async fn destroy_session(&self, _id: &str) -> Result<Committed<bool>> {
        Err(read_only())
    }

    async fn sessions(&self) -> Result<(Vec<SessionRecord>, u64)> {
        Err(read_only())
    }

    async fn indexes(&self) -> Result<Indexes> {
        Ok(self.indexes_now())
    }

    fn watch(&self, _from_index: u64) -> ChangeStream {
        // Nothing changes: the feed stays open, empty, until the store closes.
        let mut closed = self.closed.subscribe();
        Box::pin(futures::stream::once(async move {
            let _ = closed.wait_for(|closed| *closed).await;
            Err(Error::Closed)
        }))
    }

    async fn close(&self) {
        self.closed.send_replace(true);
        self.blobs.close().await;
    }
}
