//! Pools created over the API cannot take the server's secrets elsewhere:
//! they never name the server's files or environment, reach only the
//! allowed targets (refused before anything connects), use credentials
//! declared in the config by name, and stop at `server.max_pools`.

use std::time::Duration;

use futures::StreamExt;

use poolplane::proto::{CreatePoolRequest, GetPoolRequest};
use tonic::Code;

use crate::support::{cluster, config_yaml_with, exec, meta, PoolSpec, TestServer};

fn request(name: &str, port: u16) -> CreatePoolRequest {
    CreatePoolRequest {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: u32::from(port),
        database: "postgres".into(),
        max_connections: Some(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_pools_never_carry_the_servers_secrets_elsewhere() {
    let credentials = format!(
        "  credentials:\n    - name: main_login\n      user: postgres\n      password_file: {}\n  server:\n    shutdown_timeout_ms: 5000\n    max_pools: 3\n",
        cluster().password_file().display()
    );
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("configured", 1)],
        &credentials,
    ))
    .await;
    let mut admin = server.admin().await;
    // A fake PostgreSQL server of the caller's: nothing may connect to it.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();

    // The server's files and environment are never named by a request, and
    // the answer is the same whether the file exists or not.
    let mut answers = Vec::new();
    for (field, value) in [
        ("password_file", "/etc/passwd"),
        ("password_file", "/no/such/file"),
        ("password_env", "HOME"),
    ] {
        let mut create = request("by_secret", cluster().port);
        if field == "password_file" {
            create.password_file = value.into();
        } else {
            create.password_env = value.into();
        }
        let status = admin.create_pool(create).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(meta(&status, "poolplane-field").as_deref(), Some(field));
        answers.push(status.message().to_string());
    }
    assert_eq!(
        answers[0], answers[1],
        "nothing tells whether a file exists"
    );
    // Elsewhere than the configured targets: refused before connecting, and
    // the same answer whatever listens there (a closed port, or ours).
    let closed_port = crate::support::free_port();
    let mut answers = Vec::new();
    for port in [fake_port, closed_port] {
        let status = admin
            .create_pool(request("elsewhere", port))
            .await
            .expect_err("not an allowed target");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        answers.push(status.message().replace(&port.to_string(), "PORT"));
    }
    assert_eq!(
        answers[0], answers[1],
        "the answer tells nothing of the port"
    );
    let not_found = admin
        .get_pool(GetPoolRequest {
            name: "elsewhere".into(),
        })
        .await
        .expect_err("never created");
    assert_eq!(not_found.code(), Code::NotFound);
    // Nothing connected to the fake server (the health probe of a created
    // pool would have within its first check).
    let accepted = tokio::time::timeout(Duration::from_millis(500), fake.accept()).await;
    assert!(
        accepted.is_err(),
        "something connected to the caller's server"
    );

    // A credential by name works, towards the configured target.
    let mut by_name = request("by_name", cluster().port);
    by_name.credential = "main_login".into();
    let created = admin
        .create_pool(by_name)
        .await
        .expect("created")
        .into_inner();
    assert_eq!(
        created.spec.expect("spec").password_source,
        "credential:main_login"
    );
    server
        .query()
        .await
        .execute(exec("by_name", "SELECT 1", vec![]))
        .await
        .expect("the credential logs in");
    let mut unknown = request("unknown_login", cluster().port);
    unknown.credential = "nobody".into();
    let status = admin
        .create_pool(unknown)
        .await
        .expect_err("unknown credential");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // max_pools: 3 (the configured one, by_name, and one more).
    let mut third = request("third", cluster().port);
    third.credential = "main_login".into();
    admin.create_pool(third).await.expect("the third pool");
    let mut fourth = request("fourth", cluster().port);
    fourth.credential = "main_login".into();
    let status = admin.create_pool(fourth).await.expect_err("over max_pools");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(meta(&status, "poolplane-max-pools").as_deref(), Some("3"));
    server.stop().await;
}

/// 2,000 CreatePool calls: `server.max_pools` (100) are held, the rest are
/// RESOURCE_EXHAUSTED, and PostgreSQL keeps room for everyone else (the
/// pools' probes share a bounded number of connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_create_pool_stops_at_max_pools_and_postgres_stays_reachable() {
    let _turn = crate::support::machine_to_myself().await;
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("flood_base", 1)],
        "  server:\n    shutdown_timeout_ms: 5000\n",
    ))
    .await;
    let admin = server.admin().await;
    let calls = futures::stream::iter(0..2000)
        .map(|i| {
            let mut admin = admin.clone();
            async move {
                admin
                    .create_pool(request(&format!("flood_{i}"), cluster().port))
                    .await
                    .map(|_| ())
                    .map_err(|status| status.code())
            }
        })
        .buffer_unordered(32);
    let results: Vec<Result<(), Code>> = futures::StreamExt::collect(calls).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| **r == Err(Code::ResourceExhausted))
        .count();
    assert_eq!((created, refused), (99, 1901), "one pool was configured");
    // PostgreSQL still takes a new connection, and the probes of 100 pools
    // hold at most their limit.
    let pg = cluster().admin().await;
    let probes: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolplane/flood%/probe'",
            &[],
        )
        .await
        .expect("PostgreSQL answers")
        .get(0);
    assert!(probes <= 16, "{probes} probe connections");
    server.stop().await;
}
