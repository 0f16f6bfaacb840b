//! PausePool / ResumePool (PgBouncer's PAUSE and RESUME) and ReconnectPool:
//! calls wait instead of failing, in arrival order; a pause may close every
//! server connection; a reconnect replaces every backend under load
//! without a failed call.

use std::collections::HashSet;
use std::time::Duration;

use poolplane::proto::{PausePoolRequest, ReconnectPoolRequest, ResumePoolRequest};
use tonic::Code;

use crate::sessions::{open_request, Session};
use crate::support::{
    backends, cluster, config_yaml, eventually, exec, pool_statistics, v, PoolSpec, TestServer,
};

fn pause(pool: &str) -> PausePoolRequest {
    PausePoolRequest {
        name: pool.into(),
        timeout_ms: 5000,
        ..Default::default()
    }
}

async fn resume(server: &TestServer, pool: &str) {
    let resumed = server
        .admin()
        .await
        .resume_pool(ResumePoolRequest { name: pool.into() })
        .await
        .expect("resume")
        .into_inner();
    assert!(!resumed.paused);
}

async fn pending(server: &TestServer, pool: &str) -> u32 {
    pool_statistics(server, pool).await.pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_calls_wait_and_run_in_arrival_order_after_the_resume() {
    let admin_pg = cluster().admin().await;
    admin_pg
        .batch_execute(
            "DROP TABLE IF EXISTS pause_order; \
             CREATE TABLE pause_order (seq serial PRIMARY KEY, n int8)",
        )
        .await
        .expect("table");
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("pause_order", 1)])).await;
    let mut admin = server.admin().await;
    let paused = admin
        .pause_pool(pause("pause_order"))
        .await
        .expect("pause")
        .into_inner();
    assert!(paused.pool.expect("pool").paused);
    let mut calls = Vec::new();
    for n in 0..10 {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client
                .execute(exec(
                    "pause_order",
                    "INSERT INTO pause_order (n) VALUES ($1)",
                    vec![v::int(n)],
                ))
                .await
        }));
        // The next caller arrives once this one waits.
        eventually("the caller waits", Duration::from_secs(5), || async {
            pending(&server, "pause_order").await == n as u32 + 1
        })
        .await;
    }
    let inserted: i64 = admin_pg
        .query_one("SELECT count(*) FROM pause_order", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(inserted, 0, "nothing ran while paused");
    resume(&server, "pause_order").await;
    for call in calls {
        call.await
            .expect("join")
            .expect("a paused call succeeds after the resume");
    }
    let order: Vec<i64> = admin_pg
        .query("SELECT n FROM pause_order ORDER BY seq", &[])
        .await
        .expect("order")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(order, (0..10).collect::<Vec<i64>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_caller_gets_deadline_exceeded_at_its_deadline_and_the_queue_is_bounded() {
    let mut spec = PoolSpec::new("pause_deadline", 2);
    spec.connection_timeout_ms = 300;
    // Both connections open before the pause, so what the resume serves
    // waits for no login (which alone can take 300 ms on a loaded machine
    // in a debug build).
    spec.min = 2;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    eventually("both connections open", Duration::from_secs(10), || async {
        crate::support::pool_statistics(&server, "pause_deadline")
            .await
            .idle
            == 2
    })
    .await;
    let mut admin = server.admin().await;
    admin
        .pause_pool(PausePoolRequest {
            queue_limit: 2,
            ..pause("pause_deadline")
        })
        .await
        .expect("pause");
    let mut client = server.query().await;
    let mut request = tonic::Request::new(exec("pause_deadline", "SELECT 1", vec![]));
    request.set_timeout(Duration::from_millis(700));
    let started = std::time::Instant::now();
    let status = client.execute(request).await.expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The server answers just before the deadline (a margin of at most 50
    // ms, so its answer arrives before the client gives up), not before.
    assert!(
        started.elapsed() >= Duration::from_millis(640),
        "{:?}",
        started.elapsed()
    );
    // The pool's own acquire timeout (300 ms here) does not apply while
    // paused: two callers wait well past it; a third finds the queue full.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        waiting.push(tokio::spawn(async move {
            client
                .execute(exec("pause_deadline", "SELECT 1", vec![]))
                .await
        }));
    }
    eventually("two callers wait", Duration::from_secs(5), || async {
        pending(&server, "pause_deadline").await == 2
    })
    .await;
    let full = client
        .execute(exec("pause_deadline", "SELECT 1", vec![]))
        .await
        .expect_err("queue full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    // Waiting past the acquire timeout several times over, still queued.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(waiting.iter().all(|call| !call.is_finished()));
    assert_eq!(pending(&server, "pause_deadline").await, 2);
    resume(&server, "pause_deadline").await;
    for call in waiting {
        call.await.expect("join").expect("served after the resume");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_with_drain_connections_leaves_no_backend_until_the_resume() {
    let mut spec = PoolSpec::new("pause_drain", 4);
    spec.min = 2;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let admin_pg = cluster().admin().await;
    eventually("min_connections open", Duration::from_secs(5), || async {
        backends(&admin_pg, "poolplane/pause_drain").await == 2
    })
    .await;
    // In-flight work finishes first.
    let mut client = server.query().await;
    let running = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .execute(exec("pause_drain", "SELECT pg_sleep(0.5)", vec![]))
                .await
        }
    });
    eventually("the statement runs", Duration::from_secs(5), || async {
        crate::support::sleeping(&admin_pg, "poolplane/pause_drain").await == 1
    })
    .await;
    let report = server
        .admin()
        .await
        .pause_pool(PausePoolRequest {
            drain_connections: true,
            ..pause("pause_drain")
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(report.cancelled, 0);
    assert_eq!(report.connections_open, 0);
    running
        .await
        .expect("join")
        .expect("in-flight work finished");
    assert_eq!(backends(&admin_pg, "poolplane/pause_drain").await, 0);
    // The health probe lets go too: nothing of the pool's stays connected.
    eventually(
        "the probe's backend is gone",
        Duration::from_secs(5),
        || async { backends(&admin_pg, "poolplane/pause_drain/probe").await == 0 },
    )
    .await;
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .execute(exec("pause_drain", "SELECT 1", vec![]))
                .await
        }
    });
    eventually("the caller waits", Duration::from_secs(5), || async {
        pending(&server, "pause_drain").await == 1
    })
    .await;
    // Nothing reopens while paused (not the warm-up, not the caller, not
    // the probe, even when asked to check).
    server
        .admin()
        .await
        .check_health(poolplane::proto::CheckHealthRequest {
            pool: "pause_drain".into(),
        })
        .await
        .expect("check");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backends(&admin_pg, "poolplane/pause_drain").await, 0);
    assert_eq!(backends(&admin_pg, "poolplane/pause_drain/probe").await, 0);
    resume(&server, "pause_drain").await;
    waiting
        .await
        .expect("join")
        .expect("served after the resume");
    client
        .execute(exec("pause_drain", "SELECT 1", vec![]))
        .await
        .expect("serving again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_pause_ends_sessions_leaving_nothing() {
    crate::sessions::table("pause_force").await;
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("pause_force", 2)])).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("pause_force"))
        .await
        .expect("open");
    crate::sessions::dirty(&mut session, "pause_force").await;
    let report = server
        .admin()
        .await
        .pause_pool(PausePoolRequest {
            force: true,
            ..pause("pause_force")
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(report.cancelled, 1);
    let status = session.ending().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("paused"), "{}", status.message());
    crate::sessions::no_transaction_left("pause_force", "pause_force").await;
    resume(&server, "pause_force").await;
    // The next user of the pool sees nothing of the session.
    crate::sessions::left_nothing(&server, "pause_force", "pause_force").await;
    server.stop().await;
}

/// Backend pids of a pool now.
async fn pids(admin: &tokio_postgres::Client, pool: &str) -> HashSet<i32> {
    crate::support::backend_pids(admin, &format!("poolplane/{pool}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_under_load_replaces_every_backend_without_a_failed_call() {
    let _turn = crate::support::machine_to_myself().await;
    let mut spec = PoolSpec::new("reconnect", 8);
    spec.min = 8;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let admin_pg = cluster().admin().await;
    eventually("min_connections open", Duration::from_secs(5), || async {
        pids(&admin_pg, "reconnect").await.len() == 8
    })
    .await;
    let before = pids(&admin_pg, "reconnect").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let mut client = server.query().await;
        let stop = std::sync::Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .execute(exec("reconnect", "SELECT pg_backend_pid()", vec![]))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .admin()
        .await
        .reconnect_pool(ReconnectPoolRequest {
            name: "reconnect".into(),
        })
        .await
        .expect("reconnect");
    eventually(
        "every old backend is gone",
        Duration::from_secs(10),
        || async { pids(&admin_pg, "reconnect").await.is_disjoint(&before) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (ok, failed) = client.await.expect("join");
        assert!(failed.is_empty(), "failed calls: {failed:?}");
        served += ok;
    }
    assert!(served > 32, "the load ran ({served} calls)");
    assert!(!pids(&admin_pg, "reconnect").await.is_empty());
    server.stop().await;
}

/// Found by a red team: session opens queued behind a pause took the
/// pool's session places, so more than `max_session_connections` opens
/// were refused at once although no session held a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_opens_queue_behind_a_pause_and_take_their_place_at_the_resume() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("pause_sessions", 2)])).await;
    server
        .admin()
        .await
        .pause_pool(pause("pause_sessions"))
        .await
        .expect("pause");
    let mut opens = Vec::new();
    for _ in 0..3 {
        let mut client = server.query().await;
        opens.push(tokio::spawn(async move {
            // Kept open: each holds its place until the test ends.
            Session::open(&mut client, open_request("pause_sessions")).await
        }));
    }
    eventually("three opens wait", Duration::from_secs(5), || async {
        pending(&server, "pause_sessions").await == 3
    })
    .await;
    resume(&server, "pause_sessions").await;
    let mut opened = Vec::new();
    for open in opens {
        match open.await.expect("join") {
            Ok(session) => opened.push(session),
            // One session place in a pool of two (half, by default).
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(opened.len(), 1);
    drop(opened);
    server.stop().await;
}

/// Found by a red team: a session open queued behind a pause and then
/// abandoned by its client kept its place in the queue until the resume,
/// so abandoned opens could fill the queue and lock everyone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_session_open_leaves_the_pause_queue_at_once() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("pause_abandon", 2)])).await;
    server
        .admin()
        .await
        .pause_pool(PausePoolRequest {
            queue_limit: 2,
            ..pause("pause_abandon")
        })
        .await
        .expect("pause");
    let mut opens = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        opens.push(tokio::spawn(async move {
            let _ = Session::open(&mut client, open_request("pause_abandon")).await;
        }));
    }
    eventually("two opens wait", Duration::from_secs(5), || async {
        pending(&server, "pause_abandon").await == 2
    })
    .await;
    for open in &opens {
        open.abort();
    }
    eventually(
        "the abandoned opens left the queue",
        Duration::from_secs(5),
        || async { pending(&server, "pause_abandon").await == 0 },
    )
    .await;
    // There is room to wait again.
    let mut client = server.query().await;
    let mut request = tonic::Request::new(exec("pause_abandon", "SELECT 1", vec![]));
    request.set_timeout(Duration::from_millis(500));
    let status = client.execute(request).await.expect_err("still paused");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    resume(&server, "pause_abandon").await;
    server.stop().await;
}
