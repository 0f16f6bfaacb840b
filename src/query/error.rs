//! Errors of the query path, in domain terms. `api::status` maps them to
//! gRPC codes.

use crate::pool::PoolError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The request itself is wrong: `field` names what to fix.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// PostgreSQL rejected the statement.
    #[error("{0}")]
    Sql(SqlError),
    /// The caller's deadline passed; a statement that was running is
    /// being cancelled in PostgreSQL and its connection will be closed.
    /// `may_have_run`: the statement (for ExecuteBatch, its COMMIT) had
    /// already been sent, so it may have taken effect before the cancel.
    #[error("deadline exceeded; any running statement is cancelled in PostgreSQL")]
    DeadlineExceeded { may_have_run: bool },
    #[error("the result has more than {limit} rows; raise max_rows (up to the server's limit) or set allow_truncation")]
    ResultTooLarge { limit: u32 },
    #[error("the result is larger than {limit} bytes (server.max_result_bytes); select fewer rows or columns, or set allow_truncation")]
    ResultTooManyBytes { limit: u64 },
    /// One row of a streamed result is larger than a response may be.
    #[error("a row is larger than {limit} bytes (server.max_result_bytes); select fewer or smaller columns")]
    RowTooLarge { limit: u64 },
    /// Transaction control or a session-level statement, which only a
    /// session may run: `kind` names the statement.
    #[error("{kind} is not allowed in Execute or ExecuteBatch, which run in autocommit on a shared connection; open a Session to use transactions and session state")]
    NeedsSession { kind: &'static str },
    /// A statement a session may not run either: it would outlive the
    /// session (`PREPARE TRANSACTION` keeps its transaction and locks).
    #[error("{kind} is not allowed in a Session: a prepared transaction outlives the session and keeps its locks (poolplane does not do two-phase commit)")]
    OutlivesSession { kind: &'static str },
    /// A statement no call may run: it changes what every future
    /// connection of the pool logs in with or starts with.
    #[error("{kind} on the pool's own role or database is not allowed through poolplane: it changes every future connection of the pool (other callers' settings, or whether the pool can log in at all), which no session reset undoes; run it as a database administrator, outside poolplane")]
    ChangesPoolDefaults { kind: &'static str },
    /// COPY to or from the client, which this API cannot carry.
    #[error("COPY to or from the client is not supported through Execute; use INSERT ... SELECT, INSERT with ExecuteBatch, or server-side COPY to a file")]
    CopyUnsupported,
    /// The server connection broke mid-call. `may_have_run`: the
    /// statement (for ExecuteBatch, its COMMIT) had been sent, so it may
    /// have taken effect; a client retrying must allow for that.
    #[error("connection to PostgreSQL lost: {error}")]
    ConnectionLost { error: String, may_have_run: bool },
    /// The statement ran, but its result has a column poolplane does not
    /// return: the table changed after the statement's plan was
    /// remembered, so the check before running could not see it.
    #[error("the statement ran, but its result cannot be returned: {field}: {message}")]
    ResultUnreturnable { field: String, message: String },
    /// A session ended other than by its caller's `close`.
    #[error("the session ended: {}; {}", end.describe(), if *rolled_back { "its open transaction was rolled back" } else { "no transaction was open" })]
    SessionEnded { end: SessionEnd, rolled_back: bool },
}

/// Why a session ended without its caller closing it (besides a deadline,
/// a drain or a lost connection, which have errors of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// No statement for the session's idle timeout.
    IdleTimeout,
    /// Idle inside a transaction block for `idle_in_transaction_timeout_ms`.
    IdleInTransactionTimeout,
    /// Open for `max_session_duration_ms`.
    MaxDuration,
    /// An operator ended it (KillSession).
    Killed,
    /// The server is shutting down.
    ServerStopping,
}

impl SessionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::IdleInTransactionTimeout => "idle_in_transaction_timeout",
            SessionEnd::MaxDuration => "max_session_duration",
            SessionEnd::Killed => "killed",
            SessionEnd::ServerStopping => "server_stopping",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SessionEnd::IdleTimeout => "no statement within its idle timeout",
            SessionEnd::IdleInTransactionTimeout => {
                "idle inside a transaction for longer than idle_in_transaction_timeout_ms"
            }
            SessionEnd::MaxDuration => "open for longer than max_session_duration_ms",
            SessionEnd::Killed => "an operator ended it (KillSession)",
            SessionEnd::ServerStopping => "the server is shutting down",
        }
    }
}

/// A PostgreSQL error report: what the server said, field for field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the SQL, when PostgreSQL gives one.
    pub position: Option<u32>,
    /// For ExecuteBatch: the parameter set that failed.
    pub batch_index: Option<usize>,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

impl QueryError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> QueryError {
        QueryError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The SQLSTATE PostgreSQL answered with, if it answered with an error.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            QueryError::Sql(sql) => Some(&sql.sqlstate),
            _ => None,
        }
    }

    /// A short fixed name of the error's kind (for traces).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            QueryError::InvalidArgument { .. } => "invalid_argument",
            QueryError::Pool(_) => "pool",
            QueryError::Sql(_) => "sql",
            QueryError::DeadlineExceeded { .. } => "deadline_exceeded",
            QueryError::ResultTooLarge { .. } | QueryError::ResultTooManyBytes { .. } => {
                "result_too_large"
            }
            QueryError::RowTooLarge { .. } => "row_too_large",
            QueryError::NeedsSession { .. } => "needs_session",
            QueryError::OutlivesSession { .. } => "outlives_session",
            QueryError::ChangesPoolDefaults { .. } => "changes_pool_defaults",
            QueryError::CopyUnsupported => "copy_unsupported",
            QueryError::ConnectionLost { .. } => "connection_lost",
            QueryError::ResultUnreturnable { .. } => "result_unreturnable",
            QueryError::SessionEnded { .. } => "session_ended",
        }
    }

    /// Classifies a driver error: a server error report, or a broken connection.
    pub(crate) fn from_postgres(err: &tokio_postgres::Error) -> QueryError {
        match err.as_db_error() {
            Some(db) => QueryError::Sql(SqlError {
                sqlstate: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
                position: match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                    _ => None,
                },
                batch_index: None,
            }),
            None => QueryError::ConnectionLost {
                error: crate::postgres::error_chain(err),
                may_have_run: false,
            },
        }
    }
}
