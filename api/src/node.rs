//! The node: one registry, one runtime, and the in-memory routing table the gateway
//! reads, kept in step with each other.
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
use shoal_registry::{
    Digest, ModuleKind, ModuleRecord, Registry, ServiceName, ServiceRecord, ServiceSpec,
};
use shoal_runtime::{Compiled, Runtime, RuntimeConfig, Service, ServiceConfig};

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
        }
    }
}

/// A service as the gateway sees it.
pub struct Route {
    /// The runnable service.
    pub service: Service,
    /// The revision it runs.
    pub revision: u64,
    /// Whether its machine code came from the on-disk cache.
    pub from_cache: bool,
}

/// Shared state of a running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    /// Serializes service changes so the routing table follows the registry's order.
    changes: tokio::sync::Mutex<()>,
    gateway_addr: std::sync::OnceLock<SocketAddr>,
    /// Requests the gateway is serving right now.
    in_flight: AtomicU64,
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
        let (registry, runtime) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let registry = Registry::open(&db_path)
                .with_context(|| format!("opening the registry {}", db_path.display()))?;
            let runtime = Runtime::new(runtime_config).context("starting the wasm runtime")?;
            Ok((registry, runtime))
        })
        .await??;
        let node = Node {
            inner: Arc::new(Inner {
                config,
                registry: Arc::new(registry),
                runtime: Arc::new(runtime),
                routes: ArcSwap::default(),
                changes: tokio::sync::Mutex::new(()),
                gateway_addr: std::sync::OnceLock::new(),
                in_flight: AtomicU64::new(0),
            }),
        };
        node.load_services().await?;
        Ok(node)
    }

    async fn load_services(&self) -> anyhow::Result<()> {
        let services = self.registry(|r| r.services()).await?;
        let mut routes = HashMap::with_capacity(services.len());
        for record in services {
            match self.route_for(&record).await {
                Ok(route) => {
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

    /// Runs a registry call on a blocking thread: the one bridge from async to redb.
    pub async fn registry<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> shoal_registry::Result<T> + Send + 'static,
    {
        let registry = self.inner.registry.clone();
        tokio::task::spawn_blocking(move || f(&registry))
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
    pub async fn put_service(
        &self,
        name: ServiceName,
        spec: ServiceSpec,
    ) -> ApiResult<(ServiceRecord, bool)> {
        spec.validate()?;
        self.check_limits(&spec.limits)?;
        let _changes = self.inner.changes.lock().await;
        let digest = spec.module.clone();
        if self.registry(move |r| r.module(&digest)).await?.is_none() {
            return Err(shoal_registry::Error::ModuleNotFound(spec.module.clone()).into());
        }
        // Compile (or load) before committing, so a committed service is always runnable.
        let compiled = self.compiled(&spec.module).await?;
        let (record, created) = self.registry(move |r| r.put_service(&name, spec)).await?;
        let route = Route {
            service: Service::new(compiled.clone(), service_config(&record)),
            revision: record.revision,
            from_cache: compiled.from_cache(),
        };
        self.update_routes(|routes| {
            routes.insert(record.name.as_str().to_owned(), Arc::new(route));
        });
        Ok((record, created))
    }

    /// Refuses limits this node cannot honour, beyond what [`ServiceSpec::validate`] checks.
    pub fn check_limits(&self, limits: &shoal_registry::Limits) -> ApiResult<()> {
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
            routes.remove(record.name.as_str());
        });
        Ok(record)
    }

    fn update_routes(&self, change: impl FnOnce(&mut HashMap<String, Arc<Route>>)) {
        let mut routes = HashMap::clone(&self.inner.routes.load());
        change(&mut routes);
        self.inner.routes.store(Arc::new(routes));
    }

    async fn route_for(&self, record: &ServiceRecord) -> ApiResult<Route> {
        let compiled = self.compiled(&record.spec.module).await?;
        Ok(Route {
            service: Service::new(compiled.clone(), service_config(record)),
            revision: record.revision,
            from_cache: compiled.from_cache(),
        })
    }

    async fn compiled(&self, digest: &Digest) -> ApiResult<Compiled> {
        let runtime = self.inner.runtime.clone();
        let registry = self.inner.registry.clone();
        let digest = digest.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            runtime.load(digest.as_str(), || {
                registry
                    .module_bytes(&digest)?
                    .ok_or_else(|| anyhow::anyhow!("the bytes of module {digest} are missing"))
            })
        })
        .await
        .map_err(ApiError::internal)??;
        Ok(compiled)
    }
}

fn module_kind(compiled: &Compiled) -> ModuleKind {
    match compiled.kind() {
        shoal_runtime::ModuleKind::Http => ModuleKind::Http,
        shoal_runtime::ModuleKind::Cgi => ModuleKind::Cgi,
    }
}

/// The runtime's view of a stored service.
fn service_config(record: &ServiceRecord) -> ServiceConfig {
    let limits = &record.spec.limits;
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
