//! Remembered statement plans: for each statement text a connection has
//! prepared, what PostgreSQL inferred (its parameter types) and described
//! (its columns), so the next call of the same text runs in one round
//! trip: Parse (unnamed, with those types), Bind, Describe, Execute and
//! Sync in one flight, with no named statement left on the server.
//!
//! Nothing is kept on the server, so the session reset's `DEALLOCATE ALL`
//! and a caller's `DEALLOCATE` cannot invalidate anything here. What can
//! go stale is the catalog: a plan is checked against the row description
//! the server sends with every run (`MessageLimit::description_since_mark`), and
//! forgotten when they differ or when a run fails (see `query/plan.rs`).
//!
//! Bounded per connection: at most [`MAX_PLANS`] plans weighing at most
//! [`MAX_PLAN_BYTES`] together (a plan weighs its text and its column
//! names and types, [`Plan::weight`]); a statement longer than
//! [`MAX_PLANNED_SQL`], or a plan heavier than [`MAX_PLAN_WEIGHT`], is not
//! kept.

use std::sync::Arc;

use tokio_postgres::types::Type;

use crate::text_cache::{TextBounds, TextCache};

/// Plans kept per connection (PgBouncer keeps 200 prepared statements per
/// server connection by default; services send a few hundred distinct
/// statements at most).
pub(crate) const MAX_PLANS: usize = 256;

/// What a connection's plans may weigh together, in bytes.
pub(crate) const MAX_PLAN_BYTES: usize = 512 * 1024;

/// The heaviest plan kept (a result of hundreds of long-named columns is
/// prepared each time instead).
pub(crate) const MAX_PLAN_WEIGHT: usize = 32 * 1024;

/// A statement longer than this is prepared each time (generated SQL of
/// this size is rarely repeated, and would crowd out the rest).
pub(crate) const MAX_PLANNED_SQL: usize = 8 * 1024;

/// What PostgreSQL inferred and described for one statement text.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The type of each `$n`, in order.
    pub(crate) params: Vec<Type>,
    pub(crate) columns: Vec<PlanColumn>,
    /// `MessageLimit::description_since_mark` after the prepare that made it.
    pub(crate) description: u64,
    /// The pool's catalog generation when it was made (see
    /// `ManagedPool::catalog_generation`), and when.
    pub(crate) generation: u64,
    pub(crate) born: std::time::Instant,
}

/// How long a plan is trusted: PostgreSQL sends nothing when another
/// client changes a table, and a plan's parameter types, like a prepared
/// statement's, stay as they were inferred; after this long it is
/// prepared afresh, which bounds how long such a change can go unseen.
pub(crate) const PLAN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// What one column or parameter costs beside its name, roughly.
const PER_TYPE: usize = 48;

impl Plan {
    /// The plan of a statement just prepared, whose row description had
    /// the fingerprint `description`, made in catalog `generation`.
    pub(crate) fn of(
        statement: &tokio_postgres::Statement,
        description: u64,
        generation: u64,
    ) -> Plan {
        Plan {
            params: statement.params().to_vec(),
            columns: statement
                .columns()
                .iter()
                .map(|column| PlanColumn {
                    name: column.name().to_string(),
                    ty: column.type_().clone(),
                })
                .collect(),
            description,
            generation,
            born: std::time::Instant::now(),
        }
    }

    /// What the plan holds beside its text, in bytes.
    pub(crate) fn weight(&self) -> usize {
        let columns: usize = self
            .columns
            .iter()
            .map(|column| column.name.len() + PER_TYPE)
            .sum();
        columns + self.params.len() * PER_TYPE
    }

    /// Whether the plan may still be used in a pool at catalog `generation`.
    pub(crate) fn current(&self, generation: u64) -> bool {
        self.generation == generation && self.born.elapsed() < PLAN_MAX_AGE
    }
}

#[derive(Debug)]
pub(crate) struct PlanColumn {
    pub(crate) name: String,
    pub(crate) ty: Type,
}

/// One connection's plans, least recently used first out.
pub(crate) struct Plans(TextCache<Arc<Plan>>);

impl Default for Plans {
    fn default() -> Self {
        Plans(TextCache::new(TextBounds {
            entries: MAX_PLANS,
            bytes: MAX_PLAN_BYTES,
            longest: MAX_PLAN_WEIGHT,
        }))
    }
}

impl Plans {
    /// The plan remembered for `sql`, if any (it becomes the most recent).
    pub(crate) fn get(&self, sql: &str) -> Option<Arc<Plan>> {
        self.0.get(sql)
    }

    /// Remembers `plan` for `sql`, within the bounds.
    pub(crate) fn insert(&self, sql: &str, plan: Arc<Plan>) {
        if sql.len() > MAX_PLANNED_SQL {
            return;
        }
        let weight = plan.weight();
        self.0.insert_weighing(sql, plan, weight);
    }

    /// Forgets the plan of `sql` (it no longer matches the catalog).
    pub(crate) fn forget(&self, sql: &str) {
        self.0.forget(sql);
    }
}
