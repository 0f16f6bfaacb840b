//! The real binary: `poolplane serve` logs one line per pool, serves, and
//! exits 0 on SIGTERM; `poolplane check-config` prints OK or every error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{bearer, config_yaml, free_port, PoolSpec};

const BIN: &str = env!("CARGO_BIN_EXE_poolplane");

#[test]
fn check_config_prints_ok_or_every_error() {
    let ok = Command::new(BIN)
        .args(["check-config", "config/poolplane.yaml"])
        .output()
        .expect("run");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("OK"));

    let bad = Command::new(BIN)
        .args(["check-config", "config/connection_pool.yaml"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("connection_pool.security.ssl.ca_certificate"),
        "{stderr}"
    );
    assert!(stderr.contains("/etc/scratchrobin/ssl/ca.crt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_each_pool_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("poolplane.yaml");
    std::fs::write(
        &path,
        config_yaml(&[PoolSpec::new("bin_one", 2), PoolSpec::new("bin_two", 2)]),
    )
    .expect("write config");
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn poolplane serve");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pool_lines = Vec::new();
    let mut listening = false;
    while pool_lines.len() < 2 || !listening {
        let line = tokio::time::timeout(Duration::from_secs(20), lines_rx.recv())
            .await
            .expect("log lines arrive")
            .expect("process still running");
        if line.contains("pool started") {
            pool_lines.push(line);
        } else if line.contains("gRPC listening") {
            listening = true;
        }
    }
    assert!(pool_lines.iter().any(|l| l.contains("bin_one")));
    // The test pools log in as the superuser: each is warned about once.
    let mut warned = Vec::new();
    while warned.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines_rx.recv())
            .await
            .expect("the superuser warnings arrive")
            .expect("process still running");
        if line.contains("is a superuser") {
            warned.push(line);
        }
    }
    assert!(warned.iter().any(|l| l.contains("bin_two")), "{warned:?}");
    assert!(pool_lines.iter().any(|l| l.contains("bin_two")));
    assert!(!pool_lines
        .iter()
        .any(|l| l.contains(crate::support::SUPERUSER_PASSWORD)));

    let mut client =
        poolplane::proto::query_client::QueryClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to the binary");
    let response = client
        .execute(crate::support::exec("bin_one", "SELECT 'up'::text", vec![]))
        .await
        .expect("query through the binary")
        .into_inner();
    assert_eq!(response.rows[0].values[0], crate::support::v::text("up"));
    // A caller's NOTICE text never reaches the log.
    client
        .execute(crate::support::exec(
            "bin_one",
            "DO $$ BEGIN RAISE NOTICE E'pp-notice-marker\\nERROR forged line'; END $$",
            vec![],
        ))
        .await
        .expect("a statement raising a notice");

    // A change is audited: who, what, which pool, how it ended.
    poolplane::proto::pool_admin_client::PoolAdminClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .expect("connect")
    .update_pool(poolplane::proto::UpdatePoolRequest {
        name: "bin_one".into(),
        max_connections: Some(3),
        ..Default::default()
    })
    .await
    .expect("resized");
    let audit = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines_rx.recv())
            .await
            .expect("the audit line arrives")
            .expect("process still running");
        if line.contains("poolplane::audit") {
            break line;
        }
    };
    for part in ["UpdatePool", "bin_one", "code=Ok", "caller=anonymous "] {
        assert!(audit.contains(part), "{audit}");
    }

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "serve exits 0 after SIGTERM");
    while let Some(line) = lines_rx.recv().await {
        assert!(!line.contains("pp-notice-marker"), "logged: {line}");
        assert!(!line.contains("forged line"), "logged: {line}");
    }
}

/// SIGTERM honours `shutdown_timeout_ms` once, in all: in-flight calls and
/// the pools' drains share it, then running statements are cancelled, and
/// no backend of the pool is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_long_statements_in_flight_takes_one_shutdown_timeout() {
    let _turn = crate::support::machine_to_myself().await;
    let yaml = config_yaml(&[PoolSpec::new("bin_sigterm", 2)])
        .replace("shutdown_timeout_ms: 5000", "shutdown_timeout_ms: 2000");
    assert!(yaml.contains("shutdown_timeout_ms: 2000"));
    let server = crate::support::ServedBinary::start(&yaml, &[]).await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut client = server.query().await;
        calls.push(tokio::spawn(async move {
            client
                .execute(crate::support::exec(
                    "bin_sigterm",
                    "SELECT pg_sleep(30)",
                    vec![],
                ))
                .await
        }));
    }
    let admin = crate::support::cluster().admin().await;
    crate::support::eventually("both statements run", Duration::from_secs(20), || {
        let admin = &admin;
        async move { crate::support::sleeping(admin, "poolplane/bin_sigterm").await == 2 }
    })
    .await;
    let started = std::time::Instant::now();
    let status = server.terminate().await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    // Two seconds of budget, plus the cancels and closes (about 15 ms
    // here): not the twice-the-budget it took when calls and drains each
    // had their own.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(
        crate::support::backends(&admin, "poolplane/bin_sigterm").await,
        0
    );
    for call in calls {
        let _ = call.await;
    }
}

/// SIGTERM while a stream's reader has stopped (its backend blocked
/// writing to poolplane): the shutdown budget holds, and no backend is left
/// (found by a red team: 27 s against a 5 s budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_stream_takes_one_shutdown_timeout() {
    let _turn = crate::support::machine_to_myself().await;
    let yaml = config_yaml(&[PoolSpec::new("bin_stalled_stop", 1)])
        .replace("shutdown_timeout_ms: 5000", "shutdown_timeout_ms: 2000");
    let server = crate::support::ServedBinary::start(&yaml, &[]).await;
    let mut parts = server
        .query()
        .await
        .execute_stream(crate::support::exec(
            "bin_stalled_stop",
            "SELECT repeat('x', 100000) FROM generate_series(1, 100000)",
            vec![],
        ))
        .await
        .expect("stream")
        .into_inner();
    parts.message().await.expect("a part").expect("more");
    let admin = crate::support::cluster().admin().await;
    crate::support::eventually("the backend waits for poolplane", Duration::from_secs(10), || {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'poolplane/bin_stalled_stop' AND wait_event = 'ClientWrite'",
                    &[],
                )
                .await
                .map(|row| row.get::<_, i64>(0))
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    let started = std::time::Instant::now();
    let status = server.terminate().await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    crate::support::eventually("no backend is left", Duration::from_secs(5), || {
        let admin = &admin;
        async move { crate::support::backends(admin, "poolplane/bin_stalled_stop").await == 0 }
    })
    .await;
    drop(parts);
}

/// 1,100 clients that connect and say nothing, against a server started
/// with the usual soft limit of 1,024 open files: it raises its limit, and
/// a real client is still answered (found by a review: idle connections
/// starved both listeners of descriptors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_starve_the_listener() {
    let _turn = crate::support::machine_to_myself().await;
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // This test process needs the descriptors too.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raise the test's own limit");
    let server = crate::support::ServedBinary::start(
        &config_yaml(&[PoolSpec::new("bin_idle_flood", 1)]),
        &["prlimit", "--nofile=1024:8192", "--"],
    )
    .await;
    let address = server
        .grpc
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
        .expect("address");
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("an idle connection"),
        );
    }
    // Bounded: starved, the server never answers at all.
    let call = async {
        server
            .query()
            .await
            .execute(crate::support::exec(
                "bin_idle_flood",
                "SELECT 'still here'::text",
                vec![],
            ))
            .await
    };
    let response = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("answered, not starved")
        .expect("a real client is answered")
        .into_inner();
    assert_eq!(
        response.rows[0].values[0],
        crate::support::v::text("still here")
    );
    drop(idle);
}

/// Every configured secret (a pool's password, API tokens, the metrics
/// token) is searched for in everything the server says: its log at trace
/// level, its responses and errors, and `/metrics`. None is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_at_trace_level_responses_or_metrics() {
    let _turn = crate::support::machine_to_myself().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_token, client_token, metrics_token) = (
        "adm1n-t0ken-abcdefghijkl",
        "cl1ent-t0ken-abcdefghijkl",
        "metr1cs-t0ken-abcdefghijkl",
    );
    let hex = |token: &str| -> String {
        poolplane::auth::hash(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let metrics_file = dir.path().join("metrics-token");
    std::fs::write(&metrics_file, metrics_token).expect("write");
    let yaml = crate::support::config_yaml_with(
        &[PoolSpec::new("bin_secret", 1)],
        &format!(
            "  server:\n    shutdown_timeout_ms: 2000\n    metrics_token_file: {}\n    auth:\n      tokens:\n        - {{name: root, token_sha256: \"{}\", role: admin}}\n        - {{name: app, token_sha256: \"{}\", role: client, pools: [bin_secret]}}\n",
            metrics_file.display(),
            hex(admin_token),
            hex(client_token)
        ),
    );
    let config = dir.path().join("poolplane.yaml");
    std::fs::write(&config, &yaml).expect("write config");
    let port = free_port();
    let http_port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (stdout, stderr) = (
        child.stdout.take().expect("out"),
        child.stderr.take().expect("err"),
    );
    let readers = [
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default()),
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default()),
    ];
    let address = format!("http://127.0.0.1:{port}");
    let channel = loop {
        match tonic::transport::Channel::from_shared(address.clone())
            .expect("uri")
            .connect()
            .await
        {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut said = String::new();
    let mut admin = poolplane::proto::pool_admin_client::PoolAdminClient::new(channel.clone());
    let mut query = poolplane::proto::query_client::QueryClient::new(channel);
    said.push_str(&format!(
        "{:?}",
        admin
            .get_pool(bearer(
                admin_token,
                poolplane::proto::GetPoolRequest {
                    name: "bin_secret".into()
                }
            ))
            .await
    ));
    said.push_str(&format!(
        "{:?}",
        query
            .execute(bearer(
                client_token,
                crate::support::exec("bin_secret", "SELECT 1", vec![])
            ))
            .await
    ));
    said.push_str(&format!(
        "{:?}",
        query
            .execute(bearer(
                "wrong-token-abcdefghijkl",
                crate::support::exec("bin_secret", "SELECT 1", vec![])
            ))
            .await
    ));
    said.push_str(&format!(
        "{:?}",
        admin
            .create_pool(bearer(
                admin_token,
                poolplane::proto::CreatePoolRequest {
                    name: "bad_password".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(crate::support::cluster().port),
                    database: "postgres".into(),
                    password: "inl1ne-passw0rd-abcdefghijkl".into(),
                    ..Default::default()
                }
            ))
            .await
    ));
    let http = format!("127.0.0.1:{http_port}").parse().expect("addr");
    let (_, metrics) = crate::support::http_get_with(
        http,
        "/metrics",
        &[("Authorization", &format!("Bearer {metrics_token}"))],
    )
    .await;
    said.push_str(&metrics);
    let (_, refused) = crate::support::http_get(http, "/metrics").await;
    said.push_str(&refused);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    for reader in readers {
        said.push_str(&reader.join().expect("log reader"));
    }
    assert!(said.contains("TRACE"), "the log is at trace level");
    for secret in [
        crate::support::SUPERUSER_PASSWORD,
        admin_token,
        client_token,
        metrics_token,
        "inl1ne-passw0rd-abcdefghijkl",
        "wrong-token-abcdefghijkl",
    ] {
        assert!(!said.contains(secret), "`{secret}` was said somewhere");
    }
}

/// A SIGTERM sent the moment a listener answers still gets the graceful
/// shutdown (exit 0): the handler is in place before the listeners exist.
#[test]
fn sigterm_as_soon_as_a_listener_answers_is_graceful() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("poolplane.yaml");
    std::fs::write(&path, config_yaml(&[PoolSpec::new("early", 1)])).expect("config");
    let http = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_poolplane"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn poolplane serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "ended by {status}, not a graceful shutdown"
    );
}
