//! A lease: one pooled connection lent to one caller. Dropping it gives the
//! connection back (or closes it, if it was marked for discard) and updates
//! the pool's statistics, whatever path the caller took out.

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::CancelToken;

use super::managed::Inflight;
use super::manager::{CancelReason, Fate, PgConn, PgManager};

pub struct Lease {
    conn: mobc::Connection<PgManager>,
    inflight: Inflight,
    acquired_at: Instant,
    pool_name: Arc<str>,
}

/// What another task needs to stop the work running on a lease: a cancel
/// request for PostgreSQL and the flag that keeps the connection out of the
/// pool afterwards (a late cancel must never hit the next borrower).
#[derive(Clone)]
pub struct LeaseCanceller {
    token: CancelToken,
    fate: Arc<Fate>,
}

impl LeaseCanceller {
    pub(crate) fn for_conn(conn: &PgConn) -> LeaseCanceller {
        LeaseCanceller {
            token: conn.cancel_token(),
            fate: conn.fate(),
        }
    }

    /// Marks the connection for discard and asks PostgreSQL to cancel
    /// whatever it is running. Returns whether the cancel request was sent.
    pub async fn cancel(&self, reason: CancelReason) -> bool {
        self.fate.cancelled(reason);
        match self.token.cancel_query(tokio_postgres::NoTls).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "cancel request to PostgreSQL failed");
                false
            }
        }
    }
}

impl Lease {
    pub(crate) fn new(
        conn: mobc::Connection<PgManager>,
        inflight: Inflight,
        pool_name: Arc<str>,
    ) -> Lease {
        Lease {
            conn,
            inflight,
            acquired_at: Instant::now(),
            pool_name,
        }
    }

    pub fn conn(&self) -> &PgConn {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut PgConn {
        &mut self.conn
    }

    pub fn canceller(&self) -> LeaseCanceller {
        LeaseCanceller::for_conn(&self.conn)
    }

    /// Close the connection when the lease ends instead of reusing it.
    pub fn discard(&self) {
        self.conn.fate().discard();
    }

    /// Why poolplane cancelled this lease's statement, if it did.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.conn.fate().cancel_reason()
    }

    /// The pool this lease came from.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    pub fn held_for(&self) -> std::time::Duration {
        self.acquired_at.elapsed()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inflight.finish();
    }
}
