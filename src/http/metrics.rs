//! The `/metrics` exposition: the registry's series (gRPC server, process)
//! plus the per-pool series, built at scrape time from the pools' own
//! statistics so every value is exact at that instant. A removed pool's
//! series disappear with it. Label values come from closed enums or
//! validated pool names; the prometheus crate escapes them.

use std::collections::HashMap;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::app::App;
use crate::health::HealthState;
use crate::monitor::AlertRule;
use crate::pool::{AcquireOutcome, CloseReason, HistogramSnapshot, SQLSTATE_CLASSES};

/// Renders the text exposition of everything poolplane exports.
pub fn render(app: &App, registry: &Registry) -> Result<String, prometheus::Error> {
    let mut families = registry.gather();
    families.extend(pool_families(app));
    families.extend(session_families(app));
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&families, &mut buffer)?;
    String::from_utf8(buffer).map_err(|err| prometheus::Error::Msg(err.to_string()))
}

/// The `Session` streams of each pool: how many hold a connection and in
/// what state (as pg_stat_activity names them), the oldest one's age, and
/// the pool's limit. Sessions keep their connection from everyone else, so
/// these explain a pool that is busy with little Execute traffic.
fn session_families(app: &App) -> Vec<MetricFamily> {
    use crate::pool::TransactionStatus;
    let mut sessions = Family::new(
        "poolplane_pool_sessions",
        "Sessions holding a connection, by state: running (a statement), idle, idle_in_transaction, idle_in_failed_transaction.",
        MetricType::GAUGE,
    );
    let mut oldest = Family::new(
        "poolplane_pool_oldest_session_seconds",
        "Age of the pool's oldest session (0 without one).",
        MetricType::GAUGE,
    );
    let mut limit = Family::new(
        "poolplane_pool_max_session_connections",
        "Connections the pool's sessions may hold at once (max_session_connections).",
        MetricType::GAUGE,
    );
    for name in app.registry().names() {
        let Ok(pool) = app.registry().get(&name) else {
            continue;
        };
        let p = name.as_str();
        let live = app.sessions().list(Some(p));
        let mut by_state = [
            ("running", 0u32),
            ("idle", 0),
            ("idle_in_transaction", 0),
            ("idle_in_failed_transaction", 0),
        ];
        for session in &live {
            let state = match (session.running, session.transaction) {
                (true, _) => 0,
                (false, TransactionStatus::Idle) => 1,
                (false, TransactionStatus::InTransaction) => 2,
                (false, TransactionStatus::Failed) => 3,
            };
            by_state[state].1 += 1;
        }
        for (state, count) in by_state {
            sessions.value(&[("pool", p), ("state", state)], f64::from(count));
        }
        let age = live.iter().map(|s| s.age).max().unwrap_or_default();
        oldest.value(&[("pool", p)], age.as_secs_f64());
        limit.value(&[("pool", p)], f64::from(pool.max_sessions()));
    }
    [sessions, oldest, limit]
        .into_iter()
        .filter(|family| !family.metrics.is_empty())
        .map(Family::build)
        .collect()
}

/// Accumulates the metrics of one family across pools.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    metrics: Vec<Metric>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Family {
        Family {
            name,
            help,
            kind,
            metrics: Vec::new(),
        }
    }

    fn value(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = Metric::default();
        metric.set_label(label_pairs(labels));
        match self.kind {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.metrics.push(metric);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], snapshot: &HistogramSnapshot) {
        let mut histogram = Histogram::default();
        histogram.set_sample_count(snapshot.count);
        histogram.set_sample_sum(snapshot.sum_seconds);
        histogram.set_bucket(
            snapshot
                .buckets
                .iter()
                .map(|(bound, count)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(*count);
                    bucket
                })
                .collect(),
        );
        let mut metric = Metric::default();
        metric.set_label(label_pairs(labels));
        metric.set_histogram(histogram);
        self.metrics.push(metric);
    }

    fn build(self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_string());
        family.set_help(self.help.to_string());
        family.set_field_type(self.kind);
        family.set_metric(self.metrics);
        family
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn pool_families(app: &App) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut connections = Family::new(
        "poolplane_pool_connections",
        "Server connections by state (active = lent to a caller); they sum to the open connections PostgreSQL sees.",
        GAUGE,
    );
    let mut max = Family::new(
        "poolplane_pool_max_connections",
        "The pool's max_connections.",
        GAUGE,
    );
    let mut min = Family::new(
        "poolplane_pool_min_connections",
        "The pool's min_connections.",
        GAUGE,
    );
    let mut pending = Family::new(
        "poolplane_pool_pending_requests",
        "Callers waiting for a connection.",
        GAUGE,
    );
    let mut utilization = Family::new(
        "poolplane_pool_utilization_ratio",
        "Active / max connections.",
        GAUGE,
    );
    let mut error_rate = Family::new(
        "poolplane_pool_error_rate_ratio",
        "Pool-side failures (acquire timeouts, connect errors, broken connections) / acquisition attempts over the last collection interval.",
        GAUGE,
    );
    let mut health = Family::new(
        "poolplane_pool_health_state",
        "1 for the pool's current health state, 0 for the others.",
        GAUGE,
    );
    let mut peak = Family::new(
        "poolplane_pool_peak_connections",
        "Most server connections open at once since start or reset.",
        GAUGE,
    );
    let mut uptime = Family::new(
        "poolplane_pool_uptime_seconds",
        "Seconds since the pool started.",
        GAUGE,
    );
    let mut acquisitions = Family::new(
        "poolplane_pool_acquisitions_total",
        "Connection acquisitions by outcome.",
        COUNTER,
    );
    let mut created = Family::new(
        "poolplane_pool_connections_created_total",
        "Server connections opened.",
        COUNTER,
    );
    let mut closed = Family::new(
        "poolplane_pool_connections_closed_total",
        "Server connections closed, by reason.",
        COUNTER,
    );
    let mut sql_errors = Family::new(
        "poolplane_pool_sql_errors_total",
        "Errors of the callers' own SQL by SQLSTATE class (not pool failures; `other` for classes PostgreSQL does not define).",
        COUNTER,
    );
    let mut broken = Family::new(
        "poolplane_pool_broken_connections_total",
        "Connections found broken (server or network ended them, or a check failed).",
        COUNTER,
    );
    let mut wait = Family::new(
        "poolplane_pool_acquire_wait_seconds",
        "Time to get a connection, every acquisition whatever its outcome.",
        HISTOGRAM,
    );
    let mut hold = Family::new(
        "poolplane_pool_connection_hold_seconds",
        "Time a caller held a connection.",
        HISTOGRAM,
    );
    let mut setup = Family::new(
        "poolplane_pool_connection_setup_seconds",
        "Time to open a server connection (TCP, TLS, authentication).",
        HISTOGRAM,
    );
    let mut statement = Family::new(
        "poolplane_pool_statement_duration_seconds",
        "Time statements ran (Execute: one statement; ExecuteBatch: the whole batch).",
        HISTOGRAM,
    );
    let mut alerts = Family::new(
        "poolplane_alerts_active",
        "1 while an alert of this rule is active for the pool.",
        GAUGE,
    );
    let mut thresholds = Family::new(
        "poolplane_pool_alert_threshold",
        "The pool's threshold for an alert rule (ratios; seconds for slow_acquire), as the built-in alerts use it.",
        GAUGE,
    );
    let mut pools = Family::new("poolplane_pools", "Pools configured.", GAUGE);

    let active_alerts: HashMap<(String, AlertRule), ()> = app
        .monitoring()
        .active_alerts()
        .into_iter()
        .map(|alert| ((alert.pool, alert.rule), ()))
        .collect();
    let names = app.registry().names();
    pools.value(&[], names.len() as f64);
    for name in &names {
        let Ok(pool) = app.registry().get(name) else {
            continue;
        };
        let info = pool.info();
        let stats = &pool.lifetime_stats();
        let limits = info.config.limits;
        let p = name.as_str();
        let by_state = &info.connections;
        for (state, count) in [
            ("connecting", by_state.connecting),
            ("idle", by_state.idle),
            ("active", by_state.leased),
            ("checking", by_state.checking),
            ("resetting", by_state.resetting),
            ("closing", by_state.closing),
        ] {
            connections.value(&[("pool", p), ("state", state)], count as f64);
        }
        max.value(&[("pool", p)], f64::from(limits.max_connections));
        min.value(&[("pool", p)], f64::from(limits.min_connections));
        pending.value(&[("pool", p)], stats.pending as f64);
        utilization.value(
            &[("pool", p)],
            stats.active as f64 / f64::from(limits.max_connections.max(1)),
        );
        let rate = app
            .monitoring()
            .latest(name)
            .map(|s| s.error_rate)
            .unwrap_or(0.0);
        error_rate.value(&[("pool", p)], rate);
        let state = app.health(name).state;
        for candidate in [
            HealthState::Unknown,
            HealthState::Healthy,
            HealthState::Degraded,
            HealthState::Unhealthy,
        ] {
            let value = f64::from(u8::from(candidate == state));
            health.value(
                &[("pool", p), ("state", &candidate.as_str().to_lowercase())],
                value,
            );
        }
        peak.value(&[("pool", p)], stats.peak_connections as f64);
        uptime.value(&[("pool", p)], stats.uptime.as_secs_f64());
        let outcomes = [
            (AcquireOutcome::Success, stats.acquisitions_succeeded),
            (AcquireOutcome::Timeout, stats.acquire_timeouts),
            (AcquireOutcome::Error, stats.acquire_errors),
            (AcquireOutcome::Rejected, stats.acquire_rejected),
            (AcquireOutcome::Cancelled, stats.acquire_cancelled),
        ];
        for (outcome, count) in outcomes {
            acquisitions.value(&[("pool", p), ("outcome", outcome.as_str())], count as f64);
        }
        created.value(&[("pool", p)], stats.connections_created as f64);
        for (reason, count) in CloseReason::ALL.iter().zip(stats.closed_by_reason) {
            closed.value(&[("pool", p), ("reason", reason.as_str())], count as f64);
        }
        broken.value(&[("pool", p)], stats.broken_connections as f64);
        for (class, count) in SQLSTATE_CLASSES.iter().zip(pool.sql_errors()) {
            if count > 0 {
                sql_errors.value(&[("pool", p), ("sqlstate_class", class)], count as f64);
            }
        }
        let histograms = pool.histograms();
        wait.histogram(&[("pool", p)], &histograms.acquire_wait);
        hold.histogram(&[("pool", p)], &histograms.hold);
        setup.histogram(&[("pool", p)], &histograms.setup);
        statement.histogram(&[("pool", p)], &histograms.statement);
        let alert_thresholds = info.config.alerts;
        for (rule, threshold) in [
            (AlertRule::HighUtilization, alert_thresholds.utilization),
            (AlertRule::HighErrorRate, alert_thresholds.error_rate),
            (
                AlertRule::SlowAcquire,
                alert_thresholds.acquire_wait.as_secs_f64(),
            ),
        ] {
            thresholds.value(&[("pool", p), ("rule", rule.as_str())], threshold);
        }
        for rule in AlertRule::EVERY {
            let active = active_alerts.contains_key(&(name.clone(), rule));
            alerts.value(
                &[
                    ("pool", p),
                    ("rule", rule.as_str()),
                    ("severity", rule.severity().as_str()),
                ],
                f64::from(u8::from(active)),
            );
        }
    }
    let mut events = Family::new(
        "poolplane_events_published_total",
        "Events published on the event bus.",
        COUNTER,
    );
    events.value(&[], app.events().last_sequence() as f64);
    let mut lagged = Family::new(
        "poolplane_events_lagged_total",
        "Events Watch subscribers lost by falling behind.",
        COUNTER,
    );
    lagged.value(&[], app.events().lagged_events() as f64);

    [
        pools,
        connections,
        max,
        min,
        pending,
        utilization,
        error_rate,
        health,
        peak,
        uptime,
        acquisitions,
        created,
        closed,
        broken,
        sql_errors,
        wait,
        hold,
        setup,
        statement,
        alerts,
        thresholds,
        events,
        lagged,
    ]
    .into_iter()
    .filter(|family| !family.metrics.is_empty())
    .map(Family::build)
    .collect()
}
