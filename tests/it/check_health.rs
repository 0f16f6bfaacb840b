//! PoolAdmin.CheckHealth: a check now, for one pool or all, with the state,
//! latency, last error and time the monitor then knows.

use poolplane::proto::{CheckHealthRequest, HealthState};
use tonic::Code;

use crate::support::{config_yaml_with, free_port, PoolSpec, TestServer};

/// Checks only when asked (the periodic interval is an hour).
const MANUAL: &str = "  health_monitoring:\n    check_interval_ms: 3600000\n    connection_timeout_ms: 1000\n    failure_threshold: 2\n    enable_automatic_recovery: false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_health_probes_now_and_reports() {
    let pools = [
        PoolSpec::new("check_live", 1),
        PoolSpec::new("check_dead", 1).port(free_port()),
    ];
    let server = TestServer::start(&config_yaml_with(&pools, MANUAL)).await;
    let mut admin = server.admin().await;

    let live = admin
        .check_health(CheckHealthRequest {
            pool: "check_live".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(live.results.len(), 1);
    let health = live.results[0].health.clone().expect("health");
    assert_eq!(health.state, HealthState::Healthy as i32);
    assert!(health.probe_latency_ms > 0.0);
    assert!(health.last_check.is_some());
    assert!(health.last_error.is_empty());
    let checks_before = health.checks;
    let again = admin
        .check_health(CheckHealthRequest {
            pool: "check_live".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        again.results[0].health.as_ref().expect("health").checks,
        checks_before + 1,
        "a new check ran"
    );

    // The dead pool (nothing listens on its port) turns unhealthy after two checks.
    let mut last = None;
    for _ in 0..2 {
        last = Some(
            admin
                .check_health(CheckHealthRequest {
                    pool: "check_dead".into(),
                })
                .await
                .expect("check")
                .into_inner(),
        );
    }
    let health = last.expect("checked").results[0]
        .health
        .clone()
        .expect("health");
    assert_eq!(health.state, HealthState::Unhealthy as i32);
    assert!(health.consecutive_failures >= 2);
    assert!(
        health.last_error.contains("refused"),
        "{}",
        health.last_error
    );

    let all = admin
        .check_health(CheckHealthRequest {
            pool: String::new(),
        })
        .await
        .expect("check all")
        .into_inner();
    let mut names: Vec<_> = all.results.iter().map(|r| r.pool.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["check_dead", "check_live"]);

    let status = admin
        .check_health(CheckHealthRequest {
            pool: "ghost".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

/// Probe connections are outside every pool's `max_connections`, so they
/// have a server-wide limit: six pools checked every 100 ms with
/// `max_probe_connections: 2` never hold more than two probe connections,
/// and every pool is still checked (HEALTHY). (Found by a review: 320
/// pools' probes filled PostgreSQL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_many_pools_share_a_bounded_number_of_connections() {
    let names = [
        "probe_a", "probe_b", "probe_c", "probe_d", "probe_e", "probe_f",
    ];
    let pools: Vec<PoolSpec<'_>> = names.iter().map(|name| PoolSpec::new(name, 1)).collect();
    let server = TestServer::start(&config_yaml_with(
        &pools,
        "  health_monitoring:\n    check_interval_ms: 100\n    max_probe_connections: 2\n",
    ))
    .await;
    let admin = crate::support::cluster().admin().await;
    let mut most = 0;
    for _ in 0..60 {
        let probes: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolplane/probe_%/probe'",
                &[],
            )
            .await
            .expect("count probes")
            .get(0);
        most = most.max(probes);
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(most <= 2, "{most} probe connections at once");
    for name in names {
        crate::support::wait_for_health(
            &server,
            name,
            HealthState::Healthy,
            std::time::Duration::from_secs(10),
        )
        .await;
    }
    server.stop().await;
}
