//! The wasmtime side of shoal: compile, classify, cache, sandbox and execute guests.
//!
//! This crate narrows wasmtime to what shoal needs, the way `spin-core` does for Spin:
//! one async [`Runtime`] owning the `Engine`, the linkers and an epoch ticker; a
//! [`Runtime::compile`] that validates a module, tells a `wasi:http` component from a
//! WASI preview1 command, and caches the machine code on disk; and a [`Service`] that
//! turns an `http::Request` into an `http::Response` inside a sandbox, with the
//! service's [`SandboxLimits`] enforced; [`ReplicaPool`] runs a service as replicas that
//! reserve node capacity and scale with load.
//!
//! The engine-side types have names of their own ([`GuestKind`], [`SandboxLimits`],
//! [`ReplicaResources`], [`ScaleSettings`]): the node converts the spec users write into them
//! in one place.
//!
//! # Layout
//! Imports run one way: `sandbox` ← `exec` ← `service` ← `replica`.
//! - `engine.rs`: [`RuntimeConfig`], [`Runtime`], the choice of allocator and the epoch ticker;
//!   `address_space.rs`: whether pooling's reservation fits, asked in a child with a deadline.
//! - `artifact.rs`: [`GuestKind`], [`Compiled`], linking, the durable artifact cache.
//! - `compile.rs` (feature `compiler`): compiling uploads. Without it the runtime serves what
//!   the cache holds. `tiers.rs`: compiling in tiers, Winch first and Cranelift in the
//!   background, with the baseline tier's engine.
//! - `precompiled.rs`: packages of machine code compiled for another machine
//!   ([`precompile`]), checked and installed ([`Runtime::install`]) on one without a compiler.
//! - `cpu.rs`: the node's [`CpuScheduler`], which shares the CPU between services by weight,
//!   in slots, measured in thread CPU time.
//! - `sandbox/`: the leaf: [`SandboxLimits`], metering of memory, fuel and cpu, bounded
//!   pipes, the one function that classifies guest failures.
//! - `exec/`: the executors, `http.rs` for `wasi:http/incoming-handler` components and
//!   `cgi.rs` for WASI preview1 commands (CGI/1.1, like WAGI), and the `Checkout` trait
//!   through which they borrow from a replica without naming the pool.
//! - `service.rs`: [`Service`], a compiled module bound to a name, env and limits.
//! - `replica/`: [`Capacity`], [`ReplicaPool`] with its queue, lease and scaling loop, and
//!   the KPA-shaped arithmetic behind scaling decisions.
//! - `metrics.rs`: [`Histogram`], the timings a pool keeps per service, read whole by
//!   Prometheus and over the last minute by the status.
//!
//! The crate knows nothing of axum, JSON or redb: callers hand it bytes and requests.

#![warn(missing_docs)]

mod address_space;
mod artifact;
#[cfg(feature = "compiler")]
mod compile;
mod cpu;
mod engine;
mod exec;
mod kernel;
mod logs;
mod metrics;
mod precompiled;
mod replica;
mod sandbox;
mod service;
#[cfg(feature = "compiler")]
mod tiers;

pub use self::artifact::{Compiled, GuestKind, Tier};
pub use self::cpu::{
    CPU_WINDOW, CpuScheduler, CpuShare, CpuUsage, DEFAULT_WEIGHT_MILLIS, SATURATED_WINDOW,
};
pub use self::engine::{AllocatorKind, CompileStats, Runtime, RuntimeConfig, TierStats};
pub use self::exec::{RequestContext, ServiceConfig};
pub use self::kernel::TickerPriority;
pub use self::logs::{GuestLog, LogLine, Stream};
pub use self::metrics::{BUCKETS, Histogram, HistogramSnapshot, Recent};
#[cfg(feature = "compiler")]
pub use self::precompiled::precompile;
pub use self::precompiled::{HOST_TARGET, Precompiled, WASMTIME_VERSION, is_precompiled};
pub use self::replica::{
    Autoscaler, Capacity, Decision, EventSink, Fault, FaultReason, HeldDemand, Occupancy,
    PoolMetrics, PoolStatus, ReplicaPool, ReplicaResources, ReplicaSpec, ReplicaState, Reservation,
    ScaleEvent, ScaleReason, ScaleSettings, Served, Shortfall,
};
pub use self::sandbox::{BoxError, ResponseBody, SandboxLimits};
pub use self::service::Service;

use std::time::Duration;

/// Where the background compiler reads a module's bytes when its turn comes
/// ([`Runtime::compile_tiered`]): queued modules are not held in memory meanwhile.
pub type ModuleSource = Box<dyn FnOnce() -> anyhow::Result<Vec<u8>> + Send>;

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
    /// The module would have to be compiled, and this build has no compiler.
    #[error("{0}")]
    NoCompiler(String),
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
    #[error("guest did not finish within the timeout of {}", humantime::format_duration(*.limit))]
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
    /// A precompiled package was refused: damaged, or compiled for another target, wasmtime
    /// or engine; the message says which.
    #[error("{0}")]
    Precompiled(String),
    /// Compiled code could not be written to the data directory (it is full, say).
    #[error("cannot store the compiled code: {0}")]
    Storage(String),
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
            Error::NoCompiler(_) => "no-compiler",
            Error::Precompiled(_) => "precompiled-refused",
            Error::Storage(_) => "storage",
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
