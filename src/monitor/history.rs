//! Metrics samples: what one pool did over one collection interval,
//! computed from two statistics snapshots, and the bounded history of them.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::health::HealthState;
use crate::pool::StatsSnapshot;

/// One pool over one collection interval (ending at `time`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSample {
    pub pool: String,
    pub time: SystemTime,
    pub acquisitions_per_second: f64,
    pub connections_created_per_second: f64,
    pub average_acquire_wait: Duration,
    /// Active / max at `time`.
    pub utilization: f64,
    /// Pool-side failures (acquire timeouts, connect errors, broken
    /// connections) / acquisition attempts in the interval, at most 1.
    pub error_rate: f64,
    pub acquire_timeouts: u64,
    pub active: u64,
    pub idle: u64,
    pub total: u64,
    pub pending: u64,
    pub max: u32,
    pub peak_connections: u64,
    pub uptime: Duration,
    pub health: HealthState,
}

/// Inputs for one pool's sample.
pub struct SampleInput<'a> {
    pub pool: &'a str,
    pub previous: Option<&'a StatsSnapshot>,
    pub current: &'a StatsSnapshot,
    pub interval: Duration,
    pub max: u32,
    pub health: HealthState,
    pub time: SystemTime,
}

/// The change of a counter over the interval; a counter that went down was
/// reset (ResetStatistics), so its whole current value is the change.
fn delta(previous: u64, current: u64) -> u64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

pub fn sample(input: SampleInput<'_>) -> MetricsSample {
    let now = input.current;
    let zero = StatsSnapshot::zero();
    let before = input.previous.unwrap_or(&zero);
    let attempts = delta(before.acquisition_attempts(), now.acquisition_attempts());
    let timeouts = delta(before.acquire_timeouts, now.acquire_timeouts);
    let failures = timeouts
        + delta(before.acquire_errors, now.acquire_errors)
        + delta(before.broken_connections, now.broken_connections);
    let wait = now.acquire_wait_total.saturating_sub(
        if now.acquire_wait_total >= before.acquire_wait_total {
            before.acquire_wait_total
        } else {
            Duration::ZERO
        },
    );
    let seconds = input.interval.as_secs_f64().max(1e-9);
    MetricsSample {
        pool: input.pool.to_string(),
        time: input.time,
        acquisitions_per_second: delta(before.acquisitions_succeeded, now.acquisitions_succeeded)
            as f64
            / seconds,
        connections_created_per_second: delta(before.connections_created, now.connections_created)
            as f64
            / seconds,
        average_acquire_wait: if attempts == 0 {
            Duration::ZERO
        } else {
            wait / u32::try_from(attempts).unwrap_or(u32::MAX)
        },
        utilization: if input.max == 0 {
            0.0
        } else {
            now.active as f64 / f64::from(input.max)
        },
        error_rate: if attempts == 0 {
            0.0
        } else {
            (failures as f64 / attempts as f64).min(1.0)
        },
        acquire_timeouts: timeouts,
        active: now.active,
        idle: now.idle,
        total: now.total,
        pending: now.pending,
        max: input.max,
        peak_connections: now.peak_connections,
        uptime: now.uptime,
        health: input.health,
    }
}

/// The samples of one pool, newest last, bounded by count and age.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<MetricsSample>,
    capacity: usize,
    retention: Duration,
}

impl History {
    /// Enough room for `retention` at one sample per `interval`.
    pub fn new(retention: Duration, interval: Duration) -> History {
        let per_retention = retention.as_nanos() / interval.as_nanos().max(1);
        let capacity = usize::try_from(per_retention + 1)
            .unwrap_or(usize::MAX)
            .clamp(1, 100_000);
        History {
            samples: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            retention,
        }
    }

    pub fn push(&mut self, sample: MetricsSample) {
        let oldest_kept = sample.time.checked_sub(self.retention);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        if let Some(oldest_kept) = oldest_kept {
            while self.samples.front().is_some_and(|s| s.time < oldest_kept) {
                self.samples.pop_front();
            }
        }
    }

    /// Samples with `from <= time <= to` (either bound optional), oldest first.
    pub fn range(&self, from: Option<SystemTime>, to: Option<SystemTime>) -> Vec<MetricsSample> {
        self.samples
            .iter()
            .filter(|s| from.is_none_or(|from| s.time >= from) && to.is_none_or(|to| s.time <= to))
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Option<&MetricsSample> {
        self.samples.back()
    }

    /// At most `points` values of `value` over the whole history, oldest
    /// first: every sample when they fit, otherwise the samples split into
    /// `points` consecutive groups and the largest value of each kept (a
    /// peak stays visible however long the history), with the time the
    /// history spans.
    pub fn downsampled(
        &self,
        points: usize,
        value: impl Fn(&MetricsSample) -> f64,
    ) -> (Vec<f64>, Duration) {
        let span = match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) => last.time.duration_since(first.time).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let n = self.samples.len();
        if points == 0 || n == 0 {
            return (Vec::new(), span);
        }
        if n <= points {
            return (self.samples.iter().map(value).collect(), span);
        }
        let mut out = vec![f64::NEG_INFINITY; points];
        for (i, sample) in self.samples.iter().enumerate() {
            let slot = &mut out[i * points / n];
            *slot = slot.max(value(sample));
        }
        (out, span)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> MetricsSample {
        let mut s = sample(SampleInput {
            pool: "p",
            previous: None,
            current: &StatsSnapshot::zero(),
            interval: Duration::from_secs(1),
            max: 10,
            health: HealthState::Healthy,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        });
        s.uptime = Duration::from_secs(seconds);
        s
    }

    #[test]
    fn retention_bounds_the_history_by_age_and_count() {
        let mut history = History::new(Duration::from_secs(10), Duration::from_secs(1));
        for t in 0..100 {
            history.push(at(t));
        }
        assert_eq!(history.len(), 11);
        assert_eq!(
            history
                .range(None, None)
                .first()
                .map(|s| s.uptime.as_secs()),
            Some(89)
        );
    }

    #[test]
    fn range_is_inclusive_and_ordered() {
        let mut history = History::new(Duration::from_secs(100), Duration::from_secs(1));
        for t in 0..10 {
            history.push(at(t));
        }
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(3);
        let to = SystemTime::UNIX_EPOCH + Duration::from_secs(6);
        let got: Vec<u64> = history
            .range(Some(from), Some(to))
            .iter()
            .map(|s| s.uptime.as_secs())
            .collect();
        assert_eq!(got, [3, 4, 5, 6]);
    }

    #[test]
    fn downsampling_keeps_each_groups_peak_and_the_span() {
        let mut history = History::new(Duration::from_secs(1000), Duration::from_secs(1));
        for t in 0..10 {
            let mut s = at(t);
            s.utilization = if t == 7 { 0.9 } else { t as f64 / 100.0 };
            history.push(s);
        }
        let (all, span) = history.downsampled(20, |s| s.utilization);
        assert_eq!(all.len(), 10);
        assert_eq!(span, Duration::from_secs(9));
        let (five, _) = history.downsampled(5, |s| s.utilization);
        // Pairs (0,1) (2,3) (4,5) (6,7) (8,9): each pair's larger value.
        assert_eq!(five, [0.01, 0.03, 0.05, 0.9, 0.09]);
        assert!(history.downsampled(0, |s| s.utilization).0.is_empty());
        let empty = History::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(
            empty.downsampled(5, |s| s.utilization),
            (vec![], Duration::ZERO)
        );
    }

    #[test]
    fn rates_and_ratios_come_from_the_interval() {
        let mut before = StatsSnapshot::zero();
        before.acquisitions_succeeded = 100;
        let mut now = before.clone();
        now.acquisitions_succeeded = 120;
        now.acquire_timeouts = 5;
        now.broken_connections = 5;
        now.active = 4;
        now.acquire_wait_total = Duration::from_millis(250);
        let s = sample(SampleInput {
            pool: "p",
            previous: Some(&before),
            current: &now,
            interval: Duration::from_secs(2),
            max: 8,
            health: HealthState::Healthy,
            time: SystemTime::UNIX_EPOCH,
        });
        assert!((s.acquisitions_per_second - 10.0).abs() < 1e-9);
        assert!((s.utilization - 0.5).abs() < 1e-9);
        // 25 attempts (20 successes + 5 timeouts), 10 pool-side failures.
        assert!((s.error_rate - 0.4).abs() < 1e-9);
        assert_eq!(s.average_acquire_wait, Duration::from_millis(10));
        assert_eq!(s.acquire_timeouts, 5);
    }
}
