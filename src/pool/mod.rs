//! Pools: the registry of named pools, each a mobc pool wrapped with the
//! limits, gate, breaker, maintenance, statistics and drain that mobc lacks.
//!
//! Invariant: nothing here knows about gRPC or HTTP; errors are
//! [`PoolError`] and callers map them.

mod conns;
mod error;
mod lease;
mod maintenance;
mod managed;
mod manager;
mod registry;
mod stats;

pub use conns::CancelReason;
pub use error::PoolError;
pub use lease::{Lease, LeaseCanceller};
pub use managed::{DrainReport, ManagedPool, PoolHistograms, PoolInfo, PoolState};
pub use manager::{ConnectError, PgConn};
pub use registry::{LimitsUpdate, Registry};
pub use stats::{
    AcquireOutcome, CloseReason, HistogramSnapshot, StatsBench, StatsSnapshot, SQLSTATE_CLASSES,
};
