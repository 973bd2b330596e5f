//! CPU limits through fuel, like the kernel's CFS quota.
//!
//! A replica with `resources.limits.cpu` may burn `cpu × fuel_per_cpu_second` fuel per
//! second of wall time. Usage is charged in periods; a replica over its budget for the
//! current period is paused (its guest yields to the scheduler) until the period in
//! which its debt is paid, so a busy loop limited to `250m` uses about a quarter of a
//! core. The charge happens in the epoch callback, every epoch tick, so the overshoot
//! is at most one tick and is carried into the next period rather than forgiven.
//!
//! The fuel rate is measured when the node starts by timing a calibration loop (`compile.rs`,
//! since it compiles the loop) or given by the operator. Throttled stores also set a fuel
//! yield interval, so the count the epoch callback
//! reads is current (compiled code otherwise keeps it in a register).

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
