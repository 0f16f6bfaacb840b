//! The one place domain errors become gRPC statuses (the contract in README.md's "Status codes").
//! Matches are exhaustive with no catch-all, so a new error variant forces a
//! decision here. Details go in response metadata (`poolplane-*` keys);
//! binary values (`-bin`) carry text PostgreSQL may write in any language.

use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};
use tonic::{Code, Status};

use crate::app::ReloadError;
use crate::config::ConfigError;
use crate::events::ResumeError;
use crate::monitor::AlertError;
use crate::pool::PoolError;
use crate::query::{QueryError, SessionEnd, SqlError};

pub(crate) fn pool_status(err: PoolError) -> Status {
    let message = err.to_string();
    match err {
        PoolError::NotFound(pool) => with(Code::NotFound, message, &[("poolplane-pool", pool)]),
        PoolError::AlreadyExists(pool) => {
            with(Code::AlreadyExists, message, &[("poolplane-pool", pool)])
        }
        PoolError::Draining(pool) => with(Code::Unavailable, message, &[("poolplane-pool", pool)]),
        PoolError::Exhausted { pool, waited, max }
        | PoolError::CouldNotGrow {
            pool, waited, max, ..
        } => with(
            Code::ResourceExhausted,
            message,
            &[
                ("poolplane-pool", pool),
                ("poolplane-wait-ms", waited.as_millis().to_string()),
                ("poolplane-max-connections", max.to_string()),
            ],
        ),
        PoolError::Unavailable { pool, .. } => {
            with(Code::Unavailable, message, &[("poolplane-pool", pool)])
        }
        PoolError::InvalidConfig(errors) => invalid_config(&errors),
        PoolError::TooManyPools(max) => with(
            Code::ResourceExhausted,
            message,
            &[("poolplane-max-pools", max.to_string())],
        ),
        PoolError::TargetNotAllowed { .. } => Status::new(Code::PermissionDenied, message),
        PoolError::Paused(pool) => with(Code::Unavailable, message, &[("poolplane-pool", pool)]),
        PoolError::PauseQueueFull { pool, limit } => with(
            Code::ResourceExhausted,
            message,
            &[
                ("poolplane-pool", pool),
                ("poolplane-queue-limit", limit.to_string()),
            ],
        ),
        PoolError::TargetUnreachable { .. } | PoolError::NewConnectionFails { .. } => {
            Status::new(Code::FailedPrecondition, message)
        }
        PoolError::TooManySessions { pool, max } => with(
            Code::ResourceExhausted,
            message,
            &[
                ("poolplane-pool", pool),
                ("poolplane-max-session-connections", max.to_string()),
            ],
        ),
    }
}

/// Every config problem in one INVALID_ARGUMENT; the first field in metadata.
pub(crate) fn invalid_config(errors: &[ConfigError]) -> Status {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let field = errors.first().map(|e| e.path.clone()).unwrap_or_default();
    with(
        Code::InvalidArgument,
        message,
        &[("poolplane-field", field)],
    )
}

pub(crate) fn alert_status(err: AlertError) -> Status {
    let message = err.to_string();
    match err {
        AlertError::NotFound(id) => with(
            Code::NotFound,
            message,
            &[("poolplane-alert", id.to_string())],
        ),
        AlertError::Ended(id) => with(
            Code::FailedPrecondition,
            message,
            &[("poolplane-alert", id.to_string())],
        ),
    }
}

/// A Watch that cannot resume where it asked: OUT_OF_RANGE, with the
/// oldest sequence still available (or the latest issued).
pub(crate) fn resume_status(err: ResumeError) -> Status {
    let message = err.to_string();
    match err {
        ResumeError::TooOld { oldest, .. } => with(
            Code::OutOfRange,
            message,
            &[("poolplane-oldest-sequence", oldest.to_string())],
        ),
        ResumeError::FromTheFuture { latest, .. } => with(
            Code::OutOfRange,
            message,
            &[("poolplane-latest-sequence", latest.to_string())],
        ),
    }
}

pub(crate) fn invalid_argument(field: &str, message: &str) -> Status {
    with(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        &[("poolplane-field", field.to_string())],
    )
}

pub(crate) fn query_status(err: QueryError) -> Status {
    let message = err.to_string();
    match err {
        QueryError::InvalidArgument { field, message } => invalid_argument(&field, &message),
        QueryError::Pool(err) => pool_status(err),
        QueryError::Sql(sql) => sql_status(&sql),
        QueryError::DeadlineExceeded { may_have_run } => {
            may_have_run_status(Code::DeadlineExceeded, message, may_have_run)
        }
        QueryError::ResultTooLarge { limit } => with(
            Code::ResourceExhausted,
            message,
            &[("poolplane-row-limit", limit.to_string())],
        ),
        QueryError::ResultTooManyBytes { limit } | QueryError::RowTooLarge { limit } => with(
            Code::ResourceExhausted,
            message,
            &[("poolplane-byte-limit", limit.to_string())],
        ),
        QueryError::NeedsSession { kind } => with(
            Code::FailedPrecondition,
            message,
            &[("poolplane-statement-kind", kind.to_string())],
        ),
        QueryError::OutlivesSession { kind } | QueryError::ChangesPoolDefaults { kind } => with(
            Code::FailedPrecondition,
            message,
            &[("poolplane-statement-kind", kind.to_string())],
        ),
        QueryError::CopyUnsupported => with(
            Code::Unimplemented,
            message,
            &[("poolplane-statement-kind", "COPY".to_string())],
        ),
        QueryError::ConnectionLost { may_have_run, .. } => {
            may_have_run_status(Code::Unavailable, message, may_have_run)
        }
        QueryError::ResultUnreturnable { field, .. } => with(
            Code::InvalidArgument,
            message,
            &[
                ("poolplane-field", field),
                ("poolplane-may-have-run", "true".to_string()),
            ],
        ),
        QueryError::SessionEnded { end, rolled_back } => {
            let code = match end {
                SessionEnd::ServerStopping => Code::Unavailable,
                SessionEnd::IdleTimeout
                | SessionEnd::IdleInTransactionTimeout
                | SessionEnd::MaxDuration
                | SessionEnd::Killed => Code::Aborted,
            };
            with(
                code,
                message,
                &[
                    ("poolplane-session-end", end.as_str().to_string()),
                    ("poolplane-rolled-back", rolled_back.to_string()),
                ],
            )
        }
    }
}

pub(crate) fn reload_status(err: ReloadError) -> Status {
    match err {
        ReloadError::NoFile => Status::new(Code::FailedPrecondition, err.to_string()),
        // The whole list: an operator fixes them all at once.
        ReloadError::Invalid(errors) => Status::new(Code::InvalidArgument, errors.join("\n")),
    }
}

/// KillSession of a session that is not (or no longer) live.
pub(crate) fn session_not_found(id: u64) -> Status {
    with(
        Code::NotFound,
        format!("no live session {id}"),
        &[("poolplane-session", id.to_string())],
    )
}

/// A session statement's error: the code Execute would end with, and
/// PostgreSQL's report in full (the session goes on, so nothing needs to
/// fit in response headers).
pub(crate) fn statement_error(err: QueryError) -> crate::proto::StatementError {
    let (sqlstate, message, detail, hint) = match &err {
        QueryError::Sql(sql) => (
            sql.sqlstate.clone(),
            sql.message.clone(),
            sql.detail.clone().unwrap_or_default(),
            sql.hint.clone().unwrap_or_default(),
        ),
        other => (
            String::new(),
            other.to_string(),
            String::new(),
            String::new(),
        ),
    };
    crate::proto::StatementError {
        code: query_status(err).code() as i32,
        sqlstate,
        message,
        detail,
        hint,
    }
}

/// A call that ended without an answer from PostgreSQL says whether its
/// statement may have taken effect, so a retrying client knows.
fn may_have_run_status(code: Code, message: String, may_have_run: bool) -> Status {
    let value = if may_have_run { "true" } else { "false" };
    with(
        code,
        message,
        &[("poolplane-may-have-run", value.to_string())],
    )
}

fn sql_status(sql: &SqlError) -> Status {
    let mut status = Status::new(
        sqlstate_code(&sql.sqlstate),
        clip(&sql.to_string(), MAX_MESSAGE_BYTES),
    );
    let metadata = status.metadata_mut();
    insert_ascii(metadata, "poolplane-sqlstate", &sql.sqlstate);
    insert_binary(metadata, "poolplane-message-bin", &sql.message);
    if let Some(detail) = &sql.detail {
        insert_binary(metadata, "poolplane-detail-bin", detail);
    }
    if let Some(hint) = &sql.hint {
        insert_binary(metadata, "poolplane-hint-bin", hint);
    }
    if let Some(position) = sql.position {
        insert_ascii(metadata, "poolplane-position", &position.to_string());
    }
    if let Some(index) = sql.batch_index {
        insert_ascii(metadata, "poolplane-batch-index", &index.to_string());
    }
    status
}

/// gRPC code for a SQLSTATE, by class (the first two characters), with the
/// few codes that need their own answer first. Documented in the README.
pub(crate) fn sqlstate_code(sqlstate: &str) -> Code {
    match sqlstate {
        "40001" | "40P01" => return Code::Aborted,
        "23505" => return Code::AlreadyExists,
        "42501" => return Code::PermissionDenied,
        "57014" => return Code::Cancelled,
        _ => {}
    }
    match sqlstate.get(..2).unwrap_or("") {
        // data exception, syntax error or access rule violation, cardinality violation
        "22" | "42" | "21" | "2F" | "39" | "3F" | "44" => Code::InvalidArgument,
        // integrity constraint, invalid transaction state, object not in prerequisite state, raise_exception
        "23" | "25" | "2B" | "2D" | "55" | "P0" | "0B" => Code::FailedPrecondition,
        "40" => Code::Aborted,
        "0A" => Code::Unimplemented,
        "53" | "54" => Code::ResourceExhausted,
        // connection exception, operator intervention (shutdown, terminated backend)
        "08" | "57" | "58" => Code::Unavailable,
        "28" => Code::Unavailable,
        "XX" => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Most bytes of an error message on the wire: messages quote the
/// caller's input (a pool name, a value, PostgreSQL's echo of it), and
/// response headers are small (tonic's default limit is 16 KiB in all).
const MAX_MESSAGE_BYTES: usize = 1024;
/// Most bytes of one metadata value.
const MAX_METADATA_BYTES: usize = 512;

/// `text`, cut at a character boundary to at most about `max` bytes, saying
/// how long it was.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

fn with(code: Code, message: String, metadata: &[(&'static str, String)]) -> Status {
    let mut status = Status::new(code, clip(&message, MAX_MESSAGE_BYTES));
    for (key, value) in metadata {
        insert_ascii(status.metadata_mut(), key, value);
    }
    status
}

fn insert_ascii(metadata: &mut MetadataMap, key: &'static str, value: &str) {
    // Values come from our own formatting or PostgreSQL; a non-ASCII pool
    // name cannot exist (validated), so failing here only drops the extra.
    if let Ok(value) = AsciiMetadataValue::try_from(clip(value, MAX_METADATA_BYTES)) {
        metadata.insert(key, value);
    }
}

fn insert_binary(metadata: &mut MetadataMap, key: &'static str, value: &str) {
    let value = clip(value, MAX_METADATA_BYTES);
    metadata.insert_bin(key, BinaryMetadataValue::from_bytes(value.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long, 101);
        assert!(clipped.starts_with(&"é".repeat(50)));
        assert!(clipped.ends_with("(2000 bytes in all)"), "{clipped}");
        assert!(clipped.len() < 140);
    }

    #[test]
    fn sqlstate_classes_map_as_documented() {
        assert_eq!(sqlstate_code("42601"), Code::InvalidArgument);
        assert_eq!(sqlstate_code("22012"), Code::InvalidArgument);
        assert_eq!(sqlstate_code("23503"), Code::FailedPrecondition);
        assert_eq!(sqlstate_code("23505"), Code::AlreadyExists);
        assert_eq!(sqlstate_code("40001"), Code::Aborted);
        assert_eq!(sqlstate_code("40P01"), Code::Aborted);
        assert_eq!(sqlstate_code("42501"), Code::PermissionDenied);
        assert_eq!(sqlstate_code("57P01"), Code::Unavailable);
        assert_eq!(sqlstate_code("XX000"), Code::Internal);
        assert_eq!(sqlstate_code("ZZ999"), Code::Unknown);
    }
}
