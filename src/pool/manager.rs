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

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_postgres::{CancelToken, Client, NoTls};

use super::stats::PoolStats;
use super::tls::{self, Tls};
use crate::config::PoolConfig;

/// One open server connection.
pub struct PgConn {
    client: Client,
    cancel: CancelToken,
    fate: Arc<Fate>,
}

/// Whether a connection may go back to the pool, and if not, why. Set by
/// whoever abandons or cancels the connection's work, read when it returns.
#[derive(Debug, Default)]
pub(crate) struct Fate(AtomicU8);

/// Why poolplane cancelled a running statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The caller's deadline passed, or the caller went away.
    Deadline,
    /// The pool is being drained and the drain ran out of time (or was forced).
    Drain,
}

const FATE_KEEP: u8 = 0;
const FATE_DISCARD: u8 = 1;
const FATE_CANCELLED_DEADLINE: u8 = 2;
const FATE_CANCELLED_DRAIN: u8 = 3;

impl Fate {
    /// Never reuse the connection (a result abandoned half-read, a broken socket).
    pub(crate) fn discard(&self) {
        let _ =
            self.0
                .compare_exchange(FATE_KEEP, FATE_DISCARD, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Never reuse it, because a cancel request was sent: a late cancel
    /// must not hit the next borrower's statement.
    pub(crate) fn cancelled(&self, reason: CancelReason) {
        let fate = match reason {
            CancelReason::Deadline => FATE_CANCELLED_DEADLINE,
            CancelReason::Drain => FATE_CANCELLED_DRAIN,
        };
        self.0.store(fate, Ordering::Release);
    }

    pub(crate) fn reusable(&self) -> bool {
        self.0.load(Ordering::Acquire) == FATE_KEEP
    }

    pub(crate) fn cancel_reason(&self) -> Option<CancelReason> {
        match self.0.load(Ordering::Acquire) {
            FATE_CANCELLED_DEADLINE => Some(CancelReason::Deadline),
            FATE_CANCELLED_DRAIN => Some(CancelReason::Drain),
            _ => None,
        }
    }
}

impl PgConn {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(crate) fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub(crate) fn fate(&self) -> Arc<Fate> {
        Arc::clone(&self.fate)
    }
}

/// State shared by every generation's manager of one pool.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) stats: Arc<PoolStats>,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn record_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}

/// Opens connections for one generation of a pool's mobc pool.
pub(crate) struct PgManager {
    pg: tokio_postgres::Config,
    /// `Err` holds why TLS could not be set up; every connect reports it.
    tls: Result<Tls, String>,
    shared: Arc<Shared>,
    /// A retired generation opens nothing and keeps nothing it is given back.
    retired: Arc<AtomicBool>,
    check_timeout: Duration,
    connect_timeout: Duration,
}

/// Why a connection could not be opened or failed its check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{}", error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("timed out after {0:?} waiting for a free server connection slot")]
    NoSlot(Duration),
    #[error("the pool generation is retired")]
    Retired,
    #[error("connection check timed out after {0:?}")]
    CheckTimeout(Duration),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

impl PgManager {
    pub(crate) fn new(config: &PoolConfig, shared: Arc<Shared>, retired: Arc<AtomicBool>) -> Self {
        let connect_timeout = config.limits.connection_timeout;
        PgManager {
            pg: postgres_config(config),
            tls: tls::connector(config),
            shared,
            retired,
            // A check is one round trip; it must never eat the whole acquire budget.
            check_timeout: connect_timeout.min(Duration::from_secs(5)),
            connect_timeout,
        }
    }
}

/// The driver configuration for a pool: no secret is logged from here, and
/// tokio-postgres redacts the password in its own Debug output.
pub(crate) fn postgres_config(config: &PoolConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .dbname(&config.database)
        .user(&config.user)
        .application_name(&config.application_name)
        .connect_timeout(config.limits.connection_timeout)
        // Keepalives and the user timeout make a dead peer show up as an
        // error instead of a hang (DESIGN.md, mobc facts).
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(30))
        .ssl_mode(tls::driver_mode(config.sslmode));
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    if let Some(timeout) = config.limits.statement_timeout {
        pg.options(format!("-c statement_timeout={}", timeout.as_millis()));
    }
    pg
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
        let stats = Arc::clone(&self.shared.stats);
        // The driver task ends when the socket closes; only then is the
        // backend gone and its slot free for a new connection.
        let connected = match &self.tls {
            Err(why) => return Err(ConnectError::Tls(why.clone())),
            Ok(Tls::Plain) => self.pg.connect(NoTls).await.map(|(client, connection)| {
                stats.connection_opened(started.elapsed());
                tokio::spawn(drive(connection, stats, slot));
                client
            }),
            Ok(Tls::Rustls(connector)) => {
                self.pg
                    .connect(connector.clone())
                    .await
                    .map(|(client, connection)| {
                        stats.connection_opened(started.elapsed());
                        tokio::spawn(drive(connection, stats, slot));
                        client
                    })
            }
        };
        let client = match connected {
            Ok(client) => client,
            Err(err) => {
                self.shared.record_error(Some(error_chain(&err)));
                return Err(err.into());
            }
        };
        self.shared.record_error(None);
        Ok(PgConn {
            cancel: client.cancel_token(),
            client,
            fate: Arc::new(Fate::default()),
        })
    }

    async fn check(&self, conn: PgConn) -> Result<PgConn, ConnectError> {
        match tokio::time::timeout(self.check_timeout, conn.client.simple_query("")).await {
            Ok(Ok(_)) => Ok(conn),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(ConnectError::CheckTimeout(self.check_timeout)),
        }
    }

    fn validate(&self, conn: &mut PgConn) -> bool {
        !conn.client.is_closed() && conn.fate.reusable() && !self.retired.load(Ordering::Acquire)
    }
}

/// Runs a connection's driver until the socket closes, then frees its slot.
async fn drive<S, T>(
    connection: tokio_postgres::Connection<S, T>,
    stats: Arc<PoolStats>,
    slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "server connection ended with an error");
    }
    stats.connection_closed();
    drop(slot);
}

/// An error with its causes, `outer: inner: innermost`: tokio-postgres
/// puts the useful part ("password missing", "connection refused") in the
/// source, not in its own message.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
