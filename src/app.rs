//! The application core: the registry of pools, a health monitor per pool,
//! and the event bus, behind the operations the API offers. Every change to
//! the set of pools goes through here so monitors and events follow it.
//!
//! Invariant: no gRPC types; `api/` translates to and from these calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::Weak;
use std::time::SystemTime;

use crate::config::{Config, HealthConfig, PoolConfig, ServerConfig, TargetRequest};
use crate::events::{EventBus, EventDetail, ReloadReport};
use crate::health::{HealthReport, Monitor, ProbeSlots};
use crate::monitor::{
    Alert, AlertChange, AlertError, AlertFilter, MetricsSample, Monitoring, PoolObservation,
};
use crate::pool::{
    DrainReport, LimitsUpdate, ManagedPool, PauseOptions, PauseReport, PoolError, PoolInfo,
    Registry,
};
use crate::query::Sessions;

pub struct App {
    registry: Registry,
    monitors: Mutex<HashMap<String, Monitor>>,
    events: Arc<EventBus>,
    health: HealthConfig,
    /// The limit on all pools' probe connections together.
    probe_slots: ProbeSlots,
    monitoring: Monitoring,
    server: ServerConfig,
    collector: Mutex<Option<tokio::task::JoinHandle<()>>>,
    sessions: Arc<Sessions>,
    /// The configuration file's last applied content, and where it is.
    file: Mutex<LoadedFile>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

struct LoadedFile {
    config: Config,
    path: Option<PathBuf>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the server was not started from a configuration file")]
    NoFile,
    /// Every error the file (or its pools against the running ones) has.
    #[error("the configuration was not applied: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl App {
    /// Builds the core and starts every configured pool (pools whose
    /// database is down start anyway and report the error).
    pub fn start(config: &Config) -> Arc<App> {
        let events = Arc::new(EventBus::new(
            config.server.event_replay_buffer as usize,
            config.server.event_subscriber_buffer as usize,
        ));
        let app = Arc::new(App {
            registry: Registry::new(
                config.defaults.clone(),
                config.server.max_pools,
                Arc::clone(&events),
            ),
            monitors: Mutex::new(HashMap::new()),
            events,
            health: config.health.clone(),
            probe_slots: ProbeSlots::new(config.health.max_probe_connections),
            monitoring: Monitoring::new(&config.monitoring),
            server: config.server.clone(),
            collector: Mutex::new(None),
            sessions: Sessions::new(),
            file: Mutex::new(LoadedFile {
                config: config.clone(),
                path: None,
            }),
            reloading: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(watch_sessions(Arc::downgrade(&app)));
        if config.monitoring.enabled {
            let task = tokio::spawn(collect(Arc::downgrade(&app)));
            if let Ok(mut slot) = app.collector.lock() {
                *slot = Some(task);
            }
        }
        if config.enabled {
            for pool in &config.pools {
                if let Err(err) = app.create_pool(pool.clone(), false) {
                    tracing::error!(error = %err, "pool not started");
                }
            }
        } else {
            tracing::warn!("connection_pool.enabled is false: starting with no pools");
        }
        app
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// Where [`App::reload_config`] reads the configuration again.
    pub fn set_config_file(&self, path: PathBuf) {
        self.lock_file().path = Some(path);
    }

    fn lock_file(&self) -> std::sync::MutexGuard<'_, LoadedFile> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the configuration file again and applies the difference with
    /// the last one applied: new pools start, removed ones drain, changed
    /// limits apply live, changed targets reconnect, untouched pools keep
    /// their connections. Pools created over the API are left alone. A
    /// file with any error changes nothing, and every error is reported
    /// (the answer, a log line each, a CONFIG_RELOAD_FAILED event).
    pub async fn reload_config(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.lock_file().path.clone().ok_or(ReloadError::NoFile)?;
        let read = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let Ok(loaded) = read else {
            return Err(ReloadError::Invalid(vec!["reading the file failed".into()]));
        };
        let loaded = loaded.map_err(|errors| {
            errors
                .errors
                .iter()
                .map(|error| format!("{}: {error}", errors.source_name))
                .collect::<Vec<_>>()
        });
        let result = match loaded {
            Ok(config) => self.apply_file(config).await,
            Err(errors) => Err(errors),
        };
        match result {
            Ok(report) => {
                tracing::info!(?report, "configuration reloaded");
                for failed in &report.failed {
                    tracing::warn!(pool_and_error = %failed, "a pool kept its settings: the reload's change for it failed");
                }
                self.events
                    .publish("", EventDetail::ConfigReloaded(report.clone()));
                Ok(report)
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(%error, "configuration reload refused; nothing changed");
                }
                self.events.publish(
                    "",
                    EventDetail::ConfigReloadFailed {
                        errors: errors.clone(),
                    },
                );
                Err(ReloadError::Invalid(errors))
            }
        }
    }

    /// Applies a valid file (see [`App::reload_config`]); errors only if
    /// the file conflicts with the running server, before any change.
    async fn apply_file(self: &Arc<Self>, new: Config) -> Result<ReloadReport, Vec<String>> {
        let old = self.lock_file().config.clone();
        let wanted: Vec<PoolConfig> = if new.enabled {
            new.pools.clone()
        } else {
            Vec::new()
        };
        let from_file = |name: &str| old.enabled && old.pools.iter().any(|pool| pool.name == name);
        let conflicts: Vec<String> = wanted
            .iter()
            .filter(|pool| self.registry.get(&pool.name).is_ok() && !from_file(&pool.name))
            .map(|pool| format!("pool `{}` exists and was created over the API: delete it first, or name the file's pool otherwise", pool.name))
            .collect();
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        let mut report = ReloadReport::default();
        // Pools whose change did not take: the next reload tries them again.
        let mut not_applied: Vec<String> = Vec::new();
        // Against what runs, not the last file: a file applied in between
        // changed none of these.
        for (section, differs) in [
            ("server", self.server != new.server),
            ("health_monitoring", self.health != new.health),
            ("monitoring", *self.monitoring.config() != new.monitoring),
        ] {
            if differs {
                report.restart_needed.push(section.to_string());
            }
        }
        self.registry.set_defaults(new.defaults.clone());
        for pool in &wanted {
            let name = pool.name.clone();
            let before = old
                .pools
                .iter()
                .find(|old| old.name == name && from_file(&name));
            match (self.registry.get(&name), before) {
                (Err(_), _) => match self.create_pool(pool.clone(), false) {
                    Ok(_) => report.created.push(name),
                    Err(error) => {
                        report.failed.push(format!("{name}: {error}"));
                        not_applied.push(name);
                    }
                },
                (Ok(_), Some(before)) if before == pool => report.unchanged.push(name),
                (Ok(running), _) => match running.reconfigure(pool.clone()).await {
                    Ok(true) => {
                        self.events.publish(&name, EventDetail::PoolUpdated);
                        report.reconnected.push(name);
                    }
                    Ok(false) => {
                        self.events.publish(&name, EventDetail::PoolUpdated);
                        report.changed.push(name);
                    }
                    Err(error) => {
                        report.failed.push(format!("{name}: {error}"));
                        not_applied.push(name);
                    }
                },
            }
        }
        let drain_timeout = self.server.drain_timeout;
        for pool in old.pools.iter().filter(|_| old.enabled) {
            if wanted.iter().any(|kept| kept.name == pool.name)
                || self.registry.get(&pool.name).is_err()
            {
                continue;
            }
            report.removed.push(pool.name.clone());
            let (app, name) = (Arc::clone(self), pool.name.clone());
            tokio::spawn(async move {
                if let Err(error) = app.delete_pool(&name, drain_timeout, false).await {
                    tracing::warn!(pool = %name, %error, "removing a pool the file no longer has");
                }
            });
        }
        let mut applied = new;
        for name in &not_applied {
            let before = old
                .pools
                .iter()
                .find(|pool| &pool.name == name && from_file(name));
            applied.pools.retain(|pool| &pool.name != name);
            applied.pools.extend(before.cloned());
        }
        self.lock_file().config = applied;
        Ok(report)
    }

    /// The live sessions of every pool.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Creates a pool a caller asked for over the API: only towards a
    /// target `server.allowed_targets` permits, checked before anything
    /// connects (so the answer tells nothing about the address).
    pub fn create_requested_pool(
        &self,
        config: PoolConfig,
        if_not_exists: bool,
    ) -> Result<Arc<ManagedPool>, PoolError> {
        self.check_target(&config)?;
        self.create_pool(config, if_not_exists)
    }

    /// Refuses a target a caller chose outside `server.allowed_targets`.
    fn check_target(&self, config: &PoolConfig) -> Result<(), PoolError> {
        if self
            .server
            .allowed_targets
            .permits(&config.host, config.port)
        {
            return Ok(());
        }
        Err(PoolError::TargetNotAllowed {
            target: format!("{}:{}", config.host, config.port),
        })
    }

    /// Creates and starts a pool and its health monitor.
    pub fn create_pool(
        &self,
        config: PoolConfig,
        if_not_exists: bool,
    ) -> Result<Arc<ManagedPool>, PoolError> {
        let (pool, created) = self.registry.create(config, if_not_exists)?;
        if created {
            let name = pool.name();
            if self.health.enabled {
                let monitor = Monitor::start(
                    Arc::clone(&pool),
                    &self.health,
                    self.probe_slots.clone(),
                    Arc::clone(&self.events),
                );
                self.lock_monitors().insert(name.clone(), monitor);
            }
            self.events.publish(&name, EventDetail::PoolCreated);
        }
        Ok(pool)
    }

    /// Applies an UpdatePool: a new target first (checked against
    /// `server.allowed_targets`, as for a created pool: a caller must not
    /// send the pool's password to a host of its choosing), then limits.
    pub async fn update_pool(
        &self,
        name: &str,
        update: LimitsUpdate,
        target: TargetRequest,
    ) -> Result<PoolInfo, PoolError> {
        if !target.is_empty() {
            let pool = self.registry.get(name)?;
            let config = crate::config::retarget(&pool.config(), target, &self.registry.defaults())
                .map_err(PoolError::InvalidConfig)?;
            self.check_target(&config)?;
            tracing::info!(pool = %name, host = %config.host, port = config.port, database = %config.database, "moving pool to a new target");
            pool.retarget_checked(config).await?;
        }
        let info = self.registry.update(name, update).await?;
        self.events.publish(name, EventDetail::PoolUpdated);
        Ok(info)
    }

    /// Pauses a pool (`ManagedPool::pause`). Runs in a task of its own:
    /// once the pause holds, its timeout and cancellations follow through
    /// even if the caller goes away.
    pub async fn pause_pool(
        &self,
        name: &str,
        options: PauseOptions,
    ) -> Result<(PauseReport, PoolInfo), PoolError> {
        let pool = self.registry.get(name)?;
        tracing::info!(pool = %name, ?options, "pausing pool");
        let pausing = Arc::clone(&pool);
        let report = tokio::spawn(async move { pausing.pause(options).await })
            .await
            .unwrap_or_else(|error| {
                tracing::error!(pool = %name, %error, "the pause task failed");
                Err(PoolError::Draining(name.to_string()))
            })?;
        if options.close_connections {
            // The probe lets go of its connection too (a paused monitor
            // does not probe); asked now rather than at its next check.
            let monitor = self.lock_monitors().get(name).map(Monitor::requester);
            if let Some(monitor) = monitor {
                monitor.check_now().await;
            }
        }
        self.events.publish(name, EventDetail::PoolUpdated);
        Ok((report, pool.info()))
    }

    pub fn resume_pool(&self, name: &str) -> Result<PoolInfo, PoolError> {
        let pool = self.registry.get(name)?;
        pool.resume()?;
        tracing::info!(pool = %name, "pool resumed");
        self.events.publish(name, EventDetail::PoolUpdated);
        Ok(pool.info())
    }

    pub async fn reconnect_pool(&self, name: &str) -> Result<PoolInfo, PoolError> {
        let pool = self.registry.get(name)?;
        pool.reconnect().await?;
        tracing::info!(pool = %name, "replacing every connection of the pool");
        self.events.publish(name, EventDetail::PoolUpdated);
        Ok(pool.info())
    }

    /// Drains and removes a pool; its monitor stops first so no probe
    /// outlives it. The drain runs in a task of its own: once begun it
    /// finishes even if the caller goes away, since a pool left half-drained
    /// could be neither used, nor deleted, nor created again.
    pub async fn delete_pool(
        self: &Arc<Self>,
        name: &str,
        drain_timeout: Duration,
        force: bool,
    ) -> Result<(DrainReport, PoolInfo), PoolError> {
        let app = Arc::clone(self);
        let owned = name.to_string();
        let drain =
            tokio::spawn(async move { app.delete_pool_now(&owned, drain_timeout, force).await });
        drain.await.unwrap_or_else(|error| {
            tracing::error!(pool = %name, %error, "the drain task failed");
            Err(PoolError::Draining(name.to_string()))
        })
    }

    async fn delete_pool_now(
        &self,
        name: &str,
        drain_timeout: Duration,
        force: bool,
    ) -> Result<(DrainReport, PoolInfo), PoolError> {
        self.registry.get(name)?;
        let monitor = self.lock_monitors().remove(name);
        drop(monitor);
        let result = self.registry.delete(name, drain_timeout, force).await?;
        let ended = self.monitoring.forget_pool(name, SystemTime::now());
        self.publish_alert_changes(ended);
        self.events.publish(name, EventDetail::PoolRemoved);
        Ok(result)
    }

    pub fn monitoring(&self) -> &Monitoring {
        &self.monitoring
    }

    /// A pool's metrics samples in a time range.
    pub fn metrics_history(
        &self,
        pool: &str,
        from: Option<SystemTime>,
        to: Option<SystemTime>,
    ) -> Result<Vec<MetricsSample>, PoolError> {
        self.registry.get(pool)?;
        Ok(self.monitoring.history(pool, from, to).unwrap_or_default())
    }

    /// The alerts `filter` picks. A pool the filter names must exist, or
    /// have had alerts (a removed pool's are still listed): a misspelt name
    /// is NOT_FOUND, not an empty list that reads as "all clear".
    pub fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, PoolError> {
        let alerts = self.monitoring.alerts(filter);
        if let Some(pool) = &filter.pool {
            if alerts.is_empty() {
                if let Err(unknown) = self.registry.get(pool) {
                    let ever = AlertFilter {
                        include_ended: true,
                        pool: Some(pool.clone()),
                        severity: None,
                    };
                    if self.monitoring.alerts(&ever).is_empty() {
                        return Err(unknown);
                    }
                }
            }
        }
        Ok(alerts)
    }

    pub fn acknowledge_alert(&self, id: u64, by: &str) -> Result<Alert, AlertError> {
        let change = self.monitoring.acknowledge(id, by)?;
        Ok(self.publish_alert_change(change))
    }

    pub fn clear_alert(&self, id: u64) -> Result<Alert, AlertError> {
        let change = self.monitoring.clear(id)?;
        Ok(self.publish_alert_change(change))
    }

    /// One collection: a sample of every pool, alerts evaluated, events out.
    pub fn collect_now(&self) {
        let observations = self
            .registry
            .names()
            .iter()
            .filter_map(|name| self.registry.get(name).ok())
            .map(|pool| {
                let config = pool.config();
                PoolObservation {
                    name: config.name.clone(),
                    stats: pool.lifetime_stats(),
                    max: config.limits.max_connections,
                    thresholds: config.alerts,
                    health: self.health(&config.name).state,
                }
            })
            .collect();
        let (samples, changes) = self.monitoring.observe(observations, SystemTime::now());
        for sample in samples {
            let pool = sample.pool.clone();
            self.events
                .publish(&pool, EventDetail::MetricsSnapshot(sample));
        }
        self.publish_alert_changes(changes);
    }

    fn publish_alert_changes(&self, changes: Vec<AlertChange>) {
        for change in changes {
            self.publish_alert_change(change);
        }
    }

    fn publish_alert_change(&self, change: AlertChange) -> Alert {
        let (detail, alert) = match change {
            AlertChange::Triggered(alert) => {
                tracing::warn!(pool = %alert.pool, rule = alert.rule.as_str(), message = %alert.message, "alert triggered");
                (EventDetail::AlertTriggered(alert.clone()), alert)
            }
            AlertChange::Acknowledged(alert) => {
                (EventDetail::AlertAcknowledged(alert.clone()), alert)
            }
            AlertChange::Ended(alert) => {
                tracing::info!(pool = %alert.pool, rule = alert.rule.as_str(), "alert ended");
                (EventDetail::AlertResolved(alert.clone()), alert)
            }
        };
        self.events.publish(&alert.pool, detail);
        alert
    }

    /// The last health report of a pool (UNKNOWN when not monitored).
    pub fn health(&self, name: &str) -> HealthReport {
        self.lock_monitors()
            .get(name)
            .map(Monitor::report)
            .unwrap_or_else(HealthReport::unmonitored)
    }

    /// Probes one pool, or every pool, now.
    pub async fn check_health(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<(PoolInfo, HealthReport)>, PoolError> {
        let pools = match name {
            Some(name) => vec![self.registry.get(name)?],
            None => self
                .registry
                .names()
                .iter()
                .filter_map(|name| self.registry.get(name).ok())
                .collect(),
        };
        let checks = pools.iter().map(|pool| self.check_one(pool));
        Ok(futures::future::join_all(checks).await)
    }

    async fn check_one(&self, pool: &Arc<ManagedPool>) -> (PoolInfo, HealthReport) {
        let name = pool.name();
        // The monitor handle cannot be held across the await (a std mutex),
        // so the request is made through a clone of its sender.
        let request = self.lock_monitors().get(&name).map(Monitor::requester);
        let report = match request {
            Some(request) => request.check_now().await,
            None => HealthReport::unmonitored(),
        };
        (pool.info(), report)
    }

    /// Every pool with its health, for snapshots.
    pub fn pools_with_health(&self) -> Vec<(PoolInfo, HealthReport)> {
        self.registry
            .list()
            .into_iter()
            .map(|info| {
                let report = self.health(&info.config.name);
                (info, report)
            })
            .collect()
    }

    /// Stops monitors and drains every pool (shutdown).
    pub async fn shutdown(&self, drain_timeout: Duration) {
        if let Some(task) = self.collector.lock().ok().and_then(|mut slot| slot.take()) {
            task.abort();
        }
        let monitors: Vec<Monitor> = self.lock_monitors().drain().map(|(_, m)| m).collect();
        drop(monitors);
        let names = self.registry.names();
        let drains = names
            .iter()
            .map(|name| self.registry.delete(name, drain_timeout, false));
        futures::future::join_all(drains).await;
    }

    fn lock_monitors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Monitor>> {
        match self.monitors.lock() {
            Ok(monitors) => monitors,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// How often sessions are checked against their pool's leak threshold.
const LEAK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Leak detection: a SESSION_LEAK event and a session_leak alert for each
/// session that holds its connection past its pool's
/// `leak_detection_threshold_ms`; the alert resolves when it ends.
async fn watch_sessions(app: Weak<App>) {
    let mut ticker = tokio::time::interval(LEAK_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(app) = app.upgrade() else {
            return;
        };
        app.check_sessions();
    }
}

impl App {
    fn check_sessions(&self) {
        let now = SystemTime::now();
        for session in self.sessions.new_leaks() {
            let threshold = self
                .registry
                .get(&session.pool)
                .ok()
                .and_then(|pool| pool.config().sessions.leak_threshold)
                .unwrap_or_default();
            tracing::warn!(
                pool = %session.pool,
                session = session.id,
                caller = %session.caller,
                peer = %session.peer,
                age_ms = session.age.as_millis() as u64,
                last_statement = %session.last_statement,
                "session holds its connection past leak_detection_threshold_ms"
            );
            let pool = session.pool.clone();
            if let Some(change) = self.monitoring.session_leaked(&session, threshold, now) {
                self.publish_alert_change(change);
            }
            self.events
                .publish(&pool, EventDetail::SessionLeak(session));
        }
        for session in self.sessions.ended_leaks() {
            if let Some(change) = self.monitoring.session_ended(session.id, now) {
                self.publish_alert_change(change);
            }
        }
    }
}

/// The metrics collector: one sample of every pool per
/// `monitoring.collection_interval_ms`, until the app is gone.
async fn collect(app: Weak<App>) {
    let interval = match app.upgrade() {
        Some(app) => app.monitoring.config().collection_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match app.upgrade() {
            Some(app) => app.collect_now(),
            None => return,
        }
    }
}
