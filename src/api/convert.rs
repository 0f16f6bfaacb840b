//! Protobuf <-> domain translation for values, results and pool reports.
//! Pure functions; the only errors are malformed requests.

use std::time::{Duration, SystemTime};

use tonic::Status;

use super::status::invalid_argument;
use crate::pool::{PoolInfo, PoolState, StatsSnapshot};
use crate::proto::{self, value::Kind};
use crate::query::{Column, Instant, Interval, QueryResult, SqlValue};

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
            let micros = ts
                .seconds
                .checked_mul(1_000_000)
                .and_then(|us| us.checked_add(i64::from(ts.nanos / 1000)))
                .ok_or_else(|| invalid_argument(field, "timestamptz out of range"))?;
            SqlValue::Timestamptz(Instant::UnixMicros(micros))
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
            Kind::TimestamptzValue(prost_types::Timestamp {
                seconds: us.div_euclid(1_000_000),
                // rem_euclid keeps this in 0..1e6, so the product fits an i32.
                nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
            })
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
        rows: result
            .rows
            .into_iter()
            .map(|row| proto::Row {
                values: row.into_iter().map(value_to_proto).collect(),
            })
            .collect(),
        rows_affected: result.rows_affected,
        truncated: result.truncated,
    }
}

fn column_to_proto(column: Column) -> proto::Column {
    proto::Column {
        name: column.name,
        type_name: column.type_name,
        type_oid: column.type_oid,
    }
}

pub(crate) fn pool_to_proto(info: PoolInfo) -> proto::Pool {
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
        }),
        state: state_to_proto(info.state) as i32,
        statistics: Some(stats_to_proto(&info.stats, limits.max_connections)),
        last_error: info.last_error.unwrap_or_default(),
        created_at: Some(timestamp(info.created_at)),
    }
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
        uptime_ms: millis(stats.uptime),
        reset_at: Some(timestamp(stats.reset_at)),
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
