//! The PostgreSQL connector of the pool core.
//!
//! Each connection's driver task holds its [`ServerSlot`] and drops it only
//! when the driver ends, which (see `postgres/stream.rs`) happens once the
//! server has closed the socket, i.e. the backend has left
//! `pg_stat_activity`. That is what makes `max_connections` a hard limit
//! on backends, also while connections are being replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client};

use super::connector::{CancelHandle, Connection, Connector, ServerSlot, SlotEnd};
use crate::config::PoolConfig;
use crate::postgres::plans::Plans;
use crate::postgres::reset::ResetKind;
use crate::postgres::{self, Closer, DriverEnd, Endpoint, MessageLimit, OpenError};

/// How long a closing connection may take to end by itself before its
/// socket is closed from outside.
const FORCE_CLOSE_AFTER: Duration = Duration::from_secs(2);

/// Opens a pool's PostgreSQL connections.
pub struct PgConnector {
    connector: postgres::Connector,
}

/// One open PostgreSQL connection.
pub struct PgConn {
    client: Client,
    closer: Closer,
    limit: Arc<MessageLimit>,
    cancel: PgCancel,
    /// The driver looked up a type that is not built in, and keeps that
    /// lookup as prepared statements of its own for the connection's life.
    driver_statements: AtomicBool,
    /// The database has dblink or postgres_fdw (when the connection opened).
    remote_connections: bool,
    /// Statement plans remembered on this connection (`postgres/plans.rs`).
    plans: Plans,
}

/// Whether the database has an extension that keeps connections to other
/// servers in the backend, beyond what a reset undoes without being told.
const HAS_REMOTE_CONNECTIONS: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension \
    WHERE extname OPERATOR(pg_catalog.=) ANY ('{dblink,postgres_fdw}'::pg_catalog.name[]))";

/// Sends PostgreSQL a cancel request for one connection's statement.
#[derive(Clone)]
pub struct PgCancel {
    token: CancelToken,
    endpoint: Arc<Endpoint>,
}

impl PgConnector {
    pub(crate) fn new(config: &PoolConfig) -> PgConnector {
        PgConnector {
            connector: postgres::Connector::new(config, &config.application_name),
        }
    }
}

impl PgConnector {
    /// Opens one connection outside any pool and closes it: whether the
    /// target answers and takes the login (a new target is checked before
    /// a pool moves to it).
    pub(crate) async fn check(&self) -> Result<(), OpenError> {
        let opened = self.connector.open(|_| {}).await?;
        // Dropping the client ends the connection.
        drop(opened);
        Ok(())
    }
}

impl PgConn {
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Notes the types a prepared statement uses: preparing one with a
    /// type that is not built in made the driver keep statements of its own.
    pub(crate) fn saw_types<'a>(&self, types: impl IntoIterator<Item = &'a Type>) {
        if types
            .into_iter()
            .any(|ty| Type::from_oid(ty.oid()).is_none())
        {
            self.driver_statements.store(true, Ordering::Release);
        }
    }

    /// The statement plans remembered on this connection.
    pub(crate) fn plans(&self) -> &Plans {
        &self.plans
    }

    /// The driver may have looked types up unseen (a result described
    /// otherwise than planned): treat it as keeping statements of its own.
    pub(crate) fn assume_driver_statements(&self) {
        self.driver_statements.store(true, Ordering::Release);
    }

    /// The limit on what one message may bring (`postgres::limit`).
    pub(crate) fn message_limit(&self) -> &MessageLimit {
        &self.limit
    }

    /// The reset this connection needs.
    pub(crate) fn reset_kind(&self) -> ResetKind {
        ResetKind {
            keep_driver_statements: self.driver_statements.load(Ordering::Acquire),
            close_remote_connections: self.remote_connections,
        }
    }
}

impl Connector for PgConnector {
    type Conn = PgConn;
    type Error = OpenError;

    async fn connect(&self, slot: ServerSlot) -> Result<PgConn, OpenError> {
        // If the open fails, `on_end` is dropped unrun and the slot with it.
        let on_end = move |end: DriverEnd| match end {
            DriverEnd::Failed(error) => slot.end(SlotEnd::Broken(error)),
            DriverEnd::Terminated(error) => slot.end(SlotEnd::Terminated(error)),
            DriverEnd::Closed | DriverEnd::Aborted => slot.end(SlotEnd::Closed),
        };
        let postgres::Opened {
            client,
            closer,
            limit,
        } = self.connector.open(on_end).await?;
        let cancel = PgCancel {
            token: client.cancel_token(),
            endpoint: self.connector.endpoint(),
        };
        let timeout = self.connector.endpoint().connect_timeout;
        let remote_connections = tokio::time::timeout(timeout, has_remote_connections(&client))
            .await
            .map_err(|_| {
                OpenError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not answer its first query within the connect timeout",
                ))
            })??;
        Ok(PgConn {
            client,
            closer,
            limit,
            cancel,
            driver_statements: AtomicBool::new(false),
            remote_connections,
            plans: Plans::default(),
        })
    }
}

/// Asks the database once per connection (a simple query: the driver
/// keeps nothing of it).
async fn has_remote_connections(client: &Client) -> Result<bool, OpenError> {
    let reply = client.simple_query(HAS_REMOTE_CONNECTIONS).await?;
    Ok(reply.iter().any(|message| {
        matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))
    }))
}

impl Connection for PgConn {
    type Cancel = PgCancel;

    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }

    async fn ping(&self) -> Result<(), String> {
        self.client
            .simple_query("")
            .await
            .map(|_| ())
            .map_err(|err| postgres::error_chain(&err))
    }

    async fn reset(&self) -> Result<(), String> {
        postgres::reset::reset(&self.client, &self.limit, self.reset_kind())
            .await
            .map(|_| ())
            .map_err(|failed| failed.to_string())
    }

    /// The close itself is the drop that follows: the driver sends
    /// Terminate and reads what the server still sends (so a FATAL report
    /// of a server that ended the connection first is seen and counted as
    /// a break) until the server's EOF. A server that does not answer gets
    /// its socket closed from outside after [`FORCE_CLOSE_AFTER`].
    fn close(&self) {
        let closer = self.closer.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(FORCE_CLOSE_AFTER).await;
                    closer.close();
                });
            }
            Err(_) => closer.close(),
        }
    }

    fn cancel_handle(&self) -> PgCancel {
        self.cancel.clone()
    }
}

impl CancelHandle for PgCancel {
    async fn cancel(&self) -> bool {
        match self.endpoint.cancel(&self.token).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "cancel request to PostgreSQL failed");
                false
            }
        }
    }
}
