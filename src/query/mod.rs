//! The data path: run SQL on a pool's connection with typed parameters and
//! results, honouring the caller's deadline by cancelling in PostgreSQL.
//!
//! Invariant: nothing here knows about protobuf or gRPC; values are
//! [`SqlValue`] and errors [`QueryError`].

mod classify;
mod error;
mod execute;
mod numeric;
mod pipeline;
mod plan;
mod session;
mod sessions;
mod stream;
mod trace;
mod value;

pub use classify::{check as classify, PoolLogin, Refusal};
pub use error::{QueryError, SessionEnd, SqlError};
pub use execute::{execute, execute_batch, BatchResult, Column, QueryResult, Statement};
pub use session::{
    run_session, Isolation, SessionContext, SessionInput, SessionOptions, SessionOutput,
    SessionSender, SESSION_BUFFER,
};
pub use sessions::{Holder, SessionInfo, Sessions, STATEMENT_PREFIX_CHARS};
pub use stream::{execute_stream, PartSender, StreamPart, StreamStatement, STREAM_BUFFER};
pub(crate) use value::SUPPORTED_SCALARS;
#[cfg(test)]
pub(crate) use value::VALUE_OVERHEAD;
pub use value::{is_supported, Instant, Interval, SqlValue};
// For `crate::fuzzing` only.
pub(crate) use value::encode_param;
