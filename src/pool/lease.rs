//! A lease: one pooled connection lent to one caller. Dropping it gives the
//! connection back (or closes it, if it was marked for discard) and updates
//! the pool's statistics, whatever path the caller took out.

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::CancelToken;

use super::conns::{CancelReason, ConnEntry};
use super::managed::Inflight;
use super::manager::{PgConn, PgManager};
use crate::postgres::Endpoint;

pub struct Lease {
    conn: mobc::Connection<PgManager>,
    inflight: Inflight,
    acquired_at: Instant,
    pool_name: Arc<str>,
    cancel_timeout: std::time::Duration,
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
        }
    }

    pub fn conn(&self) -> &PgConn {
        &self.conn
    }

    pub fn canceller(&self) -> LeaseCanceller {
        LeaseCanceller::for_conn(&self.conn, self.cancel_timeout)
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
        self.inflight.finish(self.acquired_at.elapsed());
    }
}
