//! Running a service as replicas: the node's [`Capacity`] they reserve, the [`ReplicaPool`] of
//! each service with its queue and scaling loop, the [`Lease`](lease) a request holds, and the
//! autoscaler's arithmetic.
//!
//! The pool's clock is tokio's, so its logic is tested under a paused clock.

mod autoscale;
mod capacity;
mod lease;
mod pool;

pub use self::autoscale::{Autoscaler, Decision, ScaleSettings};
pub use self::capacity::{Capacity, ReplicaResources, Reservation, Shortfall};
pub use self::pool::{
    EventSink, Fault, FaultReason, HeldDemand, Occupancy, PoolMetrics, PoolStatus, ReplicaPool,
    ReplicaSpec, ReplicaState, ScaleEvent, ScaleReason, Served,
};
