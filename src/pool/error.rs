//! Errors of the pool layer. Callers (the query path, the API) decide what
//! each means for their clients; nothing here knows about gRPC.

use std::time::Duration;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("no pool named `{0}`")]
    NotFound(String),
    #[error("a pool named `{0}` already exists")]
    AlreadyExists(String),
    #[error("pool `{0}` is draining and accepts no new work")]
    Draining(String),
    /// No connection became free within the acquire timeout.
    #[error("pool `{pool}` is exhausted: no connection within {waited:?} (max_connections {max})")]
    Exhausted {
        pool: String,
        waited: Duration,
        max: u32,
    },
    /// Every open connection stayed busy within the acquire timeout, and
    /// opening another failed.
    #[error("pool `{pool}` had no free connection within {waited:?} and could not open another (max_connections {max}): {error}")]
    CouldNotGrow {
        pool: String,
        waited: Duration,
        max: u32,
        error: String,
    },
    /// A connection could not be opened: the database is unreachable or refused us.
    #[error("pool `{pool}` cannot reach its database: {last_error}")]
    Unavailable { pool: String, last_error: String },
    /// UpdatePool's new target did not take a connection: nothing changed.
    #[error(
        "the new target {target} did not take a connection, so the pool stays where it is: {error}"
    )]
    TargetUnreachable { target: String, error: String },
    /// ReconnectPool could not open a new connection: nothing was replaced.
    #[error("pool `{pool}` keeps its connections: a new one fails: {error}")]
    NewConnectionFails { pool: String, error: String },
    /// Sessions already hold as many connections as they may.
    #[error("pool `{pool}` already has its maximum of {max} sessions (max_session_connections)")]
    TooManySessions { pool: String, max: u32 },
    /// The pool was paused and the caller's statement cancelled.
    #[error("pool `{0}` was paused (PausePool) and the statement was cancelled")]
    Paused(String),
    /// The pool is paused and as many callers wait as may.
    #[error("pool `{pool}` is paused and {limit} callers already wait for it to resume")]
    PauseQueueFull { pool: String, limit: u32 },
    #[error("invalid pool settings")]
    InvalidConfig(Vec<ConfigError>),
    /// The server holds as many pools as it may (`server.max_pools`).
    #[error("the server already holds its maximum of {0} pools (server.max_pools)")]
    TooManyPools(u32),
    /// A pool created over the API may not connect there. Says nothing of
    /// what, if anything, listens at that address.
    #[error("`{target}` is not among the targets pools created over the API may use (server.allowed_targets)")]
    TargetNotAllowed { target: String },
}
