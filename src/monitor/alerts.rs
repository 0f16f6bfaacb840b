//! Threshold alerts: rules evaluated on each metrics sample, with
//! hysteresis (an alert fires after its condition held for
//! `fire_after_samples` samples in a row and resolves after it was clear for
//! `resolve_after_samples`), one active alert per (rule, pool), and a
//! bounded history of ended alerts. Pure: no clock, no I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use super::history::MetricsSample;
use crate::config::AlertThresholds;
use crate::health::HealthState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertRule {
    HighUtilization,
    HighErrorRate,
    PoolUnhealthy,
    SlowAcquire,
    PoolExhausted,
    /// A session held its connection past `leak_detection_threshold_ms`:
    /// raised and resolved by the session table, not by samples.
    SessionLeak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Acknowledged,
    /// Its condition cleared.
    Resolved,
    /// Ended by hand, or its pool was removed.
    Cleared,
}

impl AlertRule {
    pub const ALL: [AlertRule; 5] = [
        AlertRule::HighUtilization,
        AlertRule::HighErrorRate,
        AlertRule::PoolUnhealthy,
        AlertRule::SlowAcquire,
        AlertRule::PoolExhausted,
    ];

    /// Every rule: those of `ALL`, evaluated on samples, and the session
    /// table's `SessionLeak`.
    pub const EVERY: [AlertRule; 6] = [
        AlertRule::HighUtilization,
        AlertRule::HighErrorRate,
        AlertRule::PoolUnhealthy,
        AlertRule::SlowAcquire,
        AlertRule::PoolExhausted,
        AlertRule::SessionLeak,
    ];

    pub fn severity(self) -> Severity {
        match self {
            AlertRule::HighUtilization | AlertRule::SlowAcquire | AlertRule::SessionLeak => {
                Severity::Warning
            }
            AlertRule::HighErrorRate | AlertRule::PoolExhausted => Severity::Error,
            AlertRule::PoolUnhealthy => Severity::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertRule::HighUtilization => "high_utilization",
            AlertRule::HighErrorRate => "high_error_rate",
            AlertRule::PoolUnhealthy => "pool_unhealthy",
            AlertRule::SlowAcquire => "slow_acquire",
            AlertRule::PoolExhausted => "pool_exhausted",
            AlertRule::SessionLeak => "session_leak",
        }
    }

    /// Whether the sample breaks the rule, with the value and the threshold.
    fn check(self, sample: &MetricsSample, thresholds: &AlertThresholds) -> (bool, f64, f64) {
        match self {
            AlertRule::HighUtilization => (
                sample.utilization > thresholds.utilization,
                sample.utilization,
                thresholds.utilization,
            ),
            AlertRule::HighErrorRate => (
                sample.error_rate > thresholds.error_rate,
                sample.error_rate,
                thresholds.error_rate,
            ),
            AlertRule::PoolUnhealthy => (
                sample.health == HealthState::Unhealthy,
                f64::from(u8::from(sample.health == HealthState::Unhealthy)),
                1.0,
            ),
            AlertRule::SlowAcquire => (
                sample.average_acquire_wait > thresholds.acquire_wait,
                sample.average_acquire_wait.as_secs_f64(),
                thresholds.acquire_wait.as_secs_f64(),
            ),
            AlertRule::PoolExhausted => (
                sample.acquire_timeouts > 0,
                sample.acquire_timeouts as f64,
                0.0,
            ),
            // Not a property of a sample (and not in `ALL`).
            AlertRule::SessionLeak => (false, 0.0, 0.0),
        }
    }

    fn describe(self, pool: &str, value: f64, threshold: f64) -> String {
        match self {
            AlertRule::HighUtilization => format!(
                "pool `{pool}` uses {:.0}% of its connections (threshold {:.0}%)",
                value * 100.0,
                threshold * 100.0
            ),
            AlertRule::HighErrorRate => format!(
                "pool `{pool}` error rate {:.1}% (threshold {:.1}%)",
                value * 100.0,
                threshold * 100.0
            ),
            AlertRule::PoolUnhealthy => format!(
                "pool `{pool}` is unhealthy: its health checks fail (the database does not answer, or no connection can log in), so calls fail fast; its last error is in GetPool and `poolplane ctl health`"
            ),
            AlertRule::SlowAcquire => format!(
                "pool `{pool}` callers wait {:.0} ms for a connection on average (threshold {:.0} ms)",
                value * 1000.0,
                threshold * 1000.0
            ),
            AlertRule::PoolExhausted => format!(
                "pool `{pool}` is exhausted: {value} acquisition(s) timed out"
            ),
            AlertRule::SessionLeak => format!(
                "a session of pool `{pool}` has held its connection for {} (threshold {})",
                seconds(value),
                seconds(threshold)
            ),
        }
    }
}

/// Seconds for a person: tenths below ten (a 0.5 s threshold is not "0 s").
pub(crate) fn seconds(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1} s")
    } else {
        format!("{value:.0} s")
    }
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: u64,
    pub pool: String,
    pub rule: AlertRule,
    pub severity: Severity,
    pub state: AlertState,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
    pub fired_at: SystemTime,
    pub acknowledged_at: Option<SystemTime>,
    pub acknowledged_by: String,
    pub ended_at: Option<SystemTime>,
}

impl Alert {
    /// A new alert, firing now; `measured` is (value, threshold).
    fn firing(
        id: u64,
        pool: &str,
        rule: AlertRule,
        message: String,
        measured: (f64, f64),
        now: SystemTime,
    ) -> Alert {
        Alert {
            id,
            pool: pool.to_string(),
            rule,
            severity: rule.severity(),
            state: AlertState::Firing,
            message,
            value: measured.0,
            threshold: measured.1,
            fired_at: now,
            acknowledged_at: None,
            acknowledged_by: String::new(),
            ended_at: None,
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, AlertState::Firing | AlertState::Acknowledged)
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Triggered(Alert),
    Acknowledged(Alert),
    /// Resolved or cleared (see the alert's state).
    Ended(Alert),
}

/// The hysteresis settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    pub fire_after: u32,
    pub resolve_after: u32,
    /// Ended alerts kept.
    pub history: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlertError {
    #[error("no alert with id {0}")]
    NotFound(u64),
    #[error("alert {0} has already ended")]
    Ended(u64),
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub include_ended: bool,
    pub pool: Option<String>,
    pub severity: Option<Severity>,
}

#[derive(Debug, Default)]
struct Track {
    holding: u32,
    clear: u32,
    active: Option<u64>,
}

/// Every alert: the active ones, the recently ended ones, and the streaks
/// that decide when the next fire or resolve.
#[derive(Debug)]
pub struct AlertBook {
    policy: AlertPolicy,
    tracks: HashMap<(String, AlertRule), Track>,
    active: BTreeMap<u64, Alert>,
    ended: VecDeque<Alert>,
    next_id: u64,
}

impl AlertBook {
    pub fn new(policy: AlertPolicy) -> AlertBook {
        AlertBook {
            policy,
            tracks: HashMap::new(),
            active: BTreeMap::new(),
            ended: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Evaluates every rule on a sample; returns what fired and what ended.
    pub fn observe(
        &mut self,
        sample: &MetricsSample,
        thresholds: &AlertThresholds,
        now: SystemTime,
    ) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        for rule in AlertRule::ALL {
            let (holds, value, threshold) = rule.check(sample, thresholds);
            let key = (sample.pool.clone(), rule);
            let track = self.tracks.entry(key).or_default();
            if holds {
                track.holding = track.holding.saturating_add(1);
                track.clear = 0;
                if track.active.is_none() && track.holding >= self.policy.fire_after {
                    let id = self.next_id;
                    self.next_id += 1;
                    track.active = Some(id);
                    let alert = Alert::firing(
                        id,
                        &sample.pool,
                        rule,
                        rule.describe(&sample.pool, value, threshold),
                        (value, threshold),
                        now,
                    );
                    self.active.insert(id, alert.clone());
                    changes.push(AlertChange::Triggered(alert));
                }
            } else {
                track.clear = track.clear.saturating_add(1);
                track.holding = 0;
                if track.clear >= self.policy.resolve_after {
                    if let Some(id) = track.active.take() {
                        if let Some(alert) = self.end(id, AlertState::Resolved, now) {
                            changes.push(AlertChange::Ended(alert));
                        }
                    }
                }
            }
        }
        changes
    }

    /// Fires an alert that no sample decides (a session leak); it stays
    /// active until [`AlertBook::resolve`] or a clear.
    pub fn raise(
        &mut self,
        pool: &str,
        rule: AlertRule,
        message: String,
        value: f64,
        threshold: f64,
        now: SystemTime,
    ) -> AlertChange {
        let id = self.next_id;
        self.next_id += 1;
        let alert = Alert::firing(id, pool, rule, message, (value, threshold), now);
        self.active.insert(id, alert.clone());
        AlertChange::Triggered(alert)
    }

    /// Resolves a raised alert whose condition ended; `None` if it already ended.
    pub fn resolve(&mut self, id: u64, now: SystemTime) -> Option<AlertChange> {
        self.end(id, AlertState::Resolved, now)
            .map(AlertChange::Ended)
    }

    pub fn acknowledge(
        &mut self,
        id: u64,
        by: &str,
        now: SystemTime,
    ) -> Result<AlertChange, AlertError> {
        let alert = self.active_mut(id)?;
        if alert.state == AlertState::Acknowledged {
            return Ok(AlertChange::Acknowledged(alert.clone()));
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_at = Some(now);
        alert.acknowledged_by = by.to_string();
        Ok(AlertChange::Acknowledged(alert.clone()))
    }

    /// Ends an active alert by hand. Its streak restarts, so a condition
    /// that still holds fires a new alert after `fire_after` samples.
    pub fn clear(&mut self, id: u64, now: SystemTime) -> Result<AlertChange, AlertError> {
        self.active_mut(id)?;
        let alert = self
            .end(id, AlertState::Cleared, now)
            .ok_or(AlertError::NotFound(id))?;
        if let Some(track) = self.tracks.get_mut(&(alert.pool.clone(), alert.rule)) {
            track.active = None;
            track.holding = 0;
        }
        Ok(AlertChange::Ended(alert))
    }

    /// A pool went away: its active alerts end as cleared, its streaks go.
    pub fn forget_pool(&mut self, pool: &str, now: SystemTime) -> Vec<AlertChange> {
        self.tracks.retain(|(p, _), _| p != pool);
        let ids: Vec<u64> = self
            .active
            .values()
            .filter(|a| a.pool == pool)
            .map(|a| a.id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.end(id, AlertState::Cleared, now))
            .map(AlertChange::Ended)
            .collect()
    }

    pub fn list(&self, filter: &AlertFilter) -> Vec<Alert> {
        let ended = filter
            .include_ended
            .then_some(self.ended.iter())
            .into_iter()
            .flatten();
        self.active
            .values()
            .chain(ended)
            .filter(|a| filter.pool.as_ref().is_none_or(|p| &a.pool == p))
            .filter(|a| filter.severity.is_none_or(|s| a.severity == s))
            .cloned()
            .collect()
    }

    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    fn active_mut(&mut self, id: u64) -> Result<&mut Alert, AlertError> {
        if self.ended.iter().any(|a| a.id == id) {
            return Err(AlertError::Ended(id));
        }
        self.active.get_mut(&id).ok_or(AlertError::NotFound(id))
    }

    fn end(&mut self, id: u64, state: AlertState, now: SystemTime) -> Option<Alert> {
        let mut alert = self.active.remove(&id)?;
        alert.state = state;
        alert.ended_at = Some(now);
        if self.policy.history > 0 {
            if self.ended.len() == self.policy.history {
                self.ended.pop_front();
            }
            self.ended.push_back(alert.clone());
        }
        Some(alert)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thresholds() -> AlertThresholds {
        AlertThresholds {
            utilization: 0.8,
            error_rate: 0.05,
            acquire_wait: Duration::from_millis(100),
        }
    }

    fn book() -> AlertBook {
        AlertBook::new(AlertPolicy {
            fire_after: 2,
            resolve_after: 2,
            history: 3,
        })
    }

    fn sample(utilization: f64) -> MetricsSample {
        MetricsSample {
            pool: "p".into(),
            time: SystemTime::UNIX_EPOCH,
            acquisitions_per_second: 0.0,
            connections_created_per_second: 0.0,
            average_acquire_wait: Duration::ZERO,
            utilization,
            error_rate: 0.0,
            acquire_timeouts: 0,
            active: 0,
            idle: 0,
            total: 0,
            pending: 0,
            max: 10,
            peak_connections: 0,
            uptime: Duration::ZERO,
            health: HealthState::Healthy,
        }
    }

    fn feed(book: &mut AlertBook, utilizations: &[f64]) -> Vec<AlertChange> {
        utilizations
            .iter()
            .flat_map(|u| book.observe(&sample(*u), &thresholds(), SystemTime::UNIX_EPOCH))
            .collect()
    }

    #[test]
    fn fires_after_the_condition_holds_and_resolves_after_it_clears() {
        let mut book = book();
        assert!(
            feed(&mut book, &[0.9]).is_empty(),
            "one sample is not enough"
        );
        let fired = feed(&mut book, &[0.95]);
        assert!(
            matches!(&fired[..], [AlertChange::Triggered(a)] if a.rule == AlertRule::HighUtilization && a.severity == Severity::Warning)
        );
        assert!(
            feed(&mut book, &[0.9, 0.5]).is_empty(),
            "still active, one clear sample"
        );
        let ended = feed(&mut book, &[0.5]);
        assert!(matches!(&ended[..], [AlertChange::Ended(a)] if a.state == AlertState::Resolved));
        assert!(book.list(&AlertFilter::default()).is_empty());
        assert_eq!(
            book.list(&AlertFilter {
                include_ended: true,
                ..Default::default()
            })
            .len(),
            1
        );
    }

    #[test]
    fn an_input_flapping_around_the_threshold_does_not_flap_the_alert() {
        let mut book = book();
        let flapping: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 0.9 } else { 0.7 })
            .collect();
        assert!(
            feed(&mut book, &flapping).is_empty(),
            "never two in a row: never fires"
        );
        feed(&mut book, &[0.9, 0.9]);
        assert_eq!(book.list(&AlertFilter::default()).len(), 1);
        assert!(
            feed(&mut book, &flapping).is_empty(),
            "never two clear in a row: never resolves"
        );
        assert_eq!(book.list(&AlertFilter::default()).len(), 1);
    }

    #[test]
    fn acknowledge_keeps_it_active_and_clear_ends_it() {
        let mut book = book();
        feed(&mut book, &[0.9, 0.9]);
        let id = book.list(&AlertFilter::default())[0].id;
        let acked = book
            .acknowledge(id, "ops", SystemTime::UNIX_EPOCH)
            .expect("ack");
        assert!(
            matches!(acked, AlertChange::Acknowledged(ref a) if a.acknowledged_by == "ops" && a.is_active())
        );
        let cleared = book.clear(id, SystemTime::UNIX_EPOCH).expect("clear");
        assert!(matches!(cleared, AlertChange::Ended(ref a) if a.state == AlertState::Cleared));
        assert_eq!(
            book.clear(id, SystemTime::UNIX_EPOCH),
            Err(AlertError::Ended(id))
        );
        assert_eq!(
            book.acknowledge(99, "x", SystemTime::UNIX_EPOCH),
            Err(AlertError::NotFound(99))
        );
        // Still over the threshold: a new alert after two more samples.
        assert!(feed(&mut book, &[0.9]).is_empty());
        assert!(matches!(&feed(&mut book, &[0.9])[..], [AlertChange::Triggered(a)] if a.id != id));
    }

    #[test]
    fn history_of_ended_alerts_is_bounded() {
        let mut book = book();
        for _ in 0..5 {
            feed(&mut book, &[0.9, 0.9, 0.1, 0.1]);
        }
        let all = book.list(&AlertFilter {
            include_ended: true,
            ..Default::default()
        });
        assert_eq!(all.len(), 3);
    }
}
