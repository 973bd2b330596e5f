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
use std::time::Instant;

use bytes::Bytes;
use wasmtime::{Store, Trap, UpdateDeadline};

pub(crate) use self::limits::MemoryLimiter;
pub use self::limits::SandboxLimits;
pub(crate) use self::pipe::{CappedPipe, Overflow};
pub(crate) use self::throttle::CpuThrottle;
use crate::Error;

/// Errors inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response produced by a guest, streamed for wasi:http components.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What a store counts against its limits.
pub(crate) struct Metering {
    pub(crate) limiter: MemoryLimiter,
    throttle: Option<Arc<CpuThrottle>>,
    /// Fuel left at the last charge to the throttle.
    fuel_mark: u64,
}

impl Metering {
    pub(crate) fn new(limits: &SandboxLimits, throttle: Option<Arc<CpuThrottle>>) -> Metering {
        Metering {
            limiter: MemoryLimiter::new(limits.memory),
            throttle,
            fuel_mark: 0,
        }
    }

    /// Charges the fuel burned since the last charge; returns when to resume if the
    /// replica is over its cpu budget.
    fn charge(&mut self, fuel_left: u64) -> Option<Instant> {
        let throttle = self.throttle.as_ref()?;
        let used = self.fuel_mark.saturating_sub(fuel_left);
        self.fuel_mark = fuel_left;
        throttle.charge(used, Instant::now())
    }
}

/// Store data that carries [`Metering`].
pub(crate) trait Metered: Send + 'static {
    fn metering(&mut self) -> &mut Metering;
}

/// Sets up what every store gets once: the memory limiter, and an epoch callback that
/// charges the cpu throttle and yields to the scheduler at every tick, so a spinning
/// guest can neither starve its worker thread, nor outlive its timeout, nor exceed its
/// cpu limit.
pub(crate) fn prepare_store<T: Metered>(store: &mut Store<T>) -> crate::Result<()> {
    if let Some(throttle) = &store.data_mut().metering().throttle {
        let interval = throttle.fuel_yield_interval();
        store
            .fuel_async_yield_interval(Some(interval))
            .map_err(|e| Error::Internal(e.into()))?;
    }
    store.limiter(|state| &mut state.metering().limiter as &mut dyn wasmtime::ResourceLimiter);
    store.epoch_deadline_callback(|mut context| {
        let fuel_left = context.get_fuel().unwrap_or(0);
        if let Some(resume) = context.data_mut().metering().charge(fuel_left) {
            let pause = tokio::time::sleep_until(resume.into());
            return Ok(UpdateDeadline::YieldCustom(1, Box::pin(pause)));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    Ok(())
}

/// Resets the per-request budgets of a store, fresh or reused.
pub(crate) fn begin_request<T: Metered>(
    store: &mut Store<T>,
    limits: &SandboxLimits,
) -> crate::Result<()> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| Error::Internal(e.into()))?;
    store.set_epoch_deadline(1);
    let metering = store.data_mut().metering();
    metering.fuel_mark = limits.fuel;
    metering.limiter.refused = None;
    Ok(())
}

/// Charges what the request burned since the last tick, so short requests count too.
pub(crate) fn end_request<T: Metered>(store: &mut Store<T>) {
    let fuel_left = store.get_fuel().unwrap_or(0);
    let _ = store.data_mut().metering().charge(fuel_left);
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

/// Sends what a guest wrote to a stream to the log, a line per event, tagged with the
/// service's name.
pub(crate) fn log_output(service: &str, stream: &'static str, pipe: &CappedPipe) {
    let overflowed = pipe.overflowed();
    let bytes = pipe.take();
    if bytes.is_empty() {
        return;
    }
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
