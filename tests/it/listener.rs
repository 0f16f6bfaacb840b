//! The gRPC listener's own limits: at most `server.max_connections` open at
//! once (more are closed at once, and logged), and a client that says
//! nothing is closed after `server.handshake_timeout_ms`, so idle
//! connections cannot keep a real client out for long.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::support::{config_yaml_with, exec, PoolSpec, TestServer};

/// Reads until the server closes the connection; `true` if it did.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_and_the_listener_has_a_limit() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("listening", 1)],
        "  server:\n    shutdown_timeout_ms: 5000\n    max_connections: 20\n    handshake_timeout_ms: 300\n",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..25 {
        silent.push(
            tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect"),
        );
    }
    // Every one of them is closed by the server: five at once (over the
    // limit), the others once the handshake timeout passes.
    for stream in &mut silent {
        assert!(
            closed_by_server(stream, Duration::from_secs(20)).await,
            "a silent connection was kept"
        );
    }
    // A real client is served.
    server
        .query()
        .await
        .execute(exec("listening", "SELECT 1", vec![]))
        .await
        .expect("served");
    server.stop().await;
}
