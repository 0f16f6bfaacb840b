//! `poolplane bench`, the real binary, against a real server: every call
//! counted (Execute, Session transactions, pipelined sessions), call errors
//! counted by code and not fatal, no leak under `--dirty-every` (and the
//! check it relies on does see each kind of dirt), TLS with a client
//! certificate and a bearer token, and exit 2 with a message for bad options
//! or an unreachable server.

use std::process::{Command, Output};

use poolplane::proto::{self, session_request::Request as Req, statement_result::Outcome};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc_tls::{ca, leaf, tls_section, write};
use crate::support::{config_yaml, config_yaml_with, free_port, PoolSpec, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_poolplane");

/// What one run of the binary gave: its exit code, stdout, stderr, and the
/// `--json` report (if it wrote one).
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: Option<Value>,
}

impl Run {
    fn report(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON report (exit {:?})\nstdout: {}\nstderr: {}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    fn results(&self) -> &Value {
        &self.report()["results"]
    }

    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "bench failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `poolplane bench` with `args` (no warm-up, a JSON report) and
/// `env`; the blocking wait is off the runtime that serves the server.
async fn bench(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut command = Command::new(BIN);
    command
        .args(["bench", "--addr", addr, "--warmup", "0", "--json"])
        .arg(&json)
        .args(args)
        .env_remove("POOLPLANE_ADDR")
        .env_remove("POOLPLANE_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run poolplane bench");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("the report is JSON"));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    }
}

fn plain(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_counts_every_call_and_reports_the_conditions() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("bench_execute", 4)])).await;
    let addr = plain(&server);
    let args = [
        "--pool",
        "bench_execute",
        "--requests",
        "200",
        "--clients",
        "4",
        "--connections",
        "2",
    ];
    let run = bench(&addr, &args, &[]).await;
    let report = run.ok().report();
    let results = &report["results"];
    assert_eq!(results["calls"], 200, "{report:#}");
    assert_eq!(results["errors"], 0, "{report:#}");
    assert_eq!(results["leaks"], 0);
    let latency = &results["latency_us"];
    for key in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(
            latency[key].as_u64().is_some_and(|us| us > 0),
            "{key}: {latency}"
        );
    }
    assert!(latency["p50"].as_u64() <= latency["max"].as_u64());
    assert!(results["calls_per_second"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    // The conditions.
    assert_eq!(report["pool_max_connections"], 4);
    assert_eq!(report["poolplane_version"], env!("CARGO_PKG_VERSION"));
    assert!(report["cores"].as_u64().is_some_and(|n| n >= 1));
    assert!(report["date"].as_str().is_some_and(|d| d.ends_with('Z')));
    let options = &report["options"];
    assert_eq!(options["clients"], 4);
    assert_eq!(options["connections"], 2);
    assert_eq!(options["mode"], "execute");
    assert_eq!(options["workload"], "select1");
    assert_eq!(options["requests"], 200);
    assert!(run.stdout.contains("calls      200 "), "{}", run.stdout);
    assert!(run.stdout.contains("p99.9"), "{}", run.stdout);
    // No terminal, no progress bar.
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // The gRPC stack alone: PoolAdmin/GetPool.
    let args = [
        "--pool",
        "bench_execute",
        "--workload",
        "getpool",
        "--requests",
        "50",
    ];
    let run = bench(&addr, &args, &[]).await;
    assert_eq!(run.ok().results()["calls"], 50);
    assert_eq!(run.results()["errors"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_calls_are_counted_by_code_not_fatal() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("bench_errors", 2)])).await;
    let addr = plain(&server);
    let args = [
        "--pool",
        "bench_errors",
        "--workload",
        "sql",
        "--sql",
        "SELECT * FROM no_such_table",
        "--requests",
        "20",
    ];
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["calls"], 0);
    assert_eq!(results["errors"], 20);
    assert_eq!(results["errors_by_code"], json!({"InvalidArgument": 20}));
    assert!(results["latency_us"].is_null());
    assert!(
        run.stdout.contains("errors     20 (InvalidArgument: 20)"),
        "{}",
        run.stdout
    );

    let run = bench(&addr, &["--pool", "no_such_pool", "--requests", "5"], &[]).await;
    assert_eq!(run.ok().results()["errors_by_code"], json!({"NotFound": 5}));
    // GetPool of a pool that does not exist: the report has no pool size.
    assert!(run.report().get("pool_max_connections").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_answer_every_statement_pipelined_or_in_transactions() {
    // max_session_connections: half of 4, so two sessions at once.
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("bench_sessions", 4)])).await;
    let addr = plain(&server);
    let pool = ["--pool", "bench_sessions"];

    let mut args = pool.to_vec();
    args.extend([
        "--mode",
        "session",
        "--pipeline",
        "16",
        "--clients",
        "2",
        "--requests",
        "400",
    ]);
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["calls"], 400, "{results:#}");
    assert_eq!(results["errors"], 0, "{results:#}");
    assert_eq!(results["sessions_opened"], 2, "{results:#}");
    assert_eq!(results["other_errors"], json!({}));
    assert_eq!(run.report()["options"]["pipeline"], 16);

    // Transactions of three statements, with a parameter.
    let mut args = pool.to_vec();
    args.extend([
        "--mode",
        "session",
        "--statements",
        "3",
        "--clients",
        "2",
        "--requests",
        "30",
        "--workload",
        "sql",
        "--sql",
        "SELECT $1::int8 + 1",
        "--param",
        r#"{"intValue":"41"}"#,
    ]);
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["calls"], 30, "{results:#}");
    assert_eq!(results["errors"], 0, "{results:#}");
    // BEGIN and COMMIT answered without error.
    assert_eq!(results["other_errors"], json!({}), "{results:#}");
    assert_eq!(run.report()["options"]["statements"], 3);

    // More clients than sessions may hold: refused opens are retried, not errors.
    let mut args = pool.to_vec();
    args.extend([
        "--mode",
        "session",
        "--pipeline",
        "4",
        "--clients",
        "6",
        "--requests",
        "300",
    ]);
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["calls"], 300, "{results:#}");
    assert_eq!(results["errors"], 0, "{results:#}");
}

/// Runs `sql` on a session that first ran `dirt`, and returns the answer.
async fn on_a_dirty_session(server: &TestServer, pool: &str, dirt: &str, sql: &str) -> bool {
    let (requests, queued) = tokio::sync::mpsc::channel(8);
    let statement = |sql: &str| proto::SessionRequest {
        request: Some(Req::Statement(proto::SessionStatement {
            sql: sql.into(),
            ..Default::default()
        })),
    };
    let open = proto::SessionRequest {
        request: Some(Req::Open(proto::SessionOpen {
            pool: pool.into(),
            ..Default::default()
        })),
    };
    for request in [open, statement(dirt), statement(sql)] {
        requests.send(request).await.expect("queue a request");
    }
    let mut responses = server
        .query()
        .await
        .session(ReceiverStream::new(queued))
        .await
        .expect("session")
        .into_inner();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        match responses.message().await.expect("answer") {
            Some(proto::SessionResponse {
                response: Some(proto::session_response::Response::Result(result)),
            }) => answers.push(result),
            Some(_) => continue,
            None => panic!("the session ended early"),
        }
    }
    match &answers[1].outcome {
        Some(Outcome::Result(answer)) => {
            answer.rows[0].values[0].kind == Some(proto::value::Kind::BoolValue(true))
        }
        other => panic!("the check failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_callers_leave_nothing_that_the_check_would_see() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("bench_dirty", 4)])).await;
    let addr = plain(&server);

    // The check sees each kind of dirt on the connection it runs on, and
    // nothing on a clean one.
    let check = poolplane::bench::CHECK_SQL;
    for dirt in [
        "SET work_mem = '7777kB'",
        "CREATE TEMP TABLE bench_dirt (x int)",
        "SELECT pg_advisory_lock(777777, pg_backend_pid())",
    ] {
        assert!(
            on_a_dirty_session(&server, "bench_dirty", dirt, check).await,
            "the check misses: {dirt}"
        );
    }
    assert!(!on_a_dirty_session(&server, "bench_dirty", "SELECT 1", check).await);

    // Execute: every 10th call sets work_mem and takes an advisory lock.
    let args = [
        "--pool",
        "bench_dirty",
        "--dirty-every",
        "10",
        "--requests",
        "200",
        "--clients",
        "4",
    ];
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["leaks"], 0, "{results:#}");
    assert_eq!(results["calls"], 200, "{results:#}");
    assert_eq!(results["errors"], 0, "{results:#}");
    assert!(run.stdout.contains("leaks      0"), "{}", run.stdout);

    // Sessions: every 3rd one leaves a setting, a temporary table and a lock
    // and goes away without closing.
    let args = [
        "--pool",
        "bench_dirty",
        "--mode",
        "session",
        "--dirty-every",
        "3",
        "--requests",
        "60",
        "--clients",
        "2",
    ];
    let run = bench(&addr, &args, &[]).await;
    let results = run.ok().results();
    assert_eq!(results["leaks"], 0, "{results:#}");
    assert_eq!(results["calls"], 60, "{results:#}");
    // One session per transaction, so connections change hands.
    assert_eq!(results["sessions_opened"], 60, "{results:#}");
    // The dirty statements themselves succeeded (a leftover temporary
    // table would have made CREATE fail).
    assert_eq!(results["other_errors"], json!({}), "{results:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_a_bearer_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, client_ca) = (ca("listener CA"), ca("client CA"));
    let (cert, key, _) = leaf(&server_ca, "server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key, _) = leaf(&client_ca, "bench", &["bench.apps.internal"]);
    let token = "bench-admin-token-0123456789";
    let hash: String = poolplane::auth::hash(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut section = tls_section(
        &write(dir.path(), "server.crt", &cert),
        &write(dir.path(), "server.key", &key),
        Some(&write(dir.path(), "client-ca.crt", &client_ca.pem)),
    );
    section.push_str(&format!(
        "    auth:\n      mtls:\n        - name: bench\n          san: bench.apps.internal\n          role: client\n          pools: [bench_tls]\n      tokens:\n        - name: ops\n          token_sha256: \"{hash}\"\n          role: admin\n"
    ));
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("bench_tls", 2)],
        &section,
    ))
    .await;
    let addr = format!("https://localhost:{}", server.addr.port());
    let ca_file = write(dir.path(), "ca.crt", &server_ca.pem);
    let cert_file = write(dir.path(), "client.crt", &client_cert);
    let key_file = write(dir.path(), "client.key", &client_key);
    let tls = [
        "--pool",
        "bench_tls",
        "--requests",
        "20",
        "--ca-file",
        ca_file.as_str(),
        "--cert-file",
        cert_file.as_str(),
        "--key-file",
        key_file.as_str(),
    ];

    // The certificate's identity is a client: it queries, but may not read
    // the pool, so the report has no pool size.
    let run = bench(&addr, &tls, &[]).await;
    let report = run.ok().report();
    assert_eq!(report["results"]["calls"], 20, "{report:#}");
    assert!(report.get("pool_max_connections").is_none(), "{report:#}");
    assert_eq!(report["options"]["mutual_tls"], true);

    // With the admin token (from POOLPLANE_TOKEN, or the variable named),
    // GetPool answers too.
    let run = bench(&addr, &tls, &[("POOLPLANE_TOKEN", token)]).await;
    assert_eq!(run.ok().report()["pool_max_connections"], 2);
    let mut named = tls.to_vec();
    named.extend(["--token-env", "BENCH_TEST_TOKEN"]);
    let run = bench(&addr, &named, &[("BENCH_TEST_TOKEN", token)]).await;
    assert_eq!(run.ok().report()["pool_max_connections"], 2);
    assert_eq!(run.report()["options"]["token"], true);
    let printed = format!("{}{}{}", run.stdout, run.stderr, run.report());
    assert!(!printed.contains(token), "the token was printed");

    // A wrong token: every call refused, counted.
    let run = bench(
        &addr,
        &named,
        &[("BENCH_TEST_TOKEN", "not-the-token-at-all")],
    )
    .await;
    assert_eq!(
        run.ok().results()["errors_by_code"],
        json!({"Unauthenticated": 20})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_and_an_unreachable_server_exit_2_with_a_message() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for (args, says) in [
        (&["--clients", "0"][..], "--clients takes 1 to 10000"),
        (
            &["--workload", "nope"][..],
            "choose select1, sleep:<ms>, sql",
        ),
        (&["--workload", "sql"][..], "--workload sql needs --sql"),
        (&["--pipeline", "4"][..], "--mode session"),
        (
            &[
                "--workload",
                "sql",
                "--sql",
                "SELECT $1",
                "--param",
                "{\"intValue\":\"x\"}",
            ][..],
            "--param #1",
        ),
        (&["--mode", "bogus"][..], "invalid value 'bogus'"),
        (
            &["--token-env", "POOLPLANE_BENCH_TEST_UNSET"][..],
            "is not set",
        ),
        (&["--requests", "5"][..], "cannot reach poolplane at"),
    ] {
        let run = bench(&nowhere, args, &[]).await;
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(run.report.is_none(), "{args:?} wrote a report");
    }
}
