//! A lease: one pooled connection lent to one caller. Dropping it gives the
//! connection back (or closes it, if it was marked for discard) and updates
//! the pool's statistics, whatever path the caller took out.
//!
//! A lease also keeps the connection-hygiene promise: once anything was sent
//! on the connection, it goes back to the pool only after a session reset
//! (`postgres::reset`) reported it clean. A lease dropped without one closes
//! its connection instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::{CancelToken, SimpleQueryMessage};

use super::conns::{CancelReason, ConnEntry};
use super::managed::Inflight;
use super::manager::{PgConn, PgManager};
use crate::postgres::reset::{self, ResetFailed};
use crate::postgres::Endpoint;

pub struct Lease {
    conn: mobc::Connection<PgManager>,
    inflight: Inflight,
    acquired_at: Instant,
    pool_name: Arc<str>,
    cancel_timeout: std::time::Duration,
    /// Something was sent since the connection was last known clean.
    dirty: AtomicBool,
}

/// What another task needs to stop the work running on a lease: a cancel
/// request for PostgreSQL and the flag that keeps the connection out of the
/// pool afterwards (a late cancel must never hit the next borrower).
#[derive(Clone)]
pub struct LeaseCanceller {
    token: CancelToken,
    entry: Arc<ConnEntry>,
    endpoint: Arc<Endpoint>,
    /// Bounds the whole cancel request (the server may be unreachable).
    timeout: std::time::Duration,
}

impl LeaseCanceller {
    pub(crate) fn for_conn(conn: &PgConn, timeout: std::time::Duration) -> LeaseCanceller {
        LeaseCanceller {
            token: conn.cancel_token(),
            entry: conn.entry(),
            endpoint: conn.endpoint(),
            timeout,
        }
    }

    /// Marks the connection for discard and asks PostgreSQL to cancel
    /// whatever it is running. Returns whether the cancel request was sent.
    pub async fn cancel(&self, reason: CancelReason) -> bool {
        self.entry.cancelled(reason);
        match tokio::time::timeout(self.timeout, self.endpoint.cancel(&self.token)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cancel request to PostgreSQL failed");
                false
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "cancel request to PostgreSQL timed out");
                false
            }
        }
    }

    /// Marks the connection cancelled and sends the cancel request from a
    /// task of its own, so the caller answers without waiting for it.
    pub fn cancel_in_background(&self, reason: CancelReason) {
        self.entry.cancelled(reason);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let canceller = self.clone();
            runtime.spawn(async move {
                canceller.cancel(reason).await;
            });
        }
    }
}

impl Lease {
    pub(crate) fn new(
        conn: mobc::Connection<PgManager>,
        inflight: Inflight,
        pool_name: Arc<str>,
        cancel_timeout: std::time::Duration,
    ) -> Lease {
        Lease {
            conn,
            inflight,
            acquired_at: Instant::now(),
            pool_name,
            cancel_timeout,
            dirty: AtomicBool::new(false),
        }
    }

    /// The session reset as one request, to be sent right behind the
    /// caller's statement (same flight); its reply goes to [`Lease::finish_reset`].
    pub fn reset_request(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>> + '_
    {
        self.conn.client().simple_query(reset::RESET_SQL)
    }

    /// Reads a pipelined reset's reply, finishes the reset if the caller
    /// left a transaction open, and marks the connection clean; a
    /// connection that cannot be made clean is closed when the lease ends.
    pub async fn finish_reset(
        &self,
        reply: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
    ) {
        let outcome = match reset::read_report(reply) {
            Ok(report) => {
                if report != reset::ResetReport::Clean {
                    tracing::warn!(pool = %self.pool_name, ?report, "connection came back unclean; resetting it");
                }
                reset::finish(self.conn.client(), report).await
            }
            Err(failed) => Err(failed),
        };
        self.settle_reset(outcome);
    }

    /// Resets the session now (one round trip).
    pub async fn reset(&self) {
        let outcome = reset::reset(self.conn.client()).await.map(|_| ());
        self.settle_reset(outcome);
    }

    fn settle_reset(&self, outcome: Result<(), ResetFailed>) {
        match outcome {
            Ok(()) => self.dirty.store(false, Ordering::Release),
            Err(failed) => {
                if self.reusable() {
                    tracing::warn!(pool = %self.pool_name, error = %failed, "closing a connection that could not be reset");
                }
                self.discard();
            }
        }
    }

    /// The connection's client. Whoever uses it may change the session, so
    /// from here on the connection goes back to the pool only after a
    /// reset proved it clean (or after [`Lease::nothing_ran`]).
    pub fn client(&self) -> &tokio_postgres::Client {
        self.dirty.store(true, Ordering::Release);
        self.conn.client()
    }

    /// Says that what was sent since the last reset cannot have changed
    /// the session (only a Parse, which failed): no reset is needed.
    pub fn nothing_ran(&self) {
        self.dirty.store(false, Ordering::Release);
    }

    pub fn canceller(&self) -> LeaseCanceller {
        LeaseCanceller::for_conn(&self.conn, self.cancel_timeout)
    }

    /// Whether the connection may still go back to the pool.
    pub fn reusable(&self) -> bool {
        self.conn.entry().reusable() && !self.conn.client().is_closed()
    }

    /// Close the connection when the lease ends instead of reusing it.
    pub fn discard(&self) {
        self.conn.entry().discard();
    }

    /// Why poolplane cancelled this lease's statement, if it did.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.conn.entry().cancel_reason()
    }

    /// The pool this lease came from.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// Counts an error of the caller's own SQL (not a pool failure).
    pub fn sql_error(&self, sqlstate: &str) {
        self.inflight.sql_error(sqlstate);
    }

    /// Records how long a statement on this lease took.
    pub fn statement_ran(&self, duration: std::time::Duration) {
        self.inflight.statement_ran(duration);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.dirty.load(Ordering::Acquire) {
            // The caller ended before a reset proved the session clean.
            self.discard();
        }
        self.inflight.finish(self.acquired_at.elapsed());
    }
}
