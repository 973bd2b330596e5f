//! Where a service's replicas go: the leader's arithmetic, as plain numbers (no store, no
//! clock), so it is tested like the autoscaler.
//!
//! `resource_allocation = performance_need / resource_limit`, per node: a node's free room
//! is its capacity less what the replicas placed on it request. Adding a replica filters the
//! live nodes it fits on, then prefers the node with the fewest replicas of the service
//! (spread, as Nomad and wasmCloud's spreadscaler do), then a node where a request for it is
//! waiting (scale from zero answers that request without a hop), then the least allocated
//! (kube-scheduler's default), then the name. Removing takes from the node with the most
//! replicas of the service, the most allocated first. Replicas placed on a dead node are
//! placed again elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use shoal_runtime::ReplicaResources;

/// A live node as placement sees it.
#[derive(Debug, Clone)]
pub(crate) struct Room {
    /// What replicas may reserve on it.
    pub(crate) capacity: ReplicaResources,
    /// What the replicas placed on it request.
    pub(crate) reserved: ReplicaResources,
}

impl Room {
    fn fits(&self, asked: ReplicaResources) -> bool {
        self.reserved.memory + asked.memory <= self.capacity.memory
            && self.reserved.cpu_millis + asked.cpu_millis <= self.capacity.cpu_millis
    }

    /// How many more replicas asking `asked` fit.
    pub(crate) fn fits_count(&self, asked: ReplicaResources) -> u64 {
        let room = |capacity: u64, reserved: u64, asked: u64| {
            capacity
                .saturating_sub(reserved)
                .checked_div(asked)
                .unwrap_or(u64::MAX)
        };
        room(self.capacity.memory, self.reserved.memory, asked.memory).min(room(
            self.capacity.cpu_millis,
            self.reserved.cpu_millis,
            asked.cpu_millis,
        ))
    }

    /// The larger of its memory and cpu allocation, were `extra` added.
    fn allocation_with(&self, extra: ReplicaResources) -> f64 {
        let ratio = |reserved: u64, capacity: u64| {
            if capacity == 0 {
                1.0
            } else {
                reserved as f64 / capacity as f64
            }
        };
        ratio(self.reserved.memory + extra.memory, self.capacity.memory).max(ratio(
            self.reserved.cpu_millis + extra.cpu_millis,
            self.capacity.cpu_millis,
        ))
    }

    fn add(&mut self, asked: ReplicaResources) {
        self.reserved.memory += asked.memory;
        self.reserved.cpu_millis += asked.cpu_millis;
    }

    fn remove(&mut self, asked: ReplicaResources) {
        self.reserved.memory = self.reserved.memory.saturating_sub(asked.memory);
        self.reserved.cpu_millis = self.reserved.cpu_millis.saturating_sub(asked.cpu_millis);
    }
}

/// The replicas of one service to place.
pub(crate) struct Want<'a> {
    /// Each replica's requests.
    pub(crate) per_replica: ReplicaResources,
    /// How many replicas in all.
    pub(crate) desired: u32,
    /// Where its replicas are now, by node; dead nodes' included.
    pub(crate) current: &'a BTreeMap<String, u32>,
    /// Nodes where requests for it wait.
    pub(crate) waiting_on: &'a BTreeSet<String>,
}

/// The service's new placement. `rooms` holds every live node, with what is placed on it
/// (this service's current replicas included) and leaves with the new placement counted.
pub(crate) fn place(want: &Want<'_>, rooms: &mut BTreeMap<String, Room>) -> BTreeMap<String, u32> {
    // Only live nodes keep replicas.
    let mut placed: BTreeMap<String, u32> = want
        .current
        .iter()
        .filter(|(node, count)| **count > 0 && rooms.contains_key(*node))
        .map(|(node, count)| (node.clone(), *count))
        .collect();
    let mut total: u32 = placed.values().sum();
    while total < want.desired {
        let best = rooms
            .iter()
            .filter(|(_, room)| room.fits(want.per_replica))
            .min_by(|(a, room_a), (b, room_b)| {
                let key = |node: &String, room: &Room| {
                    (
                        placed.get(node).copied().unwrap_or(0),
                        !want.waiting_on.contains(node),
                        room.allocation_with(want.per_replica),
                    )
                };
                let (ka, kb) = (key(a, room_a), key(b, room_b));
                (ka.0, ka.1)
                    .cmp(&(kb.0, kb.1))
                    .then(ka.2.total_cmp(&kb.2))
                    .then(a.cmp(b))
            })
            .map(|(node, _)| node.clone());
        let Some(node) = best else { break };
        if let Some(room) = rooms.get_mut(&node) {
            room.add(want.per_replica);
        }
        *placed.entry(node).or_default() += 1;
        total += 1;
    }
    while total > want.desired {
        let Some(node) = placed
            .iter()
            .max_by(|(a, count_a), (b, count_b)| {
                let allocation = |node: &String| {
                    rooms.get(node).map_or(0.0, |room| {
                        room.allocation_with(ReplicaResources::default())
                    })
                };
                count_a
                    .cmp(count_b)
                    .then(allocation(a).total_cmp(&allocation(b)))
                    .then(b.cmp(a))
            })
            .map(|(node, _)| node.clone())
        else {
            break;
        };
        if let Some(room) = rooms.get_mut(&node) {
            room.remove(want.per_replica);
        }
        let count = placed.entry(node.clone()).or_default();
        *count -= 1;
        if *count == 0 {
            placed.remove(&node);
        }
        total -= 1;
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(capacities: &[(&str, u64)]) -> BTreeMap<String, Room> {
        capacities
            .iter()
            .map(|(name, cpu)| {
                (
                    (*name).to_owned(),
                    Room {
                        capacity: ReplicaResources {
                            memory: 1 << 30,
                            cpu_millis: *cpu,
                        },
                        reserved: ReplicaResources::default(),
                    },
                )
            })
            .collect()
    }

    const QUARTER: ReplicaResources = ReplicaResources {
        memory: 1 << 20,
        cpu_millis: 250,
    };

    #[test]
    fn replicas_spread_across_nodes_and_stop_at_capacity() {
        let mut rooms = rooms(&[("a", 1000), ("b", 1000), ("c", 500)]);
        let none = BTreeMap::new();
        let nobody = BTreeSet::new();
        let want = |desired| Want {
            per_replica: QUARTER,
            desired,
            current: &none,
            waiting_on: &nobody,
        };
        let placed = place(&want(3), &mut rooms.clone());
        assert_eq!(
            placed,
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)].into()
        );
        // 10 asked, room for 4 + 4 + 2.
        let placed = place(&want(12), &mut rooms);
        assert_eq!(
            placed,
            [("a".into(), 4), ("b".into(), 4), ("c".into(), 2)].into()
        );
        assert!(
            rooms
                .values()
                .all(|room| room.reserved.cpu_millis <= room.capacity.cpu_millis)
        );
    }

    #[test]
    fn a_dead_nodes_replicas_move_and_removal_takes_from_the_fullest() {
        let mut live = rooms(&[("a", 1000), ("c", 1000)]);
        // b died with two replicas; a has one (reserved already counted in its room).
        live.get_mut("a").unwrap().add(QUARTER);
        let current = [("a".into(), 1), ("b".into(), 2)].into();
        let nobody = BTreeSet::new();
        let want = Want {
            per_replica: QUARTER,
            desired: 3,
            current: &current,
            waiting_on: &nobody,
        };
        // b's two go to c first (fewest of the service), then a and c tie and the name
        // decides.
        let placed = place(&want, &mut live);
        assert_eq!(placed, [("a".into(), 2), ("c".into(), 1)].into());
        assert_eq!(live["a"].reserved.cpu_millis, 500);
        let fewer = Want {
            desired: 2,
            current: &placed,
            ..want
        };
        assert_eq!(
            place(&fewer, &mut live),
            [("a".into(), 1), ("c".into(), 1)].into()
        );
        assert_eq!(live["a"].reserved.cpu_millis, 250);
        assert_eq!(live["c"].reserved.cpu_millis, 250);
    }

    #[test]
    fn scale_from_zero_prefers_the_node_where_a_request_waits() {
        let mut rooms = rooms(&[("a", 1000), ("b", 1000), ("c", 1000)]);
        let none = BTreeMap::new();
        let waiting: BTreeSet<String> = ["c".to_owned()].into();
        let want = Want {
            per_replica: QUARTER,
            desired: 1,
            current: &none,
            waiting_on: &waiting,
        };
        assert_eq!(place(&want, &mut rooms), [("c".into(), 1)].into());
    }
}
