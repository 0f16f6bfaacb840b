//! `poolplane quickstart`: a working poolplane on a fresh machine in one
//! command. It starts a throwaway PostgreSQL cluster (`cluster.rs`),
//! creates a demo database with a small table and two least-privilege
//! roles, serves poolplane with a pool for each role, prints commands that
//! work as printed, and when `shutdown` completes stops everything and
//! removes the cluster.
//!
//! Like the rest of the library it reads no environment and installs no
//! signal handler: `main.rs` passes `PATH`, the executable's path and the
//! Ctrl-C future.

mod cluster;

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use cluster::INSTALL_HINT;
use cluster::{find_binaries, random_secret, Cluster};

/// What `poolplane quickstart` was asked for.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// PostgreSQL's server binaries (`--pg-bin`); searched for when `None`.
    pub pg_bin: Option<PathBuf>,
    /// The caller's `PATH`, searched after the distributions' directories.
    pub search_path: Option<OsString>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Where the cluster's directory goes (the system's temp directory).
    pub temp_dir: PathBuf,
    /// This program, for the `poolplane ctl` command printed.
    pub executable: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    #[error("PostgreSQL's server binaries not found ({0}): {INSTALL_HINT}")]
    NoPostgres(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up the demo database: {0}")]
    Demo(String),
    #[error("the generated configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source} (pass --grpc-listen / --http-listen 127.0.0.1:0 for any free port)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(String),
}

impl QuickstartError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> QuickstartError {
        QuickstartError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The demo database and its two roles.
const DATABASE: &str = "demo";
const APP_ROLE: &str = "demo_app";
const READER_ROLE: &str = "demo_readonly";

/// Runs the quickstart until `shutdown` completes; what to do next goes to
/// `out`. Everything it started is stopped and removed before it returns,
/// whether it succeeded or not.
pub async fn run(
    options: QuickstartOptions,
    shutdown: impl Future<Output = ()>,
    out: &mut (impl Write + Send),
) -> Result<(), QuickstartError> {
    let bin = find_binaries(options.pg_bin.as_deref(), options.search_path.as_deref())?;
    let temp_dir = options.temp_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(bin, &temp_dir))
        .await
        .map_err(|err| QuickstartError::Postgres(format!("starting the cluster: {err}")))??;
    let served = serve_on(&cluster, &options, shutdown, out).await;
    let dir = cluster.dir.clone();
    let stopped = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .map_err(|err| QuickstartError::Postgres(format!("stopping the cluster: {err}")))?;
    served?;
    stopped?;
    let _ = writeln!(
        out,
        "poolplane quickstart: stopped; PostgreSQL stopped and {} removed",
        dir.display()
    );
    Ok(())
}

async fn serve_on(
    cluster: &Cluster,
    options: &QuickstartOptions,
    shutdown: impl Future<Output = ()>,
    out: &mut (impl Write + Send),
) -> Result<(), QuickstartError> {
    let passwords = Passwords {
        app: random_secret()?,
        reader: random_secret()?,
    };
    create_demo(cluster, &passwords).await?;
    let grpc = bind(options.grpc_listen).await?;
    let http = bind(options.http_listen).await?;
    let grpc_addr = local_addr(&grpc, options.grpc_listen)?;
    let http_addr = local_addr(&http, options.http_listen)?;
    let config_path = write_config(cluster, &passwords, grpc_addr, http_addr)?;
    let config = crate::config::Config::load(&config_path)
        .map_err(|errors| QuickstartError::Config(errors.to_string()))?;
    let app = crate::App::start(&config);
    app.set_config_file(config_path);
    let next_steps = NextSteps {
        cluster,
        grpc: grpc_addr,
        http: http_addr,
        executable: &options.executable,
    };
    // A reader that went away (a closed pipe) does not stop the server.
    let _ = write!(out, "{next_steps}");
    let _ = out.flush();
    crate::serve(app, crate::Listeners { grpc, http }, shutdown)
        .await
        .map_err(|err| QuickstartError::Serve(format!("{err:#}")))
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, QuickstartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| QuickstartError::Bind { addr, source })
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    asked: SocketAddr,
) -> Result<SocketAddr, QuickstartError> {
    listener
        .local_addr()
        .map_err(|source| QuickstartError::Bind {
            addr: asked,
            source,
        })
}

struct Passwords {
    app: String,
    reader: String,
}

/// The demo database: a table of a few rows, a role that may read and
/// write it and one that may only read it; neither may do anything else.
async fn create_demo(cluster: &Cluster, passwords: &Passwords) -> Result<(), QuickstartError> {
    let admin = connect(cluster, "postgres").await?;
    let setup = format!(
        "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{app}' NOSUPERUSER NOCREATEDB NOCREATEROLE;
         CREATE ROLE {READER_ROLE} LOGIN PASSWORD '{reader}' NOSUPERUSER NOCREATEDB NOCREATEROLE;
         CREATE DATABASE {DATABASE};
         REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;
         GRANT CONNECT ON DATABASE {DATABASE} TO {APP_ROLE}, {READER_ROLE};",
        app = passwords.app,
        reader = passwords.reader,
    );
    // One at a time: CREATE DATABASE refuses to share a query string.
    for statement in setup.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        admin
            .batch_execute(statement)
            .await
            .map_err(|err| QuickstartError::Demo(crate::postgres::error_chain(&err)))?;
    }
    let demo = connect(cluster, DATABASE).await?;
    let tables = format!(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         CREATE TABLE items (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             name text NOT NULL,
             price numeric(10,2) NOT NULL,
             added timestamptz NOT NULL DEFAULT now()
         );
         INSERT INTO items (name, price) VALUES
             ('teapot', 24.50), ('kettle', 39.00), ('mug', 7.25);
         GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {READER_ROLE};
         GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {APP_ROLE};
         GRANT SELECT ON items TO {READER_ROLE};"
    );
    demo.batch_execute(&tables)
        .await
        .map_err(|err| QuickstartError::Demo(crate::postgres::error_chain(&err)))
}

async fn connect(
    cluster: &Cluster,
    database: &str,
) -> Result<tokio_postgres::Client, QuickstartError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user("postgres")
        .password(cluster.superuser_password.as_str())
        .dbname(database);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|err| QuickstartError::Demo(crate::postgres::error_chain(&err)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Writes the configuration (and the roles' password files, readable by
/// this user only) into the cluster's directory; returns its path.
fn write_config(
    cluster: &Cluster,
    passwords: &Passwords,
    grpc: SocketAddr,
    http: SocketAddr,
) -> Result<PathBuf, QuickstartError> {
    let dir = cluster.dir.join("poolplane");
    std::fs::create_dir(&dir).map_err(|err| QuickstartError::io("creating", &dir, err))?;
    let app_password = dir.join("demo_app.password");
    let reader_password = dir.join("demo_readonly.password");
    write_private(&app_password, &passwords.app)?;
    write_private(&reader_password, &passwords.reader)?;
    let yaml = format!(
        "# Written by `poolplane quickstart`; removed with its cluster.
connection_pool:
  default_pool:
    host: 127.0.0.1
    port: {port}
    max_connections: 5
    min_connections: 1
  credentials:
    - name: {APP_ROLE}
      user: {APP_ROLE}
      password_file: {app}
    - name: {READER_ROLE}
      user: {READER_ROLE}
      password_file: {reader}
  pools:
    - name: demo
      database: {DATABASE}
      credential: {APP_ROLE}
    - name: demo_readonly
      database: {DATABASE}
      credential: {READER_ROLE}
      max_connections: 3
  monitoring:
    collection_interval_ms: 2000
  server:
    grpc_listen: \"{grpc}\"
    http_listen: \"{http}\"
",
        port = cluster.port,
        app = app_password.display(),
        reader = reader_password.display(),
    );
    let path = dir.join("poolplane.yaml");
    std::fs::write(&path, yaml).map_err(|err| QuickstartError::io("writing", &path, err))?;
    Ok(path)
}

fn write_private(path: &Path, text: &str) -> Result<(), QuickstartError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|err| QuickstartError::io("writing", path, err))
}

/// What to try next, printed once everything is up.
struct NextSteps<'a> {
    cluster: &'a Cluster,
    grpc: SocketAddr,
    http: SocketAddr,
    executable: &'a Path,
}

impl std::fmt::Display for NextSteps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let NextSteps {
            cluster,
            grpc,
            http,
            executable,
        } = self;
        let ctl = shell_word(&executable.display().to_string());
        writeln!(f, "poolplane quickstart: ready")?;
        writeln!(
            f,
            "  PostgreSQL {} on 127.0.0.1:{} (throwaway, in {})",
            cluster.version(),
            cluster.port,
            cluster.dir.display()
        )?;
        writeln!(
            f,
            "  database `{DATABASE}`: table `items`; roles `{APP_ROLE}` (read-write) and `{READER_ROLE}` (read-only)"
        )?;
        writeln!(f, "  gRPC:    {grpc}   (pools `demo` and `demo_readonly`)")?;
        writeln!(f, "  metrics: http://{http}/metrics")?;
        writeln!(f, "  status:  http://{http}/")?;
        writeln!(f)?;
        writeln!(f, "Try:")?;
        writeln!(
            f,
            "  grpcurl -plaintext -d '{{\"pool\":\"demo\",\"sql\":\"SELECT id, name, price FROM items ORDER BY id\"}}' {grpc} poolplane.v1.Query/Execute"
        )?;
        writeln!(
            f,
            "  grpcurl -plaintext -d '{{\"pool\":\"demo\",\"sql\":\"INSERT INTO items (name, price) VALUES ($1, $2)\",\"params\":[{{\"textValue\":\"spoon\"}},{{\"numericValue\":\"2.10\"}}]}}' {grpc} poolplane.v1.Query/Execute"
        )?;
        writeln!(f, "  {ctl} ctl --addr http://{grpc} pools")?;
        writeln!(f, "  {ctl} ctl --addr http://{grpc} watch")?;
        writeln!(f)?;
        writeln!(
            f,
            "Ctrl-C stops poolplane and PostgreSQL and removes {}.",
            cluster.dir.display()
        )
    }
}

/// `text` quoted for a POSIX shell when it needs to be.
fn shell_word(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_quoted_only_when_a_shell_needs_it() {
        assert_eq!(shell_word("/usr/bin/poolplane"), "/usr/bin/poolplane");
        assert_eq!(shell_word("/my dir/it's"), r"'/my dir/it'\''s'");
    }
}
