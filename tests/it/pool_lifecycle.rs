//! A pool's life outside the query itself: warm-up at start, statistics that
//! stay exact when callers give up, and a server shutdown that lets calls finish.

use std::time::Duration;

use tonic::Code;

use crate::support::{
    backends, cluster, config_yaml, eventually, exec, pool_statistics, v, PoolSpec, TestServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_connections_are_opened_at_start() {
    let mut spec = PoolSpec::new("warm", 5);
    spec.min = 3;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let admin = cluster().admin().await;
    // PostgreSQL sees a backend as soon as it authenticates, a moment before
    // the pool finishes setting it up and counts it idle: await both views.
    eventually(
        "three warm idle connections",
        Duration::from_secs(10),
        || {
            let (admin, server) = (&admin, &server);
            async move {
                let stats = pool_statistics(server, "warm").await;
                (stats.total, stats.idle, stats.active) == (3, 3, 0)
                    && backends(admin, "poolplane/warm").await == 3
            }
        },
    )
    .await;
    server.stop().await;
    assert_eq!(
        backends(&admin, "poolplane/warm").await,
        0,
        "shutdown closes every connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_while_queued_leaves_exact_statistics() {
    let mut spec = PoolSpec::new("queue", 1);
    spec.connection_timeout_ms = 10_000;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let mut holder = server.query().await;
    let hold = tokio::spawn(async move {
        holder
            .execute(exec("queue", "SELECT pg_sleep(1)", vec![]))
            .await
    });
    eventually("the connection is held", Duration::from_secs(5), || async {
        pool_statistics(&server, "queue").await.active == 1
    })
    .await;

    let mut waiter = server.query().await;
    let mut request = tonic::Request::new(exec("queue", "SELECT 1", vec![]));
    request.set_timeout(Duration::from_millis(300));
    let waiting = tokio::spawn(async move { waiter.execute(request).await });
    eventually("one caller is pending", Duration::from_secs(5), || async {
        pool_statistics(&server, "queue").await.pending == 1
    })
    .await;
    let status = waiting.await.expect("join").expect_err("gave up");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let stats = pool_statistics(&server, "queue").await;
    assert_eq!(stats.pending, 0, "a cancelled wait is no longer pending");
    assert_eq!(stats.acquisitions_succeeded, 1);

    hold.await.expect("join").expect("holder finishes");
    eventually("the lease is returned", Duration::from_secs(5), || async {
        pool_statistics(&server, "queue").await.active == 0
    })
    .await;
    let stats = pool_statistics(&server, "queue").await;
    assert_eq!((stats.total, stats.idle), (1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("shutdown", 2)])).await;
    let mut client = server.query().await;
    let call = tokio::spawn(async move {
        client
            .execute(exec(
                "shutdown",
                "SELECT pg_sleep(0.5), 'done'::text",
                vec![],
            ))
            .await
    });
    eventually("the call is running", Duration::from_secs(5), || async {
        pool_statistics(&server, "shutdown").await.active == 1
    })
    .await;
    server.stop().await;
    let response = call
        .await
        .expect("join")
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(response.rows[0].values[1], v::text("done"));
    assert_eq!(
        backends(&cluster().admin().await, "poolplane/shutdown").await,
        0
    );
}

/// A pool that cannot open another connection (its role's CONNECTION
/// LIMIT is reached) serves its callers in turn on the connection it has,
/// as HikariCP does, instead of failing them while it is merely busy; a
/// caller that waits its whole timeout hears why the pool did not grow.
/// (Found by a red team: callers failed at once with UNAVAILABLE while a
/// connection was about to free up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_grow_serves_callers_in_turn() {
    const ROLE: &str = "pp_limited";
    let pg = cluster().admin().await;
    // One connection for the pool, one for its health probe.
    let role = crate::support::LoginRole::create(ROLE, "CONNECTION LIMIT 2").await;
    let mut spec = role.pool(PoolSpec::new("limited", 4));
    spec.min = 1;
    spec.connection_timeout_ms = 10_000;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    eventually(
        "the warm connection and the probe",
        Duration::from_secs(10),
        || {
            let pg = &pg;
            async move {
                pg.query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                    &[&ROLE],
                )
                .await
                .map(|row| row.get::<_, i64>(0))
                .unwrap_or(0)
                    == 2
            }
        },
    )
    .await;

    let calls: Vec<_> = (0..3)
        .map(|n| {
            let server = &server;
            async move {
                server
                    .query()
                    .await
                    .execute(exec(
                        "limited",
                        &format!("SELECT {n} FROM pg_sleep(0.3)"),
                        vec![],
                    ))
                    .await
            }
        })
        .collect();
    for (n, result) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let rows = result.unwrap_or_else(|status| panic!("call {n} failed: {status:?}"));
        assert_eq!(rows.into_inner().rows.len(), 1);
    }

    // Held past a short timeout: the waiter hears the connection limit.
    let mut holder = server.query().await;
    let held = tokio::spawn(async move {
        holder
            .execute(exec("limited", "SELECT pg_sleep(2)", vec![]))
            .await
    });
    eventually("the connection is held", Duration::from_secs(5), || async {
        pool_statistics(&server, "limited").await.active == 1
    })
    .await;
    let mut request = tonic::Request::new(exec("limited", "SELECT 1", vec![]));
    request.set_timeout(Duration::from_secs(30));
    let mut admin = server.admin().await;
    admin
        .update_pool(poolplane::proto::UpdatePoolRequest {
            name: "limited".into(),
            connection_timeout_ms: Some(300),
            ..Default::default()
        })
        .await
        .expect("shorter timeout");
    let status = server
        .query()
        .await
        .execute(request)
        .await
        .expect_err("no connection in time");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("could not open another")
            && status.message().contains("too many connections for role"),
        "{status:?}"
    );
    held.await.expect("join").expect("the held call ends well");
    server.stop().await;
    role.drop_role().await;
}
