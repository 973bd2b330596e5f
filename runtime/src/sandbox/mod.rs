//! The sandbox every guest runs in, whatever executes it: metering (memory, fuel, cpu), the
//! per-request budgets, the one function that classifies guest failures, and the bounded
//! pipes and limiter it is built from.
//!
//! **Architecture Invariant:** this module is a leaf: it names no executor and no replica
//! pool, so each of those can use it without a circle.

mod limits;
mod pipe;
mod throttle;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::{Store, Trap, UpdateDeadline};

pub(crate) use self::limits::MemoryLimiter;
pub use self::limits::SandboxLimits;
pub(crate) use self::pipe::{CappedPipe, Overflow};
pub(crate) use self::throttle::CpuThrottle;
use crate::Error;
use crate::cpu::GuestCpu;

/// Errors inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response produced by a guest, streamed for wasi:http components.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What a store counts against its limits, and the CPU its execution runs on.
pub(crate) struct Metering {
    pub(crate) limiter: MemoryLimiter,
    /// The replica's cpu quota, if the service has a cpu limit.
    throttle: Option<Arc<CpuThrottle>>,
    /// The slot, share and flags of the execution running in the store now.
    pub(crate) cpu: Arc<GuestCpu>,
}

impl Metering {
    pub(crate) fn new(
        limits: &SandboxLimits,
        throttle: Option<Arc<CpuThrottle>>,
        cpu: Arc<GuestCpu>,
    ) -> Metering {
        Metering {
            limiter: MemoryLimiter::new(limits.memory),
            throttle,
            cpu,
        }
    }
}

/// Store data that carries [`Metering`].
pub(crate) trait Metered: Send + 'static {
    fn metering(&mut self) -> &mut Metering;
}

/// Sets up what every store gets once: the memory limiter, and an epoch callback that yields
/// to tokio at every tick, so a guest that computes can neither keep its worker thread from
/// the connections, timers and other tasks it serves, nor outlive its timeout, nor exceed its
/// cpu quota, nor keep its slot from a service owed the CPU more (`crate::cpu`).
pub(crate) fn prepare_store<T: Metered>(store: &mut Store<T>) -> crate::Result<()> {
    store.limiter(|state| &mut state.metering().limiter as &mut dyn wasmtime::ResourceLimiter);
    store.epoch_deadline_callback(|mut context| {
        let metering = context.data_mut().metering();
        let cpu = &metering.cpu;
        // A guest that straddles one tick is not computing for long; one that reaches a second
        // is, and a busy node then ticks fast.
        if cpu.long.swap(true, Ordering::Relaxed) {
            cpu.scheduler.note_tick();
        }
        if let Some(resume) = metering
            .throttle
            .as_ref()
            .and_then(|throttle| throttle.paused_until(Instant::now()))
        {
            // Over quota: sleep, without a slot, until the period that pays the debt.
            let pause = tokio::time::sleep_until(resume.into());
            return Ok(UpdateDeadline::YieldCustom(1, Box::pin(pause)));
        }
        // `yield_now` wakes the task only after the worker has run its other tasks and polled
        // the I/O and timer driver; a guest waking itself would run again at once. The slot is
        // kept through the yield, and handed on after it if another guest waits.
        cpu.at_tick.store(true, Ordering::Relaxed);
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    Ok(())
}

/// Charges CPU time a guest of this store used to its replica's quota.
pub(crate) fn quota_charger(
    throttle: Option<Arc<CpuThrottle>>,
) -> impl FnMut(std::time::Duration) + Unpin {
    move |used| {
        if let Some(throttle) = &throttle {
            throttle.charge(used, Instant::now());
        }
    }
}

/// Resets the per-request budgets of a store, fresh or reused.
pub(crate) fn begin_request<T: Metered>(
    store: &mut Store<T>,
    limits: &SandboxLimits,
    cpu: Arc<GuestCpu>,
) -> crate::Result<()> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| Error::Internal(e.into()))?;
    store.set_epoch_deadline(1);
    let metering = store.data_mut().metering();
    metering.limiter.refused = None;
    metering.cpu = cpu;
    Ok(())
}

/// Counts the fuel a request burnt in `store` to its service.
pub(crate) fn count_fuel<T>(store: &Store<T>, limits: &SandboxLimits, cpu: &GuestCpu) {
    let left = store.get_fuel().unwrap_or(limits.fuel);
    cpu.share.burn_fuel(limits.fuel.saturating_sub(left));
}

/// Turns a wasmtime error from guest code into the outcome a caller sees.
pub(crate) fn guest_error(
    error: wasmtime::Error,
    limits: &SandboxLimits,
    limiter: &MemoryLimiter,
) -> Error {
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return Error::OutOfFuel {
                budget: limits.fuel,
            };
        }
        Some(Trap::Interrupt) => {
            return Error::Timeout {
                limit: limits.timeout,
            };
        }
        _ => {}
    }
    if let Some(pool) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return Error::Overloaded(pool.to_string());
    }
    if let Some(requested) = limiter.refused {
        return Error::MemoryLimit {
            limit: limits.memory,
            requested,
        };
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exit(exit.0);
    }
    tracing::debug!(error = ?error, "guest failed");
    match trap {
        Some(trap) => Error::Trap(trap.to_string()),
        None => Error::Trap(
            format!("{error:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// Sends what a guest wrote to a stream to the service's [`GuestLog`] and the node's log, a
/// line per event, tagged with the service's name and the replica.
pub(crate) fn log_output(
    config: &crate::exec::ServiceConfig,
    replica: u64,
    stream: crate::logs::Stream,
    pipe: &CappedPipe,
) {
    let overflowed = pipe.overflowed();
    let bytes = pipe.take();
    if bytes.is_empty() {
        return;
    }
    config.log.append(replica, stream, &bytes, overflowed);
    let service = config.name.as_str();
    let stream = stream.as_str();
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        tracing::info!(target: "shoal::guest", service, stream, "{line}");
    }
    if overflowed {
        tracing::info!(target: "shoal::guest", service, stream, "(output truncated)");
    }
}

pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
