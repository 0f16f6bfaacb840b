//! A managed pool: one named pool's mobc pool plus everything mobc lacks
//! (DESIGN.md): a hard limit on server connections that survives live
//! resizes, a gate that refuses work while draining, a fail-fast breaker the
//! health monitor opens while the database is unreachable, exact
//! statistics, and a close that waits until every backend is really gone.
//!
//! A resize (an `UpdatePool` that changes limits or timeouts) builds a new
//! mobc *generation* with the new settings and retires the old one: the old
//! generation's idle connections are closed at once and its busy ones when
//! they come back. The server slot semaphore is shared by all generations,
//! so old and new connections together never exceed the current
//! `max_connections`.
//!
//! Background work: the maintenance loop (`maintenance.rs`, one per pool,
//! stopped by the drain) and a short warm-up task at start, after each
//! resize and after a recovery (one at a time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::conns::CancelReason;
use super::error::PoolError;
use super::lease::{Lease, LeaseCanceller};
use super::maintenance;
use super::manager::{ConnectError, PgManager, Shared};
use super::stats::{AcquireOutcome, CloseReason, HistogramSnapshot, PoolStats, StatsSnapshot};
use crate::config::{PoolConfig, PoolLimits};
use crate::events::EventBus;

/// How long a close waits for connections to end after their work stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long UpdatePool waits for a shrink to take effect before answering.
const RESIZE_SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    Serving,
    Draining,
    Closed,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Leases whose statements were cancelled because the drain ran out of time (or was forced).
    pub cancelled: u32,
    pub connections_closed: u64,
}

/// The duration histograms of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolHistograms {
    /// Time to get a connection (every acquisition, whatever its outcome).
    pub acquire_wait: HistogramSnapshot,
    /// Time a caller held a connection.
    pub hold: HistogramSnapshot,
    /// Time to open a server connection.
    pub setup: HistogramSnapshot,
    /// Time statements ran.
    pub statement: HistogramSnapshot,
}

/// Everything `GetPool` reports.
#[derive(Debug, Clone)]
pub struct PoolInfo {
    pub config: PoolConfig,
    pub state: PoolState,
    pub stats: StatsSnapshot,
    pub last_error: Option<String>,
    pub created_at: SystemTime,
}

pub struct ManagedPool {
    /// Fixed for the pool's life; kept apart from `config` so a lease can
    /// carry it without a lock or an allocation.
    name: Arc<str>,
    config: RwLock<PoolConfig>,
    generation: RwLock<Arc<Generation>>,
    shared: Arc<Shared>,
    state: AtomicU8,
    inflight: Arc<InflightTable>,
    created_at: SystemTime,
    /// Serializes resizes and the close, which both swap generations.
    reconfigure: tokio::sync::Mutex<()>,
    /// Set by the health monitor while the database is unreachable: calls
    /// fail at once with this reason instead of waiting out a timeout.
    fail_fast: RwLock<Option<String>>,
    /// Bumped on every settings change, so watchers can rebuild what they
    /// derived from the settings.
    config_version: AtomicU64,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by the one warm-up that may run at a time, so two (start and
    /// maintenance, say) cannot both open the minimum.
    warming: tokio::sync::Mutex<()>,
}

struct Generation {
    pool: mobc::Pool<PgManager>,
    retired: Arc<AtomicBool>,
}

impl ManagedPool {
    /// Builds the pool and starts warming up `min_connections` in the
    /// background; a database that is down at start is not an error here:
    /// the pool starts and reports it through `last_error`.
    pub fn start(config: PoolConfig, events: Arc<EventBus>) -> Arc<ManagedPool> {
        let stats = Arc::new(PoolStats::new());
        let shared = Arc::new(Shared::new(
            &config.name,
            config.limits.max_connections,
            Arc::clone(&stats),
            events,
        ));
        let generation = Arc::new(Generation::build(&config, &shared));
        let pool = Arc::new(ManagedPool {
            name: Arc::from(config.name.as_str()),
            config: RwLock::new(config),
            generation: RwLock::new(generation),
            inflight: Arc::new(InflightTable::new(stats)),
            shared,
            state: AtomicU8::new(STATE_SERVING),
            created_at: SystemTime::now(),
            reconfigure: tokio::sync::Mutex::new(()),
            fail_fast: RwLock::new(None),
            config_version: AtomicU64::new(0),
            maintenance: Mutex::new(None),
            warming: tokio::sync::Mutex::new(()),
        });
        pool.spawn_warm_up();
        let task = tokio::spawn(maintenance::run(Arc::downgrade(&pool)));
        if let Ok(mut slot) = pool.maintenance.lock() {
            *slot = Some(task);
        }
        pool
    }

    /// Changes when this pool's alerts fire; connections are untouched.
    pub fn set_alert_thresholds(&self, thresholds: crate::config::AlertThresholds) {
        match self.config.write() {
            Ok(mut config) => config.alerts = thresholds,
            Err(poisoned) => poisoned.into_inner().alerts = thresholds,
        }
        self.config_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes calls fail at once with `reason` (the database is
    /// unreachable), or lets them through again with `None`.
    pub fn set_fail_fast(&self, reason: Option<String>) {
        match self.fail_fast.write() {
            Ok(mut slot) => *slot = reason,
            Err(poisoned) => *poisoned.into_inner() = reason,
        }
    }

    fn fail_fast_reason(&self) -> Option<String> {
        match self.fail_fast.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Notified when a connection breaks or a connect fails.
    pub fn trouble(&self) -> &tokio::sync::Notify {
        &self.shared.trouble
    }

    /// Changes whenever the pool's settings change.
    pub fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::Acquire)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The mobc pool new work goes to.
    pub(crate) fn current_pool(&self) -> mobc::Pool<PgManager> {
        self.current_generation().pool.clone()
    }

    pub fn name(&self) -> String {
        self.name.to_string()
    }

    pub fn config(&self) -> PoolConfig {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current limits, without copying the rest of the settings (this
    /// is on every acquisition's path).
    pub fn limits(&self) -> PoolLimits {
        match self.config.read() {
            Ok(config) => config.limits,
            Err(poisoned) => poisoned.into_inner().limits,
        }
    }

    pub fn state(&self) -> PoolState {
        match self.state.load(Ordering::Acquire) {
            STATE_SERVING => PoolState::Serving,
            STATE_DRAINING => PoolState::Draining,
            _ => PoolState::Closed,
        }
    }

    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            config: self.config(),
            state: self.state(),
            stats: self.shared.stats.snapshot(),
            last_error: self.shared.last_error(),
            created_at: self.created_at,
        }
    }

    /// Errors of callers' SQL by SQLSTATE class (`SQLSTATE_CLASSES` order).
    pub fn sql_errors(&self) -> Vec<u64> {
        self.shared.stats.sql_errors()
    }

    /// The pool's duration histograms, read now.
    pub fn histograms(&self) -> PoolHistograms {
        let stats = &self.shared.stats;
        PoolHistograms {
            acquire_wait: stats.acquire_wait.snapshot(),
            hold: stats.hold.snapshot(),
            setup: stats.setup.snapshot(),
            statement: stats.statement.snapshot(),
        }
    }

    pub fn reset_statistics(&self) {
        self.shared.stats.reset();
    }

    /// Borrows a connection, waiting at most the pool's connection timeout.
    /// Every call ends in exactly one acquisition outcome in the statistics.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        let stats = &self.shared.stats;
        let attempt = stats.begin_acquire();
        if self.state() != PoolState::Serving {
            attempt.finish(AcquireOutcome::Rejected);
            return Err(PoolError::Draining(self.name()));
        }
        if let Some(last_error) = self.fail_fast_reason() {
            attempt.finish(AcquireOutcome::Error);
            return Err(PoolError::Unavailable {
                pool: self.name(),
                last_error,
            });
        }
        let (timeout, max) = {
            let limits = self.limits();
            (limits.connection_timeout, limits.max_connections)
        };
        let conn = loop {
            let generation = self.current_generation();
            let remaining = timeout.saturating_sub(attempt.elapsed());
            match generation.pool.get_timeout(remaining).await {
                Ok(conn) => break conn,
                // A resize retired the generation we were queued on: queue
                // again on the new one with what is left of our time.
                Err(mobc::Error::Inner(ConnectError::Retired))
                    if self.state() == PoolState::Serving && !remaining.is_zero() =>
                {
                    continue
                }
                Err(err) => {
                    let (outcome, error) = self.acquire_error(err, attempt.elapsed(), max);
                    attempt.finish(outcome);
                    return Err(error);
                }
            }
        };
        if self.state() != PoolState::Serving {
            // The drain began while we waited; the connection goes straight back.
            attempt.finish(AcquireOutcome::Rejected);
            return Err(PoolError::Draining(self.name()));
        }
        attempt.finish(AcquireOutcome::Success);
        let canceller = LeaseCanceller::for_conn(&conn, timeout);
        let inflight = self.inflight.register(canceller);
        Ok(Lease::new(conn, inflight, Arc::clone(&self.name), timeout))
    }

    /// The outcome and the caller's error for a failed mobc `get`.
    fn acquire_error(
        &self,
        err: mobc::Error<ConnectError>,
        waited: Duration,
        max: u32,
    ) -> (AcquireOutcome, PoolError) {
        let exhausted = || PoolError::Exhausted {
            pool: self.name(),
            waited,
            max,
        };
        let unavailable = |last_error: String| PoolError::Unavailable {
            pool: self.name(),
            last_error,
        };
        match err {
            // A connect that keeps failing also ends in mobc's timeout;
            // say so rather than blaming the pool's size.
            mobc::Error::Timeout => match self.shared.last_error() {
                Some(last_error) if self.shared.stats.open_connections() == 0 => {
                    (AcquireOutcome::Error, unavailable(last_error))
                }
                _ => (AcquireOutcome::Timeout, exhausted()),
            },
            mobc::Error::Inner(ConnectError::Retired) | mobc::Error::PoolClosed => {
                (AcquireOutcome::Rejected, PoolError::Draining(self.name()))
            }
            mobc::Error::Inner(ConnectError::NoSlot(_)) => (AcquireOutcome::Timeout, exhausted()),
            mobc::Error::Inner(err) => (AcquireOutcome::Error, unavailable(err.to_string())),
            mobc::Error::BadConn => (
                AcquireOutcome::Error,
                unavailable("connections kept failing their check".into()),
            ),
        }
    }

    /// Applies new limits live. A changed `max_connections` moves the server
    /// slot count; every change starts a fresh generation so new settings
    /// (timeouts, statement_timeout) apply to every connection handed out
    /// from now on.
    pub async fn update_limits(self: &Arc<Self>, limits: PoolLimits) -> Result<(), PoolError> {
        crate::config::check_limits(&limits).map_err(PoolError::InvalidConfig)?;
        let _guard = self.reconfigure.lock().await;
        if self.state() != PoolState::Serving {
            return Err(PoolError::Draining(self.name()));
        }
        let config = {
            let mut config = match self.config.write() {
                Ok(config) => config,
                Err(poisoned) => poisoned.into_inner(),
            };
            let old_max = config.limits.max_connections;
            config.limits = limits;
            self.resize_slots(old_max, limits.max_connections);
            config.clone()
        };
        self.config_version.fetch_add(1, Ordering::AcqRel);
        let fresh = Arc::new(Generation::build(&config, &self.shared));
        let old = self.swap_generation(fresh);
        old.retire().await;
        self.settle(limits.max_connections, &old).await;
        self.spawn_warm_up();
        Ok(())
    }

    /// Waits until no more than `max` server connections are open, so a
    /// shrink is real when the caller hears it is done. Bounded: statements
    /// still running on old connections keep them until they end.
    async fn settle(&self, max: u32, old: &Generation) {
        let deadline = Instant::now() + RESIZE_SETTLE_LIMIT;
        while self.shared.stats.open_connections() > u64::from(max) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    pool = %self.name,
                    open = self.shared.stats.open_connections(),
                    max,
                    "resize not settled yet: busy connections close when their work ends"
                );
                return;
            }
            // A connection returned after `retire` is closed by the manager,
            // but one whose return raced with it may sit idle: sweep again.
            old.close_idle().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn resize_slots(&self, old_max: u32, new_max: u32) {
        let slots = &self.shared.slots;
        if new_max > old_max {
            slots.add_permits((new_max - old_max) as usize);
            return;
        }
        let excess = (old_max - new_max) as usize;
        let forgotten = slots.forget_permits(excess);
        let owed = excess - forgotten;
        if owed > 0 {
            // Slots still held by open connections are taken as those
            // connections close; the semaphore is fair, so this debt is paid
            // before any new connection may open.
            let slots = Arc::clone(slots);
            tokio::spawn(async move {
                if let Ok(permits) = slots.acquire_many_owned(owed as u32).await {
                    permits.forget();
                }
            });
        }
    }

    /// Stops taking work, lets in-flight work finish until `deadline` (or
    /// not at all with `force`), cancels what is still running, then closes
    /// every connection and waits until the backends are gone.
    pub async fn drain(&self, drain_timeout: Duration, force: bool) -> DrainReport {
        let _guard = self.reconfigure.lock().await;
        self.state.store(STATE_DRAINING, Ordering::Release);
        if let Some(task) = self
            .maintenance
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
        {
            task.abort();
        }
        let closed_before = self.shared.stats.snapshot().connections_closed;
        let finished = !force && self.inflight.wait_idle(drain_timeout).await;
        let mut cancelled = 0;
        if !finished {
            cancelled = self.inflight.cancel_all().await;
            self.inflight.wait_idle(CLOSE_GRACE).await;
        }
        let generation = self.current_generation();
        generation.retired.store(true, Ordering::Release);
        let deadline = Instant::now() + CLOSE_GRACE;
        loop {
            generation.close_idle().await;
            if self.shared.stats.open_connections() == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.state.store(STATE_CLOSED, Ordering::Release);
        // Nothing may open again; a pending slot-debt task ends too.
        self.shared.slots.close();
        let closed_after = self.shared.stats.snapshot().connections_closed;
        DrainReport {
            cancelled,
            connections_closed: closed_after.saturating_sub(closed_before),
        }
    }

    fn current_generation(&self) -> Arc<Generation> {
        match self.generation.read() {
            Ok(generation) => Arc::clone(&generation),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn swap_generation(&self, fresh: Arc<Generation>) -> Arc<Generation> {
        let mut current = match self.generation.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *current, fresh)
    }

    fn spawn_warm_up(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move { pool.warm_up().await });
    }

    /// Opens connections until `min_connections` are open (not while the
    /// pool fails fast: the database is known to be down).
    pub(crate) async fn warm_up(&self) {
        let Ok(_warming) = self.warming.try_lock() else {
            return;
        };
        let limits = self.limits();
        let open = self.shared.stats.open_connections();
        let min = u64::from(limits.min_connections);
        if open >= min || self.fail_fast_reason().is_some() || self.state() != PoolState::Serving {
            return;
        }
        // Taking `min` at once forces that many to exist (idle ones are
        // reused, the rest opened); they all go back idle right after.
        let pool = self.current_pool();
        let gets = (0..min).map(|_| pool.get_timeout(limits.connection_timeout));
        let results = futures::future::join_all(gets).await;
        if let Some(Err(err)) = results.iter().find(|result| result.is_err()) {
            tracing::warn!(pool = %self.name, error = %err, "could not open min_connections");
        }
    }
}

const STATE_SERVING: u8 = 0;
const STATE_DRAINING: u8 = 1;
const STATE_CLOSED: u8 = 2;

impl Generation {
    fn build(config: &PoolConfig, shared: &Arc<Shared>) -> Generation {
        let retired = Arc::new(AtomicBool::new(false));
        let limits = &config.limits;
        let max = u64::from(limits.max_connections);
        let manager = PgManager::new(config, Arc::clone(shared), Arc::clone(&retired));
        let pool = mobc::Pool::builder()
            .max_open(max)
            // max_idle below max_open makes bursts close and reopen connections.
            .max_idle(max)
            .get_timeout(Some(limits.connection_timeout))
            // Lifetimes and idle reaping are ours (maintenance.rs): mobc's
            // are enforced only lazily at checkout.
            .max_lifetime(None)
            .max_idle_lifetime(None)
            // `check` runs on every checkout; it decides itself whether a
            // round trip is due (manager.rs).
            .test_on_check_out(true)
            .health_check_interval(Some(Duration::from_nanos(1)))
            .build(manager);
        Generation { pool, retired }
    }

    /// Refuses new connections, closes the idle ones now; busy ones close
    /// when they come back (the manager's `validate` rejects them).
    async fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.close_idle().await;
    }

    /// Takes every idle connection out of the mobc pool and closes it.
    /// With the generation retired a `get` that finds nothing idle fails at
    /// once (the manager refuses to connect), which ends the loop.
    async fn close_idle(&self) {
        loop {
            match self.pool.get_timeout(Duration::from_millis(20)).await {
                Ok(conn) => {
                    let conn = conn.into_inner();
                    conn.entry().set_close_reason(CloseReason::Retired);
                    drop(conn);
                }
                Err(_) => return,
            }
        }
    }
}

/// The leases a pool has out, with what it takes to cancel each.
pub(crate) struct InflightTable {
    next_id: AtomicU64,
    leases: Mutex<HashMap<u64, LeaseCanceller>>,
    idle: Notify,
    stats: Arc<PoolStats>,
}

/// One entry of the table; removing it is the lease's last act.
pub(crate) struct Inflight {
    table: Arc<InflightTable>,
    id: u64,
}

impl InflightTable {
    fn new(stats: Arc<PoolStats>) -> InflightTable {
        InflightTable {
            next_id: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            stats,
        }
    }

    fn register(self: &Arc<Self>, canceller: LeaseCanceller) -> Inflight {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut leases) = self.leases.lock() {
            leases.insert(id, canceller);
        }
        Inflight {
            table: Arc::clone(self),
            id,
        }
    }

    fn count(&self) -> usize {
        self.leases.lock().map(|leases| leases.len()).unwrap_or(0)
    }

    /// Waits until no lease is out; false if `timeout` passed first.
    async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }

    async fn cancel_all(&self) -> u32 {
        let cancellers: Vec<LeaseCanceller> = match self.leases.lock() {
            Ok(leases) => leases.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let results =
            futures::future::join_all(cancellers.iter().map(|c| c.cancel(CancelReason::Drain)))
                .await;
        u32::try_from(results.len()).unwrap_or(u32::MAX)
    }
}

impl Inflight {
    pub(crate) fn statement_ran(&self, duration: Duration) {
        self.table.stats.statement_ran(duration);
    }

    pub(crate) fn sql_error(&self, sqlstate: &str) {
        self.table.stats.sql_error(sqlstate);
    }

    pub(crate) fn finish(&self, held: Duration) {
        if let Ok(mut leases) = self.table.leases.lock() {
            leases.remove(&self.id);
        }
        self.table.stats.released(held);
        self.table.idle.notify_waiters();
    }
}
