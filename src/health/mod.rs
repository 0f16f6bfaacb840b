//! Health: a probe per pool on its own connection, the state machine that
//! turns probe results into UNKNOWN/HEALTHY/DEGRADED/UNHEALTHY, and the
//! monitor loop that drives it, opens the pool's fail-fast breaker while
//! the database is unreachable and paces recovery with backoff.
//!
//! Invariant: no gRPC here; the monitor talks to the pool through its
//! public API and to subscribers through the event bus.

mod monitor;
mod probe;
mod state;

pub use monitor::{HealthReport, Monitor, Requester};
pub use probe::ProbeSlots;
pub use state::{Backoff, HealthMachine, HealthPolicy, HealthState, ProbeOutcome, Transition};
