//! Test support: throwaway PostgreSQL clusters and an in-process poolplane
//! server on port 0, with real gRPC clients. The one place tests get these.
//!
//! A cluster is started once per test binary (`cluster()`) and removed when
//! the binary exits: a watchdog shell holds the read end of a pipe whose
//! write end only this process has, so however the process ends the pipe
//! closes, the watchdog stops PostgreSQL and deletes the directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use poolplane::proto::pool_admin_client::PoolAdminClient;
use poolplane::proto::query_client::QueryClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The superuser password of every test cluster.
pub const SUPERUSER_PASSWORD: &str = "pp-test-secret";

pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    _watchdog: Child,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The binary's shared cluster, started on first use. Tests must not stop
/// it: a test that breaks its server uses [`PgCluster::private`].
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(PgCluster::start)
}

fn find_bin_dir() -> PathBuf {
    let candidates = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            let mut found: Vec<PathBuf> = dirs
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| bin.join("pg_ctl").exists())
                .collect();
            found.sort();
            found
        })
        .unwrap_or_default();
    candidates.last().cloned().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             install them (Debian: apt-get install postgresql-15) to run these tests"
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("`id postgres` runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists (installed with the server package)")
    };
    (id("-u"), id("-g"))
}

/// A command run as the cluster's owner: `postgres` when we are root
/// (initdb refuses root), ourselves otherwise.
fn as_owner(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

impl PgCluster {
    /// A cluster of the caller's own, to stop and start at will; removed
    /// when dropped (its watchdog's pipe closes).
    pub fn private() -> PgCluster {
        PgCluster::start()
    }

    fn start() -> PgCluster {
        let bin = find_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "poolplane-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        let pwfile = dir.join("superuser-password");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        if running_as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown cluster dir");
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        }
        write_certificates(&dir);
        let data = dir.join("data");
        let status = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let cluster = PgCluster {
            port: free_port(),
            _watchdog: spawn_watchdog(&bin, &dir),
            dir,
            bin,
        };
        cluster.pg_start();
        cluster
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn pg_start(&self) {
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            port = self.port,
            dir = self.dir.display()
        );
        let status = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(
            status.success(),
            "pg_ctl start failed; see {}/server.log",
            self.dir.display()
        );
    }

    /// Stops the server the hard way, as a crash would.
    pub fn pg_stop_immediate(&self) {
        let status = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl stop");
        assert!(status.success(), "pg_ctl stop failed");
    }

    /// The CA that signed the cluster's server certificate (for 127.0.0.1 and localhost).
    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA that signed nothing the cluster uses.
    pub fn unrelated_ca_certificate(&self) -> PathBuf {
        self.dir.join("unrelated-ca.crt")
    }

    /// A password file for pool configs (the superuser's password).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("superuser-password")
    }

    /// A superuser connection for checks the test makes behind poolplane's back.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres")
            .application_name("poolplane-test-admin")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("admin connection to the test cluster");
        tokio::spawn(connection);
        client
    }

    /// Creates a database if it does not exist yet.
    pub async fn ensure_database(&self, name: &str) {
        let admin = self.admin().await;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists {
            // Parallel tests may race to create it; losing the race is fine.
            let _ = admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await;
        }
    }
}

/// A test CA, a server certificate it signs for 127.0.0.1 and localhost,
/// and an unrelated CA, written where the cluster (run as postgres) reads them.
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = ca("poolplane test CA");
    let (unrelated_cert, _) = ca("unrelated CA");
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("sign server cert");
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("unrelated-ca.crt", unrelated_cert.pem()),
        ("server.crt", server_cert.pem()),
        ("server.key", server_key.serialize_pem()),
    ];
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write certificate");
        if running_as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown certificate");
        }
    }
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}

fn spawn_watchdog(bin: &Path, dir: &Path) -> Child {
    let pg_ctl = bin.join("pg_ctl");
    let runner = if running_as_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "read _; {runner}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pg_ctl = pg_ctl.display(),
        data = dir.join("data").display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cluster watchdog")
}

/// Held for the whole of a test that loads both cores hard (storms of
/// connections) or asserts timing bounds (fault detection, deadlines): such
/// tests take turns, so a storm never stretches another test's clock. Other
/// tests still run beside them.
pub async fn machine_to_myself() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    TURN.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// A pool's statistics as GetPool reports them.
pub async fn pool_statistics(server: &TestServer, pool: &str) -> poolplane::proto::PoolStatistics {
    server
        .admin()
        .await
        .get_pool(poolplane::proto::GetPoolRequest { name: pool.into() })
        .await
        .expect("get pool")
        .into_inner()
        .statistics
        .expect("statistics")
}

/// Backends of the cluster whose application_name is `app_name`.
pub async fn backends(admin: &tokio_postgres::Client, app_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app_name],
        )
        .await
        .expect("count backends")
        .get(0)
}

/// The backend pids of the cluster whose application_name is `app_name`.
pub async fn backend_pids(
    admin: &tokio_postgres::Client,
    app_name: &str,
) -> std::collections::HashSet<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app_name],
        )
        .await
        .expect("backend pids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Backends of `app_name` inside `pg_sleep`: statements really running
/// (a backend exists before its lease, and a statement being parsed shows
/// as active too).
pub async fn sleeping(admin: &tokio_postgres::Client, app_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event = 'PgSleep'",
            &[&app_name],
        )
        .await
        .expect("count sleeping statements")
        .get(0)
}

/// Backends of `app_name` doing anything but waiting idle (running,
/// idle in a transaction, starting).
pub async fn busy_backends(admin: &tokio_postgres::Client, app_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state IS DISTINCT FROM 'idle'",
            &[&app_name],
        )
        .await
        .expect("count busy backends")
        .get(0)
}

/// Waits until no backend of `pool` is busy, within the 1 s the cancel of
/// an abandoned result is promised to take.
pub async fn nothing_left_running(pool: &str) {
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    eventually(
        "no backend of the pool is busy",
        Duration::from_secs(1),
        || {
            let (admin, app) = (&admin, &app);
            async move { busy_backends(admin, app).await == 0 }
        },
    )
    .await;
}

/// Waits (bounded) until `check` is true, polling every 20 ms.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool entry for a test config.
pub struct PoolSpec<'a> {
    pub name: &'a str,
    pub database: &'a str,
    pub max: u32,
    pub min: u32,
    pub connection_timeout_ms: u64,
    /// Where the pool connects (the shared cluster by default; a proxy's or
    /// a private cluster's port in fault tests).
    pub port: Option<u16>,
    /// More `key: value` lines for this pool.
    pub extra: Vec<String>,
}

impl<'a> PoolSpec<'a> {
    pub fn new(name: &'a str, max: u32) -> PoolSpec<'a> {
        PoolSpec {
            name,
            database: "postgres",
            max,
            min: 0,
            connection_timeout_ms: 5000,
            port: None,
            extra: Vec::new(),
        }
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn with(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }
}

/// A configuration for the shared cluster with the given pools.
pub fn config_yaml(pools: &[PoolSpec<'_>]) -> String {
    config_yaml_with(pools, "")
}

/// As [`config_yaml`], with more sections (indented under `connection_pool`).
pub fn config_yaml_with(pools: &[PoolSpec<'_>], sections: &str) -> String {
    let cluster = cluster();
    let mut yaml = format!(
        "connection_pool:\n  default_pool:\n    host: 127.0.0.1\n    port: {port}\n    user: postgres\n    password_file: {pw}\n  pools:\n",
        port = cluster.port,
        pw = cluster.password_file().display()
    );
    for pool in pools {
        yaml.push_str(&format!(
            "    - name: {}\n      database: {}\n      max_connections: {}\n      min_connections: {}\n      connection_timeout_ms: {}\n",
            pool.name, pool.database, pool.max, pool.min, pool.connection_timeout_ms
        ));
        if let Some(port) = pool.port {
            yaml.push_str(&format!("      port: {port}\n"));
        }
        for line in &pool.extra {
            yaml.push_str(&format!("      {line}\n"));
        }
    }
    if !sections.contains("  server:") {
        yaml.push_str("  server:\n    grpc_listen: 127.0.0.1:0\n    max_result_rows: 1000\n    shutdown_timeout_ms: 5000\n    drain_timeout_ms: 5000\n");
    }
    yaml.push_str(sections);
    yaml
}

/// A poolplane server running in this process on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP listener (`/metrics`).
    pub http_addr: SocketAddr,
    /// The server's core, for what a test cannot do over gRPC (publishing
    /// many events quickly).
    pub app: std::sync::Arc<poolplane::App>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(yaml: &str) -> TestServer {
        let config = poolplane::config::Config::parse(yaml, "test config")
            .unwrap_or_else(|errors| panic!("test config invalid: {errors}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let http_addr = http.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let app = poolplane::App::start(&config);
        let listeners = poolplane::Listeners {
            grpc: listener,
            http,
        };
        let handle = tokio::spawn(poolplane::serve(
            std::sync::Arc::clone(&app),
            listeners,
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            http_addr,
            app,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to poolplane")
    }

    pub async fn admin(&self) -> PoolAdminClient<Channel> {
        PoolAdminClient::new(self.channel().await)
    }

    pub async fn query(&self) -> QueryClient<Channel> {
        QueryClient::new(self.channel().await)
    }

    pub async fn events(&self) -> poolplane::proto::pool_events_client::PoolEventsClient<Channel> {
        poolplane::proto::pool_events_client::PoolEventsClient::new(self.channel().await)
    }

    /// Signals shutdown without waiting for it (see [`TestServer::stop`]).
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and asserts it shut down cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("server stops within 20 s")
                .expect("server task did not panic");
            assert!(result.is_ok(), "server returned an error: {result:?}");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A process's resident memory, from /proc; `None` if it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The real `poolplane serve` binary in a process of its own (so its
/// memory can be measured apart from the test's), optionally under a
/// wrapper command such as `prlimit`.
pub struct ServedBinary {
    child: Child,
    pub grpc: String,
    /// Its HTTP listener (`/metrics`, the status page).
    pub http: SocketAddr,
    /// Its configuration file (rewrite it, then [`ServedBinary::hangup`]).
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ServedBinary {
    /// Starts it on `yaml` (its `grpc_listen` is replaced by a free port)
    /// and waits until it answers gRPC.
    pub async fn start(yaml: &str, wrapper: &[&str]) -> ServedBinary {
        ServedBinary::start_with(yaml, wrapper, &[], &[]).await
    }

    /// [`ServedBinary::start`] with environment variables and more `serve`
    /// flags.
    pub async fn start_with(
        yaml: &str,
        wrapper: &[&str],
        environment: &[(&str, &str)],
        flags: &[&str],
    ) -> ServedBinary {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("poolplane.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let port = free_port();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("loopback address");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_poolplane"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_poolplane")),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &http.to_string()])
            .args(flags)
            .envs(environment.iter().copied())
            .stdout(std::fs::File::create(dir.path().join("poolplane.log")).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn poolplane serve");
        let served = ServedBinary {
            child,
            grpc: format!("http://127.0.0.1:{port}"),
            http,
            config: path,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while Channel::from_shared(served.grpc.clone())
            .expect("valid uri")
            .connect()
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the binary never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    pub async fn query(&self) -> QueryClient<Channel> {
        QueryClient::connect(self.grpc.clone())
            .await
            .expect("connect to the binary")
    }

    pub async fn admin(&self) -> PoolAdminClient<Channel> {
        PoolAdminClient::new(self.channel().await)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to the binary")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("poolplane.log")).unwrap_or_default()
    }

    /// Sends SIGHUP (reload the configuration).
    pub fn hangup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Resident memory now; `None` once the process is gone.
    pub fn resident_bytes(&self) -> Option<u64> {
        resident_bytes(self.pid())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.send_terminate();
        self.exit().await
    }

    /// Sends SIGTERM (the shutdown begins).
    pub fn send_terminate(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
    }

    /// Waits for the process to exit.
    pub async fn exit(mut self) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shorthands for protobuf values.
pub mod v {
    use poolplane::proto::{value::Kind, Array, Interval, NullValue, Value};

    fn of(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }
    pub fn null() -> Value {
        of(Kind::Null(NullValue::NullValue as i32))
    }
    pub fn boolean(b: bool) -> Value {
        of(Kind::BoolValue(b))
    }
    pub fn int(i: i64) -> Value {
        of(Kind::IntValue(i))
    }
    pub fn float(f: f64) -> Value {
        of(Kind::FloatValue(f))
    }
    pub fn numeric(s: &str) -> Value {
        of(Kind::NumericValue(s.into()))
    }
    pub fn text(s: &str) -> Value {
        of(Kind::TextValue(s.into()))
    }
    pub fn bytes(b: &[u8]) -> Value {
        of(Kind::BytesValue(b.to_vec()))
    }
    pub fn uuid(s: &str) -> Value {
        of(Kind::UuidValue(s.into()))
    }
    pub fn date(s: &str) -> Value {
        of(Kind::DateValue(s.into()))
    }
    pub fn time(s: &str) -> Value {
        of(Kind::TimeValue(s.into()))
    }
    pub fn timestamp(s: &str) -> Value {
        of(Kind::TimestampValue(s.into()))
    }
    pub fn timestamptz(seconds: i64, nanos: i32) -> Value {
        of(Kind::TimestamptzValue(prost_types::Timestamp {
            seconds,
            nanos,
        }))
    }
    pub fn interval(months: i32, days: i32, microseconds: i64) -> Value {
        of(Kind::IntervalValue(Interval {
            months,
            days,
            microseconds,
        }))
    }
    pub fn json(s: &str) -> Value {
        of(Kind::JsonValue(s.into()))
    }
    pub fn array(elements: Vec<Value>) -> Value {
        of(Kind::ArrayValue(Array { elements }))
    }
}

/// An Execute request with defaults for the rest.
pub fn exec(
    pool: &str,
    sql: &str,
    params: Vec<poolplane::proto::Value>,
) -> poolplane::proto::ExecuteRequest {
    poolplane::proto::ExecuteRequest {
        pool: pool.into(),
        sql: sql.into(),
        params,
        max_rows: 0,
        allow_truncation: false,
    }
}

/// `request` with `token` as its bearer credentials.
pub fn bearer<T>(token: &str, request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// A metadata value of a status, as text.
pub fn meta(status: &tonic::Status, key: &str) -> Option<String> {
    if key.ends_with("-bin") {
        status
            .metadata()
            .get_bin(key)
            .and_then(|v| v.to_bytes().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A pool's health state as GetPool reports it.
pub async fn health_state(server: &TestServer, pool: &str) -> poolplane::proto::HealthState {
    let pool = server
        .admin()
        .await
        .get_pool(poolplane::proto::GetPoolRequest { name: pool.into() })
        .await
        .expect("get pool")
        .into_inner();
    pool.health
        .and_then(|h| poolplane::proto::HealthState::try_from(h.state).ok())
        .unwrap_or(poolplane::proto::HealthState::Unspecified)
}

/// Waits (bounded) until the pool reaches `state`; returns how long it took.
pub async fn wait_for_health(
    server: &TestServer,
    pool: &str,
    state: poolplane::proto::HealthState,
    timeout: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    eventually(&format!("{pool} becomes {state:?}"), timeout, || async {
        health_state(server, pool).await == state
    })
    .await;
    started.elapsed()
}

/// Collects a Watch stream's events in the background.
pub struct EventLog {
    events: std::sync::Arc<std::sync::Mutex<Vec<poolplane::proto::Event>>>,
    task: JoinHandle<()>,
}

/// Opens a Watch stream on the server.
pub async fn watch(
    server: &TestServer,
    request: poolplane::proto::WatchRequest,
) -> Result<tonic::Streaming<poolplane::proto::Event>, tonic::Status> {
    server
        .events()
        .await
        .watch(request)
        .await
        .map(tonic::Response::into_inner)
}

impl EventLog {
    pub async fn start(server: &TestServer, request: poolplane::proto::WatchRequest) -> EventLog {
        let mut stream = watch(server, request).await.expect("watch");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&events);
        let task = tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                sink.lock().expect("event log").push(event);
            }
        });
        EventLog { events, task }
    }

    pub fn events(&self) -> Vec<poolplane::proto::Event> {
        self.events.lock().expect("event log").clone()
    }

    pub fn has(
        &self,
        kind: poolplane::proto::EventKind,
        matches: impl Fn(&poolplane::proto::Event) -> bool,
    ) -> bool {
        self.events()
            .iter()
            .any(|e| e.kind == kind as i32 && matches(e))
    }

    /// Waits (bounded) until an event of `kind` satisfying `matches` arrived.
    pub async fn wait_for(
        &self,
        kind: poolplane::proto::EventKind,
        timeout: Duration,
        matches: impl Fn(&poolplane::proto::Event) -> bool,
    ) {
        eventually(&format!("a {kind:?} event"), timeout, || {
            let found = self.has(kind, &matches);
            async move { found }
        })
        .await;
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    http_get_with(addr, path_and_query, &[]).await
}

/// As [`http_get`], with more request headers.
pub async fn http_get_with(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Scrapes the test server's `/metrics`.
pub async fn scrape(server: &TestServer) -> String {
    let (status, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200, "scrape failed: {body}");
    body
}

/// The value of the series `name` whose labels include `labels`, from a
/// text exposition; `None` if no such series.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (series_name == name).then_some((series_labels, value))
        })
        .find(|(series_labels, _)| {
            labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            })
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// A login role of the shared cluster (made afresh) and a file holding its
/// password, for a pool that logs in as someone other than the superuser.
pub struct LoginRole {
    pub name: &'static str,
    password_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoginRole {
    /// `CREATE ROLE name LOGIN PASSWORD ... <attributes>`.
    pub async fn create(name: &'static str, attributes: &str) -> LoginRole {
        let password = LoginRole::password_of(name);
        cluster()
            .admin()
            .await
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN PASSWORD '{password}' {attributes}"
            ))
            .await
            .expect("create role");
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{password}\n")).expect("password file");
        LoginRole {
            name,
            password_file,
            _dir: dir,
        }
    }

    /// The password the role was made with (and a test may set it back to).
    pub fn password(&self) -> String {
        LoginRole::password_of(self.name)
    }

    fn password_of(name: &str) -> String {
        format!("{name}-password-0123456789")
    }

    /// `spec`, logging in as this role.
    pub fn pool<'a>(&self, spec: PoolSpec<'a>) -> PoolSpec<'a> {
        spec.with(&format!("user: {}", self.name))
            .with(&format!("password_file: {}", self.password_file.display()))
    }

    pub async fn drop_role(self) {
        cluster()
            .admin()
            .await
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name))
            .await
            .expect("drop role");
    }
}
