//! A session's statements in flight: each goes out as soon as it arrives,
//! in one flight (Parse with the types its plan remembers, Bind, Describe,
//! Execute, Sync) without waiting for the answers before it; PostgreSQL
//! runs them one after another in arrival order, each in its own implicit
//! transaction unless the caller opened one, exactly as if they had been
//! sent one at a time.
//!
//! Every reply ends with one ReadyForQuery, so the replies are numbered
//! (`MessageLimit::next_reply`) and what the message filter saw of reply
//! `n` (its transaction status, its row description, a row too large to
//! take) belongs to the `n`th request, however far ahead the driver reads.
//! The numbering holds only while this session sends every request on the
//! connection: a statement needing a prepare, or anything else, waits until
//! the flight is empty, and the numbers start again from the connection's
//! count after it (see `Numbering`).
//!
//! A session's plans are its own (a `SET search_path` or a temporary table
//! changes what a text means in that session only), kept with their named
//! statements until the session ends: closing one would add a reply. They
//! are set aside (still open) after a statement that changes the session's
//! name resolution, and fresh ones are prepared.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tracing::{Instrument, Span};

use super::error::QueryError;
use super::execute::{
    describe_columns, driver_error, encode_params, read_result, Column, QueryResult, RestOfResult,
    ResultMark, Sent, Statement,
};
use super::trace;
use super::value::EncodedParam;
use crate::pool::{Lease, TransactionStatus};
use crate::postgres::plans::{Plan, MAX_PLANS, MAX_PLAN_BYTES};

/// Most statements in flight on one session.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// A session's plans, and the named statements behind them.
#[derive(Default)]
pub(super) struct SessionPlans {
    plans: HashMap<Box<str>, Arc<Plan>>,
    /// Every statement prepared in this session, open until it ends.
    statements: Vec<tokio_postgres::Statement>,
    /// What every plan prepared in this session weighs together.
    weight: usize,
}

impl SessionPlans {
    /// The plan of `sql`, if it is current in the pool's catalog
    /// `generation` (a catalog change through any of the pool's callers
    /// sets the session's plans aside too).
    pub(super) fn get(&self, sql: &str, generation: u64) -> Option<Arc<Plan>> {
        self.plans
            .get(sql)
            .filter(|plan| plan.current(generation))
            .cloned()
    }

    /// Whether another statement may be prepared and kept.
    pub(super) fn has_room(&self) -> bool {
        self.statements.len() < MAX_PLANS && self.weight < MAX_PLAN_BYTES
    }

    /// Prepares `sql` (the flight must be empty) and keeps its plan; the
    /// caller keeps texts longer than `MAX_PLANNED_SQL` out.
    pub(super) async fn prepare(
        &mut self,
        lease: &Lease,
        sql: &str,
        generation: u64,
    ) -> Result<Arc<Plan>, QueryError> {
        lease.flight_mark();
        let statement = lease
            .client()
            .prepare(sql)
            .await
            .map_err(|err| driver_error(lease, &err))?;
        lease.prepared(&statement);
        let description =
            lease
                .description_since_mark()
                .ok_or_else(|| QueryError::ConnectionLost {
                    error: "the server did not describe the statement".into(),
                    may_have_run: false,
                })?;
        let plan = Arc::new(Plan::of(&statement, description, generation));
        self.weight += sql.len() + plan.weight();
        self.plans.insert(sql.into(), Arc::clone(&plan));
        self.statements.push(statement);
        Ok(plan)
    }

    /// Sets every plan aside: the session changed what names mean.
    pub(super) fn forget_all(&mut self) {
        self.plans.clear();
    }

    pub(super) fn forget(&mut self, sql: &str) {
        self.plans.remove(sql);
    }
}

/// Whether the numbers of the next replies are known.
#[derive(Debug, Clone, Copy)]
pub(super) enum Numbering {
    /// The next request's reply has this number.
    Next(u64),
    /// Something outside the pipeline may have sent requests: wait until
    /// the flight is empty, then count afresh.
    Unknown,
}

/// A statement ready to go out in the pipeline.
pub(super) struct Ready {
    pub(super) statement: Statement,
    pub(super) plan: Arc<Plan>,
    pub(super) params: Vec<EncodedParam>,
    pub(super) columns: Vec<Column>,
}

impl Ready {
    /// `statement` with its parameters encoded for `plan`, or why they
    /// cannot be (the statement is given back).
    pub(super) fn new(statement: Statement, plan: Arc<Plan>) -> Result<Ready, Box<Unready>> {
        let columns = plan
            .columns
            .iter()
            .map(|column| (column.name.as_str(), &column.ty));
        let encoded = encode_params("params", &statement.params, &plan.params)
            .and_then(|params| Ok((params, describe_columns(columns)?)));
        match encoded {
            Ok((params, columns)) => Ok(Ready {
                statement,
                plan,
                params,
                columns,
            }),
            Err(error) => Err(Box::new(Unready { statement, error })),
        }
    }
}

/// A statement whose parameters its plan refused.
pub(super) struct Unready {
    pub(super) statement: Statement,
    pub(super) error: QueryError,
}

/// What a statement in flight comes back with.
pub(super) struct Landed {
    pub(super) result: Result<QueryResult, QueryError>,
    /// As PostgreSQL reported it at the end of this statement's reply.
    pub(super) transaction: TransactionStatus,
    /// The server described the result otherwise than the plan: the plan
    /// is outdated, and the driver may have sent requests of its own.
    pub(super) described_otherwise: bool,
}

pub(super) type InFlight = Pin<Box<dyn Future<Output = Landed> + Send>>;

/// The statement's flight, to be polled once at once: its first poll
/// sends it. `number` is its reply's number; `span` is the statement's,
/// ended when it lands.
pub(super) fn fly(lease: Arc<Lease>, ready: Ready, number: u64, span: Span) -> InFlight {
    let traced = span.clone();
    let landing = async move {
        let Ready {
            statement,
            plan,
            params,
            columns,
        } = ready;
        let typed = params
            .iter()
            .zip(&plan.params)
            .map(|(param, ty)| (param as &dyn ToSql, ty.clone()));
        let sent = lease.client().query_typed_raw(&statement.sql, typed).await;
        let described_otherwise =
            sent.is_ok() && lease.description_of(number) != Some(plan.description);
        let result = match sent {
            Ok(rows) => {
                let sent = Sent {
                    columns,
                    rows,
                    mark: ResultMark::Reply(number),
                    columns_may_differ: described_otherwise,
                };
                read_result(&lease, &statement, sent, RestOfResult::Skip).await
            }
            Err(err) => Err(driver_error(&lease, &err)),
        };
        let transaction = if lease.reusable() {
            lease
                .status_of(number)
                .await
                .unwrap_or_else(|| lease.transaction_status())
        } else {
            lease.transaction_status()
        };
        if let Err(error) = &result {
            trace::record_error(&span, error);
        }
        Landed {
            result,
            transaction,
            described_otherwise,
        }
    };
    Box::pin(landing.instrument(traced))
}
