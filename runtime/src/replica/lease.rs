//! What a request holds of a replica while its guest runs: a [`Lease`], which lends the
//! executor the replica's kept instance and cpu throttle ([`Checkout`]) and gives the slot back
//! to the pool when dropped.
//!
//! **Invariant:** a request holds its lease until its guest has finished, not merely answered
//! (the executor drops it last), so a replica's concurrency counts guests still streaming.

use std::sync::Arc;

use tokio::time::Instant;

use super::pool::ReplicaPool;
use crate::cpu::GuestCpu;
use crate::exec::{Checkout, HttpInstance};
use crate::sandbox::CpuThrottle;

/// A replica slot handed to a request: by the request that freed it, or taken directly.
pub(super) struct Grant {
    pub(super) replica_id: u64,
    pub(super) instance: Option<HttpInstance>,
    pub(super) throttle: Option<Arc<CpuThrottle>>,
}

/// A replica slot held by one request; released when dropped.
pub(crate) struct Lease {
    pool: Arc<ReplicaPool>,
    replica_id: u64,
    started: Instant,
    instance: Option<HttpInstance>,
    throttle: Option<Arc<CpuThrottle>>,
}

impl Lease {
    /// The replica the request runs on.
    pub(super) fn replica_id(&self) -> u64 {
        self.replica_id
    }

    pub(super) fn new(pool: Arc<ReplicaPool>, grant: Grant, started: Instant) -> Lease {
        Lease {
            pool,
            replica_id: grant.replica_id,
            started,
            instance: grant.instance,
            throttle: grant.throttle,
        }
    }
}

impl Checkout for Lease {
    fn take_instance(&mut self) -> Option<HttpInstance> {
        self.instance.take()
    }

    fn throttle(&self) -> Option<Arc<CpuThrottle>> {
        self.throttle.clone()
    }

    fn cpu(&self) -> Arc<GuestCpu> {
        self.pool.guest_cpu()
    }

    fn replica_id(&self) -> u64 {
        self.replica_id
    }

    /// Keeps a healthy instance for the replica's next request, unless the replica does not
    /// keep instances or this one has served its `max_requests`.
    fn keep(&mut self, instance: HttpInstance) {
        let spec = self.pool.replica_spec();
        if spec.reuse_instances && instance.served < spec.max_requests {
            self.instance = Some(instance);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool
            .release(self.replica_id, self.instance.take(), self.started);
    }
}
