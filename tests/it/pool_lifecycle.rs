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
