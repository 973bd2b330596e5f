//! What the node and each service are doing, as typed views: [`NodeStatus`] and
//! [`ServiceStatus`], which the management API serializes (and a metrics endpoint or a
//! dashboard can read the same way), and [`WasmService`], which discovery lists.
//!
//! The seed's `resource_allocation = performance_need / resource_limit` is [`Allocation`]:
//! what is reserved (or asked) against the node's capacity.

use std::time::{Duration, Instant};

use serde::Serialize;
use shoal_registry::ServiceRecord;
use shoal_runtime::{CPU_WINDOW, PoolMetrics, PoolStatus, ReplicaResources};
use shoal_spec::{ByteSize, Cpu, Limits, ServiceName};

use crate::{Deployed, Error, Node, Result, convert};

/// The node's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// shoal's version.
    pub version: &'static str,
    /// The gateway's URL, once it listens.
    pub gateway: Option<String>,
    /// `Host: {service}.{domain}` routes to `{service}`.
    pub domain: String,
    /// Where the node keeps its local state.
    pub data_dir: std::path::PathBuf,
    /// The instance allocator in use: `pooling` or `on-demand`.
    pub allocator: &'static str,
    /// Why: what pooling reserves and whether it fits, or what refused it.
    pub allocator_reason: String,
    /// The target triple this build runs on: what `shoal compile --target` compiles for.
    pub target: &'static str,
    /// Wasm services running.
    pub services: usize,
    /// Gateway requests being served.
    pub in_flight: u64,
    /// Replicas of every service.
    pub replicas: u32,
    /// What replicas may reserve.
    pub capacity: ResourceAmounts,
    /// What they reserve.
    pub reserved: ResourceAmounts,
    /// What is left.
    pub free: ResourceAmounts,
    /// Reserved against capacity.
    pub resource_allocation: Allocation,
    /// Modules stored.
    pub modules: usize,
    /// The store's change index, as applied here.
    pub change_index: u64,
    /// The largest module accepted, in bytes.
    pub max_module_size: u64,
    /// How much compiling the node has done.
    pub compile: CompileCounts,
    /// The CPU its guests use.
    pub cpu: NodeCpu,
    /// The limits a spec gets for what it leaves out.
    pub default_limits: Limits,
}

/// Memory and cpu, as quantities.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResourceAmounts {
    /// Memory.
    pub memory: ByteSize,
    /// Cpu.
    pub cpu: Cpu,
}

/// `resource_allocation = performance_need / resource_limit`: a share of the node, per
/// resource, from 0 to 1.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Allocation {
    /// Of memory.
    pub memory: f64,
    /// Of cpu.
    pub cpu: f64,
}

/// The CPU the node's guests use, measured in thread CPU time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeCpu {
    /// Guests that may compute at once: one per core.
    pub slots: usize,
    /// CPU seconds every guest has used since the node started.
    pub used_seconds: f64,
    /// Cores they used on average over the recent window.
    pub recent_cores: f64,
    /// That, as a share of the node's cores (0 to 1).
    pub share: f64,
    /// The recent window.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub window: Duration,
}

/// The CPU a service's guests use, and its weight when they compete for it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServiceCpu {
    /// Its weight: the cpu its replicas request (or the default weight for each).
    pub weight: Cpu,
    /// CPU seconds its guests have used since its pool started.
    pub used_seconds: f64,
    /// Cores they used on average over the recent window.
    pub recent_cores: f64,
    /// That, as a share of the node's cores (0 to 1).
    pub share: f64,
}

/// Compiles and artifact-cache hits since the node started.
#[derive(Debug, Clone, Serialize)]
pub struct CompileCounts {
    /// Modules compiled.
    pub compiled: u64,
    /// Modules loaded from the artifact cache.
    pub cache_hits: u64,
    /// Cached artifacts found unusable and passed over.
    pub cache_rejected: u64,
    /// `tiered` (Winch first, Cranelift in the background), `optimized` (Cranelift only) or
    /// `baseline` (Winch only, the background compiler held).
    pub mode: &'static str,
    /// Why the node does not compile in tiers, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    /// Compiles with Winch, and their times.
    pub baseline: TierTimes,
    /// Compiles with Cranelift (in the foreground or the background), and their times.
    pub optimized: TierTimes,
    /// Modules waiting for Cranelift in the background, or being compiled by it.
    pub optimizing: u64,
}

/// The compiles of one tier since the node started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TierTimes {
    /// How many.
    pub compiles: u64,
    /// Their wall-clock time in all, in seconds.
    pub seconds: f64,
    /// The last one's, in milliseconds.
    pub last_ms: Option<f64>,
}

impl From<shoal_runtime::TierStats> for TierTimes {
    fn from(stats: shoal_runtime::TierStats) -> TierTimes {
        TierTimes {
            compiles: stats.compiles,
            seconds: stats.seconds,
            last_ms: stats.last_seconds.map(|s| s * 1000.0),
        }
    }
}

/// What a service's scaling acts on.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The service.
    pub name: String,
    /// The revision running.
    pub revision: u64,
    /// `per-request` or `reuse`.
    pub isolation: String,
    /// Replica counts.
    pub replicas: ReplicaCounts,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests waiting for a replica.
    pub queued: u32,
    /// `load = request_count / container_count`, and the autoscaler's view of demand.
    pub load: Load,
    /// Request counts.
    pub requests: RequestCounts,
    /// Latency over the last minute, queueing included, in milliseconds.
    pub latency_ms: Latency,
    /// What replicas reserve.
    pub resources: ServiceResources,
    /// That, against the node's capacity.
    pub resource_allocation: ServiceAllocation,
    /// The CPU it uses.
    pub cpu: ServiceCpu,
    /// The scale settings in force, defaults filled in (in a cluster: the service's, while
    /// this node runs what the leader placed on it).
    pub scale: ScaleView,
    /// Replicas on each node running any (in a cluster, as each last reported), by node.
    pub nodes: std::collections::BTreeMap<String, u32>,
    /// Every replica, this node's first (oldest first), then each peer's, which report only
    /// how many they run.
    pub running: Vec<RunningReplica>,
    /// What this node's pool measured since it started: the histograms behind `latency_ms`
    /// and `requests.per_second`, exported whole by `GET /metrics`.
    #[serde(skip)]
    pub metrics: PoolMetrics,
}

/// One replica of a service, as the Kubernetes API shows it as a pod.
#[derive(Debug, Clone, Serialize)]
pub struct RunningReplica {
    /// The node running it.
    pub node: String,
    /// Its number among the replicas of the service's current pool on that node; on a peer,
    /// its place among what the peer reported.
    pub id: u64,
    /// When it started, in milliseconds since the Unix epoch; unknown for a peer's.
    pub started_unix_ms: Option<u64>,
    /// Requests it is serving (on a peer: unknown, 0).
    pub in_flight: u32,
    /// Requests whose guest faulted on it, as restarts of its container (on a peer: 0).
    pub restarts: u32,
    /// The newest fault: `OOMKilled` for a memory-limit kill, else `Error`.
    pub last_fault: Option<FaultView>,
}

/// A guest fault on a replica.
#[derive(Debug, Clone, Serialize)]
pub struct FaultView {
    /// `OOMKilled` or `Error`, as Kubernetes names a container's termination.
    pub reason: &'static str,
    /// The error, in words.
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// A service's replica counts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReplicaCounts {
    /// Replicas running.
    pub current: u32,
    /// Replicas the autoscaler wants.
    pub desired: u32,
    /// The fewest allowed.
    pub min: u32,
    /// The most allowed.
    pub max: u32,
    /// With a request in flight.
    pub busy: u32,
    /// With none.
    pub idle: u32,
}

/// Demand, as the autoscaler sees it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    /// Requests in flight per replica.
    pub per_replica: f64,
    /// Average demand over the stable window.
    pub stable_demand: f64,
    /// Average demand over the panic window.
    pub panic_demand: f64,
    /// Whether a burst put the autoscaler in panic mode.
    pub panicking: bool,
}

/// A service's request counts since its pool started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RequestCounts {
    /// Answered.
    pub total: u64,
    /// Completed per second over the last ten seconds.
    pub per_second: f64,
    /// That found no replica and started one.
    pub cold_starts: u64,
    /// Refused: the queue was full or the wait too long.
    pub rejected: u64,
}

/// Latency percentiles, in milliseconds; `None` before any request.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// What a service's replicas reserve.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceResources {
    /// Each replica.
    pub per_replica: ResourceAmounts,
    /// All of them.
    pub reserved: ResourceAmounts,
    /// The cpu limit of each replica, if any.
    pub cpu_limit: Option<Cpu>,
}

/// A service's share of the node.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServiceAllocation {
    /// Of each replica.
    pub per_replica: Allocation,
    /// Of all its replicas.
    pub total: Allocation,
}

/// Scale settings as users write them.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleView {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests per replica at once.
    pub concurrency: u32,
    /// Target utilisation, in percent.
    pub target: u32,
    /// The stable window.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub stable_window: Duration,
    /// The panic window.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub panic_window: Duration,
    /// The scale-down delay.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub scale_down_delay: Duration,
    /// The idle timeout before scaling to zero.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub idle_timeout: Duration,
    /// Requests that may wait.
    pub queue_limit: u32,
    /// How long a request may wait.
    #[serde(with = "shoal_spec::quantity::duration")]
    pub queue_timeout: Duration,
}

/// A wasm service this node runs, as discovery lists it.
#[derive(Debug, Clone)]
pub struct WasmService {
    /// The record it runs.
    pub record: ServiceRecord,
    /// `http` or `cgi`.
    pub kind: shoal_spec::ModuleKind,
    /// Whether its machine code came from the artifact cache.
    pub from_cache: bool,
    /// The tier of the machine code its new instances start on.
    pub tier: shoal_runtime::Tier,
    /// Replicas running.
    pub replicas: u32,
}

pub(crate) fn amounts(resources: ReplicaResources) -> ResourceAmounts {
    let (memory, cpu) = convert::quantities(resources);
    ResourceAmounts { memory, cpu }
}

/// What is left of `capacity` once `reserved` is taken.
pub(crate) fn free(capacity: ReplicaResources, reserved: ReplicaResources) -> ReplicaResources {
    ReplicaResources {
        memory: capacity.memory.saturating_sub(reserved.memory),
        cpu_millis: capacity.cpu_millis.saturating_sub(reserved.cpu_millis),
    }
}

/// `need / capacity`, per resource.
pub(crate) fn allocation(need: ReplicaResources, capacity: ReplicaResources) -> Allocation {
    let ratio = |need: u64, capacity: u64| {
        if capacity == 0 {
            0.0
        } else {
            need as f64 / capacity as f64
        }
    };
    Allocation {
        memory: ratio(need.memory, capacity.memory),
        cpu: ratio(need.cpu_millis, capacity.cpu_millis),
    }
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

impl Node {
    /// The node's numbers.
    pub async fn status(&self) -> Result<NodeStatus> {
        let modules = self.modules().await?.len();
        let runtime = &self.inner.runtime;
        let stats = runtime.compile_stats();
        let deployed = self.inner.deployed.load();
        let capacity = self.inner.capacity.total();
        let reserved = self.inner.capacity.reserved();
        Ok(NodeStatus {
            version: env!("CARGO_PKG_VERSION"),
            gateway: self.gateway_addr().map(|addr| format!("http://{addr}")),
            domain: self.inner.config.domain.clone(),
            data_dir: self.inner.config.data_dir.clone(),
            allocator: runtime.allocator().as_str(),
            allocator_reason: runtime.allocator_reason().to_owned(),
            target: shoal_runtime::HOST_TARGET,
            services: deployed.len(),
            in_flight: self.inner.gateway.in_flight(),
            replicas: deployed
                .values()
                .map(|deployed| deployed.pool.replicas())
                .sum(),
            capacity: amounts(capacity),
            reserved: amounts(reserved),
            free: amounts(free(capacity, reserved)),
            resource_allocation: allocation(reserved, capacity),
            modules,
            change_index: self.indexes().change,
            max_module_size: self.inner.config.max_module_size,
            compile: CompileCounts {
                compiled: stats.compiled,
                cache_hits: stats.cache_hits,
                cache_rejected: stats.cache_rejected,
                mode: match runtime.tiering() {
                    Ok(()) if runtime.config().hold_optimizing => "baseline",
                    Ok(()) => "tiered",
                    Err(_) => "optimized",
                },
                mode_reason: runtime.tiering().err().map(str::to_owned),
                baseline: stats.baseline.into(),
                optimized: stats.optimized.into(),
                optimizing: stats.optimizing,
            },
            cpu: {
                let scheduler = runtime.scheduler();
                let usage = scheduler.usage(Instant::now());
                NodeCpu {
                    slots: scheduler.slots(),
                    used_seconds: usage.used.as_secs_f64(),
                    recent_cores: usage.cores,
                    share: usage.cores / scheduler.slots() as f64,
                    window: CPU_WINDOW,
                }
            },
            default_limits: Limits::default(),
        })
    }

    /// The numbers a service's scaling acts on; [`Error::NotFound`] for a service this node
    /// does not run.
    pub fn service_status(&self, name: &ServiceName) -> Result<ServiceStatus> {
        let deployed = self.inner.deployed.load();
        let deployed = deployed.get(name).ok_or_else(|| Error::NotFound {
            what: "service",
            key: name.to_string(),
        })?;
        let pool = &deployed.pool;
        let status: PoolStatus = pool.status();
        let per_replica = pool.replica_spec().requests;
        let capacity = self.inner.capacity.total();
        // In a cluster the pool's bounds are what was placed here; the service's own are
        // what users set and see.
        let settings =
            &convert::scale_settings(&deployed.record.spec, &self.inner.config.scale_defaults);
        let spec = &deployed.record.spec;
        let per_replica_load = if status.replicas == 0 {
            0.0
        } else {
            f64::from(status.in_flight) / f64::from(status.replicas)
        };
        Ok(ServiceStatus {
            name: name.to_string(),
            revision: deployed.record.revision,
            isolation: spec.isolation.to_string(),
            replicas: ReplicaCounts {
                current: status.replicas,
                desired: status.desired,
                min: settings.min,
                max: settings.max,
                busy: status.busy,
                idle: status.idle,
            },
            in_flight: status.in_flight,
            queued: status.queued,
            load: Load {
                per_replica: per_replica_load,
                stable_demand: status.stable_demand,
                panic_demand: status.panic_demand,
                panicking: status.panicking,
            },
            requests: RequestCounts {
                total: status.requests,
                per_second: status.request_rate,
                cold_starts: status.cold_starts,
                rejected: status.rejected,
            },
            latency_ms: Latency {
                p50: millis(status.latency_p50),
                p99: millis(status.latency_p99),
            },
            resources: ServiceResources {
                per_replica: amounts(per_replica),
                reserved: amounts(status.reserved),
                cpu_limit: spec.cpu_limit(),
            },
            resource_allocation: ServiceAllocation {
                per_replica: allocation(per_replica, capacity),
                total: allocation(status.reserved, capacity),
            },
            cpu: ServiceCpu {
                weight: Cpu(status.cpu_weight_millis),
                used_seconds: status.cpu.used.as_secs_f64(),
                recent_cores: status.cpu.cores,
                share: status.cpu.cores / self.inner.runtime.scheduler().slots() as f64,
            },
            nodes: self.replicas_by_node(name.as_str(), status.replicas),
            running: self.running_replicas(name.as_str(), &status.members),
            metrics: status.metrics.clone(),
            scale: ScaleView {
                min: settings.min,
                max: settings.max,
                concurrency: settings.concurrency,
                target: settings.target_percent,
                stable_window: settings.stable_window,
                panic_window: settings.panic_window,
                scale_down_delay: settings.scale_down_delay,
                idle_timeout: settings.idle_timeout,
                queue_limit: settings.queue_limit,
                queue_timeout: settings.queue_timeout,
            },
        })
    }

    /// Every replica of `service`: `here`, this node's, then each live peer's.
    fn running_replicas(
        &self,
        service: &str,
        here: &[shoal_runtime::ReplicaState],
    ) -> Vec<RunningReplica> {
        let node = &self.inner.config.node_name;
        let mut running: Vec<RunningReplica> = here
            .iter()
            .map(|replica| RunningReplica {
                node: node.clone(),
                id: replica.id,
                started_unix_ms: Some(unix_ms(replica.started)),
                in_flight: replica.in_flight,
                restarts: replica.restarts,
                last_fault: replica.last_fault.as_ref().map(|fault| FaultView {
                    reason: match fault.reason {
                        shoal_runtime::FaultReason::MemoryLimit => "OOMKilled",
                        shoal_runtime::FaultReason::Error => "Error",
                    },
                    message: fault.message.clone(),
                    at_unix_ms: unix_ms(fault.at),
                }),
            })
            .collect();
        for peer in self.peers_running(service) {
            running.extend((1..=u64::from(peer.replicas)).map(|id| RunningReplica {
                node: peer.node.clone(),
                id,
                started_unix_ms: None,
                in_flight: 0,
                restarts: 0,
                last_fault: None,
            }));
        }
        running
    }

    /// The status of every service this node runs, by name.
    pub fn service_statuses(&self) -> Vec<ServiceStatus> {
        let deployed = self.inner.deployed.load();
        let mut names: Vec<&ServiceName> = deployed.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| self.service_status(name).ok())
            .collect()
    }

    /// The wasm services this node runs, by name.
    pub fn wasm_services(&self) -> Vec<WasmService> {
        let deployed = self.inner.deployed.load();
        let mut services: Vec<WasmService> =
            deployed.values().map(|d| WasmService::of(d)).collect();
        services.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        services
    }

    /// The wasm service `name`, if this node runs it.
    pub fn wasm_service(&self, name: &str) -> Option<WasmService> {
        let name: ServiceName = name.parse().ok()?;
        let deployed = self.inner.deployed.load();
        deployed.get(&name).map(|d| WasmService::of(d))
    }
}

impl WasmService {
    fn of(deployed: &Deployed) -> WasmService {
        WasmService {
            record: deployed.record.clone(),
            kind: convert::module_kind(deployed.pool.service().kind()),
            from_cache: deployed.pool.service().from_cache(),
            tier: deployed.pool.service().tier(),
            replicas: deployed.pool.replicas(),
        }
    }
}

fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
