//! A managed pool: one named pool's core (`core.rs`) plus what belongs to
//! the pool as a whole: its settings, a fail-fast breaker the health
//! monitor opens while the database is unreachable, statistics, events,
//! live resize, and a drain that waits until every backend is really gone.
//!
//! Background work: the maintenance loop (`maintenance.rs`, one per pool,
//! stopped by the drain) and a short warm-up task at start, after each
//! resize and after a recovery (one at a time).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::core::{AcquireError, Borrowed, CancelReason, ConnCounts, Core, Pause};
use super::error::PoolError;
use super::lease::Lease;
use super::maintenance::{self, Tended};
use super::pg::PgConnector;
use super::stats::{AcquireOutcome, CloseReason, HistogramSnapshot, PoolStats, StatsSnapshot};
use crate::config::{AlertThresholds, PoolConfig, PoolLimits};
use crate::events::{EventBus, EventDetail};
use crate::text_cache::{TextBounds, TextCache};

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

/// How to pause a pool.
#[derive(Debug, Clone, Copy)]
pub struct PauseOptions {
    /// How long work in flight may take to finish before it is cancelled.
    pub timeout: Duration,
    /// Cancel work in flight at once.
    pub force: bool,
    /// Close every server connection while paused.
    pub close_connections: bool,
    /// Most callers that may wait for the resume.
    pub queue_limit: usize,
}

/// What a pause did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseReport {
    /// Leases whose work was cancelled (out of time, or forced).
    pub cancelled: u32,
    /// Server connections open once the pause took hold.
    pub connections_open: u64,
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
    /// Paused (`ManagedPool::pause`): acquisitions wait for the resume.
    pub paused: bool,
    /// Server connections by state, read from the core in one pass.
    pub connections: ConnCounts,
    /// Since the last `ResetStatistics` (what `GetPool` reports).
    pub stats: StatsSnapshot,
    pub last_error: Option<String>,
    pub created_at: SystemTime,
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

pub struct ManagedPool {
    /// Fixed for the pool's life; kept apart from `config` so a lease can
    /// carry it without a lock or an allocation.
    name: Arc<str>,
    config: RwLock<PoolConfig>,
    core: Arc<Core<PgConnector>>,
    stats: Arc<PoolStats>,
    /// Woken when a connection breaks or a connect fails, so the health
    /// monitor checks at once instead of at its next tick.
    trouble: Arc<Notify>,
    /// Connects (for a caller, the warm-up or a replacement) that failed
    /// since the pool started: the health monitor checks that it can still
    /// log in whenever this moves.
    connect_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set when a drain has finished (the core stops serving when it starts).
    closed: AtomicBool,
    created_at: SystemTime,
    /// Serializes resizes and the drain.
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
    /// Connections held by sessions now (`SessionPermit`s alive).
    sessions: Arc<AtomicU32>,
    /// False once the pool stops taking work: sessions end at their next
    /// quiet moment instead of holding a drain up.
    serving: tokio::sync::watch::Sender<bool>,
    /// Statement texts the query path found fit to run on this pool (it
    /// parses each with PostgreSQL's parser, a tenth of an Execute's CPU;
    /// services send the same few hundred statements again and again).
    admitted: TextCache<bool>,
    /// Bumped after a statement that changes the catalog ran here:
    /// statement plans made before are prepared afresh.
    catalog_generation: AtomicU64,
}

/// Bounds of a pool's [`ManagedPool::admitted`] texts: 1 MiB at most.
const ADMITTED: TextBounds = TextBounds {
    entries: 1024,
    bytes: 1024 * 1024,
    longest: 8 * 1024,
};

/// A session's place under `max_session_connections`; dropping it frees it.
pub struct SessionPermit(Arc<AtomicU32>);

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ManagedPool {
    /// Builds the pool and starts warming up `min_connections` in the
    /// background; a database that is down at start is not an error here:
    /// the pool starts and reports it through `last_error`.
    pub fn start(config: PoolConfig, events: Arc<EventBus>) -> Arc<ManagedPool> {
        let stats = Arc::new(PoolStats::new());
        let name: Arc<str> = Arc::from(config.name.as_str());
        let trouble = Arc::new(Notify::new());
        let on_broken = {
            let (name, trouble) = (Arc::clone(&name), Arc::clone(&trouble));
            move |error: String| {
                tracing::warn!(pool = %name, %error, "connection lost");
                events.publish(&name, EventDetail::ConnectionLost { error });
                trouble.notify_one();
            }
        };
        let core = Core::new(
            PgConnector::new(&config),
            config.limits.max_connections,
            Arc::clone(&stats),
            on_broken,
        );
        let pool = Arc::new(ManagedPool {
            name,
            config: RwLock::new(config),
            core,
            stats,
            trouble,
            connect_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            created_at: SystemTime::now(),
            reconfigure: tokio::sync::Mutex::new(()),
            fail_fast: RwLock::new(None),
            config_version: AtomicU64::new(0),
            maintenance: Mutex::new(None),
            warming: tokio::sync::Mutex::new(()),
            sessions: Arc::new(AtomicU32::new(0)),
            serving: tokio::sync::watch::Sender::new(true),
            admitted: TextCache::new(ADMITTED),
            catalog_generation: AtomicU64::new(0),
        });
        pool.spawn_warm_up();
        let task = tokio::spawn(maintenance::run(Arc::downgrade(&pool)));
        if let Ok(mut slot) = pool.maintenance.lock() {
            *slot = Some(task);
        }
        pool
    }

    /// Whether the statement `sql` was already found fit to run here:
    /// `Some(changes_catalog)` if it was.
    pub fn admitted(&self, sql: &str) -> Option<bool> {
        self.admitted.get(sql)
    }

    /// Remembers that the statement `sql` is fit to run here, and whether
    /// it changes the catalog.
    pub fn admit(&self, sql: &str, changes_catalog: bool) {
        self.admitted.insert(sql, changes_catalog);
    }

    /// The catalog generation statement plans are made in.
    pub fn catalog_generation(&self) -> u64 {
        self.catalog_generation.load(Ordering::Acquire)
    }

    /// A statement that changes the catalog ran (or is about to): plans
    /// made before are no longer used.
    pub fn catalog_changed(&self) {
        self.catalog_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Applies an update: new limits live (see [`ManagedPool::update_limits`])
    /// and alert thresholds in place. The update is merged into the
    /// settings under the reconfigure lock, so concurrent updates each
    /// apply to what the one before left. Returns the limits now in force.
    pub async fn update(self: &Arc<Self>, update: LimitsUpdate) -> Result<PoolLimits, PoolError> {
        let (limits, settle) = {
            let _guard = self.reconfigure.lock().await;
            if self.state() != PoolState::Serving {
                return Err(PoolError::Draining(self.name()));
            }
            let config = self.config();
            let limits = update.apply(config.limits);
            let thresholds = update.apply_thresholds(config.alerts);
            crate::config::check_thresholds(&thresholds).map_err(PoolError::InvalidConfig)?;
            crate::config::check_limits(&limits).map_err(PoolError::InvalidConfig)?;
            if let Some(sessions) = config
                .sessions
                .max_connections
                .filter(|sessions| *sessions > limits.max_connections)
            {
                return Err(PoolError::InvalidConfig(vec![crate::config::ConfigError {
                    path: "max_connections".into(),
                    line: None,
                    message: format!(
                        "{} is below the pool's max_session_connections ({sessions}): sessions could take every connection",
                        limits.max_connections
                    ),
                }]));
            }
            let settle = limits != config.limits;
            if settle {
                self.apply_limits(config, limits);
            }
            self.set_alert_thresholds(thresholds);
            (limits, settle)
        };
        if settle {
            self.settle(limits.max_connections).await;
        }
        Ok(limits)
    }

    /// Changes when this pool's alerts fire; connections are untouched.
    fn set_alert_thresholds(&self, thresholds: AlertThresholds) {
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
    pub fn trouble(&self) -> &Notify {
        &self.trouble
    }

    /// How many connects have failed since the pool started.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Acquire)
    }

    /// Pings one of the pool's idle connections now, as a keepalive check
    /// does (a failed one is closed): how long the database took to answer
    /// on a connection the pool already has, or why it did not. `None`
    /// without an idle connection.
    pub async fn ping_an_idle_connection(
        &self,
        timeout: Duration,
    ) -> Option<Result<Duration, String>> {
        let (id, conn) = self.core.check_one_idle()?;
        let started = std::time::Instant::now();
        let result = self.core.ping(id, conn, timeout).await;
        Some(result.map(|()| started.elapsed()))
    }

    /// Server connections that can serve: open, neither still connecting
    /// nor closing.
    pub fn established_connections(&self) -> u64 {
        let counts = self.core.counts();
        counts.open() - counts.connecting - counts.closing
    }

    /// Changes whenever the pool's settings change.
    pub fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::Acquire)
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
        if self.core.serving() {
            PoolState::Serving
        } else if self.closed.load(Ordering::Acquire) {
            PoolState::Closed
        } else {
            PoolState::Draining
        }
    }

    fn record_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    pub fn info(&self) -> PoolInfo {
        let connections = self.core.counts();
        PoolInfo {
            config: self.config(),
            state: self.state(),
            paused: self.core.paused(),
            connections,
            stats: self.stats.since_reset(connections),
            last_error: self.last_error(),
            created_at: self.created_at,
        }
    }

    /// Errors of callers' SQL by SQLSTATE class (`SQLSTATE_CLASSES` order).
    pub fn sql_errors(&self) -> Vec<u64> {
        self.stats.sql_errors()
    }

    /// The pool's duration histograms, read now.
    pub fn histograms(&self) -> PoolHistograms {
        let stats = &self.stats;
        PoolHistograms {
            acquire_wait: stats.acquire_wait.snapshot(),
            hold: stats.hold.snapshot(),
            setup: stats.setup.snapshot(),
            statement: stats.statement.snapshot(),
        }
    }

    /// The counters over the pool's life, never reset (Prometheus and the
    /// monitor compute rates from them), with the gauges as now.
    pub fn lifetime_stats(&self) -> StatsSnapshot {
        self.stats.lifetime(self.core.counts())
    }

    /// Restarts what [`ManagedPool::info`] reports; exported counters and
    /// histograms keep counting.
    pub fn reset_statistics(&self) {
        self.stats.reset();
        self.core.reset_peak();
    }

    /// Whether one more session may hold a connection now (nothing taken).
    pub fn session_room(&self) -> Result<(), PoolError> {
        let max = self.max_sessions();
        if self.sessions.load(Ordering::Acquire) < max {
            return Ok(());
        }
        Err(PoolError::TooManySessions {
            pool: self.name(),
            max,
        })
    }

    /// Most connections sessions may hold at once.
    pub fn max_sessions(&self) -> u32 {
        let config = self.config();
        config
            .sessions
            .max_connections(config.limits.max_connections)
    }

    /// A place for one more session, if sessions hold fewer connections
    /// than `max_session_connections` allows: the rest stay for Execute.
    pub fn session_permit(&self) -> Result<SessionPermit, PoolError> {
        let max = self.max_sessions();
        let admitted = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            });
        match admitted {
            Ok(_) => Ok(SessionPermit(Arc::clone(&self.sessions))),
            Err(_) => Err(PoolError::TooManySessions {
                pool: self.name(),
                max,
            }),
        }
    }

    /// Resolves once the pool has stopped taking work (a drain began).
    pub async fn stopped_serving(&self) {
        let mut serving = self.serving.subscribe();
        let _ = serving.wait_for(|serving| !serving).await;
    }

    /// Borrows a connection, waiting at most the pool's connection timeout.
    /// Every call ends in exactly one acquisition outcome in the statistics.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        let attempt = self.stats.begin_acquire();
        if !self.core.serving() {
            attempt.finish(AcquireOutcome::Rejected);
            return Err(PoolError::Draining(self.name()));
        }
        // While paused callers wait, whatever the database's state (a
        // pause is how a database restart is ridden out).
        if let Some(last_error) = self.fail_fast_reason().filter(|_| !self.core.paused()) {
            attempt.finish(AcquireOutcome::Error);
            return Err(PoolError::Unavailable {
                pool: self.name(),
                last_error,
            });
        }
        let limits = self.limits();
        let borrowed = match self
            .core
            .acquire(
                limits.connection_timeout,
                limits.health_check_interval,
                limits.connection_timeout,
            )
            .await
        {
            Err(AcquireError::Connect(err)) => self.after_failed_connect(err, &attempt).await,
            other => other.map_err(|err| self.acquire_error(err, attempt.elapsed())),
        };
        match borrowed {
            Ok(borrowed) => {
                if borrowed.fresh {
                    self.record_error(None);
                }
                attempt.finish(AcquireOutcome::Success);
                Ok(Lease::new(
                    borrowed,
                    Arc::clone(&self.core),
                    Arc::clone(&self.stats),
                    Arc::clone(&self.name),
                ))
            }
            Err((outcome, error)) => {
                attempt.finish(outcome);
                Err(error)
            }
        }
    }

    /// A connect for this caller failed. If the pool has connections that
    /// serve, the caller waits the rest of its timeout for one of them (as
    /// HikariCP's callers do), rather than failing while they are merely
    /// busy (a connection limit reached, a login that stopped working);
    /// with none, it fails now. Either way the failure is reported at once.
    async fn after_failed_connect(
        &self,
        err: crate::postgres::OpenError,
        attempt: &super::stats::AcquireAttempt<'_>,
    ) -> Result<Borrowed<PgConnector>, (AcquireOutcome, PoolError)> {
        let error = err.to_string();
        self.connect_failed(&error);
        let limits = self.limits();
        let left = limits.connection_timeout.saturating_sub(attempt.elapsed());
        if self.established_connections() == 0 || left.is_zero() {
            return Err((
                AcquireOutcome::Error,
                PoolError::Unavailable {
                    pool: self.name(),
                    last_error: error,
                },
            ));
        }
        match self
            .core
            .acquire_without_growing(
                left,
                limits.health_check_interval,
                limits.connection_timeout,
            )
            .await
        {
            Err(AcquireError::Timeout) => Err((
                AcquireOutcome::Timeout,
                PoolError::CouldNotGrow {
                    pool: self.name(),
                    waited: attempt.elapsed(),
                    max: limits.max_connections,
                    error,
                },
            )),
            other => other.map_err(|err| self.acquire_error(err, attempt.elapsed())),
        }
    }

    /// The outcome and the caller's error for a failed acquisition.
    fn acquire_error(
        &self,
        err: AcquireError<crate::postgres::OpenError>,
        waited: Duration,
    ) -> (AcquireOutcome, PoolError) {
        let max = self.limits().max_connections;
        let unavailable = |last_error: String| PoolError::Unavailable {
            pool: self.name(),
            last_error,
        };
        match err {
            // A connect that keeps failing also ends in a timeout; say so
            // rather than blaming the pool's size.
            AcquireError::Timeout => match self.last_error() {
                Some(last_error) if self.core.counts().open() == 0 => {
                    (AcquireOutcome::Error, unavailable(last_error))
                }
                _ => (
                    AcquireOutcome::Timeout,
                    PoolError::Exhausted {
                        pool: self.name(),
                        waited,
                        max,
                    },
                ),
            },
            AcquireError::Draining => (AcquireOutcome::Rejected, PoolError::Draining(self.name())),
            AcquireError::QueueFull => (
                AcquireOutcome::Rejected,
                PoolError::PauseQueueFull {
                    pool: self.name(),
                    limit: u32::try_from(self.core.pause_queue_limit()).unwrap_or(u32::MAX),
                },
            ),
            AcquireError::Connect(err) => {
                let error = err.to_string();
                self.connect_failed(&error);
                (AcquireOutcome::Error, unavailable(error))
            }
        }
    }

    fn connect_failed(&self, error: &str) {
        self.connect_failures.fetch_add(1, Ordering::AcqRel);
        self.record_error(Some(error.to_string()));
        self.trouble.notify_one();
    }

    /// Applies new limits live (the caller holds the reconfigure lock). A
    /// changed `max_connections` moves the limit at once (a shrink closes
    /// idle connections now and busy ones when they return); changed
    /// connection settings (`statement_timeout`, timeouts) reach every
    /// connection opened from now on, and the open ones are replaced
    /// gracefully.
    fn apply_limits(self: &Arc<Self>, mut config: PoolConfig, limits: PoolLimits) {
        let old = config.limits;
        config.limits = limits;
        match self.config.write() {
            Ok(mut current) => current.limits = limits,
            Err(poisoned) => poisoned.into_inner().limits = limits,
        }
        self.config_version.fetch_add(1, Ordering::AcqRel);
        if old.statement_timeout != limits.statement_timeout
            || old.connection_timeout != limits.connection_timeout
        {
            self.core.set_connector(PgConnector::new(&config));
        }
        if old.statement_timeout != limits.statement_timeout {
            // The setting is given at connect: only new connections have it.
            self.core.retire_all(CloseReason::Retired);
        }
        self.core.resize(limits.max_connections);
        self.spawn_warm_up();
    }

    /// Waits, without holding the reconfigure lock (a drain must not wait
    /// behind it), until no more than `max` connections are open, so a
    /// shrink is real when the caller hears it is done. Bounded: statements
    /// still running keep their connections until they end.
    async fn settle(&self, max: u32) {
        let max = u64::from(max);
        if !self.core.wait_open_at_most(max, RESIZE_SETTLE_LIMIT).await {
            tracing::warn!(
                pool = %self.name,
                open = self.core.counts().open(),
                max,
                "resize not settled yet: busy connections close when their work ends"
            );
        }
    }

    /// Stops taking work, lets in-flight work finish until `drain_timeout`
    /// (or not at all with `force`), cancels what is still running, then
    /// closes every connection and waits until the backends are gone.
    pub async fn drain(&self, drain_timeout: Duration, force: bool) -> DrainReport {
        // Refuse work at once, even while a resize still holds the lock.
        self.core.stop_serving();
        self.serving.send_replace(false);
        let _guard = self.reconfigure.lock().await;
        if let Some(task) = self
            .maintenance
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
        {
            task.abort();
        }
        let closed_before = self.stats.lifetime(Default::default()).connections_closed;
        let finished = !force && self.core.wait_no_leases(drain_timeout).await;
        let mut cancelled = 0;
        if !finished {
            cancelled = self.core.cancel_leases(CancelReason::Drain).await;
            self.core.wait_no_leases(CLOSE_GRACE).await;
        }
        self.core.wait_open_at_most(0, CLOSE_GRACE).await;
        self.closed.store(true, Ordering::Release);
        let closed_after = self.stats.lifetime(Default::default()).connections_closed;
        DrainReport {
            cancelled,
            connections_closed: closed_after.saturating_sub(closed_before),
        }
    }

    /// Pauses the pool (PgBouncer's PAUSE): new acquisitions queue (at
    /// most `options.queue_limit`) and wait for [`ManagedPool::resume`] or
    /// their caller's deadline; work in flight may finish until
    /// `options.timeout` (at once with `force`), then what still runs is
    /// cancelled. With `close_connections`, every server connection is
    /// closed while paused. Returns once nothing runs (and, with
    /// `close_connections`, nothing is open).
    pub async fn pause(&self, options: PauseOptions) -> Result<PauseReport, PoolError> {
        {
            let _guard = self.reconfigure.lock().await;
            if self.state() != PoolState::Serving {
                return Err(PoolError::Draining(self.name()));
            }
            self.core.pause(Pause {
                queue_limit: options.queue_limit,
                close_connections: options.close_connections,
            });
        }
        let finished = !options.force && self.core.wait_no_leases(options.timeout).await;
        let mut cancelled = 0;
        // A resume meanwhile ends the pause: nothing is cancelled then.
        if !finished && self.core.paused() {
            cancelled = self.core.cancel_leases(CancelReason::Pause).await;
            self.core.wait_no_leases(CLOSE_GRACE).await;
        }
        if options.close_connections {
            self.core.wait_open_at_most(0, CLOSE_GRACE).await;
        }
        Ok(PauseReport {
            cancelled,
            connections_open: self.core.counts().open(),
        })
    }

    /// Ends a pause: queued callers are served in arrival order.
    pub fn resume(self: &Arc<Self>) -> Result<(), PoolError> {
        if self.state() != PoolState::Serving {
            return Err(PoolError::Draining(self.name()));
        }
        self.core.resume();
        self.spawn_warm_up();
        Ok(())
    }

    pub fn paused(&self) -> bool {
        self.core.paused()
    }

    /// Paused with every server connection closed (`drain_connections`).
    pub fn paused_without_connections(&self) -> bool {
        self.core
            .pause_in_force()
            .is_some_and(|pause| pause.close_connections)
    }

    /// As [`ManagedPool::retarget`], once a connection to the new target
    /// succeeded: a target that does not answer (or refuses the login)
    /// changes nothing, rather than failing every call afterwards.
    pub async fn retarget_checked(self: &Arc<Self>, config: PoolConfig) -> Result<(), PoolError> {
        if let Err(error) = PgConnector::new(&config).check().await {
            return Err(PoolError::TargetUnreachable {
                target: format!("{}:{}/{}", config.host, config.port, config.database),
                error: error.to_string(),
            });
        }
        self.retarget(config).await
    }

    /// Moves the pool to another server (a failover) or login: connections
    /// opened from now on go to `config`'s target; idle ones close now,
    /// busy ones when their work ends. Calls keep being served meanwhile.
    /// The breaker opens for the new target only if its own checks fail.
    pub async fn retarget(self: &Arc<Self>, config: PoolConfig) -> Result<(), PoolError> {
        let _guard = self.reconfigure.lock().await;
        if self.state() != PoolState::Serving {
            return Err(PoolError::Draining(self.name()));
        }
        self.core.set_connector(PgConnector::new(&config));
        match self.config.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        self.config_version.fetch_add(1, Ordering::AcqRel);
        self.core.retire_all(CloseReason::Retired);
        // What the old server did says nothing about the new one.
        self.set_fail_fast(None);
        self.record_error(None);
        self.trouble.notify_one();
        self.spawn_warm_up();
        Ok(())
    }

    /// Applies a pool's new settings from a reloaded file: a new target or
    /// connection setting replaces the connections (as [`ManagedPool::retarget`]),
    /// new limits apply live (as UpdatePool), the rest is swapped in.
    /// Returns whether the connections are being replaced.
    pub async fn reconfigure(self: &Arc<Self>, new: PoolConfig) -> Result<bool, PoolError> {
        let current = self.config();
        let reconnect = PoolConfig {
            limits: current.limits,
            alerts: current.alerts,
            recovery: current.recovery,
            sessions: current.sessions,
            ..new.clone()
        } != current;
        if reconnect {
            self.retarget_checked(PoolConfig {
                limits: current.limits,
                ..new.clone()
            })
            .await?;
        } else {
            let _guard = self.reconfigure.lock().await;
            match self.config.write() {
                Ok(mut config) => {
                    *config = PoolConfig {
                        limits: current.limits,
                        ..new.clone()
                    }
                }
                Err(poisoned) => {
                    *poisoned.into_inner() = PoolConfig {
                        limits: current.limits,
                        ..new.clone()
                    }
                }
            }
            self.config_version.fetch_add(1, Ordering::AcqRel);
        }
        if new.limits != current.limits {
            let limits = new.limits;
            self.update(LimitsUpdate {
                max_connections: Some(limits.max_connections),
                min_connections: Some(limits.min_connections),
                connection_timeout: Some(limits.connection_timeout),
                idle_timeout: Some(limits.idle_timeout),
                health_check_interval: Some(limits.health_check_interval),
                statement_timeout: Some(limits.statement_timeout),
                max_lifetime: Some(limits.max_lifetime),
                ..LimitsUpdate::default()
            })
            .await?;
        }
        Ok(reconnect)
    }

    /// Replaces every server connection gracefully: idle ones close now,
    /// busy ones when their work ends; new ones open as needed (and up to
    /// `min_connections` at once). No caller sees an error. A new
    /// connection is opened first: if that fails (a password changed on
    /// the server only), the pool keeps the connections it has.
    pub async fn reconnect(self: &Arc<Self>) -> Result<(), PoolError> {
        if self.state() != PoolState::Serving {
            return Err(PoolError::Draining(self.name()));
        }
        if let Err(error) = PgConnector::new(&self.config()).check().await {
            return Err(PoolError::NewConnectionFails {
                pool: self.name(),
                error: error.to_string(),
            });
        }
        self.core.retire_all(CloseReason::Retired);
        self.spawn_warm_up();
        Ok(())
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
        if self.fail_fast_reason().is_some() {
            return;
        }
        let limits = self.limits();
        let warmed = self
            .core
            .warm_up(limits.min_connections, limits.connection_timeout)
            .await;
        if let Some(error) = warmed.error {
            tracing::warn!(pool = %self.name, %error, "could not open min_connections");
            self.connect_failed(&error);
        } else if warmed.opened > 0 {
            self.record_error(None);
        }
    }
}

impl Tended for ManagedPool {
    type Connector = PgConnector;

    fn core(&self) -> &Core<PgConnector> {
        &self.core
    }

    fn limits(&self) -> PoolLimits {
        ManagedPool::limits(self)
    }

    async fn warm_up(&self) {
        ManagedPool::warm_up(self).await;
    }
}
