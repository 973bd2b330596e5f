//! The routing table: what the gateway knows, and all it knows, about where a service name
//! leads.
//!
//! The node derives a new table from its state after every change it applies and publishes it
//! whole (copy on write), so a request reads one consistent table without a lock, and the
//! gateway never reads a store.
//! An instance of a registered service is routable when it has a port and no critical check
//! (passing or warning, as Consul's DNS interface answers); the gateway takes them in turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_runtime::ReplicaPool;

/// Every routable name, and where it leads.
#[derive(Default)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
}

/// Where a service name leads.
#[derive(Clone)]
pub enum Route {
    /// A wasm service on this node: its replicas.
    Wasm(Arc<ReplicaPool>),
    /// A service registered through the Consul API: its instances.
    External(Arc<ExternalService>),
    /// A wasm service of a cluster: its replicas on this node, and the peers that run it.
    Cluster(Arc<ClusterService>),
    /// A wasm service this node cannot run (its code cannot be loaded here): why.
    Unavailable(Arc<str>),
}

/// A wasm service as the gateway of one node of a cluster sees it.
pub struct ClusterService {
    /// Its replicas on this node (maybe none).
    pub pool: Arc<ReplicaPool>,
    /// The other live nodes that report replicas of it.
    pub peers: Vec<Peer>,
    /// This node's name, which a forwarded request carries.
    pub origin: String,
    next: AtomicUsize,
}

/// A peer node running a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// `host:port` of its gateway.
    pub gateway: String,
    /// Its replicas of the service.
    pub replicas: u32,
    /// Requests being served or waiting there, as it last reported.
    pub load: u32,
}

impl ClusterService {
    /// A service with these replicas here and these peers.
    pub fn new(pool: Arc<ReplicaPool>, peers: Vec<Peer>, origin: String) -> ClusterService {
        ClusterService {
            pool,
            peers,
            origin,
            next: AtomicUsize::new(0),
        }
    }

    /// The peer to forward to: of two taken in turn, the one with less reported load per
    /// replica (the power of two choices); `None` when no peer runs the service.
    pub fn pick(&self) -> Option<&Peer> {
        self.pick_except(&[])
    }

    /// As [`ClusterService::pick`], passing over the peers named in `except`.
    pub fn pick_except(&self, except: &[String]) -> Option<&Peer> {
        let peers: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|peer| !except.contains(&peer.node))
            .collect();
        let n = peers.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (peers[turn % n], peers[(turn + 1) % n]);
        let per_replica = |peer: &Peer| f64::from(peer.load) / f64::from(peer.replicas.max(1));
        Some(if per_replica(b) < per_replica(a) {
            b
        } else {
            a
        })
    }
}

impl RouteTable {
    /// A table of these routes.
    pub fn new(routes: HashMap<String, Route>) -> RouteTable {
        RouteTable { routes }
    }

    /// Where `name` leads.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// How many names are routable.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no name is routable.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A registered service as the gateway sees it: its instances, and whose turn is next.
#[derive(Debug, Default)]
pub struct ExternalService {
    /// Every instance, healthy or not, in ID order.
    pub instances: Vec<Endpoint>,
    next: AtomicUsize,
}

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The instance's ID.
    pub id: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Whether it may be sent requests: a port, and no critical check.
    pub routable: bool,
}

impl ExternalService {
    /// A service with these instances.
    pub fn new(instances: Vec<Endpoint>) -> ExternalService {
        ExternalService {
            instances,
            next: AtomicUsize::new(0),
        }
    }

    /// The next routable instance, round robin; `None` when none is.
    pub fn pick(&self) -> Option<&Endpoint> {
        let routable: Vec<&Endpoint> = self.instances.iter().filter(|e| e.routable).collect();
        if routable.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(routable[turn % routable.len()])
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, routable: bool) -> Endpoint {
        Endpoint {
            id: id.into(),
            authority: authority("127.0.0.1", 1),
            routable,
        }
    }

    #[test]
    fn round_robin_over_routable_instances() {
        let web = ExternalService::new(vec![
            endpoint("a", true),
            endpoint("b", false),
            endpoint("c", true),
            endpoint("d", true),
        ]);
        let picked: Vec<&str> = (0..6).map(|_| web.pick().unwrap().id.as_str()).collect();
        assert_eq!(picked, ["a", "c", "d", "a", "c", "d"]);
        assert!(
            ExternalService::new(vec![endpoint("a", false)])
                .pick()
                .is_none()
        );
        assert_eq!(authority("::1", 80), "[::1]:80");
        assert_eq!(authority("10.0.0.1", 80), "10.0.0.1:80");
    }
}
