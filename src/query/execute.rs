//! Execute and ExecuteBatch: borrow a connection, run one statement (once,
//! or once per parameter set inside a transaction), and give the
//! connection back clean.
//!
//! The statement runs inside the caller's own future (no task of its own):
//! a repeated statement goes out in one flight (`plan.rs`), with the
//! session reset right behind it. The caller waits only until its
//! deadline; then it marks the lease cancelled, sends PostgreSQL a cancel
//! request from a task of its own, and returns at once, dropping the
//! statement's future: the marked connection is closed, never reused (a
//! late cancel must not hit the next borrower). If the caller goes away
//! (client disconnect), a drop guard does the same before the statement's
//! future is dropped.

use std::future::Future;
use std::sync::Arc;

use futures::{pin_mut, FutureExt, TryStreamExt};
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tracing::Instrument;

use super::classify::{self, Refusal};
use super::error::QueryError;
use super::plan;
use super::trace;
use super::value::{encode_param, is_supported, EncodedParam, SqlValue};
use crate::pool::{CancelReason, Lease, LeaseCanceller, ManagedPool, PoolError};

/// One Execute request, in domain terms.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<SqlValue>,
    /// Most rows to return (already checked against the server's limit).
    pub max_rows: u32,
    /// Most bytes of values to return (`SqlValue::response_bytes`).
    pub max_bytes: u64,
    pub allow_truncation: bool,
    /// Put the SQL text on the statement's trace span (`server.trace_sql_text`).
    pub trace_text: bool,
}

/// What a statement's span says of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Traced<'a> {
    pub(super) sql: &'a str,
    pub(super) with_text: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<SqlValue>>,
    pub rows_affected: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub rows_affected: Vec<u64>,
}

/// Runs one statement in autocommit.
pub async fn execute(
    pool: &ManagedPool,
    statement: Statement,
    deadline: Option<Instant>,
) -> Result<QueryResult, QueryError> {
    let changes_catalog = admit(pool, &statement.sql)?;
    admit_params("params", statement.params.len())?;
    let statement = Arc::new(statement);
    let generation = pool.catalog_generation();
    let traced = Traced {
        sql: &statement.sql,
        with_text: statement.trace_text,
    };
    around_catalog_change(
        pool,
        changes_catalog,
        with_lease(pool, deadline, traced, |lease| {
            run_statement(lease, Arc::clone(&statement), generation)
        }),
    )
    .await
}

/// Runs one statement once per parameter set, in one transaction.
/// `trace_text`: put the SQL text on the trace span.
pub async fn execute_batch(
    pool: &ManagedPool,
    sql: String,
    parameter_sets: Vec<Vec<SqlValue>>,
    deadline: Option<Instant>,
    trace_text: bool,
) -> Result<BatchResult, QueryError> {
    let changes_catalog = admit(pool, &sql)?;
    for (i, set) in parameter_sets.iter().enumerate() {
        admit_params(&format!("parameter_sets[{i}].params"), set.len())?;
    }
    let sql = Arc::new(sql);
    let parameter_sets = Arc::new(parameter_sets);
    let traced = Traced {
        sql: &sql,
        with_text: trace_text,
    };
    around_catalog_change(
        pool,
        changes_catalog,
        with_lease(pool, deadline, traced, |lease| {
            run_batch(lease, Arc::clone(&sql), Arc::clone(&parameter_sets))
        }),
    )
    .await
}

/// Most parameters one statement can have: the protocol counts them in 16 bits.
const MAX_PARAMS: usize = 65_535;

/// Refuses what must not run on a shared connection in autocommit, and
/// what PostgreSQL or the driver would refuse before running anything (the
/// caller's mistake, not a broken connection). A text `pool` admitted
/// before is not parsed again. `Ok(true)`: it changes the catalog.
pub(super) fn admit(pool: &ManagedPool, sql: &str) -> Result<bool, QueryError> {
    if let Some(changes_catalog) = pool.admitted(sql) {
        return Ok(changes_catalog);
    }
    admit_text(sql)?;
    match classify_for(pool, sql) {
        Ok(()) => {
            let changes_catalog = classify::changes_catalog(sql);
            pool.admit(sql, changes_catalog);
            Ok(changes_catalog)
        }
        Err(refusal) => Err(refused(refusal)),
    }
}

/// [`classify::check`] for a statement on `pool`.
pub(super) fn classify_for(pool: &ManagedPool, sql: &str) -> Result<(), Refusal> {
    let config = pool.config();
    classify::check(
        sql,
        classify::PoolLogin {
            user: &config.user,
            database: &config.database,
        },
    )
}

/// Runs `call`; if the statement changes the catalog, the pool's plans
/// are set aside before and after it (before: nothing prepared meanwhile
/// is trusted; after: nothing prepared before it ran).
pub(super) async fn around_catalog_change<T>(
    pool: &ManagedPool,
    changes_catalog: bool,
    call: impl Future<Output = T>,
) -> T {
    if changes_catalog {
        pool.catalog_changed();
    }
    let result = call.await;
    if changes_catalog {
        pool.catalog_changed();
    }
    result
}

/// The error for a statement `classify` refused.
pub(super) fn refused(refusal: Refusal) -> QueryError {
    match refusal {
        Refusal::NeedsSession(kind) => QueryError::NeedsSession { kind },
        Refusal::Copy => QueryError::CopyUnsupported,
        Refusal::ChangesPoolDefaults(kind) => QueryError::ChangesPoolDefaults { kind },
        Refusal::MultipleStatements(count) => QueryError::invalid(
            "sql",
            format!("holds {count} statements; send one statement per request"),
        ),
    }
}

/// Refuses SQL text PostgreSQL would refuse before parsing it.
pub(super) fn admit_text(sql: &str) -> Result<(), QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::invalid("sql", "must not be empty"));
    }
    if let Some(at) = sql.find('\0') {
        return Err(QueryError::invalid(
            "sql",
            format!("contains a NUL byte (at byte {at}), which PostgreSQL does not accept in a statement"),
        ));
    }
    Ok(())
}

pub(super) fn admit_params(field: &str, count: usize) -> Result<(), QueryError> {
    if count > MAX_PARAMS {
        return Err(QueryError::invalid(
            field,
            format!("{count} parameters; a statement takes at most {MAX_PARAMS}"),
        ));
    }
    Ok(())
}

/// Stale connections usually come in groups (a server restart, a mass
/// `pg_terminate_backend`); a few retries cover a group, and each costs
/// only a failed prepare.
pub(super) const STALE_RETRIES: usize = 3;

/// How one attempt on one connection ended.
pub(super) enum Attempt<T> {
    Done(Result<T, QueryError>),
    /// The connection turned out dead before the statement reached the
    /// server (it failed at prepare, which has no effects): another
    /// connection may try, invisibly to the caller.
    StaleConnection(QueryError),
}

/// Borrows a connection and runs `work` on it within `deadline`; another
/// connection is tried (up to `STALE_RETRIES` times) if one was stale: a
/// backend that ended while idle, before its driver noticed.
pub(super) async fn with_lease<T, F, Fut>(
    pool: &ManagedPool,
    deadline: Option<Instant>,
    traced: Traced<'_>,
    work: F,
) -> Result<T, QueryError>
where
    F: Fn(Lease) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut attempt = once(pool, deadline, traced, &work).await;
    for _ in 0..STALE_RETRIES {
        if !matches!(attempt, Attempt::StaleConnection(_)) {
            break;
        }
        attempt = once(pool, deadline, traced, &work).await;
    }
    match attempt {
        Attempt::Done(result) => result,
        Attempt::StaleConnection(error) => Err(error),
    }
}

/// One attempt on one connection, in a span for the acquisition and one
/// for the statement.
async fn once<T, F, Fut>(
    pool: &ManagedPool,
    deadline: Option<Instant>,
    traced: Traced<'_>,
    work: &F,
) -> Attempt<T>
where
    F: Fn(Lease) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let lease = match acquire(pool, deadline)
        .instrument(trace::acquisition(pool))
        .await
    {
        Ok(lease) => lease,
        Err(err) => return Attempt::Done(Err(err)),
    };
    let span = trace::statement(pool, traced.sql, traced.with_text);
    let attempt = run_on(pool, deadline, lease, work)
        .instrument(span.clone())
        .await;
    if let Attempt::Done(Err(error)) | Attempt::StaleConnection(error) = &attempt {
        trace::record_error(&span, error);
    }
    attempt
}

async fn acquire(pool: &ManagedPool, deadline: Option<Instant>) -> Result<Lease, QueryError> {
    let acquired = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, pool.acquire())
            .await
            .map_err(|_| QueryError::DeadlineExceeded {
                may_have_run: false,
            })?,
        None => pool.acquire().await,
    };
    Ok(acquired?)
}

/// Runs `work` on `lease` within `deadline`; cancels the statement in
/// PostgreSQL if the deadline passes or the caller goes away.
async fn run_on<T, F, Fut>(
    pool: &ManagedPool,
    deadline: Option<Instant>,
    lease: Lease,
    work: &F,
) -> Attempt<T>
where
    F: Fn(Lease) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let canceller = lease.canceller();
    // Declared before the guard, so dropped after it: should the caller
    // go away, the guard marks the lease cancelled before the statement's
    // future (which owns the lease) gives the connection back.
    let work = std::panic::AssertUnwindSafe(work(lease)).catch_unwind();
    pin_mut!(work);
    let mut guard = CancelOnDrop(Some(canceller.clone()));
    let finished = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, &mut work).await,
        None => Ok((&mut work).await),
    };
    guard.disarm();
    match finished {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(_panic)) => {
            tracing::error!(pool = %pool.name(), "a statement panicked");
            // Nobody knows how far it got.
            Attempt::Done(Err(QueryError::ConnectionLost {
                error: "the statement ended unexpectedly".into(),
                may_have_run: true,
            }))
        }
        Err(_elapsed) => {
            // Marked now, before the statement's future and its lease are
            // dropped; the cancel goes out from its own task: an
            // unreachable server must not hold the caller past its deadline.
            let may_have_run = canceller.cancel_in_background(CancelReason::Deadline);
            Attempt::Done(Err(QueryError::DeadlineExceeded { may_have_run }))
        }
    }
}

/// Prepares `sql`; a connection that died while idle shows up here first,
/// either as a closed connection or as the FATAL report the server queued
/// while ending it (e.g. 57P01 after `pg_terminate_backend`). Only such a
/// connection is stale and worth another try: any other failure is the
/// statement's own and is answered as it is.
pub(super) async fn prepare(
    lease: &Lease,
    sql: &str,
) -> Result<tokio_postgres::Statement, Attempt<()>> {
    let prepared = lease.client().prepare(sql).await;
    let err = match prepared {
        Ok(statement) => {
            lease.prepared(&statement);
            // From here the caller's statement runs: should the server end
            // the connection on request meanwhile, that is not the pool's
            // failure.
            lease.statement_starts();
            return Ok(statement);
        }
        Err(err) => err,
    };
    // A failed Parse created nothing: the session is as it was.
    lease.nothing_ran();
    let failed = match prepare_failure(&err, !lease.connection_broken()) {
        PrepareFailure::Stale => {
            lease.discard();
            return Err(Attempt::StaleConnection(QueryError::from_postgres(&err)));
        }
        PrepareFailure::Sql => Err(QueryError::from_postgres(&err)),
        PrepareFailure::Refused => Err(QueryError::invalid(
            "sql",
            format!(
                "refused before it was sent: {}",
                crate::postgres::error_chain(&err)
            ),
        )),
    };
    count_sql_error(lease, &failed);
    Err(Attempt::Done(failed))
}

/// An I/O error: the socket failed, whatever the driver has noticed yet.
fn failed_on_the_wire(err: &tokio_postgres::Error) -> bool {
    std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>())
}

/// How a prepare failed.
#[derive(Debug, PartialEq, Eq)]
enum PrepareFailure {
    /// The connection was dead before the statement reached the server.
    Stale,
    /// PostgreSQL refused the statement (syntax, unknown table, ...).
    Sql,
    /// The driver refused it before sending anything (it could not be
    /// encoded): the caller's request, on a connection that is fine.
    Refused,
}

fn prepare_failure(err: &tokio_postgres::Error, connection_alive: bool) -> PrepareFailure {
    match err.as_db_error() {
        Some(db) if matches!(db.severity(), "FATAL" | "PANIC") => PrepareFailure::Stale,
        Some(_) => PrepareFailure::Sql,
        None if err.is_closed() || !connection_alive || failed_on_the_wire(err) => {
            PrepareFailure::Stale
        }
        None => PrepareFailure::Refused,
    }
}

impl Attempt<()> {
    /// The same failure for an attempt that would have produced a `T`.
    pub(super) fn retype<T>(self) -> Attempt<T> {
        match self {
            Attempt::StaleConnection(error) => Attempt::StaleConnection(error),
            Attempt::Done(Err(error)) => Attempt::Done(Err(error)),
            Attempt::Done(Ok(())) => Attempt::Done(Err(QueryError::ConnectionLost {
                error: "prepare reported neither a statement nor an error".into(),
                may_have_run: false,
            })),
        }
    }
}

/// Sends a cancel for the running statement if the caller's future is
/// dropped before the statement finished.
struct CancelOnDrop(Option<LeaseCanceller>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(canceller) = self.0.take() {
            canceller.cancel_in_background(CancelReason::Deadline);
        }
    }
}

async fn run_statement(
    lease: Lease,
    statement: Arc<Statement>,
    generation: u64,
) -> Attempt<QueryResult> {
    let ready = match plan::ready(
        &lease,
        &statement.sql,
        "params",
        &statement.params,
        generation,
    )
    .await
    {
        Ok(ready) => ready,
        Err(failure) => return failure.retype(),
    };
    let started = std::time::Instant::now();
    let result: Result<_, plan::FlightFailure> = with_pipelined_reset(&lease, async {
        let sent = plan::send(&lease, &statement.sql, ready).await?;
        Ok(read_result(&lease, &statement, sent, RestOfResult::Cancel).await?)
    })
    .await;
    lease.statement_ran(started.elapsed());
    let result = match result {
        Ok(result) => Ok(result),
        Err(failure) => match failure.into_attempt() {
            Attempt::Done(result) => result,
            stale @ Attempt::StaleConnection(_) => return stale,
        },
    };
    count_sql_error(&lease, &result);
    Attempt::Done(result)
}

/// Runs `work`, which sends one request on its first poll, with the session
/// reset queued right behind it: both travel in one flight. When `work`
/// ends with the connection still reusable, the reset's reply decides
/// whether it goes back to the pool; otherwise the reset is not waited for
/// (the connection is closed anyway).
pub(super) async fn with_pipelined_reset<T, E>(
    lease: &Lease,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let reset = lease.reset_request();
    pin_mut!(work, reset);
    let mut reset_reply = None;
    let result = std::future::poll_fn(|cx| {
        // `work` first, so its request is queued before the reset's.
        let result = work.as_mut().poll(cx);
        if reset_reply.is_none() {
            if let std::task::Poll::Ready(reply) = reset.as_mut().poll(cx) {
                reset_reply = Some(reply);
            }
        }
        result
    })
    .await;
    if lease.reusable() {
        let reply = match reset_reply {
            Some(reply) => reply,
            None => reset.await,
        };
        lease.finish_reset(reply).await;
    }
    result
}

/// The caller's SQL failing is not the pool failing: counted by class.
pub(super) fn count_sql_error<T>(lease: &Lease, result: &Result<T, QueryError>) {
    if let Err(QueryError::Sql(sql)) = result {
        lease.sql_error(&sql.sqlstate);
    }
}

/// A statement sent: its columns, its rows as they come, and the mark for
/// rows too large to take (`Lease::rows_before_drop`).
pub(super) struct Sent {
    pub(super) columns: Vec<Column>,
    pub(super) rows: tokio_postgres::RowStream,
    pub(super) mark: ResultMark,
    /// The server described the result otherwise than `columns` say: the
    /// rows' own descriptions are the truth (`plan.rs`).
    pub(super) columns_may_differ: bool,
}

/// Where to look for rows too large to take in a result.
#[derive(Debug, Clone, Copy)]
pub(super) enum ResultMark {
    /// The statement went out alone: rows seen since this mark
    /// (`Lease::begin_result`).
    Rows(u64),
    /// The statement went out in a pipeline: its reply's number.
    Reply(u64),
}

impl ResultMark {
    pub(super) fn rows_before_drop(self, lease: &Lease) -> Option<u64> {
        match self {
            ResultMark::Rows(mark) => lease.rows_before_drop(mark),
            ResultMark::Reply(number) => lease.rows_before_drop_in(number),
        }
    }
}

/// Sends a prepared statement with its parameters, unless the caller gave
/// up (or a drain stopped the lease) during the prepare: then nothing is.
pub(super) async fn send(
    lease: &Lease,
    params: &[SqlValue],
    prepared: &tokio_postgres::Statement,
) -> Result<Sent, QueryError> {
    let params = encode_params("params", params, prepared.params())?;
    let columns = describe_columns(
        prepared
            .columns()
            .iter()
            .map(|column| (column.name(), column.type_())),
    )?;
    if !lease.begin_effect() {
        return Err(classify(
            lease,
            QueryError::DeadlineExceeded {
                may_have_run: false,
            },
        ));
    }
    // Marked before the statement goes out: the driver reads ahead.
    let mark = lease.begin_result();
    let rows = lease
        .client()
        .query_raw(prepared, params.iter().map(|p| p as &dyn ToSql))
        .await
        .map_err(|err| driver_error(lease, &err))?;
    Ok(Sent {
        columns,
        rows,
        mark: ResultMark::Rows(mark),
        columns_may_differ: false,
    })
}

/// What becomes of the rows past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestOfResult {
    /// Cancel the statement in PostgreSQL; the connection is closed.
    Cancel,
    /// Read and drop them: the connection is a session's, which goes on.
    Skip,
}

pub(super) async fn run_prepared(
    lease: &Lease,
    statement: &Statement,
    prepared: &tokio_postgres::Statement,
    rest: RestOfResult,
) -> Result<QueryResult, QueryError> {
    let sent = send(lease, &statement.params, prepared).await?;
    read_result(lease, statement, sent, rest).await
}

/// Reads a sent statement's result within the statement's limits.
pub(super) async fn read_result(
    lease: &Lease,
    statement: &Statement,
    sent: Sent,
    rest: RestOfResult,
) -> Result<QueryResult, QueryError> {
    let Sent {
        mut columns,
        rows: stream,
        mark,
        columns_may_differ,
    } = sent;
    pin_mut!(stream);
    let mut rows = Vec::new();
    let mut bytes = ResultBytes::default();
    loop {
        let next = stream
            .try_next()
            .await
            .map_err(|err| driver_error(lease, &err))?;
        let gap = mark.rows_before_drop(lease);
        // Polled after its end, a result stream reports a closed connection.
        let ended = next.is_none();
        let values = match next {
            // A row too large to take was left out before this point.
            _ if gap.is_some_and(|before| before <= rows.len() as u64) => Err(Limit::Bytes),
            None => break,
            Some(_) if rows.len() == statement.max_rows as usize => Err(Limit::Rows),
            Some(row) if columns_may_differ && rows.is_empty() => {
                columns = row_columns(&row).map_err(ran_anyway)?;
                counted_values(&row, &columns, &mut bytes, statement.max_bytes)
            }
            Some(row) => counted_values(&row, &columns, &mut bytes, statement.max_bytes),
        };
        match values {
            Ok(values) => rows.push(values),
            Err(limit) => {
                match rest {
                    _ if ended => {}
                    // The rest of the result is still coming: cancel it in
                    // PostgreSQL (the backend must not stay busy producing
                    // rows nobody reads); the connection is closed.
                    RestOfResult::Cancel => {
                        lease
                            .canceller()
                            .cancel_in_background(CancelReason::ResultLimit);
                    }
                    RestOfResult::Skip => {
                        while stream
                            .try_next()
                            .await
                            .map_err(|err| driver_error(lease, &err))?
                            .is_some()
                        {}
                    }
                }
                return match limit {
                    Limit::Undecodable(error) => Err(error),
                    Limit::Rows | Limit::Bytes if statement.allow_truncation => {
                        let rows_affected = rows.len() as u64;
                        Ok(QueryResult {
                            columns,
                            rows,
                            rows_affected,
                            truncated: true,
                        })
                    }
                    Limit::Rows => Err(QueryError::ResultTooLarge {
                        limit: statement.max_rows,
                    }),
                    Limit::Bytes => Err(QueryError::ResultTooManyBytes {
                        limit: statement.max_bytes,
                    }),
                };
            }
        }
    }
    let rows_affected = stream.rows_affected().unwrap_or(rows.len() as u64);
    if columns_may_differ && rows.is_empty() {
        // No row to say what the columns are now: ask (no effect).
        let described = lease
            .client()
            .prepare(&statement.sql)
            .await
            .map_err(|err| driver_error(lease, &err))?;
        columns = describe_columns(
            described
                .columns()
                .iter()
                .map(|column| (column.name(), column.type_())),
        )
        .map_err(ran_anyway)?;
    }
    Ok(QueryResult {
        columns,
        rows,
        rows_affected,
        truncated: false,
    })
}

/// A result refused after its statement ran (its plan was outdated).
fn ran_anyway(error: QueryError) -> QueryError {
    match error {
        QueryError::InvalidArgument { field, message } => {
            QueryError::ResultUnreturnable { field, message }
        }
        other => other,
    }
}

/// The columns as a row describes them.
fn row_columns(row: &tokio_postgres::Row) -> Result<Vec<Column>, QueryError> {
    describe_columns(
        row.columns()
            .iter()
            .map(|column| (column.name(), column.type_())),
    )
}

async fn run_batch(
    lease: Lease,
    sql: Arc<String>,
    parameter_sets: Arc<Vec<Vec<SqlValue>>>,
) -> Attempt<BatchResult> {
    let prepared = match prepare(&lease, &sql).await {
        Ok(prepared) => prepared,
        Err(failure) => return failure.retype(),
    };
    let started = std::time::Instant::now();
    let result = run_batch_prepared(&lease, &parameter_sets, &prepared).await;
    if lease.reusable() {
        lease.reset().await;
    }
    lease.statement_ran(started.elapsed());
    count_sql_error(&lease, &result);
    Attempt::Done(result)
}

async fn run_batch_prepared(
    lease: &Lease,
    parameter_sets: &[Vec<SqlValue>],
    prepared: &tokio_postgres::Statement,
) -> Result<BatchResult, QueryError> {
    // Every set is checked before BEGIN, so a bad parameter costs no round trip.
    let encoded = parameter_sets
        .iter()
        .enumerate()
        .map(|(i, set)| {
            encode_params(
                &format!("parameter_sets[{i}].params"),
                set,
                prepared.params(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let result = run_in_transaction(lease, prepared, &encoded).await;
    result.map_err(|failure| match failure {
        BatchFailure::Postgres(index, err) => {
            let mut error = QueryError::from_postgres(&err);
            if let QueryError::Sql(sql_error) = &mut error {
                sql_error.batch_index = index;
            }
            classify(lease, error)
        }
        // The caller gave up (deadline, disconnect) or a drain stopped it.
        BatchFailure::Stopped => classify(
            lease,
            QueryError::DeadlineExceeded {
                may_have_run: false,
            },
        ),
    })
}

/// Why a batch's transaction did not commit.
enum BatchFailure {
    /// PostgreSQL refused a set (its index) or the transaction control.
    Postgres(Option<usize>, tokio_postgres::Error),
    /// The lease was cancelled between windows or before COMMIT: the rest
    /// is not sent and the transaction is rolled back (or dies with the
    /// connection, which is not reused).
    Stopped,
}

/// Parameter sets sent ahead of their answers in one batch: PostgreSQL
/// runs them one after another as they arrive, so a batch costs a round
/// trip per window rather than per set; the window bounds what waits.
const BATCH_WINDOW: usize = 256;

/// The transaction itself. The sets go out a window at a time without
/// waiting for each answer (each has its own Sync, so a failed set fails
/// the ones behind it with 25P02 and the first error is the one reported).
/// Between windows, and before COMMIT, it checks that the caller still
/// wants it: COMMIT must never follow a caller's DEADLINE_EXCEEDED. On
/// error the transaction is rolled back before the connection can be
/// reused; a connection whose rollback fails is closed instead.
async fn run_in_transaction(
    lease: &Lease,
    prepared: &tokio_postgres::Statement,
    encoded: &[Vec<EncodedParam>],
) -> Result<BatchResult, BatchFailure> {
    let client = lease.client();
    let rollback = || async {
        let _ = client.batch_execute("ROLLBACK").await;
    };
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|err| BatchFailure::Postgres(None, err))?;
    let mut rows_affected = Vec::with_capacity(encoded.len());
    for window in encoded.chunks(BATCH_WINDOW) {
        if lease.cancel_reason().is_some() {
            rollback().await;
            return Err(BatchFailure::Stopped);
        }
        // `join_all` polls in order, and each first poll sends its set.
        let answers =
            futures::future::join_all(window.iter().map(|params| {
                client.execute_raw(prepared, params.iter().map(|p| p as &dyn ToSql))
            }))
            .await;
        for answer in answers {
            match answer {
                Ok(count) => rows_affected.push(count),
                Err(err) => {
                    let index = rows_affected.len();
                    rollback().await;
                    return Err(BatchFailure::Postgres(Some(index), err));
                }
            }
        }
    }
    if !lease.begin_effect() {
        rollback().await;
        return Err(BatchFailure::Stopped);
    }
    if let Err(err) = client.batch_execute("COMMIT").await {
        rollback().await;
        return Err(BatchFailure::Postgres(None, err));
    }
    Ok(BatchResult { rows_affected })
}

pub(super) fn driver_error(lease: &Lease, err: &tokio_postgres::Error) -> QueryError {
    classify(lease, QueryError::from_postgres(err))
}

/// Refines a driver error with what only the lease knows: a statement we
/// cancelled for a drain is the pool's refusal, not the caller's SQL; a
/// broken connection must not go back, and whether the statement had been
/// sent when it broke is the caller's to know.
pub(super) fn classify(lease: &Lease, error: QueryError) -> QueryError {
    match (error, lease.cancel_reason()) {
        (QueryError::Sql(sql), Some(CancelReason::Drain)) if sql.sqlstate == QUERY_CANCELED => {
            QueryError::Pool(PoolError::Draining(lease.pool_name().to_string()))
        }
        // Stopped before it was sent, by a drain rather than its caller.
        (QueryError::DeadlineExceeded { .. }, Some(CancelReason::Drain)) => {
            QueryError::Pool(PoolError::Draining(lease.pool_name().to_string()))
        }
        (QueryError::Sql(sql), Some(CancelReason::Pause)) if sql.sqlstate == QUERY_CANCELED => {
            QueryError::Pool(PoolError::Paused(lease.pool_name().to_string()))
        }
        (QueryError::DeadlineExceeded { .. }, Some(CancelReason::Pause)) => {
            QueryError::Pool(PoolError::Paused(lease.pool_name().to_string()))
        }
        (QueryError::ConnectionLost { error, .. }, _) => {
            lease.discard();
            QueryError::ConnectionLost {
                error,
                may_have_run: lease.effect_sent(),
            }
        }
        (error, _) => error,
    }
}

/// What a result read so far weighs in a response and costs in memory.
#[derive(Default)]
struct ResultBytes {
    response: usize,
    memory: usize,
}

/// How much memory a result may cost per byte of `max_bytes` it may weigh:
/// room for results of small values (each costs `VALUE_OVERHEAD` bytes in
/// memory), and a bound for a result of a million NULLs, which weighs 7 MB
/// and would cost 96 MB.
const MEMORY_PER_RESULT_BYTE: u64 = 4;

/// A row's values, adding their size to `bytes`; `Limit::Bytes` once the
/// result weighs more than `max_bytes` or costs more than
/// `MEMORY_PER_RESULT_BYTE` times that.
fn counted_values(
    row: &tokio_postgres::Row,
    columns: &[Column],
    bytes: &mut ResultBytes,
    max_bytes: u64,
) -> Result<Vec<SqlValue>, Limit> {
    let values = decode_row(row, columns).map_err(Limit::Undecodable)?;
    bytes.response += values.iter().map(SqlValue::response_bytes).sum::<usize>();
    bytes.memory += values.iter().map(SqlValue::memory_bytes).sum::<usize>();
    if bytes.response as u64 > max_bytes
        || bytes.memory as u64 > max_bytes.saturating_mul(MEMORY_PER_RESULT_BYTE)
    {
        return Err(Limit::Bytes);
    }
    Ok(values)
}

/// Why reading a result stopped early.
enum Limit {
    Rows,
    Bytes,
    Undecodable(QueryError),
}

/// SQLSTATE 57014, what PostgreSQL reports for a statement cancelled by request.
pub(super) const QUERY_CANCELED: &str = "57014";

pub(super) fn encode_params(
    field: &str,
    values: &[SqlValue],
    types: &[Type],
) -> Result<Vec<EncodedParam>, QueryError> {
    if values.len() != types.len() {
        return Err(QueryError::invalid(
            field,
            format!(
                "the statement has {} placeholder(s) but {} parameter(s) were sent",
                types.len(),
                values.len()
            ),
        ));
    }
    values
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (value, ty))| {
            encode_param(value, ty).map_err(|message| {
                QueryError::invalid(format!("{field}[{i}]"), format!("${}: {message}", i + 1))
            })
        })
        .collect()
}

/// The result's columns, as (name, type) pairs, in domain terms; refused
/// if poolplane cannot return one of them.
pub(super) fn describe_columns<'a>(
    columns: impl IntoIterator<Item = (&'a str, &'a Type)>,
) -> Result<Vec<Column>, QueryError> {
    columns
        .into_iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            if !is_supported(ty) {
                return Err(QueryError::invalid(
                    format!("sql (column {} `{name}`)", i + 1),
                    format!(
                        "column `{name}` has type {}, which poolplane does not return; cast it in SQL, e.g. {name}::text",
                        ty.name(),
                    ),
                ));
            }
            Ok(Column {
                name: name.to_string(),
                type_name: ty.name().to_string(),
                type_oid: ty.oid(),
            })
        })
        .collect()
}

pub(super) fn decode_row(
    row: &tokio_postgres::Row,
    columns: &[Column],
) -> Result<Vec<SqlValue>, QueryError> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, SqlValue>(i).map_err(|err| {
                let name = columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
                QueryError::invalid(
                    format!("sql (column {} `{name}`)", i + 1),
                    format!(
                        "cannot return the value of `{name}`: {}; cast it to text in SQL",
                        crate::postgres::error_chain(&err)
                    ),
                )
            })
        })
        .collect()
}
