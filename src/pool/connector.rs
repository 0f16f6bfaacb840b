//! What the pool core needs from a database driver: open a connection,
//! check it, reset it, close it, cancel what runs on it. The core is
//! generic over this, so it is unit-tested with an in-memory connector
//! (`testing.rs`) under paused time; `pg.rs` is the PostgreSQL one.
//!
//! A connector is handed a [`ServerSlot`] with every connect. The slot is
//! the connection's place under `max_connections`: the connector keeps it
//! until the connection is *gone* on the server side (for PostgreSQL: the
//! backend has closed its socket), then drops it. So the pool's open count
//! is what the server sees, even while connections are closing.

use std::future::Future;

/// How a connection ended, told by the connector when it drops the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotEnd {
    /// Closed because someone asked (or it was never opened).
    Closed,
    /// The server or the network ended it; the text says how.
    Broken(String),
    /// The server ended it on request (`pg_terminate_backend`); the text
    /// says how.
    Terminated(String),
}

/// One place under the pool's `max_connections`, held from before a
/// connect until the connection is gone. Dropping it frees the place.
pub struct ServerSlot {
    release: Option<Box<dyn FnOnce(SlotEnd) + Send>>,
}

impl ServerSlot {
    pub(crate) fn new(release: impl FnOnce(SlotEnd) + Send + 'static) -> ServerSlot {
        ServerSlot {
            release: Some(Box::new(release)),
        }
    }

    /// Frees the place, saying how the connection ended.
    pub fn end(mut self, how: SlotEnd) {
        if let Some(release) = self.release.take() {
            release(how);
        }
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(SlotEnd::Closed);
        }
    }
}

impl std::fmt::Debug for ServerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSlot")
    }
}

/// Opens connections for one pool.
pub trait Connector: Send + Sync + 'static {
    type Conn: Connection;
    type Error: std::fmt::Display + Send + 'static;

    /// Opens a connection. The connector owns `slot` from now on and drops
    /// it when the connection is gone (at once if the open fails).
    fn connect(
        &self,
        slot: ServerSlot,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;
}

/// One open connection.
pub trait Connection: Send + Sync + 'static {
    type Cancel: CancelHandle;

    /// True once the connection is known dead.
    fn is_broken(&self) -> bool;

    /// One cheap round trip: is it alive?
    fn ping(&self) -> impl Future<Output = Result<(), String>> + Send + '_;

    /// Makes the session as fresh as a new connection's; `Err` means the
    /// connection must be closed.
    fn reset(&self) -> impl Future<Output = Result<(), String>> + Send + '_;

    /// Asks for the connection to end now. Its slot is freed when it is
    /// gone, not here.
    fn close(&self);

    /// What another task needs to cancel the work running on it.
    fn cancel_handle(&self) -> Self::Cancel;
}

/// Cancels the work running on one connection, from any task.
pub trait CancelHandle: Clone + Send + Sync + 'static {
    /// Sends the cancel request; true if it was delivered.
    fn cancel(&self) -> impl Future<Output = bool> + Send;
}
