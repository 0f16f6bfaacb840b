//! max_connections is a hard limit on server connections, seen from
//! PostgreSQL's own pg_stat_activity, before and after live resizes.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poolplane::proto::UpdatePoolRequest;

use crate::support::{backends, cluster, config_yaml, eventually, exec, PoolSpec, TestServer};

const POOL: &str = "limits";
const APP: &str = "poolplane/limits";

/// Samples the pool's backend count until stopped; returns the maximum seen.
fn sample_backends(
    stop: Arc<AtomicBool>,
    max_seen: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let admin = cluster().admin().await;
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let n = backends(&admin, APP).await;
            max_seen.fetch_max(n, Ordering::Relaxed);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    })
}

/// `clients` concurrent callers each running `calls` short sleeps.
async fn load(server: &TestServer, clients: usize, calls: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = server.query().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls {
                client
                    .execute(exec(POOL, "SELECT pg_sleep(0.01)", vec![]))
                    .await
                    .expect("every call succeeds under load");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// Runs the load while sampling; returns the most backends seen.
async fn load_and_sample(server: &TestServer, clients: usize, calls: usize) -> i64 {
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let sampler = sample_backends(Arc::clone(&stop), Arc::clone(&max_seen));
    load(server, clients, calls).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    assert!(samples > 10, "too few samples ({samples}) to say anything");
    max_seen.load(Ordering::Relaxed)
}

async fn resize(server: &TestServer, max: u32) {
    server
        .admin()
        .await
        .update_pool(UpdatePoolRequest {
            name: POOL.into(),
            max_connections: Some(max),
            ..Default::default()
        })
        .await
        .expect("resize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_load_and_across_resizes() {
    let mut spec = PoolSpec::new(POOL, 8);
    spec.connection_timeout_ms = 30_000;
    let server = TestServer::start(&config_yaml(&[spec])).await;

    let max_seen = load_and_sample(&server, 64, 8).await;
    assert!(
        max_seen <= 8,
        "saw {max_seen} backends with max_connections 8"
    );
    assert!(
        max_seen >= 2,
        "the load never used the pool in parallel ({max_seen})"
    );

    // Shrink while idle connections exist, then load again.
    resize(&server, 3).await;
    let admin = cluster().admin().await;
    assert!(
        backends(&admin, APP).await <= 3,
        "resize answered before it took effect"
    );
    let max_seen = load_and_sample(&server, 64, 4).await;
    assert!(
        max_seen <= 3,
        "saw {max_seen} backends after shrinking to 3"
    );

    // Shrink while the pool is busy: the limit still holds once UpdatePool answers.
    resize(&server, 8).await;
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let mut clients = Vec::new();
        for _ in 0..16 {
            clients.push(server.query().await);
        }
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for mut client in clients {
                let stop = Arc::clone(&stop);
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        client
                            .execute(exec(POOL, "SELECT pg_sleep(0.01)", vec![]))
                            .await
                            .expect("calls keep succeeding during a resize");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("client");
            }
        })
    };
    eventually(
        "the busy pool uses more than 3 connections",
        Duration::from_secs(10),
        || {
            let admin = &admin;
            async move { backends(admin, APP).await > 3 }
        },
    )
    .await;
    resize(&server, 3).await;
    let sampled_stop = Arc::new(AtomicBool::new(false));
    let max_after = Arc::new(AtomicI64::new(0));
    let sampler = sample_backends(Arc::clone(&sampled_stop), Arc::clone(&max_after));
    // A measurement window: the sampler watches the still-running load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    background.await.expect("background load");
    sampled_stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let max_after = max_after.load(Ordering::Relaxed);
    assert!(
        max_after <= 3,
        "saw {max_after} backends after shrinking a busy pool to 3"
    );

    // Grow: the new maximum is reached.
    resize(&server, 12).await;
    let max_seen = load_and_sample(&server, 64, 6).await;
    assert!(
        max_seen <= 12,
        "saw {max_seen} backends with max_connections 12"
    );
    assert_eq!(max_seen, 12, "64 clients should use all 12 connections");
    server.stop().await;
}
