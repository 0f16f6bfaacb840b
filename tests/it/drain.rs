//! DeletePool drains: new work is refused, in-flight work finishes (or is
//! cancelled when forced or out of time), and no backend of the pool remains.

use std::time::{Duration, Instant};

use poolplane::proto::{DeletePoolRequest, GetPoolRequest, PoolState};
use tonic::Code;

use crate::support::{backends, cluster, config_yaml, eventually, exec, PoolSpec, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_lets_in_flight_calls_finish_then_closes_every_connection() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("drain_soft", 8)])).await;
    let admin_pg = cluster().admin().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client
                .execute(exec("drain_soft", "SELECT pg_sleep(0.3)", vec![]))
                .await
        }));
    }
    eventually("statements are running", Duration::from_secs(10), || {
        let admin_pg = &admin_pg;
        async move { crate::support::sleeping(admin_pg, "poolplane/drain_soft").await >= 4 }
    })
    .await;
    let mut admin = server.admin().await;
    let deleting = {
        let mut admin = admin.clone();
        tokio::spawn(async move {
            admin
                .delete_pool(DeletePoolRequest {
                    name: "drain_soft".into(),
                    drain_timeout_ms: 10_000,
                    force: false,
                })
                .await
        })
    };
    eventually("the pool is draining", Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            match admin
                .get_pool(GetPoolRequest {
                    name: "drain_soft".into(),
                })
                .await
            {
                Ok(pool) => pool.into_inner().state == PoolState::Draining as i32,
                Err(status) => status.code() == Code::NotFound,
            }
        }
    })
    .await;
    let mut late = server.query().await;
    if let Err(status) = late.execute(exec("drain_soft", "SELECT 1", vec![])).await {
        assert!(
            matches!(status.code(), Code::Unavailable | Code::NotFound),
            "new work during a drain: {status:?}"
        );
    } else {
        panic!("new work was accepted by a draining pool");
    }

    let report = deleting.await.expect("join").expect("delete").into_inner();
    assert_eq!(report.cancelled, 0, "nothing needed cancelling");
    assert_eq!(report.pool.expect("pool").state, PoolState::Closed as i32);
    let mut succeeded = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(_) => succeeded += 1,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    // At least the four seen running when the drain began finished; calls
    // still queued for a connection were refused with UNAVAILABLE.
    assert!(
        succeeded >= 4,
        "in-flight calls finished ({succeeded} of 20)"
    );
    assert_eq!(backends(&admin_pg, "poolplane/drain_soft").await, 0);
    let status = admin
        .get_pool(GetPoolRequest {
            name: "drain_soft".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_delete_cancels_running_statements() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("drain_hard", 4)])).await;
    let admin_pg = cluster().admin().await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client
                .execute(exec("drain_hard", "SELECT pg_sleep(30)", vec![]))
                .await
        }));
    }
    eventually(
        "four statements are running",
        Duration::from_secs(10),
        || {
            let admin_pg = &admin_pg;
            async move { crate::support::sleeping(admin_pg, "poolplane/drain_hard").await == 4 }
        },
    )
    .await;
    let started = Instant::now();
    let report = server
        .admin()
        .await
        .delete_pool(DeletePoolRequest {
            name: "drain_hard".into(),
            drain_timeout_ms: 0,
            force: true,
        })
        .await
        .expect("forced delete")
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "force waited: {:?}",
        started.elapsed()
    );
    assert_eq!(report.cancelled, 4);
    assert_eq!(report.connections_closed, 4);
    for call in calls {
        let status = call
            .await
            .expect("join")
            .expect_err("cancelled by the drain");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("draining"),
            "{}",
            status.message()
        );
    }
    assert_eq!(backends(&admin_pg, "poolplane/drain_hard").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cancels_what_is_still_running() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("drain_timeout", 2)])).await;
    let admin_pg = cluster().admin().await;
    let mut client = server.query().await;
    let call = tokio::spawn(async move {
        client
            .execute(exec("drain_timeout", "SELECT pg_sleep(30)", vec![]))
            .await
    });
    eventually("the statement is running", Duration::from_secs(10), || {
        let admin_pg = &admin_pg;
        async move { crate::support::sleeping(admin_pg, "poolplane/drain_timeout").await == 1 }
    })
    .await;
    let started = Instant::now();
    let report = server
        .admin()
        .await
        .delete_pool(DeletePoolRequest {
            name: "drain_timeout".into(),
            drain_timeout_ms: 300,
            force: false,
        })
        .await
        .expect("delete")
        .into_inner();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(report.cancelled, 1);
    let status = call.await.expect("join").expect_err("cancelled");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(backends(&admin_pg, "poolplane/drain_timeout").await, 0);
    server.stop().await;
}

/// Starts `n` calls of `sql` on `pool` and waits until all run in PostgreSQL.
async fn busy(
    server: &TestServer,
    pool: &'static str,
    sql: &'static str,
    n: i64,
) -> Vec<
    tokio::task::JoinHandle<
        Result<tonic::Response<poolplane::proto::ExecuteResponse>, tonic::Status>,
    >,
> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client.execute(exec(pool, sql, vec![])).await
        }));
    }
    let admin_pg = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    eventually("the calls run", Duration::from_secs(10), || {
        let (admin_pg, app) = (&admin_pg, &app);
        async move { crate::support::sleeping(admin_pg, app).await == n }
    })
    .await;
    calls
}

/// Concurrent UpdatePools each apply to what the one before left, and a
/// shrink waiting for busy connections holds nobody up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_all_apply_and_a_forced_delete_does_not_wait_behind_a_shrink() {
    let _turn = crate::support::machine_to_myself().await;
    use poolplane::proto::UpdatePoolRequest;
    let pool = "drain_race";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 8)])).await;
    let calls = busy(&server, pool, "SELECT pg_sleep(20)", 3).await;
    let update = |request: UpdatePoolRequest| {
        let server = &server;
        async move { server.admin().await.update_pool(request).await }
    };
    let shrinking = update(UpdatePoolRequest {
        name: pool.into(),
        max_connections: Some(2),
        ..Default::default()
    });
    let narrower = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        update(UpdatePoolRequest {
            name: pool.into(),
            max_connections: Some(1),
            min_connections: Some(1),
            ..Default::default()
        })
        .await
    };
    let unrelated = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        update(UpdatePoolRequest {
            name: pool.into(),
            idle_timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await
    };
    // The shrinks settle only when the statements end; the delete ends them.
    let deleting = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let spec = server
            .admin()
            .await
            .get_pool(GetPoolRequest { name: pool.into() })
            .await
            .expect("get")
            .into_inner()
            .spec
            .expect("spec");
        assert_eq!(
            (
                spec.max_connections,
                spec.min_connections,
                spec.idle_timeout_ms
            ),
            (1, 1, 60_000),
            "every update applied, in order"
        );
        let started = Instant::now();
        let report = server
            .admin()
            .await
            .delete_pool(DeletePoolRequest {
                name: pool.into(),
                drain_timeout_ms: 0,
                force: true,
            })
            .await
            .expect("forced delete")
            .into_inner();
        (report, started.elapsed())
    };
    let (_, _, _, (report, took)) = tokio::join!(shrinking, narrower, unrelated, deleting);
    assert!(took < Duration::from_secs(5), "the delete waited {took:?}");
    assert_eq!(report.cancelled, 3);
    for call in calls {
        let status = call
            .await
            .expect("join")
            .expect_err("cancelled by the drain");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    server.stop().await;
}

/// A drain, once begun, finishes even if the DeletePool caller goes away:
/// the pool is removed and its name can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_caller_gives_up_still_removes_the_pool() {
    let pool = "drain_abandoned";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 2)])).await;
    let calls = busy(&server, pool, "SELECT pg_sleep(1)", 1).await;
    let mut request = tonic::Request::new(DeletePoolRequest {
        name: pool.into(),
        drain_timeout_ms: 10_000,
        force: false,
    });
    request.set_timeout(Duration::from_millis(200));
    let status = server
        .admin()
        .await
        .delete_pool(request)
        .await
        .expect_err("the caller gives up first");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    for call in calls {
        call.await.expect("join").expect("in-flight work finishes");
    }
    eventually("the pool is gone", Duration::from_secs(10), || {
        let server = &server;
        async move {
            server
                .admin()
                .await
                .get_pool(GetPoolRequest { name: pool.into() })
                .await
                .is_err_and(|status| status.code() == Code::NotFound)
        }
    })
    .await;
    assert_eq!(
        backends(&cluster().admin().await, "poolplane/drain_abandoned").await,
        0
    );
    server
        .admin()
        .await
        .create_pool(poolplane::proto::CreatePoolRequest {
            name: pool.into(),
            host: "127.0.0.1".into(),
            port: u32::from(cluster().port),
            database: "postgres".into(),
            password: crate::support::SUPERUSER_PASSWORD.into(),
            max_connections: Some(2),
            ..Default::default()
        })
        .await
        .expect("the name is free again");
    server
        .query()
        .await
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("the new pool works");
    server.stop().await;
}

/// A forced drain that stops a call before its statement went out (here:
/// while a slow network carries the prepare) answers UNAVAILABLE
/// "draining", like one that cancels it running, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_before_the_statement_went_out_says_draining() {
    use crate::proxy::{Mode, Proxy};
    let proxy = Proxy::start(cluster().port).await;
    let pool = "drain_early";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1).port(proxy.port)])).await;
    server
        .query()
        .await
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("a warm connection");
    proxy.set(Mode::Latency(Duration::from_millis(300)));
    let call = {
        let mut client = server.query().await;
        tokio::spawn(async move {
            client
                .execute(exec(pool, "SELECT pg_sleep(5)", vec![]))
                .await
        })
    };
    // Leased: its prepare is on the slow wire for at least 600 ms.
    eventually(
        "the call holds the connection",
        Duration::from_secs(5),
        || {
            let server = &server;
            async move { crate::support::pool_statistics(server, pool).await.active == 1 }
        },
    )
    .await;
    let report = server
        .admin()
        .await
        .delete_pool(DeletePoolRequest {
            name: pool.into(),
            drain_timeout_ms: 0,
            force: true,
        })
        .await
        .expect("forced delete")
        .into_inner();
    assert_eq!(report.cancelled, 1);
    let status = call.await.expect("join").expect_err("stopped by the drain");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("draining"), "{status:?}");
    server.stop().await;
}
