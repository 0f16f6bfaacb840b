//! PoolAdmin end to end: list, get, create (idempotent), update with
//! validation, reset statistics; statistics that match what the test did;
//! no secret in any answer.

use poolplane::proto::{
    CreatePoolRequest, GetPoolRequest, ListPoolsRequest, PoolState, ResetStatisticsRequest,
    UpdatePoolRequest,
};
use tonic::Code;

use crate::support::{
    cluster, config_yaml, exec, meta, v, PoolSpec, TestServer, SUPERUSER_PASSWORD,
};

fn create_request(name: &str) -> CreatePoolRequest {
    CreatePoolRequest {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: u32::from(cluster().port),
        database: "postgres".into(),
        password: SUPERUSER_PASSWORD.into(),
        max_connections: Some(3),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_listed_created_updated_and_reported() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("admin_a", 4)])).await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;

    let listed = admin
        .list_pools(ListPoolsRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed
        .pools
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["admin_a"]);

    // Create with an inline password; it works and is never echoed.
    let created = admin
        .create_pool(create_request("admin_b"))
        .await
        .expect("create")
        .into_inner();
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.max_connections, 3);
    assert_eq!(spec.password_source, "inline");
    assert_eq!(spec.application_name, "poolplane/admin_b");
    assert_eq!(created.state, PoolState::Serving as i32);
    assert!(!format!("{created:?}").contains(SUPERUSER_PASSWORD));
    let row = query
        .execute(exec("admin_b", "SELECT current_user::text", vec![]))
        .await
        .expect("use it");
    assert_eq!(row.into_inner().rows[0].values[0], v::text("postgres"));

    let status = admin
        .create_pool(create_request("admin_b"))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);
    let mut again = create_request("admin_b");
    again.if_not_exists = true;
    again.max_connections = Some(9);
    let existing = admin
        .create_pool(again)
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(
        existing.spec.expect("spec").max_connections,
        3,
        "if_not_exists leaves the pool as it is"
    );

    let mut bad = create_request("bad name");
    bad.min_connections = Some(5);
    let status = admin.create_pool(bad).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("invalid pool name"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(SUPERUSER_PASSWORD));

    let mut bad = create_request("admin_c");
    bad.database = "app\0x".into();
    let status = admin.create_pool(bad).await.expect_err("NUL in database");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-field").as_deref(),
        Some("database")
    );

    let mut bad = create_request("admin_c");
    bad.min_connections = Some(5);
    let status = admin.create_pool(bad).await.expect_err("min > max");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-field").as_deref(),
        Some("min_connections")
    );

    // Update: validated, applied, visible.
    let status = admin
        .update_pool(UpdatePoolRequest {
            name: "admin_b".into(),
            min_connections: Some(10),
            ..Default::default()
        })
        .await
        .expect_err("min above max");
    assert_eq!(status.code(), Code::InvalidArgument);
    // UpdatePool judges limits with the same rules and words as CreatePool.
    for max in [0, 10_001] {
        let mut create = create_request("admin_d");
        create.max_connections = Some(max);
        let created = admin.create_pool(create).await.expect_err("bad max");
        let updated = admin
            .update_pool(UpdatePoolRequest {
                name: "admin_b".into(),
                max_connections: Some(max),
                ..Default::default()
            })
            .await
            .expect_err("bad max");
        assert_eq!(updated.code(), Code::InvalidArgument, "max {max}");
        assert_eq!(
            meta(&updated, "poolplane-field").as_deref(),
            Some("max_connections")
        );
        assert_eq!(updated.message(), created.message(), "max {max}");
        assert!(
            updated.message().contains("allowed 1 to 10000"),
            "{}",
            updated.message()
        );
    }
    let status = admin
        .update_pool(UpdatePoolRequest {
            name: "admin_b".into(),
            connection_timeout_ms: Some(0),
            ..Default::default()
        })
        .await
        .expect_err("zero timeout");
    assert_eq!(status.code(), Code::InvalidArgument);
    let updated = admin
        .update_pool(UpdatePoolRequest {
            name: "admin_b".into(),
            max_connections: Some(5),
            statement_timeout_ms: Some(1500),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    let spec = updated.spec.expect("spec");
    assert_eq!((spec.max_connections, spec.statement_timeout_ms), (5, 1500));
    // statement_timeout reaches new connections.
    let shown = query
        .execute(exec(
            "admin_b",
            "SELECT current_setting('statement_timeout')",
            vec![],
        ))
        .await
        .expect("show")
        .into_inner();
    assert_eq!(shown.rows[0].values[0], v::text("1500ms"));

    let status = admin
        .update_pool(UpdatePoolRequest {
            name: "ghost".into(),
            max_connections: Some(2),
            ..Default::default()
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .get_pool(GetPoolRequest {
            name: String::new(),
        })
        .await
        .expect_err("empty name");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_exactly_and_reset() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("stats", 3)])).await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;
    for _ in 0..10 {
        query
            .execute(exec("stats", "SELECT 1", vec![]))
            .await
            .expect("select");
    }
    let _ = query
        .execute(exec("stats", "SELECT 1/0", vec![]))
        .await
        .expect_err("sql error");
    let get = |mut admin: poolplane::proto::pool_admin_client::PoolAdminClient<_>| async move {
        admin
            .get_pool(GetPoolRequest {
                name: "stats".into(),
            })
            .await
            .expect("get")
            .into_inner()
    };
    let pool = get(admin.clone()).await;
    let stats = pool.statistics.expect("stats");
    // An SQL error is the caller's; the acquisition itself succeeded.
    assert_eq!(stats.acquisitions_succeeded, 11);
    assert_eq!(stats.acquire_timeouts, 0);
    assert_eq!(stats.acquire_errors, 0);
    assert_eq!(stats.max, 3);
    assert!(stats.connections_created >= 1 && stats.connections_created <= 3);
    assert_eq!(
        u64::from(stats.total),
        stats.connections_created - stats.connections_closed
    );
    assert!(stats.peak_connections >= 1 && stats.peak_connections <= 3);
    assert!(stats.average_connection_setup_ms > 0.0);
    assert_eq!(stats.pending, 0);
    assert!(pool
        .spec
        .expect("spec")
        .password_source
        .starts_with("file:"));

    let reset = admin
        .reset_statistics(ResetStatisticsRequest {
            pool: "stats".into(),
        })
        .await
        .expect("reset")
        .into_inner();
    assert_eq!(reset.pools, ["stats"]);
    let stats = get(admin.clone()).await.statistics.expect("stats");
    assert_eq!(stats.acquisitions_succeeded, 0);
    assert_eq!(stats.connections_created, 0);
    assert_eq!(stats.average_acquire_wait_ms, 0.0);
    assert!(stats.total >= 1, "open connections survive a reset");
    let status = admin
        .reset_statistics(ResetStatisticsRequest {
            pool: "ghost".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pool_can_be_created_again_under_its_name() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("phoenix", 2)])).await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;
    query
        .execute(exec("phoenix", "SELECT 1", vec![]))
        .await
        .expect("first life");
    admin
        .delete_pool(poolplane::proto::DeletePoolRequest {
            name: "phoenix".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let status = query
        .execute(exec("phoenix", "SELECT 1", vec![]))
        .await
        .expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
    let reborn = admin
        .create_pool(create_request("phoenix"))
        .await
        .expect("create again")
        .into_inner();
    let stats = reborn.statistics.expect("stats");
    assert_eq!(
        stats.acquisitions_succeeded, 0,
        "a new pool starts with fresh statistics"
    );
    query
        .execute(exec("phoenix", "SELECT 1", vec![]))
        .await
        .expect("second life");
    server.stop().await;
}
