//! How pools log in to PostgreSQL (`security.authentication.method`):
//! `oauth2` reads the password (an access token) from a file at each new
//! connection, so a rotated token is used at once and connections already
//! open carry on; `ldap` sends the password in cleartext, so it is refused
//! without TLS.

use std::time::Duration;

use poolplane::config::Config;

use crate::support::{cluster, config_yaml_with, exec, PoolSpec, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_token_file_rotated_in_place_is_used_by_new_connections() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS pp_token_user; \
             CREATE ROLE pp_token_user LOGIN PASSWORD 'token-one-0123456789'",
        )
        .await
        .expect("create role");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one-0123456789\n").expect("write token");
    let pool = PoolSpec::new("token_pool", 2).with("user: pp_token_user");
    let server = TestServer::start(&config_yaml_with(
        &[pool],
        &format!(
            "  security:\n    authentication:\n      method: oauth2\n      token_file: {}\n",
            token_file.display()
        ),
    ))
    .await;
    let mut query = server.query().await;
    query
        .execute(exec("token_pool", "SELECT 1", vec![]))
        .await
        .expect("the first token logs in");
    // A call in flight on the connection opened with the first token...
    let mut long = server.query().await;
    let in_flight = tokio::spawn(async move {
        long.execute(exec("token_pool", "SELECT pg_sleep(1)::text", vec![]))
            .await
    });
    crate::support::eventually("the long call runs", Duration::from_secs(10), || {
        let admin = &admin;
        async move { crate::support::sleeping(admin, "poolplane/token_pool").await == 1 }
    })
    .await;
    // ...then the token rotates: the role's password and the file.
    admin
        .batch_execute("ALTER ROLE pp_token_user PASSWORD 'token-two-0123456789'")
        .await
        .expect("rotate");
    std::fs::write(&token_file, "token-two-0123456789\n").expect("rewrite token");
    // A new connection (the other one is busy) logs in with the new token.
    query
        .execute(exec("token_pool", "SELECT 2", vec![]))
        .await
        .expect("the rotated token logs in");
    in_flight
        .await
        .expect("join")
        .expect("the call in flight is unaffected");
    server.stop().await;
    admin
        .batch_execute("DROP ROLE IF EXISTS pp_token_user")
        .await
        .expect("drop role");
}

#[test]
fn ldap_logins_are_refused_without_tls() {
    let yaml = "connection_pool:\n  pools:\n    - name: plain\n      database: app\n      sslmode: disable\n    - name: encrypted\n      database: app\n      sslmode: require\n  security:\n    authentication:\n      method: ldap\n";
    let errors = match Config::parse(yaml, "ldap.yaml") {
        Ok(_) => panic!("ldap over plaintext was accepted"),
        Err(errors) => errors
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("pools[0].sslmode"), "{errors:#?}");
    assert!(errors[0].contains("cleartext"), "{errors:#?}");
}

/// `security.authentication.timeout_ms` bounds a whole login, below the
/// pool's own connection timeout: a server that accepts and never answers
/// is given up after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authentication_timeout_bounds_a_login() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    // Says nothing; closes only when the client does.
    let held = tokio::spawn(async move {
        while let Ok((mut socket, _)) = silent.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
            });
        }
    });
    let mut pool = PoolSpec::new("silent_login", 1).port(port);
    pool.connection_timeout_ms = 20_000;
    let server = TestServer::start(&config_yaml_with(
        &[pool],
        "  security:\n    authentication:\n      timeout_ms: 300\n",
    ))
    .await;
    let status = server
        .query()
        .await
        .execute(exec("silent_login", "SELECT 1", vec![]))
        .await
        .expect_err("no login");
    assert!(status.message().contains("300 ms"), "{status:?}");
    server.stop().await;
    held.abort();
}
