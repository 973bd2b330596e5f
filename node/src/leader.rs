//! The cluster's leader: one node, elected through the store, decides how many replicas each
//! service runs and on which nodes.
//!
//! Every node campaigns; the elected one runs the autoscaler (Knative's KPA, the same
//! arithmetic a pool runs alone) once a second per service, over the demand every live node
//! reports (requests in flight and waiting), and places the replicas it wants
//! (`placement.rs`). Between ticks it acts on what cannot wait: a node died (its replicas go
//! elsewhere), a service appeared or went, a request waits for a service with no replica
//! anywhere (one is placed at once, on that node if it has room).
//!
//! Every write is fenced by the leadership ([`Cluster::place`]): a leader that was paused
//! past its lease, while another was elected, writes nothing when it wakes. Each node runs
//! what is placed on it (`cluster.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use shoal_registry::cluster::{Leadership, Members, Placements};
use shoal_runtime::{Autoscaler, ReplicaResources};
use tokio::time::Instant;

use crate::placement::{Room, Want, place};
use crate::{Node, WeakNode, convert};

/// How often the leader runs the autoscaler.
const TICK: Duration = Duration::from_secs(1);

/// What the leader remembers between decisions about one service.
#[derive(Default)]
struct Scaling {
    autoscaler: Autoscaler,
    /// When demand was last seen, for the idle timeout.
    last_active: Option<Instant>,
}

/// Campaigns for leadership, leads while elected, and campaigns again when it is lost, until
/// the node is gone.
pub(crate) async fn run(node: WeakNode) {
    loop {
        let Some(strong) = node.upgrade() else { return };
        let Some(joined) = strong.inner.cluster.as_ref() else {
            return;
        };
        let membership = joined.membership.clone();
        drop(strong);
        let leadership = match membership.campaign().await {
            Ok(leadership) => leadership,
            Err(shoal_registry::Error::Closed) => return,
            Err(error) => {
                tracing::warn!(%error, "campaigning for leader failed; trying again");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        tracing::info!(
            fence = leadership.fence,
            "this node is the cluster's leader"
        );
        set_leading(&node, true);
        lead(&node, &leadership).await;
        set_leading(&node, false);
        membership.resign(&leadership).await;
        tracing::info!("this node is no longer the cluster's leader");
    }
}

fn set_leading(node: &WeakNode, leading: bool) {
    if let Some(node) = node.upgrade() {
        node.inner
            .leading
            .store(leading, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Decides and places while `leadership` holds.
async fn lead(node: &WeakNode, leadership: &Leadership) {
    let Some(strong) = node.upgrade() else { return };
    let Some(joined) = strong.inner.cluster.as_ref() else {
        return;
    };
    let cluster = joined.cluster.clone();
    let membership = joined.membership.clone();
    let mut members = cluster.members();
    let mut applied = strong.changes();
    drop(strong);
    // What this leader last wrote, which it knows before its own watch does.
    let mut placements: Placements = (**cluster.placements().borrow()).clone();
    let mut scaling: HashMap<String, Scaling> = HashMap::new();
    let mut next_tick = Instant::now();
    loop {
        let ticked = tokio::select! {
            () = tokio::time::sleep_until(next_tick) => true,
            changed = members.changed() => { if changed.is_err() { return; } false }
            changed = applied.changed() => { if changed.is_err() { return; } false }
        };
        if ticked {
            next_tick = Instant::now() + TICK;
        }
        if !membership.holds() {
            return;
        }
        let Some(node) = node.upgrade() else { return };
        let snapshot = members.borrow_and_update().clone();
        let changes = node.decide(&snapshot, &placements, &mut scaling, ticked);
        drop(node);
        if changes.is_empty() {
            continue;
        }
        match cluster.place(leadership, changes.clone()).await {
            Ok(true) => {
                for (service, nodes) in changes {
                    if nodes.is_empty() {
                        placements.services.remove(&service);
                    } else {
                        placements.services.insert(service, nodes);
                    }
                }
            }
            Ok(false) => {
                tracing::warn!("placements refused: another node was elected leader");
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot write placements yet"),
        }
    }
}

impl Node {
    /// Every live node's room, with what is placed on it counted, but for the service
    /// `except` (whose replicas a new revision replaces).
    pub(crate) fn rooms(
        &self,
        members: &Members,
        placements: &Placements,
        except: Option<&str>,
    ) -> BTreeMap<String, Room> {
        let deployed = self.inner.deployed.load();
        let mut rooms: BTreeMap<String, Room> = members
            .nodes
            .values()
            .filter(|member| member.alive)
            .map(|member| {
                (
                    member.info.name.clone(),
                    Room {
                        capacity: ReplicaResources {
                            memory: member.info.capacity.memory,
                            cpu_millis: member.info.capacity.cpu_millis,
                        },
                        reserved: ReplicaResources::default(),
                    },
                )
            })
            .collect();
        for (service, nodes) in &placements.services {
            if except == Some(service.as_str()) {
                continue;
            }
            let Some(asked) = service
                .parse()
                .ok()
                .and_then(|name| deployed.get(&name))
                .map(|deployed| convert::replica_requests(&deployed.record.spec))
            else {
                continue;
            };
            for (node, count) in nodes {
                if let Some(room) = rooms.get_mut(node) {
                    room.reserved.memory += asked.memory * u64::from(*count);
                    room.reserved.cpu_millis += asked.cpu_millis * u64::from(*count);
                }
            }
        }
        rooms
    }

    /// The placements to change: every service's replicas for the demand the nodes report,
    /// placed on the live nodes. The autoscaler runs when `tick`; between ticks only what
    /// cannot wait changes (dead nodes, new and deleted services, a request waiting for a
    /// service with no replica).
    fn decide(
        &self,
        members: &Members,
        placements: &Placements,
        scaling: &mut HashMap<String, Scaling>,
        tick: bool,
    ) -> BTreeMap<String, BTreeMap<String, u32>> {
        let now = Instant::now();
        let deployed = self.inner.deployed.load();
        let per_replica = |service: &str| -> Option<ReplicaResources> {
            let name = service.parse().ok()?;
            deployed
                .get(&name)
                .map(|deployed| convert::replica_requests(&deployed.record.spec))
        };
        let mut rooms = self.rooms(members, placements, None);
        let mut changes = BTreeMap::new();
        // Deleted services give their room back.
        for service in placements.services.keys() {
            if per_replica(service).is_none() {
                changes.insert(service.clone(), BTreeMap::new());
                scaling.remove(service);
            }
        }
        let empty = BTreeMap::new();
        for (name, service) in deployed.iter() {
            let name = name.to_string();
            let spec = &service.record.spec;
            let settings = convert::scale_settings(spec, &self.inner.config.scale_defaults);
            let current = placements.services.get(&name).unwrap_or(&empty);
            let placed_total: u32 = current
                .iter()
                .filter(|(node, _)| rooms.contains_key(*node))
                .map(|(_, count)| count)
                .sum();
            let mut demand = 0_u32;
            let mut waiting_on = BTreeSet::new();
            for member in members.nodes.values().filter(|member| member.alive) {
                if let Some(report) = member.report.as_ref().and_then(|r| r.services.get(&name)) {
                    demand += report.in_flight + report.queued;
                    if report.queued > 0 && report.replicas == 0 {
                        waiting_on.insert(member.info.name.clone());
                    }
                }
            }
            let state = scaling.entry(name.clone()).or_default();
            if demand > 0 {
                state.last_active = Some(now);
            }
            let desired = if tick {
                state.autoscaler.observe(now, f64::from(demand));
                let idle_for = state
                    .last_active
                    .map_or(settings.idle_timeout, |at| now.duration_since(at));
                state
                    .autoscaler
                    .decide(now, &settings, placed_total, idle_for)
                    .desired
            } else if placed_total == 0 && !waiting_on.is_empty() {
                // A request waits for a service with no replica anywhere: a cold start,
                // now, not at the next tick.
                settings.min.max(1).min(settings.max.max(1))
            } else {
                // Between ticks, only what a dead node lost is made up.
                let before: u32 = current.values().sum();
                before.clamp(settings.min, settings.max.max(settings.min))
            };
            let want = Want {
                per_replica: convert::replica_requests(spec),
                desired,
                current,
                waiting_on: &waiting_on,
            };
            let placed = place(&want, &mut rooms);
            if placed != *current {
                changes.insert(name, placed);
            }
        }
        changes
    }
}
