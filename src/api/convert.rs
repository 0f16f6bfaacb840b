//! Protobuf <-> domain translation for values, results and pool reports.
//! Pure functions; the only errors are malformed requests.

use std::time::{Duration, SystemTime};

use tonic::Status;

use super::status::{invalid_argument, statement_error};
use crate::events::{Event, EventDetail, EventKind, ReloadReport};
use crate::health::{HealthReport, HealthState};
use crate::monitor::{Alert, AlertRule, AlertState, MetricsSample, Severity};
use crate::pool::{PoolInfo, PoolState, StatsSnapshot, TransactionStatus};
use crate::proto::{self, event::Detail, value::Kind};
use crate::query::{
    Column, Instant, Interval, Isolation, QueryResult, SessionInfo, SessionOptions, SessionOutput,
    SqlValue, StreamPart,
};

pub(crate) fn values_from_proto(
    field: &str,
    values: Vec<proto::Value>,
) -> Result<Vec<SqlValue>, Status> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| value_from_proto(&format!("{field}[{i}]"), value))
        .collect()
}

fn value_from_proto(field: &str, value: proto::Value) -> Result<SqlValue, Status> {
    let Some(kind) = value.kind else {
        return Err(invalid_argument(
            field,
            "value has no kind set (use null for SQL NULL)",
        ));
    };
    Ok(match kind {
        Kind::Null(_) => SqlValue::Null,
        Kind::BoolValue(v) => SqlValue::Bool(v),
        Kind::IntValue(v) => SqlValue::Int(v),
        Kind::FloatValue(v) => SqlValue::Float(v),
        Kind::NumericValue(v) => SqlValue::Numeric(v),
        Kind::TextValue(v) => SqlValue::Text(v),
        Kind::BytesValue(v) => SqlValue::Bytes(v),
        Kind::UuidValue(v) => SqlValue::Uuid(v),
        Kind::DateValue(v) => SqlValue::Date(v),
        Kind::TimeValue(v) => SqlValue::Time(v),
        Kind::TimestampValue(v) => SqlValue::Timestamp(v),
        Kind::TimestamptzValue(ts) => {
            if !(0..1_000_000_000).contains(&ts.nanos) {
                return Err(invalid_argument(
                    field,
                    "timestamptz nanos must be in 0..1e9",
                ));
            }
            if ts.nanos % 1000 != 0 {
                return Err(invalid_argument(
                    field,
                    "timestamptz has nanoseconds; PostgreSQL keeps microseconds: send a multiple of 1000",
                ));
            }
            let micros = ts
                .seconds
                .checked_mul(1_000_000)
                .and_then(|us| us.checked_add(i64::from(ts.nanos / 1000)))
                .ok_or_else(|| invalid_argument(field, "timestamptz out of range"))?;
            SqlValue::Timestamptz(Instant::UnixMicros(i128::from(micros)))
        }
        Kind::IntervalValue(iv) => SqlValue::Interval(Interval {
            months: iv.months,
            days: iv.days,
            microseconds: iv.microseconds,
        }),
        Kind::JsonValue(v) => SqlValue::Json(v),
        Kind::ArrayValue(array) => SqlValue::Array(values_from_proto(field, array.elements)?),
    })
}

/// google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z.
const TIMESTAMP_MIN_SECONDS: i64 = -62_135_596_800;
const TIMESTAMP_MAX_SECONDS: i64 = 253_402_300_799;

/// An instant as ISO 8601 text in UTC with an expanded, signed year
/// (`+294276-12-31T23:59:59.000000Z`; 1 BC is year 0, so 4713 BC is
/// `-4712-...`). Computed by hand: chrono stops at year 262143, PostgreSQL
/// at 294276.
fn iso_instant(unix_micros: i128) -> String {
    let days = unix_micros.div_euclid(86_400_000_000);
    let of_day = unix_micros.rem_euclid(86_400_000_000);
    let (year, month, day) = civil_from_days(days);
    let seconds = of_day / 1_000_000;
    format!(
        "{}{:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        if year < 0 { "-" } else { "+" },
        year.abs(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        of_day % 1_000_000
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's algorithm, exact for any count).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month as u32, day as u32)
}

pub(crate) fn value_to_proto(value: SqlValue) -> proto::Value {
    let kind = match value {
        SqlValue::Null => Kind::Null(proto::NullValue::NullValue as i32),
        SqlValue::Bool(v) => Kind::BoolValue(v),
        SqlValue::Int(v) => Kind::IntValue(v),
        SqlValue::Float(v) => Kind::FloatValue(v),
        SqlValue::Numeric(v) => Kind::NumericValue(v),
        SqlValue::Text(v) => Kind::TextValue(v),
        SqlValue::Bytes(v) => Kind::BytesValue(v),
        SqlValue::Uuid(v) => Kind::UuidValue(v),
        SqlValue::Date(v) => Kind::DateValue(v),
        SqlValue::Time(v) => Kind::TimeValue(v),
        SqlValue::Timestamp(v) => Kind::TimestampValue(v),
        SqlValue::Timestamptz(Instant::UnixMicros(us)) => {
            let seconds = i64::try_from(us.div_euclid(1_000_000))
                .ok()
                .filter(|s| (TIMESTAMP_MIN_SECONDS..=TIMESTAMP_MAX_SECONDS).contains(s));
            if let Some(seconds) = seconds {
                Kind::TimestamptzValue(prost_types::Timestamp {
                    seconds,
                    // rem_euclid keeps this in 0..1e6, so the product fits an i32.
                    nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
                })
            } else {
                // google.protobuf.Timestamp covers years 1 to 9999 only;
                // standard clients cannot read one outside. Documented in
                // value.proto.
                Kind::TextValue(iso_instant(us))
            }
        }
        // google.protobuf.Timestamp has no infinity; documented in value.proto.
        SqlValue::Timestamptz(Instant::Infinity) => Kind::TextValue("infinity".into()),
        SqlValue::Timestamptz(Instant::NegInfinity) => Kind::TextValue("-infinity".into()),
        SqlValue::Interval(iv) => Kind::IntervalValue(proto::Interval {
            months: iv.months,
            days: iv.days,
            microseconds: iv.microseconds,
        }),
        SqlValue::Json(v) => Kind::JsonValue(v),
        SqlValue::Array(elements) => Kind::ArrayValue(proto::Array {
            elements: elements.into_iter().map(value_to_proto).collect(),
        }),
    };
    proto::Value { kind: Some(kind) }
}

pub(crate) fn result_to_proto(result: QueryResult) -> proto::ExecuteResponse {
    proto::ExecuteResponse {
        columns: result.columns.into_iter().map(column_to_proto).collect(),
        rows: rows_to_proto(result.rows),
        rows_affected: result.rows_affected,
        truncated: result.truncated,
    }
}

pub(crate) fn stream_part_to_proto(part: StreamPart) -> proto::ExecuteStreamResponse {
    use proto::execute_stream_response::Part;
    let part = match part {
        StreamPart::Columns(columns) => Part::Header(proto::ResultHeader {
            columns: columns.into_iter().map(column_to_proto).collect(),
        }),
        StreamPart::Rows(rows) => Part::Rows(proto::RowChunk {
            rows: rows_to_proto(rows),
        }),
        StreamPart::End {
            rows_affected,
            truncated,
        } => Part::End(proto::ResultEnd {
            rows_affected,
            truncated,
        }),
    };
    proto::ExecuteStreamResponse { part: Some(part) }
}

pub(crate) fn session_options_from_proto(
    open: &proto::SessionOpen,
) -> Result<SessionOptions, Status> {
    use proto::IsolationLevel as L;
    let isolation = match L::try_from(open.isolation) {
        Ok(L::Unspecified) => None,
        Ok(L::ReadCommitted) => Some(Isolation::ReadCommitted),
        Ok(L::RepeatableRead) => Some(Isolation::RepeatableRead),
        Ok(L::Serializable) => Some(Isolation::Serializable),
        Err(_) => {
            return Err(invalid_argument(
                "open.isolation",
                &format!("unknown isolation level {}", open.isolation),
            ))
        }
    };
    // PostgreSQL's statement_timeout is an int4 of milliseconds.
    if i32::try_from(open.statement_timeout_ms).is_err() {
        return Err(invalid_argument(
            "open.statement_timeout_ms",
            &format!(
                "{} ms is more than PostgreSQL allows: at most {} ms",
                open.statement_timeout_ms,
                i32::MAX
            ),
        ));
    }
    let millis = |ms: u32| (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    Ok(SessionOptions {
        isolation,
        read_only: open.read_only,
        deferrable: open.deferrable,
        idle_timeout: millis(open.idle_timeout_ms),
        statement_timeout: millis(open.statement_timeout_ms),
    })
}

pub(crate) fn reload_to_proto(report: ReloadReport) -> proto::ReloadConfigResponse {
    proto::ReloadConfigResponse {
        created: report.created,
        removed: report.removed,
        changed: report.changed,
        reconnected: report.reconnected,
        unchanged: report.unchanged,
        restart_needed: report.restart_needed,
        failed: report.failed,
        errors: Vec::new(),
    }
}

pub(crate) fn session_to_proto(session: &SessionInfo) -> proto::SessionInfo {
    proto::SessionInfo {
        session_id: session.id,
        pool: session.pool.clone(),
        caller: session.caller.clone(),
        peer: session.peer.clone(),
        state: if session.running {
            proto::SessionState::Active
        } else {
            proto::SessionState::Idle
        } as i32,
        transaction: transaction_status_to_proto(session.transaction) as i32,
        opened_at: Some(timestamp(session.opened_at)),
        age_ms: millis(session.age),
        idle_ms: millis(session.idle_for),
        last_statement: session.last_statement.clone(),
    }
}

pub(crate) fn transaction_status_to_proto(status: TransactionStatus) -> proto::TransactionStatus {
    match status {
        TransactionStatus::Idle => proto::TransactionStatus::Idle,
        TransactionStatus::InTransaction => proto::TransactionStatus::InTransaction,
        TransactionStatus::Failed => proto::TransactionStatus::Failed,
    }
}

pub(crate) fn session_output_to_proto(output: SessionOutput) -> proto::SessionResponse {
    use proto::session_response::Response as R;
    use proto::statement_result::Outcome;
    let response = match output {
        SessionOutput::Opened { id } => R::Opened(proto::SessionOpened { session_id: id }),
        SessionOutput::Answer {
            index,
            result,
            transaction,
        } => R::Result(proto::StatementResult {
            index,
            outcome: Some(match result {
                Ok(result) => Outcome::Result(result_to_proto(result)),
                Err(error) => Outcome::Error(statement_error(error)),
            }),
            transaction: transaction_status_to_proto(transaction) as i32,
        }),
        SessionOutput::Closed { rolled_back } => R::Closed(proto::SessionClosed { rolled_back }),
    };
    proto::SessionResponse {
        response: Some(response),
    }
}

fn rows_to_proto(rows: Vec<Vec<SqlValue>>) -> Vec<proto::Row> {
    rows.into_iter()
        .map(|row| proto::Row {
            values: row.into_iter().map(value_to_proto).collect(),
        })
        .collect()
}

fn column_to_proto(column: Column) -> proto::Column {
    proto::Column {
        name: column.name,
        type_name: column.type_name,
        type_oid: column.type_oid,
    }
}

pub(crate) fn pool_to_proto(info: PoolInfo, health: &HealthReport) -> proto::Pool {
    let broken_connections = info.stats.broken_connections;
    let config = info.config;
    let limits = config.limits;
    proto::Pool {
        spec: Some(proto::PoolSpec {
            name: config.name,
            host: config.host,
            port: u32::from(config.port),
            database: config.database,
            user: config.user,
            application_name: config.application_name,
            sslmode: config.sslmode.as_str().to_string(),
            max_connections: limits.max_connections,
            min_connections: limits.min_connections,
            connection_timeout_ms: millis(limits.connection_timeout),
            idle_timeout_ms: millis(limits.idle_timeout),
            health_check_interval_ms: millis(limits.health_check_interval),
            statement_timeout_ms: limits.statement_timeout.map(millis).unwrap_or(0),
            password_source: config.password_source.to_string(),
            max_lifetime_ms: millis(limits.max_lifetime),
            utilization_alert_threshold: config.alerts.utilization,
            error_rate_alert_threshold: config.alerts.error_rate,
            acquire_wait_alert_threshold_ms: millis(config.alerts.acquire_wait),
            max_session_connections: config.sessions.max_connections(limits.max_connections),
            session_idle_timeout_ms: millis(config.sessions.idle_timeout),
            idle_in_transaction_timeout_ms: config
                .sessions
                .idle_in_transaction_timeout
                .map_or(0, millis),
            max_session_duration_ms: config.sessions.max_duration.map_or(0, millis),
            leak_detection_threshold_ms: config.sessions.leak_threshold.map_or(0, millis),
        }),
        state: state_to_proto(info.state) as i32,
        statistics: Some(stats_to_proto(&info.stats, limits.max_connections)),
        last_error: info.last_error.unwrap_or_default(),
        created_at: Some(timestamp(info.created_at)),
        health: Some(health_to_proto(health, broken_connections)),
        paused: info.paused,
    }
}

pub(crate) fn health_to_proto(report: &HealthReport, broken_connections: u64) -> proto::PoolHealth {
    proto::PoolHealth {
        state: health_state_to_proto(report.state) as i32,
        probe_latency_ms: report.last_latency.map(ms_f64).unwrap_or(0.0),
        last_error: report.last_error.clone().unwrap_or_default(),
        last_check: report.last_check.map(timestamp),
        consecutive_failures: report.consecutive_failures,
        broken_connections,
        checks: report.checks,
    }
}

pub(crate) fn health_state_to_proto(state: HealthState) -> proto::HealthState {
    match state {
        HealthState::Unknown => proto::HealthState::Unknown,
        HealthState::Healthy => proto::HealthState::Healthy,
        HealthState::Degraded => proto::HealthState::Degraded,
        HealthState::Unhealthy => proto::HealthState::Unhealthy,
    }
}

/// The filterable kind a client asked for; `None` for the stream-control
/// kinds, which every subscriber gets anyway.
pub(crate) fn event_kind_from_proto(kind: i32) -> Result<Option<EventKind>, Status> {
    let kind = proto::EventKind::try_from(kind)
        .map_err(|_| invalid_argument("kinds", &format!("{kind} is not an EventKind")))?;
    Ok(match kind {
        proto::EventKind::Unspecified => {
            return Err(invalid_argument(
                "kinds",
                "EVENT_KIND_UNSPECIFIED is not a kind",
            ))
        }
        proto::EventKind::PoolCreated => Some(EventKind::PoolCreated),
        proto::EventKind::PoolUpdated => Some(EventKind::PoolUpdated),
        proto::EventKind::PoolRemoved => Some(EventKind::PoolRemoved),
        proto::EventKind::HealthChanged => Some(EventKind::HealthChanged),
        proto::EventKind::ConnectionLost => Some(EventKind::ConnectionLost),
        proto::EventKind::ConnectionRecovered => Some(EventKind::ConnectionRecovered),
        proto::EventKind::CheckCompleted => Some(EventKind::CheckCompleted),
        proto::EventKind::AlertTriggered => Some(EventKind::AlertTriggered),
        proto::EventKind::AlertAcknowledged => Some(EventKind::AlertAcknowledged),
        proto::EventKind::AlertResolved => Some(EventKind::AlertResolved),
        proto::EventKind::MetricsSnapshot => Some(EventKind::MetricsSnapshot),
        proto::EventKind::SessionLeak => Some(EventKind::SessionLeak),
        proto::EventKind::ConfigReloaded => Some(EventKind::ConfigReloaded),
        proto::EventKind::ConfigReloadFailed => Some(EventKind::ConfigReloadFailed),
        proto::EventKind::Snapshot | proto::EventKind::SnapshotEnd | proto::EventKind::Lagged => {
            None
        }
    })
}

pub(crate) fn event_to_proto(event: &Event) -> proto::Event {
    let (kind, detail) = match &event.detail {
        EventDetail::PoolCreated => (proto::EventKind::PoolCreated, None),
        EventDetail::PoolUpdated => (proto::EventKind::PoolUpdated, None),
        EventDetail::PoolRemoved => (proto::EventKind::PoolRemoved, None),
        EventDetail::HealthChanged { from, to, reason } => (
            proto::EventKind::HealthChanged,
            Some(Detail::HealthChanged(proto::HealthChanged {
                from: health_state_to_proto(*from) as i32,
                to: health_state_to_proto(*to) as i32,
                reason: reason.clone(),
            })),
        ),
        EventDetail::ConnectionLost { error } => (
            proto::EventKind::ConnectionLost,
            Some(Detail::ConnectionLost(proto::ConnectionLost {
                error: error.clone(),
            })),
        ),
        EventDetail::ConnectionRecovered {
            failed_checks,
            unhealthy_for,
        } => (
            proto::EventKind::ConnectionRecovered,
            Some(Detail::ConnectionRecovered(proto::ConnectionRecovered {
                failed_checks: *failed_checks,
                unhealthy_for_ms: millis(*unhealthy_for),
            })),
        ),
        EventDetail::CheckCompleted {
            state,
            latency,
            error,
        } => (
            proto::EventKind::CheckCompleted,
            Some(Detail::CheckCompleted(proto::CheckCompleted {
                state: health_state_to_proto(*state) as i32,
                latency_ms: latency.map(ms_f64).unwrap_or(0.0),
                error: error.clone().unwrap_or_default(),
            })),
        ),
        EventDetail::AlertTriggered(alert) => (
            proto::EventKind::AlertTriggered,
            Some(Detail::Alert(alert_to_proto(alert))),
        ),
        EventDetail::AlertAcknowledged(alert) => (
            proto::EventKind::AlertAcknowledged,
            Some(Detail::Alert(alert_to_proto(alert))),
        ),
        EventDetail::AlertResolved(alert) => (
            proto::EventKind::AlertResolved,
            Some(Detail::Alert(alert_to_proto(alert))),
        ),
        EventDetail::MetricsSnapshot(sample) => (
            proto::EventKind::MetricsSnapshot,
            Some(Detail::Metrics(sample_to_proto(sample))),
        ),
        EventDetail::SessionLeak(session) => (
            proto::EventKind::SessionLeak,
            Some(Detail::SessionLeak(session_to_proto(session))),
        ),
        EventDetail::ConfigReloaded(report) => (
            proto::EventKind::ConfigReloaded,
            Some(Detail::ConfigReload(reload_to_proto(report.clone()))),
        ),
        EventDetail::ConfigReloadFailed { errors } => (
            proto::EventKind::ConfigReloadFailed,
            Some(Detail::ConfigReload(proto::ReloadConfigResponse {
                errors: errors.clone(),
                ..Default::default()
            })),
        ),
    };
    proto::Event {
        sequence: event.sequence,
        time: Some(timestamp(event.time)),
        pool: event.pool.clone(),
        kind: kind as i32,
        detail,
    }
}

pub(crate) fn lagged_event(lost: u64) -> proto::Event {
    proto::Event {
        sequence: 0,
        time: Some(timestamp(SystemTime::now())),
        pool: String::new(),
        kind: proto::EventKind::Lagged as i32,
        detail: Some(Detail::Lagged(proto::Lagged { lost })),
    }
}

/// One SNAPSHOT event per pool and per active alert, then SNAPSHOT_END
/// at `last_sequence`.
pub(crate) fn snapshot_events(
    pools: Vec<(PoolInfo, HealthReport)>,
    alerts: Vec<Alert>,
    last_sequence: u64,
) -> Vec<proto::Event> {
    let now = timestamp(SystemTime::now());
    let mut events: Vec<proto::Event> = pools
        .into_iter()
        .map(|(info, health)| proto::Event {
            sequence: 0,
            time: Some(now),
            pool: info.config.name.clone(),
            kind: proto::EventKind::Snapshot as i32,
            detail: Some(Detail::Snapshot(pool_to_proto(info, &health))),
        })
        .collect();
    events.extend(alerts.iter().map(|alert| proto::Event {
        sequence: 0,
        time: Some(now),
        pool: alert.pool.clone(),
        kind: proto::EventKind::Snapshot as i32,
        detail: Some(Detail::Alert(alert_to_proto(alert))),
    }));
    events.push(proto::Event {
        sequence: 0,
        time: Some(now),
        pool: String::new(),
        kind: proto::EventKind::SnapshotEnd as i32,
        detail: Some(Detail::SnapshotEnd(proto::SnapshotEnd {
            sequence: last_sequence,
        })),
    });
    events
}

fn state_to_proto(state: PoolState) -> proto::PoolState {
    match state {
        PoolState::Serving => proto::PoolState::Serving,
        PoolState::Draining => proto::PoolState::Draining,
        PoolState::Closed => proto::PoolState::Closed,
    }
}

fn stats_to_proto(stats: &StatsSnapshot, max: u32) -> proto::PoolStatistics {
    proto::PoolStatistics {
        active: saturating_u32(stats.active),
        idle: saturating_u32(stats.idle),
        total: saturating_u32(stats.total),
        max,
        pending: saturating_u32(stats.pending),
        acquisitions_succeeded: stats.acquisitions_succeeded,
        acquire_timeouts: stats.acquire_timeouts,
        acquire_errors: stats.acquire_errors,
        connections_created: stats.connections_created,
        connections_closed: stats.connections_closed,
        average_acquire_wait_ms: ms_f64(stats.average_acquire_wait),
        max_acquire_wait_ms: ms_f64(stats.max_acquire_wait),
        average_connection_setup_ms: ms_f64(stats.average_connection_setup),
        peak_connections: saturating_u32(stats.peak_connections),
        broken_connections: stats.broken_connections,
        uptime_ms: millis(stats.uptime),
        reset_at: Some(timestamp(stats.reset_at)),
        acquire_rejected: stats.acquire_rejected,
        acquire_cancelled: stats.acquire_cancelled,
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn ms_f64(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn saturating_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

pub(crate) fn sample_to_proto(sample: &MetricsSample) -> proto::MetricsSample {
    proto::MetricsSample {
        pool: sample.pool.clone(),
        time: Some(timestamp(sample.time)),
        acquisitions_per_second: sample.acquisitions_per_second,
        connections_created_per_second: sample.connections_created_per_second,
        average_acquire_wait_ms: ms_f64(sample.average_acquire_wait),
        utilization_ratio: sample.utilization,
        error_rate_ratio: sample.error_rate,
        active: saturating_u32(sample.active),
        idle: saturating_u32(sample.idle),
        total: saturating_u32(sample.total),
        pending: saturating_u32(sample.pending),
        max: sample.max,
        peak_connections: saturating_u32(sample.peak_connections),
        uptime_ms: millis(sample.uptime),
        acquire_timeouts: sample.acquire_timeouts,
        health: health_state_to_proto(sample.health) as i32,
    }
}

pub(crate) fn alert_to_proto(alert: &Alert) -> proto::Alert {
    proto::Alert {
        id: alert.id,
        pool: alert.pool.clone(),
        rule: rule_to_proto(alert.rule) as i32,
        severity: severity_to_proto(alert.severity) as i32,
        state: match alert.state {
            AlertState::Firing => proto::AlertState::Firing,
            AlertState::Acknowledged => proto::AlertState::Acknowledged,
            AlertState::Resolved => proto::AlertState::Resolved,
            AlertState::Cleared => proto::AlertState::Cleared,
        } as i32,
        message: alert.message.clone(),
        value: alert.value,
        threshold: alert.threshold,
        fired_at: Some(timestamp(alert.fired_at)),
        acknowledged_at: alert.acknowledged_at.map(timestamp),
        acknowledged_by: alert.acknowledged_by.clone(),
        ended_at: alert.ended_at.map(timestamp),
    }
}

fn rule_to_proto(rule: AlertRule) -> proto::AlertRule {
    match rule {
        AlertRule::HighUtilization => proto::AlertRule::HighUtilization,
        AlertRule::HighErrorRate => proto::AlertRule::HighErrorRate,
        AlertRule::PoolUnhealthy => proto::AlertRule::PoolUnhealthy,
        AlertRule::SlowAcquire => proto::AlertRule::SlowAcquire,
        AlertRule::PoolExhausted => proto::AlertRule::PoolExhausted,
        AlertRule::SessionLeak => proto::AlertRule::SessionLeak,
    }
}

fn severity_to_proto(severity: Severity) -> proto::AlertSeverity {
    match severity {
        Severity::Warning => proto::AlertSeverity::Warning,
        Severity::Error => proto::AlertSeverity::Error,
        Severity::Critical => proto::AlertSeverity::Critical,
    }
}

/// A severity filter: unspecified means every severity.
pub(crate) fn severity_from_proto(severity: i32) -> Result<Option<Severity>, Status> {
    let severity = proto::AlertSeverity::try_from(severity).map_err(|_| {
        invalid_argument("severity", &format!("{severity} is not an AlertSeverity"))
    })?;
    Ok(match severity {
        proto::AlertSeverity::Unspecified => None,
        proto::AlertSeverity::Warning => Some(Severity::Warning),
        proto::AlertSeverity::Error => Some(Severity::Error),
        proto::AlertSeverity::Critical => Some(Severity::Critical),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_exact_far_from_1970() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-719_162), (1, 1, 1));
        assert_eq!(civil_from_days(-719_163), (0, 12, 31));
        assert_eq!(iso_instant(-1), "+1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn a_value_costs_no_more_than_the_overhead_the_limits_count() {
        let held = std::mem::size_of::<SqlValue>() + std::mem::size_of::<proto::Value>();
        assert!(
            held <= crate::query::VALUE_OVERHEAD,
            "a value is {held} bytes in memory besides its payload"
        );
    }
}
