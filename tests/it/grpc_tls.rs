//! TLS on the gRPC listener: a client trusting the CA is served (tonic and
//! grpcurl), one trusting another CA or speaking plaintext is not; a
//! certificate rewritten on disk is served to new connections with no
//! restart; with a client CA, a client without a certificate is refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use poolplane::proto::pool_admin_client::PoolAdminClient;
use poolplane::proto::ListPoolsRequest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{config_yaml_with, eventually, PoolSpec, TestServer};

pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-sign");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate `ca` signs for `names`: (certificate PEM, key PEM, DER).
pub(crate) fn leaf(ca: &Ca, common_name: &str, names: &[&str]) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

pub(crate) fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write");
    path.display().to_string()
}

async fn tls_channel(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

async fn lists_pools(channel: Channel) -> Result<usize, tonic::Status> {
    PoolAdminClient::new(channel)
        .list_pools(ListPoolsRequest::default())
        .await
        .map(|response| response.into_inner().pools.len())
}

/// The certificate the server presents to a new connection, as DER.
async fn presented_certificate(port: u16, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
}

pub(crate) fn tls_section(cert: &str, key: &str, client_ca: Option<&str>) -> String {
    let mut section = format!(
        "  server:\n    shutdown_timeout_ms: 5000\n    tls:\n      cert_file: {cert}\n      key_file: {key}\n"
    );
    if let Some(ca) = client_ca {
        section.push_str(&format!("      client_ca_file: {ca}\n"));
    }
    section
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_who_trusts_its_ca_and_rotates_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (trusted, other) = (ca("listener CA"), ca("another CA"));
    let (cert, key, first_der) = leaf(&trusted, "first", &["localhost", "127.0.0.1"]);
    let cert_file = write(dir.path(), "server.crt", &cert);
    let key_file = write(dir.path(), "server.key", &key);
    let ca_file = write(dir.path(), "ca.crt", &trusted.pem);
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("tls_listener", 1)],
        &tls_section(&cert_file, &key_file, None),
    ))
    .await;

    let channel = tls_channel(&server, &trusted.pem, None).await.expect("TLS");
    assert_eq!(lists_pools(channel).await.expect("served"), 1);
    // Another CA: the handshake fails, nothing is served.
    let refused = match tls_channel(&server, &other.pem, None).await {
        Ok(channel) => lists_pools(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client trusting another CA was served");
    // Plaintext to a TLS listener gets no answer.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await;
    let plain_served = match plain {
        Ok(channel) => lists_pools(channel).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain_served, "plaintext was served");
    // grpcurl, as the README shows it.
    let addr = server.addr.to_string();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new("grpcurl")
            .args([
                "-cacert",
                &ca_file,
                "-authority",
                "localhost",
                "-d",
                "{}",
                &addr,
            ])
            .arg("poolplane.v1.PoolAdmin/ListPools")
            .output()
            .expect("grpcurl")
    })
    .await
    .expect("join");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("tls_listener"));

    // Rotation in place (as cert-manager does): new connections get the new
    // certificate, the server keeps running.
    let port = server.addr.port();
    assert_eq!(presented_certificate(port, &trusted.pem).await, first_der);
    let (cert, key, second_der) = leaf(&trusted, "second", &["localhost", "127.0.0.1"]);
    write(dir.path(), "server.key", &key);
    write(dir.path(), "server.crt", &cert);
    eventually(
        "the rotated certificate is served",
        Duration::from_secs(10),
        || {
            let (ca, second) = (&trusted.pem, &second_der);
            async move { presented_certificate(port, ca).await == *second }
        },
    )
    .await;
    let channel = tls_channel(&server, &trusted.pem, None).await.expect("TLS");
    assert_eq!(lists_pools(channel).await.expect("served"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_its_certificates_get_in_and_their_names_are_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, client_ca) = (ca("listener CA"), ca("client CA"));
    let (cert, key, _) = leaf(&server_ca, "server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key, _) = leaf(&client_ca, "orders", &["orders-svc.apps.internal"]);
    let (nameless_cert, nameless_key, _) = leaf(&client_ca, "other", &["other-svc.apps.internal"]);
    let (stranger_cert, stranger_key, _) =
        leaf(&server_ca, "stranger", &["orders-svc.apps.internal"]);
    let mut section = tls_section(
        &write(dir.path(), "server.crt", &cert),
        &write(dir.path(), "server.key", &key),
        Some(&write(dir.path(), "client-ca.crt", &client_ca.pem)),
    );
    section.push_str(
        "    auth:\n      mtls:\n        - name: orders\n          san: orders-svc.apps.internal\n          role: client\n          pools: [mtls_listener]\n",
    );
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("mtls_listener", 1)],
        &section,
    ))
    .await;
    let ca = &server_ca.pem;
    // No certificate, or one the client CA did not sign: no handshake.
    assert_eq!(call(&server, ca, None).await, None, "no client certificate");
    assert_eq!(
        call(&server, ca, Some((&stranger_cert, &stranger_key))).await,
        None,
        "a certificate from another CA"
    );
    // A certificate of the client CA whose name maps to no identity.
    assert_eq!(
        call(&server, ca, Some((&nameless_cert, &nameless_key))).await,
        Some(Err(tonic::Code::Unauthenticated))
    );
    // Its name is the `orders` client: it may query its pool, not list pools.
    assert_eq!(
        call(&server, ca, Some((&client_cert, &client_key))).await,
        Some(Err(tonic::Code::PermissionDenied)),
        "a client lists no pools"
    );
    let channel = tls_channel(&server, ca, Some((&client_cert, &client_key)))
        .await
        .expect("TLS");
    poolplane::proto::query_client::QueryClient::new(channel)
        .execute(crate::support::exec("mtls_listener", "SELECT 1", vec![]))
        .await
        .expect("the orders client queries its pool");
    server.stop().await;
}

/// ListPools through TLS with `identity`: `None` if no connection could be
/// made, else the call's outcome (pools listed, or the code).
async fn call(
    server: &TestServer,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Option<Result<usize, tonic::Code>> {
    let channel = tls_channel(server, ca, identity).await.ok()?;
    match lists_pools(channel).await {
        Ok(count) => Some(Ok(count)),
        // A refused handshake shows up at the first call (with TLS 1.3 the
        // server refuses a client certificate after the client finished):
        // a transport error, not an answer of the server's. Which one
        // depends on when the alert arrives (a loaded machine saw another
        // than the usual two); an answer of the server's carries headers.
        Err(status)
            if status.metadata().get("content-type").is_none()
                && matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                        | tonic::Code::Cancelled
                ) =>
        {
            None
        }
        Err(status) => Some(Err(status.code())),
    }
}
