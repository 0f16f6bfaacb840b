//! UpdatePool moves a pool to another server under load: no call fails or
//! finds no pool, calls land on the new server, and no backend is left on
//! the old one. A target outside server.allowed_targets is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poolplane::proto::UpdatePoolRequest;
use tonic::Code;

use crate::support::{
    backends, cluster, config_yaml_with, eventually, exec, PgCluster, PoolSpec, TestServer,
};

fn update(pool: &str) -> UpdatePoolRequest {
    UpdatePoolRequest {
        name: pool.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_pool_moves_a_loaded_pool_to_a_new_server_without_a_failed_call() {
    let _turn = crate::support::machine_to_myself().await;
    let standby = PgCluster::private();
    let mut spec = PoolSpec::new("failover", 8);
    spec.min = 4;
    let server = TestServer::start(&config_yaml_with(
        &[spec],
        "  server:\n    grpc_listen: 127.0.0.1:0\n    shutdown_timeout_ms: 5000\n    allowed_targets: [\"127.0.0.1\"]\n",
    ))
    .await;
    let old_server = cluster().admin().await;
    let new_server = standby.admin().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = server.query().await;
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut ports = Vec::new();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .execute(exec(
                        "failover",
                        "SELECT current_setting('port')::int8",
                        vec![],
                    ))
                    .await
                {
                    Ok(response) => ports.push(response.into_inner().rows[0].values[0].clone()),
                    Err(status) => failed.push(status),
                }
            }
            (ports, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = server
        .admin()
        .await
        .update_pool(UpdatePoolRequest {
            port: Some(u32::from(standby.port)),
            ..update("failover")
        })
        .await
        .expect("retarget")
        .into_inner();
    assert_eq!(moved.spec.expect("spec").port, u32::from(standby.port));
    eventually(
        "no backend left on the old server",
        Duration::from_secs(10),
        || async { backends(&old_server, "poolplane/failover").await == 0 },
    )
    .await;
    // New connections may still be logging in (SCRAM in a debug build on
    // a loaded machine) at the instant the old ones are gone.
    eventually(
        "backends on the new server",
        Duration::from_secs(10),
        || async { backends(&new_server, "poolplane/failover").await > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut last_ports = Vec::new();
    for client in clients {
        let (ports, failed) = client.await.expect("join");
        assert!(failed.is_empty(), "failed calls: {failed:?}");
        last_ports.push(ports.last().cloned().expect("served"));
    }
    let standby_port = crate::support::v::int(i64::from(standby.port));
    assert!(
        last_ports.iter().all(|port| *port == standby_port),
        "calls land on the new server: {last_ports:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_target_outside_the_allowed_ones_or_malformed_is_refused_and_nothing_changes() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("retarget_refused", 2)],
        "  server:\n    grpc_listen: 127.0.0.1:0\n    shutdown_timeout_ms: 5000\n    allowed_targets: [\"127.0.0.1\"]\n",
    ))
    .await;
    let mut admin = server.admin().await;
    let refused = admin
        .update_pool(UpdatePoolRequest {
            host: Some("10.1.2.3".into()),
            ..update("retarget_refused")
        })
        .await
        .expect_err("not an allowed target");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // An allowed target where nothing answers: checked first, nothing changes.
    let silent = admin
        .update_pool(UpdatePoolRequest {
            port: Some(u32::from(crate::support::free_port())),
            ..update("retarget_refused")
        })
        .await
        .expect_err("nothing listens there");
    assert_eq!(silent.code(), Code::FailedPrecondition, "{silent:?}");
    let wrong_database = admin
        .update_pool(UpdatePoolRequest {
            database: Some("no_such_database".into()),
            ..update("retarget_refused")
        })
        .await
        .expect_err("no such database");
    assert_eq!(
        wrong_database.code(),
        Code::FailedPrecondition,
        "{wrong_database:?}"
    );
    for (request, field) in [
        (
            UpdatePoolRequest {
                port: Some(70000),
                ..update("retarget_refused")
            },
            "port",
        ),
        (
            UpdatePoolRequest {
                credential: Some("nope".into()),
                ..update("retarget_refused")
            },
            "credential",
        ),
        (
            UpdatePoolRequest {
                database: Some(String::new()),
                ..update("retarget_refused")
            },
            "database",
        ),
        // The pool's password is not tried against a role a caller picks.
        (
            UpdatePoolRequest {
                user: Some("pg_monitor_guess".into()),
                ..update("retarget_refused")
            },
            "another user needs its own password",
        ),
    ] {
        let status = admin.update_pool(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{}", status.message());
    }
    let mut client = server.query().await;
    let port = client
        .execute(exec(
            "retarget_refused",
            "SELECT current_setting('port')::int8",
            vec![],
        ))
        .await
        .expect("still served")
        .into_inner();
    assert_eq!(
        port.rows[0].values[0],
        crate::support::v::int(i64::from(cluster().port))
    );
    server.stop().await;
}
