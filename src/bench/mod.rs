//! `poolplane bench`: a load-test client for a running poolplane
//! (`load.rs`, `session.rs`: the calls; `options.rs`: the flags;
//! `params.rs`: `--param` values; `report.rs`: the figures, the summary and
//! the JSON), and `poolplane bench internal` (`internal.rs`: measurements
//! that need no server and no database). docs/benchmarks.md has the numbers.

mod internal;
pub mod load;
pub mod options;
mod params;
pub mod report;
mod session;

pub use internal::{run, BenchReport};
pub use load::run as run_load;
pub use options::{LoadArgs, LoadOptions, Mode, Workload, CHECK_SQL};
pub use report::Report;

/// Why a load run could not be made (its calls' own errors are counted, not these).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A flag, or a combination of flags, that makes no sense.
    #[error("{0}")]
    Options(String),
    /// No connection to the server.
    #[error("cannot reach poolplane at {addr}: {error}")]
    Unreachable { addr: String, error: String },
    /// The `--json` file could not be written.
    #[error("cannot write {path}: {error}")]
    Output { path: String, error: String },
}

impl From<crate::client::ClientError> for BenchError {
    fn from(error: crate::client::ClientError) -> BenchError {
        match error {
            crate::client::ClientError::Unreachable { addr, error } => {
                BenchError::Unreachable { addr, error }
            }
            other => BenchError::Options(other.to_string()),
        }
    }
}
