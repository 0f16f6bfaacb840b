//! Configuration reload, on SIGHUP and PoolAdmin.ReloadConfig: a file
//! with errors changes nothing and every error is reported; a valid one
//! is applied as a difference, and pools it does not touch keep their
//! backends.

use std::collections::HashSet;
use std::time::Duration;

use poolplane::proto::pool_admin_client::PoolAdminClient;
use poolplane::proto::pool_events_client::PoolEventsClient;
use poolplane::proto::query_client::QueryClient;
use poolplane::proto::{
    event, EventKind, GetPoolRequest, ListPoolsRequest, ReloadConfigRequest, ReloadConfigResponse,
    WatchRequest,
};
use tonic::Code;

use crate::support::{
    cluster, config_yaml, eventually, exec, v, PoolSpec, ServedBinary, TestServer,
};

async fn pids(pool: &str) -> HashSet<i32> {
    crate::support::backend_pids(&cluster().admin().await, &format!("poolplane/{pool}")).await
}

async fn next_reload(
    watch: &mut tonic::Streaming<poolplane::proto::Event>,
) -> (i32, ReloadConfigResponse) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("an event within 10 s")
            .expect("watch")
            .expect("stream open");
        if let Some(event::Detail::ConfigReload(reload)) = event.detail {
            return (event.kind, reload);
        }
    }
}

async fn watch_reloads(served: &ServedBinary) -> tonic::Streaming<poolplane::proto::Event> {
    PoolEventsClient::new(served.channel().await)
        .watch(WatchRequest {
            kinds: vec![
                EventKind::ConfigReloaded as i32,
                EventKind::ConfigReloadFailed as i32,
            ],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_file_changes_nothing_and_reports_every_error() {
    let yaml = config_yaml(&[PoolSpec::new("reload_bad", 2)]);
    let served = ServedBinary::start(&yaml, &[]).await;
    let mut watch = watch_reloads(&served).await;
    let broken = yaml.replace(
        "max_connections: 2",
        "max_connections: 0\n      max_conections: 3",
    );
    std::fs::write(&served.config, &broken).expect("rewrite");
    served.hangup();
    let (kind, failed) = next_reload(&mut watch).await;
    assert_eq!(kind, EventKind::ConfigReloadFailed as i32);
    assert!(!failed.errors.is_empty(), "{failed:?}");
    let all = failed.errors.join("\n");
    assert!(all.contains("max_conections"), "{all}");
    // Still alive, still serving the pool as it was.
    let mut query = QueryClient::new(served.channel().await);
    query
        .execute(exec("reload_bad", "SELECT 1", vec![]))
        .await
        .expect("still served");
    let pool = PoolAdminClient::new(served.channel().await)
        .get_pool(GetPoolRequest {
            name: "reload_bad".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(pool.spec.expect("spec").max_connections, 2);
    // The RPC answers with every error too; the log has a line per error.
    let status = PoolAdminClient::new(served.channel().await)
        .reload_config(ReloadConfigRequest {})
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_conections"),
        "{}",
        status.message()
    );
    eventually(
        "the log names the error",
        Duration::from_secs(5),
        || async {
            served.log().contains("max_conections") && served.log().contains("reload refused")
        },
    )
    .await;
    let exit = served.terminate().await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_added_removed_and_changed_pools_and_leaves_the_rest_alone() {
    let admin_pg = cluster().admin().await;
    let _ = admin_pg.batch_execute("CREATE DATABASE reload_db").await;
    let with_min = |name, max| {
        let mut spec = PoolSpec::new(name, max);
        spec.min = 2;
        spec
    };
    let yaml = config_yaml(&[
        with_min("reload_kept", 4),
        with_min("reload_gone", 2),
        with_min("reload_resized", 2),
        with_min("reload_moved", 2),
    ]);
    let served = ServedBinary::start(&yaml, &[]).await;
    for pool in ["reload_kept", "reload_moved"] {
        eventually("min_connections open", Duration::from_secs(10), || async {
            pids(pool).await.len() == 2
        })
        .await;
    }
    let kept_before = pids("reload_kept").await;
    let moved_before = pids("reload_moved").await;
    let mut watch = watch_reloads(&served).await;
    let mut moved = with_min("reload_moved", 2);
    moved.database = "reload_db";
    let new_yaml = config_yaml(&[
        with_min("reload_kept", 4),
        with_min("reload_resized", 5),
        moved,
        with_min("reload_new", 2),
    ]);
    std::fs::write(&served.config, &new_yaml).expect("rewrite");
    served.hangup();
    let (kind, report) = next_reload(&mut watch).await;
    assert_eq!(kind, EventKind::ConfigReloaded as i32, "{report:?}");
    assert_eq!(report.created, ["reload_new"]);
    assert_eq!(report.removed, ["reload_gone"]);
    assert_eq!(report.changed, ["reload_resized"]);
    assert_eq!(report.reconnected, ["reload_moved"]);
    assert_eq!(report.unchanged, ["reload_kept"]);
    assert!(
        report.failed.is_empty() && report.restart_needed.is_empty(),
        "{report:?}"
    );

    let mut admin = PoolAdminClient::new(served.channel().await);
    eventually("the removed pool is gone", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let pools = admin
                .list_pools(ListPoolsRequest {})
                .await
                .expect("list")
                .into_inner()
                .pools;
            let names: Vec<String> = pools
                .into_iter()
                .filter_map(|p| p.spec.map(|s| s.name))
                .collect();
            names
                == [
                    "reload_kept",
                    "reload_moved",
                    "reload_new",
                    "reload_resized",
                ]
        }
    })
    .await;
    assert!(pids("reload_gone").await.is_empty());
    let resized = admin
        .get_pool(GetPoolRequest {
            name: "reload_resized".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(resized.spec.expect("spec").max_connections, 5);
    let mut query = QueryClient::new(served.channel().await);
    let database = query
        .execute(exec("reload_moved", "SELECT current_database()", vec![]))
        .await
        .expect("moved pool serves")
        .into_inner();
    assert_eq!(database.rows[0].values[0], v::text("reload_db"));
    eventually(
        "the moved pool's old backends are gone",
        Duration::from_secs(10),
        || async { pids("reload_moved").await.is_disjoint(&moved_before) },
    )
    .await;
    query
        .execute(exec("reload_new", "SELECT 1", vec![]))
        .await
        .expect("new pool serves");
    assert_eq!(
        pids("reload_kept").await,
        kept_before,
        "untouched: same backends"
    );
    let exit = served.terminate().await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_leaves_api_pools_alone_and_refuses_a_file_that_claims_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("poolplane.yaml");
    let yaml = config_yaml(&[PoolSpec::new("reload_file", 2)]);
    std::fs::write(&path, &yaml).expect("write");
    let server = TestServer::start(&yaml).await;
    let mut admin = server.admin().await;
    let no_file = admin
        .reload_config(ReloadConfigRequest {})
        .await
        .expect_err("no file yet");
    assert_eq!(no_file.code(), Code::FailedPrecondition);
    server.app.set_config_file(path.clone());
    admin
        .create_pool(poolplane::proto::CreatePoolRequest {
            name: "reload_api".into(),
            database: "postgres".into(),
            max_connections: Some(1),
            ..Default::default()
        })
        .await
        .expect("create over the API");
    let report = admin
        .reload_config(ReloadConfigRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(report.unchanged, ["reload_file"]);
    assert!(
        report.removed.is_empty(),
        "the API's pool stays: {report:?}"
    );
    // A file naming the API's pool would take it over: refused, nothing changes.
    std::fs::write(
        &path,
        config_yaml(&[
            PoolSpec::new("reload_file", 3),
            PoolSpec::new("reload_api", 2),
        ]),
    )
    .expect("rewrite");
    let status = admin
        .reload_config(ReloadConfigRequest {})
        .await
        .expect_err("conflict");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("reload_api"),
        "{}",
        status.message()
    );
    let file_pool = admin
        .get_pool(GetPoolRequest {
            name: "reload_file".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        file_pool.spec.expect("spec").max_connections,
        2,
        "nothing changed"
    );
    server.stop().await;
}

/// Found by a red team: a FIFO in the file's place blocked a reload (and
/// with it the server) until someone wrote to it; a device such as
/// /dev/zero was read until the kernel killed the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_device_in_the_files_place_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = config_yaml(&[PoolSpec::new("reload_fifo", 1)]);
    let server = TestServer::start(&yaml).await;
    let mut admin = server.admin().await;
    let fifo = dir.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let device = dir.path().join("device.yaml");
    std::os::unix::fs::symlink("/dev/zero", &device).expect("symlink");
    for path in [fifo, device] {
        server.app.set_config_file(path.clone());
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            admin.reload_config(ReloadConfigRequest {}),
        )
        .await
        .expect("answered at once")
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("not a regular file"),
            "{}",
            status.message()
        );
    }
    let mut query = server.query().await;
    query
        .execute(exec("reload_fifo", "SELECT 1", vec![]))
        .await
        .expect("still serving");
    server.stop().await;
}

/// A reload whose new login settings cannot log in leaves that pool as it
/// was, serving on its connections, and lists it as failed; the next
/// reload of the same file tries it again (it was not recorded as
/// applied), and once the login works the pool moves to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_login_fails_keeps_the_pool_and_is_tried_again() {
    const ROLE: &str = "pp_reload_login";
    let pg = cluster().admin().await;
    pg.batch_execute(&format!(
        "DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN PASSWORD 'reload-one-0123456789'"
    ))
    .await
    .expect("create role");
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::write(&first, "reload-one-0123456789\n").expect("first password");
    std::fs::write(&second, "reload-two-0123456789\n").expect("second password");
    let with_password = |file: &std::path::Path| {
        config_yaml(&[PoolSpec::new("reload_login", 2)
            .with(&format!("user: {ROLE}"))
            .with(&format!("password_file: {}", file.display()))])
    };
    let path = dir.path().join("poolplane.yaml");
    std::fs::write(&path, with_password(&first)).expect("write");
    let server = TestServer::start(&with_password(&first)).await;
    server.app.set_config_file(path.clone());
    let mut admin = server.admin().await;
    let mut query = server.query().await;
    query
        .execute(exec("reload_login", "SELECT 1", vec![]))
        .await
        .expect("logged in");
    let before = pids("reload_login").await;
    assert!(!before.is_empty());

    // The file moves to a password the server does not know yet.
    std::fs::write(&path, with_password(&second)).expect("rewrite");
    for _ in 0..2 {
        let report = admin
            .reload_config(ReloadConfigRequest {})
            .await
            .expect("reload")
            .into_inner();
        assert!(report.reconnected.is_empty(), "{report:?}");
        assert!(
            report.failed.len() == 1
                && report.failed[0].starts_with("reload_login: ")
                && report.failed[0].contains("password authentication failed"),
            "{report:?}"
        );
        assert!(!report.failed[0].contains("reload-two"), "{report:?}");
        query
            .execute(exec("reload_login", "SELECT 1", vec![]))
            .await
            .expect("still served on its connections");
        assert_eq!(pids("reload_login").await, before, "nothing replaced");
    }

    // The server learns the password: the same file now applies.
    pg.batch_execute(&format!(
        "ALTER ROLE {ROLE} PASSWORD 'reload-two-0123456789'"
    ))
    .await
    .expect("rotate");
    let report = admin
        .reload_config(ReloadConfigRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(report.reconnected, ["reload_login"], "{report:?}");
    query
        .execute(exec("reload_login", "SELECT 1", vec![]))
        .await
        .expect("served with the new login");
    eventually(
        "the old connections are gone",
        Duration::from_secs(10),
        || async { pids("reload_login").await.is_disjoint(&before) },
    )
    .await;
    server.stop().await;
    pg.batch_execute(&format!("DROP ROLE IF EXISTS {ROLE}"))
        .await
        .expect("drop role");
}
