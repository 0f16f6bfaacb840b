//! Per-pool statistics: counters of what happened (acquisitions by
//! outcome, connections created and closed by reason, SQL errors by class)
//! and duration histograms. Every counter moves in exactly one place, and
//! every acquisition attempt ends in exactly one outcome (a dropped attempt
//! counts as cancelled).
//!
//! Gauges of connections (open, idle, active, peak) are not kept here: they
//! are read from the pool core's table, their one source, and passed to
//! [`PoolStats::snapshot`].
//!
//! Histograms are fixed-bucket atomics, read at scrape time; recording one
//! value is a short scan and two relaxed atomic adds.
//!
//! Counters only go up, for the life of the pool: Prometheus' `rate()`
//! depends on it. `ResetStatistics` does not touch them; it records a
//! baseline, and [`PoolStats::since_reset`] (what `GetPool` reports)
//! subtracts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::core::ConnCounts;

/// Upper bounds of the histogram buckets, in microseconds (0.5 ms … 30 s).
pub(crate) const BUCKET_BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// How an acquisition attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireOutcome {
    Success,
    /// No connection within the acquire timeout.
    Timeout,
    /// A connect failed, or the pool failed fast (database unreachable).
    Error,
    /// The pool was draining.
    Rejected,
    /// The caller went away while waiting.
    Cancelled,
}

impl AcquireOutcome {
    pub const ALL: [AcquireOutcome; 5] = [
        AcquireOutcome::Success,
        AcquireOutcome::Timeout,
        AcquireOutcome::Error,
        AcquireOutcome::Rejected,
        AcquireOutcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AcquireOutcome::Success => "success",
            AcquireOutcome::Timeout => "timeout",
            AcquireOutcome::Error => "error",
            AcquireOutcome::Rejected => "rejected",
            AcquireOutcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a server connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle longer than `idle_timeout` above `min_connections`.
    Idle,
    /// Older than `max_lifetime`.
    Lifetime,
    /// The server or the network ended it, or a check failed.
    Broken,
    /// Its work was cancelled or abandoned, so it is not reused.
    Discarded,
    /// Its pool generation was retired (resize) or the pool drained.
    Retired,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Idle,
        CloseReason::Lifetime,
        CloseReason::Broken,
        CloseReason::Discarded,
        CloseReason::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Broken => "broken",
            CloseReason::Discarded => "discarded",
            CloseReason::Retired => "retired",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// SQLSTATE classes PostgreSQL defines (appendix A of its manual). A code
/// outside them (a custom `RAISE ... USING ERRCODE`) counts as `other`, so
/// the label stays a closed set.
pub const SQLSTATE_CLASSES: [&str; 44] = [
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23",
    "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42",
    "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX", "other",
];

/// The index in [`SQLSTATE_CLASSES`] of a SQLSTATE's class.
fn sqlstate_class_index(sqlstate: &str) -> usize {
    let class = sqlstate.get(..2).unwrap_or("");
    SQLSTATE_CLASSES
        .iter()
        .position(|known| *known == class)
        .unwrap_or(SQLSTATE_CLASSES.len() - 1)
}

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Non-cumulative counts; the last is above the largest bound.
    counts: [AtomicU64; BUCKET_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram read: cumulative counts per bound, then the total.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it)
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub(crate) fn record(&self, value: Duration) {
        let us = micros(value);
        let index = BUCKET_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKET_BOUNDS_US.len());
        for (bound, count) in BUCKET_BOUNDS_US.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let count = cumulative + self.counts[BUCKET_BOUNDS_US.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Live counters of one pool, shared by the pool, its leases and its
/// connection driver tasks.
#[derive(Debug)]
pub(crate) struct PoolStats {
    /// Callers inside `acquire` right now (a guard lowers it however the
    /// call ends).
    pending: AtomicU64,
    outcomes: [AtomicU64; 5],
    created: AtomicU64,
    closed: [AtomicU64; 5],
    /// Connections found broken (by their driver, a checkout check or a keepalive).
    broken: AtomicU64,
    /// Errors of the callers' own SQL, by SQLSTATE class: not pool failures.
    sql_errors: [AtomicU64; SQLSTATE_CLASSES.len()],
    wait_max_us: AtomicU64,
    pub(crate) acquire_wait: Histogram,
    pub(crate) hold: Histogram,
    pub(crate) setup: Histogram,
    pub(crate) statement: Histogram,
    /// The lifetime counters at the last reset (all zero before one), with
    /// the time of that reset.
    baseline: Mutex<StatsSnapshot>,
    started: Instant,
}

/// A consistent-enough copy of the counters for reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub active: u64,
    pub idle: u64,
    pub total: u64,
    pub pending: u64,
    pub acquisitions_succeeded: u64,
    pub acquire_timeouts: u64,
    pub acquire_errors: u64,
    pub acquire_rejected: u64,
    pub acquire_cancelled: u64,
    pub connections_created: u64,
    pub connections_closed: u64,
    /// Closed connections by reason, in `CloseReason::ALL` order.
    pub closed_by_reason: [u64; 5],
    pub broken_connections: u64,
    pub average_acquire_wait: Duration,
    /// Sum of every acquisition's wait (for averages over an interval).
    pub acquire_wait_total: Duration,
    pub max_acquire_wait: Duration,
    pub average_connection_setup: Duration,
    /// Sum of every connection's setup time.
    pub connection_setup_total: Duration,
    pub peak_connections: u64,
    pub uptime: Duration,
    pub reset_at: SystemTime,
}

impl StatsSnapshot {
    /// All zeros: the statistics of a pool before anything happened.
    pub fn zero() -> StatsSnapshot {
        StatsSnapshot {
            active: 0,
            idle: 0,
            total: 0,
            pending: 0,
            acquisitions_succeeded: 0,
            acquire_timeouts: 0,
            acquire_errors: 0,
            acquire_rejected: 0,
            acquire_cancelled: 0,
            connections_created: 0,
            connections_closed: 0,
            closed_by_reason: [0; 5],
            broken_connections: 0,
            average_acquire_wait: Duration::ZERO,
            acquire_wait_total: Duration::ZERO,
            max_acquire_wait: Duration::ZERO,
            average_connection_setup: Duration::ZERO,
            connection_setup_total: Duration::ZERO,
            peak_connections: 0,
            uptime: Duration::ZERO,
            reset_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Acquisition attempts that ended, whatever the outcome.
    pub fn acquisition_attempts(&self) -> u64 {
        self.acquisitions_succeeded
            + self.acquire_timeouts
            + self.acquire_errors
            + self.acquire_rejected
            + self.acquire_cancelled
    }

    /// What happened since `baseline` (an earlier lifetime snapshot):
    /// counters and averages over the difference; gauges, the maximum wait
    /// and the uptime as they are now.
    fn since(&self, baseline: &StatsSnapshot) -> StatsSnapshot {
        let delta = |now: u64, then: u64| now.saturating_sub(then);
        let closed_by_reason: [u64; 5] = std::array::from_fn(|reason| {
            delta(
                self.closed_by_reason[reason],
                baseline.closed_by_reason[reason],
            )
        });
        let acquire_wait_total = self
            .acquire_wait_total
            .saturating_sub(baseline.acquire_wait_total);
        let connection_setup_total = self
            .connection_setup_total
            .saturating_sub(baseline.connection_setup_total);
        let mut since = StatsSnapshot {
            acquisitions_succeeded: delta(
                self.acquisitions_succeeded,
                baseline.acquisitions_succeeded,
            ),
            acquire_timeouts: delta(self.acquire_timeouts, baseline.acquire_timeouts),
            acquire_errors: delta(self.acquire_errors, baseline.acquire_errors),
            acquire_rejected: delta(self.acquire_rejected, baseline.acquire_rejected),
            acquire_cancelled: delta(self.acquire_cancelled, baseline.acquire_cancelled),
            connections_created: delta(self.connections_created, baseline.connections_created),
            connections_closed: closed_by_reason.iter().sum(),
            closed_by_reason,
            broken_connections: delta(self.broken_connections, baseline.broken_connections),
            acquire_wait_total,
            connection_setup_total,
            reset_at: baseline.reset_at,
            ..self.clone()
        };
        since.average_acquire_wait = average(
            acquire_wait_total.as_secs_f64(),
            since.acquisition_attempts(),
        );
        since.average_connection_setup = average(
            connection_setup_total.as_secs_f64(),
            since.connections_created,
        );
        since
    }
}

/// One acquisition in progress: counted as pending until it ends, and it
/// ends in exactly one outcome (cancelled if dropped unfinished).
pub(crate) struct AcquireAttempt<'a> {
    stats: &'a PoolStats,
    started: Instant,
    finished: bool,
}

impl AcquireAttempt<'_> {
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn finish(mut self, outcome: AcquireOutcome) -> Duration {
        self.finished = true;
        let waited = self.started.elapsed();
        self.stats.record_outcome(outcome, waited);
        waited
    }
}

impl Drop for AcquireAttempt<'_> {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.stats
                .record_outcome(AcquireOutcome::Cancelled, self.started.elapsed());
        }
    }
}

impl PoolStats {
    pub(crate) fn new() -> PoolStats {
        PoolStats {
            pending: AtomicU64::new(0),
            outcomes: Default::default(),
            created: AtomicU64::new(0),
            closed: Default::default(),
            broken: AtomicU64::new(0),
            sql_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            wait_max_us: AtomicU64::new(0),
            acquire_wait: Histogram::default(),
            hold: Histogram::default(),
            setup: Histogram::default(),
            statement: Histogram::default(),
            baseline: Mutex::new(StatsSnapshot {
                reset_at: SystemTime::now(),
                ..StatsSnapshot::zero()
            }),
            started: Instant::now(),
        }
    }

    pub(crate) fn begin_acquire(&self) -> AcquireAttempt<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        AcquireAttempt {
            stats: self,
            started: Instant::now(),
            finished: false,
        }
    }

    fn record_outcome(&self, outcome: AcquireOutcome, waited: Duration) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.acquire_wait.record(waited);
        self.wait_max_us
            .fetch_max(micros(waited), Ordering::Relaxed);
    }

    pub(crate) fn released(&self, held: Duration) {
        self.hold.record(held);
    }

    pub(crate) fn connection_opened(&self, setup: Duration) {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.setup.record(setup);
    }

    pub(crate) fn connection_broke(&self) {
        self.broken.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn statement_ran(&self, duration: Duration) {
        self.statement.record(duration);
    }

    pub(crate) fn sql_error(&self, sqlstate: &str) {
        self.sql_errors[sqlstate_class_index(sqlstate)].fetch_add(1, Ordering::Relaxed);
    }

    /// SQL errors by class, in [`SQLSTATE_CLASSES`] order.
    pub(crate) fn sql_errors(&self) -> Vec<u64> {
        self.sql_errors
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    /// Starts what [`PoolStats::since_reset`] reports over from now: the
    /// lifetime counters become the baseline, and the maximum wait starts
    /// again. No counter goes down.
    pub(crate) fn reset(&self) {
        let now = self.lifetime(ConnCounts::default());
        self.wait_max_us.store(0, Ordering::Relaxed);
        if let Ok(mut baseline) = self.baseline.lock() {
            *baseline = StatsSnapshot {
                reset_at: SystemTime::now(),
                ..now
            };
        }
    }

    /// What happened since the last reset (or since start): what `GetPool`
    /// reports.
    pub(crate) fn since_reset(&self, counts: ConnCounts) -> StatsSnapshot {
        let now = self.lifetime(counts);
        match self.baseline.lock() {
            Ok(baseline) => now.since(&baseline),
            Err(_) => now,
        }
    }

    /// The counters over the pool's life (never reset), with the connection
    /// gauges `counts` read from the core: what Prometheus and the monitor read.
    pub(crate) fn lifetime(&self, counts: ConnCounts) -> StatsSnapshot {
        let outcome = |o: AcquireOutcome| self.outcomes[o.index()].load(Ordering::Relaxed);
        let closed_by_reason =
            CloseReason::ALL.map(|r| self.closed[r.index()].load(Ordering::Relaxed));
        let wait = self.acquire_wait.snapshot();
        let setup = self.setup.snapshot();
        StatsSnapshot {
            active: counts.active(),
            idle: counts.available(),
            total: counts.open(),
            pending: self.pending.load(Ordering::Relaxed),
            acquisitions_succeeded: outcome(AcquireOutcome::Success),
            acquire_timeouts: outcome(AcquireOutcome::Timeout),
            acquire_errors: outcome(AcquireOutcome::Error),
            acquire_rejected: outcome(AcquireOutcome::Rejected),
            acquire_cancelled: outcome(AcquireOutcome::Cancelled),
            connections_created: self.created.load(Ordering::Relaxed),
            connections_closed: closed_by_reason.iter().sum(),
            closed_by_reason,
            broken_connections: self.broken.load(Ordering::Relaxed),
            average_acquire_wait: average(wait.sum_seconds, wait.count),
            acquire_wait_total: Duration::from_secs_f64(wait.sum_seconds),
            max_acquire_wait: Duration::from_micros(self.wait_max_us.load(Ordering::Relaxed)),
            average_connection_setup: average(setup.sum_seconds, setup.count),
            connection_setup_total: Duration::from_secs_f64(setup.sum_seconds),
            peak_connections: counts.peak,
            uptime: self.started.elapsed(),
            reset_at: self
                .baseline
                .lock()
                .map(|baseline| baseline.reset_at)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// Times the statistics work one acquisition does (for `poolplane bench`).
pub struct StatsBench;

impl StatsBench {
    /// Nanoseconds per acquisition over `iterations`: the outcome and wait,
    /// the hold time on release, and one statement duration.
    pub fn run(iterations: u64) -> f64 {
        let stats = PoolStats::new();
        let started = Instant::now();
        for i in 0..iterations {
            let attempt = stats.begin_acquire();
            attempt.finish(AcquireOutcome::Success);
            let spread = Duration::from_micros(i % 5_000);
            stats.statement_ran(spread);
            stats.released(spread);
        }
        let elapsed = started.elapsed();
        std::hint::black_box(stats.lifetime(ConnCounts::default()));
        elapsed.as_nanos() as f64 / iterations.max(1) as f64
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn average(sum_seconds: f64, count: u64) -> Duration {
    if count == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(sum_seconds / count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_attempt_is_cancelled_and_no_longer_pending() {
        let stats = PoolStats::new();
        let attempt = stats.begin_acquire();
        assert_eq!(stats.lifetime(ConnCounts::default()).pending, 1);
        drop(attempt);
        let snap = stats.lifetime(ConnCounts::default());
        assert_eq!((snap.pending, snap.acquire_cancelled), (0, 1));
        assert_eq!(stats.acquire_wait.snapshot().count, 1);
    }

    #[test]
    fn every_outcome_is_counted_once_and_timed() {
        let stats = PoolStats::new();
        for outcome in AcquireOutcome::ALL {
            stats.begin_acquire().finish(outcome);
        }
        let snap = stats.lifetime(ConnCounts::default());
        assert_eq!(snap.acquisition_attempts(), 5);
        assert_eq!(snap.acquisitions_succeeded, 1);
        assert_eq!(stats.acquire_wait.snapshot().count, 5);
    }

    #[test]
    fn a_reset_restarts_what_is_reported_and_no_counter_goes_down() {
        let stats = PoolStats::new();
        for setup in [4, 2] {
            stats.connection_opened(Duration::from_millis(setup));
        }
        stats.connection_closed(CloseReason::Idle);
        stats.begin_acquire().finish(AcquireOutcome::Success);
        stats.reset();
        stats.connection_opened(Duration::from_millis(10));
        let counts = ConnCounts {
            idle: 1,
            leased: 1,
            closing: 1,
            peak: 3,
            ..ConnCounts::default()
        };
        let since = stats.since_reset(counts);
        assert_eq!((since.total, since.active, since.idle), (3, 1, 1));
        assert_eq!(since.peak_connections, 3);
        assert_eq!(since.connections_created, 1);
        assert_eq!(since.connections_closed, 0);
        assert_eq!(since.acquisitions_succeeded, 0);
        assert_eq!(since.average_acquire_wait, Duration::ZERO);
        assert_eq!(since.average_connection_setup, Duration::from_millis(10));

        let lifetime = stats.lifetime(counts);
        assert_eq!(lifetime.connections_created, 3);
        assert_eq!(lifetime.connections_closed, 1);
        assert_eq!(lifetime.acquisitions_succeeded, 1);
        assert_eq!(stats.setup.snapshot().count, 3, "histograms keep counting");
        assert_eq!(lifetime.reset_at, since.reset_at);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::default();
        for ms in [0, 3, 3, 40, 60_000] {
            histogram.record(Duration::from_millis(ms));
        }
        let snap = histogram.snapshot();
        assert_eq!(snap.count, 5);
        assert_eq!(snap.buckets[0], (0.0005, 1));
        assert_eq!(snap.buckets[3], (0.005, 3));
        assert_eq!(snap.buckets[6], (0.05, 4));
        assert_eq!(
            snap.buckets.last(),
            Some(&(30.0, 4)),
            "60 s is above every bound"
        );
        assert!((snap.sum_seconds - 60.046).abs() < 1e-9);
    }

    #[test]
    fn sql_errors_are_counted_by_known_class_or_other() {
        let stats = PoolStats::new();
        stats.sql_error("22012");
        stats.sql_error("22P02");
        stats.sql_error("ZZ999");
        let counts = stats.sql_errors();
        let at = |class: &str| {
            counts[SQLSTATE_CLASSES
                .iter()
                .position(|c| *c == class)
                .unwrap_or(0)]
        };
        assert_eq!((at("22"), at("other"), at("42")), (2, 1, 0));
    }

    #[test]
    fn closes_are_counted_by_reason() {
        let stats = PoolStats::new();
        stats.connection_closed(CloseReason::Lifetime);
        stats.connection_closed(CloseReason::Broken);
        let snap = stats.lifetime(ConnCounts::default());
        assert_eq!(snap.connections_closed, 2);
        assert_eq!(snap.closed_by_reason, [0, 1, 1, 0, 0]);
    }
}
