//! The spans of the query path: one per acquisition and one per statement,
//! children of the call's span, with OpenTelemetry's database attributes
//! (`db.system.name`, `db.operation.name`, `db.namespace`, the pool).
//!
//! What never goes on a span: parameter values. The SQL text goes on only
//! when the server's `trace_sql_text` asks, cut to
//! [`TRACED_SQL_TEXT_BYTES`]; the operation name is a keyword from a fixed
//! list, never a word of the caller's choosing.
//!
//! They are DEBUG spans: off (and free) unless traces are exported or the
//! log filter asks for them.

use tracing::field::Empty;
use tracing::Span;

use super::error::QueryError;
use crate::config::TRACED_SQL_TEXT_BYTES;
use crate::pool::ManagedPool;

/// The span of one acquisition from `pool`.
pub(crate) fn acquisition(pool: &ManagedPool) -> Span {
    tracing::debug_span!(
        "acquire",
        otel.name = "acquire",
        db.system.name = "postgresql",
        db.client.connection.pool.name = %pool.name(),
    )
}

/// The span of one statement (`sql`) on `pool`; `with_text`: put the SQL
/// text on it.
pub(crate) fn statement(pool: &ManagedPool, sql: &str, with_text: bool) -> Span {
    let operation = operation_name(sql);
    let span = tracing::debug_span!(
        "statement",
        otel.name = operation.unwrap_or("postgresql"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.namespace = %pool.config().database,
        db.client.connection.pool.name = %pool.name(),
        db.query.text = Empty,
        db.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if with_text && !span.is_disabled() {
        span.record("db.query.text", cut(sql, TRACED_SQL_TEXT_BYTES));
    }
    span
}

/// Records that the statement failed: its SQLSTATE (or the error's kind).
pub(crate) fn record_error(span: &Span, error: &QueryError) {
    span.record("otel.status_code", "ERROR");
    match error.sqlstate() {
        Some(sqlstate) => {
            span.record("db.response.status_code", sqlstate);
            span.record("error.type", sqlstate);
        }
        None => {
            span.record("error.type", error.kind());
        }
    }
}

/// The statement's command keyword, if it is one PostgreSQL knows.
fn operation_name(sql: &str) -> Option<&'static str> {
    let word = first_word(sql)?;
    OPERATIONS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(word))
        .copied()
}

const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "WITH",
    "VALUES",
    "TABLE",
    "CALL",
    "DO",
    "COPY",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "COMMENT",
    "ANALYZE",
    "VACUUM",
    "EXPLAIN",
    "SHOW",
    "SET",
    "RESET",
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "DECLARE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "LOCK",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DISCARD",
    "REFRESH",
    "REINDEX",
    "CLUSTER",
    "CHECKPOINT",
    "SECURITY",
    "IMPORT",
    "LOAD",
];

/// The first word after blanks and comments.
fn first_word(sql: &str) -> Option<&str> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|word| !word.is_empty())
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operation_is_a_known_keyword_after_comments() {
        assert_eq!(operation_name("select 1"), Some("SELECT"));
        assert_eq!(
            operation_name("  -- why\n /* what */ INSERT INTO t VALUES (1)"),
            Some("INSERT")
        );
        assert_eq!(operation_name("(SELECT 1)"), None);
        assert_eq!(operation_name("hunter2 is my password"), None);
        assert_eq!(operation_name("/* never closed"), None);
        assert_eq!(operation_name(""), None);
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("short", 100), "short");
    }
}
