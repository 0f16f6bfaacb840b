//! The status page's data: one snapshot of every pool — connections,
//! utilization, health, acquire-wait p99 over the last minute, active
//! alerts, a utilization sparkline from the monitoring history — read from
//! [`App`]. Pure data, bounded in size whatever the pools hold (alerts per
//! pool, message length, sparkline points); `http/status.rs` serves it as
//! `/status.json` and over Server-Sent Events.
//!
//! Invariant: no HTTP here.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::app::App;
use crate::monitor::{Alert, AlertState};
use crate::pool::{HistogramSnapshot, PoolState};

/// Active alerts listed per pool (the most severe, then the newest); the
/// snapshot still counts them all (`alerts_active`).
pub const MAX_ALERTS_PER_POOL: usize = 10;
/// An alert's message is cut to this many characters (a session leak's
/// message carries up to 200 characters of the last statement).
pub const MAX_ALERT_MESSAGE_CHARS: usize = 300;
/// Values in a pool's utilization sparkline, whatever the retention.
pub const SPARKLINE_POINTS: usize = 60;
/// The acquire-wait p99 covers the acquisitions of about this long.
pub const WAIT_WINDOW: Duration = Duration::from_secs(60);
/// How often a pool's acquire-wait histogram is remembered for the window.
const WAIT_WINDOW_STEP: Duration = Duration::from_secs(10);

/// Every pool, at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusSnapshot {
    /// RFC 3339, UTC, milliseconds.
    pub generated_at: String,
    /// The event bus's last sequence before the snapshot was read: the
    /// snapshot reflects at least every event up to it.
    pub sequence: u64,
    pub pools: Vec<PoolStatus>,
}

/// One pool's row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    /// `unknown`, `healthy`, `degraded` or `unhealthy`.
    pub health: &'static str,
    /// `serving`, `draining` or `closed`.
    pub state: &'static str,
    pub paused: bool,
    /// Connections lent to callers.
    pub active: u64,
    pub idle: u64,
    /// Every server connection the pool has open, whatever its state.
    pub open: u64,
    pub max: u32,
    pub min: u32,
    /// Callers waiting for a connection.
    pub pending: u64,
    /// Active / max.
    pub utilization: f64,
    /// The pool's high-utilization alert threshold.
    pub utilization_threshold: f64,
    /// The 99th percentile of the acquire wait over `acquire_wait_window_seconds`,
    /// `null` when nothing was acquired in it.
    pub acquire_wait_p99_seconds: Option<f64>,
    pub acquire_wait_window_seconds: f64,
    /// Acquisitions (any outcome) in that window.
    pub acquisitions_in_window: u64,
    /// Every active alert of the pool; at most [`MAX_ALERTS_PER_POOL`] of
    /// them are listed in `alerts`.
    pub alerts_active: usize,
    pub alerts: Vec<AlertStatus>,
    /// Utilization over the monitoring history, oldest first, at most
    /// [`SPARKLINE_POINTS`] values (each the peak of its stretch).
    pub utilization_history: Vec<f64>,
    /// The time that history spans.
    pub history_seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertStatus {
    pub id: u64,
    pub rule: &'static str,
    /// `warning`, `error` or `critical`.
    pub severity: &'static str,
    /// `firing` or `acknowledged`.
    pub state: &'static str,
    /// Plain text (it may quote SQL): escape it wherever it is shown.
    pub message: String,
    pub fired_at: String,
}

/// Reads every pool of `app` now. `window` remembers recent acquire-wait
/// histograms so the p99 covers the last minute rather than the pool's
/// whole life.
pub fn snapshot(app: &App, window: &WaitWindow) -> StatusSnapshot {
    let sequence = app.events().last_sequence();
    let now = Instant::now();
    let mut alerts: HashMap<String, Vec<Alert>> = HashMap::new();
    for alert in app.monitoring().active_alerts() {
        alerts.entry(alert.pool.clone()).or_default().push(alert);
    }
    let names = app.registry().names();
    let mut pools = Vec::with_capacity(names.len());
    for name in &names {
        let Ok(pool) = app.registry().get(name) else {
            continue;
        };
        let info = pool.info();
        let stats = pool.lifetime_stats();
        let max = info.config.limits.max_connections;
        let wait = window.observe(name, &pool.histograms().acquire_wait, stats.uptime, now);
        let (utilization_history, history_span) = app
            .monitoring()
            .utilization_sparkline(name, SPARKLINE_POINTS)
            .unwrap_or_default();
        let mut pool_alerts = alerts.remove(name).unwrap_or_default();
        let alerts_active = pool_alerts.len();
        pool_alerts
            .sort_by_key(|alert| (Reverse(alert.severity), Reverse(alert.fired_at), alert.id));
        let counts = &info.connections;
        pools.push(PoolStatus {
            name: name.clone(),
            health: health_name(app.health(name).state),
            state: match info.state {
                PoolState::Serving => "serving",
                PoolState::Draining => "draining",
                PoolState::Closed => "closed",
            },
            paused: info.paused,
            active: counts.leased,
            idle: counts.idle,
            open: counts.connecting
                + counts.idle
                + counts.leased
                + counts.checking
                + counts.resetting
                + counts.closing,
            max,
            min: info.config.limits.min_connections,
            pending: stats.pending,
            utilization: counts.leased as f64 / f64::from(max.max(1)),
            utilization_threshold: info.config.alerts.utilization,
            acquire_wait_p99_seconds: wait.p99,
            acquire_wait_window_seconds: wait.window.as_secs_f64(),
            acquisitions_in_window: wait.count,
            alerts_active,
            alerts: pool_alerts
                .iter()
                .take(MAX_ALERTS_PER_POOL)
                .map(alert_status)
                .collect(),
            utilization_history,
            history_seconds: history_span.as_secs_f64(),
        });
    }
    window.retain(&names);
    StatusSnapshot {
        generated_at: rfc3339(SystemTime::now()),
        sequence,
        pools,
    }
}

fn health_name(state: crate::health::HealthState) -> &'static str {
    use crate::health::HealthState;
    match state {
        HealthState::Unknown => "unknown",
        HealthState::Healthy => "healthy",
        HealthState::Degraded => "degraded",
        HealthState::Unhealthy => "unhealthy",
    }
}

fn alert_status(alert: &Alert) -> AlertStatus {
    AlertStatus {
        id: alert.id,
        rule: alert.rule.as_str(),
        severity: alert.severity.as_str(),
        state: match alert.state {
            AlertState::Acknowledged => "acknowledged",
            _ => "firing",
        },
        message: clip(&alert.message, MAX_ALERT_MESSAGE_CHARS),
        fired_at: rfc3339(alert.fired_at),
    }
}

/// `text` cut to `max` characters (an ellipsis marks the cut).
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => {
            let mut cut = text[..end].to_string();
            cut.pop();
            cut.push('…');
            cut
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The `q` quantile (0 ≤ q ≤ 1) of a histogram given as cumulative counts
/// per finite upper bound (ascending) and the total count (the `+Inf`
/// bucket), computed as Prometheus's `histogram_quantile` does: the rank
/// `q × total` falls in the first bucket whose cumulative count reaches
/// it, and the value is interpolated linearly between that bucket's lower
/// bound (the previous bucket's upper bound, 0 for the first) and its upper
/// bound, as if its observations were spread evenly. A rank in the `+Inf`
/// bucket answers the largest finite bound (nothing better is known).
/// `None` for an empty histogram.
pub fn histogram_quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = cumulative.saturating_sub(below);
            if in_bucket == 0 || upper <= 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / in_bucket as f64);
        }
        below = cumulative;
        lower = upper;
    }
    // In the +Inf bucket: its lower bound is all that is known.
    Some(buckets.last().map_or(0.0, |&(upper, _)| upper))
}

/// The acquire-wait quantile over the recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowedWait {
    pub p99: Option<f64>,
    /// How far back the window reaches.
    pub window: Duration,
    /// Acquisitions in it.
    pub count: u64,
}

/// Recent acquire-wait histograms per pool (one every
/// `WAIT_WINDOW_STEP`, about a minute's worth: bounded), so a quantile
/// covers the last minute: the current histogram minus the one remembered
/// about [`WAIT_WINDOW`] ago (the histograms are cumulative and never go
/// down), the way PromQL's `histogram_quantile(0.99, rate(...[1m]))` does.
#[derive(Debug, Default)]
pub struct WaitWindow {
    pools: Mutex<HashMap<String, Marks>>,
}

#[derive(Debug, Default)]
struct Marks {
    /// (when, the histogram then), oldest first.
    kept: VecDeque<(Instant, HistogramSnapshot)>,
    /// The count last observed (whether or not it was kept).
    last_count: u64,
}

impl WaitWindow {
    pub fn new() -> WaitWindow {
        WaitWindow::default()
    }

    /// The p99 of `pool`'s acquisitions in the window ending `now`, given
    /// its histogram now and its uptime; remembers the histogram.
    pub fn observe(
        &self,
        pool: &str,
        current: &HistogramSnapshot,
        uptime: Duration,
        now: Instant,
    ) -> WindowedWait {
        let mut pools = self.lock();
        let entry = pools.entry(pool.to_string()).or_default();
        // A pool removed and created again under the same name starts its
        // counters again: what was remembered no longer applies.
        if entry.last_count > current.count {
            entry.kept.clear();
        }
        entry.last_count = current.count;
        let marks = &mut entry.kept;
        if marks.is_empty() && uptime <= WAIT_WINDOW + WAIT_WINDOW_STEP {
            // The pool's whole life fits in the window: its histogram so
            // far is the window's, from an empty one at its start.
            if let Some(started) = now.checked_sub(uptime) {
                marks.push_back((started, empty_like(current)));
            }
        }
        // Keep the newest mark at least WAIT_WINDOW old as the baseline.
        while marks
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WAIT_WINDOW)
        {
            marks.pop_front();
        }
        if marks
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= WAIT_WINDOW_STEP)
        {
            marks.push_back((now, current.clone()));
        }
        let Some((since, baseline)) = marks.front() else {
            return WindowedWait {
                p99: None,
                window: Duration::ZERO,
                count: 0,
            };
        };
        let buckets: Vec<(f64, u64)> = current
            .buckets
            .iter()
            .zip(&baseline.buckets)
            .map(|(&(bound, now), &(_, then))| (bound, now.saturating_sub(then)))
            .collect();
        let count = current.count.saturating_sub(baseline.count);
        WindowedWait {
            p99: histogram_quantile(0.99, &buckets, count),
            window: now.saturating_duration_since(*since),
            count,
        }
    }

    /// Forgets pools not in `names` (removed ones).
    pub fn retain(&self, names: &[String]) {
        self.lock().retain(|pool, _| names.contains(pool));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Marks>> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn empty_like(histogram: &HistogramSnapshot) -> HistogramSnapshot {
    HistogramSnapshot {
        buckets: histogram
            .buckets
            .iter()
            .map(|&(bound, _)| (bound, 0))
            .collect(),
        count: 0,
        sum_seconds: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_as_prometheus_does() {
        // 100 observations: 50 ≤ 0.1, 40 in (0.1, 0.5], 10 in (0.5, 1].
        let buckets = [(0.1, 50), (0.5, 90), (1.0, 100)];
        // Rank 50 is reached by the first bucket: its upper bound.
        assert!(close(histogram_quantile(0.5, &buckets, 100), 0.1));
        // Rank 25: half way through the first bucket, from 0.
        assert!(close(histogram_quantile(0.25, &buckets, 100), 0.05));
        // Rank 99: 9 of the last bucket's 10, between 0.5 and 1.
        assert!(close(histogram_quantile(0.99, &buckets, 100), 0.95));
        // Rank 70: 20 of 40 in (0.1, 0.5].
        assert!(close(histogram_quantile(0.7, &buckets, 100), 0.3));
    }

    #[test]
    fn a_rank_beyond_every_finite_bound_answers_the_largest_and_empty_is_none() {
        let buckets = [(0.1, 1), (1.0, 2)];
        // 10 observations, 8 above 1 s: p99 is in +Inf.
        assert!(close(histogram_quantile(0.99, &buckets, 10), 1.0));
        assert_eq!(histogram_quantile(0.99, &buckets, 0), None);
        assert_eq!(histogram_quantile(1.5, &buckets, 10), None);
        // Empty buckets before the rank are skipped.
        assert!(close(
            histogram_quantile(0.5, &[(0.1, 0), (0.2, 0), (0.4, 2)], 2),
            0.3
        ));
    }

    fn histogram(counts: &[u64]) -> HistogramSnapshot {
        let bounds = [0.001, 0.01, 0.1, 1.0];
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                (*bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: cumulative + counts.get(4).copied().unwrap_or(0),
            sum_seconds: 0.0,
        }
    }

    #[test]
    fn the_window_forgets_what_happened_more_than_a_minute_ago() {
        let window = WaitWindow::new();
        let start = Instant::now();
        let old = Duration::from_secs(3600);
        // A pool an hour old: a thousand slow acquisitions long ago.
        let slow = histogram(&[0, 0, 0, 1000]);
        let first = window.observe("p", &slow, old, start);
        assert_eq!(first.count, 0, "nothing is known yet about the last minute");
        assert_eq!(first.p99, None);
        // Then only fast ones, observed every few seconds for two minutes.
        let mut fast = 0;
        let mut last = first;
        for step in 1..=40 {
            fast += 10;
            let at = start + Duration::from_secs(3 * step);
            last = window.observe("p", &histogram(&[fast, 0, 0, 1000]), old, at);
        }
        assert!(last.window >= WAIT_WINDOW, "{last:?}");
        assert!(last.window < WAIT_WINDOW + WAIT_WINDOW_STEP + Duration::from_secs(3));
        assert!(last.count > 0 && last.count <= 240, "{last:?}");
        // The slow ones are out of the window: p99 within the first bucket.
        assert!(last.p99.is_some_and(|p| p <= 0.001), "{last:?}");
        // At most about a minute of marks is kept.
        let kept = window.lock().get("p").map(|marks| marks.kept.len());
        assert!(kept.is_some_and(|n| n <= 8), "{kept:?}");
    }

    #[test]
    fn a_young_pool_counts_from_its_start_and_a_recreated_one_starts_over() {
        let window = WaitWindow::new();
        let now = Instant::now() + Duration::from_secs(100);
        let seen = window.observe(
            "p",
            &histogram(&[0, 100, 0, 0]),
            Duration::from_secs(5),
            now,
        );
        assert_eq!(seen.count, 100);
        assert!(seen.p99.is_some_and(|p| p > 0.001 && p <= 0.01), "{seen:?}");
        assert!(seen.window >= Duration::from_secs(5));
        // Removed, then created again: its counters restart below what was seen.
        let later = now + Duration::from_secs(1);
        let again = window.observe(
            "p",
            &histogram(&[3, 0, 0, 0]),
            Duration::from_secs(1),
            later,
        );
        assert_eq!(again.count, 3, "{again:?}");
        window.retain(&[]);
        assert!(window.lock().is_empty());
    }

    #[test]
    fn messages_are_clipped_on_character_boundaries() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(500);
        let clipped = clip(&long, MAX_ALERT_MESSAGE_CHARS);
        assert_eq!(clipped.chars().count(), MAX_ALERT_MESSAGE_CHARS);
        assert!(clipped.ends_with('…'));
    }
}
