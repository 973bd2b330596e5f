//! CPU limits in real CPU time, like the kernel's `cpu.max` quota.
//!
//! A replica with `resources.limits.cpu` may use `cpu × PERIOD` of CPU time per period of
//! wall time, summed over all its requests. What its guests use is measured on their threads
//! (`crate::cpu`), host calls included, and charged here; a replica over its budget for the
//! current period is paused (its guests give their slots up and sleep) until the period in
//! which its debt is paid, so a busy loop limited to `250m` uses about a quarter of a core,
//! whatever its mix of wasm and host calls. A guest is stopped at its next epoch tick, so the
//! overshoot is at most about one tick, and it is carried into the next period as debt rather
//! than forgiven: a busy 250m replica gets its 25 ms per 100 ms in bursts, as in Kubernetes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The accounting period: long enough that one epoch tick of overshoot is a small
/// fraction of a budget, short enough that a throttled guest still answers promptly.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// A replica's CPU budget.
#[derive(Debug)]
pub(crate) struct CpuThrottle {
    /// CPU time per period, in nanoseconds.
    budget: u64,
    state: Mutex<Period>,
}

#[derive(Debug)]
struct Period {
    start: Instant,
    /// CPU time charged against the period, in nanoseconds; above the budget is debt.
    used: u64,
}

impl CpuThrottle {
    /// A throttle for `cpu_millis` millicores.
    pub(crate) fn new(cpu_millis: u64) -> CpuThrottle {
        let budget = u128::from(cpu_millis) * PERIOD.as_nanos() / 1000;
        CpuThrottle {
            budget: u64::try_from(budget).unwrap_or(u64::MAX).max(1),
            state: Mutex::new(Period {
                start: Instant::now(),
                used: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Period> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Charges `used` CPU time, used just now.
    pub(crate) fn charge(&self, used: Duration, now: Instant) {
        let mut period = self.lock();
        self.roll(&mut period, now);
        let used = u64::try_from(used.as_nanos()).unwrap_or(u64::MAX);
        period.used = period.used.saturating_add(used);
    }

    /// When the replica may run again, if it is over its budget now.
    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        let mut period = self.lock();
        self.roll(&mut period, now);
        (period.used > self.budget).then(|| {
            // Wait out as many periods as the debt needs.
            let periods_owed = u32::try_from(period.used / self.budget).unwrap_or(u32::MAX);
            period.start + PERIOD * periods_owed
        })
    }

    /// Moves to the period `now` is in, paying the budgets of the periods passed.
    fn roll(&self, period: &mut Period, now: Instant) {
        let elapsed = now.saturating_duration_since(period.start);
        if elapsed >= PERIOD {
            let n_periods = (elapsed.as_nanos() / PERIOD.as_nanos()) as u64;
            period.start += PERIOD * u32::try_from(n_periods).unwrap_or(u32::MAX);
            period.used = period
                .used
                .saturating_sub(self.budget.saturating_mul(n_periods));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_budget_waits_for_the_period_that_pays_the_debt() {
        let throttle = CpuThrottle::new(250); // budget: 25 ms per 100 ms
        let start = throttle.state.lock().unwrap().start;
        let ms = Duration::from_millis;
        throttle.charge(ms(20), start);
        assert_eq!(throttle.paused_until(start), None);
        throttle.charge(ms(10), start);
        assert_eq!(throttle.paused_until(start), Some(start + PERIOD));
        // A big overshoot owes several periods.
        throttle.charge(ms(50), start);
        assert_eq!(throttle.paused_until(start), Some(start + PERIOD * 3));
        // Three periods later, the debt (80 ms - 75 ms) carries over.
        assert_eq!(throttle.paused_until(start + PERIOD * 3), None);
        assert_eq!(throttle.state.lock().unwrap().used, 5_000_000);
    }
}
