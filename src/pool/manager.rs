//! The mobc `Manager` for PostgreSQL: how poolplane opens, checks and
//! validates server connections.
//!
//! We do not use mobc-postgres's manager because it detaches each
//! connection's driver task, so nobody can tell when a backend is really
//! gone, its `check` has no timeout and its `validate` is always true
//! (DESIGN.md). Here every connection's driver task holds a *server slot*
//! (a permit of the pool's slot semaphore) until the socket is closed, which
//! is what makes `max_connections` a hard limit on backends even while
//! connections are being replaced or a resize is in progress.
//!
//! mobc is told to call `check` on every checkout; `check` itself is cheap
//! unless the connection sat unchecked for `health_check_interval`, when it
//! runs an empty query under a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_postgres::{CancelToken, Client};

use super::conns::{ConnEntry, ConnTable};
use super::stats::{CloseReason, PoolStats};
use crate::config::PoolConfig;
use crate::events::{EventBus, EventDetail};
use crate::postgres::{Connector, DriverEnd, Endpoint, OpenError};

/// One open server connection.
pub struct PgConn {
    client: Arc<Client>,
    cancel: CancelToken,
    entry: Arc<ConnEntry>,
    endpoint: Arc<Endpoint>,
}

impl PgConn {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub(crate) fn entry(&self) -> Arc<ConnEntry> {
        Arc::clone(&self.entry)
    }

    pub(crate) fn endpoint(&self) -> Arc<Endpoint> {
        Arc::clone(&self.endpoint)
    }
}

/// State shared by every generation's manager of one pool.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) stats: Arc<PoolStats>,
    pub(crate) conns: ConnTable,
    pub(crate) events: Arc<EventBus>,
    /// Woken when a connection breaks or a connect fails, so the health
    /// monitor checks at once instead of at its next tick.
    pub(crate) trouble: Notify,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(
        name: &str,
        max: u32,
        stats: Arc<PoolStats>,
        events: Arc<EventBus>,
    ) -> Shared {
        Shared {
            name: Arc::from(name),
            slots: Arc::new(Semaphore::new(max as usize)),
            stats,
            conns: ConnTable::default(),
            events,
            trouble: Notify::new(),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn record_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// A pool connection broke: count it, tell subscribers, wake the monitor.
    pub(crate) fn connection_broke(&self, error: String) {
        self.stats.connection_broke();
        tracing::warn!(pool = %self.name, %error, "connection lost");
        self.events
            .publish(&self.name, EventDetail::ConnectionLost { error });
        self.trouble.notify_one();
    }
}

/// Opens connections for one generation of a pool's mobc pool.
pub(crate) struct PgManager {
    connector: Connector,
    shared: Arc<Shared>,
    /// A retired generation opens nothing and keeps nothing it is given back.
    retired: Arc<AtomicBool>,
    check_timeout: Duration,
    connect_timeout: Duration,
    check_after: Duration,
}

/// Why a connection could not be opened or failed its checkout check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("timed out after {0:?} waiting for a free server connection slot")]
    NoSlot(Duration),
    #[error("the pool generation is retired")]
    Retired,
    #[error("connection check timed out after {0:?}")]
    CheckTimeout(Duration),
    #[error("connection check failed: {0}")]
    CheckFailed(String),
    #[error("connection is closed or being closed")]
    Unusable,
}

impl PgManager {
    pub(crate) fn new(config: &PoolConfig, shared: Arc<Shared>, retired: Arc<AtomicBool>) -> Self {
        let connect_timeout = config.limits.connection_timeout;
        PgManager {
            connector: Connector::new(config, &config.application_name),
            shared,
            retired,
            // A check is one round trip; it must never eat the whole acquire budget.
            check_timeout: connect_timeout.min(Duration::from_secs(5)),
            connect_timeout,
            check_after: config.limits.health_check_interval,
        }
    }
}

#[mobc::async_trait]
impl mobc::Manager for PgManager {
    type Connection = PgConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConn, ConnectError> {
        if self.retired.load(Ordering::Acquire) {
            return Err(ConnectError::Retired);
        }
        let started = Instant::now();
        let slot = tokio::time::timeout(
            self.connect_timeout,
            Arc::clone(&self.shared.slots).acquire_owned(),
        )
        .await
        .map_err(|_| ConnectError::NoSlot(self.connect_timeout))?
        .map_err(|_| ConnectError::Retired)?;
        let entry = self.shared.conns.add(fastrand::f64() * 0.1);
        let on_end = {
            let shared = Arc::clone(&self.shared);
            let entry = Arc::clone(&entry);
            move |end: DriverEnd| {
                shared.conns.remove(entry.id());
                // A break is reported whatever else already decided to close
                // the connection (a checkout may have seen it closed first).
                let broke = match end {
                    DriverEnd::Failed(error) => {
                        shared.connection_broke(error);
                        true
                    }
                    DriverEnd::Closed | DriverEnd::Aborted => false,
                };
                let reason = entry.close_reason().unwrap_or(if broke {
                    CloseReason::Broken
                } else {
                    CloseReason::Discarded
                });
                shared.stats.connection_closed(reason);
                drop(slot);
            }
        };
        self.shared.stats.connection_opening();
        match self.connector.open(on_end).await {
            Ok((client, closer)) => {
                self.shared.stats.connection_opened(started.elapsed());
                self.shared.record_error(None);
                let client = Arc::new(client);
                entry.attach(&client, closer);
                Ok(PgConn {
                    cancel: client.cancel_token(),
                    client,
                    entry,
                    endpoint: self.connector.endpoint(),
                })
            }
            Err(err) => {
                // `on_end` was dropped unrun with the failed open: undo by hand.
                self.shared.conns.remove(entry.id());
                self.shared.stats.connection_not_opened();
                self.shared.record_error(Some(err.to_string()));
                self.shared.trouble.notify_one();
                Err(err.into())
            }
        }
    }

    async fn check(&self, conn: PgConn) -> Result<PgConn, ConnectError> {
        if !conn.entry.try_lease() || conn.client.is_closed() || !conn.entry.reusable() {
            conn.entry.set_close_reason(CloseReason::Broken);
            return Err(ConnectError::Unusable);
        }
        if conn.entry.unchecked_for() < self.check_after {
            return Ok(conn);
        }
        match tokio::time::timeout(self.check_timeout, conn.client.simple_query("")).await {
            Ok(Ok(_)) => {
                conn.entry.mark_checked();
                Ok(conn)
            }
            Ok(Err(err)) => {
                let error = crate::postgres::error_chain(&err);
                conn.entry.set_close_reason(CloseReason::Broken);
                self.shared.connection_broke(error.clone());
                Err(ConnectError::CheckFailed(error))
            }
            Err(_) => {
                conn.entry.set_close_reason(CloseReason::Broken);
                self.shared
                    .connection_broke(format!("check timed out after {:?}", self.check_timeout));
                Err(ConnectError::CheckTimeout(self.check_timeout))
            }
        }
    }

    fn validate(&self, conn: &mut PgConn) -> bool {
        let reason = if conn.client.is_closed() {
            Some(CloseReason::Broken)
        } else if !conn.entry.reusable() {
            Some(CloseReason::Discarded)
        } else if self.retired.load(Ordering::Acquire) {
            Some(CloseReason::Retired)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                conn.entry.set_close_reason(reason);
                false
            }
            None => {
                conn.entry.release();
                true
            }
        }
    }
}
