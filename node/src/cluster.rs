//! This node among the others sharing its store: what it tells them about itself, and the
//! typed view of every node ([`NodeView`]) that `GET /v1/nodes` serves.
//!
//! A node on its own (the redb default) has no cluster, and the view lists it alone. In a
//! cluster, the node joined before it opened (its name is its own among the live nodes), and
//! a task here republishes its [`NodeReport`] whenever its replicas change, checking every
//! [`REPORT_EVERY`]; the others read it from the members they follow, with no request to this
//! node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shoal_gateway::Peer;
use shoal_registry::cluster::{
    Amounts, Cluster, Members, Membership, NodeInfo, NodeReport, ServiceReport,
};
use shoal_registry::snapshot::LastKnown;
use shoal_registry::{ServiceRecord, Store};
use shoal_runtime::{ReplicaResources, ScaleSettings};
use shoal_spec::{Digest, ModuleKind};
use subtle::ConstantTimeEq as _;

use crate::status::{Allocation, ResourceAmounts, allocation, amounts, free};
use crate::{Error, Node, Result, WeakNode};

/// How often a node checks whether its report changed.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long copying one module to or from a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// A node's place in its cluster.
pub struct Joined {
    /// The nodes sharing the store.
    pub cluster: Arc<dyn Cluster>,
    /// This node's claim on its name.
    pub membership: Arc<dyn Membership>,
    /// What this node published when it joined.
    pub info: NodeInfo,
    /// The store on this node's disk, which keeps the bytes of modules (the shared store keeps
    /// their records): where bytes copied from or to peers go.
    pub local: Arc<dyn Store>,
}

/// A node of the cluster (or the node alone), as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its name, unique among live nodes.
    pub name: String,
    /// Whether it holds its claim (a node alone always does).
    pub alive: bool,
    /// Whether it is the node answering.
    pub local: bool,
    /// Where its management API is reached.
    pub api: Option<String>,
    /// Where its gateway is reached.
    pub gateway: Option<String>,
    /// Its CPU architecture.
    pub arch: String,
    /// What replicas may reserve on it.
    pub capacity: ResourceAmounts,
    /// What its replicas reserve.
    pub reserved: ResourceAmounts,
    /// What is left.
    pub free: ResourceAmounts,
    /// `resource_allocation = performance_need / resource_limit`: reserved against capacity.
    pub resource_allocation: Allocation,
    /// Its replicas of every service.
    pub replicas: u32,
    /// Its replicas of each service that has any here, by name.
    pub services: BTreeMap<String, u32>,
}

impl NodeView {
    /// A node with `capacity` that reported `report`.
    fn new(name: String, capacity: ReplicaResources, report: &NodeReport) -> NodeView {
        let reserved = resources(report.reserved);
        let services: BTreeMap<String, u32> = report
            .services
            .iter()
            .filter(|(_, service)| service.replicas > 0)
            .map(|(name, service)| (name.clone(), service.replicas))
            .collect();
        NodeView {
            name,
            alive: true,
            local: false,
            api: None,
            gateway: None,
            arch: std::env::consts::ARCH.to_owned(),
            capacity: amounts(capacity),
            reserved: amounts(reserved),
            free: amounts(free(capacity, reserved)),
            resource_allocation: allocation(reserved, capacity),
            replicas: services.values().sum(),
            services,
        }
    }
}

fn resources(amounts: Amounts) -> ReplicaResources {
    ReplicaResources {
        memory: amounts.memory,
        cpu_millis: amounts.cpu_millis,
    }
}

impl Node {
    /// Every node of the cluster, this one first, then by name; this node alone when it has
    /// no cluster. This node's numbers are its own, current; the others' are their newest
    /// reports.
    pub fn nodes(&self) -> Vec<NodeView> {
        let report = self.report();
        let mut this = NodeView::new(
            self.inner.config.node_name.clone(),
            self.inner.capacity.total(),
            &report,
        );
        this.local = true;
        let Some(joined) = &self.inner.cluster else {
            this.gateway = self.gateway_addr().map(|addr| addr.to_string());
            this.api = self.api_addr().map(|addr| addr.to_string());
            return vec![this];
        };
        this.api = Some(joined.info.api.clone());
        this.gateway = Some(joined.info.gateway.clone());
        this.alive = joined.membership.holds();
        let members: Arc<Members> = joined.cluster.members().borrow().clone();
        let mut views = vec![this];
        for (name, member) in &members.nodes {
            if *name == self.inner.config.node_name {
                continue;
            }
            let report = member.report.clone().unwrap_or_default();
            let mut view = NodeView::new(name.clone(), resources(member.info.capacity), &report);
            view.alive = member.alive;
            view.api = Some(member.info.api.clone());
            view.gateway = Some(member.info.gateway.clone());
            view.arch = member.info.arch.clone();
            views.push(view);
        }
        views
    }

    /// Whether `token` is the cluster's secret, which peers present; always `false` on a node
    /// alone. Compared in constant time.
    pub fn is_peer_token(&self, token: &str) -> bool {
        self.inner.cluster.as_ref().is_some_and(|joined| {
            token
                .as_bytes()
                .ct_eq(joined.membership.secret().as_bytes())
                .into()
        })
    }

    /// The bytes of a module kept on this node's disk, for a peer that asks.
    pub async fn local_module_bytes(&self, digest: &Digest) -> Result<Option<bytes::Bytes>> {
        self.check_running()?;
        let Some(joined) = &self.inner.cluster else {
            return Ok(None);
        };
        Ok(joined.local.module_bytes(digest).await?)
    }

    /// Keeps a module's bytes on this node's disk, for a peer that is uploading it: the upload
    /// is acknowledged once they are on two nodes. [`Error::Invalid`] when they are not the
    /// bytes of `digest`.
    pub async fn keep_module_bytes(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: bytes::Bytes,
    ) -> Result<()> {
        self.check_running()?;
        let Some(joined) = &self.inner.cluster else {
            return Err(Error::NotFound {
                what: "cluster",
                key: self.inner.config.node_name.clone(),
            });
        };
        shoal_registry::check_digest(digest, &bytes)?;
        joined.local.put_module(digest, kind, bytes).await?;
        Ok(())
    }

    /// The live nodes other than this one, in an order that spreads the work: where modules
    /// are copied to and fetched from.
    fn peers(&self) -> Vec<(String, String)> {
        let Some(joined) = &self.inner.cluster else {
            return Vec::new();
        };
        let members = joined.cluster.members().borrow().clone();
        let mut peers: Vec<(String, String)> = members
            .nodes
            .values()
            .filter(|member| member.alive && member.info.name != self.inner.config.node_name)
            .map(|member| (member.info.name.clone(), member.info.api.clone()))
            .collect();
        fastrand::shuffle(&mut peers);
        peers
    }

    /// What the guests of `service` on the live peer `peer` wrote, streamed from its peer log
    /// route with `query` (`replica`, `tail`, `since`, `follow`, `timestamps`), for a pod whose
    /// replica runs there. [`Error::NotFound`] when `peer` is not a live member.
    pub async fn peer_log(
        &self,
        peer: &str,
        service: &shoal_spec::ServiceName,
        query: &str,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        use futures::StreamExt as _;
        let (Some(joined), Some((_, api))) = (
            &self.inner.cluster,
            self.peers().into_iter().find(|(name, _)| name == peer),
        ) else {
            return Err(Error::NotFound {
                what: "node",
                key: peer.to_owned(),
            });
        };
        let response = self
            .inner
            .http
            .get(format!("http://{api}/v1/peer/logs/{service}?{query}"))
            .bearer_auth(joined.membership.secret())
            .send()
            .await
            .map_err(|error| Error::Unavailable(format!("node {peer} did not answer: {error}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "node {peer} answered {status}: {text}"
            )));
        }
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed())
    }

    /// Copies a module being uploaded to one other live node, so that the upload, once
    /// acknowledged, survives the loss of either disk. Nothing to do on a node alone or the
    /// only live node; [`Error::Unavailable`] when live peers exist and none took the bytes.
    pub(crate) async fn replicate_module(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: &bytes::Bytes,
    ) -> Result<()> {
        let Some(joined) = &self.inner.cluster else {
            return Ok(());
        };
        let peers = self.peers();
        if peers.is_empty() {
            return Ok(());
        }
        let mut failures = Vec::new();
        for (name, api) in peers {
            let sent = self
                .inner
                .http
                .put(format!("http://{api}/v1/peer/modules/{digest}?kind={kind}"))
                .bearer_auth(joined.membership.secret())
                .timeout(PEER_TIMEOUT)
                .body(bytes.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(%digest, peer = name, "module copied to a peer");
                    return Ok(());
                }
                Ok(response) => failures.push(format!("{name}: {}", response.status())),
                Err(error) => failures.push(format!("{name}: {error}")),
            }
        }
        Err(Error::Unavailable(format!(
            "the module could not be copied to a second node ({})",
            failures.join("; ")
        )))
    }

    /// Fetches a module's bytes from a live peer that has them, checks them against
    /// `digest`, and keeps them on this node's disk. `None` when no peer has them.
    pub(crate) async fn fetch_module(&self, digest: &Digest) -> Result<Option<bytes::Bytes>> {
        let Some(joined) = &self.inner.cluster else {
            return Ok(None);
        };
        let kind = match self.inner.store.module(digest).await? {
            Some(record) => record.kind,
            None => return Ok(None),
        };
        for (name, api) in self.peers() {
            let fetched = self
                .inner
                .http
                .get(format!("http://{api}/v1/peer/modules/{digest}"))
                .bearer_auth(joined.membership.secret())
                .timeout(PEER_TIMEOUT)
                .send()
                .await;
            let response = match fetched {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => {
                    tracing::debug!(%digest, peer = name, status = %response.status(), "a peer has no copy of the module");
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%digest, peer = name, %error, "fetching a module from a peer failed");
                    continue;
                }
            };
            let Ok(bytes) = response.bytes().await else {
                continue;
            };
            // A peer is trusted to be a peer, not to be right: the bytes are checked.
            if let Err(error) = shoal_registry::check_digest(digest, &bytes) {
                tracing::warn!(%digest, peer = name, %error, "a peer sent other bytes than the module's");
                continue;
            }
            joined.local.put_module(digest, kind, bytes.clone()).await?;
            tracing::info!(%digest, peer = name, size = bytes.len(), "module fetched from a peer");
            return Ok(Some(bytes));
        }
        Ok(None)
    }

    /// The scale settings this node runs a service with: its spec's alone; in a cluster, as
    /// many replicas as the leader placed here, no more and no fewer.
    pub(crate) fn scale_settings_for(&self, record: &ServiceRecord) -> ScaleSettings {
        let mut settings =
            crate::convert::scale_settings(&record.spec, &self.inner.config.scale_defaults);
        if let Some(joined) = &self.inner.cluster {
            let placed = joined
                .cluster
                .placements()
                .borrow()
                .on(record.name.as_str(), &self.inner.config.node_name);
            settings.min = placed;
            settings.max = placed;
        }
        settings
    }

    /// In a cluster, waits (up to 5 s) until this node has applied every change the store had
    /// committed when called, so what it answers next is at least as new as what any node
    /// answered before: Kubernetes' consistent reads from its watch cache, in effect. Returns
    /// `false` when the store cannot be reached or the wait ran out: the node answers from
    /// what it has, stale. A node alone is always caught up.
    pub async fn catch_up(&self) -> bool {
        if self.inner.cluster.is_none() {
            return true;
        }
        let caught_up = match self.inner.store.indexes().await {
            Ok(present) => {
                let mut applied = self.inner.applied.subscribe();
                let waited = tokio::time::timeout(
                    Duration::from_secs(5),
                    applied.wait_for(|indexes| indexes.change >= present.change),
                )
                .await;
                matches!(waited, Ok(Ok(_)))
            }
            Err(_) => false,
        };
        self.inner
            .behind
            .store(!caught_up, std::sync::atomic::Ordering::Relaxed);
        caught_up
    }

    /// Whether the node's newest attempt to catch up with the cluster's store failed: what it
    /// answers may be stale, and older than what another node answered.
    pub fn behind(&self) -> bool {
        self.inner.behind.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The replicas of `service` on each node running any: `here` on this node, and what
    /// the live peers last reported.
    pub(crate) fn replicas_by_node(&self, service: &str, here: u32) -> BTreeMap<String, u32> {
        let mut nodes = BTreeMap::new();
        if here > 0 || self.inner.cluster.is_none() {
            nodes.insert(self.inner.config.node_name.clone(), here);
        }
        for peer in self.peers_running(service) {
            nodes.insert(peer.node, peer.replicas);
        }
        nodes
    }

    /// The live peers that report replicas of `service`, for the gateway.
    pub(crate) fn peers_running(&self, service: &str) -> Vec<Peer> {
        let Some(joined) = &self.inner.cluster else {
            return Vec::new();
        };
        let members = joined.cluster.members().borrow().clone();
        members
            .nodes
            .values()
            .filter(|member| member.alive && member.info.name != self.inner.config.node_name)
            .filter_map(|member| {
                let report = member.report.as_ref()?.services.get(service)?;
                (report.replicas > 0).then(|| Peer {
                    node: member.info.name.clone(),
                    gateway: member.info.gateway.clone(),
                    replicas: report.replicas,
                    load: report.in_flight + report.queued,
                })
            })
            .collect()
    }

    /// This node's replicas and what they reserve, as it reports them to the others.
    fn report(&self) -> NodeReport {
        let reserved = self.inner.capacity.reserved();
        let services = self
            .inner
            .deployed
            .load()
            .iter()
            .filter_map(|(name, deployed)| {
                let occupancy = deployed.pool.occupancy();
                let report = ServiceReport {
                    replicas: occupancy.replicas,
                    in_flight: occupancy.in_flight,
                    queued: occupancy.queued,
                };
                (report != ServiceReport::default()).then(|| (name.to_string(), report))
            })
            .collect();
        NodeReport {
            reserved: Amounts {
                memory: reserved.memory,
                cpu_millis: reserved.cpu_millis,
            },
            services,
        }
    }
}

/// The file in a node's data directory that keeps what the node last knew of its cluster:
/// started while etcd cannot be reached, the node serves it, read-only.
pub const LAST_KNOWN_FILE: &str = "last-known.json";

/// How long the state must rest before it is written down again.
const LAST_KNOWN_AFTER: Duration = Duration::from_secs(1);

/// Keeps [`LAST_KNOWN_FILE`] up to date with the state this node applies: written at start,
/// then a second after each burst of changes, atomically (a new file renamed over the old),
/// until the node is gone.
pub(crate) async fn keep_last_known(node: WeakNode) {
    let mut changes = match node.upgrade() {
        Some(node) => node.changes(),
        None => return,
    };
    let mut written = 0_u64;
    loop {
        let Some(strong) = node.upgrade() else { return };
        let index = strong.indexes().change;
        if index != written {
            let last = LastKnown::new(index, strong.running_records(), &strong.catalog().snapshot)
                .with_routes(strong.routes());
            let path = strong.inner.config.data_dir.join(LAST_KNOWN_FILE);
            drop(strong);
            let saved = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let temporary = path.with_extension("json.new");
                std::fs::write(&temporary, serde_json::to_vec(&last)?)?;
                std::fs::rename(&temporary, &path)
            })
            .await;
            match saved {
                Ok(Ok(())) => written = index,
                Ok(Err(error)) => tracing::warn!(%error, "cannot save the last known state"),
                Err(error) => tracing::warn!(%error, "cannot save the last known state"),
            }
        } else {
            drop(strong);
        }
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(LAST_KNOWN_AFTER).await;
        changes.borrow_and_update();
    }
}

/// How often a node looks for a request waiting for a service it has no replica of, which
/// it reports at once: the leader places a replica for it without waiting for its tick.
const STARVED_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Publishes this node's report whenever it changed, at most every [`REPORT_EVERY`], and at
/// once when a request starts waiting for a service with no replica here, until the node is
/// gone.
pub(crate) async fn report(node: WeakNode) {
    let mut published: Option<NodeReport> = None;
    let mut last_published = tokio::time::Instant::now() - REPORT_EVERY;
    loop {
        let Some(node) = node.upgrade() else { return };
        let Some(joined) = &node.inner.cluster else {
            return;
        };
        let report = node.report();
        let starved = |report: &NodeReport| -> BTreeSet<String> {
            report
                .services
                .iter()
                .filter(|(_, service)| service.queued > 0 && service.replicas == 0)
                .map(|(name, _)| name.clone())
                .collect()
        };
        let newly_starved =
            !starved(&report).is_subset(&published.as_ref().map(starved).unwrap_or_default());
        let replicas_changed = published.as_ref().is_none_or(|published| {
            published
                .services
                .iter()
                .map(|(n, s)| (n, s.replicas))
                .collect::<Vec<_>>()
                != report
                    .services
                    .iter()
                    .map(|(n, s)| (n, s.replicas))
                    .collect::<Vec<_>>()
        });
        let due = last_published.elapsed() >= REPORT_EVERY;
        if published.as_ref() != Some(&report) && (due || newly_starved || replicas_changed) {
            match joined.membership.report(report.clone()).await {
                Ok(()) => {
                    published = Some(report);
                    last_published = tokio::time::Instant::now();
                }
                Err(error) => tracing::debug!(%error, "cannot publish this node's report yet"),
            }
        }
        drop(node);
        tokio::time::sleep(STARVED_CHECK_EVERY).await;
    }
}

/// Follows the placements and the members: runs as many replicas of each service as are
/// placed here, and routes to the peers that report replicas. Until the node is gone.
pub(crate) async fn follow(node: WeakNode) {
    let (mut placements, mut members) = {
        let Some(strong) = node.upgrade() else { return };
        let Some(joined) = &strong.inner.cluster else {
            return;
        };
        (joined.cluster.placements(), joined.cluster.members())
    };
    loop {
        let placed = tokio::select! {
            changed = placements.changed() => { if changed.is_err() { return; } true }
            changed = members.changed() => { if changed.is_err() { return; } false }
        };
        let Some(node) = node.upgrade() else { return };
        if placed {
            placements.borrow_and_update();
            for deployed in node.inner.deployed.load().values() {
                deployed
                    .pool
                    .retune(node.scale_settings_for(&deployed.record));
            }
        } else {
            members.borrow_and_update();
        }
        node.publish_routes();
    }
}
