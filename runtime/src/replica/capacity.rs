//! The node's capacity and the reservations replicas hold against it.
//!
//! `resource_allocation = performance_need / resource_limit`, in the seed's words: a
//! replica reserves its service's memory and cpu requests, and a request that does
//! not fit in what is left is refused (at deploy) or waits (when scaling). A
//! [`Reservation`] gives its share back when dropped, so a replica cannot leak
//! capacity however it ends.

use std::sync::{Arc, Mutex};

/// What a replica asks of the node, in the engine's units: bytes and millicores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaResources {
    /// Memory, in bytes.
    pub memory: u64,
    /// CPU, in millicores.
    pub cpu_millis: u64,
}

impl ReplicaResources {
    /// `self` times `n`.
    pub fn times(self, n: u64) -> ReplicaResources {
        ReplicaResources {
            memory: self.memory.saturating_mul(n),
            cpu_millis: self.cpu_millis.saturating_mul(n),
        }
    }

    fn fits_in(self, free: ReplicaResources) -> bool {
        self.memory <= free.memory && self.cpu_millis <= free.cpu_millis
    }

    fn minus(self, other: ReplicaResources) -> ReplicaResources {
        ReplicaResources {
            memory: self.memory.saturating_sub(other.memory),
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
        }
    }

    fn plus(self, other: ReplicaResources) -> ReplicaResources {
        ReplicaResources {
            memory: self.memory.saturating_add(other.memory),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
        }
    }
}

/// Why something does not fit, with the numbers; the node says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What was asked.
    pub asked: ReplicaResources,
    /// The node's capacity.
    pub capacity: ReplicaResources,
    /// What is reserved.
    pub reserved: ReplicaResources,
    /// What is free (counting any credit the caller was given).
    pub free: ReplicaResources,
}

/// The node's capacity and what is reserved of it. Shared by every replica pool.
#[derive(Debug)]
pub struct Capacity {
    total: ReplicaResources,
    reserved: Mutex<ReplicaResources>,
}

impl Capacity {
    /// A node with `total` capacity.
    pub fn new(total: ReplicaResources) -> Arc<Capacity> {
        Arc::new(Capacity {
            total,
            reserved: Mutex::new(ReplicaResources::default()),
        })
    }

    /// Capacity from the machine: `memory_fraction` of physical memory and every core.
    pub fn detect(memory_fraction: f64) -> ReplicaResources {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory = physical_memory().unwrap_or(1 << 30);
        ReplicaResources {
            memory: (memory as f64 * memory_fraction) as u64,
            cpu_millis: cores * 1000,
        }
    }

    /// The node's total capacity.
    pub fn total(&self) -> ReplicaResources {
        self.total
    }

    /// What replicas hold now.
    pub fn reserved(&self) -> ReplicaResources {
        *self.lock()
    }

    /// Checks whether `asked` fits, counting `credit` (reservations about to be
    /// released, such as the replicas of the revision being replaced) as free.
    pub fn admit(
        &self,
        asked: ReplicaResources,
        credit: ReplicaResources,
    ) -> Result<(), Shortfall> {
        let reserved = *self.lock();
        let free = self.total.minus(reserved).plus(credit);
        if asked.fits_in(free) {
            Ok(())
        } else {
            Err(Shortfall {
                asked,
                capacity: self.total,
                reserved,
                free,
            })
        }
    }

    /// Reserves `asked` if it fits.
    pub fn reserve(self: &Arc<Self>, asked: ReplicaResources) -> Result<Reservation, Shortfall> {
        let mut reserved = self.lock();
        let free = self.total.minus(*reserved);
        if !asked.fits_in(free) {
            return Err(Shortfall {
                asked,
                capacity: self.total,
                reserved: *reserved,
                free,
            });
        }
        *reserved = reserved.plus(asked);
        Ok(Reservation {
            capacity: self.clone(),
            held: asked,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaResources> {
        self.reserved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A share of the node's capacity, given back on drop.
#[derive(Debug)]
pub struct Reservation {
    capacity: Arc<Capacity>,
    held: ReplicaResources,
}

impl Reservation {
    /// What this reservation holds.
    pub fn held(&self) -> ReplicaResources {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.capacity.lock();
        *reserved = reserved.minus(self.held);
    }
}

fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_returned_on_drop_and_shortfalls_have_numbers() {
        let capacity = Capacity::new(ReplicaResources {
            memory: 256 << 20,
            cpu_millis: 1000,
        });
        let replica = ReplicaResources {
            memory: 64 << 20,
            cpu_millis: 250,
        };
        let held: Vec<_> = (0..4).map(|_| capacity.reserve(replica).unwrap()).collect();
        let shortfall = capacity.reserve(replica).unwrap_err();
        assert_eq!(
            shortfall,
            Shortfall {
                asked: replica,
                capacity: capacity.total(),
                reserved: capacity.total(),
                free: ReplicaResources::default(),
            }
        );
        assert!(capacity.admit(replica.times(2), replica.times(2)).is_ok());
        drop(held);
        assert_eq!(capacity.reserved(), ReplicaResources::default());
        assert!(capacity.reserve(replica.times(4)).is_ok());
    }
}
