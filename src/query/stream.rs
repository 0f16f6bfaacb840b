//! ExecuteStream: one statement whose rows go to the caller in chunks, in
//! order, as PostgreSQL produces them.
//!
//! The parts pass through a small bounded channel to the transport. When
//! the caller reads slowly, the channel fills and this task stops reading
//! the connection; the driver then stops reading its socket (it waits for
//! room before taking the next message), the socket's buffers fill and the
//! backend blocks writing. A slow reader slows the statement; the server
//! holds a few chunks per stream, whatever the result's size.
//!
//! Everything else is Execute's path: admission, the stale-connection
//! retry (only before anything was sent to the caller), the pipelined
//! session reset, the caller's deadline (the whole stream's), and a
//! statement cancelled in PostgreSQL whenever the caller stops reading: a
//! limit, an undecodable value, or a caller that went away.

use std::sync::Arc;

use futures::{pin_mut, FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::QueryError;
use super::execute::{
    admit, admit_params, classify, count_sql_error, decode_row, driver_error, prepare, send,
    with_lease, with_pipelined_reset, Attempt, Column, Sent, Traced,
};
use super::value::SqlValue;
use crate::pool::{CancelReason, Lease, ManagedPool};

/// One ExecuteStream request, in domain terms.
#[derive(Debug, Clone)]
pub struct StreamStatement {
    pub sql: String,
    pub params: Vec<SqlValue>,
    /// Most rows to send; `None`: no limit.
    pub max_rows: Option<u32>,
    /// Most bytes one row may cost in memory (`SqlValue::memory_bytes`,
    /// which also bounds its size in a response): a chunk holds at least
    /// one row, and a stream holds a few chunks.
    pub max_row_bytes: u64,
    pub allow_truncation: bool,
    /// Put the SQL text on the statement's trace span.
    pub trace_text: bool,
}

/// What the caller receives, in order: `Columns`, any number of `Rows`,
/// then `End` for a complete (or deliberately truncated) result, or an
/// error instead, after which nothing more comes.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamPart {
    Columns(Vec<Column>),
    Rows(Vec<Vec<SqlValue>>),
    End { rows_affected: u64, truncated: bool },
}

/// Where a stream's parts go: the transport reads the other end.
pub type PartSender = mpsc::Sender<Result<StreamPart, QueryError>>;

/// Parts a stream's channel holds: one keeps the transport busy while the
/// next chunk is read; more would only hold more memory for a slow reader.
pub const STREAM_BUFFER: usize = 1;

/// A chunk goes out once its values cost this many bytes in memory, or
/// sooner when no further row is ready (rows are not held back waiting
/// for company).
const CHUNK_BYTES: usize = 64 * 1024;

/// Runs one statement and sends its result to `parts`, ending with `End`
/// or an error. Returns when the statement is over (or abandoned).
pub async fn execute_stream(
    pool: &ManagedPool,
    statement: StreamStatement,
    deadline: Option<Instant>,
    parts: PartSender,
) {
    let ended = run(pool, statement, deadline, &parts).await;
    let last = ended.map(|(rows_affected, truncated)| StreamPart::End {
        rows_affected,
        truncated,
    });
    // A caller that went away reads nothing more.
    let _ = parts.send(last).await;
}

async fn run(
    pool: &ManagedPool,
    statement: StreamStatement,
    deadline: Option<Instant>,
    parts: &PartSender,
) -> Result<(u64, bool), QueryError> {
    let changes_catalog = admit(pool, &statement.sql)?;
    if changes_catalog {
        // A catalog change streams no rows worth the wait: plans go now.
        pool.catalog_changed();
    }
    admit_params("params", statement.params.len())?;
    let statement = Arc::new(statement);
    let traced = Traced {
        sql: &statement.sql,
        with_text: statement.trace_text,
    };
    with_lease(pool, deadline, traced, |lease| {
        stream_statement(lease, Arc::clone(&statement), parts.clone())
    })
    .await
}

async fn stream_statement(
    lease: Lease,
    statement: Arc<StreamStatement>,
    parts: PartSender,
) -> Attempt<(u64, bool)> {
    let prepared = match prepare(&lease, &statement.sql).await {
        Ok(prepared) => prepared,
        Err(failure) => return failure.retype(),
    };
    let started = std::time::Instant::now();
    let result = with_pipelined_reset(
        &lease,
        stream_prepared(&lease, &statement, &prepared, &parts),
    )
    .await;
    lease.statement_ran(started.elapsed());
    count_sql_error(&lease, &result);
    Attempt::Done(result)
}

async fn stream_prepared(
    lease: &Lease,
    statement: &StreamStatement,
    prepared: &tokio_postgres::Statement,
    parts: &PartSender,
) -> Result<(u64, bool), QueryError> {
    let Sent {
        columns,
        rows,
        mark,
        ..
    } = send(lease, &statement.params, prepared).await?;
    pin_mut!(rows);
    deliver(lease, parts, StreamPart::Columns(columns.clone())).await?;
    let mut chunk = Chunk::default();
    let mut sent: u64 = 0;
    loop {
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing more is ready yet: what we hold goes out now.
                chunk.flush(lease, parts).await?;
                tokio::select! {
                    next = rows.next() => next,
                    () = parts.closed() => return Err(caller_gone(lease)),
                }
            }
        };
        let next = next.transpose().map_err(|err| driver_error(lease, &err))?;
        if mark
            .rows_before_drop(lease)
            .is_some_and(|before| before <= sent)
        {
            // A row too large to take was left out before this point: as
            // Execute does, the rows before it are a truncated result if
            // the caller allows one.
            return too_large_row(lease, parts, &mut chunk, sent, statement).await;
        }
        let Some(row) = next else {
            break;
        };
        if let Some(limit) = statement.max_rows.filter(|max| sent == u64::from(*max)) {
            if !statement.allow_truncation {
                stop_reading(lease);
                return Err(QueryError::ResultTooLarge { limit });
            }
            return truncate(lease, parts, &mut chunk, sent).await;
        }
        let values = decode_row(&row, &columns).inspect_err(|_| stop_reading(lease))?;
        let bytes = values.iter().map(SqlValue::memory_bytes).sum::<usize>();
        if bytes as u64 > statement.max_row_bytes {
            return too_large_row(lease, parts, &mut chunk, sent, statement).await;
        }
        sent += 1;
        chunk.push(values, bytes);
        if chunk.bytes >= CHUNK_BYTES {
            chunk.flush(lease, parts).await?;
        }
    }
    chunk.flush(lease, parts).await?;
    Ok((rows.rows_affected().unwrap_or(sent), false))
}

/// A row is too large to send: the result ends before it, truncated if the
/// caller allows it, with RESOURCE_EXHAUSTED if not.
async fn too_large_row(
    lease: &Lease,
    parts: &PartSender,
    chunk: &mut Chunk,
    sent: u64,
    statement: &StreamStatement,
) -> Result<(u64, bool), QueryError> {
    if statement.allow_truncation {
        return truncate(lease, parts, chunk, sent).await;
    }
    stop_reading(lease);
    Err(QueryError::RowTooLarge {
        limit: statement.max_row_bytes,
    })
}

/// Ends the result early on purpose: what is held goes out, then the rest
/// of the statement is cancelled.
async fn truncate(
    lease: &Lease,
    parts: &PartSender,
    chunk: &mut Chunk,
    sent: u64,
) -> Result<(u64, bool), QueryError> {
    chunk.flush(lease, parts).await?;
    stop_reading(lease);
    Ok((sent, true))
}

/// Rows read but not yet sent.
#[derive(Default)]
struct Chunk {
    rows: Vec<Vec<SqlValue>>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, values: Vec<SqlValue>, bytes: usize) {
        self.rows.push(values);
        self.bytes += bytes;
    }

    async fn flush(&mut self, lease: &Lease, parts: &PartSender) -> Result<(), QueryError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        deliver(
            lease,
            parts,
            StreamPart::Rows(std::mem::take(&mut self.rows)),
        )
        .await
    }
}

/// Sends one part, waiting for room: this wait is the flow control. It
/// ends early if poolplane cancels the lease (a drain, the deadline): the
/// backend may be blocked writing to us, where a cancel request cannot
/// reach it, and only letting go of the result frees it.
async fn deliver(lease: &Lease, parts: &PartSender, part: StreamPart) -> Result<(), QueryError> {
    tokio::select! {
        sent = parts.send(Ok(part)) => sent.map_err(|_| caller_gone(lease)),
        () = lease.cancelled() => Err(classify(
            lease,
            QueryError::DeadlineExceeded { may_have_run: true },
        )),
    }
}

/// The caller stopped reading before the end: the rest must not keep the
/// backend busy.
fn stop_reading(lease: &Lease) {
    lease
        .canceller()
        .cancel_in_background(CancelReason::ResultLimit);
}

/// The caller went away mid-stream: the statement is cancelled, and the
/// error is for the logs only (nobody reads it).
fn caller_gone(lease: &Lease) -> QueryError {
    let may_have_run = lease
        .canceller()
        .cancel_in_background(CancelReason::Deadline);
    QueryError::DeadlineExceeded { may_have_run }
}
