//! `poolplane ctl -o json`: each response message as JSON, mapped by hand
//! so the shape is stable and documented (README, "Operate it"):
//!
//! - keys are the proto field names (snake_case), every field present,
//!   zero values included; a `oneof` (an event's detail) shows only the
//!   field that is set;
//! - numbers are JSON numbers, 64-bit ones too (not strings, unlike
//!   protobuf's canonical JSON);
//! - enums are their full proto names (`HEALTH_STATE_HEALTHY`); a value
//!   this build does not know, as its number;
//! - timestamps are RFC 3339 UTC strings, or null when unset.
//!
//! A test compares every mapped message's keys with the proto descriptors,
//! so a field added to the API fails it until it is mapped here.

use poolplane::proto;
use serde_json::{json, Value};

/// An enum value's proto name, if this build knows it.
pub(crate) fn enum_str<E: TryFrom<i32>>(
    value: i32,
    name: fn(&E) -> &'static str,
) -> Option<&'static str> {
    E::try_from(value).ok().map(|e| name(&e))
}

fn enum_json<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str) -> Value {
    match enum_str(value, name) {
        Some(name) => json!(name),
        None => json!(value),
    }
}

fn time(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        chrono::DateTime::from_timestamp(t.seconds, nanos)
    })
    .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
    .unwrap_or(Value::Null)
}

fn health_state(value: i32) -> Value {
    enum_json(value, proto::HealthState::as_str_name)
}

pub(crate) fn spec(s: &proto::PoolSpec) -> Value {
    json!({
        "name": s.name,
        "host": s.host,
        "port": s.port,
        "database": s.database,
        "user": s.user,
        "application_name": s.application_name,
        "sslmode": s.sslmode,
        "max_connections": s.max_connections,
        "min_connections": s.min_connections,
        "connection_timeout_ms": s.connection_timeout_ms,
        "idle_timeout_ms": s.idle_timeout_ms,
        "health_check_interval_ms": s.health_check_interval_ms,
        "statement_timeout_ms": s.statement_timeout_ms,
        "password_source": s.password_source,
        "max_lifetime_ms": s.max_lifetime_ms,
        "utilization_alert_threshold": s.utilization_alert_threshold,
        "error_rate_alert_threshold": s.error_rate_alert_threshold,
        "acquire_wait_alert_threshold_ms": s.acquire_wait_alert_threshold_ms,
        "max_session_connections": s.max_session_connections,
        "session_idle_timeout_ms": s.session_idle_timeout_ms,
        "idle_in_transaction_timeout_ms": s.idle_in_transaction_timeout_ms,
        "max_session_duration_ms": s.max_session_duration_ms,
        "leak_detection_threshold_ms": s.leak_detection_threshold_ms,
    })
}

pub(crate) fn statistics(s: &proto::PoolStatistics) -> Value {
    json!({
        "active": s.active,
        "idle": s.idle,
        "total": s.total,
        "max": s.max,
        "pending": s.pending,
        "acquisitions_succeeded": s.acquisitions_succeeded,
        "acquire_timeouts": s.acquire_timeouts,
        "acquire_errors": s.acquire_errors,
        "connections_created": s.connections_created,
        "connections_closed": s.connections_closed,
        "average_acquire_wait_ms": s.average_acquire_wait_ms,
        "max_acquire_wait_ms": s.max_acquire_wait_ms,
        "average_connection_setup_ms": s.average_connection_setup_ms,
        "peak_connections": s.peak_connections,
        "uptime_ms": s.uptime_ms,
        "reset_at": time(s.reset_at.as_ref()),
        "broken_connections": s.broken_connections,
        "acquire_rejected": s.acquire_rejected,
        "acquire_cancelled": s.acquire_cancelled,
    })
}

pub(crate) fn health(h: &proto::PoolHealth) -> Value {
    json!({
        "state": health_state(h.state),
        "probe_latency_ms": h.probe_latency_ms,
        "last_error": h.last_error,
        "last_check": time(h.last_check.as_ref()),
        "consecutive_failures": h.consecutive_failures,
        "broken_connections": h.broken_connections,
        "checks": h.checks,
    })
}

/// A sub-message: null when unset.
fn opt<T>(value: Option<&T>, map: fn(&T) -> Value) -> Value {
    value.map(map).unwrap_or(Value::Null)
}

pub(crate) fn pool(p: &proto::Pool) -> Value {
    json!({
        "spec": opt(p.spec.as_ref(), spec),
        "state": enum_json(p.state, proto::PoolState::as_str_name),
        "statistics": opt(p.statistics.as_ref(), statistics),
        "last_error": p.last_error,
        "created_at": time(p.created_at.as_ref()),
        "health": opt(p.health.as_ref(), health),
        "paused": p.paused,
    })
}

pub(crate) fn pools(r: &proto::ListPoolsResponse) -> Value {
    json!({ "pools": r.pools.iter().map(pool).collect::<Vec<_>>() })
}

pub(crate) fn session(s: &proto::SessionInfo) -> Value {
    json!({
        "session_id": s.session_id,
        "pool": s.pool,
        "caller": s.caller,
        "peer": s.peer,
        "state": enum_json(s.state, proto::SessionState::as_str_name),
        "transaction": enum_json(s.transaction, proto::TransactionStatus::as_str_name),
        "opened_at": time(s.opened_at.as_ref()),
        "age_ms": s.age_ms,
        "idle_ms": s.idle_ms,
        "last_statement": s.last_statement,
    })
}

pub(crate) fn sessions(r: &proto::ListSessionsResponse) -> Value {
    json!({ "sessions": r.sessions.iter().map(session).collect::<Vec<_>>() })
}

pub(crate) fn killed(r: &proto::KillSessionResponse) -> Value {
    json!({ "session": opt(r.session.as_ref(), session) })
}

pub(crate) fn alert(a: &proto::Alert) -> Value {
    json!({
        "id": a.id,
        "pool": a.pool,
        "rule": enum_json(a.rule, proto::AlertRule::as_str_name),
        "severity": enum_json(a.severity, proto::AlertSeverity::as_str_name),
        "state": enum_json(a.state, proto::AlertState::as_str_name),
        "message": a.message,
        "value": a.value,
        "threshold": a.threshold,
        "fired_at": time(a.fired_at.as_ref()),
        "acknowledged_at": time(a.acknowledged_at.as_ref()),
        "acknowledged_by": a.acknowledged_by,
        "ended_at": time(a.ended_at.as_ref()),
    })
}

pub(crate) fn alerts(r: &proto::ListAlertsResponse) -> Value {
    json!({ "alerts": r.alerts.iter().map(alert).collect::<Vec<_>>() })
}

pub(crate) fn sample(s: &proto::MetricsSample) -> Value {
    json!({
        "pool": s.pool,
        "time": time(s.time.as_ref()),
        "acquisitions_per_second": s.acquisitions_per_second,
        "connections_created_per_second": s.connections_created_per_second,
        "average_acquire_wait_ms": s.average_acquire_wait_ms,
        "utilization_ratio": s.utilization_ratio,
        "error_rate_ratio": s.error_rate_ratio,
        "active": s.active,
        "idle": s.idle,
        "total": s.total,
        "pending": s.pending,
        "max": s.max,
        "peak_connections": s.peak_connections,
        "uptime_ms": s.uptime_ms,
        "acquire_timeouts": s.acquire_timeouts,
        "health": health_state(s.health),
    })
}

pub(crate) fn history(r: &proto::GetMetricsHistoryResponse) -> Value {
    json!({
        "samples": r.samples.iter().map(sample).collect::<Vec<_>>(),
        "collection_interval_ms": r.collection_interval_ms,
        "retention_period_ms": r.retention_period_ms,
    })
}

pub(crate) fn health_results(r: &proto::CheckHealthResponse) -> Value {
    let results: Vec<Value> = r
        .results
        .iter()
        .map(|result| {
            json!({
                "pool": result.pool,
                "health": opt(result.health.as_ref(), health),
            })
        })
        .collect();
    json!({ "results": results })
}

pub(crate) fn reload(r: &proto::ReloadConfigResponse) -> Value {
    json!({
        "created": r.created,
        "removed": r.removed,
        "changed": r.changed,
        "reconnected": r.reconnected,
        "unchanged": r.unchanged,
        "restart_needed": r.restart_needed,
        "failed": r.failed,
        "errors": r.errors,
    })
}

pub(crate) fn paused(r: &proto::PausePoolResponse) -> Value {
    json!({
        "cancelled": r.cancelled,
        "connections_open": r.connections_open,
        "pool": opt(r.pool.as_ref(), pool),
    })
}

pub(crate) fn deleted(r: &proto::DeletePoolResponse) -> Value {
    json!({
        "cancelled": r.cancelled,
        "connections_closed": r.connections_closed,
        "pool": opt(r.pool.as_ref(), pool),
    })
}

pub(crate) fn event(e: &proto::Event) -> Value {
    use proto::event::Detail;
    let mut value = json!({
        "sequence": e.sequence,
        "time": time(e.time.as_ref()),
        "pool": e.pool,
        "kind": enum_json(e.kind, proto::EventKind::as_str_name),
    });
    let detail = match &e.detail {
        None => None,
        Some(Detail::HealthChanged(d)) => Some((
            "health_changed",
            json!({"from": health_state(d.from), "to": health_state(d.to), "reason": d.reason}),
        )),
        Some(Detail::ConnectionLost(d)) => Some(("connection_lost", json!({"error": d.error}))),
        Some(Detail::ConnectionRecovered(d)) => Some((
            "connection_recovered",
            json!({"failed_checks": d.failed_checks, "unhealthy_for_ms": d.unhealthy_for_ms}),
        )),
        Some(Detail::CheckCompleted(d)) => Some((
            "check_completed",
            json!({"state": health_state(d.state), "latency_ms": d.latency_ms, "error": d.error}),
        )),
        Some(Detail::Snapshot(p)) => Some(("snapshot", pool(p))),
        Some(Detail::SnapshotEnd(d)) => Some(("snapshot_end", json!({"sequence": d.sequence}))),
        Some(Detail::Lagged(d)) => Some(("lagged", json!({"lost": d.lost}))),
        Some(Detail::Alert(a)) => Some(("alert", alert(a))),
        Some(Detail::Metrics(s)) => Some(("metrics", sample(s))),
        Some(Detail::SessionLeak(s)) => Some(("session_leak", session(s))),
        Some(Detail::ConfigReload(r)) => Some(("config_reload", reload(r))),
    };
    if let (Some((key, detail)), Some(object)) = (detail, value.as_object_mut()) {
        object.insert(key.into(), detail);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::BTreeSet;

    /// The field names of `message` (`poolplane.v1.Pool`) in the descriptors.
    fn fields(message: &str) -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        set.file
            .iter()
            .flat_map(|file| file.message_type.iter())
            .find(|m| m.name() == message)
            .unwrap_or_else(|| panic!("no message {message}"))
            .field
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_field_of_every_mapped_message_is_there() {
        let health_ = proto::PoolHealth::default();
        let full_pool = proto::Pool {
            spec: Some(Default::default()),
            statistics: Some(Default::default()),
            health: Some(health_.clone()),
            ..Default::default()
        };
        let mapped = [
            ("Pool", pool(&full_pool)),
            ("PoolSpec", spec(&Default::default())),
            ("PoolStatistics", statistics(&Default::default())),
            ("PoolHealth", health(&health_)),
            ("ListPoolsResponse", pools(&Default::default())),
            ("SessionInfo", session(&Default::default())),
            ("ListSessionsResponse", sessions(&Default::default())),
            ("KillSessionResponse", killed(&Default::default())),
            ("Alert", alert(&Default::default())),
            ("ListAlertsResponse", alerts(&Default::default())),
            ("MetricsSample", sample(&Default::default())),
            ("GetMetricsHistoryResponse", history(&Default::default())),
            ("CheckHealthResponse", health_results(&Default::default())),
            ("ReloadConfigResponse", reload(&Default::default())),
            ("PausePoolResponse", paused(&Default::default())),
            ("DeletePoolResponse", deleted(&Default::default())),
        ];
        for (message, value) in mapped {
            assert_eq!(keys(&value), fields(message), "{message}");
        }
        let result = proto::CheckHealthResponse {
            results: vec![proto::PoolHealthResult::default()],
        };
        assert_eq!(
            keys(&health_results(&result)["results"][0]),
            fields("PoolHealthResult")
        );
        // An event: its own fields, and each detail under its oneof name.
        use proto::event::Detail;
        let details = [
            Detail::HealthChanged(Default::default()),
            Detail::ConnectionLost(Default::default()),
            Detail::ConnectionRecovered(Default::default()),
            Detail::CheckCompleted(Default::default()),
            Detail::Snapshot(Default::default()),
            Detail::SnapshotEnd(Default::default()),
            Detail::Lagged(Default::default()),
            Detail::Alert(Default::default()),
            Detail::Metrics(Default::default()),
            Detail::SessionLeak(Default::default()),
            Detail::ConfigReload(Default::default()),
        ];
        let mut seen = keys(&event(&Default::default()));
        for detail in details {
            let e = proto::Event {
                detail: Some(detail),
                ..Default::default()
            };
            let value = event(&e);
            assert_eq!(keys(&value).len(), 5, "{value}");
            seen.extend(keys(&value));
        }
        assert_eq!(seen, fields("Event"));
        let changed = event(&proto::Event {
            detail: Some(Detail::HealthChanged(Default::default())),
            ..Default::default()
        });
        assert_eq!(keys(&changed["health_changed"]), fields("HealthChanged"));
    }

    #[test]
    fn values_keep_their_types() {
        let alert = alert(&proto::Alert {
            id: u64::MAX,
            rule: proto::AlertRule::HighUtilization as i32,
            severity: 77,
            fired_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            ..Default::default()
        });
        assert_eq!(alert["id"], json!(u64::MAX));
        assert_eq!(alert["rule"], "ALERT_RULE_HIGH_UTILIZATION");
        assert_eq!(alert["severity"], 77);
        assert_eq!(alert["fired_at"], "2023-11-14T22:13:20.005Z");
        assert_eq!(alert["ended_at"], Value::Null);
    }
}
