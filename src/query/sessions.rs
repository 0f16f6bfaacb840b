//! The table of live sessions: what ListSessions shows, what KillSession
//! ends and what leak detection watches. Each session's own task writes
//! its entry (`session.rs`); the entry leaves the table when that task's
//! [`Registered`] guard is dropped, however the session ended.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::pool::TransactionStatus;

/// How much of a statement's text a session's entry shows: its start,
/// with every constant replaced by a placeholder (`$1`, as
/// pg_stat_statements shows statements), so neither parameter values nor
/// literals (a password in `ALTER ROLE ... PASSWORD '...'`) are shown.
pub const STATEMENT_PREFIX_CHARS: usize = 200;

/// Every live session of the server.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Tracked>>>,
    /// Sessions reported as leaks that have ended since the last look.
    ended_leaks: Mutex<Vec<SessionInfo>>,
}

/// Who holds a session, fixed when it opens.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// The authenticated caller's name.
    pub caller: String,
    /// The client's address, when known.
    pub peer: String,
}

/// A session as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: u64,
    pub pool: String,
    pub caller: String,
    pub peer: String,
    pub opened_at: SystemTime,
    /// How long it has held its connection.
    pub age: Duration,
    /// A statement is running now.
    pub running: bool,
    pub transaction: TransactionStatus,
    /// The start of the last statement's text (`STATEMENT_PREFIX_CHARS`).
    pub last_statement: String,
    /// Since the last statement ended (or the session opened), when not running.
    pub idle_for: Duration,
}

pub(crate) struct Tracked {
    id: u64,
    pool: String,
    holder: Holder,
    opened_at: SystemTime,
    started: Instant,
    leak_threshold: Option<Duration>,
    activity: Mutex<Activity>,
    killed: AtomicBool,
    kill: Notify,
    leak_reported: AtomicBool,
}

struct Activity {
    running: bool,
    transaction: TransactionStatus,
    /// As sent; shown only through [`shown_statement`].
    last_statement: Arc<str>,
    since: Instant,
}

/// What may be shown of a statement. A query or transaction control
/// shows its text with every constant and comment replaced by `$n` (as
/// pg_stat_statements shows statements), read by PostgreSQL's own
/// scanner; any other statement (`ALTER ROLE ... PASSWORD`, `CREATE
/// SERVER ... OPTIONS (password ...)`, `COMMENT ... IS ...`) shows only
/// its leading keywords, since a secret may stand anywhere in it, even
/// unquoted. Cut at `STATEMENT_PREFIX_CHARS`.
fn shown_statement(sql: &str) -> String {
    let shown = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) if shows_text(&parsed) => without_constants(sql),
        Ok(_) => format!("{} … (text not shown)", leading_keywords(sql)),
        Err(_) => format!("{} … (not parsed; not shown)", leading_keywords(sql)),
    };
    shown.chars().take(STATEMENT_PREFIX_CHARS).collect()
}

/// Statements whose text is shown (constants replaced): queries and
/// transaction control, where every value is a constant token.
fn shows_text(parsed: &pg_query::ParseResult) -> bool {
    use pg_query::NodeEnum as N;
    let statements = &parsed.protobuf.stmts;
    statements.len() == 1
        && statements.iter().all(|raw| {
            matches!(
                raw.stmt.as_ref().and_then(|stmt| stmt.node.as_ref()),
                Some(
                    N::SelectStmt(_)
                        | N::InsertStmt(_)
                        | N::UpdateStmt(_)
                        | N::DeleteStmt(_)
                        | N::MergeStmt(_)
                        | N::TransactionStmt(_)
                        | N::CallStmt(_)
                        | N::LockStmt(_)
                )
            )
        })
}

/// `sql` with every constant and comment token replaced by `$1`, `$2`, ...
fn without_constants(sql: &str) -> String {
    use pg_query::protobuf::Token as T;
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return format!("{} … (not parsed; not shown)", leading_keywords(sql));
    };
    let hidden = [
        T::Sconst,
        T::Usconst,
        T::Bconst,
        T::Xconst,
        T::Iconst,
        T::Fconst,
        T::SqlComment,
        T::CComment,
    ]
    .map(|token| token as i32);
    // Numbered after the statement's own parameters, so `$1` stays its.
    let own_parameters = tokens
        .iter()
        .filter(|token| token.token == T::Param as i32)
        .filter_map(|token| {
            let start = usize::try_from(token.start).ok()?;
            let end = usize::try_from(token.end).ok()?;
            sql.get(start + 1..end)?.parse::<u32>().ok()
        })
        .max()
        .unwrap_or(0);
    let mut shown = String::with_capacity(sql.len());
    let mut at = 0;
    let mut placeholders = own_parameters;
    for token in tokens.iter().filter(|token| hidden.contains(&token.token)) {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end))
        else {
            continue;
        };
        let (Some(before), true) = (sql.get(at..start), end <= sql.len()) else {
            continue;
        };
        shown.push_str(before);
        placeholders += 1;
        shown.push_str(&format!("${placeholders}"));
        at = end;
    }
    shown.push_str(sql.get(at..).unwrap_or_default());
    shown
}

/// The keywords a statement starts with (`ALTER ROLE`, `CREATE SERVER`),
/// up to its first name or value.
fn leading_keywords(sql: &str) -> String {
    use pg_query::protobuf::KeywordKind as K;
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return String::new();
    };
    tokens
        .iter()
        .take_while(|token| token.keyword_kind != K::NoKeyword as i32)
        .take(4)
        .filter_map(|token| {
            sql.get(usize::try_from(token.start).ok()?..usize::try_from(token.end).ok()?)
        })
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A session's place in the table; dropping it takes the session out.
pub(crate) struct Registered {
    sessions: Arc<Sessions>,
    tracked: Arc<Tracked>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    /// Enters a session that holds a connection of `pool` now.
    pub(crate) fn register(
        self: &Arc<Self>,
        pool: &str,
        holder: Holder,
        leak_threshold: Option<Duration>,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let tracked = Arc::new(Tracked {
            id,
            pool: pool.to_string(),
            holder,
            opened_at: SystemTime::now(),
            started: now,
            leak_threshold,
            activity: Mutex::new(Activity {
                running: false,
                transaction: TransactionStatus::Idle,
                last_statement: Arc::from(""),
                since: now,
            }),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            leak_reported: AtomicBool::new(false),
        });
        locked(&self.live).insert(id, Arc::clone(&tracked));
        Registered {
            sessions: Arc::clone(self),
            tracked,
        }
    }

    /// Live sessions, of one pool or all, oldest first.
    pub fn list(&self, pool: Option<&str>) -> Vec<SessionInfo> {
        locked(&self.live)
            .values()
            .filter(|tracked| pool.is_none_or(|pool| tracked.pool == pool))
            .map(|tracked| tracked.info())
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<SessionInfo> {
        locked(&self.live).get(&id).map(|tracked| tracked.info())
    }

    /// Asks a session to end (its running statement is cancelled in
    /// PostgreSQL, its transaction rolled back). Returns what it was.
    pub fn kill(&self, id: u64) -> Option<SessionInfo> {
        let tracked = locked(&self.live).get(&id).cloned()?;
        tracked.killed.store(true, Ordering::Release);
        tracked.kill.notify_waiters();
        Some(tracked.info())
    }

    /// Sessions that have held their connection past their pool's
    /// `leak_detection_threshold_ms`, each reported once.
    pub fn new_leaks(&self) -> Vec<SessionInfo> {
        locked(&self.live)
            .values()
            .filter(|tracked| {
                tracked
                    .leak_threshold
                    .is_some_and(|threshold| tracked.started.elapsed() >= threshold)
                    && !tracked.leak_reported.swap(true, Ordering::AcqRel)
            })
            .map(|tracked| tracked.info())
            .collect()
    }

    /// Sessions reported as leaks that have ended since the last call.
    pub fn ended_leaks(&self) -> Vec<SessionInfo> {
        std::mem::take(&mut *locked(&self.ended_leaks))
    }

    pub fn count(&self, pool: &str) -> usize {
        locked(&self.live)
            .values()
            .filter(|tracked| tracked.pool == pool)
            .count()
    }
}

impl Tracked {
    fn info(&self) -> SessionInfo {
        let activity = locked(&self.activity);
        SessionInfo {
            id: self.id,
            pool: self.pool.clone(),
            caller: self.holder.caller.clone(),
            peer: self.holder.peer.clone(),
            opened_at: self.opened_at,
            age: self.started.elapsed(),
            running: activity.running,
            transaction: activity.transaction,
            last_statement: if activity.last_statement.is_empty() {
                String::new()
            } else {
                shown_statement(&activity.last_statement)
            },
            idle_for: if activity.running {
                Duration::ZERO
            } else {
                activity.since.elapsed()
            },
        }
    }
}

impl Registered {
    pub(crate) fn id(&self) -> u64 {
        self.tracked.id
    }

    /// A statement starts (shown later with its constants replaced).
    pub(crate) fn statement_starts(&self, sql: &str) {
        let text = Arc::from(sql);
        let mut activity = locked(&self.tracked.activity);
        activity.running = true;
        activity.last_statement = text;
        activity.since = Instant::now();
    }

    pub(crate) fn statement_ends(&self, transaction: TransactionStatus) {
        let mut activity = locked(&self.tracked.activity);
        activity.running = false;
        activity.transaction = transaction;
        activity.since = Instant::now();
    }

    /// Resolves once an operator kills the session (at once if one has).
    pub(crate) async fn killed(&self) {
        loop {
            let notified = self.tracked.kill.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.tracked.killed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        locked(&self.sessions.live).remove(&self.tracked.id);
        if self.tracked.leak_reported.load(Ordering::Acquire) {
            locked(&self.sessions.ended_leaks).push(self.tracked.info());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_guard_and_a_leak_is_reported_once_then_resolved() {
        let sessions = Sessions::new();
        let holder = Holder {
            caller: "svc".into(),
            peer: "127.0.0.1:1".into(),
        };
        let leaking = sessions.register("app", holder.clone(), Some(Duration::ZERO));
        let other = sessions.register("other", holder, None);
        leaking.statement_starts(&format!("SELECT {}", "x".repeat(500)));
        let listed = sessions.list(Some("app"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_statement.len(), STATEMENT_PREFIX_CHARS);
        assert!(listed[0].running);
        assert_eq!(sessions.new_leaks().len(), 1);
        assert!(sessions.new_leaks().is_empty(), "reported once");
        assert!(sessions.ended_leaks().is_empty());
        let id = leaking.id();
        drop(leaking);
        assert_eq!(
            sessions
                .ended_leaks()
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            [id]
        );
        assert_eq!(sessions.list(None).len(), 1);
        drop(other);
        assert!(sessions.list(None).is_empty());
        assert!(
            sessions.ended_leaks().is_empty(),
            "a session never leaking resolves nothing"
        );
    }

    #[test]
    fn a_statement_is_shown_without_its_constants() {
        for (sql, secret) in [
            ("ALTER ROLE victim PASSWORD 'VictimPw_555'", "VictimPw_555"),
            ("CREATE ROLE x LOGIN PASSWORD 'pw-123456'", "pw-123456"),
            (
                "SELECT * FROM t WHERE token = 'abc-secret' AND n = 42",
                "abc-secret",
            ),
            ("SELECT $q$dollar-secret$q$", "dollar-secret"),
            ("SELECT E'escaped-secret', U&'unicode-secret'", "secret"),
            ("SELECT 1 -- comment-secret", "comment-secret"),
            ("SELECT /* block-secret */ 1", "block-secret"),
            ("SET app.key = 'set-secret'", "set-secret"),
            (
                "ALTER ROLE app IN DATABASE d SET app.pw = Unquoted_Secret",
                "Unquoted_Secret",
            ),
            (
                "CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (password 'fdw-secret')",
                "fdw-secret",
            ),
            (
                "COMMENT ON TABLE t IS 'comment-on-secret'",
                "comment-on-secret",
            ),
            ("PREPARE p AS SELECT 'prepared-secret'", "prepared-secret"),
            ("garbage ((( 'unparsed-secret'", "unparsed-secret"),
        ] {
            let shown = shown_statement(sql);
            assert!(!shown.contains(secret), "{sql} shown as {shown}");
            assert!(!shown.is_empty());
        }
        assert_eq!(
            shown_statement("SELECT a FROM t WHERE b = 1 AND c = 'x'"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(
            shown_statement("ALTER ROLE victim PASSWORD 'x'"),
            "ALTER ROLE … (text not shown)"
        );
        assert_eq!(shown_statement("BEGIN"), "BEGIN");
        // Found by a red team: a replaced constant took the number of the
        // statement's own `$1`.
        assert_eq!(
            shown_statement("SELECT pg_sleep(0.05), $1::int"),
            "SELECT pg_sleep($2), $1::int"
        );
    }

    #[tokio::test]
    async fn a_kill_wakes_the_session_even_if_it_came_first() {
        let sessions = Sessions::new();
        let session = sessions.register("app", Holder::default(), None);
        assert!(sessions.kill(session.id()).is_some());
        session.killed().await;
        assert!(sessions.kill(999).is_none());
    }
}
