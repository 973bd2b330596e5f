//! The engine: one wasmtime `Engine` per node, its linkers, the epoch ticker and the
//! choice of instance allocator.
//!
//! The pooling allocator is what makes per-request instantiation cheap: slots are
//! reserved once, and with the keep-resident settings below a slot's pages stay mapped
//! between instances, so recycling an instance is a `memset` instead of an `madvise`
//! and the TLB shootdowns that come with returning memory to the kernel. Pooling needs
//! a large virtual address space (terabytes for a thousand 4 GiB memory reservations),
//! which small ARM boards with 39-bit address spaces do not have, so the engine probes
//! for it at start (`address_space.rs`, bounded in time) and falls back to on-demand
//! allocation, reporting which one it uses and why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::address_space::{self, Misfit};
use crate::artifact::{ArtifactCache, Compiled, Linkers};
use crate::cpu::{CpuScheduler, SATURATED_WINDOW};
use crate::kernel::{self, TickerPriority};

/// How the runtime is set up. Plain data with sensible defaults; the binary maps its
/// flags onto it.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are cached; `None` keeps nothing on disk.
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch ticks while the CPU is not contended. Guests yield to tokio at
    /// every tick, so this bounds how late a timeout can fire against a guest spinning in a
    /// loop.
    pub epoch_tick: Duration,
    /// How often it ticks while the CPU is contended (a guest that had already run through a
    /// tick ran through another with every slot taken, within the last [`SATURATED_WINDOW`]):
    /// a tick is then a computing guest's CPU slice.
    pub busy_epoch_tick: Duration,
    /// How often it ticks while, besides, requests that compute little are served (one
    /// finished within its first tick in the last [`SATURATED_WINDOW`]): with every worker
    /// running a guest, a tick is how long a connection waits to be looked at, so the guests
    /// that compute get short slices while light requests keep arriving, and only then.
    pub wake_epoch_tick: Duration,
    /// Guests that may compute at once: the CPU scheduler's slots. Default: one per core,
    /// which is how many worker threads tokio starts.
    pub cpu_slots: usize,
    /// Try the pooling allocator (falls back to on-demand if it cannot be reserved).
    pub pooling: bool,
    /// Instances that may be alive at once when pooling.
    pub max_instances: u32,
    /// The largest linear memory any one instance may have, in bytes; service memory
    /// limits must not exceed it.
    pub max_memory_per_instance: u64,
    /// Compile new modules in tiers ([`Runtime::compile_tiered`]): Winch first, Cranelift in
    /// the background. Off: every upload waits for Cranelift.
    pub tiering: bool,
    /// With tiering, start with the background compiler held
    /// ([`Runtime::pause_optimizing`]): modules stay on Winch's code. For measuring the
    /// baseline tier.
    pub hold_optimizing: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            busy_epoch_tick: Duration::from_millis(1),
            wake_epoch_tick: Duration::from_micros(100),
            cpu_slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pooling: true,
            max_instances: 1000,
            max_memory_per_instance: 4 << 30,
            tiering: true,
            hold_optimizing: false,
        }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Slots reserved up front and recycled, pages kept resident.
    Pooling,
    /// An `mmap` per instance: works everywhere, slower per request.
    OnDemand,
}

impl AllocatorKind {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocatorKind::Pooling => "pooling",
            AllocatorKind::OnDemand => "on-demand",
        }
    }
}

/// How much compiling the runtime has done: restarts should be all cache hits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CompileStats {
    /// Modules made runnable by compiling their wasm bytes since the runtime started (in
    /// either tier; a module compiled in both counts once).
    pub compiled: u64,
    /// Modules loaded from the on-disk artifact cache since the runtime started.
    pub cache_hits: u64,
    /// Cached artifacts found unusable (corrupt, truncated, incompatible) and replaced.
    pub cache_rejected: u64,
    /// Compiles with Winch.
    pub baseline: TierStats,
    /// Compiles with Cranelift, in the foreground or the background.
    pub optimized: TierStats,
    /// Modules waiting for Cranelift in the background, or being compiled by it.
    pub optimizing: u64,
}

/// The compiles of one tier since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TierStats {
    /// How many.
    pub compiles: u64,
    /// Their wall-clock time, in all.
    pub seconds: f64,
    /// The last one's wall-clock time.
    pub last_seconds: Option<f64>,
}

/// Compile times per tier, shared with the background compiler.
#[derive(Default)]
pub(crate) struct TierTimes(Mutex<[TierStats; 2]>);

impl TierTimes {
    #[cfg(feature = "compiler")]
    pub(crate) fn record(&self, tier: crate::Tier, elapsed: Duration) {
        let mut tiers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let stats = &mut tiers[tier as usize];
        stats.compiles += 1;
        stats.seconds += elapsed.as_secs_f64();
        stats.last_seconds = Some(elapsed.as_secs_f64());
    }

    fn get(&self, tier: crate::Tier) -> TierStats {
        self.0.lock().unwrap_or_else(|p| p.into_inner())[tier as usize]
    }
}

/// The node's wasm runtime: engine, linkers, artifact cache and epoch ticker.
pub struct Runtime {
    /// The engine of the optimized tier, the only one without a compiler.
    pub(crate) engine: Engine,
    pub(crate) linkers: Linkers,
    pub(crate) cache: Arc<ArtifactCache>,
    pub(crate) loaded: Mutex<HashMap<String, Compiled>>,
    pub(crate) n_compiled: AtomicU64,
    pub(crate) n_cache_hits: AtomicU64,
    pub(crate) n_cache_rejected: AtomicU64,
    pub(crate) times: Arc<TierTimes>,
    /// The baseline tier and the background compiler, when compiling in tiers.
    #[cfg(feature = "compiler")]
    pub(crate) tiers: Option<crate::tiers::Tiers>,
    #[cfg(feature = "compiler")]
    pub(crate) compiling: crate::compile::Permits,
    tiering: Result<(), String>,
    allocator: AllocatorKind,
    allocator_reason: String,
    config: RuntimeConfig,
    scheduler: Arc<CpuScheduler>,
    ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine (probing for the pooling allocator), the linkers and the
    /// epoch ticker.
    pub fn new(config: RuntimeConfig) -> crate::Result<Runtime> {
        let (engine, allocator, allocator_reason) =
            build_engine(&config).map_err(crate::Error::Internal)?;
        tracing::info!(allocator = allocator.as_str(), reason = %allocator_reason, "wasm engine ready");
        let linkers = Linkers::new(&engine).map_err(crate::Error::Internal)?;
        let cache = Arc::new(
            ArtifactCache::new(config.cache_dir.clone(), &engine)
                .map_err(crate::Error::Internal)?,
        );
        let scheduler = CpuScheduler::new(config.cpu_slots);
        let times = Arc::new(TierTimes::default());
        #[cfg(feature = "compiler")]
        let tiers = if config.tiering {
            crate::tiers::Tiers::start(
                (allocator == AllocatorKind::Pooling).then(|| pooling_config(&config)),
                crate::tiers::Optimizer {
                    engine: engine.clone(),
                    linkers: linkers.clone(),
                    cache: cache.clone(),
                    times: times.clone(),
                    scheduler: scheduler.clone(),
                },
            )
        } else {
            Err("turned off (--compile optimized): uploads wait for Cranelift".to_owned())
        };
        #[cfg(not(feature = "compiler"))]
        let tiers: Result<(), String> =
            Err("this build has no compiler: it runs the optimized code it is given".to_owned());
        let tiering = tiers.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(reason) = &tiering {
            tracing::info!(%reason, "no tiered compilation");
        }
        #[cfg(feature = "compiler")]
        let tiers = tiers.ok();
        #[cfg(feature = "compiler")]
        if let Some(tiers) = &tiers {
            tiers.pause(config.hold_optimizing);
        }
        // Both tiers' engines tick together: a guest's timeout and slices are the same in both.
        #[cfg_attr(not(feature = "compiler"), allow(unused_mut))]
        let mut engines = vec![engine.clone()];
        #[cfg(feature = "compiler")]
        engines.extend(tiers.as_ref().map(|tiers| tiers.engine.clone()));
        scheduler.preempt_with({
            let engines = engines.clone();
            move || engines.iter().for_each(Engine::increment_epoch)
        });
        let ticker = EpochTicker::start(engines, scheduler.clone(), &config);
        Ok(Runtime {
            engine,
            linkers,
            cache,
            loaded: Mutex::new(HashMap::new()),
            n_compiled: AtomicU64::new(0),
            n_cache_hits: AtomicU64::new(0),
            n_cache_rejected: AtomicU64::new(0),
            times,
            #[cfg(feature = "compiler")]
            tiers,
            #[cfg(feature = "compiler")]
            compiling: crate::compile::Permits::new(config.cpu_slots),
            tiering,
            allocator,
            allocator_reason,
            config,
            scheduler,
            ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator in use.
    pub fn allocator(&self) -> AllocatorKind {
        self.allocator
    }

    /// Why the engine uses the allocator it does: what pooling would reserve, and whether it
    /// fits, was turned off, or was refused (by `ulimit -v`, the kernel or a slow emulator).
    pub fn allocator_reason(&self) -> &str {
        &self.allocator_reason
    }

    /// The node's CPU scheduler, which the guests of every service share.
    pub fn scheduler(&self) -> &Arc<CpuScheduler> {
        &self.scheduler
    }

    /// How the kernel runs the epoch ticker's thread.
    pub fn ticker_priority(&self) -> TickerPriority {
        self.ticker.priority
    }

    /// The configuration the runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Counters of compiles and cache hits since start.
    pub fn compile_stats(&self) -> CompileStats {
        #[cfg(feature = "compiler")]
        let optimizing = self.tiers.as_ref().map_or(0, |tiers| tiers.optimizing());
        #[cfg(not(feature = "compiler"))]
        let optimizing = 0;
        CompileStats {
            compiled: self.n_compiled.load(Ordering::Relaxed),
            cache_hits: self.n_cache_hits.load(Ordering::Relaxed),
            cache_rejected: self.n_cache_rejected.load(Ordering::Relaxed),
            baseline: self.times.get(crate::Tier::Baseline),
            optimized: self.times.get(crate::Tier::Optimized),
            optimizing,
        }
    }

    /// Whether new modules are compiled in tiers, or why not.
    pub fn tiering(&self) -> Result<(), &str> {
        self.tiering.as_ref().map(|_| ()).map_err(String::as_str)
    }
}

pub(crate) fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config
}

fn build_engine(runtime: &RuntimeConfig) -> anyhow::Result<(Engine, AllocatorKind, String)> {
    let reason = if runtime.pooling {
        let n = runtime.max_instances;
        let reservation = pooling_reservation(runtime);
        let wants = format!(
            "pooling {n} instances (--max-instances) reserves about {} of address space",
            gib(reservation)
        );
        match address_space::check(reservation, address_space::PROBE_DEADLINE) {
            Ok(()) => {
                let mut config = base_config();
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
                    runtime,
                )));
                match Engine::new(&config) {
                    Ok(engine) => {
                        let reason =
                            format!("{wants} up front, and it fits: instances reuse their slots");
                        return Ok((engine, AllocatorKind::Pooling, reason));
                    }
                    Err(error) => format!("{wants}, and wasmtime could not set it up: {error}"),
                }
            }
            Err(Misfit::Limited(limit)) => format!(
                "{wants}, and the address space is limited to {} (ulimit -v)",
                gib(limit)
            ),
            Err(Misfit::Refused(error)) => format!(
                "{wants}, and the kernel refused it ({error}); a 39-bit address space has 512 GiB"
            ),
            Err(Misfit::TooSlow(deadline)) => format!(
                "{wants}, and reserving it took longer than {}s (an emulator such as qemu-user maps it page by page)",
                deadline.as_secs()
            ),
        }
    } else {
        "pooling is turned off (--no-pooling)".to_owned()
    };
    tracing::warn!(reason = %reason, "using on-demand instance allocation");
    let engine = Engine::new(&base_config())
        .map_err(anyhow::Error::from)
        .context("creating the wasm engine")?;
    Ok((engine, AllocatorKind::OnDemand, reason))
}

/// The linear memory reserved per instance on 64-bit hosts by default, and its guard.
const MEMORY_RESERVATION: u64 = 4 << 30;
const MEMORY_GUARD: u64 = 32 << 20;
/// An async stack (wasmtime's default) and its guard page.
const STACK_RESERVATION: u64 = (2 << 20) + (64 << 10);

/// About how much address space the pooling allocator reserves: one memory slot and one
/// stack per instance; tables are small beside them.
fn pooling_reservation(runtime: &RuntimeConfig) -> u64 {
    let slot = runtime.max_memory_per_instance.max(MEMORY_RESERVATION) + MEMORY_GUARD;
    u64::from(runtime.max_instances).saturating_mul(slot + STACK_RESERVATION)
}

fn gib(bytes: u64) -> String {
    format!("{} GiB", bytes.div_ceil(1 << 30))
}

/// Pages kept mapped per slot when an instance is recycled: enough for a typical small
/// guest's stack and heap, so its next instance reuses them without page faults.
const MEMORY_KEEP_RESIDENT: usize = 2 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
const ASYNC_STACK_KEEP_RESIDENT: usize = 64 << 10;

fn pooling_config(runtime: &RuntimeConfig) -> PoolingAllocationConfig {
    let n = runtime.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A component built by Rust holds a few core instances (the program, its
        // adapters and shims), each of which may own a table.
        .total_core_instances(n.saturating_mul(4))
        .total_tables(n.saturating_mul(4))
        .total_memories(n)
        .total_stacks(n)
        .max_memory_size(usize::try_from(runtime.max_memory_per_instance).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .async_stack_keep_resident(ASYNC_STACK_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// A thread that advances the engine's epoch, stopped and joined on drop.
///
/// It is a plain thread rather than a tokio task so that it keeps ticking when every
/// worker thread is busy running guests, which is exactly when it is needed. It ticks fast
/// only while the CPU is contended (1 ms), and faster (0.1 ms) only while light requests are
/// served beside computing guests: a 0.1 ms tick costs ten thousand wake-ups a second, and a
/// yield of every computing guest, which a node with a core to spare need not pay (a worker
/// running a guest then has its other tasks stolen by an idle one).
///
/// While every core computes, the ticker is itself one more thread for the kernel to
/// schedule, and a tick that waits for a core (up to a few ms of the kernel's slices) is a
/// connection nobody looks at meanwhile: the thread asks to run first
/// ([`kernel::ask_to_run_first`]).
/// It does nothing but sleep and add one to a counter, so it cannot keep anyone else waiting.
struct EpochTicker {
    priority: TickerPriority,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(
        engines: Vec<Engine>,
        scheduler: Arc<CpuScheduler>,
        config: &RuntimeConfig,
    ) -> EpochTicker {
        let (tick, busy_tick, wake_tick) = (
            config.epoch_tick,
            config.busy_epoch_tick,
            config.wake_epoch_tick,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (report, priority) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let _ = report.send(kernel::ask_to_run_first());
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(if !scheduler.saturated_within(SATURATED_WINDOW) {
                            tick
                        } else if scheduler.light_within(SATURATED_WINDOW) {
                            wake_tick
                        } else {
                            busy_tick
                        });
                        engines.iter().for_each(Engine::increment_epoch);
                        scheduler.sample(std::time::Instant::now());
                    }
                }
            })
            .expect("spawning a thread only fails when the process is out of resources");
        // The thread sets its class before anything else; a thread that died first would have
        // panicked, which the join on drop reports.
        let priority = priority.recv().unwrap_or(TickerPriority::Fair);
        tracing::info!(?priority, "epoch ticker started");
        EpochTicker {
            priority,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
