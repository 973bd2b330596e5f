//! The cluster seam: how the nodes that share one store know each other.
//!
//! A single node has no [`Cluster`]: it is the whole of its world. Nodes sharing an etcd store
//! each hold a [`Membership`]: a claim on their name among the live nodes, kept alive by the
//! backend (an etcd lease) for as long as the node runs, so a node that dies or is cut off
//! stops being alive to the others on its own, without anyone having to notice it. A node
//! publishes what it knows of itself twice: [`NodeInfo`] once when it joins (where it is, what
//! it can hold), kept after it is gone, as a Consul catalog keeps a node; and [`NodeReport`]
//! whenever its replicas change, gone with its claim.
//!
//! Membership is not in the [`Store`](crate::Store)'s change feed: a claim lapses inside the
//! backend, with no writer to move an index. [`Cluster::members`] follows the members apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;

/// Memory and CPU, in base units: what a node has, or what its replicas reserve of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Amounts {
    /// Bytes.
    pub memory: u64,
    /// Thousandths of a core.
    pub cpu_millis: u64,
}

/// Who a node is and where to reach it: written when it joins, kept after it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The schema version, [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
    pub version: u32,
    /// The node's name, unique among live nodes.
    pub name: String,
    /// Where its management API is reached, `host:port`.
    pub api: String,
    /// Where its gateway is reached, `host:port`.
    pub gateway: String,
    /// What replicas may reserve on it.
    pub capacity: Amounts,
    /// Its CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// When this incarnation joined, in milliseconds since the Unix epoch.
    pub joined_at: u64,
}

/// What a live node reports of its replicas, republished when they change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// What its replicas reserve.
    pub reserved: Amounts,
    /// Its replicas of each service that has any, or requests waiting here, by name.
    pub services: BTreeMap<String, ServiceReport>,
}

/// One service's replicas on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Replicas running.
    pub replicas: u32,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests waiting for a replica.
    pub queued: u32,
}

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who it is and where it is.
    pub info: NodeInfo,
    /// Whether it holds its claim: a node whose claim lapsed is dead to the others.
    pub alive: bool,
    /// Its newest report, while it is alive.
    pub report: Option<NodeReport>,
}

/// Every node that ever joined (and was not removed), by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    /// The nodes, by name.
    pub nodes: BTreeMap<String, Member>,
}

/// How many replicas of each service run on each node: the leader's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placements {
    /// Replicas by node name, by service name; a node with none is left out.
    pub services: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Placements {
    /// The replicas of `service` placed on `node`.
    pub fn on(&self, service: &str, node: &str) -> u32 {
        self.services
            .get(service)
            .and_then(|nodes| nodes.get(node))
            .copied()
            .unwrap_or(0)
    }
}

/// Proof of having been elected, presented with every write only the leader may make: a
/// write under a leadership that has since been lost (the leader paused past its lease, and
/// another was elected) is refused by the store, not merely discouraged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The fencing token: for etcd, the election key's create revision.
    pub fence: u64,
    /// The backend's handle on the election key.
    pub key: Vec<u8>,
}

/// Which incarnation of a node holds its name: kept by the node across restarts, so a node
/// that restarts before its old claim lapsed takes its own name back instead of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

/// The nodes sharing a store.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Claims `info.name` among the live nodes and publishes `info`, for as long as the
    /// returned membership lives (the backend keeps the claim alive in the background).
    ///
    /// Fails with [`Error::NodeNameTaken`](crate::Error::NodeNameTaken) while another live
    /// node holds the name; a claim held by `previous` (this node's own, from before a
    /// restart) is taken over.
    async fn join(
        &self,
        info: NodeInfo,
        previous: Option<Incarnation>,
    ) -> Result<Arc<dyn Membership>>;

    /// The members as they change (the newest at once).
    fn members(&self) -> tokio::sync::watch::Receiver<Arc<Members>>;

    /// The placements as they change (the newest at once).
    fn placements(&self) -> tokio::sync::watch::Receiver<Arc<Placements>>;

    /// Replaces the placements of the services in `changes` (an empty map removes a
    /// service's), in one write, if `leadership` is still the leader's: `Ok(false)` when it is
    /// not, and nothing was written.
    async fn place(
        &self,
        leadership: &Leadership,
        changes: BTreeMap<String, BTreeMap<String, u32>>,
    ) -> Result<bool>;
}

/// This node's claim on its name, kept alive until [`Membership::leave`] or the process ends.
#[async_trait::async_trait]
pub trait Membership: Send + Sync + 'static {
    /// The claim's incarnation, which the node keeps for its next start.
    fn incarnation(&self) -> Incarnation;

    /// Publishes this node's report, for as long as it holds its claim (and again whenever
    /// it claims its name anew after losing it).
    async fn report(&self, report: NodeReport) -> Result<()>;

    /// The cluster's secret, the same on every node: what nodes present to each other's peer
    /// routes. Made by the first node that joined, and known to whoever can read the store.
    fn secret(&self) -> &str;

    /// Whether the claim is held now: `false` while the backend could not renew it in time,
    /// and the others may already count this node dead.
    fn holds(&self) -> bool;

    /// Gives the claim up at once, so the others need not wait for it to lapse.
    async fn leave(&self);

    /// Waits until this node is elected leader, and returns the proof. At most one node
    /// holds a leadership the store accepts at any time; a leadership ends when its node's
    /// claim lapses or it [resigns](Membership::resign).
    async fn campaign(&self) -> Result<Leadership>;

    /// Gives a leadership up, so another node is elected at once.
    async fn resign(&self, leadership: &Leadership);
}
