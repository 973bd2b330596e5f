//! The executors: how a request becomes a guest call, one per kind of module (`http.rs` for
//! wasi:http components, `cgi.rs` for WASI commands run as CGI).
//!
//! An executor never names the replica pool: what it needs from the replica a request runs on
//! (an instance kept from an earlier request, the cpu throttle, somewhere to give a healthy
//! instance back) comes through [`Checkout`], which the pool's lease implements.

pub(crate) mod cgi;
pub(crate) mod http;

use crate::logs::GuestLog;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::cpu::{CpuScheduler, CpuShare, GuestCpu};
use crate::sandbox::{CpuThrottle, SandboxLimits};

pub(crate) use self::http::HttpInstance;

/// How a service runs: its name (for logs), limits, environment and arguments.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// The service's name, used in logs and as `argv[0]`.
    pub name: String,
    /// What each request may consume.
    pub limits: SandboxLimits,
    /// Environment variables the guest sees; nothing of the host's is passed.
    pub env: Vec<(String, String)>,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Where what the guest writes to stdout and stderr is kept (besides the node's log).
    pub log: Arc<GuestLog>,
}

/// Where a request came from and how it was routed, for CGI's variables.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The path prefix the gateway consumed to pick the service (`/name`), or empty
    /// when the service was chosen by `Host`.
    pub script_name: String,
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
}

/// What a request holds of the replica it runs on, for as long as its guest runs; dropping
/// it gives the replica slot back.
pub(crate) trait Checkout: Send + 'static {
    /// The instance the replica kept from an earlier request, if it keeps instances and has
    /// one.
    fn take_instance(&mut self) -> Option<HttpInstance>;
    /// The replica's cpu quota, when the service has a cpu limit.
    fn throttle(&self) -> Option<Arc<CpuThrottle>>;
    /// What this execution runs on: the node's CPU scheduler and the service's share of it.
    fn cpu(&self) -> Arc<GuestCpu>;
    /// The replica's id in its pool, for its log lines; 0 outside a pool.
    fn replica_id(&self) -> u64;
    /// Offers a healthy instance back after a request that succeeded; the replica keeps it or
    /// drops it.
    fn keep(&mut self, instance: HttpInstance);
}

/// A request outside any replica: no kept instance, no throttle, nothing kept, and a CPU of
/// its own.
pub(crate) struct Unpooled;

impl Checkout for Unpooled {
    fn replica_id(&self) -> u64 {
        0
    }

    fn cpu(&self) -> Arc<GuestCpu> {
        GuestCpu::new(
            CpuScheduler::new(1),
            CpuShare::new(crate::cpu::DEFAULT_WEIGHT_MILLIS),
        )
    }

    fn take_instance(&mut self) -> Option<HttpInstance> {
        None
    }

    fn throttle(&self) -> Option<Arc<CpuThrottle>> {
        None
    }

    fn keep(&mut self, _instance: HttpInstance) {}
}
