//! Session: one connection held for a caller's stream of statements, so
//! that transactions, `SET`, temporary tables and prepared statements work
//! as on a connection of its own.
//!
//! A session runs in one task that owns its lease. Statements are sent to
//! PostgreSQL as they arrive, without waiting for the answers before them
//! (`pipeline.rs`: up to `MAX_IN_FLIGHT`), and PostgreSQL runs them one
//! after another in arrival order; each is answered, in that order, with
//! its result or its error and the transaction status PostgreSQL reported
//! after it. A SQL error does not end the session. A statement seen for
//! the first time in the session waits until the statements before it are
//! answered, and is prepared first.
//!
//! However a session ends, its connection is rolled back and reset before
//! anyone else gets it, or closed:
//! - `close` (or the client ending its side): reset now, then `Closed`;
//! - its idle timeout, its idle-in-transaction timeout, its maximum
//!   duration, a KillSession, a shutdown: ended between statements, reset
//!   now, then the error saying why;
//! - its deadline, a kill or a vanished client while a statement runs: the
//!   statement is cancelled in PostgreSQL and the connection closed (the
//!   backend's exit rolls the transaction back);
//! - a drain: the pool stops serving; a session ends at its next moment
//!   outside a transaction, and one still in a transaction when the drain
//!   runs out of time is cancelled with the rest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::classify;
use super::error::{QueryError, SessionEnd};
use super::execute::{
    admit_params, admit_text, classify_for, count_sql_error, prepare, refused, run_prepared,
    Attempt, QueryResult, RestOfResult, Statement,
};
use super::pipeline::{self, InFlight, Landed, Numbering, SessionPlans, MAX_IN_FLIGHT};
use super::sessions::{Holder, Registered, Sessions};
use crate::pool::{CancelReason, Lease, ManagedPool, PoolError, SessionPermit, TransactionStatus};
use crate::postgres::plans::MAX_PLANNED_SQL;

/// How a session's transactions run, set once at open for all of them
/// (`SET SESSION CHARACTERISTICS`); a statement may still change it.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub isolation: Option<Isolation>,
    pub read_only: bool,
    pub deferrable: bool,
    /// Shorter than the pool's `session_idle_timeout_ms`, if wanted.
    pub idle_timeout: Option<Duration>,
    /// The session's `statement_timeout`, instead of the pool's.
    pub statement_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// What the caller sends after `open`.
#[derive(Debug)]
pub enum SessionInput {
    Statement(Statement),
    /// A request that could not be read (answered with this error, in its place).
    Invalid(QueryError),
    Close,
    /// The request stream broke (a reset, an undecodable message): the
    /// session ends with this error (if anyone is left to read it).
    Broken(QueryError),
}

/// What the caller receives, in order: `Opened`, one `Answer` per
/// statement, then `Closed` after a `close`, or an error that ends it.
#[derive(Debug)]
pub enum SessionOutput {
    Opened {
        id: u64,
    },
    Answer {
        /// The statement's place in the session, from 0.
        index: u64,
        result: Result<QueryResult, QueryError>,
        transaction: TransactionStatus,
    },
    Closed {
        /// A transaction was open and has been rolled back.
        rolled_back: bool,
    },
}

pub type SessionSender = mpsc::Sender<Result<SessionOutput, QueryError>>;

/// What a session's channel holds: answers are small, and the caller's
/// pace is the session's.
pub const SESSION_BUFFER: usize = 2;

/// Who opened the session and what surrounds it.
pub struct SessionContext {
    /// The stream's deadline: the whole session's.
    pub deadline: Option<Instant>,
    pub holder: Holder,
    pub sessions: Arc<Sessions>,
    /// Becomes true when the server shuts down.
    pub server_stopping: watch::Receiver<bool>,
}

/// Opens a session on `pool` and serves it until it ends; everything goes
/// to `out`. Returns when the connection has been reset or given up.
pub async fn run_session(
    pool: Arc<ManagedPool>,
    options: SessionOptions,
    inputs: impl Stream<Item = SessionInput> + Unpin,
    out: SessionSender,
    context: SessionContext,
) {
    // A caller that leaves while the open waits (a paused pool) gives up
    // its place in the queue at once.
    let opened = tokio::select! {
        opened = open(&pool, &options, context.deadline) => opened,
        () = out.closed() => return,
    };
    let (lease, permit) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = out.send(Err(error)).await;
            return;
        }
    };
    let limits = pool.config().sessions;
    let registered = context
        .sessions
        .register(&pool.name(), context.holder, limits.leak_threshold);
    let idle_timeout = options
        .idle_timeout
        .map_or(limits.idle_timeout, |asked| asked.min(limits.idle_timeout));
    // Every reply before this one has been read (the open waited for its own).
    let numbering = Numbering::Next(lease.next_reply());
    let mut session = Running {
        lease: Arc::new(lease),
        plans: SessionPlans::default(),
        numbering,
        changed_catalog: false,
        max_end: limits.max_duration.map(|max| Instant::now() + max),
        idle_in_transaction_timeout: limits.idle_in_transaction_timeout,
        idle_timeout,
        deadline: context.deadline,
        server_stopping: context.server_stopping,
        permit,
        registered,
        pool,
        out,
        next_index: 0,
    };
    let opened = SessionOutput::Opened {
        id: session.registered.id(),
    };
    let ending = match session.deliver(Ok(opened)).await {
        Ok(()) => session.serve(inputs).await,
        Err(ending) => ending,
    };
    session.finish(ending).await;
}

/// Borrows a connection for a session and sets it up; a stale connection
/// is replaced (nothing of the caller's ran on it).
async fn open(
    pool: &ManagedPool,
    options: &SessionOptions,
    deadline: Option<Instant>,
) -> Result<(Lease, SessionPermit), QueryError> {
    // Refused at once when sessions hold all they may; the place itself is
    // taken with the connection, so callers queued (a paused pool) hold none.
    pool.session_room()?;
    let setup = setup_sql(options);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let acquire = pool.acquire().instrument(super::trace::acquisition(pool));
        let lease = match within(deadline, acquire).await {
            Some(acquired) => acquired?,
            None => {
                return Err(QueryError::DeadlineExceeded {
                    may_have_run: false,
                })
            }
        };
        // Nothing ran on it yet: refused, it goes back as it came.
        let permit = pool.session_permit()?;
        lease.pin_for_session();
        // Also proves the connection alive before the caller relies on it.
        match within(deadline, lease.client().simple_query(&setup)).await {
            Some(Ok(_)) => return Ok((lease, permit)),
            Some(Err(err)) if err.as_db_error().is_some() => {
                return Err(QueryError::from_postgres(&err))
            }
            Some(Err(err)) => {
                lease.discard();
                if attempts > super::execute::STALE_RETRIES {
                    return Err(QueryError::from_postgres(&err));
                }
            }
            None => {
                lease.discard();
                return Err(QueryError::DeadlineExceeded {
                    may_have_run: false,
                });
            }
        }
    }
}

/// `work` unless `deadline` passes first (`None` then).
async fn within<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

/// The settings a session asked for, as one message ("" when none: an
/// empty query, which still proves the connection alive).
fn setup_sql(options: &SessionOptions) -> String {
    let mut characteristics = Vec::new();
    if let Some(isolation) = options.isolation {
        characteristics.push(match isolation {
            Isolation::ReadCommitted => "ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "ISOLATION LEVEL SERIALIZABLE",
        });
    }
    if options.read_only {
        characteristics.push("READ ONLY");
    }
    if options.deferrable {
        characteristics.push("DEFERRABLE");
    }
    let mut sql = String::new();
    if !characteristics.is_empty() {
        sql.push_str("SET SESSION CHARACTERISTICS AS TRANSACTION ");
        sql.push_str(&characteristics.join(", "));
        sql.push(';');
    }
    if let Some(timeout) = options.statement_timeout {
        sql.push_str(&format!("SET statement_timeout = {};", timeout.as_millis()));
    }
    sql
}

/// How serving a session stopped.
enum Ending {
    /// The caller closed it (or ended its side of the stream).
    Closed,
    /// It ended for this reason, which the caller is told.
    Error(QueryError),
    /// The caller is gone: nobody to tell.
    Gone,
}

struct Running {
    /// Shared with the statements in flight, which end before the session.
    lease: Arc<Lease>,
    plans: SessionPlans,
    numbering: Numbering,
    /// A statement that changes the catalog was sent.
    changed_catalog: bool,
    permit: SessionPermit,
    registered: Registered,
    pool: Arc<ManagedPool>,
    out: SessionSender,
    deadline: Option<Instant>,
    max_end: Option<Instant>,
    idle_timeout: Duration,
    idle_in_transaction_timeout: Option<Duration>,
    server_stopping: watch::Receiver<bool>,
    next_index: u64,
}

/// Sleeps until `at`, or for ever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn server_stops(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        // The server is gone without saying so: nothing will end us but this.
        std::future::pending::<()>().await;
    }
}

impl Running {
    async fn serve(&mut self, mut inputs: impl Stream<Item = SessionInput> + Unpin) -> Ending {
        let mut flight: VecDeque<Queued> = VecDeque::new();
        // Set when the caller closed its side: the flight lands first.
        let mut closing: Option<Ending> = None;
        // A statement that must wait for an empty flight (to be prepared).
        let mut waiting: Option<Statement> = None;
        loop {
            if let Some(ending) = self.answer_ready(&mut flight).await {
                return ending;
            }
            if flight.is_empty() {
                if let Some(statement) = waiting.take() {
                    if let Err(ending) = self.run_alone(statement, &mut flight).await {
                        return ending;
                    }
                    continue;
                }
                if let Some(ending) = closing.take() {
                    return ending;
                }
                let input = match self.next_input(&mut inputs).await {
                    Ok(input) => input,
                    Err(ending) => return ending,
                };
                self.accept(input, &mut flight, &mut closing, &mut waiting);
                continue;
            }
            let status = self.lease.transaction_status();
            let taking = closing.is_none() && waiting.is_none() && flight.len() < MAX_IN_FLIGHT;
            let Some(Queued::Sent { landing, .. }) = flight.front_mut() else {
                continue;
            };
            let lease = Arc::clone(&self.lease);
            tokio::select! {
                biased;
                () = lease.cancelled() => return self.stopped_by_pool(),
                () = self.registered.killed() => {
                    self.cancel();
                    return self.ended(SessionEnd::Killed, status);
                }
                () = until(self.deadline) => {
                    let may_have_run = self.cancel();
                    return Ending::Error(QueryError::DeadlineExceeded { may_have_run });
                }
                () = until(self.max_end) => {
                    self.cancel();
                    return self.ended(SessionEnd::MaxDuration, status);
                }
                () = self.out.closed() => {
                    self.cancel();
                    return Ending::Gone;
                }
                landed = landing => {
                    let Some(Queued::Sent { started, .. }) = flight.pop_front() else {
                        continue;
                    };
                    let last = !flight.iter().any(|queued| matches!(queued, Queued::Sent { .. }));
                    if let Err(ending) = self.land(landed, started, last).await {
                        return ending;
                    }
                }
                // A broken request stream ends the session once the
                // statements before it are answered, as they would have been
                // one at a time.
                input = inputs.next(), if taking => {
                    self.accept(input, &mut flight, &mut closing, &mut waiting);
                }
            }
        }
    }

    /// Waits, with nothing in flight, for the caller's next request, unless
    /// the session must end first.
    async fn next_input(
        &mut self,
        inputs: &mut (impl Stream<Item = SessionInput> + Unpin),
    ) -> Result<Option<SessionInput>, Ending> {
        let status = self.lease.transaction_status();
        let (quiet, quiet_end) = self.quiet_limit(status);
        let outside_transaction = status == TransactionStatus::Idle;
        tokio::select! {
            biased;
            () = self.lease.cancelled() => Err(self.stopped_by_pool()),
            () = self.registered.killed() => Err(self.ended(SessionEnd::Killed, status)),
            () = until(self.deadline) => Err(Ending::Error(QueryError::DeadlineExceeded { may_have_run: false })),
            () = until(self.max_end) => Err(self.ended(SessionEnd::MaxDuration, status)),
            () = tokio::time::sleep(quiet) => Err(self.ended(quiet_end, status)),
            () = self.pool.stopped_serving(), if outside_transaction => {
                Err(Ending::Error(PoolError::Draining(self.pool.name()).into()))
            }
            () = server_stops(&mut self.server_stopping), if outside_transaction => {
                Err(self.ended(SessionEnd::ServerStopping, status))
            }
            () = self.out.closed() => Err(Ending::Gone),
            input = inputs.next() => Ok(input),
        }
    }

    /// Takes one request: answered at once (refused, unreadable), sent
    /// into the flight, or held until the flight is empty.
    fn accept(
        &mut self,
        input: Option<SessionInput>,
        flight: &mut VecDeque<Queued>,
        closing: &mut Option<Ending>,
        waiting: &mut Option<Statement>,
    ) {
        let statement = match input {
            None | Some(SessionInput::Close) => {
                *closing = Some(Ending::Closed);
                return;
            }
            Some(SessionInput::Broken(error)) => {
                *closing = Some(Ending::Error(error));
                return;
            }
            Some(SessionInput::Invalid(error)) => {
                let answered = self.answered(Err(error), flight);
                flight.push_back(answered);
                return;
            }
            Some(SessionInput::Statement(statement)) => statement,
        };
        if let Err(error) = self
            .admit(&statement.sql)
            .and_then(|()| admit_params("params", statement.params.len()))
        {
            let answered = self.answered(Err(error), flight);
            flight.push_back(answered);
            return;
        }
        let (ready, number) = match (
            self.plans
                .get(&statement.sql, self.pool.catalog_generation()),
            self.numbering,
        ) {
            (Some(plan), Numbering::Next(number)) => {
                (pipeline::Ready::new(statement, plan), number)
            }
            (_, _) => {
                *waiting = Some(statement);
                return;
            }
        };
        match ready {
            Ok(ready) => {
                let sent = self.send(ready, number);
                flight.push_back(sent);
            }
            // What a remembered plan refuses, a fresh prepare decides.
            Err(unready) => {
                self.plans.forget(&unready.statement.sql);
                *waiting = Some(unready.statement);
            }
        }
    }

    /// Whether the session may run `sql`; a statement that changes how
    /// names resolve sets the session's plans aside, and one that changes
    /// the catalog the pool's too (now, and when the session ends: its
    /// transaction commits by then).
    fn admit(&mut self, sql: &str) -> Result<(), QueryError> {
        let changes_catalog = match self.pool.admitted(sql) {
            Some(changes_catalog) => changes_catalog,
            None => self.classify(sql)?,
        };
        if changes_catalog {
            self.plans.forget_all();
            self.pool.catalog_changed();
            self.changed_catalog = true;
        }
        Ok(())
    }

    /// Classifies a text not admitted before: `Ok(true)` if it changes
    /// the catalog.
    fn classify(&mut self, sql: &str) -> Result<bool, QueryError> {
        admit_text(sql)?;
        match classify_for(&self.pool, sql) {
            Ok(()) => {
                let changes_catalog = classify::changes_catalog(sql);
                self.pool.admit(sql, changes_catalog);
                Ok(changes_catalog)
            }
            Err(classify::Refusal::NeedsSession(kind @ "PREPARE TRANSACTION")) => {
                Err(QueryError::OutlivesSession { kind })
            }
            Err(classify::Refusal::NeedsSession(kind)) => {
                if !classify::is_transaction_control(kind) {
                    self.plans.forget_all();
                }
                Ok(classify::changes_catalog(sql))
            }
            Err(refusal) => Err(refused(refusal)),
        }
    }

    /// An answer that needs nothing run, in its place after the flight.
    fn answered(
        &self,
        result: Result<QueryResult, QueryError>,
        flight: &VecDeque<Queued>,
    ) -> Queued {
        let after = flight.iter().rev().find_map(|queued| match queued {
            Queued::Sent { number, .. } => Some(*number),
            Queued::Answered { after, .. } => *after,
        });
        Queued::Answered { result, after }
    }

    /// Sends a statement into the flight (its first poll sends it); its
    /// reply will be number `number`.
    fn send(&mut self, ready: pipeline::Ready, number: u64) -> Queued {
        self.numbering = Numbering::Next(number + 1);
        self.registered.statement_starts(&ready.statement.sql);
        self.lease.statement_starts();
        let span =
            super::trace::statement(&self.pool, &ready.statement.sql, ready.statement.trace_text);
        let mut landing = pipeline::fly(Arc::clone(&self.lease), ready, number, span);
        // The first poll puts the request on the connection, in order.
        let waker = futures::task::noop_waker();
        let polled = landing
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        let landing: InFlight = match polled {
            std::task::Poll::Ready(landed) => Box::pin(std::future::ready(landed)),
            std::task::Poll::Pending => landing,
        };
        Queued::Sent {
            landing,
            number,
            started: std::time::Instant::now(),
        }
    }

    /// Delivers the answers at the front that need nothing more.
    async fn answer_ready(&mut self, flight: &mut VecDeque<Queued>) -> Option<Ending> {
        while let Some(Queued::Answered { .. }) = flight.front() {
            let Some(Queued::Answered { result, after }) = flight.pop_front() else {
                break;
            };
            let transaction = match after {
                Some(number) => self
                    .lease
                    .status_of(number)
                    .await
                    .unwrap_or_else(|| self.lease.transaction_status()),
                None => self.lease.transaction_status(),
            };
            if let Err(ending) = self.answer(result, transaction).await {
                return Some(ending);
            }
        }
        None
    }

    /// A statement in flight came back: account for it and answer it.
    /// `last`: nothing else is in flight (the session is idle from now).
    async fn land(
        &mut self,
        landed: Landed,
        started: std::time::Instant,
        last: bool,
    ) -> Result<(), Ending> {
        let Landed {
            result,
            transaction,
            described_otherwise,
        } = landed;
        self.lease.statement_ran(started.elapsed());
        count_sql_error(&self.lease, &result);
        self.connection_intact(result.as_ref().err())?;
        if described_otherwise {
            // The driver may have looked types up on the connection, as
            // prepared statements of its own a `DISCARD ALL` would remove.
            self.lease.driver_may_keep_statements();
            self.plans.forget_all();
            self.numbering = Numbering::Unknown;
        }
        if last {
            self.registered.statement_ends(transaction);
        }
        self.answer(result, transaction).await
    }

    /// Ends the session if its connection broke under a statement (whose
    /// error, if any, is `error`).
    fn connection_intact(&self, error: Option<&QueryError>) -> Result<(), Ending> {
        if self.lease.reusable() {
            return Ok(());
        }
        let error = match error {
            Some(QueryError::ConnectionLost {
                error,
                may_have_run,
            }) => QueryError::ConnectionLost {
                error: error.clone(),
                may_have_run: *may_have_run,
            },
            _ => QueryError::ConnectionLost {
                error: "the connection broke".into(),
                may_have_run: true,
            },
        };
        Err(Ending::Error(error))
    }

    async fn answer(
        &mut self,
        result: Result<QueryResult, QueryError>,
        transaction: TransactionStatus,
    ) -> Result<(), Ending> {
        let index = self.next_index;
        self.next_index += 1;
        self.deliver(Ok(SessionOutput::Answer {
            index,
            result,
            transaction,
        }))
        .await
    }

    /// Runs a statement with nothing in flight: prepares it first (one
    /// round trip) and sends it as the flight's only statement; without
    /// room for another plan, or for a text too long to keep, runs it the
    /// plain way.
    async fn run_alone(
        &mut self,
        statement: Statement,
        flight: &mut VecDeque<Queued>,
    ) -> Result<(), Ending> {
        if let Numbering::Unknown = self.numbering {
            // Whatever went out unnumbered has been answered after this.
            let _ = self.lease.client().simple_query("").await;
            self.connection_intact(None)?;
            self.numbering = Numbering::Next(self.lease.next_reply());
        }
        let statement = match (
            self.plans
                .get(&statement.sql, self.pool.catalog_generation()),
            self.numbering,
        ) {
            (Some(plan), Numbering::Next(number)) => match pipeline::Ready::new(statement, plan) {
                Ok(ready) => {
                    let sent = self.send(ready, number);
                    flight.push_back(sent);
                    return Ok(());
                }
                Err(unready) => unready.statement,
            },
            _ => statement,
        };
        if !self.plans.has_room() || statement.sql.len() > MAX_PLANNED_SQL {
            let status = self.lease.transaction_status();
            let (result, transaction) = self.run(statement, status).await?;
            self.numbering = Numbering::Unknown;
            return self.answer(result, transaction).await;
        }
        // The prepare's reply is the next; the statement's follows it and
        // whatever the driver looked up meanwhile (awaited within).
        let prepare_number = self.lease.next_reply();
        let lease = Arc::clone(&self.lease);
        let generation = self.pool.catalog_generation();
        let plans = &mut self.plans;
        let prepare = async {
            let prepared = plans.prepare(&lease, &statement.sql, generation).await;
            // The driver answers a prepare before its ReadyForQuery.
            lease.status_of(prepare_number).await;
            prepared
        };
        let prepared = tokio::select! {
            biased;
            prepared = prepare => prepared,
            () = lease.cancelled() => return Err(self.stopped_by_pool()),
            () = self.registered.killed() => {
                self.cancel();
                return Err(self.ended(SessionEnd::Killed, lease.transaction_status()));
            }
            () = until(self.deadline) => {
                self.cancel();
                return Err(Ending::Error(QueryError::DeadlineExceeded { may_have_run: false }));
            }
            () = self.out.closed() => {
                self.cancel();
                return Err(Ending::Gone);
            }
        };
        self.connection_intact(prepared.as_ref().err())?;
        let number = self.lease.next_reply();
        self.numbering = Numbering::Next(number);
        // An answer without a run reports the status after the prepare.
        let unrun = |result| Queued::Answered {
            result,
            after: Some(prepare_number),
        };
        let queued = match prepared {
            Ok(plan) => match pipeline::Ready::new(statement, plan) {
                Ok(ready) => self.send(ready, number),
                Err(unready) => unrun(Err(unready.error)),
            },
            Err(error) => {
                let failed = Err(error);
                count_sql_error(&self.lease, &failed);
                unrun(failed)
            }
        };
        flight.push_back(queued);
        Ok(())
    }

    /// How long the session may stay quiet now, and what ends it then.
    fn quiet_limit(&self, status: TransactionStatus) -> (Duration, SessionEnd) {
        match self.idle_in_transaction_timeout {
            Some(limit) if status != TransactionStatus::Idle && limit < self.idle_timeout => {
                (limit, SessionEnd::IdleInTransactionTimeout)
            }
            _ => (self.idle_timeout, SessionEnd::IdleTimeout),
        }
    }

    fn ended(&self, end: SessionEnd, status: TransactionStatus) -> Ending {
        Ending::Error(QueryError::SessionEnded {
            end,
            rolled_back: status != TransactionStatus::Idle,
        })
    }

    /// The pool cancelled this session's lease (a drain or a pause, out
    /// of time or forced).
    fn stopped_by_pool(&self) -> Ending {
        if *self.server_stopping.borrow() {
            // The shutdown's drain ran out of time.
            return self.ended(SessionEnd::ServerStopping, self.lease.transaction_status());
        }
        let error = match self.lease.cancel_reason() {
            Some(CancelReason::Pause) => PoolError::Paused(self.pool.name()),
            _ => PoolError::Draining(self.pool.name()),
        };
        Ending::Error(error.into())
    }

    /// Runs one statement, unless the session must end meanwhile: then the
    /// statement is cancelled in PostgreSQL (its connection closed) and the
    /// ending is returned.
    async fn run(
        &mut self,
        statement: Statement,
        before: TransactionStatus,
    ) -> Result<(Result<QueryResult, QueryError>, TransactionStatus), Ending> {
        self.registered.statement_starts(&statement.sql);
        let started = std::time::Instant::now();
        let lease = &self.lease;
        let span = super::trace::statement(&self.pool, &statement.sql, statement.trace_text);
        let traced = span.clone();
        let running = async move {
            let result = run_statement(lease, &statement).await;
            if let Err(error) = &result {
                super::trace::record_error(&span, error);
            }
            result
        };
        let result = tokio::select! {
            biased;
            result = running.instrument(traced) => result,
            () = lease.cancelled() => return Err(self.stopped_by_pool()),
            () = self.registered.killed() => {
                self.cancel();
                return Err(self.ended(SessionEnd::Killed, before));
            }
            () = until(self.deadline) => {
                let may_have_run = self.cancel();
                return Err(Ending::Error(QueryError::DeadlineExceeded { may_have_run }));
            }
            () = until(self.max_end) => {
                self.cancel();
                return Err(self.ended(SessionEnd::MaxDuration, before));
            }
            () = self.out.closed() => {
                self.cancel();
                return Err(Ending::Gone);
            }
        };
        self.lease.statement_ran(started.elapsed());
        count_sql_error(&self.lease, &result);
        if !self.lease.reusable() {
            // The connection broke under the statement: the session is over.
            let error = match result {
                Err(error @ QueryError::ConnectionLost { .. }) => error,
                _ => QueryError::ConnectionLost {
                    error: "the connection broke".into(),
                    may_have_run: true,
                },
            };
            return Err(Ending::Error(error));
        }
        if result.is_err() {
            // The driver reports an error before the server's
            // ReadyForQuery; an empty query's reply comes after it.
            let _ = self.lease.client().simple_query("").await;
        }
        let status = self.lease.transaction_status();
        self.registered.statement_ends(status);
        Ok((result, status))
    }

    /// Cancels the running statement in PostgreSQL; its connection will be
    /// closed. Returns whether it may have taken effect.
    fn cancel(&self) -> bool {
        self.lease
            .canceller()
            .cancel_in_background(CancelReason::Deadline)
    }

    /// Sends one part, unless the session must end first.
    async fn deliver(&mut self, part: Result<SessionOutput, QueryError>) -> Result<(), Ending> {
        let status = self.lease.transaction_status();
        tokio::select! {
            biased;
            sent = self.out.send(part) => sent.map_err(|_| Ending::Gone),
            () = self.lease.cancelled() => Err(self.stopped_by_pool()),
            () = self.registered.killed() => Err(self.ended(SessionEnd::Killed, status)),
            () = until(self.deadline) => Err(Ending::Error(QueryError::DeadlineExceeded { may_have_run: false })),
            () = until(self.max_end) => Err(self.ended(SessionEnd::MaxDuration, status)),
        }
    }

    /// Rolls back and resets the connection now (or gives it up), then
    /// tells the caller how the session ended.
    async fn finish(self, ending: Ending) {
        // Closing the session's statements goes out before the reset, so
        // their replies are read before the connection goes back.
        drop(self.plans);
        if self.changed_catalog {
            self.pool.catalog_changed();
        }
        let rolled_back = self.lease.transaction_status() != TransactionStatus::Idle;
        if self.lease.reusable() {
            if self.lease.driver_keeps_statements() {
                // A `DEALLOCATE` in the session may have removed the
                // driver's own statements: a fresh connection is safer.
                self.lease.discard();
            } else {
                self.lease.reset().await;
            }
        }
        let last = match ending {
            Ending::Gone => return,
            Ending::Closed => Ok(SessionOutput::Closed { rolled_back }),
            Ending::Error(error) => Err(error),
        };
        // Given back before the caller hears: its next session may get it.
        drop(self.lease);
        drop(self.permit);
        drop(self.registered);
        let _ = self.out.send(last).await;
    }
}

/// A statement's place in the order of answers.
enum Queued {
    /// Sent; lands with its result. `number` is its reply's.
    Sent {
        landing: InFlight,
        number: u64,
        started: std::time::Instant,
    },
    /// Answered without running; the transaction status to report is the
    /// one after reply `after` (the last statement sent before it), or
    /// the connection's now.
    Answered {
        result: Result<QueryResult, QueryError>,
        after: Option<u64>,
    },
}

/// Runs one admitted statement on the session's connection, the plain
/// way (prepare, then run), when the session keeps no more plans.
async fn run_statement(lease: &Lease, statement: &Statement) -> Result<QueryResult, QueryError> {
    admit_params("params", statement.params.len())?;
    let prepared = match prepare(lease, &statement.sql).await {
        Ok(prepared) => prepared,
        Err(Attempt::Done(result)) => return result.and(Err(lost())),
        Err(Attempt::StaleConnection(error)) => return Err(error),
    };
    run_prepared(lease, statement, &prepared, RestOfResult::Skip).await
}

fn lost() -> QueryError {
    QueryError::ConnectionLost {
        error: "prepare reported neither a statement nor an error".into(),
        may_have_run: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_sets_only_what_was_asked() {
        assert_eq!(setup_sql(&SessionOptions::default()), "");
        let all = SessionOptions {
            isolation: Some(Isolation::Serializable),
            read_only: true,
            deferrable: true,
            idle_timeout: None,
            statement_timeout: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            setup_sql(&all),
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE;SET statement_timeout = 1500;"
        );
    }
}
