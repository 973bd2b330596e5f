//! Histograms of request timings: one [`Histogram`] per measured duration of a service, fed
//! once per request and read two ways. Prometheus scrapes it whole, since the pool started
//! ([`Histogram::snapshot`]), and the status API reads its last minute ([`Histogram::recent`])
//! for the p50 and p99 that `shoal ps` shows, so both come from the same observations.
//!
//! The last minute is kept as one bucket array per second, in a ring: a quantile of the
//! window is the quantile of their sum, interpolated within a bucket as Prometheus'
//! `histogram_quantile` does.

use std::time::Duration;

use tokio::time::Instant;

/// Upper bounds of the buckets, in seconds, from half a millisecond to a minute; one more
/// bucket above the last counts the rest (`+Inf`).
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

const SLOTS: usize = 60;

/// One measured duration of a service's requests.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one past every bound.
    counts: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
    /// Per second of the last minute: the second (since `origin`) and its counts.
    recent: Box<[(u64, [u32; BUCKETS.len() + 1]); SLOTS]>,
    origin: Instant,
}

/// A histogram as Prometheus reads it: cumulative counts per upper bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at most that)`, ascending; `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

/// What a histogram saw over a recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    /// Observations in the window.
    pub count: u64,
    /// Median, if anything was observed.
    pub p50: Option<Duration>,
    /// 99th percentile, if anything was observed.
    pub p99: Option<Duration>,
}

impl Histogram {
    /// An empty histogram whose seconds count from `origin`.
    pub fn new(origin: Instant) -> Histogram {
        Histogram {
            counts: [0; BUCKETS.len() + 1],
            sum_seconds: 0.0,
            recent: Box::new([(u64::MAX, [0; BUCKETS.len() + 1]); SLOTS]),
            origin,
        }
    }

    /// Counts one observation of `value`, made at `now`.
    pub fn observe(&mut self, value: Duration, now: Instant) {
        let seconds = value.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        let second = self.second(now);
        let slot = &mut self.recent[second as usize % SLOTS];
        if slot.0 != second {
            *slot = (second, [0; BUCKETS.len() + 1]);
        }
        slot.1[bucket] += 1;
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Everything observed since the histogram was made.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .map(|(bound, count)| {
                cumulative += count;
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_seconds,
        }
    }

    /// What was observed in the `window` (whole seconds, at most a minute) up to `now`.
    pub fn recent(&self, window: Duration, now: Instant) -> Recent {
        let seconds = window.as_secs().clamp(1, SLOTS as u64);
        let newest = self.second(now);
        let mut counts = [0u64; BUCKETS.len() + 1];
        for (second, slot) in self.recent.iter() {
            if *second <= newest && newest - second < seconds {
                for (total, count) in counts.iter_mut().zip(slot) {
                    *total += u64::from(*count);
                }
            }
        }
        Recent {
            count: counts.iter().sum(),
            p50: quantile(&counts, 0.50),
            p99: quantile(&counts, 0.99),
        }
    }
}

/// The `q` quantile of per-bucket `counts`, interpolated linearly within its bucket (the
/// first from zero); one past the last bound is reported as the last bound.
fn quantile(counts: &[u64; BUCKETS.len() + 1], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (bucket, count) in counts.iter().enumerate() {
        let through = below + count;
        if (through as f64) >= rank && *count > 0 {
            let Some(upper) = BUCKETS.get(bucket) else {
                return Some(Duration::from_secs_f64(BUCKETS[BUCKETS.len() - 1]));
            };
            let lower = if bucket == 0 {
                0.0
            } else {
                BUCKETS[bucket - 1]
            };
            let within = (rank - below as f64) / *count as f64;
            return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
        }
        below = through;
    }
    Some(Duration::from_secs_f64(BUCKETS[BUCKETS.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_cumulative_and_sum_every_observation() {
        let origin = Instant::now();
        let mut histogram = Histogram::new(origin);
        for millis in [0, 1, 3, 3, 70_000] {
            histogram.observe(Duration::from_millis(millis), origin);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum_seconds - 70.007).abs() < 1e-9);
        assert_eq!(snapshot.buckets.len(), BUCKETS.len() + 1);
        assert_eq!(snapshot.buckets[0], (0.0005, 1));
        assert_eq!(snapshot.buckets[1], (0.001, 2));
        assert_eq!(snapshot.buckets[3], (0.005, 4));
        assert_eq!(snapshot.buckets[BUCKETS.len() - 1], (60.0, 4));
        assert_eq!(snapshot.buckets[BUCKETS.len()], (f64::INFINITY, 5));
        assert!(
            snapshot
                .buckets
                .windows(2)
                .all(|pair| pair[0].1 <= pair[1].1)
        );
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let origin = Instant::now();
        let mut histogram = Histogram::new(origin);
        // 100 observations in (5 ms, 10 ms]: the median is half-way through the bucket.
        for _ in 0..100 {
            histogram.observe(Duration::from_millis(8), origin);
        }
        let recent = histogram.recent(Duration::from_secs(60), origin);
        assert_eq!(recent.count, 100);
        let seconds = |value: Option<Duration>| value.map(|value| value.as_secs_f64());
        assert!(
            (seconds(recent.p50).unwrap() - 0.0075).abs() < 1e-9,
            "{recent:?}"
        );
        assert!(
            (seconds(recent.p99).unwrap() - 0.00995).abs() < 1e-9,
            "{recent:?}"
        );
        let empty = Histogram::new(origin).recent(Duration::from_secs(60), origin);
        assert_eq!((empty.count, empty.p50), (0, None));
    }

    #[test]
    fn the_recent_window_forgets_older_seconds() {
        let origin = Instant::now();
        let mut histogram = Histogram::new(origin);
        histogram.observe(Duration::from_secs(2), origin);
        let later = origin + Duration::from_secs(30);
        histogram.observe(Duration::from_millis(1), later);
        assert_eq!(histogram.recent(Duration::from_secs(60), later).count, 2);
        assert_eq!(histogram.recent(Duration::from_secs(10), later).count, 1);
        // A minute on, the slot of the first second is reused for a new one.
        let minute = origin + Duration::from_secs(60);
        histogram.observe(Duration::from_millis(1), minute);
        let recent = histogram.recent(Duration::from_secs(60), minute);
        assert_eq!(recent.count, 2);
        assert!(recent.p99 <= Some(Duration::from_millis(1)));
        // Prometheus still sees all three.
        assert_eq!(histogram.snapshot().count, 3);
    }
}
