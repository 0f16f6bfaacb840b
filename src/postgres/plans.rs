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
//! Bounded per connection: at most [`MAX_PLANS`] plans holding at most
//! [`MAX_PLAN_BYTES`] of statement text; a longer statement is not kept.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use tokio_postgres::types::Type;

/// Plans kept per connection (PgBouncer keeps 200 prepared statements per
/// server connection by default; services send a few hundred distinct
/// statements at most).
pub(crate) const MAX_PLANS: usize = 256;

/// Statement text kept per connection, in bytes.
pub(crate) const MAX_PLAN_BYTES: usize = 256 * 1024;

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
}

#[derive(Debug)]
pub(crate) struct PlanColumn {
    pub(crate) name: String,
    pub(crate) ty: Type,
}

/// One connection's plans, least recently used first out.
pub(crate) struct Plans {
    inner: Mutex<Inner>,
}

struct Inner {
    plans: LruCache<Box<str>, Arc<Plan>>,
    bytes: usize,
}

impl Default for Plans {
    fn default() -> Self {
        Plans {
            inner: Mutex::new(Inner {
                plans: LruCache::new(NonZeroUsize::MIN.saturating_add(MAX_PLANS - 1)),
                bytes: 0,
            }),
        }
    }
}

impl Plans {
    /// The plan remembered for `sql`, if any (it becomes the most recent).
    pub(crate) fn get(&self, sql: &str) -> Option<Arc<Plan>> {
        self.lock().plans.get(sql).cloned()
    }

    /// Remembers `plan` for `sql`, dropping the least recently used plans
    /// beyond the bounds; a statement longer than [`MAX_PLANNED_SQL`] is
    /// not remembered.
    pub(crate) fn insert(&self, sql: &str, plan: Arc<Plan>) {
        if sql.len() > MAX_PLANNED_SQL {
            return;
        }
        let mut inner = self.lock();
        if let Some((old, _)) = inner.plans.push(sql.into(), plan) {
            inner.bytes -= old.len();
        }
        inner.bytes += sql.len();
        while inner.bytes > MAX_PLAN_BYTES {
            match inner.plans.pop_lru() {
                Some((old, _)) => inner.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Forgets the plan of `sql` (it no longer matches the catalog).
    pub(crate) fn forget(&self, sql: &str) {
        let mut inner = self.lock();
        if let Some((old, _)) = inner.plans.pop_entry(sql) {
            inner.bytes -= old.len();
        }
    }

    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.plans.len(), inner.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves a consistent cache (every
        // mutation above completes or does nothing).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(description: u64) -> Arc<Plan> {
        Arc::new(Plan {
            params: vec![Type::INT8],
            columns: Vec::new(),
            description,
        })
    }

    #[test]
    fn a_plan_is_found_by_its_exact_text_until_forgotten() {
        let plans = Plans::default();
        plans.insert("SELECT $1", plan(7));
        assert_eq!(plans.get("SELECT $1").map(|p| p.description), Some(7));
        assert!(plans.get("SELECT $1 ").is_none());
        plans.forget("SELECT $1");
        assert!(plans.get("SELECT $1").is_none());
        assert_eq!(plans.len_and_bytes(), (0, 0));
    }

    #[test]
    fn replacing_a_plan_counts_its_text_once() {
        let plans = Plans::default();
        plans.insert("SELECT 1", plan(1));
        plans.insert("SELECT 1", plan(2));
        assert_eq!(plans.len_and_bytes(), (1, 8));
        assert_eq!(plans.get("SELECT 1").map(|p| p.description), Some(2));
    }

    #[test]
    fn the_count_bound_drops_the_least_recently_used() {
        let plans = Plans::default();
        for i in 0..MAX_PLANS {
            plans.insert(&format!("SELECT {i}"), plan(i as u64));
        }
        // Used now: the first is the most recent, the second the oldest.
        assert!(plans.get("SELECT 0").is_some());
        plans.insert("SELECT 'one more'", plan(0));
        assert_eq!(plans.len_and_bytes().0, MAX_PLANS);
        assert!(plans.get("SELECT 0").is_some());
        assert!(plans.get("SELECT 1").is_none());
    }

    #[test]
    fn the_byte_bound_holds_and_long_statements_are_not_kept() {
        let plans = Plans::default();
        let long = format!("SELECT '{}'", "x".repeat(MAX_PLANNED_SQL));
        plans.insert(&long, plan(1));
        assert!(plans.get(&long).is_none());
        for i in 0..200 {
            let sql = format!("SELECT {i} -- {}", "y".repeat(MAX_PLANNED_SQL - 40));
            plans.insert(&sql, plan(i));
            let (_, bytes) = plans.len_and_bytes();
            assert!(bytes <= MAX_PLAN_BYTES, "{bytes} bytes kept");
        }
        let (count, _) = plans.len_and_bytes();
        assert!(
            count >= MAX_PLAN_BYTES / MAX_PLANNED_SQL - 1,
            "{count} plans kept"
        );
    }
}
