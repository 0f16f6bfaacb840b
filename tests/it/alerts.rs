//! Alerts end to end: saturation fires the utilization alert (a Watch
//! subscriber sees it), acknowledge, the load ends and it resolves after
//! the clear window; a stopped database fires the unhealthy and error-rate
//! alerts; a cleared alert whose condition holds fires again. Also the
//! metrics history: exact ranges, the retention bound, and opt-in
//! metrics-snapshot events.

use std::time::Duration;

use poolplane::proto::{
    event, AcknowledgeAlertRequest, AlertRule, AlertSeverity, AlertState, ClearAlertRequest,
    EventKind, GetMetricsHistoryRequest, ListAlertsRequest, WatchRequest,
};
use tonic::Code;

use crate::support::{
    config_yaml_with, eventually, exec, metric, scrape, EventLog, PgCluster, PoolSpec, TestServer,
};

/// Samples every 100 ms; alerts fire after 2 samples and resolve after 2.
const FAST_MONITORING: &str = "  monitoring:\n    collection_interval_ms: 100\n    retention_period_ms: 500\n    enable_alerts: true\n    connection_utilization_threshold: 0.5\n    error_rate_threshold: 0.2\n    alert_fire_after_samples: 2\n    alert_resolve_after_samples: 2\n  health_monitoring:\n    check_interval_ms: 100\n    connection_timeout_ms: 500\n    failure_threshold: 2\n";

fn alert_of(event: &poolplane::proto::Event) -> Option<&poolplane::proto::Alert> {
    match &event.detail {
        Some(event::Detail::Alert(alert)) => Some(alert),
        _ => None,
    }
}

fn rule_is(rule: AlertRule) -> impl Fn(&poolplane::proto::Event) -> bool {
    move |e| alert_of(e).is_some_and(|a| a.rule == rule as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_lifecycle_from_saturation_to_a_dead_database() {
    let pg = PgCluster::private();
    let spec = PoolSpec::new("alerting", 2)
        .port(pg.port)
        .with("retry_delay_ms: 50")
        .with("max_retry_delay_ms: 200");
    let server = TestServer::start(&config_yaml_with(&[spec], FAST_MONITORING)).await;
    let log = EventLog::start(
        &server,
        WatchRequest {
            pools: vec!["alerting".into()],
            ..Default::default()
        },
    )
    .await;
    let mut admin = server.admin().await;

    // Saturate: both connections held.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        holders.push(tokio::spawn(async move {
            client
                .execute(exec("alerting", "SELECT pg_sleep(1.5)", vec![]))
                .await
        }));
    }
    log.wait_for(
        EventKind::AlertTriggered,
        Duration::from_secs(5),
        rule_is(AlertRule::HighUtilization),
    )
    .await;
    let active = admin
        .list_alerts(ListAlertsRequest {
            pool: "alerting".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .alerts;
    let utilization = active
        .iter()
        .find(|a| a.rule == AlertRule::HighUtilization as i32)
        .expect("utilization alert listed")
        .clone();
    assert_eq!(utilization.severity, AlertSeverity::Warning as i32);
    assert_eq!(utilization.state, AlertState::Firing as i32);
    assert_eq!(utilization.value, 1.0);
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "poolplane_alerts_active",
            &[("pool", "alerting"), ("rule", "high_utilization")]
        ),
        Some(1.0)
    );

    for bad in [
        "x".repeat(129),
        "ops\u{1b}[2J".into(),
        "evil\u{202E}txt".into(),
    ] {
        let status = admin
            .acknowledge_alert(AcknowledgeAlertRequest {
                id: utilization.id,
                by: bad,
            })
            .await
            .expect_err("a name no terminal should print");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let acked = admin
        .acknowledge_alert(AcknowledgeAlertRequest {
            id: utilization.id,
            by: "tester".into(),
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(acked.state, AlertState::Acknowledged as i32);
    assert_eq!(acked.acknowledged_by, "tester");
    log.wait_for(
        EventKind::AlertAcknowledged,
        Duration::from_secs(2),
        rule_is(AlertRule::HighUtilization),
    )
    .await;

    // The load ends: resolved after the clear window.
    for holder in holders {
        holder.await.expect("join").expect("sleep");
    }
    log.wait_for(EventKind::AlertResolved, Duration::from_secs(5), |e| {
        alert_of(e)
            .is_some_and(|a| a.id == utilization.id && a.state == AlertState::Resolved as i32)
    })
    .await;
    let ended = admin
        .list_alerts(ListAlertsRequest {
            pool: "alerting".into(),
            include_ended: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .alerts;
    assert!(ended
        .iter()
        .any(|a| a.id == utilization.id && a.ended_at.is_some()));
    let status = admin
        .acknowledge_alert(AcknowledgeAlertRequest {
            id: utilization.id,
            by: "late".into(),
        })
        .await
        .expect_err("ended");
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The database dies under traffic: unhealthy (critical) and error rate.
    pg.pg_stop_immediate();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let mut client = server.query().await;
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client.execute(exec("alerting", "SELECT 1", vec![])).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    log.wait_for(
        EventKind::AlertTriggered,
        Duration::from_secs(5),
        rule_is(AlertRule::PoolUnhealthy),
    )
    .await;
    log.wait_for(
        EventKind::AlertTriggered,
        Duration::from_secs(5),
        rule_is(AlertRule::HighErrorRate),
    )
    .await;
    let unhealthy = log
        .events()
        .iter()
        .filter_map(alert_of)
        .find(|a| a.rule == AlertRule::PoolUnhealthy as i32)
        .expect("unhealthy alert")
        .clone();
    assert_eq!(unhealthy.severity, AlertSeverity::Critical as i32);
    let critical = admin
        .list_alerts(ListAlertsRequest {
            severity: AlertSeverity::Critical as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .alerts;
    assert_eq!(
        critical.iter().map(|a| a.id).collect::<Vec<_>>(),
        [unhealthy.id]
    );

    // Cleared by hand while the condition holds: it fires again, anew.
    let cleared = admin
        .clear_alert(ClearAlertRequest { id: unhealthy.id })
        .await
        .expect("clear")
        .into_inner();
    assert_eq!(cleared.state, AlertState::Cleared as i32);
    log.wait_for(EventKind::AlertTriggered, Duration::from_secs(5), |e| {
        alert_of(e)
            .is_some_and(|a| a.rule == AlertRule::PoolUnhealthy as i32 && a.id != unhealthy.id)
    })
    .await;
    let status = admin
        .clear_alert(ClearAlertRequest { id: 999_999 })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.expect("traffic");
    // Metrics snapshots are opt-in: this subscriber named no kinds.
    assert!(!log.has(EventKind::MetricsSnapshot, |_| true));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_history_returns_exact_ranges_within_retention() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("history", 2)],
        FAST_MONITORING,
    ))
    .await;
    let snapshots = EventLog::start(
        &server,
        WatchRequest {
            pools: vec!["history".into()],
            kinds: vec![EventKind::MetricsSnapshot as i32],
            ..Default::default()
        },
    )
    .await;
    let mut admin = server.admin().await;
    let history = |mut admin: poolplane::proto::pool_admin_client::PoolAdminClient<_>, from, to| async move {
        admin
            .get_metrics_history(GetMetricsHistoryRequest {
                pool: "history".into(),
                from,
                to,
            })
            .await
            .expect("history")
            .into_inner()
    };
    // Retention 500 ms at 100 ms: never more than 6 samples. (Six only if
    // every collection came exactly on time; a busy machine's come a little
    // late, so five is what can be waited for.)
    eventually("the history fills", Duration::from_secs(5), || {
        let admin = admin.clone();
        async move { history(admin, None, None).await.samples.len() >= 5 }
    })
    .await;
    let all = history(admin.clone(), None, None).await;
    assert!(
        all.samples.len() <= 6,
        "retention exceeded: {}",
        all.samples.len()
    );
    assert_eq!(
        (all.collection_interval_ms, all.retention_period_ms),
        (100, 500)
    );
    let times: Vec<_> = all.samples.iter().map(|s| s.time.expect("time")).collect();
    let key = |t: &prost_types::Timestamp| (t.seconds, t.nanos);
    assert!(
        times.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "ordered by time"
    );
    // A range picks exactly the samples inside it, bounds included.
    let range = history(admin.clone(), Some(times[1]), Some(times[3])).await;
    let got: Vec<_> = range
        .samples
        .iter()
        .map(|s| key(&s.time.expect("time")))
        .collect();
    let want: Vec<_> = times[1..=3].iter().map(key).collect();
    assert_eq!(got, want);
    assert!(all
        .samples
        .iter()
        .all(|s| s.pool == "history" && s.max == 2));

    // The opt-in subscriber gets metrics snapshots.
    snapshots
        .wait_for(
            EventKind::MetricsSnapshot,
            Duration::from_secs(2),
            |e| matches!(&e.detail, Some(event::Detail::Metrics(m)) if m.pool == "history"),
        )
        .await;
    let status = admin
        .get_metrics_history(GetMetricsHistoryRequest {
            pool: "ghost".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}
