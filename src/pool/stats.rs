//! Per-pool statistics kept by poolplane itself, because mobc's own are
//! unlabelled and drift under cancellation (DESIGN.md). Every counter moves
//! in exactly one place, and gauges move through guards so a cancelled
//! future still puts them back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Live counters of one pool, shared by the pool, its leases and its
/// connection driver tasks.
#[derive(Debug)]
pub(crate) struct PoolStats {
    /// Leases handed out and not yet returned.
    active: AtomicU64,
    /// Callers inside `acquire` right now.
    pending: AtomicU64,
    /// Server connections open (connected, driver task still running).
    open: AtomicU64,
    peak_open: AtomicU64,
    acquired: AtomicU64,
    acquire_timeouts: AtomicU64,
    acquire_errors: AtomicU64,
    created: AtomicU64,
    closed: AtomicU64,
    /// Connections found broken (by their driver, a checkout check or a keepalive).
    broken: AtomicU64,
    wait_total_us: AtomicU64,
    wait_max_us: AtomicU64,
    setup_total_us: AtomicU64,
    reset_at: Mutex<SystemTime>,
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
    pub connections_created: u64,
    pub connections_closed: u64,
    pub broken_connections: u64,
    pub average_acquire_wait: Duration,
    pub max_acquire_wait: Duration,
    pub average_connection_setup: Duration,
    pub peak_connections: u64,
    pub uptime: Duration,
    pub reset_at: SystemTime,
}

impl PoolStats {
    pub(crate) fn new() -> PoolStats {
        PoolStats {
            active: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
            acquired: AtomicU64::new(0),
            acquire_timeouts: AtomicU64::new(0),
            acquire_errors: AtomicU64::new(0),
            created: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            wait_total_us: AtomicU64::new(0),
            wait_max_us: AtomicU64::new(0),
            setup_total_us: AtomicU64::new(0),
            reset_at: Mutex::new(SystemTime::now()),
            started: Instant::now(),
        }
    }

    pub(crate) fn pending_guard(&self) -> GaugeGuard<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(&self.pending)
    }

    pub(crate) fn acquired(&self, waited: Duration) {
        let us = micros(waited);
        self.acquired.fetch_add(1, Ordering::Relaxed);
        self.wait_total_us.fetch_add(us, Ordering::Relaxed);
        self.wait_max_us.fetch_max(us, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn released(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn acquire_timed_out(&self) {
        self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acquire_failed(&self) {
        self.acquire_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection is being opened: it counts as open from now on, so
    /// its driver can never report it closed before it was counted.
    pub(crate) fn connection_opening(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self, setup: Duration) {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.setup_total_us
            .fetch_add(micros(setup), Ordering::Relaxed);
    }

    pub(crate) fn connection_not_opened(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_broke(&self) {
        self.broken.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Zeroes counters and averages; gauges (active, pending, open) are
    /// facts about now and stay, and the peak restarts from the current count.
    pub(crate) fn reset(&self) {
        for counter in [
            &self.acquired,
            &self.acquire_timeouts,
            &self.acquire_errors,
            &self.created,
            &self.closed,
            &self.broken,
            &self.wait_total_us,
            &self.wait_max_us,
            &self.setup_total_us,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.peak_open
            .store(self.open.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Ok(mut reset_at) = self.reset_at.lock() {
            *reset_at = SystemTime::now();
        }
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let active = self.active.load(Ordering::Relaxed);
        let total = self.open.load(Ordering::Relaxed);
        let acquired = self.acquired.load(Ordering::Relaxed);
        let created = self.created.load(Ordering::Relaxed);
        StatsSnapshot {
            active,
            // A lease can outlive its connection's driver (a broken connection
            // still held), so idle is clamped rather than trusted to subtract.
            idle: total.saturating_sub(active),
            total,
            pending: self.pending.load(Ordering::Relaxed),
            acquisitions_succeeded: acquired,
            acquire_timeouts: self.acquire_timeouts.load(Ordering::Relaxed),
            acquire_errors: self.acquire_errors.load(Ordering::Relaxed),
            connections_created: created,
            connections_closed: self.closed.load(Ordering::Relaxed),
            broken_connections: self.broken.load(Ordering::Relaxed),
            average_acquire_wait: average(self.wait_total_us.load(Ordering::Relaxed), acquired),
            max_acquire_wait: Duration::from_micros(self.wait_max_us.load(Ordering::Relaxed)),
            average_connection_setup: average(self.setup_total_us.load(Ordering::Relaxed), created),
            peak_connections: self.peak_open.load(Ordering::Relaxed),
            uptime: self.started.elapsed(),
            reset_at: self
                .reset_at
                .lock()
                .map(|at| *at)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// Decrements its gauge when dropped, including when the future holding it
/// is cancelled.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn average(total_us: u64, count: u64) -> Duration {
    Duration::from_micros(total_us.checked_div(count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_gauge_returns_when_guard_drops() {
        let stats = PoolStats::new();
        let guard = stats.pending_guard();
        assert_eq!(stats.snapshot().pending, 1);
        drop(guard);
        assert_eq!(stats.snapshot().pending, 0);
    }

    #[test]
    fn reset_keeps_gauges_and_restarts_peak() {
        let stats = PoolStats::new();
        for setup in [4, 2] {
            stats.connection_opening();
            stats.connection_opened(Duration::from_millis(setup));
        }
        stats.connection_closed();
        stats.acquired(Duration::from_millis(10));
        stats.reset();
        let snap = stats.snapshot();
        assert_eq!(snap.total, 1);
        assert_eq!(snap.active, 1);
        assert_eq!(snap.peak_connections, 1);
        assert_eq!(snap.connections_created, 0);
        assert_eq!(snap.acquisitions_succeeded, 0);
        assert_eq!(snap.average_acquire_wait, Duration::ZERO);
    }

    #[test]
    fn averages_divide_by_their_own_counts() {
        let stats = PoolStats::new();
        stats.acquired(Duration::from_millis(10));
        stats.acquired(Duration::from_millis(30));
        stats.connection_opening();
        stats.connection_opened(Duration::from_millis(6));
        let snap = stats.snapshot();
        assert_eq!(snap.average_acquire_wait, Duration::from_millis(20));
        assert_eq!(snap.max_acquire_wait, Duration::from_millis(30));
        assert_eq!(snap.average_connection_setup, Duration::from_millis(6));
        assert_eq!(snap.peak_connections, 1);
    }
}
