//! The registry: pool name -> managed pool. The one place pools are
//! created, found, resized and removed; it holds no database logic itself.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::error::PoolError;
use super::managed::{DrainReport, ManagedPool, PoolInfo};
use crate::config::{AlertThresholds, PoolConfig, PoolDefaults, PoolLimits};
use crate::events::EventBus;

pub struct Registry {
    pools: RwLock<BTreeMap<String, Arc<ManagedPool>>>,
    defaults: PoolDefaults,
    events: Arc<EventBus>,
}

/// Which limits an update changes; `None` keeps the current value.
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitsUpdate {
    pub max_connections: Option<u32>,
    pub min_connections: Option<u32>,
    pub connection_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub health_check_interval: Option<Duration>,
    /// `Some(None)` removes the statement timeout.
    pub statement_timeout: Option<Option<Duration>>,
    pub max_lifetime: Option<Duration>,
    pub utilization_alert_threshold: Option<f64>,
    pub error_rate_alert_threshold: Option<f64>,
    pub acquire_wait_alert_threshold: Option<Duration>,
}

impl LimitsUpdate {
    fn apply_thresholds(&self, current: AlertThresholds) -> AlertThresholds {
        AlertThresholds {
            utilization: self
                .utilization_alert_threshold
                .unwrap_or(current.utilization),
            error_rate: self
                .error_rate_alert_threshold
                .unwrap_or(current.error_rate),
            acquire_wait: self
                .acquire_wait_alert_threshold
                .unwrap_or(current.acquire_wait),
        }
    }

    fn apply(&self, current: PoolLimits) -> PoolLimits {
        PoolLimits {
            max_connections: self.max_connections.unwrap_or(current.max_connections),
            min_connections: self.min_connections.unwrap_or(current.min_connections),
            connection_timeout: self
                .connection_timeout
                .unwrap_or(current.connection_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(current.idle_timeout),
            health_check_interval: self
                .health_check_interval
                .unwrap_or(current.health_check_interval),
            statement_timeout: self.statement_timeout.unwrap_or(current.statement_timeout),
            max_lifetime: self.max_lifetime.unwrap_or(current.max_lifetime),
        }
    }
}

impl Registry {
    pub fn new(defaults: PoolDefaults, events: Arc<EventBus>) -> Registry {
        Registry {
            pools: RwLock::new(BTreeMap::new()),
            defaults,
            events,
        }
    }

    pub fn defaults(&self) -> &PoolDefaults {
        &self.defaults
    }

    /// Starts a pool; true if it was created. With `if_not_exists`, an
    /// existing pool of that name is returned instead of an error (its
    /// settings are left as they are).
    pub fn create(
        &self,
        config: PoolConfig,
        if_not_exists: bool,
    ) -> Result<(Arc<ManagedPool>, bool), PoolError> {
        let mut pools = self.write();
        if let Some(existing) = pools.get(&config.name) {
            return if if_not_exists {
                Ok((Arc::clone(existing), false))
            } else {
                Err(PoolError::AlreadyExists(config.name))
            };
        }
        let name = config.name.clone();
        tracing::info!(
            pool = %name,
            host = %config.host,
            port = config.port,
            database = %config.database,
            user = %config.user,
            max_connections = config.limits.max_connections,
            min_connections = config.limits.min_connections,
            "pool started"
        );
        let pool = ManagedPool::start(config, Arc::clone(&self.events));
        pools.insert(name, Arc::clone(&pool));
        Ok((pool, true))
    }

    pub fn get(&self, name: &str) -> Result<Arc<ManagedPool>, PoolError> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(name.to_string()))
    }

    pub fn list(&self) -> Vec<PoolInfo> {
        let pools: Vec<Arc<ManagedPool>> = self.read().values().cloned().collect();
        pools.iter().map(|pool| pool.info()).collect()
    }

    /// Applies an update: limits and timeouts through a new generation (only
    /// if they changed), alert thresholds in place.
    pub async fn update(&self, name: &str, update: LimitsUpdate) -> Result<PoolInfo, PoolError> {
        let pool = self.get(name)?;
        let config = pool.config();
        let limits = update.apply(config.limits);
        let thresholds = update.apply_thresholds(config.alerts);
        crate::config::check_thresholds(&thresholds).map_err(PoolError::InvalidConfig)?;
        if limits != config.limits {
            pool.update_limits(limits).await?;
        }
        pool.set_alert_thresholds(thresholds);
        tracing::info!(
            pool = %name,
            max_connections = limits.max_connections,
            min_connections = limits.min_connections,
            "pool updated"
        );
        Ok(pool.info())
    }

    /// Drains a pool and removes it. While it drains it stays listed (as
    /// DRAINING) and refuses work; a second delete of the same pool waits
    /// for nothing and reports it as draining.
    pub async fn delete(
        &self,
        name: &str,
        drain_timeout: Duration,
        force: bool,
    ) -> Result<(DrainReport, PoolInfo), PoolError> {
        let pool = self.get(name)?;
        if pool.state() != super::PoolState::Serving {
            return Err(PoolError::Draining(name.to_string()));
        }
        tracing::info!(pool = %name, ?drain_timeout, force, "draining pool");
        let report = pool.drain(drain_timeout, force).await;
        self.write().remove(name);
        tracing::info!(
            pool = %name,
            cancelled = report.cancelled,
            connections_closed = report.connections_closed,
            "pool removed"
        );
        Ok((report, pool.info()))
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ManagedPool>>> {
        match self.pools.read() {
            Ok(pools) => pools,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ManagedPool>>> {
        match self.pools.write() {
            Ok(pools) => pools,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
