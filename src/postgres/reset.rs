//! The session reset: what makes a connection that served one caller
//! indistinguishable from a fresh one for the next.
//!
//! One simple-query message does all of it and reports what it found, so
//! it can travel in the same flight as the caller's statement (one round
//! trip, about 60 µs of server time, see docs/benchmarks.md):
//!
//! - `SET SESSION AUTHORIZATION DEFAULT` and `RESET ALL`: the pool's role
//!   and settings (settings given at connect, like `statement_timeout`, are
//!   the defaults `RESET ALL` returns to);
//! - `CLOSE ALL`, `UNLISTEN *`, `pg_advisory_unlock_all()`, `DISCARD TEMP`,
//!   `DISCARD SEQUENCES`: cursors, notifications, advisory locks, temporary
//!   objects, sequence state;
//! - then it reports whether the connection was inside a transaction block
//!   (a fresh implicit transaction starts with this very message, so its
//!   start time equals the statement's) and whether SQL-level prepared
//!   statements exist (only a function can create one: `PREPARE` itself is
//!   refused by the query path).
//!
//! It is not `DISCARD ALL`: that also deallocates the driver's own prepared
//! statements (tokio-postgres caches its type lookups as prepared
//! statements and would then fail) and throws away every cached plan.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::error_chain;

/// The reset, one message.
pub(crate) const RESET_SQL: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; \
    UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    SELECT pg_catalog.transaction_timestamp() = pg_catalog.statement_timestamp(), \
    EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// What one run of [`RESET_SQL`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResetReport {
    /// The session is as fresh as a new connection's.
    Clean,
    /// It ran inside a transaction block the caller left open (or failed
    /// in one): that transaction must be rolled back and the reset run again.
    InTransaction,
    /// A function created SQL-level prepared statements; the connection is
    /// closed rather than guess which names are whose.
    UserPreparedStatements,
}

/// Why a connection could not be reset; it must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session reset failed: {0}")]
pub(crate) struct ResetFailed(pub(crate) String);

/// Reads the reply to [`RESET_SQL`]. A server error means a failed
/// transaction block (25P02) or an aborted reset; either way the
/// transaction is rolled back and the reset tried once more.
pub(crate) fn read_report(
    reply: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
) -> Result<ResetReport, ResetFailed> {
    let messages = match reply {
        Ok(messages) => messages,
        Err(err) if err.as_db_error().is_some() => return Ok(ResetReport::InTransaction),
        Err(err) => return Err(ResetFailed(error_chain(&err))),
    };
    let last_row = messages.iter().rev().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let flag = |index: usize| last_row.and_then(|row| row.get(index)) == Some("t");
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
pub(crate) async fn finish(client: &Client, first: ResetReport) -> Result<(), ResetFailed> {
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
            match read_report(client.simple_query(RESET_SQL).await)? {
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
pub(crate) async fn reset(client: &Client) -> Result<ResetReport, ResetFailed> {
    let first = read_report(client.simple_query(RESET_SQL).await)?;
    finish(client, first.clone()).await?;
    Ok(first)
}
