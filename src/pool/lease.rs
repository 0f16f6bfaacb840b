//! A lease: one pooled connection lent to one caller. Dropping it gives the
//! connection back to the core (or closes it, if it was cancelled or
//! discarded) and records how long it was held, whatever path the caller
//! took out.
//!
//! A lease also keeps the connection-hygiene promise: whoever touches the
//! client may change the session, so from then on the connection goes back
//! to the pool only after a session reset proved it clean. The query path
//! pipelines that reset with its statement ([`Lease::reset_request`]); a
//! lease dropped without one is reset in the background (state Resetting)
//! before anyone else can have it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::connector::Connector;
use super::core::{Borrowed, CancelReason, Core, LeaseControl};
use super::pg::PgConnector;
use super::stats::PoolStats;
use crate::postgres::plans::Plan;
use crate::postgres::reset::{self, ResetFailed};
use crate::postgres::FlightMark;

pub struct Lease<C: Connector = PgConnector> {
    id: u64,
    /// `Some` until the lease ends.
    conn: Option<C::Conn>,
    control: Arc<LeaseControl<C>>,
    core: Arc<Core<C>>,
    stats: Arc<PoolStats>,
    acquired_at: Instant,
    pool_name: Arc<str>,
    /// Held by a session, whose state is the caller's: only a reset makes
    /// the connection clean again.
    session: AtomicBool,
}

/// What another task needs to stop the work running on a lease: a cancel
/// request for the server and the fate that keeps the connection out of
/// the pool afterwards (a late cancel must never hit the next borrower).
pub struct LeaseCanceller<C: Connector = PgConnector>(Arc<LeaseControl<C>>);

impl<C: Connector> Clone for LeaseCanceller<C> {
    fn clone(&self) -> Self {
        LeaseCanceller(Arc::clone(&self.0))
    }
}

impl<C: Connector> LeaseCanceller<C> {
    /// Marks the connection for closing and asks the server to cancel
    /// whatever it runs. Returns whether the cancel request was delivered.
    pub async fn cancel(&self, reason: CancelReason) -> bool {
        self.0.cancel(reason).await
    }

    /// The caller gives up: nothing that takes effect is sent from now on,
    /// the connection is marked at once, and the cancel request goes out
    /// from a task of its own, so the caller answers without waiting for
    /// it. Returns whether the statement (or COMMIT) had already been sent
    /// and so may have taken effect.
    pub fn cancel_in_background(&self, reason: CancelReason) -> bool {
        let may_have_run = self.0.stop();
        self.0.mark_cancelled(reason);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let control = Arc::clone(&self.0);
            runtime.spawn(async move {
                control.cancel(reason).await;
            });
        }
        may_have_run
    }
}

impl<C: Connector> Lease<C> {
    pub(crate) fn new(
        borrowed: Borrowed<C>,
        core: Arc<Core<C>>,
        stats: Arc<PoolStats>,
        pool_name: Arc<str>,
    ) -> Lease<C> {
        Lease {
            id: borrowed.id,
            conn: Some(borrowed.conn),
            control: borrowed.control,
            core,
            stats,
            acquired_at: Instant::now(),
            pool_name,
            session: AtomicBool::new(false),
        }
    }

    fn conn(&self) -> &C::Conn {
        // Only `Drop` takes the connection out.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("a live lease holds its connection"))
    }

    pub fn canceller(&self) -> LeaseCanceller<C> {
        LeaseCanceller(Arc::clone(&self.control))
    }

    /// Whether the connection may still go back to the pool.
    pub fn reusable(&self) -> bool {
        use super::connector::Connection;
        self.control.reusable() && !self.conn().is_broken()
    }

    /// Whether the connection is known to be dead.
    pub fn connection_broken(&self) -> bool {
        use super::connector::Connection;
        self.conn().is_broken()
    }

    /// Close the connection when the lease ends instead of reusing it.
    pub fn discard(&self) {
        self.control.discard();
    }

    /// Resolves once poolplane cancels this lease (a deadline, a drain, a
    /// result limit): work waiting on anything but the server must stop.
    pub async fn cancelled(&self) {
        self.control.cancelled().await;
    }

    /// Why poolplane cancelled this lease's statement, if it did.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.control.cancel_reason()
    }

    /// The statement that takes effect (Execute's statement, a batch's
    /// COMMIT) is about to be sent; false if the caller gave up first,
    /// and then it must not be.
    pub fn begin_effect(&self) -> bool {
        self.control.begin_effect()
    }

    /// Whether the statement that takes effect has been sent.
    pub fn effect_sent(&self) -> bool {
        self.control.effect_sent()
    }

    /// Says that what was sent since the last reset cannot have changed
    /// the session (only a Parse, which failed): no reset is needed.
    pub fn nothing_ran(&self) {
        if !self.session.load(Ordering::Acquire) {
            self.control.set_dirty(false);
        }
    }

    /// The lease serves a session: the caller may change anything, so the
    /// connection needs a reset before reuse whatever each statement did.
    pub fn pin_for_session(&self) {
        self.session.store(true, Ordering::Release);
        self.control.set_dirty(true);
    }

    /// A caller's statement is about to run: if the server ends the
    /// connection on request (`pg_terminate_backend`, the caller's own or
    /// an administrator's) before it is back in the pool, that is not a
    /// broken connection.
    pub fn statement_starts(&self) {
        self.core.statement_starts(self.id);
    }

    /// The pool this lease came from.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// Counts an error of the caller's own SQL (not a pool failure).
    pub fn sql_error(&self, sqlstate: &str) {
        self.stats.sql_error(sqlstate);
    }

    /// Records how long a statement on this lease took.
    pub fn statement_ran(&self, duration: Duration) {
        self.stats.statement_ran(duration);
    }
}

impl Lease<PgConnector> {
    /// The connection's client. Whoever uses it may change the session, so
    /// from here on the connection goes back to the pool only after a
    /// reset proved it clean (or after [`Lease::nothing_ran`]).
    pub fn client(&self) -> &Client {
        self.control.set_dirty(true);
        self.conn().client()
    }

    /// The session reset as one request, to be sent right behind the
    /// caller's statement (same flight); its reply goes to [`Lease::finish_reset`].
    pub fn reset_request(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>> + '_
    {
        let conn = self.conn();
        conn.client().simple_query(conn.reset_kind().sql())
    }

    /// Starts watching for rows too large to take (over
    /// `server.max_result_bytes`) in the result of the statement about to
    /// be sent; the mark goes to [`Lease::rows_before_drop`].
    pub fn begin_result(&self) -> u64 {
        self.conn().message_limit().begin_result()
    }

    /// How many rows of the result begun at `mark` came before one too
    /// large to take, if PostgreSQL sent one: the rows after it are not
    /// the result.
    pub fn rows_before_drop(&self, mark: u64) -> Option<u64> {
        self.conn().message_limit().rows_before_drop(mark)
    }

    /// The plan remembered for `sql` on this connection, if any.
    pub(crate) fn plan(&self, sql: &str) -> Option<Arc<Plan>> {
        self.conn().plans().get(sql)
    }

    /// Remembers `plan` for `sql` on this connection.
    pub(crate) fn remember_plan(&self, sql: &str, plan: Arc<Plan>) {
        self.conn().plans().insert(sql, plan);
    }

    /// Forgets the plan of `sql` on this connection.
    pub(crate) fn forget_plan(&self, sql: &str) {
        self.conn().plans().forget(sql);
    }

    /// Marks where the connection's traffic stands before a request goes
    /// out; see [`Lease::sent_nothing_since`] and [`Lease::replies_since`].
    pub(crate) fn flight_mark(&self) -> FlightMark {
        self.conn().message_limit().flight_mark()
    }

    /// Whether not one byte went towards the server since `mark`.
    pub(crate) fn sent_nothing_since(&self, mark: FlightMark) -> bool {
        self.conn().message_limit().unsent_since(mark)
    }

    /// How many messages the server sent since `mark`.
    pub(crate) fn replies_since(&self, mark: FlightMark) -> u64 {
        self.conn().message_limit().replies_since(mark)
    }

    /// The fingerprint of the first row description the server sent
    /// since the last [`Lease::flight_mark`].
    pub(crate) fn description_since_mark(&self) -> Option<u64> {
        self.conn().message_limit().description_since_mark()
    }

    /// The number the next reply on this connection will have (see
    /// `MessageLimit::next_reply`): exact once every earlier reply was read.
    pub(crate) fn next_reply(&self) -> u64 {
        self.conn().message_limit().next_reply()
    }

    /// How many rows of reply `number` came before one too large to take.
    pub(crate) fn rows_before_drop_in(&self, number: u64) -> Option<u64> {
        self.conn().message_limit().rows_before_drop_in(number)
    }

    /// The fingerprint of reply `number`'s row description, once it came.
    pub(crate) fn description_of(&self, number: u64) -> Option<u64> {
        self.conn().message_limit().description_of(number)
    }

    /// The transaction status reply `number` ended with (waits for it).
    pub(crate) async fn status_of(
        &self,
        number: u64,
    ) -> Option<crate::postgres::TransactionStatus> {
        self.conn().message_limit().status_of(number).await
    }

    /// Where the session stands after the last request whose reply was
    /// read to its end, as PostgreSQL reported it.
    pub fn transaction_status(&self) -> crate::postgres::TransactionStatus {
        self.conn().message_limit().transaction_status()
    }

    /// The driver may have looked types up without our seeing which (a
    /// result described otherwise than planned): from now on the
    /// connection is reset as one whose driver keeps statements, and a
    /// session's connection is closed when it ends.
    pub(crate) fn driver_may_keep_statements(&self) {
        self.conn().assume_driver_statements();
    }

    /// Whether the driver keeps prepared statements of its own on this
    /// connection (which a caller's `DEALLOCATE` could have removed).
    pub fn driver_keeps_statements(&self) -> bool {
        self.conn().reset_kind().keep_driver_statements
    }

    /// Notes the types of a statement prepared on this lease's connection
    /// (they decide which reset it needs).
    pub fn prepared(&self, statement: &tokio_postgres::Statement) {
        let columns = statement.columns().iter().map(|column| column.type_());
        self.conn()
            .saw_types(statement.params().iter().chain(columns));
    }

    /// Reads a pipelined reset's reply, finishes the reset if the caller
    /// left a transaction open, and marks the connection clean; one that
    /// cannot be made clean is closed when the lease ends.
    pub async fn finish_reset(
        &self,
        reply: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
    ) {
        let conn = self.conn();
        let outcome = match reset::read_report(
            conn.reset_kind(),
            reply,
            conn.message_limit().transaction_status(),
        ) {
            Ok(report) => {
                if report != reset::ResetReport::Clean {
                    tracing::warn!(pool = %self.pool_name, ?report, "connection came back unclean; resetting it");
                }
                reset::finish(
                    conn.client(),
                    conn.message_limit(),
                    conn.reset_kind(),
                    report,
                )
                .await
            }
            Err(failed) => Err(failed),
        };
        self.settle_reset(outcome);
    }

    /// Resets the session now (one round trip).
    pub async fn reset(&self) {
        let conn = self.conn();
        let outcome = reset::reset(conn.client(), conn.message_limit(), conn.reset_kind())
            .await
            .map(|_| ());
        self.settle_reset(outcome);
    }

    fn settle_reset(&self, outcome: Result<(), ResetFailed>) {
        match outcome {
            Ok(()) => self.control.set_dirty(false),
            Err(failed) => {
                if self.reusable() {
                    tracing::warn!(pool = %self.pool_name, error = %failed, "closing a connection that could not be reset");
                }
                self.discard();
            }
        }
    }
}

impl<C: Connector> Drop for Lease<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        self.stats.released(self.acquired_at.elapsed());
        let Some(conn) = self.core.give_back(self.id, conn, &self.control) else {
            return;
        };
        // Used and not yet reset: reset it before anyone else gets it.
        let (core, id) = (Arc::clone(&self.core), self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { core.reset_then_put_back(id, conn).await });
            }
            Err(_) => core.close_unreset(id, conn),
        }
    }
}
