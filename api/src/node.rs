//! The node: one registry, one runtime, the node's capacity, and the in-memory
//! routing table the gateway reads, kept in step with each other.
//!
//! Each routed service is a [`ReplicaPool`]: its replicas reserve the service's
//! resource requests from the node's [`Capacity`], so a deploy whose minimum replicas
//! do not fit is refused before anything is written. Scale events flow from the pools
//! through a channel to one task that records them in the registry.
//!
//! The registry is the truth; the routing table is derived from it at start and
//! updated after every committed change, so the gateway's hot path never touches the
//! database. Changes to services are serialized by one async lock, so the table
//! always ends in the order the registry committed.
//!
//! The registry is synchronous (redb); [`Node::registry`] is the one bridge that runs
//! its calls on tokio's blocking threads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use shoal_registry::{ModuleRecord, Registry, ServiceRecord};
use shoal_runtime::{
    Capacity, Compiled, EventSink, Isolation, ReplicaPool, ReplicaSpec, Resources, Runtime,
    RuntimeConfig, ScaleEvent, ScaleSettings, Service, ServiceConfig,
};
use shoal_spec::{Digest, ModuleKind, ServiceName, ServiceSpec};

use crate::catalog::Catalog;
use crate::checks::CheckRunner;
use crate::error::{ApiError, ApiResult};

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the registry file and the artifact cache live.
    pub data_dir: PathBuf,
    /// Bearer token the management API requires; required to bind a non-loopback address.
    pub token: Option<String>,
    /// Requests to `Host: {service}.{domain}` are routed to `{service}`.
    pub domain: String,
    /// The largest module the API accepts, in bytes.
    pub max_module_size: u64,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// The wasm runtime's settings (its cache dir is set from `data_dir`).
    pub runtime: RuntimeConfig,
    /// What replicas may reserve; `None` measures the machine (3/4 of its memory and
    /// every core).
    pub capacity: Option<Resources>,
    /// Fuel one core burns per second; `None` calibrates at start.
    pub fuel_per_cpu_second: Option<u64>,
    /// Scale settings for what a service's spec leaves out.
    pub scale_defaults: ScaleSettings,
    /// The datacenter the Consul API reports.
    pub datacenter: String,
    /// The node name the Consul API reports; the host name by default.
    pub node_name: String,
    /// The address of this node in the Consul API, and of registered instances that give none.
    pub node_address: String,
    /// The shortest `DeregisterCriticalServiceAfter` honoured (Consul's is a minute; tests
    /// lower it).
    pub min_deregister_critical_after: Duration,
}

impl NodeConfig {
    /// Defaults for a node storing its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            token: None,
            domain: "localhost".to_owned(),
            max_module_size: 64 << 20,
            shutdown_timeout: Duration::from_secs(10),
            runtime: RuntimeConfig::default(),
            capacity: None,
            fuel_per_cpu_second: None,
            scale_defaults: ScaleSettings::default(),
            datacenter: "dc1".to_owned(),
            node_name: host_name(),
            node_address: "127.0.0.1".to_owned(),
            min_deregister_critical_after: Duration::from_secs(60),
        }
    }
}

/// The machine's host name, or `shoal` if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "shoal".to_owned())
}

/// Who this node is, in the Consul API.
#[derive(Debug, Clone)]
pub struct ConsulNode {
    /// A UUID, stable for a node name and data directory.
    pub id: String,
    /// The node's name.
    pub name: String,
    /// The node's address.
    pub address: String,
    /// What `/v1/status/leader` answers: this node, at Consul's server port.
    pub raft_address: String,
}

impl ConsulNode {
    fn new(config: &NodeConfig) -> ConsulNode {
        use sha2::Digest as _;
        let seed = format!("{}\n{}", config.node_name, config.data_dir.display());
        let hash = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
        ConsulNode {
            id: format!(
                "{}-{}-{}-{}-{}",
                &hash[0..8],
                &hash[8..12],
                &hash[12..16],
                &hash[16..20],
                &hash[20..32]
            ),
            name: config.node_name.clone(),
            address: config.node_address.clone(),
            raft_address: format!("{}:8300", config.node_address),
        }
    }
}

/// A service as the gateway sees it.
pub struct Route {
    /// The service's replicas.
    pub pool: Arc<ReplicaPool>,
    /// The revision it runs.
    pub revision: u64,
    /// The spec of that revision.
    pub spec: ServiceSpec,
    /// The change index that stored that revision.
    pub change_index: u64,
}

/// Shared state of a running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    /// Taken out by [`Node::shutdown`], so the database file is released even while other
    /// handles to the node (a connection task finishing, an embedder's clone) still exist.
    registry: arc_swap::ArcSwapOption<Registry>,
    runtime: Arc<Runtime>,
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    /// Serializes service changes so the routing table follows the registry's order.
    changes: tokio::sync::Mutex<()>,
    gateway_addr: std::sync::OnceLock<SocketAddr>,
    /// Requests the gateway is serving right now.
    in_flight: AtomicU64,
    capacity: Arc<Capacity>,
    fuel_per_cpu_second: u64,
    events: tokio::sync::mpsc::UnboundedSender<(ServiceName, ScaleEvent)>,
    /// Registered services and checks, as of the registry's last change.
    catalog: ArcSwap<Catalog>,
    /// The change index of the newest committed change, for blocking queries to wait on.
    committed: tokio::sync::watch::Sender<u64>,
    checks: CheckRunner,
    /// The scale-event writer, stopped by [`Node::shutdown`].
    recorder: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Registry calls running on blocking threads, which [`Node::shutdown`] waits for.
    blocking_calls: Arc<BlockingCalls>,
    consul_node: ConsulNode,
    /// For health checks and for proxying to registered services: no redirects followed, no
    /// proxy from the environment.
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

/// Counts a request as in flight for as long as it lives.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    /// Opens (or creates) the node's state in `config.data_dir` and loads every
    /// service, from the artifact cache where it can.
    pub async fn open(mut config: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        config.runtime.cache_dir = Some(config.data_dir.join("cache"));
        let db_path = config.data_dir.join("shoal.redb");
        let runtime_config = config.runtime.clone();
        let fuel_rate = config.fuel_per_cpu_second;
        let (registry, runtime, fuel_per_cpu_second) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let registry = Registry::open(&db_path)
                    .with_context(|| format!("opening the registry {}", db_path.display()))?;
                let runtime = Runtime::new(runtime_config).context("starting the wasm runtime")?;
                let fuel_per_cpu_second = match fuel_rate {
                    Some(rate) => rate,
                    None => shoal_runtime::calibrate_fuel_rate(runtime.engine())
                        .context("calibrating the fuel rate")?,
                };
                Ok((registry, runtime, fuel_per_cpu_second))
            })
            .await??;
        let capacity = Capacity::new(config.capacity.unwrap_or_else(|| Capacity::detect(0.75)));
        tracing::info!(
            memory = capacity.total().memory,
            cpu_millis = capacity.total().cpu_millis,
            fuel_per_cpu_second,
            "node capacity"
        );
        let registry = Arc::new(registry);
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let consul_node = ConsulNode::new(&config);
        let node = Node {
            inner: Arc::new(Inner {
                config,
                registry: arc_swap::ArcSwapOption::new(Some(registry)),
                runtime: Arc::new(runtime),
                routes: ArcSwap::default(),
                changes: tokio::sync::Mutex::new(()),
                gateway_addr: std::sync::OnceLock::new(),
                in_flight: AtomicU64::new(0),
                capacity,
                fuel_per_cpu_second,
                events,
                catalog: ArcSwap::default(),
                committed: tokio::sync::watch::Sender::new(0),
                checks: CheckRunner::default(),
                recorder: std::sync::Mutex::new(None),
                blocking_calls: Arc::default(),
                consul_node,
                http,
            }),
        };
        let recorder = tokio::spawn(record_events(node.downgrade(), receiver));
        *node
            .inner
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(recorder);
        node.load_services().await?;
        node.committed().await?;
        Ok(node)
    }

    async fn load_services(&self) -> anyhow::Result<()> {
        let services = self.registry(|r| r.services()).await?;
        let mut routes = HashMap::with_capacity(services.len());
        for record in services {
            match self.compiled(&record.spec.module).await {
                Ok(compiled) => {
                    let route = self.start_route(&record, compiled);
                    routes.insert(record.name.as_str().to_owned(), Arc::new(route));
                }
                Err(error) => {
                    tracing::error!(service = %record.name, error = %error.message, "cannot load service")
                }
            }
        }
        tracing::info!(services = routes.len(), "services loaded");
        self.inner.routes.store(Arc::new(routes));
        Ok(())
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The wasm runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The service the gateway should send `name`'s requests to.
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.inner.routes.load().get(name).cloned()
    }

    /// The node's capacity and what replicas reserve of it.
    pub fn capacity(&self) -> &Capacity {
        &self.inner.capacity
    }

    /// Fuel one core burns per second, as calibrated or configured.
    pub fn fuel_per_cpu_second(&self) -> u64 {
        self.inner.fuel_per_cpu_second
    }

    /// Every routed service.
    pub fn routes(&self) -> Arc<HashMap<String, Arc<Route>>> {
        self.inner.routes.load_full()
    }

    /// Number of routable services.
    pub fn n_routes(&self) -> usize {
        self.inner.routes.load().len()
    }

    /// Marks a gateway request in flight until the guard drops.
    pub fn begin_request(&self) -> InFlight<'_> {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.inner.in_flight)
    }

    /// Gateway requests being served right now.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_gateway_addr(&self, addr: SocketAddr) {
        let _ = self.inner.gateway_addr.set(addr);
    }

    /// Where the gateway listens, once it does.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.inner.gateway_addr.get().copied()
    }

    /// The registry, unless the node has shut down.
    fn open_registry(&self) -> ApiResult<Arc<Registry>> {
        self.inner.registry.load_full().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "the node is shutting down",
            )
        })
    }

    /// Stops the background tasks (check probes, the scale-event writer) and waits until
    /// they are gone: they hold the node only for moments, but a node about to be opened
    /// again on the same data directory needs the registry file released now.
    pub async fn shutdown(&self) {
        self.inner.checks.shutdown().await;
        let recorder = self
            .inner
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(recorder) = recorder {
            recorder.abort();
            let _ = recorder.await;
        }
        // Later registry calls fail; the file closes when the last call still running on a
        // blocking thread (a task aborted while it waited leaves its call running) ends.
        self.inner.registry.store(None);
        self.inner.blocking_calls.wait_idle().await;
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Who this node is in the Consul API.
    pub fn consul_node(&self) -> &ConsulNode {
        &self.inner.consul_node
    }

    /// Registered services and checks, as of the registry's last change.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.load_full()
    }

    /// The change index of every committed change, as it happens.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }

    pub(crate) fn http_client(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// After a committed change: reloads the catalog (and with it the checks that run), then
    /// wakes blocking queries. A reload older than the one in place is dropped, so concurrent
    /// changes can finish in any order.
    pub(crate) async fn committed(&self) -> ApiResult<()> {
        let snapshot = self.registry(|r| r.catalog()).await?;
        let change = snapshot.indexes.change;
        let catalog = Arc::new(Catalog::new(snapshot, &self.inner.config.node_address));
        let previous = self.inner.catalog.rcu(|current| {
            if current.snapshot.indexes.change < change {
                catalog.clone()
            } else {
                current.clone()
            }
        });
        if previous.snapshot.indexes.change < change {
            self.inner.checks.reconcile(self, &catalog.snapshot);
        }
        self.publish(change);
        Ok(())
    }

    /// Wakes blocking queries with the change index `change`, unless a newer one is out.
    fn publish(&self, change: u64) {
        self.inner.committed.send_if_modified(|index| {
            let newer = change > *index;
            if newer {
                *index = change;
            }
            newer
        });
    }

    /// A change to registered services or checks: the registry call, then [`Node::committed`].
    pub async fn catalog_write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> shoal_registry::Result<T> + Send + 'static,
    {
        let value = self.registry(f).await?;
        if let Err(error) = self.committed().await {
            tracing::warn!(error = %error.message, "cannot refresh the catalog");
        }
        Ok(value)
    }

    /// A key/value change: the registry call, then a wake-up for blocking queries.
    pub async fn kv_write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> shoal_registry::Result<T> + Send + 'static,
    {
        let value = self.registry(f).await?;
        let change = self.registry(|r| r.change_index()).await?;
        self.publish(change);
        Ok(value)
    }

    /// Records a check's state (written only if it changed).
    pub(crate) async fn set_check(
        &self,
        id: &str,
        status: shoal_registry::CheckStatus,
        output: String,
    ) -> ApiResult<()> {
        let id = id.to_owned();
        let current = self.catalog();
        let unchanged = current
            .snapshot
            .checks
            .iter()
            .any(|c| c.definition.id == id && c.status == status && c.output == output);
        if unchanged {
            return Ok(());
        }
        self.catalog_write(move |r| r.update_check(&id, status, &output))
            .await?;
        Ok(())
    }

    /// A TTL report (`/v1/agent/check/pass/{id}` and friends): restarts the check's clock and
    /// records its state. `false` if there is no TTL check with that ID.
    pub(crate) async fn ttl_report(
        &self,
        id: &str,
        status: shoal_registry::CheckStatus,
        output: String,
    ) -> ApiResult<bool> {
        let Some(clock) = self.inner.checks.ttl_clock(id) else {
            return Ok(false);
        };
        let _reported = clock.report(status).await;
        self.set_check(id, status, output).await?;
        Ok(true)
    }

    /// Runs a registry call on a blocking thread: the one bridge from async to redb.
    pub async fn registry<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> shoal_registry::Result<T> + Send + 'static,
    {
        let registry = self.open_registry()?;
        let call = self.inner.blocking_calls.enter();
        tokio::task::spawn_blocking(move || {
            let result = f(&registry);
            drop(registry);
            drop(call);
            result
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
    }

    /// Stores a module after validating and compiling it. Idempotent by digest:
    /// returns the record and whether it was new.
    pub async fn add_module(&self, bytes: Bytes) -> ApiResult<(ModuleRecord, bool)> {
        let digest = Digest::of(&bytes);
        let known = digest.clone();
        if let Some(record) = self.registry(move |r| r.module(&known)).await? {
            return Ok((record, false));
        }
        let runtime = self.inner.runtime.clone();
        let key = digest.to_string();
        let compile_bytes = bytes.clone();
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&key, &compile_bytes))
            .await
            .map_err(ApiError::internal)??;
        let kind = module_kind(&compiled);
        self.registry(move |r| r.put_module(&digest, kind, &bytes))
            .await
    }

    /// Deletes a module no service uses.
    pub async fn delete_module(&self, digest: Digest) -> ApiResult<ModuleRecord> {
        let _changes = self.inner.changes.lock().await;
        let record = self.registry(move |r| r.delete_module(&digest)).await?;
        self.inner.runtime.forget(record.digest.as_str());
        Ok(record)
    }

    /// Creates or updates a service, then routes to it. Returns the record and whether
    /// it was created.
    ///
    /// Everything that can refuse the change (validation, compiling, admission against
    /// the node's capacity) happens before the registry is written.
    pub async fn put_service(
        &self,
        name: ServiceName,
        mut spec: ServiceSpec,
    ) -> ApiResult<(ServiceRecord, bool)> {
        spec.normalize();
        spec.validate()?;
        self.check_limits(&spec.limits)?;
        let _changes = self.inner.changes.lock().await;
        let digest = spec.module.clone();
        if self.registry(move |r| r.module(&digest)).await?.is_none() {
            return Err(shoal_registry::Error::ModuleNotFound(spec.module.clone()).into());
        }
        // Compile (or load) before committing, so a committed service is always runnable.
        let compiled = self.compiled(&spec.module).await?;
        if spec.isolation == shoal_spec::Isolation::Reuse
            && compiled.kind() == shoal_runtime::ModuleKind::Cgi
        {
            return Err(ApiError::bad_request(
                "invalid isolation: reuse needs a wasi:http component; a CGI command runs once per request",
            ));
        }
        let current = self.route(name.as_str());
        self.admit(&name, &spec, current.as_deref())?;
        let (record, created) = self.registry(move |r| r.put_service(&name, spec)).await?;
        match current {
            // Only scaling changed: keep the replicas (and their warm instances).
            Some(route) if same_except_scale(&route.spec, &record.spec) => {
                route.pool.retune(self.scale_settings(&record.spec));
                let route = Route {
                    pool: route.pool.clone(),
                    revision: record.revision,
                    spec: record.spec.clone(),
                    change_index: record.change_index,
                };
                self.update_routes(|routes| {
                    routes.insert(record.name.as_str().to_owned(), Arc::new(route));
                });
            }
            current => {
                if let Some(old) = &current {
                    old.pool.retire();
                }
                let route = self.start_route(&record, compiled);
                self.update_routes(|routes| {
                    routes.insert(record.name.as_str().to_owned(), Arc::new(route));
                });
            }
        }
        self.committed().await?;
        Ok((record, created))
    }

    /// Refuses a spec whose minimum replicas do not fit in the node, counting the
    /// replicas of the revision it replaces as free.
    fn admit(
        &self,
        name: &ServiceName,
        spec: &ServiceSpec,
        current: Option<&Route>,
    ) -> ApiResult<()> {
        let per_replica = replica_requests(spec);
        let needed = per_replica.times(u64::from(spec.scale.min));
        let credit = current
            .map(|route| route.pool.reserved())
            .unwrap_or_default();
        self.inner
            .capacity
            .admit(needed, credit)
            .map_err(|shortfall| {
                ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "insufficient-capacity",
                    format!(
                        "service \"{name}\" does not fit: {} minimum replicas {shortfall}",
                        spec.scale.min
                    ),
                )
            })
    }

    /// The scale settings of a spec, with the node's defaults for what it leaves out.
    pub fn scale_settings(&self, spec: &ServiceSpec) -> ScaleSettings {
        let defaults = &self.inner.config.scale_defaults;
        let scale = &spec.scale;
        ScaleSettings {
            min: scale.min,
            max: scale.max,
            concurrency: spec.concurrency,
            target_percent: scale.target,
            stable_window: scale.stable_window.unwrap_or(defaults.stable_window),
            panic_window: scale.panic_window.unwrap_or(defaults.panic_window),
            scale_down_delay: scale.scale_down_delay.unwrap_or(defaults.scale_down_delay),
            idle_timeout: scale.idle_timeout.unwrap_or(defaults.idle_timeout),
            queue_limit: scale.queue_limit.unwrap_or(defaults.queue_limit),
            queue_timeout: scale.queue_timeout.unwrap_or(defaults.queue_timeout),
        }
    }

    fn start_route(&self, record: &ServiceRecord, compiled: Compiled) -> Route {
        let spec = &record.spec;
        let replica = ReplicaSpec {
            isolation: match spec.isolation {
                shoal_spec::Isolation::PerRequest => Isolation::PerRequest,
                shoal_spec::Isolation::Reuse => Isolation::Reuse,
            },
            max_requests: spec.max_requests,
            requests: replica_requests(spec),
            cpu_limit_millis: spec.cpu_limit().map(|cpu| cpu.0),
        };
        let events = self.inner.events.clone();
        let name = record.name.clone();
        let sink: EventSink = Arc::new(move |event| {
            let _ = events.send((name.clone(), event));
        });
        let pool = ReplicaPool::new(
            Service::new(compiled, service_config(record)),
            replica,
            self.scale_settings(spec),
            self.inner.capacity.clone(),
            self.inner.fuel_per_cpu_second,
            sink,
        );
        Route {
            pool,
            revision: record.revision,
            spec: record.spec.clone(),
            change_index: record.change_index,
        }
    }

    /// Refuses limits this node cannot honour, beyond what [`ServiceSpec::validate`] checks.
    pub fn check_limits(&self, limits: &shoal_spec::Limits) -> ApiResult<()> {
        limits.validate()?;
        let max_memory = self.inner.runtime.config().max_memory_per_instance;
        if limits.memory.bytes() > max_memory {
            return Err(ApiError::bad_request(format!(
                "invalid limits.memory: {} exceeds this node's per-instance maximum of {max_memory} bytes",
                limits.memory
            )));
        }
        Ok(())
    }

    /// Deletes a service and stops routing to it.
    pub async fn delete_service(&self, name: ServiceName) -> ApiResult<ServiceRecord> {
        let _changes = self.inner.changes.lock().await;
        let record = self.registry(move |r| r.delete_service(&name)).await?;
        self.update_routes(|routes| {
            if let Some(route) = routes.remove(record.name.as_str()) {
                route.pool.retire();
            }
        });
        self.committed().await?;
        Ok(record)
    }

    fn update_routes(&self, change: impl FnOnce(&mut HashMap<String, Arc<Route>>)) {
        let mut routes = HashMap::clone(&self.inner.routes.load());
        change(&mut routes);
        self.inner.routes.store(Arc::new(routes));
    }

    async fn compiled(&self, digest: &Digest) -> ApiResult<Compiled> {
        let runtime = self.inner.runtime.clone();
        let registry = self.open_registry()?;
        let call = self.inner.blocking_calls.enter();
        let digest = digest.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled = runtime.load(digest.as_str(), || {
                registry
                    .module_bytes(&digest)?
                    .ok_or_else(|| anyhow::anyhow!("the bytes of module {digest} are missing"))
            });
            drop(registry);
            drop(call);
            compiled
        })
        .await
        .map_err(ApiError::internal)??;
        Ok(compiled)
    }
}

/// Counts registry calls running on blocking threads, so that shutdown can wait for them.
#[derive(Default)]
struct BlockingCalls {
    running: AtomicU64,
    idle: tokio::sync::Notify,
}

/// One registry call on a blocking thread; dropping it ends the call.
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

fn module_kind(compiled: &Compiled) -> ModuleKind {
    match compiled.kind() {
        shoal_runtime::ModuleKind::Http => ModuleKind::Http,
        shoal_runtime::ModuleKind::Cgi => ModuleKind::Cgi,
    }
}

/// What one replica of `spec` reserves from the node.
fn replica_requests(spec: &ServiceSpec) -> Resources {
    Resources {
        memory: spec.memory_request().bytes(),
        cpu_millis: spec.cpu_request().0,
    }
}

/// Whether two specs differ only in how they scale, which needs no new replicas.
fn same_except_scale(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let unscaled = |spec: &ServiceSpec| ServiceSpec {
        scale: shoal_spec::Scale::default(),
        concurrency: 1,
        ..spec.clone()
    };
    unscaled(a) == unscaled(b)
}

/// Writes scale events to the registry, in order, off the request path, and wakes the
/// health watchers they concern (replicas are what health reports for a wasm service).
///
/// It holds the node weakly: a node that is gone must release its database file at once, so
/// the next node can open it.
async fn record_events(
    node: WeakNode,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(ServiceName, ScaleEvent)>,
) {
    while let Some((name, event)) = receiver.recv().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        let result = node
            .registry(move |r| r.record_event(&name, event.from, event.to, &event.reason))
            .await;
        match result {
            Ok(_) => {
                if let Err(error) = node.committed().await {
                    tracing::warn!(error = %error.message, "cannot refresh the catalog");
                }
            }
            Err(error) if error.status == axum::http::StatusCode::NOT_FOUND => {}
            Err(error) => tracing::warn!(error = %error.message, "cannot record a scale event"),
        }
    }
}

/// The runtime's view of a stored service.
fn service_config(record: &ServiceRecord) -> ServiceConfig {
    let limits = &record.spec.limits;
    // `limits.memory` is the effective limit: `ServiceSpec::normalize` copies
    // `resources.limits.memory` into it.
    ServiceConfig {
        name: record.name.as_str().to_owned(),
        limits: shoal_runtime::Limits {
            memory: limits.memory.bytes(),
            fuel: limits.fuel,
            timeout: limits.timeout,
            max_request_body: limits.max_request_body.bytes(),
            max_response: limits.max_response.bytes(),
            max_stderr: limits.max_stderr.bytes(),
        },
        env: record
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        args: record.spec.args.clone(),
    }
}
