//! The application core: the registry of pools, a health monitor per pool,
//! and the event bus, behind the operations the API offers. Every change to
//! the set of pools goes through here so monitors and events follow it.
//!
//! Invariant: no gRPC types; `api/` translates to and from these calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, HealthConfig, PoolConfig, ServerConfig};
use crate::events::{EventBus, EventDetail};
use crate::health::{HealthReport, Monitor};
use crate::pool::{DrainReport, LimitsUpdate, ManagedPool, PoolError, PoolInfo, Registry};

pub struct App {
    registry: Registry,
    monitors: Mutex<HashMap<String, Monitor>>,
    events: Arc<EventBus>,
    health: HealthConfig,
    server: ServerConfig,
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
            registry: Registry::new(config.defaults.clone(), Arc::clone(&events)),
            monitors: Mutex::new(HashMap::new()),
            events,
            health: config.health.clone(),
            server: config.server.clone(),
        });
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
                let monitor =
                    Monitor::start(Arc::clone(&pool), &self.health, Arc::clone(&self.events));
                self.lock_monitors().insert(name.clone(), monitor);
            }
            self.events.publish(&name, EventDetail::PoolCreated);
        }
        Ok(pool)
    }

    pub async fn update_pool(
        &self,
        name: &str,
        update: LimitsUpdate,
    ) -> Result<PoolInfo, PoolError> {
        let info = self.registry.update(name, update).await?;
        self.events.publish(name, EventDetail::PoolUpdated);
        Ok(info)
    }

    /// Drains and removes a pool; its monitor stops first so no probe
    /// outlives it.
    pub async fn delete_pool(
        &self,
        name: &str,
        drain_timeout: Duration,
        force: bool,
    ) -> Result<(DrainReport, PoolInfo), PoolError> {
        self.registry.get(name)?;
        let monitor = self.lock_monitors().remove(name);
        drop(monitor);
        let result = self.registry.delete(name, drain_timeout, force).await?;
        self.events.publish(name, EventDetail::PoolRemoved);
        Ok(result)
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
