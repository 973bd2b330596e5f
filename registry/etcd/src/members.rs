//! [`Cluster`] on etcd: each node's claim on its name is a key under an etcd lease.
//!
//! Joining grants a lease and creates `nodes/<name>/alive` under it, only if no such key
//! exists: a live node's name cannot be taken. The node renews the lease every third of its
//! time to live; if the node dies, is paused or is cut off from etcd, the lease lapses, etcd
//! deletes the key (and the node's report with it), and every node following the members sees
//! it dead. `nodes/<name>/info` stays, as a Consul catalog keeps a node that failed.
//!
//! A node that restarts before its old lease lapsed would be refused its own name; it passes
//! the old lease's id (its [`Incarnation`], kept on its disk) and the old claim is revoked.
//! A node whose lease lapsed while it lived (a pause, a partition) claims its name again with a
//! new lease, unless another node took it meanwhile.
//!
//! The members are followed by a list of `nodes/` and a watch from the listing's revision,
//! listed again whenever the watch fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use shoal_registry::cluster::{
    Cluster, Incarnation, Leadership, Member, Members, Membership, NodeInfo, NodeReport, Placements,
};
use shoal_registry::{Error, Result};

use crate::conn::{self, Retry};
use crate::keys::NodePart;
use crate::{EtcdStore, Get};

/// How long a node's claim lasts without renewal, by default: about the time the others take
/// to count a dead node dead. Renewed every second, it survives an etcd election (a new etcd
/// leader extends every lease), and puts a dead node's services back in about 3 s, under the
/// 5 s goal; Kubernetes waits 40 s for a node lease, Consul's gossip about 5 s.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(3);

/// How long to wait before following the members again after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The nodes sharing an [`EtcdStore`]. Cheap to clone.
#[derive(Clone)]
pub struct EtcdNodes {
    store: EtcdStore,
    /// The lease's time to live, in whole seconds as etcd keeps it.
    ttl_seconds: i64,
    members: tokio::sync::watch::Receiver<Arc<Members>>,
    placements: tokio::sync::watch::Receiver<Arc<Placements>>,
}

impl EtcdStore {
    /// The nodes sharing this store, whose claims lapse `ttl` after their node stops renewing
    /// them (rounded up to whole seconds, at least 2: etcd's shortest lease). Starts following
    /// the members, until every receiver of [`Cluster::members`] is gone or the store closes.
    pub fn nodes(&self, ttl: Duration) -> EtcdNodes {
        let ttl_seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(2);
        let (sender, members) = tokio::sync::watch::channel(Arc::new(Members::default()));
        self.spawn_follower(
            self.keys().nodes(),
            MembersFollower {
                parts: BTreeMap::new(),
                sender,
            },
        );
        let (sender, placements) = tokio::sync::watch::channel(Arc::new(Placements::default()));
        self.spawn_follower(
            self.keys().assignments(),
            PlacementsFollower {
                placements: Placements::default(),
                sender,
            },
        );
        EtcdNodes {
            store: self.clone(),
            ttl_seconds,
            members,
            placements,
        }
    }

    /// Follows the keys under `prefix` into `follower`, until nobody listens to it or the
    /// store closes.
    fn spawn_follower(&self, prefix: String, mut follower: impl Follower) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut closed = store.shared.closed.subscribe();
            let unheard = follower.unheard();
            tokio::select! {
                () = follow(&store, &prefix, &mut follower) => {}
                () = unheard => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
        });
    }
}

#[async_trait::async_trait]
impl Cluster for EtcdNodes {
    async fn join(
        &self,
        info: NodeInfo,
        previous: Option<Incarnation>,
    ) -> Result<Arc<dyn Membership>> {
        let secret = self.secret().await?;
        let lease = self.grant().await?;
        if let Err(error) = self.claim(lease, &info, previous).await {
            self.revoke(lease).await;
            return Err(error);
        }
        let claim = Arc::new(Claim {
            nodes: self.clone(),
            info,
            secret,
            lease: AtomicI64::new(lease),
            renewed: Mutex::new(Some(Instant::now())),
            report: Mutex::new(None),
            left: AtomicBool::new(false),
        });
        tokio::spawn(keep(Arc::downgrade(&claim), self.renew_every()));
        Ok(claim)
    }

    fn members(&self) -> tokio::sync::watch::Receiver<Arc<Members>> {
        self.members.clone()
    }

    fn placements(&self) -> tokio::sync::watch::Receiver<Arc<Placements>> {
        self.placements.clone()
    }

    async fn place(
        &self,
        leadership: &Leadership,
        changes: BTreeMap<String, BTreeMap<String, u32>>,
    ) -> Result<bool> {
        let keys = self.store.keys();
        let fence = Compare::create_revision(
            leadership.key.clone(),
            CompareOp::Equal,
            i64::try_from(leadership.fence).unwrap_or(i64::MAX),
        );
        let changes: Vec<_> = changes.into_iter().collect();
        // etcd takes at most 128 operations per transaction: one fenced transaction per
        // hundred services (each its own decision, so a partial batch is still consistent).
        for batch in changes.chunks(100) {
            let mut ops = Vec::with_capacity(batch.len());
            for (service, nodes) in batch {
                let key = keys.assignment(service);
                let nodes: BTreeMap<&String, &u32> = nodes
                    .iter()
                    .filter(|(_, replicas)| **replicas > 0)
                    .collect();
                if nodes.is_empty() {
                    ops.push(TxnOp::delete(key, None));
                } else {
                    let value = serde_json::to_vec(&nodes)
                        .map_err(|error| Error::Storage(Box::new(error)))?;
                    ops.push(TxnOp::put(key, value, None));
                }
            }
            let txn = Txn::new().when([fence.clone()]).and_then(ops);
            // Placements are decided again every tick: a write whose answer was lost is not
            // sent again, the next tick reads what is there.
            let response = self.store.txn(Retry::Write, &txn).await?;
            if !response.succeeded() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl EtcdNodes {
    fn renew_every(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.ttl_seconds).unwrap_or(2) * 1000 / 3)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.ttl_seconds).unwrap_or(2))
    }

    /// The cluster's secret: the one stored, or a new one if this is the first node.
    async fn secret(&self) -> Result<String> {
        let key = self.store.keys().secret();
        let mut fresh = [0_u8; 32];
        getrandom::fill(&mut fresh).map_err(|error| {
            Error::Storage(format!("no randomness for the cluster's secret: {error}").into())
        })?;
        let fresh: String = fresh.iter().map(|byte| format!("{byte:02x}")).collect();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        // Sent again if its answer is lost: the second finds whichever secret won.
        let response = self.store.txn(Retry::Read, &txn).await?;
        if response.succeeded() {
            return Ok(fresh);
        }
        first_got(response)
            .and_then(|kv| kv.value_str().ok().map(str::to_owned))
            .ok_or_else(|| Error::Corrupt("the cluster's secret is missing or not text".into()))
    }

    async fn grant(&self) -> Result<i64> {
        self.store.grant_lease(self.ttl_seconds).await
    }

    /// Gives a lease up, deleting the keys under it; a failure only leaves it to lapse.
    async fn revoke(&self, lease: i64) {
        self.store.revoke_lease(lease).await;
    }

    /// Creates `nodes/<name>/alive` under `lease` and writes `info`, unless a live node holds
    /// the name. A claim of `previous` is revoked and claimed again.
    async fn claim(
        &self,
        lease: i64,
        info: &NodeInfo,
        previous: Option<Incarnation>,
    ) -> Result<()> {
        let keys = self.store.keys();
        let alive = keys.node(&info.name, NodePart::Alive);
        let info_value =
            serde_json::to_vec(info).map_err(|error| Error::Storage(Box::new(error)))?;
        // A write whose answer was lost is sent again: it finds its own claim and is done.
        for _ in 0..4 {
            let txn = Txn::new()
                .when([Compare::create_revision(alive.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        alive.clone(),
                        info.api.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(
                        keys.node(&info.name, NodePart::Info),
                        info_value.clone(),
                        None,
                    ),
                ])
                .or_else([TxnOp::get(alive.clone(), None)]);
            let response = match self.store.txn(Retry::Write, &txn).await {
                Ok(response) => response,
                Err(Error::Unavailable(reason)) => {
                    tracing::debug!(%reason, "claiming the node name: no answer; trying again");
                    continue;
                }
                Err(error) => return Err(error),
            };
            if response.succeeded() {
                return Ok(());
            }
            let holder = first_got(response);
            let Some(holder) = holder else { continue };
            if holder.lease() == lease {
                return Ok(());
            }
            if previous.is_some_and(|previous| i64::try_from(previous.0) == Ok(holder.lease())) {
                tracing::info!(
                    name = info.name,
                    "taking over this node's claim from before its restart"
                );
                self.revoke(holder.lease()).await;
                continue;
            }
            return Err(Error::NodeNameTaken {
                name: info.name.clone(),
                api: String::from_utf8_lossy(holder.value()).into_owned(),
            });
        }
        Err(Error::Unavailable(format!(
            "could not claim the node name \"{}\": etcd did not answer",
            info.name
        )))
    }
}

/// A node's claim on its name.
struct Claim {
    nodes: EtcdNodes,
    info: NodeInfo,
    secret: String,
    /// The lease the claim is under; replaced when the node claims its name again.
    lease: AtomicI64,
    /// When the lease was last renewed; `None` while the claim is lost.
    renewed: Mutex<Option<Instant>>,
    /// The newest report, published again under a new lease.
    report: Mutex<Option<NodeReport>>,
    left: AtomicBool,
}

#[async_trait::async_trait]
impl Membership for Claim {
    fn incarnation(&self) -> Incarnation {
        Incarnation(u64::try_from(self.lease.load(Ordering::SeqCst)).unwrap_or(0))
    }

    async fn report(&self, report: NodeReport) -> Result<()> {
        *lock(&self.report) = Some(report.clone());
        self.publish(&report).await
    }

    fn secret(&self) -> &str {
        &self.secret
    }

    fn holds(&self) -> bool {
        !self.left.load(Ordering::SeqCst)
            && lock(&self.renewed).is_some_and(|at| at.elapsed() < self.nodes.ttl())
    }

    async fn campaign(&self) -> Result<Leadership> {
        let name = self.nodes.store.keys().election();
        loop {
            if self.left.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let lease = self.lease.load(Ordering::SeqCst);
            let (member, client) = self.nodes.store.shared.conn.client();
            // A campaign waits for the leaders before it, and a request times out: asked
            // again, etcd finds this lease's key where it was, still in line.
            let campaign = client
                .election_client()
                .campaign(name.clone(), self.info.name.clone(), lease)
                .await;
            match campaign {
                Ok(response) => {
                    let Some(leader) = response.leader() else {
                        continue;
                    };
                    if leader.lease() != self.lease.load(Ordering::SeqCst) {
                        // Elected under a lease this node has since replaced: it is gone.
                        continue;
                    }
                    return Ok(Leadership {
                        fence: u64::try_from(leader.rev()).unwrap_or(0),
                        key: leader.key().to_vec(),
                    });
                }
                Err(error) => {
                    let timed_out = matches!(&error, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::DeadlineExceeded)
                        || error.to_string().contains("timed out");
                    if !timed_out {
                        tracing::debug!(endpoint = self.nodes.store.shared.conn.endpoint(member), %error, "campaigning failed; trying again");
                        self.nodes.store.shared.conn.move_on_from(member);
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        }
    }

    async fn resign(&self, leadership: &Leadership) {
        // Deleting the key is what resigning is; it is fenced by its create revision.
        let key = leadership.key.clone();
        let fence = i64::try_from(leadership.fence).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let resigned = self.nodes.store.txn(Retry::Read, &txn).await;
        if let Err(error) = resigned {
            tracing::debug!(%error, "resigning failed; the leadership ends with the lease");
        }
    }

    async fn leave(&self) {
        if self.left.swap(true, Ordering::SeqCst) {
            return;
        }
        let lease = self.lease.load(Ordering::SeqCst);
        let _ = tokio::time::timeout(conn::REQUEST_TIMEOUT, self.nodes.revoke(lease)).await;
    }
}

impl Claim {
    async fn publish(&self, report: &NodeReport) -> Result<()> {
        let key = self
            .nodes
            .store
            .keys()
            .node(&self.info.name, NodePart::Report);
        let value = serde_json::to_vec(report).map_err(|error| Error::Storage(Box::new(error)))?;
        let lease = self.lease.load(Ordering::SeqCst);
        self.nodes
            .store
            .shared
            .conn
            .kv(Retry::Write, |mut kv| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// Renews the lease once: `Ok(false)` when etcd no longer has it.
    async fn renew(&self) -> Result<bool> {
        let lease = self.lease.load(Ordering::SeqCst);
        self.nodes.store.keep_lease(lease, "the node's lease").await
    }

    /// Claims the name again under a new lease, after the old one lapsed.
    async fn rejoin(&self) -> Result<()> {
        let lease = self.nodes.grant().await?;
        if let Err(error) = self.nodes.claim(lease, &self.info, None).await {
            self.nodes.revoke(lease).await;
            return Err(error);
        }
        self.lease.store(lease, Ordering::SeqCst);
        *lock(&self.renewed) = Some(Instant::now());
        let report = lock(&self.report).clone();
        if let Some(report) = report {
            self.publish(&report).await?;
        }
        tracing::info!(
            name = self.info.name,
            "claimed the node name again under a new lease"
        );
        Ok(())
    }
}

/// Renews the claim every `every` until it is dropped or given up.
async fn keep(claim: Weak<Claim>, every: Duration) {
    let mut lapsed_logged = false;
    loop {
        tokio::time::sleep(every).await;
        let Some(claim) = claim.upgrade() else { return };
        if claim.left.load(Ordering::SeqCst) || *claim.nodes.store.shared.closed.borrow() {
            return;
        }
        match claim.renew().await {
            Ok(true) => {
                *lock(&claim.renewed) = Some(Instant::now());
                lapsed_logged = false;
            }
            Ok(false) => {
                *lock(&claim.renewed) = None;
                if let Err(error) = claim.rejoin().await
                    && !std::mem::replace(&mut lapsed_logged, true)
                {
                    tracing::warn!(%error, "this node's lease lapsed and its name cannot be claimed again yet");
                }
            }
            Err(error) => tracing::debug!(%error, "renewing the node's lease failed"),
        }
    }
}

/// The first pair a transaction's gets found.
fn first_got(response: etcd_client::TxnResponse) -> Option<etcd_client::KeyValue> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
        _ => None,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is known of one node from its keys.
#[derive(Default)]
struct Parts {
    info: Option<NodeInfo>,
    alive: bool,
    report: Option<NodeReport>,
}

/// What keeps a channel up to date from the keys under one prefix.
trait Follower: Send + 'static {
    /// Forgets everything: a new listing follows.
    fn reset(&mut self);
    /// Applies a key's new value (`put`) or its deletion.
    fn apply(&mut self, keys: &crate::keys::Keys, kv: &etcd_client::KeyValue, put: bool);
    /// Sends what is known, if it changed.
    fn publish(&mut self);
    /// Resolves once nobody listens any more.
    fn unheard(&self) -> futures::future::BoxFuture<'static, ()>;
}

/// Lists the keys under `prefix`, then watches them from the listing's revision, into
/// `follower`; lists again whenever the watch fails.
async fn follow(store: &EtcdStore, prefix: &str, follower: &mut impl Follower) {
    loop {
        let listed = match store.read(vec![Get::prefix(prefix.to_owned())]).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!(prefix, %error, "listing");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        follower.reset();
        for kv in &listed.ranges[0] {
            follower.apply(store.keys(), kv, true);
        }
        follower.publish();
        let (member, mut client) = store.shared.conn.watch_client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(listed.revision + 1);
        let mut stream = match client.watch(prefix.to_owned(), Some(options)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(endpoint = store.shared.conn.endpoint(member), prefix, %error, "watching");
                store.shared.conn.move_on_from(member);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(response)) if !response.canceled() => {
                    for event in response.events() {
                        if let Some(kv) = event.kv() {
                            follower.apply(store.keys(), kv, event.event_type() == EventType::Put);
                        }
                    }
                    follower.publish();
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::debug!(endpoint = store.shared.conn.endpoint(member), prefix, %error, "the watch ended");
                    store.shared.conn.move_on_from(member);
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Follows `nodes/` into the members.
struct MembersFollower {
    parts: BTreeMap<String, Parts>,
    sender: tokio::sync::watch::Sender<Arc<Members>>,
}

impl Follower for MembersFollower {
    fn reset(&mut self) {
        self.parts.clear();
    }

    fn apply(&mut self, keys: &crate::keys::Keys, kv: &etcd_client::KeyValue, put: bool) {
        let Some((name, part)) = kv.key_str().ok().and_then(|key| keys.node_part(key)) else {
            return;
        };
        let node = self.parts.entry(name.to_owned()).or_default();
        match part {
            NodePart::Info => {
                node.info = if put {
                    serde_json::from_slice(kv.value())
                        .inspect_err(|error| tracing::warn!(node = name, %error, "a node's info does not decode"))
                        .ok()
                } else {
                    None
                };
            }
            NodePart::Alive => node.alive = put,
            NodePart::Report => {
                node.report = if put {
                    serde_json::from_slice(kv.value()).ok()
                } else {
                    None
                };
            }
        }
    }

    fn publish(&mut self) {
        let members = Members {
            nodes: self
                .parts
                .iter()
                .filter_map(|(name, parts)| {
                    let info = parts.info.clone()?;
                    Some((
                        name.clone(),
                        Member {
                            info,
                            alive: parts.alive,
                            report: parts.report.clone().filter(|_| parts.alive),
                        },
                    ))
                })
                .collect(),
        };
        send_if_changed(&self.sender, members);
    }

    fn unheard(&self) -> futures::future::BoxFuture<'static, ()> {
        let sender = self.sender.clone();
        Box::pin(async move { sender.closed().await })
    }
}

/// Follows `assign/` into the placements.
struct PlacementsFollower {
    placements: Placements,
    sender: tokio::sync::watch::Sender<Arc<Placements>>,
}

impl Follower for PlacementsFollower {
    fn reset(&mut self) {
        self.placements = Placements::default();
    }

    fn apply(&mut self, keys: &crate::keys::Keys, kv: &etcd_client::KeyValue, put: bool) {
        let Some(service) = kv.key_str().ok().and_then(|key| keys.assigned_service(key)) else {
            return;
        };
        let nodes = put
            .then(|| serde_json::from_slice::<BTreeMap<String, u32>>(kv.value()).ok())
            .flatten();
        match nodes {
            Some(nodes) => {
                self.placements.services.insert(service.to_owned(), nodes);
            }
            None => {
                self.placements.services.remove(service);
            }
        }
    }

    fn publish(&mut self) {
        send_if_changed(&self.sender, self.placements.clone());
    }

    fn unheard(&self) -> futures::future::BoxFuture<'static, ()> {
        let sender = self.sender.clone();
        Box::pin(async move { sender.closed().await })
    }
}

fn send_if_changed<T: PartialEq>(sender: &tokio::sync::watch::Sender<Arc<T>>, value: T) {
    sender.send_if_modified(|current| {
        let changed = **current != value;
        if changed {
            *current = Arc::new(value);
        }
        changed
    });
}
