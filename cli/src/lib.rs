//! shoal: a WebAssembly orchestrator with a registry and a gateway, in one binary.
//!
//! This crate is the binary's library: the wiring of a node ([`open_node`], [`serve`]) and
//! the command line (`commands.rs`). [`serve`] runs the management API and the gateway on
//! listeners the caller has bound, until a shutdown future resolves, so tests run a whole
//! node on `127.0.0.1:0` exactly as `shoal up` does.
//!
//! # Features
//! - `compiler` (default): Cranelift, to compile uploads and measure the fuel rate. Without
//!   it, `cargo build -p shoal --no-default-features` builds an edge node that serves modules
//!   whose machine code is already in its artifact cache.
//! - `cluster` (default): [`open_cluster_node`], a node whose state lives in etcd, shared with
//!   the other nodes of its cluster. The edge build leaves it out.

pub mod commands;
mod dev;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use shoal_api::{check_exposure, consul, kube, mgmt, peer};
pub use shoal_node::{Node, NodeConfig};
pub use shoal_runtime::ReplicaResources;

/// Opens a node on its default store: the redb file `{data_dir}/shoal.redb`.
pub async fn open_node(config: NodeConfig) -> anyhow::Result<Node> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let path = config.data_dir.join("shoal.redb");
    let store =
        shoal_registry_redb::RedbStore::open(&path, shoal_registry_redb::Options::default())
            .await
            .with_context(|| format!("opening the store {}", path.display()))?;
    Node::open(config, Arc::new(store)).await
}

/// How long a node starting keeps trying to reach etcd before it serves what it last knew
/// (or gives up, if it knows nothing).
#[cfg(feature = "cluster")]
const JOIN_RETRIES_FOR: Duration = Duration::from_secs(5);

/// A cluster to join: where its etcd is, and where this node is reached.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The etcd members' client addresses.
    pub endpoints: Vec<String>,
    /// The prefix of every key the cluster keeps.
    pub prefix: String,
    /// How long after this node stops renewing its membership the others count it dead.
    pub node_ttl: Duration,
    /// Where this node's management API is reached, `host:port`.
    pub api: String,
    /// Where its gateway is reached, `host:port`.
    pub gateway: String,
}

/// A node opened for a cluster.
pub struct ClusterNode {
    /// The node.
    pub node: Node,
    /// Whether etcd could not be reached at start, so the node serves what it last knew,
    /// read-only, until it can join ([`etcd_reachable`] says when).
    pub read_only: bool,
}

/// Opens a node as a member of a cluster: its state in etcd, module bytes and compiled code
/// in its data directory. Claims the node's name among the live nodes first, and fails
/// (having started nothing) when a live node holds it. When etcd cannot be reached and the
/// node has run in the cluster before, it opens read-only on what it last knew.
#[cfg(feature = "cluster")]
pub async fn open_cluster_node(
    mut config: NodeConfig,
    cluster: ClusterConfig,
) -> anyhow::Result<ClusterNode> {
    use shoal_registry::cluster::{Amounts, Cluster as _, Incarnation, NodeInfo};
    use shoal_registry_etcd::{EtcdStore, Options};

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let path = config.data_dir.join("shoal.redb");
    let blobs =
        shoal_registry_redb::RedbStore::open(&path, shoal_registry_redb::Options::default())
            .await
            .with_context(|| format!("opening the store {}", path.display()))?;
    let local: Arc<dyn shoal_registry::Store> = Arc::new(blobs);
    let options = Options {
        prefix: cluster.prefix.clone(),
        ..Options::new(cluster.endpoints.clone(), local.clone())
    };
    let store = EtcdStore::connect(options)
        .await
        .context("connecting to etcd")?;
    let capacity = *config
        .capacity
        .get_or_insert_with(|| shoal_runtime::Capacity::detect(0.75));
    let info = NodeInfo {
        version: shoal_registry::SCHEMA_VERSION,
        name: config.node_name.clone(),
        api: cluster.api,
        gateway: cluster.gateway,
        capacity: Amounts {
            memory: capacity.memory,
            cpu_millis: capacity.cpu_millis,
        },
        arch: std::env::consts::ARCH.to_owned(),
        joined_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64),
    };
    // The claim this node held before a restart, which it may take over at once.
    let incarnation_path = config.data_dir.join("cluster-incarnation");
    let previous = std::fs::read_to_string(&incarnation_path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map(Incarnation);
    let nodes = store.nodes(cluster.node_ttl);
    let joining = || {
        format!(
            "joining the cluster at {} as \"{}\"",
            cluster.endpoints.join(","),
            info.name
        )
    };
    // etcd starting at the same time (a site powering up) may not answer at once, or may
    // still be electing: a few seconds of retries before the node gives up or serves what it
    // last knew.
    let mut joined = nodes.join(info.clone(), previous).await;
    let deadline = std::time::Instant::now() + JOIN_RETRIES_FOR;
    while let Err(shoal_registry::Error::Unavailable(reason)) = &joined
        && std::time::Instant::now() < deadline
    {
        tracing::info!(%reason, "etcd does not answer yet; trying again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        joined = nodes.join(info.clone(), previous).await;
    }
    let membership = match joined {
        Ok(membership) => membership,
        Err(shoal_registry::Error::Unavailable(reason)) => {
            let last_known = config.data_dir.join(shoal_node::LAST_KNOWN_FILE);
            let Ok(saved) = std::fs::read(&last_known) else {
                anyhow::bail!(
                    "{}: etcd cannot be reached ({reason}), and this node has no state of the cluster to serve meanwhile",
                    joining()
                );
            };
            let last: shoal_registry::snapshot::LastKnown = serde_json::from_slice(&saved)
                .with_context(|| format!("reading {}", last_known.display()))?;
            tracing::warn!(%reason, change_index = last.change_index, "etcd cannot be reached: serving the state this node last knew, read-only, until it can join");
            drop(store);
            let snapshot = shoal_registry::snapshot::SnapshotStore::new(last, local);
            let node = Node::open(config, Arc::new(snapshot)).await?;
            return Ok(ClusterNode {
                node,
                read_only: true,
            });
        }
        Err(error) => return Err(error).with_context(joining),
    };
    std::fs::write(&incarnation_path, membership.incarnation().0.to_string())
        .with_context(|| format!("writing {}", incarnation_path.display()))?;
    tracing::info!(
        name = info.name,
        api = info.api,
        gateway = info.gateway,
        "joined the cluster"
    );
    let joined = shoal_node::Joined {
        cluster: Arc::new(nodes),
        membership,
        info,
        local,
    };
    let node = Node::open_in_cluster(config, Arc::new(store), joined).await?;
    Ok(ClusterNode {
        node,
        read_only: false,
    })
}

/// Resolves once the etcd of `cluster` answers, checking every second: when a node serving
/// what it last knew may join.
#[cfg(feature = "cluster")]
pub async fn etcd_reachable(cluster: &ClusterConfig) {
    use shoal_registry::Store as _;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A store of its own, with no module bytes: only its indexes are read.
        let Ok(blobs) =
            shoal_registry_redb::RedbStore::in_memory(shoal_registry_redb::Options::default())
        else {
            continue;
        };
        let options = shoal_registry_etcd::Options {
            prefix: cluster.prefix.clone(),
            ..shoal_registry_etcd::Options::new(cluster.endpoints.clone(), Arc::new(blobs))
        };
        if let Ok(store) = shoal_registry_etcd::EtcdStore::connect(options).await
            && store.indexes().await.is_ok()
        {
            return;
        }
    }
}

/// Without the `cluster` feature: never.
#[cfg(not(feature = "cluster"))]
pub async fn etcd_reachable(_cluster: &ClusterConfig) {
    std::future::pending::<()>().await
}

/// Without the `cluster` feature: refuses, saying why.
#[cfg(not(feature = "cluster"))]
pub async fn open_cluster_node(
    _config: NodeConfig,
    _cluster: ClusterConfig,
) -> anyhow::Result<ClusterNode> {
    anyhow::bail!(
        "this shoal was built without the `cluster` feature: it cannot join an etcd cluster"
    )
}

/// Serves the management API on `api` and the gateway on `gateway` until `shutdown`
/// resolves, then lets in-flight requests finish for up to the node's shutdown timeout,
/// and shuts the node down.
///
/// Refuses to serve the management API on a non-loopback address without a token:
/// whoever reaches it can run code on this machine.
pub async fn serve(
    node: Node,
    api: TcpListener,
    gateway: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_tls(node, api, gateway, None, shutdown).await
}

/// [`serve`], with the management API over TLS when `tls` is given.
pub async fn serve_with_tls(
    node: Node,
    api: TcpListener,
    gateway: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let api_addr = api
        .local_addr()
        .context("reading the API listener's address")?;
    check_exposure(api_addr, node.config().token.is_some())?;
    let gateway_addr = gateway
        .local_addr()
        .context("reading the gateway listener's address")?;
    node.set_gateway_addr(gateway_addr);
    node.set_api_addr(api_addr);
    tracing::info!(api = %api_addr, gateway = %gateway_addr, "shoal is serving");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let api_app = shoal_api::app(node.clone()).layer(TraceLayer::new_for_http());
    let api_server = match tls {
        None => {
            let api = api.tap_io(|stream| shoal_gateway::set_nodelay(stream));
            let server = axum::serve(
                api,
                api_app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(until_stopped(stopped.clone()));
            Box::pin(async move { server.await })
                as std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>
        }
        Some(config) => {
            let api =
                tls::TlsListener::new(api, config).context("reading the API listener's address")?;
            // No connect info: no handler of the management listener reads the peer.
            let server = axum::serve(api, api_app.into_make_service())
                .with_graceful_shutdown(until_stopped(stopped.clone()));
            Box::pin(async move { server.await })
        }
    };
    let gateway_server =
        shoal_gateway::serve(node.gateway().clone(), gateway, until_stopped(stopped));
    let mut api_task = tokio::spawn(api_server);
    let mut gateway_task = tokio::spawn(gateway_server);

    tokio::select! {
        () = shutdown => {}
        result = &mut api_task => return result?.context("management API server failed"),
        result = &mut gateway_task => return result?.context("gateway server failed"),
    }
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop.send(true);
    node.begin_shutdown();
    let deadline = node.config().shutdown_timeout;
    let drained = tokio::time::timeout(deadline, async {
        let _ = (&mut api_task).await;
        let _ = (&mut gateway_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(timeout = ?deadline, "requests still in flight at the shutdown deadline; stopping anyway");
        api_task.abort();
        gateway_task.abort();
    }
    node.shutdown().await;
    Ok(())
}
