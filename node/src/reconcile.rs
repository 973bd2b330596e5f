//! The one loop that turns the store's changes into what the node keeps in memory.
//!
//! At start, [`Node::sync`] lists everything and brings the node in line with it; then [`run`]
//! follows [`Store::watch`](shoal_registry::Store::watch) from the index the listing began at.
//! For each change it reads the current state of what the change touched and applies it:
//! - a service: start its replica pool (compiling or loading its module), retune the pool in
//!   place when only scaling changed, or retire it when the service is gone;
//! - registrations and checks: a new catalog view, and the check tasks that follow it;
//! - a module deleted: its compiled code leaves memory.
//!
//! Then it publishes the gateway's routing table and the change's indexes, which wake blocking
//! queries and the writer waiting for its own change.
//!
//! Applying is idempotent (it reads the state, not the change), so a change delivered twice,
//! as around the initial listing, does nothing the second time. When the store no longer has
//! the changes the loop needs ([`Compacted`](shoal_registry::Error::Compacted)), it lists
//! everything again. A failed read is retried with backoff: every change is applied, in order.
//!
//! **Invariant:** only this loop (and the listing before it) changes the routes, the pools and
//! the catalog view, one change at a time, in the store's order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use shoal_gateway::{ClusterService, Endpoint, ExternalService, Route, RouteTable};
use shoal_registry::{CatalogSnapshot, Change, CheckStatus, Indexes, ServiceRecord, Subject};
use shoal_runtime::{Compiled, EventSink, ReplicaPool, Service};
use shoal_spec::{Digest, ServiceName};

use crate::discovery::CatalogView;
use crate::{Deployed, Error, Node, Result, WeakNode, convert};

/// Follows the store from `from` until the node is gone or shut down.
pub(crate) async fn run(node: WeakNode, mut from: u64) {
    let mut backoff = Backoff::default();
    loop {
        let Some(strong) = node.upgrade() else { return };
        let mut changes = strong.inner.store.watch(from);
        drop(strong);
        loop {
            let next = changes.next().await;
            let Some(node) = node.upgrade() else { return };
            match next {
                Some(Ok(change)) => {
                    loop {
                        match node.apply(&change).await {
                            Ok(()) => break,
                            Err(Error::ShuttingDown) => return,
                            Err(error) => {
                                tracing::warn!(index = change.index(), %error, "cannot apply a change yet; retrying");
                                backoff.wait().await;
                            }
                        }
                    }
                    backoff.reset();
                    from = change.index();
                }
                Some(Err(shoal_registry::Error::Compacted { .. })) => {
                    tracing::info!(
                        from,
                        "the store no longer has the changes to follow; listing everything again"
                    );
                    match node.sync().await {
                        Ok(index) => from = index,
                        Err(Error::ShuttingDown) => return,
                        Err(error) => {
                            tracing::warn!(%error, "cannot list the store; retrying");
                            backoff.wait().await;
                        }
                    }
                    break;
                }
                Some(Err(shoal_registry::Error::Closed)) => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, "the store's change feed failed; watching again");
                    backoff.wait().await;
                    break;
                }
                None => {
                    tracing::warn!("the store's change feed ended; watching again");
                    backoff.wait().await;
                    break;
                }
            }
        }
    }
}

/// How often services that could not run are tried again.
const RETRY_UNRUNNABLE: Duration = Duration::from_secs(5);

/// Tries the services that could not run again, every [`RETRY_UNRUNNABLE`], until the node is
/// gone: a fetch from a peer that failed, say, succeeds later.
pub(crate) async fn retry_unrunnable(node: WeakNode) {
    loop {
        tokio::time::sleep(RETRY_UNRUNNABLE).await;
        let Some(node) = node.upgrade() else { return };
        node.retry_unrunnable().await;
    }
}

/// Waits twice as long each time, from a tenth of a second to five seconds.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

impl Node {
    /// Lists the store and brings the node in line with it; returns the change index the
    /// listing began at, which a watch continues from.
    pub(crate) async fn sync(&self) -> Result<u64> {
        let store = &self.inner.store;
        let indexes = store.indexes().await?;
        let services = store.services().await?;
        let listed: HashSet<ServiceName> =
            services.iter().map(|record| record.name.clone()).collect();
        for record in services {
            let name = record.name.clone();
            self.apply_service(&name, Some(record)).await;
        }
        let gone: Vec<ServiceName> = {
            let deployed = self.inner.deployed.load();
            let unrunnable = self.inner.unrunnable.load();
            deployed
                .keys()
                .chain(unrunnable.keys())
                .filter(|name| !listed.contains(*name))
                .cloned()
                .collect()
        };
        for name in gone {
            self.apply_service(&name, None).await;
        }
        let snapshot = store.catalog().await?;
        let newest = newest(indexes, snapshot.indexes);
        self.apply_catalog(snapshot);
        // What changed while the node was not following is not known: every wasm service's
        // health may have, once.
        for name in self.inner.deployed.load().keys() {
            self.mark_health(name.as_str(), newest.change);
        }
        self.mirror_kv("").await?;
        self.reload_routes().await?;
        self.publish_routes();
        tracing::info!(
            services = self.inner.deployed.load().len(),
            index = newest.change,
            "node in line with the store"
        );
        self.set_applied(newest);
        Ok(indexes.change)
    }

    /// Applies one change: reads what it touched and brings the node in line with it.
    async fn apply(&self, change: &Change) -> Result<()> {
        let store = &self.inner.store;
        match &change.subject {
            Subject::Service(name) => {
                let record = store.service(name).await?;
                self.apply_service(name, record).await;
                self.publish_routes();
                self.mark_health(name.as_str(), change.index());
            }
            Subject::Catalog => {
                let snapshot = store.catalog().await?;
                self.apply_catalog(snapshot);
                self.publish_routes();
            }
            Subject::Module(digest) => {
                if store.module(digest).await?.is_none() {
                    self.inner.runtime.forget(digest.as_str());
                }
            }
            Subject::Kv(key) => self.mirror_kv(key).await?,
            // An invalidated session released or deleted the keys it held, wherever they are.
            Subject::Session(_) => self.mirror_kv("").await?,
            Subject::Route(_) => {
                self.reload_routes().await?;
                self.publish_routes();
            }
            // A scale event moves the service's health index; the indexes below wake whoever
            // waits for it.
            Subject::Events(name) => self.mark_health(name.as_str(), change.index()),
            // A service waiting for its module runs nothing; the node storing the module
            // starts it.
            Subject::Waiting(_) => {}
        }
        self.set_applied(change.indexes);
        Ok(())
    }

    /// Tries again to run the services this node could not run (their code could not be
    /// loaded or fetched): after a precompiled install, and every few seconds while any wait.
    pub(crate) async fn retry_unrunnable(&self) {
        let names: Vec<ServiceName> = self.inner.unrunnable.load().keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let _applying = self.inner.applying.lock().await;
        for name in names {
            match self.inner.store.service(&name).await {
                Ok(record) => self.apply_service_locked(&name, record).await,
                Err(error) => tracing::warn!(service = %name, %error, "cannot read the service"),
            }
        }
        self.publish_routes();
    }

    /// Makes the service `name` run `record`, or stop running when there is none.
    async fn apply_service(&self, name: &ServiceName, record: Option<ServiceRecord>) {
        let _applying = self.inner.applying.lock().await;
        self.apply_service_locked(name, record).await;
    }

    async fn apply_service_locked(&self, name: &ServiceName, record: Option<ServiceRecord>) {
        let current = self.inner.deployed.load().get(name).cloned();
        self.set_unrunnable(name, None);
        match (record, current) {
            (None, None) => {}
            (None, Some(old)) => {
                self.update_deployed(|deployed| {
                    deployed.remove(name);
                });
                old.pool.retire();
                self.forget_guest_log(name);
            }
            (Some(record), Some(old)) if old.record == record => {}
            // Only scaling changed: keep the replicas, and their warm instances.
            (Some(record), Some(old))
                if convert::same_except_scale(&old.record.spec, &record.spec) =>
            {
                old.pool.retune(self.scale_settings_for(&record));
                let pool = old.pool.clone();
                self.update_deployed(|deployed| {
                    deployed.insert(name.clone(), Arc::new(Deployed { record, pool }));
                });
            }
            (Some(record), old) => match self.compiled(&record.spec.module).await {
                Ok(compiled) => {
                    let pool = self.start_pool(&record, compiled);
                    self.update_deployed(|deployed| {
                        deployed.insert(name.clone(), Arc::new(Deployed { record, pool }));
                    });
                    if let Some(old) = old {
                        old.pool.retire();
                    }
                }
                // Whatever runs keeps running: a revision that cannot run replaces nothing.
                Err(error) => {
                    tracing::error!(
                        service = %name,
                        revision = record.revision,
                        %error,
                        "cannot run this revision of the service"
                    );
                    if old.is_none() {
                        let reason = format!("service {name:?} cannot run on this node: {error}");
                        self.set_unrunnable(name, Some(reason.into()));
                    }
                }
            },
        }
    }

    /// Records why a stored service is not running here (the gateway answers its requests
    /// with it), or that it no longer needs saying.
    fn set_unrunnable(&self, name: &ServiceName, reason: Option<Arc<str>>) {
        let current = self.inner.unrunnable.load();
        if reason.is_none() && !current.contains_key(name) {
            return;
        }
        let mut unrunnable = HashMap::clone(&current);
        match reason {
            Some(reason) => unrunnable.insert(name.clone(), reason),
            None => unrunnable.remove(name),
        };
        self.inner.unrunnable.store(Arc::new(unrunnable));
    }

    /// A replica pool running `record`, reporting its scale events to the event writer.
    fn start_pool(&self, record: &ServiceRecord, compiled: Compiled) -> Arc<ReplicaPool> {
        let events = self.inner.events.clone();
        let name = record.name.clone();
        let sink: EventSink = Arc::new(move |event| {
            let _ = events.send((name.clone(), event));
        });
        ReplicaPool::new(
            Service::new(
                compiled,
                convert::service_config(record, self.guest_log(&record.name)),
            ),
            convert::replica_spec(&record.spec),
            self.scale_settings_for(record),
            self.inner.capacity.clone(),
            self.inner.runtime.scheduler().clone(),
            sink,
        )
    }

    /// The module's machine code: from memory or the artifact cache, else compiled from the
    /// bytes in the store.
    pub(crate) async fn compiled(&self, digest: &Digest) -> Result<Compiled> {
        let runtime = self.inner.runtime.clone();
        let key = digest.to_string();
        let cached = tokio::task::spawn_blocking(move || runtime.cached(&key))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?;
        if let Some(compiled) = cached {
            self.optimize_later(digest, &compiled);
            return Ok(compiled);
        }
        let bytes = match self.inner.store.module_bytes(digest).await? {
            Some(bytes) => bytes,
            // In a cluster, the bytes are on the nodes that took the upload.
            None => self
                .fetch_module(digest)
                .await?
                .ok_or_else(|| Error::ModuleNotFound(digest.clone()))?,
        };
        // The cache was looked in above: a rejected artifact is counted once.
        let compiled = self.compile_module(digest, bytes, false).await?;
        self.optimize_later(digest, &compiled);
        Ok(compiled)
    }

    /// The module's machine code, from memory or the artifact cache if `look_in_cache`, else
    /// compiled from `bytes`, in tiers where the node compiles in tiers: the caller then has
    /// it [optimized](Node::optimize_later) once the module is stored.
    pub(crate) async fn compile_module(
        &self,
        digest: &Digest,
        bytes: bytes::Bytes,
        look_in_cache: bool,
    ) -> Result<Compiled> {
        let runtime = self.inner.runtime.clone();
        let key = digest.to_string();
        tokio::task::spawn_blocking(move || {
            match look_in_cache.then(|| runtime.cached(&key)).flatten() {
                Some(compiled) => Ok(compiled),
                None => runtime.compile_tiered(&key, &bytes),
            }
        })
        .await
        .map_err(|error| Error::Internal(error.to_string()))?
        .map_err(Error::from)
    }

    /// Has the background compiler replace a stored module's baseline code with optimized code.
    pub(crate) fn optimize_later(&self, digest: &Digest, compiled: &Compiled) {
        if compiled.tier() == shoal_runtime::Tier::Baseline {
            let source = self.module_source(digest);
            self.inner
                .runtime
                .optimize_later(digest.as_str(), compiled, source);
        }
    }

    /// Reads a module's bytes from a thread outside the node's async runtime, for as long as
    /// the node is open.
    fn module_source(&self, digest: &Digest) -> shoal_runtime::ModuleSource {
        let node = self.downgrade();
        let handle = tokio::runtime::Handle::current();
        let digest = digest.clone();
        Box::new(move || {
            let node = node
                .upgrade()
                .ok_or_else(|| anyhow::anyhow!("the node has closed"))?;
            handle.block_on(async {
                match node.inner.store.module_bytes(&digest).await? {
                    Some(bytes) => Ok(bytes.to_vec()),
                    None => node
                        .fetch_module(&digest)
                        .await?
                        .map(|bytes| bytes.to_vec())
                        .ok_or_else(|| anyhow::anyhow!("module {digest} is gone")),
                }
            })
        })
    }

    fn update_deployed(&self, change: impl FnOnce(&mut HashMap<ServiceName, Arc<Deployed>>)) {
        let mut deployed = HashMap::clone(&self.inner.deployed.load());
        change(&mut deployed);
        self.inner.deployed.store(Arc::new(deployed));
    }

    /// In a cluster, brings the key/value mirror in line with the store for `key` and every
    /// key under it (a change names the key, or the prefix a recursive delete removed).
    async fn mirror_kv(&self, key: &str) -> Result<()> {
        if self.inner.cluster.is_none() {
            return Ok(());
        }
        let (entries, _) = self.inner.store.kv_list(key).await?;
        let mut mirror = std::collections::BTreeMap::clone(&self.inner.kv_mirror.load());
        mirror.retain(|existing, _| !existing.starts_with(key));
        mirror.extend(entries.into_iter().map(|entry| (entry.key.clone(), entry)));
        self.inner.kv_mirror.store(Arc::new(mirror));
        Ok(())
    }

    /// Moves the health index of the service `name` to `index`.
    fn mark_health(&self, name: &str, index: u64) {
        self.inner
            .health_indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark(name, index);
    }

    /// A new catalog view, and the check tasks that follow it.
    fn apply_catalog(&self, snapshot: CatalogSnapshot) {
        self.inner
            .health_indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply_catalog(&snapshot);
        let view = Arc::new(CatalogView { snapshot });
        self.inner.checks.reconcile(self, &view.snapshot);
        self.inner.catalog.store(view);
    }

    /// Publishes the gateway's table: every wasm service's pool, and every registered
    /// service's instances (a name has one owner, so they never collide).
    pub(crate) fn publish_routes(&self) {
        let mut routes: HashMap<String, Route> = HashMap::new();
        let catalog = self.inner.catalog.load();
        let snapshot = &catalog.snapshot;
        let mut external: HashMap<&str, Vec<Endpoint>> = HashMap::new();
        for registration in &snapshot.registrations {
            // Its own checks and its node's (maintenance mode among them), as Consul counts
            // them.
            let critical = snapshot.checks.iter().any(|check| {
                let covers = match check.definition.service_id.as_deref() {
                    Some(id) => id == registration.id,
                    None => check.definition.node == registration.node,
                };
                covers && check.status == CheckStatus::Critical
            });
            // An instance without an address is at its node's, as Consul fills in: this
            // node's, or the address a node of the catalog was registered with.
            let catalog_node = snapshot
                .nodes
                .iter()
                .find(|node| !registration.node.is_empty() && node.name == registration.node);
            let host = match (registration.address.is_empty(), catalog_node) {
                (false, _) => registration.address.as_str(),
                (true, Some(node)) => node.address.as_str(),
                (true, None) => self.inner.config.node_address.as_str(),
            };
            external
                .entry(registration.name.as_str())
                .or_default()
                .push(Endpoint {
                    id: registration.id.clone(),
                    authority: shoal_gateway::authority(host, registration.port),
                    // A dead node's instances get no traffic, as Consul fails their
                    // serfHealth check.
                    routable: registration.port != 0
                        && !critical
                        && self.node_alive(&registration.node),
                });
        }
        for (name, instances) in external {
            routes.insert(
                name.to_owned(),
                Route::External(Arc::new(ExternalService::new(instances))),
            );
        }
        for (name, deployed) in self.inner.deployed.load().iter() {
            let route = if self.inner.cluster.is_some() {
                Route::Cluster(Arc::new(ClusterService::new(
                    deployed.pool.clone(),
                    self.peers_running(name.as_str()),
                    self.inner.config.node_name.clone(),
                )))
            } else {
                Route::Wasm(deployed.pool.clone())
            };
            routes.insert(name.to_string(), route);
        }
        for (name, reason) in self.inner.unrunnable.load().iter() {
            routes
                .entry(name.to_string())
                .or_insert_with(|| Route::Unavailable(reason.clone()));
        }
        // A route leads where the first service its selector picks does, and never
        // shadows a name that already leads somewhere.
        for (name, route) in self.inner.routes.load().iter() {
            if routes.contains_key(name.as_str()) {
                continue;
            }
            let picked = self
                .selected_services(&route.spec)
                .into_iter()
                .find_map(|service| routes.get(service.as_str()).cloned());
            if let Some(picked) = picked {
                routes.insert(name.to_string(), picked);
            }
        }
        self.inner.gateway.publish(RouteTable::new(routes));
    }

    /// Publishes the indexes of the newest change applied; they never go back.
    fn set_applied(&self, indexes: Indexes) {
        self.inner.applied.send_if_modified(|applied| {
            let newer = newest(*applied, indexes);
            let changed = newer != *applied;
            *applied = newer;
            changed
        });
    }
}

/// Each index at its newest of `a` and `b`.
fn newest(a: Indexes, b: Indexes) -> Indexes {
    Indexes {
        change: a.change.max(b.change),
        catalog: a.catalog.max(b.catalog),
        health: a.health.max(b.health),
        kv: a.kv.max(b.kv),
    }
}
