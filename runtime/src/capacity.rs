//! The node's capacity and the reservations replicas hold against it.
//!
//! `resource_allocation = performance_need / resource_limit`, in the seed's words: a
//! replica reserves its service's memory and cpu requests, and a request that does
//! not fit in what is left is refused (at deploy) or waits (when scaling). A
//! [`Reservation`] gives its share back when dropped, so a replica cannot leak
//! capacity however it ends.

use std::sync::{Arc, Mutex};

/// What a replica asks of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory, in bytes.
    pub memory: u64,
    /// CPU, in millicores.
    pub cpu_millis: u64,
}

impl Resources {
    /// `self` times `n`.
    pub fn times(self, n: u64) -> Resources {
        Resources {
            memory: self.memory.saturating_mul(n),
            cpu_millis: self.cpu_millis.saturating_mul(n),
        }
    }

    fn fits_in(self, free: Resources) -> bool {
        self.memory <= free.memory && self.cpu_millis <= free.cpu_millis
    }

    fn minus(self, other: Resources) -> Resources {
        Resources {
            memory: self.memory.saturating_sub(other.memory),
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
        }
    }

    fn plus(self, other: Resources) -> Resources {
        Resources {
            memory: self.memory.saturating_add(other.memory),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
        }
    }
}

/// Why something does not fit, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "needs {} memory and {}m cpu, but the node has {} memory and {}m cpu of which {} memory and {}m cpu are reserved, leaving {} memory and {}m cpu free",
    bytes(asked.memory), asked.cpu_millis, bytes(capacity.memory), capacity.cpu_millis,
    bytes(reserved.memory), reserved.cpu_millis, bytes(free.memory), free.cpu_millis
)]
pub struct Shortfall {
    /// What was asked.
    pub asked: Resources,
    /// The node's capacity.
    pub capacity: Resources,
    /// What is reserved.
    pub reserved: Resources,
    /// What is free (counting any credit the caller was given).
    pub free: Resources,
}

fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, unit) in UNITS {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{suffix}", n / unit);
        }
    }
    for (suffix, unit) in UNITS {
        if n >= unit {
            return format!("{:.1}{suffix}", n as f64 / unit as f64);
        }
    }
    format!("{n}")
}

/// The node's capacity and what is reserved of it. Shared by every replica pool.
#[derive(Debug)]
pub struct Capacity {
    total: Resources,
    reserved: Mutex<Resources>,
}

impl Capacity {
    /// A node with `total` capacity.
    pub fn new(total: Resources) -> Arc<Capacity> {
        Arc::new(Capacity {
            total,
            reserved: Mutex::new(Resources::default()),
        })
    }

    /// Capacity from the machine: `memory_fraction` of physical memory and every core.
    pub fn detect(memory_fraction: f64) -> Resources {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory = physical_memory().unwrap_or(1 << 30);
        Resources {
            memory: (memory as f64 * memory_fraction) as u64,
            cpu_millis: cores * 1000,
        }
    }

    /// The node's total capacity.
    pub fn total(&self) -> Resources {
        self.total
    }

    /// What replicas hold now.
    pub fn reserved(&self) -> Resources {
        *self.lock()
    }

    /// Checks whether `asked` fits, counting `credit` (reservations about to be
    /// released, such as the replicas of the revision being replaced) as free.
    pub fn admit(&self, asked: Resources, credit: Resources) -> Result<(), Shortfall> {
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
    pub fn reserve(self: &Arc<Self>, asked: Resources) -> Result<Reservation, Shortfall> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.reserved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A share of the node's capacity, given back on drop.
#[derive(Debug)]
pub struct Reservation {
    capacity: Arc<Capacity>,
    held: Resources,
}

impl Reservation {
    /// What this reservation holds.
    pub fn held(&self) -> Resources {
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
        let capacity = Capacity::new(Resources {
            memory: 256 << 20,
            cpu_millis: 1000,
        });
        let replica = Resources {
            memory: 64 << 20,
            cpu_millis: 250,
        };
        let held: Vec<_> = (0..4).map(|_| capacity.reserve(replica).unwrap()).collect();
        let shortfall = capacity.reserve(replica).unwrap_err();
        assert_eq!(
            shortfall.to_string(),
            "needs 64Mi memory and 250m cpu, but the node has 256Mi memory and 1000m cpu \
             of which 256Mi memory and 1000m cpu are reserved, leaving 0 memory and 0m cpu free"
        );
        assert!(capacity.admit(replica.times(2), replica.times(2)).is_ok());
        drop(held);
        assert_eq!(capacity.reserved(), Resources::default());
        assert!(capacity.reserve(replica.times(4)).is_ok());
    }
}
