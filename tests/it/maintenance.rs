//! Background maintenance seen from PostgreSQL: idle connections above the
//! minimum are reaped, the minimum stays warm, and connections past their
//! lifetime are replaced (their backend PIDs change).

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{cluster, config_yaml, eventually, exec, sleeping, PoolSpec, TestServer};

const APP: &str = "poolplane/maint";

async fn pids(admin: &tokio_postgres::Client) -> HashSet<i32> {
    crate::support::backend_pids(admin, APP).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reaping_warm_minimum_and_lifetime_replacement() {
    let mut spec = PoolSpec::new("maint", 5)
        .with("idle_timeout_ms: 300")
        .with("max_lifetime_ms: 2000")
        .with("health_check_interval_ms: 100");
    spec.min = 2;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let admin = cluster().admin().await;

    // Burst to five connections.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client
                .execute(exec("maint", "SELECT pg_sleep(1)", vec![]))
                .await
        }));
    }
    // All five at once (counted while they sleep: on a busy machine a
    // short call may end before the last one starts, and idle ones are
    // reaped quickly here).
    eventually(
        "the burst opened five connections",
        Duration::from_secs(10),
        || {
            let admin = &admin;
            async move { sleeping(admin, APP).await == 5 }
        },
    )
    .await;
    for call in calls {
        call.await.expect("join").expect("burst call");
    }

    // Idle ones above the minimum are closed after the idle timeout.
    // The PIDs are read in the same check: a lifetime replacement may begin
    // right after the count reaches two.
    let first = std::sync::Mutex::new(HashSet::new());
    eventually("reaped down to the minimum", Duration::from_secs(5), || {
        let (admin, first) = (&admin, &first);
        async move {
            let now = pids(admin).await;
            let reaped = now.len() == 2;
            *first.lock().expect("not poisoned") = now;
            reaped
        }
    })
    .await;
    let first = first.into_inner().expect("not poisoned");

    // Past their lifetime they are replaced, and the minimum stays warm.
    eventually(
        "both replaced after their lifetime",
        Duration::from_secs(10),
        || {
            let admin = &admin;
            let first = &first;
            async move {
                let now = pids(admin).await;
                now.len() == 2 && now.is_disjoint(first)
            }
        },
    )
    .await;
    let stats = server
        .admin()
        .await
        .get_pool(poolplane::proto::GetPoolRequest {
            name: "maint".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .statistics
        .expect("stats");
    assert!(stats.connections_closed >= 5, "{stats:?}");
    assert_eq!(
        stats.broken_connections, 0,
        "reaping and retiring are not breakage"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_past_its_lifetime_finishes_its_work_first() {
    let spec = PoolSpec::new("lifetime_busy", 1).with("max_lifetime_ms: 200");
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let mut client = server.query().await;
    // Runs well past the lifetime; maintenance must not cut it short.
    let response = client
        .execute(exec(
            "lifetime_busy",
            "SELECT pg_sleep(0.6), pg_backend_pid()",
            vec![],
        ))
        .await
        .expect("in-flight work is not disturbed")
        .into_inner();
    let old_pid = response.rows[0].values[1].clone();
    let next = client
        .execute(exec("lifetime_busy", "SELECT pg_backend_pid()", vec![]))
        .await
        .expect("next call")
        .into_inner();
    assert_ne!(
        next.rows[0].values[0], old_pid,
        "the retired connection was not reused"
    );
    server.stop().await;
}
