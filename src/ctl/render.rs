//! `poolplane ctl`'s table output: what each response looks like to a
//! person (the JSON output is `json.rs`). The API has no wait percentiles,
//! so `pools` shows the average and the maximum acquire wait GetPool
//! reports (since start or the last ResetStatistics), not a p99.

use poolplane::proto;

use super::json::enum_str;
use super::table::{age, ms, or_dash, pairs, percent, short, time, Align, Table};

pub(crate) fn health_name(state: i32) -> String {
    short(
        enum_str(state, proto::HealthState::as_str_name),
        "HEALTH_STATE_",
        state,
    )
}

/// serving, paused, draining or closed.
fn pool_state(pool: &proto::Pool) -> String {
    if pool.paused && pool.state == proto::PoolState::Serving as i32 {
        return "paused".into();
    }
    short(
        enum_str(pool.state, proto::PoolState::as_str_name),
        "POOL_STATE_",
        pool.state,
    )
}

fn utilization(stats: &proto::PoolStatistics) -> String {
    if stats.max == 0 {
        return "-".into();
    }
    percent(f64::from(stats.active) / f64::from(stats.max))
}

/// One line per pool: PgBouncer's SHOW POOLS, with health and errors.
pub(crate) fn pools(pools: &[proto::Pool]) -> String {
    use Align::{Left as L, Right as R};
    let mut table = Table::new(&[
        ("POOL", L),
        ("STATE", L),
        ("HEALTH", L),
        ("ACTIVE", R),
        ("IDLE", R),
        ("PENDING", R),
        ("MAX", R),
        ("UTIL%", R),
        ("WAIT_AVG_MS", R),
        ("WAIT_MAX_MS", R),
        ("ERRORS", R),
        ("BROKEN", R),
    ]);
    for pool in pools {
        let stats = pool.statistics.unwrap_or_default();
        let health = pool.health.as_ref().map_or(0, |h| h.state);
        let name = pool.spec.as_ref().map_or("", |s| s.name.as_str());
        table.row(vec![
            name.into(),
            pool_state(pool),
            health_name(health),
            stats.active.to_string(),
            stats.idle.to_string(),
            stats.pending.to_string(),
            stats.max.to_string(),
            utilization(&stats),
            ms(stats.average_acquire_wait_ms),
            ms(stats.max_acquire_wait_ms),
            (stats.acquire_timeouts + stats.acquire_errors).to_string(),
            stats.broken_connections.to_string(),
        ]);
    }
    table.render()
}

/// Everything about one pool, a line per aspect.
pub(crate) fn pool(pool: &proto::Pool) -> String {
    let spec = pool.spec.clone().unwrap_or_default();
    let s = pool.statistics.unwrap_or_default();
    let h = pool.health.clone().unwrap_or_default();
    let user = if spec.user.is_empty() {
        String::new()
    } else {
        format!("{}@", spec.user)
    };
    let mut lines = vec![
        ("pool", spec.name.clone()),
        ("state", pool_state(pool)),
        (
            "target",
            format!(
                "{user}{}:{}/{} (sslmode {}, password {})",
                spec.host, spec.port, spec.database, spec.sslmode, spec.password_source
            ),
        ),
        (
            "connections",
            format!(
                "{} active, {} idle, {} open, max {}, min {}, peak {}; {} waiting",
                s.active,
                s.idle,
                s.total,
                spec.max_connections,
                spec.min_connections,
                s.peak_connections,
                s.pending
            ),
        ),
        (
            "acquisitions",
            format!(
                "{} ok, {} timed out, {} failed, {} refused (draining), {} cancelled",
                s.acquisitions_succeeded,
                s.acquire_timeouts,
                s.acquire_errors,
                s.acquire_rejected,
                s.acquire_cancelled
            ),
        ),
        (
            "acquire wait",
            format!(
                "avg {} ms, max {} ms; connection setup avg {} ms",
                ms(s.average_acquire_wait_ms),
                ms(s.max_acquire_wait_ms),
                ms(s.average_connection_setup_ms)
            ),
        ),
        (
            "connections made",
            format!(
                "{} created, {} closed, {} found broken",
                s.connections_created, s.connections_closed, s.broken_connections
            ),
        ),
        (
            "health",
            format!(
                "{} (last check {}, probe {} ms, {} failures in a row, {} checks)",
                health_name(h.state),
                time(h.last_check.as_ref()),
                ms(h.probe_latency_ms),
                h.consecutive_failures,
                h.checks
            ),
        ),
    ];
    if !h.last_error.is_empty() {
        lines.push(("health error", h.last_error.clone()));
    }
    if !pool.last_error.is_empty() {
        lines.push(("last error", pool.last_error.clone()));
    }
    lines.extend([
        (
            "timeouts",
            format!(
                "connect {} ms, idle {} ms, lifetime {} ms, statement {} ms, check idle after {} ms",
                spec.connection_timeout_ms,
                spec.idle_timeout_ms,
                spec.max_lifetime_ms,
                spec.statement_timeout_ms,
                spec.health_check_interval_ms
            ),
        ),
        (
            "sessions",
            format!(
                "max {} connections; idle {} ms, idle in transaction {} ms, duration {} ms, leak after {} ms",
                spec.max_session_connections,
                spec.session_idle_timeout_ms,
                spec.idle_in_transaction_timeout_ms,
                spec.max_session_duration_ms,
                spec.leak_detection_threshold_ms
            ),
        ),
        (
            "alert thresholds",
            format!(
                "utilization {}, error rate {}, acquire wait {} ms",
                spec.utilization_alert_threshold,
                spec.error_rate_alert_threshold,
                spec.acquire_wait_alert_threshold_ms
            ),
        ),
        ("application name", spec.application_name.clone()),
        ("created", time(pool.created_at.as_ref())),
        (
            "uptime",
            format!("{} (statistics since {})", age(s.uptime_ms), time(s.reset_at.as_ref())),
        ),
    ]);
    pairs(&lines)
}

pub(crate) fn sessions(sessions: &[proto::SessionInfo]) -> String {
    use Align::{Left as L, Right as R};
    let mut table = Table::new(&[
        ("ID", R),
        ("POOL", L),
        ("CALLER", L),
        ("PEER", L),
        ("STATE", L),
        ("TRANSACTION", L),
        ("AGE", R),
        ("IDLE", R),
        ("LAST_STATEMENT", L),
    ]);
    for s in sessions {
        table.row(vec![
            s.session_id.to_string(),
            s.pool.clone(),
            or_dash(&s.caller),
            or_dash(&s.peer),
            short(
                enum_str(s.state, proto::SessionState::as_str_name),
                "SESSION_STATE_",
                s.state,
            ),
            short(
                enum_str(s.transaction, proto::TransactionStatus::as_str_name),
                "TRANSACTION_STATUS_",
                s.transaction,
            ),
            age(s.age_ms),
            age(s.idle_ms),
            or_dash(&s.last_statement),
        ]);
    }
    table.render()
}

pub(crate) fn alerts(alerts: &[proto::Alert]) -> String {
    use Align::{Left as L, Right as R};
    let mut table = Table::new(&[
        ("ID", R),
        ("POOL", L),
        ("RULE", L),
        ("SEVERITY", L),
        ("STATE", L),
        ("VALUE", R),
        ("THRESHOLD", R),
        ("FIRED_AT", L),
        ("MESSAGE", L),
    ]);
    for a in alerts {
        table.row(vec![
            a.id.to_string(),
            a.pool.clone(),
            short(
                enum_str(a.rule, proto::AlertRule::as_str_name),
                "ALERT_RULE_",
                a.rule,
            ),
            short(
                enum_str(a.severity, proto::AlertSeverity::as_str_name),
                "ALERT_SEVERITY_",
                a.severity,
            ),
            short(
                enum_str(a.state, proto::AlertState::as_str_name),
                "ALERT_STATE_",
                a.state,
            ),
            format!("{:.3}", a.value),
            format!("{:.3}", a.threshold),
            time(a.fired_at.as_ref()),
            a.message.clone(),
        ]);
    }
    table.render()
}

pub(crate) fn history(history: &proto::GetMetricsHistoryResponse) -> String {
    use Align::{Left as L, Right as R};
    let mut table = Table::new(&[
        ("TIME", L),
        ("ACTIVE", R),
        ("IDLE", R),
        ("PENDING", R),
        ("MAX", R),
        ("UTIL%", R),
        ("ACQ/S", R),
        ("WAIT_AVG_MS", R),
        ("ERR%", R),
        ("TIMEOUTS", R),
        ("HEALTH", L),
    ]);
    for s in &history.samples {
        table.row(vec![
            time(s.time.as_ref()),
            s.active.to_string(),
            s.idle.to_string(),
            s.pending.to_string(),
            s.max.to_string(),
            percent(s.utilization_ratio),
            format!("{:.1}", s.acquisitions_per_second),
            ms(s.average_acquire_wait_ms),
            percent(s.error_rate_ratio),
            s.acquire_timeouts.to_string(),
            health_name(s.health),
        ]);
    }
    format!(
        "{}{} samples, one per {} ms, kept {} ms\n",
        table.render(),
        history.samples.len(),
        history.collection_interval_ms,
        history.retention_period_ms
    )
}

pub(crate) fn health(results: &[proto::PoolHealthResult]) -> String {
    use Align::{Left as L, Right as R};
    let mut table = Table::new(&[
        ("POOL", L),
        ("HEALTH", L),
        ("PROBE_MS", R),
        ("FAILURES", R),
        ("CHECKS", R),
        ("BROKEN", R),
        ("LAST_CHECK", L),
        ("LAST_ERROR", L),
    ]);
    for result in results {
        let h = result.health.clone().unwrap_or_default();
        table.row(vec![
            result.pool.clone(),
            health_name(h.state),
            ms(h.probe_latency_ms),
            h.consecutive_failures.to_string(),
            h.checks.to_string(),
            h.broken_connections.to_string(),
            time(h.last_check.as_ref()),
            or_dash(&h.last_error),
        ]);
    }
    table.render()
}

/// What a reload did, one line per non-empty list.
pub(crate) fn reload(report: &proto::ReloadConfigResponse) -> String {
    let lists = [
        ("created", &report.created),
        ("removed", &report.removed),
        ("changed", &report.changed),
        ("reconnected", &report.reconnected),
        ("unchanged", &report.unchanged),
        ("restart needed", &report.restart_needed),
        ("failed", &report.failed),
        ("errors", &report.errors),
    ];
    let lines: Vec<(&str, String)> = lists
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| (*what, names.join(", ")))
        .collect();
    if lines.is_empty() {
        return "reloaded: nothing to do\n".into();
    }
    pairs(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_is_one_aligned_line_per_pool() {
        let pool = proto::Pool {
            spec: Some(proto::PoolSpec {
                name: "orders".into(),
                ..Default::default()
            }),
            state: proto::PoolState::Serving as i32,
            statistics: Some(proto::PoolStatistics {
                active: 1,
                idle: 3,
                max: 4,
                acquire_timeouts: 2,
                acquire_errors: 1,
                average_acquire_wait_ms: 0.26,
                max_acquire_wait_ms: 12.0,
                ..Default::default()
            }),
            health: Some(proto::PoolHealth {
                state: proto::HealthState::Healthy as i32,
                ..Default::default()
            }),
            paused: true,
            ..Default::default()
        };
        let text = pools(&[pool]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "POOL    STATE   HEALTH   ACTIVE  IDLE  PENDING  MAX  UTIL%  WAIT_AVG_MS  WAIT_MAX_MS  ERRORS  BROKEN",
                "orders  paused  healthy       1     3        0    4   25.0          0.3         12.0       3       0",
            ]
        );
    }
}
