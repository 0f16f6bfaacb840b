//! Monitoring: a metrics sample per pool per collection interval, kept in a
//! bounded history (`history.rs`), and threshold alerts evaluated on each
//! sample (`alerts.rs`). `App` runs the collection loop and publishes what
//! this returns; nothing here does I/O.

mod alerts;
mod history;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use alerts::{
    Alert, AlertBook, AlertChange, AlertError, AlertFilter, AlertPolicy, AlertRule, AlertState,
    Severity,
};
pub use history::{sample, History, MetricsSample, SampleInput};

use crate::config::{AlertThresholds, MonitoringConfig};
use crate::health::HealthState;
use crate::pool::StatsSnapshot;
use crate::query::SessionInfo;

/// What the collector reads from one pool.
pub struct PoolObservation {
    pub name: String,
    pub stats: StatsSnapshot,
    pub max: u32,
    pub thresholds: AlertThresholds,
    pub health: HealthState,
}

pub struct Monitoring {
    config: MonitoringConfig,
    state: Mutex<State>,
}

struct State {
    pools: HashMap<String, Tracked>,
    alerts: AlertBook,
    /// Session id → its active session_leak alert.
    leaks: HashMap<u64, u64>,
}

struct Tracked {
    previous: Option<(StatsSnapshot, Instant)>,
    history: History,
}

impl Monitoring {
    pub fn new(config: &MonitoringConfig) -> Monitoring {
        Monitoring {
            config: config.clone(),
            state: Mutex::new(State {
                pools: HashMap::new(),
                alerts: AlertBook::new(AlertPolicy {
                    fire_after: config.fire_after_samples,
                    resolve_after: config.resolve_after_samples,
                    history: config.alert_history as usize,
                }),
                leaks: HashMap::new(),
            }),
        }
    }

    pub fn config(&self) -> &MonitoringConfig {
        &self.config
    }

    /// Takes one sample of every pool; evaluates alerts when enabled.
    pub fn observe(
        &self,
        observations: Vec<PoolObservation>,
        now: SystemTime,
    ) -> (Vec<MetricsSample>, Vec<AlertChange>) {
        let mut state = self.lock();
        let mut samples = Vec::with_capacity(observations.len());
        let mut changes = Vec::new();
        let interval = self.config.collection_interval;
        for observation in observations {
            let tracked = state
                .pools
                .entry(observation.name.clone())
                .or_insert_with(|| Tracked {
                    previous: None,
                    history: History::new(self.config.retention_period, interval),
                });
            let measured = Instant::now();
            let (previous, elapsed) = match &tracked.previous {
                Some((stats, at)) => (Some(stats), measured.duration_since(*at)),
                None => (None, observation.stats.uptime),
            };
            let sample = history::sample(SampleInput {
                pool: &observation.name,
                previous,
                current: &observation.stats,
                interval: elapsed,
                max: observation.max,
                health: observation.health,
                time: now,
            });
            tracked.previous = Some((observation.stats, measured));
            tracked.history.push(sample.clone());
            if self.config.enable_alerts {
                changes.extend(state.alerts.observe(&sample, &observation.thresholds, now));
            }
            samples.push(sample);
        }
        (samples, changes)
    }

    /// A session held its connection past its pool's leak threshold: a
    /// session_leak alert (when alerts are on).
    pub fn session_leaked(
        &self,
        session: &SessionInfo,
        threshold: Duration,
        now: SystemTime,
    ) -> Option<AlertChange> {
        if !self.config.enable_alerts {
            return None;
        }
        let message = format!(
            "session {} of pool `{}` (caller `{}`, peer {}) has held its connection for {} (leak_detection_threshold_ms {}); last statement: {}",
            session.id,
            session.pool,
            session.caller,
            if session.peer.is_empty() { "unknown" } else { &session.peer },
            alerts::seconds(session.age.as_secs_f64()),
            threshold.as_millis(),
            if session.last_statement.is_empty() { "none" } else { &session.last_statement },
        );
        let mut state = self.lock();
        let change = state.alerts.raise(
            &session.pool,
            AlertRule::SessionLeak,
            message,
            session.age.as_secs_f64(),
            threshold.as_secs_f64(),
            now,
        );
        if let AlertChange::Triggered(alert) = &change {
            state.leaks.insert(session.id, alert.id);
        }
        Some(change)
    }

    /// A session reported as a leak ended: its alert resolves.
    pub fn session_ended(&self, session: u64, now: SystemTime) -> Option<AlertChange> {
        let mut state = self.lock();
        let alert = state.leaks.remove(&session)?;
        state.alerts.resolve(alert, now)
    }

    /// Forgets a removed pool; its active alerts end.
    pub fn forget_pool(&self, pool: &str, now: SystemTime) -> Vec<AlertChange> {
        let mut state = self.lock();
        state.pools.remove(pool);
        state.alerts.forget_pool(pool, now)
    }

    /// A pool's samples in a time range; `None` if the pool has none yet.
    pub fn history(
        &self,
        pool: &str,
        from: Option<SystemTime>,
        to: Option<SystemTime>,
    ) -> Option<Vec<MetricsSample>> {
        self.lock()
            .pools
            .get(pool)
            .map(|t| t.history.range(from, to))
    }

    /// A pool's utilization over its history, in at most `points` values
    /// (each group's peak, oldest first; see [`History::downsampled`]), with
    /// the time the history spans; `None` if the pool has no samples yet.
    pub fn utilization_sparkline(&self, pool: &str, points: usize) -> Option<(Vec<f64>, Duration)> {
        self.lock()
            .pools
            .get(pool)
            .map(|t| t.history.downsampled(points, |s| s.utilization))
    }

    /// The latest sample of a pool.
    pub fn latest(&self, pool: &str) -> Option<MetricsSample> {
        self.lock()
            .pools
            .get(pool)
            .and_then(|t| t.history.latest().cloned())
    }

    pub fn alerts(&self, filter: &AlertFilter) -> Vec<Alert> {
        self.lock().alerts.list(filter)
    }

    pub fn active_alerts(&self) -> Vec<Alert> {
        self.lock().alerts.active().cloned().collect()
    }

    pub fn acknowledge(&self, id: u64, by: &str) -> Result<AlertChange, AlertError> {
        self.lock().alerts.acknowledge(id, by, SystemTime::now())
    }

    pub fn clear(&self, id: u64) -> Result<AlertChange, AlertError> {
        self.lock().alerts.clear(id, SystemTime::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
