//! The wasmtime side of shoal: compile, classify, cache, sandbox and execute guests.
//!
//! This crate narrows wasmtime to what shoal needs, the way `spin-core` does for Spin:
//! one async [`Runtime`] owning the `Engine`, the linkers and an epoch ticker; a
//! [`Runtime::compile`] that validates a module, tells a `wasi:http` component from a
//! WASI preview1 command, and caches the machine code on disk; and a [`Service`] that
//! turns an `http::Request` into an `http::Response` inside a sandbox, with the
//! service's [`Limits`] enforced; [`ReplicaPool`] runs a service as replicas that
//! reserve node capacity and scale with load.
//!
//! # Layout
//! - `engine`: [`RuntimeConfig`], [`Runtime`], the allocator probe and the epoch ticker.
//! - `compile`: classification and the durable artifact cache.
//! - `limits`: [`Limits`] and the per-store memory limiter.
//! - `pipe`: bounded in-memory stdout/stderr for guests.
//! - `proxy`: the executor for `wasi:http/incoming-handler` components.
//! - `cgi`: the executor for WASI preview1 commands, speaking CGI/1.1 like WAGI.
//! - `service`: [`Service`], a compiled module bound to a name, env and limits, and
//!   the per-store metering of memory, fuel and cpu.
//! - `capacity`: the node's [`Capacity`] and the [`Reservation`]s replicas hold.
//! - `pool`: [`ReplicaPool`], a service's replicas, queue and scaling loop.
//! - `autoscale`: the KPA-shaped arithmetic behind scaling decisions.
//! - `throttle`: cpu limits through fuel, and the fuel-rate calibration.
//!
//! The crate knows nothing of axum, JSON or redb: callers hand it bytes and requests.

#![warn(missing_docs)]

mod autoscale;
mod capacity;
mod cgi;
mod compile;
mod engine;
mod limits;
mod pipe;
mod pool;
mod proxy;
mod service;
mod throttle;

pub use autoscale::{Decision, ScaleSettings};
pub use capacity::{Capacity, Reservation, Resources, Shortfall};
pub use compile::{Compiled, ModuleKind};
pub use engine::{AllocatorKind, CompileStats, Runtime, RuntimeConfig};
pub use limits::Limits;
pub use pool::{EventSink, Isolation, PoolStatus, ReplicaPool, ReplicaSpec, ScaleEvent, Served};
pub use service::{BoxError, RequestContext, ResponseBody, Service, ServiceConfig};
pub use throttle::calibrate as calibrate_fuel_rate;

use std::time::Duration;

/// Everything the runtime reports that a caller may want to branch on.
///
/// Guest faults are values here, never panics: the host keeps serving whatever a
/// guest does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a module shoal can run; the message says what was found
    /// and what is accepted.
    #[error("{0}")]
    InvalidModule(String),
    /// The guest trapped (an `unreachable`, a panic, an out-of-bounds access...).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest tried to grow its linear memory past the service's limit.
    #[error("guest exceeded its memory limit of {limit} bytes (tried to reach {requested} bytes)")]
    MemoryLimit {
        /// The limit, in bytes.
        limit: u64,
        /// The total the guest asked for, in bytes.
        requested: u64,
    },
    /// The guest used all the fuel a request may burn.
    #[error("guest ran out of fuel: the budget is {budget} units per request")]
    OutOfFuel {
        /// The per-request fuel budget.
        budget: u64,
    },
    /// The guest did not finish within the service's timeout.
    #[error("guest did not finish within the timeout of {}", humanize(*.limit))]
    Timeout {
        /// The per-request wall-clock limit.
        limit: Duration,
    },
    /// A CGI guest wrote something that is not a CGI response.
    #[error("malformed CGI output: {0}")]
    BadCgiOutput(String),
    /// A CGI guest exited with a non-zero status.
    #[error("guest exited with status {0}")]
    Exit(i32),
    /// The guest wrote more than the service's response limit.
    #[error("guest response exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The request body is larger than the service accepts.
    #[error("request body exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Every instance slot of the pooling allocator is taken: the node is at capacity.
    #[error("the node is at capacity: {0}")]
    Overloaded(String),
    /// Anything else: a host-side failure, never the guest's doing.
    #[error("internal error: {0:#}")]
    Internal(#[source] anyhow::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable, kebab-case name for the outcome, for logs and response headers.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidModule(_) => "invalid-module",
            Error::Trap(_) => "trap",
            Error::MemoryLimit { .. } => "memory-limit",
            Error::OutOfFuel { .. } => "out-of-fuel",
            Error::Timeout { .. } => "timeout",
            Error::BadCgiOutput(_) => "bad-cgi-output",
            Error::Exit(_) => "guest-exit",
            Error::ResponseTooLarge { .. } => "response-too-large",
            Error::RequestTooLarge { .. } => "request-too-large",
            Error::Overloaded(_) => "overloaded",
            Error::Internal(_) => "internal",
        }
    }
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}
