//! The autoscaler's arithmetic, in the shape of Knative's KPA, kept free of locks,
//! clocks and tasks so it can be tested as plain numbers.
//!
//! `load = request_count / container_count`, in the seed's words: the input is the
//! average number of requests in flight or waiting (the demand), sampled every tick.
//! Desired replicas are `ceil(demand / (concurrency × target utilisation))` averaged
//! over a stable window, or over a short panic window when a burst at least doubles
//! what the current replicas can take; while panicking the count never goes down.
//! Going down waits for the scale-down delay (the highest count wanted over that
//! delay wins), and going to zero waits for the idle timeout.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How a service scales. Every duration is the service's own or the node's default.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSettings {
    /// Fewest replicas; 0 allows scaling to zero.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests one replica serves at once.
    pub concurrency: u32,
    /// Target utilisation of that concurrency, in percent.
    pub target_percent: u32,
    /// Window over which demand is averaged for normal decisions.
    pub stable_window: Duration,
    /// Shorter window that detects bursts.
    pub panic_window: Duration,
    /// How long a lower count must be wanted before replicas are removed.
    pub scale_down_delay: Duration,
    /// How long a service with `min: 0` must be idle before it goes to zero.
    pub idle_timeout: Duration,
    /// Requests that may wait for a replica; more are refused with 503.
    pub queue_limit: u32,
    /// How long a request may wait for a replica before it is refused with 503.
    pub queue_timeout: Duration,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        ScaleSettings {
            min: 1,
            max: 10,
            concurrency: 1,
            target_percent: 70,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            scale_down_delay: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            queue_limit: 100,
            queue_timeout: Duration::from_secs(10),
        }
    }
}

impl ScaleSettings {
    /// How often demand is sampled: several samples per panic window, never slower
    /// than a second, never busier than every 20 ms.
    pub fn tick(&self) -> Duration {
        (self.panic_window / 6).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Demand one replica is meant to carry.
    fn per_replica(&self) -> f64 {
        f64::from(self.concurrency) * f64::from(self.target_percent.clamp(1, 100)) / 100.0
    }
}

/// What the autoscaler concluded at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Replicas wanted now, clamped to `[min, max]`.
    pub desired: u32,
    /// Average demand over the stable window.
    pub stable_demand: f64,
    /// Average demand over the panic window.
    pub panic_demand: f64,
    /// Whether a burst put the autoscaler in panic mode.
    pub panicking: bool,
}

/// The autoscaler's memory: demand samples and recent decisions. Each pool keeps one; in a
/// cluster, the leader keeps one per service, fed the demand summed across nodes.
#[derive(Debug, Default)]
pub struct Autoscaler {
    samples: VecDeque<(Instant, f64)>,
    wanted: VecDeque<(Instant, u32)>,
    panic_until: Option<Instant>,
}

impl Autoscaler {
    /// Records the average demand since the previous sample.
    pub fn observe(&mut self, now: Instant, demand: f64) {
        self.samples.push_back((now, demand));
    }

    /// Decides how many replicas the service should have.
    pub fn decide(
        &mut self,
        now: Instant,
        settings: &ScaleSettings,
        current: u32,
        idle_for: Duration,
    ) -> Decision {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= settings.stable_window)
        {
            self.samples.pop_front();
        }
        let mean = |window: Duration| {
            let recent: Vec<f64> = self
                .samples
                .iter()
                .filter(|(t, _)| now.duration_since(*t) < window)
                .map(|(_, d)| *d)
                .collect();
            if recent.is_empty() {
                0.0
            } else {
                recent.iter().sum::<f64>() / recent.len() as f64
            }
        };
        let stable_demand = mean(settings.stable_window);
        let panic_demand = mean(settings.panic_window);
        let replicas_for = |demand: f64| {
            (demand / settings.per_replica())
                .ceil()
                .min(f64::from(u32::MAX)) as u32
        };
        let (want_stable, want_panic) = (replicas_for(stable_demand), replicas_for(panic_demand));

        if current > 0 && f64::from(want_panic) >= 2.0 * f64::from(current) {
            self.panic_until = Some(now + settings.stable_window);
        }
        let panicking = self.panic_until.is_some_and(|until| now < until);
        let mut desired = if panicking {
            want_panic.max(current)
        } else {
            want_stable
        };
        desired = desired.clamp(settings.min, settings.max.max(settings.min));

        // Going down waits: the highest count wanted over the scale-down delay wins.
        self.wanted.push_back((now, desired));
        while self
            .wanted
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > settings.scale_down_delay)
        {
            self.wanted.pop_front();
        }
        desired = self.wanted.iter().map(|(_, n)| *n).max().unwrap_or(desired);

        // Going to zero waits for the idle timeout.
        if desired == 0 && current > 0 && idle_for < settings.idle_timeout {
            desired = 1;
        }
        // The bounds hold whatever was wanted before: a lowered maximum applies at once.
        desired = desired.clamp(settings.min, settings.max.max(settings.min));
        Decision {
            desired,
            stable_demand,
            panic_demand,
            panicking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScaleSettings {
        ScaleSettings {
            min: 1,
            max: 10,
            concurrency: 1,
            target_percent: 100,
            stable_window: Duration::from_secs(10),
            panic_window: Duration::from_secs(1),
            scale_down_delay: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3),
            ..ScaleSettings::default()
        }
    }

    #[test]
    fn a_lowered_maximum_applies_at_once() {
        let start = Instant::now();
        let mut scaler = Autoscaler::default();
        scaler.observe(start, 5.0);
        assert_eq!(
            scaler.decide(start, &settings(), 5, Duration::ZERO).desired,
            5
        );
        // The scale-down delay would keep 5, and the idle timeout 1: the bounds win.
        let lowered = ScaleSettings {
            min: 0,
            max: 2,
            ..settings()
        };
        let later = start + Duration::from_millis(100);
        assert_eq!(scaler.decide(later, &lowered, 5, Duration::ZERO).desired, 2);
        let none = ScaleSettings {
            min: 0,
            max: 0,
            ..settings()
        };
        assert_eq!(scaler.decide(later, &none, 2, Duration::ZERO).desired, 0);
    }

    #[test]
    fn scales_to_demand_within_bounds() {
        let start = Instant::now();
        let mut scaler = Autoscaler::default();
        scaler.observe(start, 3.0);
        let decision = scaler.decide(start, &settings(), 3, Duration::ZERO);
        assert_eq!(decision.desired, 3);
        scaler.observe(start, 50.0);
        assert_eq!(
            scaler.decide(start, &settings(), 3, Duration::ZERO).desired,
            10
        );
    }

    #[test]
    fn target_utilisation_leaves_headroom() {
        let mut settings = settings();
        settings.target_percent = 70;
        let mut scaler = Autoscaler::default();
        let now = Instant::now();
        scaler.observe(now, 7.0);
        assert_eq!(
            scaler.decide(now, &settings, 10, Duration::ZERO).desired,
            10
        );
        scaler.observe(now, 7.0);
        settings.concurrency = 10;
        // 7 in flight over replicas of 10 × 70% = 7: one replica.
        let mut fresh = Autoscaler::default();
        fresh.observe(now, 7.0);
        assert_eq!(fresh.decide(now, &settings, 1, Duration::ZERO).desired, 1);
    }

    #[test]
    fn bursts_panic_and_never_scale_down_while_panicking() {
        let start = Instant::now();
        let mut scaler = Autoscaler::default();
        let settings = settings();
        for i in 0..9 {
            scaler.observe(start + Duration::from_secs(i), 1.0);
        }
        let t = start + Duration::from_secs(9);
        scaler.observe(t, 8.0);
        // Stable average is 1.7 (2 replicas), the panic window says 8: panic, take 8.
        let decision = scaler.decide(t, &settings, 2, Duration::ZERO);
        assert!(decision.panicking);
        assert_eq!(decision.desired, 8);
        // The burst ends, but while panicking the count does not fall.
        let later = t + Duration::from_secs(2);
        scaler.observe(later, 0.0);
        let decision = scaler.decide(later, &settings, 8, Duration::ZERO);
        assert!(decision.panicking);
        assert_eq!(decision.desired, 8);
    }

    #[test]
    fn scale_down_waits_for_the_delay_and_zero_waits_for_idle() {
        let start = Instant::now();
        let mut settings = settings();
        settings.min = 0;
        let mut scaler = Autoscaler::default();
        scaler.observe(start, 4.0);
        assert_eq!(
            scaler.decide(start, &settings, 4, Duration::ZERO).desired,
            4
        );
        // Demand and the delay are past, but the service has not been idle long enough.
        let t = start + Duration::from_secs(11);
        scaler.observe(t, 0.0);
        assert_eq!(
            scaler.decide(t, &settings, 4, Duration::ZERO).desired,
            1,
            "kept at one until idle"
        );
        let t = start + Duration::from_secs(12);
        scaler.observe(t, 0.0);
        assert_eq!(
            scaler
                .decide(t, &settings, 4, Duration::from_secs(12))
                .desired,
            0
        );
    }
}
