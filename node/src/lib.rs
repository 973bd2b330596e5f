//! The node core: one [`Store`], one wasm runtime, the node's capacity, and everything the
//! node keeps in memory (the gateway's routing table, a replica pool per service, the catalog
//! view, the check tasks), kept in step with the store by one reconcile loop.
//!
//! **The write path only writes.** A deploy validates, compiles and admits, then writes to the
//! store and waits until the reconcile loop has applied its own change; it touches no route.
//! Every write waits so, so the indexes a client is shown next are at least its write's.
//! The reconcile loop (`reconcile.rs`) follows the store's change feed and turns every change,
//! whoever wrote it (this node, another node, a tool writing to the store), into routes,
//! pools, catalog and checks. So a change written straight into the store takes effect here
//! exactly like one made through the node.
//!
//! **A domain API with typed errors.** Every operation returns a [`Result`] whose [`Error`]
//! says what went wrong in the node's terms (not found, conflict, invalid field, insufficient
//! capacity with the numbers, unavailable, shutting down); it knows no HTTP status. Each
//! surface maps it to its own wire format.
//!
//! # Layout
//! - `reconcile.rs`: the initial sync and the loop that applies the store's changes.
//! - `deploy.rs`: modules and services: the write path, admission, revisions and events.
//! - `discovery.rs`: registered services and checks, the key/value store, and the catalog
//!   view blocking queries read.
//! - `checks.rs`: the health-check runner.
//! - `cluster.rs`: this node among the others sharing its store: its reports, running what
//!   is placed on it, routing to peers, moving module bytes, and the view of every node.
//! - `leader.rs`: the elected leader: the autoscaler over the demand of every node, and
//!   placement (`placement.rs`, the arithmetic).
//! - `events.rs`: the writer of scale events.
//! - `status.rs`: the typed views of the node and its services.
//! - `convert.rs`: the spec into the engine's settings, and numbers back into words.

#![warn(missing_docs)]

mod checks;
mod cluster;
mod convert;
mod deploy;
mod discovery;
mod error;
mod events;
mod leader;
mod logs;
mod placement;
mod reconcile;
mod routes;
mod sessions;
mod status;
mod waiting;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use shoal_gateway::Gateway;
use shoal_registry::{Indexes, ServiceRecord, Store};
use shoal_runtime::{
    Capacity, ReplicaPool, ReplicaResources, Runtime, RuntimeConfig, ScaleSettings,
};
use shoal_spec::ServiceName;

pub use self::cluster::{Joined, LAST_KNOWN_FILE, NodeView, REPORT_EVERY};
pub use self::deploy::WriteOptions;
pub use self::discovery::{
    CatalogView, NODE_MAINTENANCE, SERVICE_MAINTENANCE_PREFIX, consul_check_id,
};
pub use self::error::{Conflict, Error, NodeRoom, Result};
pub use self::status::{
    Allocation, CompileCounts, FaultView, Latency, Load, NodeCpu, NodeStatus, ReplicaCounts,
    RequestCounts, ResourceAmounts, RunningReplica, ScaleView, ServiceAllocation, ServiceCpu,
    ServiceResources, ServiceStatus, TierTimes, WasmService,
};
/// A service's guest log, as [`Node::logs`] gives it.
#[cfg(feature = "compiler")]
pub use shoal_runtime::precompile;
pub use shoal_runtime::{
    GuestLog, HOST_TARGET, HistogramSnapshot, LogLine, PoolMetrics, Stream as LogStream, Tier,
    is_precompiled,
};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the artifact cache and local state live.
    pub data_dir: PathBuf,
    /// The bearer token the management, Consul (and later Kubernetes) APIs require of callers;
    /// required to serve them on a non-loopback address.
    pub token: Option<String>,
    /// Requests to `Host: {service}.{domain}` are routed to `{service}`.
    pub domain: String,
    /// The largest module accepted, in bytes.
    pub max_module_size: u64,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// The wasm runtime's settings (its cache dir is set from `data_dir`).
    pub runtime: RuntimeConfig,
    /// What replicas may reserve; `None` measures the machine (3/4 of its memory and every
    /// core).
    pub capacity: Option<ReplicaResources>,
    /// Scale settings for what a service's spec leaves out.
    pub scale_defaults: ScaleSettings,
    /// The datacenter the Consul API reports.
    pub datacenter: String,
    /// The node's name, as the Consul API reports it; the host name by default.
    pub node_name: String,
    /// The address of this node in the Consul API, and of registered instances that give none.
    pub node_address: String,
    /// The shortest `DeregisterCriticalServiceAfter` honoured (Consul's is a minute; tests
    /// lower it).
    pub min_deregister_critical_after: Duration,
    /// The shortest TTL a session may have (Consul's `session_ttl_min`; tests lower it).
    pub session_ttl_min: Duration,
}

impl NodeConfig {
    /// Defaults for a node keeping its local state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            token: None,
            domain: "localhost".to_owned(),
            max_module_size: 64 << 20,
            shutdown_timeout: Duration::from_secs(10),
            runtime: RuntimeConfig::default(),
            capacity: None,
            scale_defaults: ScaleSettings::default(),
            datacenter: "dc1".to_owned(),
            node_name: host_name(),
            node_address: "127.0.0.1".to_owned(),
            min_deregister_critical_after: Duration::from_secs(60),
            session_ttl_min: shoal_registry::SESSION_TTL_MIN,
        }
    }
}

/// The machine's host name, or `shoal` if it has none.
fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "shoal".to_owned())
}

/// A wasm service this node runs: the record it runs, and its replicas.
pub(crate) struct Deployed {
    pub(crate) record: ServiceRecord,
    pub(crate) pool: Arc<ReplicaPool>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    capacity: Arc<Capacity>,
    gateway: Arc<Gateway>,
    /// The wasm services, as the reconcile loop last applied them; only it writes this.
    deployed: ArcSwap<HashMap<ServiceName, Arc<Deployed>>>,
    /// Services stored but not running here, because their code cannot be loaded: why.
    unrunnable: ArcSwap<HashMap<ServiceName, Arc<str>>>,
    /// Routes (Kubernetes Services), as the reconcile loop last applied them.
    routes: ArcSwap<std::collections::BTreeMap<ServiceName, shoal_registry::RouteRecord>>,
    /// Registered services and checks, as the reconcile loop last applied them.
    catalog: ArcSwap<CatalogView>,
    /// In a cluster, every key as the reconcile loop last applied it: what key/value reads
    /// are answered from while etcd cannot be reached.
    kv_mirror: ArcSwap<std::collections::BTreeMap<String, shoal_registry::KvEntry>>,
    /// The indexes of the newest change applied: blocking queries wait on it, and so does a
    /// writer until its own change is in effect.
    applied: tokio::sync::watch::Sender<Indexes>,
    checks: checks::CheckRunner,
    events: tokio::sync::mpsc::UnboundedSender<(ServiceName, shoal_runtime::ScaleEvent)>,
    /// What each service's guests wrote, kept across its pools (a new revision, replicas
    /// scaled away) until the service is deleted.
    logs: Mutex<HashMap<ServiceName, Arc<shoal_runtime::GuestLog>>>,
    /// Serializes deploys on this node, so admission counts what the last one reserved.
    admission: tokio::sync::Mutex<()>,
    /// Held while a service's record is read and applied outside the reconcile loop (a retry
    /// of a service that could not run), and by the loop while it applies one, so an older
    /// read never lands after a newer one.
    applying: tokio::sync::Mutex<()>,
    /// The reconcile loop and the event writer, stopped by [`Node::shutdown`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutting_down: AtomicBool,
    /// Set when the servers stop taking connections ([`Node::begin_shutdown`]): streams that
    /// would never end on their own end then, so the servers drain.
    draining: tokio::sync::watch::Sender<bool>,
    /// Whether this node leads its cluster now (a node alone never campaigns).
    leading: AtomicBool,
    /// Each service name's health index, kept by the reconcile loop.
    health_indexes: Mutex<discovery::HealthIndexes>,
    gateway_addr: OnceLock<SocketAddr>,
    api_addr: OnceLock<SocketAddr>,
    /// The cluster this node joined, if it shares its store with others.
    cluster: Option<Joined>,
    /// Whether its newest attempt to catch up with the cluster's store failed.
    behind: AtomicBool,
    /// For health checks: no redirects followed, no proxy from the environment.
    http: reqwest::Client,
}

/// A node that does not keep the node alive, for its background tasks.
#[derive(Clone)]
pub(crate) struct WeakNode(std::sync::Weak<Inner>);

impl WeakNode {
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl Node {
    /// Starts a node on `store`: sets up the runtime and the node's capacity, loads every
    /// service (from the artifact cache where it can), and starts following the store.
    pub async fn open(config: NodeConfig, store: Arc<dyn Store>) -> anyhow::Result<Node> {
        Node::start(config, store, None).await
    }

    /// Starts a node on `store` as a member of the cluster it joined (its name is already its
    /// own among the live nodes): as [`Node::open`], and it reports its replicas to the
    /// others, and leaves the cluster when it shuts down.
    pub async fn open_in_cluster(
        config: NodeConfig,
        store: Arc<dyn Store>,
        joined: Joined,
    ) -> anyhow::Result<Node> {
        Node::start(config, store, Some(joined)).await
    }

    async fn start(
        mut config: NodeConfig,
        store: Arc<dyn Store>,
        cluster: Option<Joined>,
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        config.runtime.cache_dir = Some(config.data_dir.join("cache"));
        let runtime_config = config.runtime.clone();
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::new(runtime_config).context("starting the wasm runtime")
        })
        .await??;
        let capacity = Capacity::new(config.capacity.unwrap_or_else(|| Capacity::detect(0.75)));
        tracing::info!(
            memory = capacity.total().memory,
            cpu_millis = capacity.total().cpu_millis,
            cpu_slots = runtime.scheduler().slots(),
            "node capacity"
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let node = Node {
            inner: Arc::new(Inner {
                gateway: Arc::new(Gateway::new(config.domain.clone())),
                config,
                store,
                runtime: Arc::new(runtime),
                capacity,
                deployed: ArcSwap::default(),
                unrunnable: ArcSwap::default(),
                catalog: ArcSwap::default(),
                kv_mirror: ArcSwap::default(),
                applied: tokio::sync::watch::Sender::new(Indexes::default()),
                checks: checks::CheckRunner::default(),
                events,
                logs: Mutex::new(HashMap::new()),
                routes: ArcSwap::default(),
                admission: tokio::sync::Mutex::new(()),
                applying: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                draining: tokio::sync::watch::Sender::new(false),
                leading: AtomicBool::new(false),
                health_indexes: Mutex::default(),
                gateway_addr: OnceLock::new(),
                api_addr: OnceLock::new(),
                cluster,
                behind: AtomicBool::new(false),
                http,
            }),
        };
        let synced = node.sync().await.context("loading the node's state")?;
        let reconciler = tokio::spawn(reconcile::run(node.downgrade(), synced));
        let recorder = tokio::spawn(events::record(node.downgrade(), receiver));
        let sessions = tokio::spawn(sessions::guard(node.downgrade()));
        let retrier = tokio::spawn(reconcile::retry_unrunnable(node.downgrade()));
        node.tasks()
            .extend([reconciler, recorder, sessions, retrier]);
        if node.inner.cluster.is_some() {
            let reporter = tokio::spawn(cluster::report(node.downgrade()));
            let follower = tokio::spawn(cluster::follow(node.downgrade()));
            let leader = tokio::spawn(leader::run(node.downgrade()));
            let keeper = tokio::spawn(cluster::keep_last_known(node.downgrade()));
            node.tasks().extend([reporter, follower, leader, keeper]);
        }
        // A module stored just before the last stop may not have started what waited for it.
        node.resolve_waiting().await;
        Ok(node)
    }

    /// Whether this node decides for the others: it leads its cluster, or is alone.
    pub fn is_leader(&self) -> bool {
        self.inner.cluster.is_none() || self.inner.leading.load(Ordering::Relaxed)
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The store the node keeps its state in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The wasm runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The gateway, which routes by the table this node publishes.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.inner.gateway
    }

    /// The node's capacity and what replicas reserve of it.
    pub fn capacity(&self) -> &Capacity {
        &self.inner.capacity
    }

    /// Records where the gateway listens, once it does.
    pub fn set_gateway_addr(&self, addr: SocketAddr) {
        let _ = self.inner.gateway_addr.set(addr);
    }

    /// Records where the management API listens, once it does.
    pub fn set_api_addr(&self, addr: SocketAddr) {
        let _ = self.inner.api_addr.set(addr);
    }

    /// Where the management API listens, once it does.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.inner.api_addr.get().copied()
    }

    /// The cluster this node is a member of, if any.
    pub fn cluster(&self) -> Option<&Joined> {
        self.inner.cluster.as_ref()
    }

    /// Where the gateway listens, once it does.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.inner.gateway_addr.get().copied()
    }

    /// The indexes of the newest change in effect on this node, as they change: what blocking
    /// queries wait on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<Indexes> {
        self.inner.applied.subscribe()
    }

    /// The indexes of the newest change in effect on this node.
    pub fn indexes(&self) -> Indexes {
        *self.inner.applied.borrow()
    }

    /// Says that the servers in front of the node stop taking connections and wait for the
    /// answers in progress: answers that stream until the client goes ([`Node::draining`])
    /// end now, rather than hold the shutdown until its deadline.
    pub fn begin_shutdown(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Resolves once [`Node::begin_shutdown`] was called.
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut draining = self.inner.draining.subscribe();
        async move {
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }

    /// Stops the background tasks (the reconcile loop, the event writer, the check probes),
    /// waits until they are gone, then closes the store: a node about to be opened again on
    /// the same data directory needs its files released now, even while handles to this node
    /// (a connection task finishing late) live on. Later calls fail with
    /// [`Error::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.tasks());
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.inner.checks.shutdown().await;
        if let Some(joined) = &self.inner.cluster {
            joined.membership.leave().await;
        }
        self.inner.store.close().await;
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Fails with [`Error::ShuttingDown`] once shutdown has begun.
    fn check_running(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Waits until the reconcile loop has applied the change at `index` (or a later one), so a
    /// writer answers only once its change is in effect here: routable, in the catalog.
    pub(crate) async fn wait_applied(&self, index: u64) -> Result<()> {
        /// Generous: applying a change takes milliseconds, but a store that is failing makes
        /// the loop retry.
        const LONGEST_WAIT: Duration = Duration::from_secs(60);
        let mut applied = self.inner.applied.subscribe();
        let reached = tokio::time::timeout(
            LONGEST_WAIT,
            applied.wait_for(|indexes| indexes.change >= index),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Unavailable(format!(
                "the change was stored, but this node has not applied it within {}s",
                LONGEST_WAIT.as_secs()
            ))),
        }
    }
}
