//! The registry: pool name -> managed pool. The one place pools are
//! created, found, resized and removed; it holds no database logic itself.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::error::PoolError;
use super::managed::{DrainReport, LimitsUpdate, ManagedPool, PoolInfo};
use crate::config::{PoolConfig, PoolDefaults};
use crate::events::EventBus;

pub struct Registry {
    pools: RwLock<BTreeMap<String, Arc<ManagedPool>>>,
    /// Replaced by a config reload.
    defaults: RwLock<PoolDefaults>,
    /// `server.max_pools`.
    max_pools: u32,
    events: Arc<EventBus>,
}

impl Registry {
    pub fn new(defaults: PoolDefaults, max_pools: u32, events: Arc<EventBus>) -> Registry {
        Registry {
            pools: RwLock::new(BTreeMap::new()),
            defaults: RwLock::new(defaults),
            max_pools,
            events,
        }
    }

    /// What pools created over the API inherit (`default_pool`, `credentials`).
    pub fn defaults(&self) -> PoolDefaults {
        match self.defaults.read() {
            Ok(defaults) => defaults.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_defaults(&self, defaults: PoolDefaults) {
        match self.defaults.write() {
            Ok(mut current) => *current = defaults,
            Err(poisoned) => *poisoned.into_inner() = defaults,
        }
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
        if pools.len() >= self.max_pools as usize {
            return Err(PoolError::TooManyPools(self.max_pools));
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

    /// Applies an update to a pool's limits and alert thresholds.
    pub async fn update(&self, name: &str, update: LimitsUpdate) -> Result<PoolInfo, PoolError> {
        let pool = self.get(name)?;
        let limits = pool.update(update).await?;
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
        {
            // Only this pool: a pool created under the name since (after a
            // concurrent delete of this one finished) stays.
            let mut pools = self.write();
            if pools
                .get(name)
                .is_some_and(|current| Arc::ptr_eq(current, &pool))
            {
                pools.remove(name);
            }
        }
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
