//! CPU limits through fuel, like the kernel's CFS quota.
//!
//! A replica with `resources.limits.cpu` may burn `cpu × fuel_per_cpu_second` fuel per
//! second of wall time. Usage is charged in periods; a replica over its budget for the
//! current period is paused (its guest yields to the scheduler) until the period in
//! which its debt is paid, so a busy loop limited to `250m` uses about a quarter of a
//! core. The charge happens in the epoch callback, every epoch tick, so the overshoot
//! is at most one tick and is carried into the next period rather than forgiven.
//!
//! The fuel rate is measured when the node starts by timing a calibration loop.
//! Throttled stores also set a fuel yield interval, so the count the epoch callback
//! reads is current (compiled code otherwise keeps it in a register).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Module, Store};

/// The accounting period: long enough that one epoch tick of overshoot is a small
/// fraction of a budget, short enough that a throttled guest still answers promptly.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// A replica's CPU budget.
#[derive(Debug)]
pub(crate) struct CpuThrottle {
    budget: u64,
    state: Mutex<Period>,
}

#[derive(Debug)]
struct Period {
    start: Instant,
    used: u64,
}

impl CpuThrottle {
    /// A throttle for `cpu_millis` millicores at `fuel_per_cpu_second`.
    pub(crate) fn new(cpu_millis: u64, fuel_per_cpu_second: u64) -> CpuThrottle {
        let per_second = u128::from(fuel_per_cpu_second) * u128::from(cpu_millis) / 1000;
        let budget = per_second * PERIOD.as_nanos() / 1_000_000_000;
        CpuThrottle {
            budget: u64::try_from(budget).unwrap_or(u64::MAX).max(1),
            state: Mutex::new(Period {
                start: Instant::now(),
                used: 0,
            }),
        }
    }

    /// How often a throttled guest must hand its fuel count back to the host: compiled
    /// code keeps the count in a register, and only writes it back when it yields, so
    /// without this the throttle would see no fuel burned in a tight loop. A tenth of a
    /// period's budget keeps the count accurate to a fraction of an epoch tick, and
    /// yields rarely enough that the switches cost no measurable cpu.
    pub(crate) fn fuel_yield_interval(&self) -> u64 {
        (self.budget / 10).max(10_000)
    }

    /// Charges `fuel` burned just now; returns when the guest may run again if it is
    /// over budget.
    pub(crate) fn charge(&self, fuel: u64, now: Instant) -> Option<Instant> {
        let mut period = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(period.start);
        if elapsed >= PERIOD {
            let n_periods = (elapsed.as_nanos() / PERIOD.as_nanos()) as u64;
            period.start += PERIOD * u32::try_from(n_periods).unwrap_or(u32::MAX);
            period.used = period
                .used
                .saturating_sub(self.budget.saturating_mul(n_periods));
        }
        period.used = period.used.saturating_add(fuel);
        (period.used > self.budget).then(|| {
            // Wait out as many periods as the debt needs.
            let periods_owed = u32::try_from(period.used / self.budget).unwrap_or(u32::MAX);
            period.start + PERIOD * periods_owed
        })
    }
}

/// Measures how much fuel this machine burns per second of one core, by timing a loop.
pub fn calibrate(engine: &Engine) -> anyhow::Result<u64> {
    // Fuel counts wasm operators, and operators differ in cost: `local.get` is free once
    // compiled, a multiply is not. This loop has the mix compiled code has (values
    // spilled to linear memory and read back, locals, arithmetic, a branch), which is
    // what rustc emits for a loop of arithmetic; a loop of register-only adds would
    // overstate the rate of real code threefold and make cpu limits lenient.
    let module = Module::new(
        engine,
        r#"(module (memory 1) (func (export "spin") (local $x i64) (local $i i64)
             (loop
               (i64.store (i32.const 8) (local.get $x))
               (local.set $x (i64.load (i32.const 8)))
               (local.set $x (i64.mul (local.get $x) (i64.const 0x9E3779B97F4A7C15)))
               (i64.store (i32.const 16) (local.get $i))
               (local.set $x (i64.xor (local.get $x) (i64.load (i32.const 16))))
               (local.set $x (i64.rotl (local.get $x) (i64.const 7)))
               (local.set $i (i64.add (local.get $i) (i64.const 1)))
               (br 0))))"#,
    )?;
    let budget: u64 = 200_000_000;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let mut store = Store::new(engine, ());
        store.set_fuel(budget)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin")?;
        let started = Instant::now();
        let _ = spin.call(&mut store, ()); // ends with out-of-fuel, by design
        times.push(started.elapsed());
    }
    // The median, not the fastest: the fastest of a few short runs overstates what a core
    // sustains, which makes limits lenient.
    times.sort_unstable();
    Ok((budget as f64 / times[2].as_secs_f64()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_budget_waits_for_the_period_that_pays_the_debt() {
        let throttle = CpuThrottle::new(250, 1_000_000_000); // budget: 25M fuel per 100ms
        let start = throttle.state.lock().unwrap().start;
        assert_eq!(throttle.charge(20_000_000, start), None);
        assert_eq!(throttle.charge(10_000_000, start), Some(start + PERIOD));
        // A big overshoot owes several periods.
        assert_eq!(throttle.charge(50_000_000, start), Some(start + PERIOD * 3));
        // Three periods later, the debt (80M - 75M) carries over.
        assert_eq!(throttle.charge(0, start + PERIOD * 3), None);
        assert_eq!(throttle.state.lock().unwrap().used, 5_000_000);
    }
}
