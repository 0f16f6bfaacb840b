//! PoolAdmin.CheckHealth: a check now, for one pool or all, with the state,
//! latency, last error and time the monitor then knows.

use std::time::Duration;

use poolplane::proto::{CheckHealthRequest, HealthState};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::{config_yaml_with, free_port, LoginRole, PoolSpec, TestServer};

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

async fn checked(
    admin: &mut poolplane::proto::pool_admin_client::PoolAdminClient<tonic::transport::Channel>,
    pool: &str,
) -> poolplane::proto::PoolHealth {
    admin
        .check_health(CheckHealthRequest { pool: pool.into() })
        .await
        .expect("check")
        .into_inner()
        .results
        .remove(0)
        .health
        .expect("health")
}

/// A kept probe connection proves the database answers, not that the pool
/// can still log in. A pool whose role stops logging in (a password
/// changed on the server, NOLOGIN) is DEGRADED while its connections still
/// serve, UNHEALTHY once it has none, and heals when logins work again.
/// (Found by a review: HEALTHY, and ready, while no connection could open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_log_in_is_degraded_then_unhealthy_and_heals() {
    const ROLE: &str = "pp_login_check";
    const APP: &str = "poolplane/login_check";
    let pg = crate::support::cluster().admin().await;
    let role = LoginRole::create(ROLE, "").await;
    let mut spec = role.pool(PoolSpec::new("login_check", 3));
    spec.min = 2;
    let server = TestServer::start(&config_yaml_with(&[spec], MANUAL)).await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;
    let readiness = HealthClient::new(server.channel().await);
    crate::support::eventually("two warm connections", Duration::from_secs(10), || {
        let pg = &pg;
        async move { crate::support::backends(pg, APP).await == 2 }
    })
    .await;
    assert_eq!(
        checked(&mut admin, "login_check").await.state,
        HealthState::Healthy as i32
    );

    // The password changes on the server. Both connections busy, a third
    // call needs a new connection, which cannot log in (and is reported).
    pg.batch_execute(&format!(
        "ALTER ROLE {ROLE} PASSWORD 'changed-elsewhere-0123'"
    ))
    .await
    .expect("change password");
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        busy.push(tokio::spawn(async move {
            client
                .execute(crate::support::exec(
                    "login_check",
                    "SELECT pg_sleep(1)",
                    vec![],
                ))
                .await
        }));
    }
    crate::support::eventually("both connections busy", Duration::from_secs(10), || {
        let pg = &pg;
        async move { crate::support::sleeping(pg, APP).await == 2 }
    })
    .await;
    // Its new connection cannot log in: it waits for a kept one instead.
    query
        .execute(crate::support::exec("login_check", "SELECT 1", vec![]))
        .await
        .expect("served once a kept connection is free");
    for call in busy {
        call.await
            .expect("join")
            .expect("the kept connections still serve");
    }

    let health = checked(&mut admin, "login_check").await;
    assert_eq!(health.state, HealthState::Degraded as i32, "{health:?}");
    assert!(
        health.last_error.contains("a new connection fails")
            && health.last_error.contains("password authentication failed"),
        "{}",
        health.last_error
    );
    assert!(
        !health.last_error.contains(&role.password()),
        "no password in errors"
    );
    query
        .execute(crate::support::exec("login_check", "SELECT 1", vec![]))
        .await
        .expect("a kept connection serves");
    // Still degraded at the next check (the failed login is tried again),
    // and still ready: its connections serve.
    assert_eq!(
        checked(&mut admin, "login_check").await.state,
        HealthState::Degraded as i32
    );
    await_readiness(
        &readiness,
        "poolplane.v1.Query/login_check",
        ServingStatus::Serving,
    )
    .await;

    // The password is put back: the next check logs in and heals.
    pg.batch_execute(&format!("ALTER ROLE {ROLE} PASSWORD '{}'", role.password()))
        .await
        .expect("restore password");
    assert_eq!(
        checked(&mut admin, "login_check").await.state,
        HealthState::Healthy as i32
    );

    // NOLOGIN: ReconnectPool refuses to throw away connections it could
    // not replace, and keeps them.
    pg.batch_execute(&format!("ALTER ROLE {ROLE} NOLOGIN"))
        .await
        .expect("nologin");
    let refused = admin
        .reconnect_pool(poolplane::proto::ReconnectPoolRequest {
            name: "login_check".into(),
        })
        .await
        .expect_err("no new connection");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("keeps its connections")
            && refused.message().contains("not permitted to log in"),
        "{refused:?}"
    );
    query
        .execute(crate::support::exec("login_check", "SELECT 1", vec![]))
        .await
        .expect("the kept connections serve");
    // Their backends end: nothing left to serve with.
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&APP],
    )
    .await
    .expect("terminate");
    crate::support::eventually(
        "the pool's connections are gone",
        Duration::from_secs(10),
        || {
            let pg = &pg;
            async move { crate::support::backends(pg, APP).await == 0 }
        },
    )
    .await;
    let mut health = checked(&mut admin, "login_check").await;
    for _ in 0..3 {
        if health.state == HealthState::Unhealthy as i32 {
            break;
        }
        health = checked(&mut admin, "login_check").await;
    }
    assert_eq!(health.state, HealthState::Unhealthy as i32, "{health:?}");
    assert!(
        health
            .last_error
            .contains("the pool has no connection left, and a new connection fails")
            && health.last_error.contains("not permitted to log in"),
        "{}",
        health.last_error
    );
    await_readiness(
        &readiness,
        "poolplane.v1.Query/login_check",
        ServingStatus::NotServing,
    )
    .await;
    let status = query
        .execute(crate::support::exec("login_check", "SELECT 1", vec![]))
        .await
        .expect_err("fails fast");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("not permitted to log in"),
        "{status:?}"
    );

    pg.batch_execute(&format!("ALTER ROLE {ROLE} LOGIN"))
        .await
        .expect("login again");
    assert_eq!(
        checked(&mut admin, "login_check").await.state,
        HealthState::Healthy as i32
    );
    query
        .execute(crate::support::exec("login_check", "SELECT 1", vec![]))
        .await
        .expect("works again");
    server.stop().await;
    role.drop_role().await;
}

/// Waits until `grpc.health.v1` says `expected` of `service` (it follows
/// health events, a moment after the check that changed the state).
async fn await_readiness(
    health: &HealthClient<tonic::transport::Channel>,
    service: &str,
    expected: ServingStatus,
) {
    crate::support::eventually(
        &format!("{service} is {expected:?}"),
        Duration::from_secs(5),
        || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status == expected as i32)
            }
        },
    )
    .await;
}

/// A probe that loses its connection and cannot open another (the role's
/// CONNECTION LIMIT is taken by the pool's own connections) asks one of the
/// pool's idle connections: the database answers there, so the pool is
/// DEGRADED and keeps serving, not UNHEALTHY with every call refused.
/// (Found by a red team: a caller's `ALTER ... CONNECTION LIMIT` and a
/// terminated probe locked the pool out of its own working connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_cannot_connect_asks_the_pools_own_connection() {
    const ROLE: &str = "pp_probe_limit";
    const APP: &str = "poolplane/probe_limit";
    let pg = crate::support::cluster().admin().await;
    let role = LoginRole::create(ROLE, "").await;
    let mut spec = role.pool(PoolSpec::new("probe_limit", 2));
    spec.min = 1;
    let server = TestServer::start(&config_yaml_with(&[spec], MANUAL)).await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;
    crate::support::eventually("the warm connection", Duration::from_secs(10), || {
        let pg = &pg;
        async move { crate::support::backends(pg, APP).await == 1 }
    })
    .await;
    assert_eq!(
        checked(&mut admin, "probe_limit").await.state,
        HealthState::Healthy as i32
    );

    // The pool's connection is all the role may have; the probe's goes.
    pg.batch_execute(&format!("ALTER ROLE {ROLE} CONNECTION LIMIT 1"))
        .await
        .expect("limit");
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&format!("{APP}/probe")],
    )
    .await
    .expect("terminate the probe's backend");
    crate::support::eventually(
        "the probe's backend is gone",
        Duration::from_secs(10),
        || {
            let pg = &pg;
            async move { crate::support::backends(pg, &format!("{APP}/probe")).await == 0 }
        },
    )
    .await;
    for _ in 0..3 {
        let health = checked(&mut admin, "probe_limit").await;
        assert_eq!(health.state, HealthState::Degraded as i32, "{health:?}");
        assert!(
            health.last_error.contains("a new connection fails")
                && health.last_error.contains("too many connections for role"),
            "{}",
            health.last_error
        );
        query
            .execute(crate::support::exec("probe_limit", "SELECT 1", vec![]))
            .await
            .expect("served on the pool's connection");
    }

    pg.batch_execute(&format!("ALTER ROLE {ROLE} CONNECTION LIMIT -1"))
        .await
        .expect("no limit");
    assert_eq!(
        checked(&mut admin, "probe_limit").await.state,
        HealthState::Healthy as i32
    );
    server.stop().await;
    role.drop_role().await;
}
