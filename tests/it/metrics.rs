//! /metrics against what the test did: exact counts, utilization while
//! connections are held, histograms counting every acquisition, gRPC server
//! metrics; promtool's lint on a live scrape; a real Prometheus scraping it.

use std::time::Duration;

use crate::support::{
    config_yaml, eventually, exec, free_port, http_get, metric, scrape, PoolSpec, TestServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_values_match_what_happened() {
    let spec = PoolSpec::new("scraped", 4)
        .with("utilization_alert_threshold: 0.9")
        .with("acquire_wait_alert_threshold_ms: 250");
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let mut client = server.query().await;
    for _ in 0..7 {
        client
            .execute(exec("scraped", "SELECT 1", vec![]))
            .await
            .expect("select");
    }
    let _ = client
        .execute(exec("scraped", "SELECT 1/0", vec![]))
        .await
        .expect_err("sql error");
    let _ = client
        .execute(exec("nope", "SELECT 1", vec![]))
        .await
        .expect_err("unknown pool");

    let text = scrape(&server).await;
    let p = ("pool", "scraped");
    let value = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    // The pool's own alert thresholds, for Prometheus rules to compare with.
    let threshold = |rule: &str| value("poolplane_pool_alert_threshold", &[p, ("rule", rule)]);
    assert_eq!(threshold("high_utilization"), Some(0.9));
    assert_eq!(threshold("slow_acquire"), Some(0.25));
    assert!(threshold("high_error_rate").is_some_and(|ratio| ratio > 0.0));
    assert_eq!(
        value(
            "poolplane_pool_acquisitions_total",
            &[p, ("outcome", "success")]
        ),
        Some(8.0)
    );
    assert_eq!(
        value(
            "poolplane_pool_acquisitions_total",
            &[p, ("outcome", "timeout")]
        ),
        Some(0.0)
    );
    // The caller's division by zero is counted by SQLSTATE class (22).
    assert_eq!(
        value(
            "poolplane_pool_sql_errors_total",
            &[p, ("sqlstate_class", "22")]
        ),
        Some(1.0)
    );
    // Classes that never occurred are not exported (44 classes per pool).
    assert_eq!(
        value(
            "poolplane_pool_sql_errors_total",
            &[p, ("sqlstate_class", "42")]
        ),
        None
    );
    // Every acquisition is in the wait histogram; every statement and every
    // returned lease in theirs.
    assert_eq!(
        value("poolplane_pool_acquire_wait_seconds_count", &[p]),
        Some(8.0)
    );
    assert_eq!(
        value(
            "poolplane_pool_acquire_wait_seconds_bucket",
            &[p, ("le", "+Inf")]
        ),
        Some(8.0)
    );
    assert_eq!(
        value("poolplane_pool_statement_duration_seconds_count", &[p]),
        Some(8.0)
    );
    assert_eq!(
        value("poolplane_pool_connection_hold_seconds_count", &[p]),
        Some(8.0)
    );
    let created = value("poolplane_pool_connections_created_total", &[p]).expect("created");
    assert_eq!(
        value("poolplane_pool_connection_setup_seconds_count", &[p]),
        Some(created)
    );
    assert_eq!(value("poolplane_pool_max_connections", &[p]), Some(4.0));
    assert_eq!(
        value("poolplane_pool_connections", &[p, ("state", "active")]),
        Some(0.0)
    );
    assert_eq!(
        value("poolplane_pool_health_state", &[p, ("state", "healthy")]).unwrap_or(0.0)
            + value("poolplane_pool_health_state", &[p, ("state", "unknown")]).unwrap_or(0.0),
        1.0
    );
    let grpc = |method: &str, code: &str| {
        value(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "poolplane.v1.Query"),
                ("grpc_method", method),
                ("grpc_code", code),
                ("grpc_type", "unary"),
            ],
        )
    };
    assert_eq!(grpc("Execute", "OK"), Some(7.0));
    assert_eq!(grpc("Execute", "InvalidArgument"), Some(1.0));
    assert_eq!(grpc("Execute", "NotFound"), Some(1.0));
    assert!(value("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));

    // Three connections held by sleeping statements: utilization 3/4.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut client = server.query().await;
        holders.push(tokio::spawn(async move {
            client
                .execute(exec("scraped", "SELECT pg_sleep(1)", vec![]))
                .await
        }));
    }
    eventually("three connections held", Duration::from_secs(5), || async {
        let text = scrape(&server).await;
        metric(
            &text,
            "poolplane_pool_connections",
            &[p, ("state", "active")],
        ) == Some(3.0)
    })
    .await;
    let text = scrape(&server).await;
    assert_eq!(
        metric(&text, "poolplane_pool_utilization_ratio", &[p]),
        Some(0.75)
    );
    for holder in holders {
        holder.await.expect("join").expect("sleep");
    }
    // The states sum to the backends PostgreSQL has for the pool.
    let admin = crate::support::cluster().admin().await;
    eventually(
        "connections by state sum to the pool's backends",
        Duration::from_secs(5),
        || {
            let (server, admin) = (&server, &admin);
            async move {
                let text = scrape(server).await;
                let sum: f64 = [
                    "connecting",
                    "idle",
                    "active",
                    "checking",
                    "resetting",
                    "closing",
                ]
                .iter()
                .map(|state| {
                    metric(&text, "poolplane_pool_connections", &[p, ("state", state)])
                        .unwrap_or(f64::NAN)
                })
                .sum();
                let seen = crate::support::backends(admin, "poolplane/scraped").await;
                sum == seen as f64 && sum >= 3.0
            }
        },
    )
    .await;

    // A removed pool's series go away.
    server
        .admin()
        .await
        .delete_pool(poolplane::proto::DeletePoolRequest {
            name: "scraped".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let text = scrape(&server).await;
    assert_eq!(metric(&text, "poolplane_pool_max_connections", &[p]), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_live_scrape() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("linted", 2)])).await;
    server
        .query()
        .await
        .execute(exec("linted", "SELECT 1", vec![]))
        .await
        .expect("select");
    let text = scrape(&server).await;
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("promtool not runnable ({err}): apt-get install prometheus")
            });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        child.wait_with_output().expect("promtool")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_and_answers_promql() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("promql", 3)])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: poolplane\n    static_configs:\n      - targets: ['{}']\n",
            server.http_addr
        ),
    )
    .expect("write prometheus config");
    let port = free_port();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("prometheus not runnable ({err}): apt-get install prometheus")
        });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let query = "/api/v1/query?query=poolplane_pool_max_connections%7Bpool%3D%22promql%22%7D";
    let result = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually(
        "Prometheus has scraped the pool",
        Duration::from_secs(30),
        || {
            let result = std::sync::Arc::clone(&result);
            async move {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    return false;
                }
                let (status, body) = http_get(addr, query).await;
                let found = status == 200 && body.contains("\"result\":[{");
                *result.lock().expect("result") = body;
                found
            }
        },
    )
    .await;
    let body = result.lock().expect("result").clone();
    let json: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(json["data"]["result"][0]["metric"]["pool"], "promql");
    assert_eq!(json["data"]["result"][0]["value"][1], "3");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    server.stop().await;
}

/// With a metrics token, `/metrics` answers only a scrape that presents
/// it (Prometheus: `authorization: {credentials_file: ...}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_keeps_metrics_from_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "scrape-token-0123456789";
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let server = crate::support::TestServer::start(&crate::support::config_yaml_with(
        &[crate::support::PoolSpec::new("metered", 1)],
        &format!(
            "  server:\n    shutdown_timeout_ms: 5000\n    metrics_token_file: {}\n",
            file.display()
        ),
    ))
    .await;
    let (status, body) = crate::support::http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("metered"), "{body}");
    let (status, _) = crate::support::http_get_with(
        server.http_addr,
        "/metrics",
        &[("Authorization", "Bearer not-the-token-at-all")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = crate::support::http_get_with(
        server.http_addr,
        "/metrics",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("pool=\"metered\""), "{body}");
    server.stop().await;
}

/// Every counter and histogram series of a scrape, by its full series text
/// (name and labels).
fn monotonic_series(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut monotonic_families = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            if kind == "counter" || kind == "histogram" {
                monotonic_families.push(name.to_string());
            }
        }
    }
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let family = monotonic_families.iter().any(|family| {
                name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family))
            });
            Some((series.to_string(), value.parse().ok()?)).filter(|_| family)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_statistics_restarts_get_pool_and_no_exported_counter_goes_down() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("counted", 2)])).await;
    let mut client = server.query().await;
    for _ in 0..5 {
        client
            .execute(exec("counted", "SELECT 1", vec![]))
            .await
            .expect("select");
    }
    let _ = client
        .execute(exec("counted", "SELECT 1/0", vec![]))
        .await
        .expect_err("sql error");
    let before = monotonic_series(&scrape(&server).await);
    let p = ("pool", "counted");
    let succeeded = [p, ("outcome", "success")];
    assert_eq!(
        metric(
            &scrape(&server).await,
            "poolplane_pool_acquisitions_total",
            &succeeded
        ),
        Some(6.0)
    );
    assert!(
        before.len() > 20,
        "counters and histograms found: {}",
        before.len()
    );

    server
        .admin()
        .await
        .reset_statistics(poolplane::proto::ResetStatisticsRequest {
            pool: "counted".into(),
        })
        .await
        .expect("reset");
    let reported = crate::support::pool_statistics(&server, "counted").await;
    assert_eq!(reported.acquisitions_succeeded, 0, "GetPool starts again");
    assert_eq!(reported.connections_created, 0);

    let text = scrape(&server).await;
    let after = monotonic_series(&text);
    let went_down: Vec<_> = before
        .iter()
        .filter(|(series, value)| after.get(*series).is_none_or(|now| now < *value))
        .collect();
    assert!(
        went_down.is_empty(),
        "counters that went down or vanished: {went_down:?}"
    );
    assert_eq!(
        metric(&text, "poolplane_pool_acquisitions_total", &succeeded),
        Some(6.0)
    );
    server.stop().await;
}

/// The session series follow real sessions: one in each state, the
/// oldest one's age, the pool's limit, and back to zero when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_series_follow_real_sessions() {
    use crate::sessions::{open_request, Session};
    const POOL: &str = "scraped_sessions";
    let spec = PoolSpec::new(POOL, 6).with("max_session_connections: 4");
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let p = ("pool", POOL);
    let by_state = |text: &str| -> Vec<Option<f64>> {
        [
            "running",
            "idle",
            "idle_in_transaction",
            "idle_in_failed_transaction",
        ]
        .iter()
        .map(|state| metric(text, "poolplane_pool_sessions", &[p, ("state", state)]))
        .collect()
    };
    let text = scrape(&server).await;
    assert_eq!(by_state(&text), vec![Some(0.0); 4]);
    assert_eq!(
        metric(&text, "poolplane_pool_oldest_session_seconds", &[p]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "poolplane_pool_max_session_connections", &[p]),
        Some(4.0)
    );

    let client = server.query().await;
    let open = || {
        let mut client = client.clone();
        async move {
            Session::open(&mut client, open_request(POOL))
                .await
                .expect("open")
        }
    };
    let mut idle = open().await;
    idle.ok("SELECT 1").await;
    let mut in_transaction = open().await;
    in_transaction.ok("BEGIN").await;
    let mut failed = open().await;
    failed.ok("BEGIN").await;
    failed.run("SELECT 1/0").await;
    let running = open().await;
    running.send("SELECT pg_sleep(30)", vec![]).await;
    eventually(
        "one session in each state",
        Duration::from_secs(10),
        || async {
            let text = scrape(&server).await;
            by_state(&text) == vec![Some(1.0); 4]
                && metric(&text, "poolplane_pool_oldest_session_seconds", &[p])
                    .is_some_and(|age| age > 0.0)
        },
    )
    .await;

    drop(running);
    for session in [idle, in_transaction, failed] {
        session.close().await;
    }
    eventually("no session left", Duration::from_secs(10), || async {
        let text = scrape(&server).await;
        by_state(&text) == vec![Some(0.0); 4]
            && metric(&text, "poolplane_pool_oldest_session_seconds", &[p]) == Some(0.0)
    })
    .await;
    server.stop().await;
}
