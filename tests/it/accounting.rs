//! The pool's numbers are PostgreSQL's numbers: after a storm of cancelled
//! calls (deadlines passing while waiting, connecting and running; result
//! limits cutting statements short) GetPool's open count equals the pool's
//! backends in pg_stat_activity, nothing is left active or pending, a
//! resize answers promptly and `min_connections` is still kept.

use std::time::{Duration, Instant};

use poolplane::proto::UpdatePoolRequest;
use tonic::Code;

use crate::support::{
    backends, cluster, config_yaml, eventually, exec, pool_statistics, PoolSpec, TestServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_postgresql_after_a_storm_of_cancelled_calls() {
    let _turn = crate::support::machine_to_myself().await;
    let pool = "storm";
    let mut spec = PoolSpec::new(pool, 4);
    spec.min = 2;
    spec.connection_timeout_ms = 2000;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");

    // 300 calls whose deadline (10 to 100 ms) passes while they wait,
    // connect or run, and 300 whose result is cut at the row limit, 32 at a
    // time.
    let deadline_calls = (0..300).map(|_| {
        let server = &server;
        async move {
            let mut request = tonic::Request::new(exec(pool, "SELECT pg_sleep(0.25)", vec![]));
            request.set_timeout(Duration::from_millis(fastrand::u64(10..=100)));
            server.query().await.execute(request).await.map(|_| ())
        }
    });
    let limit_calls = (0..300).map(|_| {
        let server = &server;
        async move {
            let mut request = exec(pool, "SELECT g FROM generate_series(1, 100000) g", vec![]);
            request.max_rows = 5;
            server.query().await.execute(request).await.map(|_| ())
        }
    });
    let mut calls: Vec<_> = deadline_calls
        .map(futures::FutureExt::boxed)
        .chain(limit_calls.map(futures::FutureExt::boxed))
        .collect();
    fastrand::shuffle(&mut calls);
    // Meanwhile PostgreSQL never sees more than max_connections backends of
    // the pool, counting those still starting up for an abandoned connect.
    let storm_over = std::sync::atomic::AtomicBool::new(false);
    let most_seen = async {
        let sampler = cluster().admin().await;
        let mut most = 0;
        while !storm_over.load(std::sync::atomic::Ordering::Relaxed) {
            most = most.max(backends(&sampler, &app).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        most
    };
    let storm = async {
        let results: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(calls),
            32,
        ))
        .await;
        storm_over.store(true, std::sync::atomic::Ordering::Relaxed);
        results
    };
    let (results, most_seen) = tokio::join!(storm, most_seen);
    assert!(most_seen <= 4, "{most_seen} backends of a pool of 4");
    for result in &results {
        let status = result.as_ref().expect_err("every call of the storm fails");
        assert!(
            matches!(
                status.code(),
                Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
            ),
            "{status:?}"
        );
    }

    eventually(
        "GetPool's open count equals the pool's backends, at least min_connections, nothing active or pending",
        Duration::from_secs(10),
        || {
            let (server, admin, app) = (&server, &admin, &app);
            async move {
                let stats = pool_statistics(server, pool).await;
                let seen = backends(admin, app).await;
                let open = i64::from(stats.total);
                open == seen && open >= 2 && stats.active == 0 && stats.pending == 0
            }
        },
    )
    .await;
    let stats = pool_statistics(&server, pool).await;
    assert!(stats.total <= 4, "max_connections kept: {stats:?}");

    // A resize answers promptly and takes effect.
    let started = Instant::now();
    server
        .admin()
        .await
        .update_pool(UpdatePoolRequest {
            name: pool.into(),
            max_connections: Some(2),
            ..Default::default()
        })
        .await
        .expect("resize");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "UpdatePool took {took:?}");
    assert!(backends(&admin, &app).await <= 2);
    eventually(
        "min_connections kept after the resize",
        Duration::from_secs(10),
        || {
            let (server, admin, app) = (&server, &admin, &app);
            async move {
                let stats = pool_statistics(server, pool).await;
                let seen = backends(admin, app).await;
                stats.total == 2 && seen == 2
            }
        },
    )
    .await;

    // And the pool works, and drains completely.
    server
        .query()
        .await
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("a call after the storm");
    let report = server
        .admin()
        .await
        .delete_pool(poolplane::proto::DeletePoolRequest {
            name: pool.into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(report.cancelled, 0);
    assert_eq!(
        backends(&admin, &app).await,
        0,
        "no backend left after the drain"
    );
    server.stop().await;
}

/// A caller that ends its own backend did not find the pool broken: its
/// connection is closed, but not counted as broken (which feeds the error
/// rate and `high_error_rate`), and no connection-lost event is published,
/// however the call is hidden. Ending *another* pool's idle backend is
/// still that pool's broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_ending_its_own_backend_is_not_a_pool_failure() {
    let (killer, victim) = ("self_ending", "ended_by_others");
    let mut victim_spec = PoolSpec::new(victim, 1);
    victim_spec.min = 1;
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(killer, 1), victim_spec])).await;
    let admin = cluster().admin().await;
    let mut client = server.query().await;

    // Directly, and hidden where no parser sees it (a DO block, a function).
    for sql in [
        "SELECT pg_terminate_backend(pg_backend_pid())",
        "DO $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); END $$",
        "SELECT pp_end_myself()",
    ] {
        if sql.contains("pp_end_myself") {
            admin
                .batch_execute(
                    "CREATE OR REPLACE FUNCTION pp_end_myself() RETURNS bool \
                     LANGUAGE sql AS 'SELECT pg_terminate_backend(pg_backend_pid())'",
                )
                .await
                .expect("create function");
        }
        let status = client
            .execute(exec(killer, sql, vec![]))
            .await
            .expect_err("the backend ends");
        assert_eq!(status.code(), Code::Unavailable, "{sql}: {status:?}");
        eventually("the ended backend is gone", Duration::from_secs(5), || {
            let admin = &admin;
            async move { backends(admin, &format!("poolplane/{killer}")).await == 0 }
        })
        .await;
    }
    // The pool works on, and its numbers show no failure.
    client
        .execute(exec(killer, "SELECT 1", vec![]))
        .await
        .expect("a fresh connection");
    let stats = pool_statistics(&server, killer).await;
    assert_eq!(stats.broken_connections, 0, "{stats:?}");

    // The same call aimed at the other pool's idle backend breaks that pool.
    eventually("the victim's backend is up", Duration::from_secs(5), || {
        let admin = &admin;
        async move { backends(admin, &format!("poolplane/{victim}")).await == 1 }
    })
    .await;
    client
        .execute(exec(
            killer,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'poolplane/{victim}'"
            ),
            vec![],
        ))
        .await
        .expect("ends the other pool's backend");
    eventually(
        "the victim pool counts a broken connection",
        Duration::from_secs(5),
        || {
            let server = &server;
            async move { pool_statistics(server, victim).await.broken_connections == 1 }
        },
    )
    .await;
    assert_eq!(pool_statistics(&server, killer).await.broken_connections, 0);
    server.stop().await;
}
