//! TLS to PostgreSQL: each sslmode against a real server with a certificate
//! from a test CA, seen from pg_stat_ssl.

use poolplane::config::Config;
use tonic::Code;

use crate::support::{cluster, config_yaml, exec, v, TestServer};

/// The test config with TLS on (CA given) and one pool per sslmode.
fn tls_config(ca: &std::path::Path) -> String {
    let mut yaml = config_yaml(&[]);
    let pools = [
        ("tls_disable", "disable", "127.0.0.1"),
        ("tls_require", "require", "127.0.0.1"),
        ("tls_verify_ca", "verify-ca", "127.0.0.1"),
        ("tls_verify_full", "verify-full", "127.0.0.1"),
        ("tls_full_by_name", "verify-full", "localhost"),
    ];
    let entries: String = pools
        .iter()
        .map(|(name, mode, host)| {
            format!("    - name: {name}\n      database: postgres\n      sslmode: {mode}\n      host: {host}\n")
        })
        .collect();
    yaml = yaml.replace("  pools:\n", &format!("  pools:\n{entries}"));
    yaml.push_str(&format!(
        "  security:\n    ssl:\n      enabled: true\n      verify_peer: true\n      ca_certificate: {}\n",
        ca.display()
    ));
    yaml
}

async fn uses_tls(
    client: &mut poolplane::proto::query_client::QueryClient<tonic::transport::Channel>,
    pool: &str,
) -> bool {
    let response = client
        .execute(exec(
            pool,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            vec![],
        ))
        .await
        .unwrap_or_else(|status| panic!("{pool}: {status:?}"))
        .into_inner();
    response.rows[0].values[0] == v::boolean(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_connects_as_it_says() {
    let server = TestServer::start(&tls_config(&cluster().ca_certificate())).await;
    let mut client = server.query().await;
    assert!(!uses_tls(&mut client, "tls_disable").await);
    for pool in [
        "tls_require",
        "tls_verify_ca",
        "tls_verify_full",
        "tls_full_by_name",
    ] {
        assert!(uses_tls(&mut client, pool).await, "{pool} is not encrypted");
    }
    server.stop().await;
    // Closing a TLS connection also waits for its backend to be gone.
    let admin = cluster().admin().await;
    for pool in ["tls_require", "tls_verify_full"] {
        let app = format!("poolplane/{pool}");
        assert_eq!(crate::support::backends(&admin, &app).await, 0, "{app}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let server = TestServer::start(&tls_config(&cluster().unrelated_ca_certificate())).await;
    let mut client = server.query().await;
    // With a CA configured, require verifies the chain too, as libpq does
    // when a root certificate is present.
    for pool in ["tls_require", "tls_verify_ca", "tls_verify_full"] {
        let status = client
            .execute(exec(pool, "SELECT 1", vec![]))
            .await
            .expect_err("untrusted server");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().to_lowercase().contains("certificate"),
            "{}",
            status.message()
        );
    }
    let plain = client
        .execute(exec("tls_disable", "SELECT 1", vec![]))
        .await;
    assert!(plain.is_ok(), "sslmode disable needs no certificate");
    server.stop().await;
}

#[test]
fn original_design_file_loads_when_its_certificates_exist() {
    let cluster = cluster();
    let text = std::fs::read_to_string("config/connection_pool.yaml").expect("shipped file");
    let ca = cluster.ca_certificate().display().to_string();
    let text = text
        .replace("/etc/scratchrobin/ssl/ca.crt", &ca)
        .replace(
            "      client_certificate: \"/etc/scratchrobin/ssl/client.crt\"\n",
            "",
        )
        .replace(
            "      client_key: \"/etc/scratchrobin/ssl/client.key\"\n",
            "",
        );
    let config = Config::parse(&text, "original with a real CA").unwrap_or_else(|e| panic!("{e}"));
    assert!(config.security.tls.has_roots());
    assert_eq!(
        config.pools[0].sslmode.as_str(),
        "verify-full",
        "verify_peer: true means verify-full"
    );
}

#[test]
fn verify_modes_without_a_ca_are_config_errors() {
    let yaml = "connection_pool:\n  pools:\n    - name: x\n      database: y\n      sslmode: verify-full\n";
    let errors = Config::parse(yaml, "t").expect_err("no CA").errors;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("needs a CA"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, Some(5));
}

/// A server (or an impostor) that asks for the password in cleartext over
/// an unencrypted connection gets nothing: the connection is given up
/// before the driver can answer, and the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_is_sent_in_cleartext_without_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = fake.local_addr().expect("addr").port();
    let received = tokio::spawn(async move {
        let (mut socket, _) = fake.accept().await.expect("accept");
        let mut length = [0u8; 4];
        socket
            .read_exact(&mut length)
            .await
            .expect("startup length");
        let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
        socket.read_exact(&mut startup).await.expect("startup");
        // AuthenticationCleartextPassword.
        socket
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
            .await
            .expect("ask");
        let mut after = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            socket.read_to_end(&mut after),
        )
        .await;
        after
    });
    let server = TestServer::start(&config_yaml(&[crate::support::PoolSpec::new(
        "cleartext_asker",
        1,
    )
    .port(port)]))
    .await;
    let status = server
        .query()
        .await
        .execute(exec("cleartext_asker", "SELECT 1", vec![]))
        .await
        .expect_err("no connection");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("cleartext"), "{status:?}");
    let after = received.await.expect("join");
    assert!(
        !after.contains(&b'p'),
        "a password message was sent: {after:?}"
    );
    let password = crate::support::SUPERUSER_PASSWORD.as_bytes();
    assert!(!after.windows(password.len()).any(|w| w == password));
    server.stop().await;
}
