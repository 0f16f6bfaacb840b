//! The session reset: what makes a connection that served one caller
//! indistinguishable from a fresh one for the next.
//!
//! One simple-query message does all of it, so it can travel in the same
//! flight as the caller's statement (no extra round trip; its cost is in
//! docs/benchmarks.md). On most connections it is `DISCARD ALL`: the
//! pool's role and settings (settings given at connect, like
//! `statement_timeout`, are the defaults it returns to), cursors, prepared
//! statements, notifications, advisory locks, cached plans, temporary
//! objects and sequence state, in one statement PostgreSQL runs at about a
//! third of the cost of the same steps one by one.
//!
//! Whether a transaction was left open is decided by the transaction
//! status PostgreSQL sends with ReadyForQuery, which a caller cannot
//! change; `DISCARD ALL` confirms it by failing inside a transaction block.
//! Either way the transaction is rolled back and the reset run again.
//!
//! Two kinds of connection need the steps one by one instead, ending with
//! a report whose every name is schema-qualified, down to the operator (a
//! role's own `search_path`, which `RESET ALL` restores, could otherwise
//! put a caller's `=` in front of the catalog's):
//! - tokio-postgres keeps its type lookups as prepared statements once it
//!   has looked up a type that is not built in: such a connection keeps
//!   them (no `DEALLOCATE ALL`) and reports SQL-level prepared statements
//!   instead, and is closed if a function made any;
//! - in a database with dblink or postgres_fdw (checked when a connection
//!   opens), the reset also closes the connections those keep to other
//!   servers, in a `DO` block (about +0.3 ms per reset, docs/benchmarks.md:
//!   only those databases pay it), and `DISCARD ALL` cannot share a
//!   message with it (a message of several statements is one transaction).

use tokio_postgres::{Client, SimpleQueryMessage};

use super::error_chain;
use super::limit::{MessageLimit, TransactionStatus};

/// Which reset a connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResetKind {
    /// The driver keeps prepared statements of its own: report SQL-level
    /// ones instead of deallocating all.
    pub(crate) keep_driver_statements: bool,
    /// The database has dblink or postgres_fdw, whose connections to other
    /// servers live in the backend: close them.
    pub(crate) close_remote_connections: bool,
}

impl ResetKind {
    /// The reset, one message.
    pub(crate) fn sql(self) -> &'static str {
        match (self.keep_driver_statements, self.close_remote_connections) {
            (false, false) => RESET_DISCARD_ALL,
            (true, false) => RESET_KEEP_DRIVER_STATEMENTS,
            (false, true) => RESET_DEALLOCATE_ALL_REMOTE,
            (true, true) => RESET_KEEP_DRIVER_STATEMENTS_REMOTE,
        }
    }
}

/// Everything at once, in the one statement that does it.
const RESET_DISCARD_ALL: &str = "DISCARD ALL";

/// What every reset by steps does first (role, settings, cursors, notifications,
/// advisory locks, temporary objects, sequences).
macro_rules! session_state {
    () => {
        "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; \
         SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; "
    };
}

/// Closes the connections dblink and postgres_fdw keep in the backend (a
/// later caller could use their logins, and a remote transaction would
/// keep its locks). Found through `pg_extension`, in the extensions' own
/// schemas; a missing unnamed dblink connection is no error.
macro_rules! remote_connections {
    () => {
        "DO $poolplane$ DECLARE s pg_catalog.name; BEGIN \
         SELECT n.nspname INTO s FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n \
           ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
           WHERE e.extname OPERATOR(pg_catalog.=) 'dblink'::pg_catalog.name; \
         IF s IS NOT NULL THEN \
           EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect(c) FROM \
             pg_catalog.unnest(%I.dblink_get_connections()) AS c', s, s); \
           BEGIN EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect()', s); \
           EXCEPTION WHEN OTHERS THEN NULL; END; \
         END IF; \
         s := NULL; \
         SELECT n.nspname INTO s FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n \
           ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
           WHERE e.extname OPERATOR(pg_catalog.=) 'postgres_fdw'::pg_catalog.name; \
         IF s IS NOT NULL THEN \
           EXECUTE pg_catalog.format('SELECT %I.postgres_fdw_disconnect_all()', s); \
         END IF; \
         END $poolplane$; "
    };
}

/// The report: whether a transaction block was open (a fresh implicit
/// transaction starts with this very message).
macro_rules! report {
    () => {
        "SELECT pg_catalog.transaction_timestamp() OPERATOR(pg_catalog.=) \
         pg_catalog.statement_timestamp()"
    };
}

/// ... and whether SQL-level prepared statements exist.
macro_rules! report_statements {
    () => {
        ", EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
    };
}

const RESET_KEEP_DRIVER_STATEMENTS: &str =
    concat!(session_state!(), report!(), report_statements!());

const RESET_DEALLOCATE_ALL_REMOTE: &str = concat!(
    session_state!(),
    remote_connections!(),
    "DEALLOCATE ALL; ",
    report!()
);

const RESET_KEEP_DRIVER_STATEMENTS_REMOTE: &str = concat!(
    session_state!(),
    remote_connections!(),
    report!(),
    report_statements!()
);

/// What one run of a reset found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResetReport {
    /// The session is as fresh as a new connection's.
    Clean,
    /// It ran inside a transaction block the caller left open (or failed
    /// in one): that transaction must be rolled back and the reset run again.
    InTransaction,
    /// A function created SQL-level prepared statements next to the
    /// driver's own; the connection is closed rather than guess which
    /// names are whose.
    UserPreparedStatements,
}

/// Why a connection could not be reset; it must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session reset failed: {0}")]
pub(crate) struct ResetFailed(pub(crate) String);

/// Reads the reply to a reset, with the transaction status PostgreSQL
/// reported at its end (`status`: only a transaction block outlives a
/// multi-statement message). A server error means a failed transaction
/// block (25P02) or an aborted reset; either way the transaction is rolled
/// back and the reset tried once more.
pub(crate) fn read_report(
    kind: ResetKind,
    reply: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
    status: TransactionStatus,
) -> Result<ResetReport, ResetFailed> {
    if reply.is_ok() && status != TransactionStatus::Idle {
        return Ok(ResetReport::InTransaction);
    }
    let messages = match reply {
        Ok(messages) => messages,
        Err(err) if err.as_db_error().is_some() => return Ok(ResetReport::InTransaction),
        Err(err) => return Err(ResetFailed(error_chain(&err))),
    };
    if kind.sql() == RESET_DISCARD_ALL {
        // It ran, outside a transaction block (it fails inside one).
        return match messages.as_slice() {
            [SimpleQueryMessage::CommandComplete(_)] => Ok(ResetReport::Clean),
            _ => Err(ResetFailed(format!(
                "DISCARD ALL answered {} messages instead of one completion",
                messages.len()
            ))),
        };
    }
    let last_row = messages.iter().rev().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let flag =
        |index: usize| last_row.and_then(|row| row.try_get(index).ok().flatten()) == Some("t");
    match (last_row, flag(0), flag(1)) {
        (None, _, _) => Err(ResetFailed("the reset reported nothing".into())),
        (Some(_), false, _) => Ok(ResetReport::InTransaction),
        (Some(_), true, true) => Ok(ResetReport::UserPreparedStatements),
        (Some(_), true, false) => Ok(ResetReport::Clean),
    }
}

/// Finishes a reset whose first report was `first`: rolls back a
/// transaction left open and resets again. `Ok` only when the session is
/// clean; any other outcome means the connection must be closed.
pub(crate) async fn finish(
    client: &Client,
    limit: &MessageLimit,
    kind: ResetKind,
    first: ResetReport,
) -> Result<(), ResetFailed> {
    match first {
        ResetReport::Clean => Ok(()),
        ResetReport::UserPreparedStatements => Err(ResetFailed(
            "a function left SQL-level prepared statements".into(),
        )),
        ResetReport::InTransaction => {
            client
                .simple_query("ROLLBACK")
                .await
                .map_err(|err| ResetFailed(error_chain(&err)))?;
            let reply = client.simple_query(kind.sql()).await;
            match read_report(kind, reply, limit.transaction_status())? {
                ResetReport::Clean => Ok(()),
                other => Err(ResetFailed(format!(
                    "still not clean after ROLLBACK: {other:?}"
                ))),
            }
        }
    }
}

/// Runs the whole reset on its own (for connections whose caller did not
/// pipeline it): `Ok` only when the session is clean.
pub(crate) async fn reset(
    client: &Client,
    limit: &MessageLimit,
    kind: ResetKind,
) -> Result<ResetReport, ResetFailed> {
    let reply = client.simple_query(kind.sql()).await;
    let first = read_report(kind, reply, limit.transaction_status())?;
    finish(client, limit, kind, first.clone()).await?;
    Ok(first)
}
