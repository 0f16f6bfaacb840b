//! Monitoring: a metrics sample per pool per collection interval, kept in a
//! bounded history (`history.rs`), and threshold alerts evaluated on each
//! sample (`alerts.rs`). `App` runs the collection loop and publishes what
//! this returns; nothing here does I/O.

mod alerts;
mod history;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

pub use alerts::{
    Alert, AlertBook, AlertChange, AlertError, AlertFilter, AlertPolicy, AlertRule, AlertState,
    Severity,
};
pub use history::{sample, History, MetricsSample, SampleInput};

use crate::config::{AlertThresholds, MonitoringConfig};
use crate::health::HealthState;
use crate::pool::StatsSnapshot;

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
