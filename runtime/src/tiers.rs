//! Tiered compilation: a new module serves on Winch's code at once, and Cranelift's replaces it
//! when a background thread has compiled it, the way browsers and JVMs warm up.
//!
//! Winch compiles in one pass, about five times quicker than Cranelift (1.7 s against 8.9 s for
//! a 13 MB JavaScript component), into code that runs slower. The two tiers need engines of
//! their own (Winch code has its own calling convention), so the runtime keeps a second
//! engine, with the same settings and allocator, and its own linkers. Both engines tick
//! together, so fuel, memory, timeouts and cpu limits are enforced the same in both tiers.
//!
//! The background compiler is one thread, so at most one module's bytes and compile are in
//! memory however many uploads queue; a queued job holds a handle to the module's code and a
//! way to read its bytes again. The thread runs at a low priority (nice 10, about a tenth of a
//! core against each busy thread), so it never keeps a request from a core for long, and charges its CPU time to the node's scheduler,
//! where it counts like a guest's. It compiles single-threaded, with an engine of its own whose
//! code fits the serving engine (same compatibility hash), writes the code to the artifact
//! cache (which keeps only optimized code), and swaps it in: instances started afterwards run
//! it, instances running keep Winch's until they finish.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, Strategy};

use crate::ModuleSource;
use crate::artifact::{ArtifactCache, Compiled, Linkers, Pre, Tier};
use crate::compile::{Format, sniff};
use crate::cpu::{CpuScheduler, CpuShare, DEFAULT_WEIGHT_MILLIS, thread_cpu_time};
use crate::engine::TierTimes;

/// The baseline tier's engine and the background compiler that replaces its code.
pub(crate) struct Tiers {
    pub(crate) engine: Engine,
    pub(crate) linkers: Linkers,
    queue: Arc<Queue>,
}

/// What the background compiler needs of the runtime.
pub(crate) struct Optimizer {
    /// The engine the optimized code runs in.
    pub(crate) engine: Engine,
    pub(crate) linkers: Linkers,
    pub(crate) cache: Arc<ArtifactCache>,
    pub(crate) times: Arc<TierTimes>,
    pub(crate) scheduler: Arc<CpuScheduler>,
}

struct Queue {
    jobs: Mutex<Jobs>,
    wake: Condvar,
}

#[derive(Default)]
struct Jobs {
    pending: VecDeque<Job>,
    /// The module being compiled.
    running: Option<Compiled>,
    paused: bool,
    stopped: bool,
}

struct Job {
    digest: String,
    compiled: Compiled,
    source: ModuleSource,
}

impl Tiers {
    /// The baseline engine and the background compiler, or why there are none: Winch is only
    /// used where wasmtime supports it best (x86-64), and its engine may not be set up.
    pub(crate) fn start(
        pooling: Option<wasmtime::PoolingAllocationConfig>,
        optimizer: Optimizer,
    ) -> Result<Tiers, String> {
        if !cfg!(target_arch = "x86_64") {
            return Err(format!(
                "the baseline compiler (Winch) is used on x86-64 only; this node is {}",
                crate::HOST_TARGET
            ));
        }
        let mut config = crate::engine::base_config();
        config.strategy(Strategy::Winch);
        // Winch compiles the guest's functions; Cranelift still compiles the trampolines
        // between host and guest, one for each function a table or an export lets escape:
        // half of a typical component's functions (6,413 of 12,806 in the JavaScript one of
        // BENCHMARKS.md), nearly all of a table-heavy one's, and most of the CPU of hello's
        // baseline compile. They are a few instructions each, so the e-graph optimizer gains
        // them nothing at run time; without it the baseline compile takes 5-15% less CPU.
        // The register allocator stays the default one: the single-pass allocator is quicker
        // still, but outside wasmtime's security support.
        config.cranelift_opt_level(OptLevel::None);
        let engine = match pooling {
            Some(pool) => {
                let mut pooled = config.clone();
                pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
                // The second pool doubles the address space reserved; where it does not fit,
                // the baseline tier allocates on demand: it only serves until Cranelift is done.
                Engine::new(&pooled).or_else(|error| {
                    tracing::warn!(%error, "the baseline tier allocates instances on demand");
                    Engine::new(&config)
                })
            }
            None => Engine::new(&config),
        }
        .map_err(|error| format!("the baseline compiler (Winch) cannot be set up: {error:#}"))?;
        let linkers = Linkers::new(&engine).map_err(|error| format!("{error:#}"))?;
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs::default()),
            wake: Condvar::new(),
        });
        std::thread::Builder::new()
            .name("shoal-optimize".into())
            .spawn({
                let queue = queue.clone();
                move || optimizer.run(&queue)
            })
            .map_err(|error| format!("cannot start the background compiler: {error}"))?;
        Ok(Tiers {
            engine,
            linkers,
            queue,
        })
    }

    /// Queues `compiled` for Cranelift, once.
    pub(crate) fn optimize_later(&self, digest: &str, compiled: &Compiled, source: ModuleSource) {
        let mut jobs = self.queue.lock();
        let queued = jobs.pending.iter().map(|job| &job.compiled);
        if queued
            .chain(&jobs.running)
            .any(|queued| queued.same(compiled))
        {
            return;
        }
        jobs.pending.push_back(Job {
            digest: digest.to_owned(),
            compiled: compiled.clone(),
            source,
        });
        drop(jobs);
        self.queue.wake.notify_one();
    }

    /// Holds the background compiler after its current compile (`true`), or lets it go on.
    pub(crate) fn pause(&self, paused: bool) {
        self.queue.lock().paused = paused;
        self.queue.wake.notify_all();
    }

    /// Modules waiting for Cranelift or being compiled by it.
    pub(crate) fn optimizing(&self) -> u64 {
        let jobs = self.queue.lock();
        jobs.pending.len() as u64 + u64::from(jobs.running.is_some())
    }
}

impl Drop for Tiers {
    /// Stops the background compiler after its current compile, without waiting for it:
    /// Cranelift cannot be interrupted, and a node shutting down should not wait seconds.
    fn drop(&mut self) {
        let mut jobs = self.queue.lock();
        jobs.stopped = true;
        jobs.pending.clear();
        drop(jobs);
        self.queue.wake.notify_all();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> Option<Job> {
        let mut jobs = self.lock();
        jobs.running = None;
        loop {
            if jobs.stopped {
                return None;
            }
            if !jobs.paused
                && let Some(job) = jobs.pending.pop_front()
            {
                jobs.running = Some(job.compiled.clone());
                return Some(job);
            }
            jobs = self.wake.wait(jobs).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Optimizer {
    fn run(self, queue: &Queue) {
        crate::kernel::run_in_background();
        let compiler = {
            let mut config: Config = crate::engine::base_config();
            // One thread: the background compile takes one core at most, at low priority.
            config.parallel_compilation(false);
            Engine::new(&config)
        };
        let compiler = match compiler {
            Ok(engine) => engine,
            Err(error) => {
                tracing::error!(%error, "the background compiler cannot start; modules stay on the baseline tier");
                return;
            }
        };
        let share = CpuShare::new(DEFAULT_WEIGHT_MILLIS);
        while let Some(job) = queue.next() {
            if job.compiled.tier() == Tier::Optimized {
                continue;
            }
            let span = tracing::info_span!("shoal_runtime.optimize", digest = %job.digest);
            let _entered = span.enter();
            let (started, cpu) = (Instant::now(), thread_cpu_time());
            // A panic in a compiler, or in the source (its node's runtime shut down), costs
            // this module its optimized code, not the node its background compiler.
            let optimized = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.compile(&compiler, job.source)
            }))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the compile panicked")));
            self.scheduler
                .charge(&share, thread_cpu_time().saturating_sub(cpu));
            match optimized {
                Ok((pre, artifact)) => {
                    let elapsed = started.elapsed();
                    self.times.record(Tier::Optimized, elapsed);
                    if let Err(error) = self.cache.store(&job.digest, &artifact) {
                        tracing::warn!(error = %format!("{error:#}"), "cannot cache optimized code");
                    }
                    // Done before the switch is announced: whoever awaits it sees the figures
                    // of a finished compile.
                    queue.lock().running = None;
                    job.compiled.optimize(pre);
                    tracing::info!(seconds = elapsed.as_secs_f64(), "optimized code in force");
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot compile the optimized tier; the module stays on the baseline tier")
                }
            }
        }
    }

    /// Cranelift's code for the module `source` reads, linked in the serving engine, and the
    /// artifact to cache.
    fn compile(&self, compiler: &Engine, source: ModuleSource) -> anyhow::Result<(Pre, Vec<u8>)> {
        let bytes = source()?;
        let artifact = match sniff(&bytes)? {
            Format::Core => compiler.precompile_module(&bytes)?,
            Format::Component => compiler.precompile_component(&bytes)?,
        };
        drop(bytes);
        let pre = self.linkers.link_artifact(&self.engine, &artifact)?;
        Ok((pre, artifact))
    }
}
