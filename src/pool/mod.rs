//! Pools: the registry of named pools, each a core of connections (one
//! state machine per connection, one table per pool) wrapped with the
//! settings, breaker, maintenance, statistics and drain of a managed pool.
//!
//! Invariant: nothing here knows about gRPC or HTTP; errors are
//! [`PoolError`] and callers map them. The core (`core.rs`) knows nothing
//! about PostgreSQL: it is generic over a [`connector`], and `pg.rs` is the
//! PostgreSQL one.

mod connector;
mod core;
mod error;
mod lease;
mod maintenance;
mod managed;
mod pg;
mod registry;
mod stats;
#[cfg(test)]
mod testing;

pub use self::core::{CancelReason, ConnCounts, ConnState};
pub use crate::postgres::TransactionStatus;
pub use error::PoolError;
pub use lease::{Lease, LeaseCanceller};
pub use managed::{
    DrainReport, LimitsUpdate, ManagedPool, PauseOptions, PauseReport, PoolHistograms, PoolInfo,
    PoolState, SessionPermit,
};
pub use pg::{PgConn, PgConnector};
pub use registry::Registry;
pub use stats::{
    AcquireOutcome, CloseReason, HistogramSnapshot, StatsBench, StatsSnapshot, SQLSTATE_CLASSES,
};
