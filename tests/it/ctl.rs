//! `poolplane ctl`, the real binary, against a real server on a real
//! cluster: every subcommand in table and JSON output (values that could be
//! wrong are read back from the JSON: a pool's size after an update, the
//! active count while a session holds a connection), `watch` printing
//! events as they happen and ending cleanly on Ctrl-C and when the server
//! stops, the documented exit codes (4 for an unknown pool, 3 for an
//! unreachable server or a TLS handshake that fails, 5 for a missing or
//! wrong token, 2 for usage), TLS and tokens, and completions.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use poolplane::proto::{self, session_request::Request as Req, HealthState};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc_tls::{ca, leaf, tls_section, write};
use crate::support::{
    config_yaml, config_yaml_with, eventually, free_port, wait_for_health, PoolSpec, TestServer,
};

const BIN: &str = env!("CARGO_BIN_EXE_poolplane");

/// What one run of `poolplane ctl` gave.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "{:?} failed\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Its stdout as JSON (after checking it succeeded).
    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("{:?}: not JSON ({e}): {}", self.args, self.stdout))
    }

    /// Asserts the exit code and that stderr says `says`.
    fn fails(&self, code: i32, says: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "{:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(says),
            "{:?}: stderr lacks {says:?}: {}",
            self.args,
            self.stderr
        );
    }
}

/// A `poolplane ctl` command at `addr`, none of its variables inherited.
fn command(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(["ctl", "--addr", addr]).args(args);
    for var in [
        "POOLPLANE_ADDR",
        "POOLPLANE_TOKEN",
        "POOLPLANE_TOKEN_FILE",
        "POOLPLANE_CA_FILE",
        "POOLPLANE_CERT_FILE",
        "POOLPLANE_KEY_FILE",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command
}

/// Runs `poolplane ctl --addr ADDR ARGS`; the blocking wait is off the
/// runtime that serves the server.
async fn ctl_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = command(addr, args, env);
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run poolplane ctl");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ctl(server: &TestServer, args: &[&str]) -> Run {
    ctl_env(&plain(server), args, &[]).await
}

fn plain(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

/// The data lines of a table whose first cell is `first`, split on spaces.
fn rows<'a>(table: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&first))
        .collect()
}

/// The cell of `row` under `header` in `table`'s header line.
fn cell<'a>(table: &str, row: &[&'a str], header: &str) -> &'a str {
    let headers: Vec<&str> = table
        .lines()
        .next()
        .expect("a header")
        .split_whitespace()
        .collect();
    let at = headers
        .iter()
        .position(|h| *h == header)
        .unwrap_or_else(|| panic!("no column {header}: {headers:?}"));
    row[at]
}

fn pool_named<'a>(pools: &'a Value, name: &str) -> &'a Value {
    pools["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["spec"]["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {pools:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_listed_shown_created_resized_paused_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = config_yaml(&[PoolSpec::new("ctl_main", 4)]);
    let server = TestServer::start(&yaml).await;
    wait_for_health(
        &server,
        "ctl_main",
        HealthState::Healthy,
        Duration::from_secs(10),
    )
    .await;

    // pools: a table with a header and one line per pool; the same in JSON.
    let run = ctl(&server, &["pools"]).await;
    let table = run.ok();
    assert!(
        table.starts_with("POOL      STATE    HEALTH   ACTIVE  IDLE  PENDING  MAX  UTIL%  WAIT_AVG_MS  WAIT_MAX_MS  ERRORS  BROKEN\n"),
        "{table}"
    );
    let row = &rows(table, "ctl_main")[0];
    assert_eq!(cell(table, row, "STATE"), "serving");
    assert_eq!(cell(table, row, "HEALTH"), "healthy");
    assert_eq!(cell(table, row, "MAX"), "4");
    let pools = ctl(&server, &["pools", "-o", "json"]).await.json();
    let pool = pool_named(&pools, "ctl_main");
    assert_eq!(pool["spec"]["max_connections"], 4);
    assert_eq!(pool["statistics"]["max"], 4);
    assert_eq!(pool["state"], "POOL_STATE_SERVING");
    assert_eq!(pool["health"]["state"], "HEALTH_STATE_HEALTHY");
    assert_eq!(pool["paused"], false);

    // pool show: every aspect, as lines; JSON is the Pool message.
    let run = ctl(&server, &["pool", "show", "ctl_main"]).await;
    let shown = run.ok();
    assert!(shown.starts_with("pool              ctl_main\n"), "{shown}");
    assert!(shown.contains("\nconnections       0 active, "), "{shown}");
    assert!(shown.contains(", max 4, min 0, "), "{shown}");
    let pool = ctl(&server, &["pool", "show", "ctl_main", "-o", "json"])
        .await
        .json();
    assert_eq!(pool["spec"]["database"], "postgres");
    assert_eq!(
        pool["spec"]["password_source"]
            .as_str()
            .map(|s| s.starts_with("file:")),
        Some(true)
    );

    // pool create, to the cluster the configured pool uses.
    let port = crate::support::cluster().port.to_string();
    let created = ctl(
        &server,
        &[
            "pool",
            "create",
            "ctl_new",
            "--database",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--max",
            "3",
            "--min",
            "1",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(created["spec"]["name"], "ctl_new");
    assert_eq!(created["spec"]["max_connections"], 3);
    assert_eq!(created["spec"]["min_connections"], 1);
    assert_eq!(created["spec"]["user"], "postgres");
    // The same again: the server's error, exit 1.
    ctl(
        &server,
        &["pool", "create", "ctl_new", "--database", "postgres"],
    )
    .await
    .fails(1, "poolplane ctl: AlreadyExists: ");

    // pool update: the size changes, in the answer and for everyone after.
    let updated = ctl(
        &server,
        &[
            "pool",
            "update",
            "ctl_new",
            "--max",
            "7",
            "--statement-timeout-ms",
            "2500",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(updated["spec"]["max_connections"], 7);
    assert_eq!(updated["spec"]["statement_timeout_ms"], 2500);
    assert_eq!(updated["spec"]["min_connections"], 1, "untouched");
    let pools = ctl(&server, &["pools", "-o", "json"]).await.json();
    assert_eq!(pool_named(&pools, "ctl_new")["statistics"]["max"], 7);
    let run = ctl(&server, &["pool", "update", "ctl_new", "--min", "0"]).await;
    assert!(run.ok().contains(", max 7, min 0, "), "{}", run.stdout);
    // Nothing to change is a usage error, found before connecting.
    ctl_env("http://127.0.0.1:1", &["pool", "update", "ctl_new"], &[])
        .await
        .fails(2, "nothing to change");

    // pause, resume, reconnect.
    let run = ctl(&server, &["pause", "ctl_new"]).await;
    assert!(
        run.ok().starts_with("paused ctl_new: 0 calls cancelled, "),
        "{}",
        run.stdout
    );
    let pools = ctl(&server, &["pools"]).await;
    let row = &rows(pools.ok(), "ctl_new")[0];
    assert_eq!(cell(&pools.stdout, row, "STATE"), "paused");
    let resumed = ctl(&server, &["resume", "ctl_new", "-o", "json"])
        .await
        .json();
    assert_eq!(resumed["paused"], false);
    let paused = ctl(
        &server,
        &["pause", "ctl_new", "--drain-connections", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(paused["pool"]["paused"], true);
    assert_eq!(paused["connections_open"], 0);
    let run = ctl(&server, &["resume", "ctl_new"]).await;
    assert!(run.ok().starts_with("POOL "), "{}", run.stdout);
    assert_eq!(rows(&run.stdout, "ctl_new").len(), 1, "{}", run.stdout);
    let reconnected = ctl(&server, &["reconnect", "ctl_new", "-o", "json"])
        .await
        .json();
    assert_eq!(reconnected["spec"]["name"], "ctl_new");

    // health: what the monitor knows, or a probe now.
    let health = ctl(&server, &["health", "-o", "json"]).await.json();
    let results = health["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{health:#}");
    let main = results
        .iter()
        .find(|r| r["pool"] == "ctl_main")
        .expect("ctl_main");
    assert_eq!(main["health"]["state"], "HEALTH_STATE_HEALTHY");
    let probed = ctl(&server, &["health", "ctl_main", "--probe", "-o", "json"])
        .await
        .json();
    assert_eq!(probed["results"][0]["pool"], "ctl_main");
    assert_eq!(
        probed["results"][0]["health"]["state"],
        "HEALTH_STATE_HEALTHY"
    );
    assert!(probed["results"][0]["health"]["checks"].as_u64() >= main["health"]["checks"].as_u64());
    let run = ctl(&server, &["health", "ctl_main"]).await;
    assert_eq!(
        rows(run.ok(), "ctl_main")[0][1],
        "healthy",
        "{}",
        run.stdout
    );

    // reload: the file again; a pool added to it is created.
    let file = dir.path().join("poolplane.yaml");
    std::fs::write(&file, &yaml).expect("write config");
    server.app.set_config_file(file.clone());
    let reload = ctl(&server, &["reload", "-o", "json"]).await.json();
    assert_eq!(
        reload["unchanged"],
        serde_json::json!(["ctl_main"]),
        "{reload:#}"
    );
    assert_eq!(reload["created"], serde_json::json!([]));
    let grown = config_yaml(&[
        PoolSpec::new("ctl_main", 4),
        PoolSpec::new("ctl_reloaded", 2),
    ]);
    std::fs::write(&file, &grown).expect("write config");
    let run = ctl(&server, &["reload"]).await;
    assert!(
        run.ok().contains("created    ctl_reloaded\n"),
        "{}",
        run.stdout
    );
    // A reload some pool refuses (its new target takes no connection) is
    // exit 1: the report on stdout, the pool and why on stderr.
    let moved = config_yaml(&[
        PoolSpec::new("ctl_main", 4).port(free_port()),
        PoolSpec::new("ctl_reloaded", 2),
    ]);
    std::fs::write(&file, moved).expect("write config");
    let run = ctl(&server, &["reload"]).await;
    run.fails(1, "the reload left 1 pool(s) as they were: ctl_main: ");
    assert!(run.stdout.contains("ctl_main"), "{}", run.stdout);
    std::fs::write(&file, &grown).expect("write config");

    // pool delete: drained and gone; then the pool is not found (exit 4).
    let deleted = ctl(
        &server,
        &["pool", "delete", "ctl_new", "--force", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(deleted["pool"]["spec"]["name"], "ctl_new");
    assert_eq!(deleted["pool"]["state"], "POOL_STATE_CLOSED");
    let run = ctl(&server, &["pool", "delete", "ctl_reloaded"]).await;
    assert!(
        run.ok().starts_with("deleted ctl_reloaded: "),
        "{}",
        run.stdout
    );
    for args in [
        &["pool", "show", "ctl_new"][..],
        &["pool", "update", "ctl_new", "--max", "2"],
        &["pause", "ctl_new"],
        &["resume", "ctl_new"],
        &["reconnect", "ctl_new"],
        &["history", "ctl_new"],
        &["health", "ctl_new"],
        &["pool", "delete", "ctl_new"],
    ] {
        let run = ctl(&server, args).await;
        run.fails(4, "poolplane ctl: NotFound: ");
        assert!(run.stderr.contains("ctl_new"), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

/// Samples every 100 ms; alerts fire after 2 samples over 40% utilization.
const FAST_MONITORING: &str = "  monitoring:\n    collection_interval_ms: 100\n    retention_period_ms: 60000\n    enable_alerts: true\n    connection_utilization_threshold: 0.4\n    alert_fire_after_samples: 2\n    alert_resolve_after_samples: 2\n";

/// Opens a session on `pool`; returns its id and the stream of its answers
/// (the session holds its connection until both ends are dropped).
async fn open_session(
    server: &TestServer,
    pool: &str,
) -> (
    u64,
    mpsc::Sender<proto::SessionRequest>,
    tonic::Streaming<proto::SessionResponse>,
) {
    let (requests, queued) = mpsc::channel(4);
    requests
        .send(proto::SessionRequest {
            request: Some(Req::Open(proto::SessionOpen {
                pool: pool.into(),
                ..Default::default()
            })),
        })
        .await
        .expect("queue the open");
    let mut answers = server
        .query()
        .await
        .session(ReceiverStream::new(queued))
        .await
        .expect("session")
        .into_inner();
    match answers
        .message()
        .await
        .expect("opened")
        .and_then(|r| r.response)
    {
        Some(proto::session_response::Response::Opened(opened)) => {
            (opened.session_id, requests, answers)
        }
        other => panic!("the session did not open: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_shows_in_pools_sessions_alerts_and_history_until_killed() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("ctl_held", 2)],
        FAST_MONITORING,
    ))
    .await;
    let (id, _requests, mut answers) = open_session(&server, "ctl_held").await;
    let id_text = id.to_string();

    // pools: the session's connection is active.
    let pools = ctl(&server, &["pools", "-o", "json"]).await.json();
    let stats = &pool_named(&pools, "ctl_held")["statistics"];
    assert_eq!(stats["active"], 1, "{stats:#}");
    let run = ctl(&server, &["pools"]).await;
    let table = run.ok();
    let row = &rows(table, "ctl_held")[0];
    assert_eq!(cell(table, row, "ACTIVE"), "1", "{table}");
    assert_eq!(cell(table, row, "UTIL%"), "50.0", "{table}");

    // sessions: listed, in both outputs, with and without --pool.
    let sessions = ctl(&server, &["sessions", "-o", "json"]).await.json();
    let listed = &sessions["sessions"][0];
    assert_eq!(listed["session_id"], id, "{sessions:#}");
    assert_eq!(listed["pool"], "ctl_held");
    assert_eq!(listed["state"], "SESSION_STATE_IDLE");
    assert_eq!(listed["transaction"], "TRANSACTION_STATUS_IDLE");
    let run = ctl(&server, &["sessions", "--pool", "ctl_held"]).await;
    let table = run.ok();
    let row = &rows(table, &id_text)[0];
    assert_eq!(cell(table, row, "POOL"), "ctl_held", "{table}");
    assert_eq!(cell(table, row, "STATE"), "idle", "{table}");

    // alerts: the held connection is 50% of the pool, over the 40% threshold.
    let found = std::sync::atomic::AtomicU64::new(0);
    eventually(
        "the utilization alert fires",
        Duration::from_secs(10),
        || {
            let server = &server;
            let found = &found;
            async move {
                let alerts = server
                    .admin()
                    .await
                    .list_alerts(proto::ListAlertsRequest::default())
                    .await
                    .expect("list alerts")
                    .into_inner()
                    .alerts;
                match alerts.iter().find(|a| a.pool == "ctl_held") {
                    Some(alert) => {
                        found.store(alert.id, std::sync::atomic::Ordering::Relaxed);
                        true
                    }
                    None => false,
                }
            }
        },
    )
    .await;
    let alert_id = found.into_inner();
    let alert_text = alert_id.to_string();
    let alerts = ctl(&server, &["alerts", "-o", "json"]).await.json();
    let alert = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["id"] == alert_id)
        .unwrap_or_else(|| panic!("alert {alert_id} not listed: {alerts:#}"));
    assert_eq!(alert["rule"], "ALERT_RULE_HIGH_UTILIZATION");
    assert_eq!(alert["state"], "ALERT_STATE_FIRING");
    assert_eq!(alert["value"], 0.5);
    let run = ctl(
        &server,
        &["alerts", "--pool", "ctl_held", "--severity", "warning"],
    )
    .await;
    let table = run.ok();
    let row = &rows(table, &alert_text)[0];
    assert_eq!(cell(table, row, "RULE"), "high_utilization", "{table}");
    let acked = ctl(
        &server,
        &[
            "alerts",
            "ack",
            &alert_text,
            "--by",
            "ctl-test",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(acked["state"], "ALERT_STATE_ACKNOWLEDGED");
    assert_eq!(acked["acknowledged_by"], "ctl-test");
    let run = ctl(&server, &["alerts", "clear", &alert_text]).await;
    let table = run.ok();
    assert_eq!(
        cell(table, &rows(table, &alert_text)[0], "STATE"),
        "cleared",
        "{table}"
    );
    let active = ctl(&server, &["alerts", "-o", "json"]).await.json();
    assert!(
        !active["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["id"] == alert_id),
        "{active:#}"
    );
    let all = ctl(&server, &["alerts", "--all", "-o", "json"])
        .await
        .json();
    let ended = all["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["id"] == alert_id)
        .unwrap_or_else(|| panic!("alert {alert_id} not kept: {all:#}"));
    assert_eq!(ended["state"], "ALERT_STATE_CLEARED");
    assert!(ended["ended_at"].is_string());
    ctl(&server, &["alerts", "ack", "999999"])
        .await
        .fails(4, "poolplane ctl: NotFound: ");

    // history: samples of this pool, some with the session's connection.
    let history = ctl(
        &server,
        &["history", "ctl_held", "--since", "10m", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(history["collection_interval_ms"], 100);
    let samples = history["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{history:#}");
    assert!(samples
        .iter()
        .all(|s| s["pool"] == "ctl_held" && s["max"] == 2));
    assert!(samples.iter().any(|s| s["active"] == 1), "{history:#}");
    let run = ctl(&server, &["history", "ctl_held"]).await;
    assert!(run.ok().starts_with("TIME "), "{}", run.stdout);
    assert!(
        run.stdout
            .contains(" samples, one per 100 ms, kept 60000 ms\n"),
        "{}",
        run.stdout
    );
    ctl(&server, &["history", "ctl_held", "--since", "5 weeks"])
        .await
        .fails(2, "--since");

    // kill: the session ends (its client is told), and is gone.
    let run = ctl(&server, &["kill", &id_text]).await;
    assert_eq!(
        run.ok(),
        format!("killed session {id} (pool ctl_held, caller anonymous)\n")
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match answers.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the killed session ends");
    assert_eq!(ended, Some(tonic::Code::Aborted));
    let sessions = ctl(&server, &["sessions", "-o", "json"]).await.json();
    assert_eq!(sessions["sessions"], serde_json::json!([]));
    ctl(&server, &["kill", &id_text])
        .await
        .fails(4, "poolplane ctl: NotFound: ");
}

/// A running `poolplane ctl watch`, its stdout read line by line.
struct Watcher {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Watcher {
    fn start(server: &TestServer, args: &[&str]) -> Watcher {
        Watcher::at(&plain(server), args)
    }

    fn at(addr: &str, args: &[&str]) -> Watcher {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut child = command(addr, &all, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn poolplane ctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next line within 10 s.
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.lines.recv())
            .await
            .expect("a line within 10 s")
            .expect("watch still printing")
    }

    /// Lines until one contains `text`; that one.
    async fn until(&mut self, text: &str) -> String {
        loop {
            let line = self.line().await;
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Waits (bounded) for the process to exit; its code.
    async fn exit(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status.code();
                }
                if std::time::Instant::now() > deadline {
                    let _ = self.child.kill();
                    panic!("watch did not exit within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .expect("join")
    }

    fn interrupt(&self) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
            .expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_event_as_it_happens_and_ends_cleanly() {
    let mut server = TestServer::start(&config_yaml(&[PoolSpec::new("ctl_watch", 2)])).await;

    // Text: the snapshot first (so the stream is open), then live events.
    let mut watcher = Watcher::start(&server, &["--pool", "ctl_watch", "--snapshot"]);
    let snapshot = watcher.until("  snapshot  ").await;
    assert!(
        snapshot.contains("  -  ctl_watch  snapshot  "),
        "{snapshot}"
    );
    watcher.until("snapshot_end").await;
    ctl(&server, &["pause", "ctl_watch"]).await.ok();
    // (Health checks come between, as check_completed lines.)
    let updated = watcher.until("pool_updated").await;
    assert!(updated.contains("  ctl_watch  pool_updated"), "{updated}");
    assert!(!updated.contains('\x1b'), "colour into a pipe: {updated:?}");
    ctl(&server, &["resume", "ctl_watch"]).await.ok();
    watcher.until("pool_updated").await;
    // Ctrl-C ends it, exit 0.
    watcher.interrupt();
    assert_eq!(watcher.exit().await, Some(0));

    // JSON, one event per line, only the kinds asked for; the server
    // stopping ends it, exit 0.
    let mut watcher = Watcher::start(
        &server,
        &[
            "-o",
            "json",
            "--kinds",
            "pool-created,pool-removed",
            "--snapshot",
        ],
    );
    loop {
        let event: Value = serde_json::from_str(&watcher.line().await).expect("a JSON line");
        if event["kind"] == "EVENT_KIND_SNAPSHOT_END" {
            assert!(
                event["snapshot_end"]["sequence"].as_u64() > Some(0),
                "{event}"
            );
            break;
        }
    }
    ctl(&server, &["pause", "ctl_watch"]).await.ok();
    let port = crate::support::cluster().port.to_string();
    ctl(
        &server,
        &[
            "pool",
            "create",
            "ctl_watched",
            "--database",
            "postgres",
            "--port",
            &port,
        ],
    )
    .await
    .ok();
    let event: Value = serde_json::from_str(&watcher.line().await).expect("a JSON line");
    assert_eq!(
        event["kind"], "EVENT_KIND_POOL_CREATED",
        "the pause is filtered out: {event}"
    );
    assert_eq!(event["pool"], "ctl_watched");
    assert!(event["sequence"].as_u64() > Some(0));
    assert!(
        event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );
    server.begin_stop();
    assert_eq!(watcher.exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_tls_and_unreachable_servers_have_their_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, other_ca) = (ca("listener CA"), ca("another CA"));
    let (cert, key, _) = leaf(&server_ca, "server", &["localhost", "127.0.0.1"]);
    let admin = "ctl-admin-token-0123456789";
    let viewer = "ctl-viewer-token-0123456789";
    let hash = |token: &str| -> String {
        poolplane::auth::hash(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut section = tls_section(
        &write(dir.path(), "server.crt", &cert),
        &write(dir.path(), "server.key", &key),
        None,
    );
    section.push_str(&format!(
        "    auth:\n      tokens:\n        - name: ops\n          token_sha256: \"{}\"\n          role: admin\n        - name: dashboards\n          token_sha256: \"{}\"\n          role: viewer\n",
        hash(admin),
        hash(viewer)
    ));
    let server =
        TestServer::start(&config_yaml_with(&[PoolSpec::new("ctl_auth", 2)], &section)).await;
    let addr = format!("https://localhost:{}", server.addr.port());
    let ca_file = write(dir.path(), "ca.crt", &server_ca.pem);
    let tls = ["--ca-file", ca_file.as_str()];
    let with = |args: &[&'static str]| -> Vec<String> {
        tls.iter().chain(args).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let addr = addr.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ctl_env(&addr, &args, &env).await
        }
    };

    // No token, a wrong one: 5.
    run(with(&["pools"]), vec![])
        .await
        .fails(5, "poolplane ctl: Unauthenticated: ");
    run(
        with(&["pools"]),
        vec![("POOLPLANE_TOKEN", "not-the-token-at-all".into())],
    )
    .await
    .fails(5, "poolplane ctl: Unauthenticated: ");
    // The admin's, from POOLPLANE_TOKEN, a file, or the variable named.
    let answer = run(
        with(&["pools", "-o", "json"]),
        vec![("POOLPLANE_TOKEN", admin.into())],
    )
    .await;
    assert_eq!(
        pool_named(&answer.json(), "ctl_auth")["spec"]["max_connections"],
        2
    );
    let token_file = write(dir.path(), "token", &format!("{admin}\n"));
    let mut args = with(&["pool", "show", "ctl_auth"]);
    args.extend(["--token-file".to_string(), token_file.clone()]);
    let answer = run(args, vec![]).await;
    assert!(answer.ok().starts_with("pool "), "{}", answer.stdout);
    let answer = run(
        with(&["health", "--probe"]),
        vec![("POOLPLANE_TOKEN_FILE", token_file.clone())],
    )
    .await;
    assert_eq!(rows(answer.ok(), "ctl_auth").len(), 1, "{}", answer.stdout);
    let mut args = with(&["sessions", "--token-env", "CTL_TEST_TOKEN"]);
    args.push("-o".into());
    args.push("json".into());
    let answer = run(args, vec![("CTL_TEST_TOKEN", admin.into())]).await;
    assert_eq!(answer.json()["sessions"], serde_json::json!([]));
    assert!(!format!("{}{}", answer.stdout, answer.stderr).contains(admin));
    // A viewer reads, but may not pause: 5 too.
    let answer = run(with(&["pools"]), vec![("POOLPLANE_TOKEN", viewer.into())]).await;
    answer.ok();
    let refused = run(
        with(&["pause", "ctl_auth"]),
        vec![("POOLPLANE_TOKEN", viewer.into())],
    )
    .await;
    refused.fails(5, "poolplane ctl: PermissionDenied: ");
    assert!(!refused.stderr.contains(viewer));
    // A token variable that is not set, a token file that is not there: 2.
    run(with(&["pools", "--token-env", "CTL_TEST_UNSET"]), vec![])
        .await
        .fails(2, "`CTL_TEST_UNSET` is not set");
    run(
        with(&["pools", "--token-file", "/nonexistent/ctl-token"]),
        vec![],
    )
    .await
    .fails(2, "--token-file /nonexistent/ctl-token");

    // A CA that did not sign the server's certificate: no connection, 3.
    let other = write(dir.path(), "other.crt", &other_ca.pem);
    run(
        vec!["--ca-file".into(), other, "pools".into()],
        vec![("POOLPLANE_TOKEN", admin.into())],
    )
    .await
    .fails(
        3,
        "poolplane ctl: cannot reach poolplane at https://localhost:",
    );
    // https without a CA, TLS files without https: usage, 2.
    run(vec!["pools".into()], vec![])
        .await
        .fails(2, "--ca-file");
    ctl_env(
        &format!("http://{}", server.addr),
        &["--ca-file", &ca_file, "pools"],
        &[],
    )
    .await
    .fails(2, "https://");
    // Nothing listening: 3.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    ctl_env(&nowhere, &["pools"], &[]).await.fails(
        3,
        "poolplane ctl: cannot reach poolplane at http://127.0.0.1:",
    );
    // clap's usage errors: 2.
    ctl_env(&nowhere, &["pool", "show"], &[])
        .await
        .fails(2, "<NAME>");
    ctl_env(&nowhere, &["pools", "-o", "yaml"], &[])
        .await
        .fails(2, "yaml");
}

/// A server that accepts connections and never answers (hung, stopped, a
/// black hole) is given up by keepalive pings: exit 3, for a call and for
/// a watch, never a hang. A server killed while a watch runs: 3 as well. A
/// pool filter that names no pool: 4, not an empty list. (Found by a red
/// team: watch hung forever on such a server; a killed server gave 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_killed_servers_exit_3_and_a_misspelt_pool_4() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = format!("http://{}", silent.local_addr().expect("addr"));
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let silent_tls = silent_addr.replace("http://", "https://");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write(dir.path(), "ca.crt", &ca("a CA").pem);
    let ((call, watch), (timed, handshake)) = tokio::time::timeout(
        Duration::from_secs(45),
        futures::future::join(
            futures::future::join(
                ctl_env(&silent_addr, &["pools"], &[]),
                ctl_env(&silent_addr, &["watch"], &[]),
            ),
            futures::future::join(
                ctl_env(&silent_addr, &["--timeout", "1s", "pools"], &[]),
                ctl_env(&silent_tls, &["--ca-file", ca_file.as_str(), "pools"], &[]),
            ),
        ),
    )
    .await
    .expect("a silent server hung poolplane ctl");
    call.fails(3, "poolplane ctl: lost the connection to poolplane: ");
    watch.fails(3, "keep-alive timed out");
    timed.fails(3, "no answer within --timeout");
    handshake.fails(3, "no answer within 5 s (TCP, TLS and HTTP/2 set-up)");
    accepting.abort();

    let served =
        crate::support::ServedBinary::start(&config_yaml(&[PoolSpec::new("ctl_killed", 1)]), &[])
            .await;
    ctl_env(&served.grpc, &["alerts", "--pool", "ctl_no_such_pool"], &[])
        .await
        .fails(4, "NotFound: ");
    let listed = ctl_env(&served.grpc, &["alerts", "--pool", "ctl_killed"], &[]).await;
    listed.ok();
    let mut watcher = Watcher::at(&served.grpc, &["--snapshot"]);
    watcher.until("snapshot_end").await;
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(served.pid()).expect("pid")).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL");
    assert_eq!(watcher.exit().await, Some(3), "a lost server is exit 3");
}

#[tokio::test]
async fn completions_cover_ctl_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = tokio::task::spawn_blocking(move || {
            Command::new(BIN).args(["completions", shell]).output()
        })
        .await
        .expect("join")
        .expect("run poolplane completions");
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        for word in ["ctl", "pools", "watch", "token-file"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
}
