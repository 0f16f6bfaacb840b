//! One round trip per statement: a statement whose plan the connection
//! remembers (`postgres/plans.rs`: its parameter types as PostgreSQL
//! inferred them, its columns) goes out as Parse, Bind, Describe, Execute
//! and Sync in one flight, on the unnamed statement; one seen for the first
//! time on this connection is prepared first (a round trip with no effect),
//! and its plan remembered.
//!
//! A remembered plan can go stale when the catalog changes. It is checked
//! three ways, none of which lets a stale plan change an answer:
//! - parameters a remembered plan refuses are checked again against a
//!   fresh prepare before the caller hears of it (nothing was sent yet);
//! - the row description the server sends with every run is compared with
//!   the plan's; when it differs, the plan is forgotten, the columns are
//!   taken from what the server sent, and the connection is closed after
//!   the call (its driver may have looked up types meanwhile);
//! - a run that fails forgets the plan, so the next call prepares afresh.
//!
//! Retries: a call moves to another connection only when the flight
//! cannot have run, i.e. not one byte of it left (the connection was
//! already closed), or the server's first reply to it was a FATAL report
//! (it ended the session before reading the Parse; PostgreSQL writes its
//! replies in order, so a Parse it had processed would be answered first).

use std::sync::Arc;

use tokio_postgres::types::ToSql;

use super::error::QueryError;
use super::execute::{
    classify, describe_columns, encode_params, prepare, Attempt, Column, ResultMark, Sent,
};
use super::value::{EncodedParam, SqlValue};
use crate::pool::Lease;
use crate::postgres::plans::{Plan, PlanColumn};

/// A statement ready to go out: its plan and its parameters encoded for it.
pub(super) struct Ready {
    plan: Arc<Plan>,
    params: Vec<EncodedParam>,
    columns: Vec<Column>,
}

/// Why a flight failed.
pub(super) enum FlightFailure {
    /// The connection was dead before the flight could run: another may try.
    Stale(QueryError),
    /// The statement's own answer (it may have run; see `QueryError`).
    Failed(QueryError),
}

impl From<QueryError> for FlightFailure {
    fn from(error: QueryError) -> Self {
        FlightFailure::Failed(error)
    }
}

impl FlightFailure {
    /// What the call ends with, should no other connection be tried.
    pub(super) fn into_attempt<T>(self) -> Attempt<T> {
        match self {
            FlightFailure::Stale(error) => Attempt::StaleConnection(error),
            FlightFailure::Failed(error) => Attempt::Done(Err(error)),
        }
    }
}

/// The plan of `sql` with `values` encoded for it: remembered, or prepared
/// now. `field` names the values in errors.
pub(super) async fn ready(
    lease: &Lease,
    sql: &str,
    field: &str,
    values: &[SqlValue],
    generation: u64,
) -> Result<Ready, Attempt<()>> {
    if let Some(plan) = lease.plan(sql).filter(|plan| plan.current(generation)) {
        match encoded(field, values, plan) {
            Ok(ready) => return Ok(ready),
            // What a remembered plan refuses, the catalog as it is now
            // may take: only a fresh prepare decides.
            Err(_) => lease.forget_plan(sql),
        }
    }
    let plan = fresh(lease, sql, generation).await?;
    encoded(field, values, plan).map_err(|error| Attempt::Done(Err(error)))
}

fn encoded(field: &str, values: &[SqlValue], plan: Arc<Plan>) -> Result<Ready, QueryError> {
    let params = encode_params(field, values, &plan.params)?;
    let columns = plan_columns(&plan.columns)?;
    Ok(Ready {
        plan,
        params,
        columns,
    })
}

/// Prepares `sql` (one round trip with no effect), remembers its plan if
/// its results can be returned, and closes the named statement.
async fn fresh(lease: &Lease, sql: &str, generation: u64) -> Result<Arc<Plan>, Attempt<()>> {
    lease.flight_mark();
    let statement = prepare(lease, sql).await?;
    let Some(description) = lease.description_since_mark() else {
        // A prepare always describes its statement: nothing to remember.
        return Err(Attempt::Done(Err(QueryError::ConnectionLost {
            error: "the server did not describe the statement".into(),
            may_have_run: false,
        })));
    };
    let plan = Arc::new(Plan::of(&statement, description, generation));
    if plan_columns(&plan.columns).is_ok() {
        lease.remember_plan(sql, Arc::clone(&plan));
    }
    Ok(plan)
}

fn plan_columns(columns: &[PlanColumn]) -> Result<Vec<Column>, QueryError> {
    describe_columns(
        columns
            .iter()
            .map(|column| (column.name.as_str(), &column.ty)),
    )
}

/// Sends a ready statement in one flight, unless the caller gave up (or a
/// drain stopped the lease) meanwhile: then nothing is.
pub(super) async fn send(lease: &Lease, sql: &str, ready: Ready) -> Result<Sent, FlightFailure> {
    let Ready {
        plan,
        params,
        columns,
    } = ready;
    if !lease.begin_effect() {
        return Err(classify(
            lease,
            QueryError::DeadlineExceeded {
                may_have_run: false,
            },
        )
        .into());
    }
    lease.statement_starts();
    // Marked before the statement goes out: the driver reads ahead.
    let mark = lease.begin_result();
    let flight = lease.flight_mark();
    let typed = params
        .iter()
        .zip(&plan.params)
        .map(|(param, ty)| (param as &dyn ToSql, ty.clone()));
    let sent = lease.client().query_typed_raw(sql, typed).await;
    let rows = match sent {
        Ok(rows) => rows,
        Err(err) => {
            lease.forget_plan(sql);
            let never_ran = (lease.sent_nothing_since(flight)
                && (err.is_closed() || lease.connection_broken()))
                || (is_fatal(&err) && lease.replies_since(flight) == 1);
            if never_ran {
                lease.discard();
                return Err(FlightFailure::Stale(QueryError::from_postgres(&err)));
            }
            return Err(FlightFailure::Failed(classify(
                lease,
                QueryError::from_postgres(&err),
            )));
        }
    };
    let described_as_planned = lease.description_since_mark() == Some(plan.description);
    if !described_as_planned {
        // The catalog changed under the plan: what the server described
        // is the truth, and the connection's driver may have looked up
        // types on the way, so it is not reused.
        lease.forget_plan(sql);
        lease.discard();
    }
    Ok(Sent {
        columns,
        rows,
        mark: ResultMark::Rows(mark),
        columns_may_differ: !described_as_planned,
    })
}

fn is_fatal(err: &tokio_postgres::Error) -> bool {
    err.as_db_error()
        .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"))
}
