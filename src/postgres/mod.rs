//! Opening PostgreSQL connections: the driver configuration of a pool
//! (timeouts, keepalives, application_name, statement_timeout), TLS, and
//! the driver task of each connection, which reports how it ended.
//!
//! Used by the pool's mobc manager and by the health probe; knows nothing
//! about pooling.

mod tls;

use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_postgres::{Client, NoTls};

use crate::config::PoolConfig;
use tls::Tls;

/// Opens connections for one pool.
pub(crate) struct Connector {
    pg: tokio_postgres::Config,
    /// `Err` holds why TLS could not be set up; every open reports it.
    tls: Result<Tls, String>,
}

/// How a connection's driver task ended.
#[derive(Debug)]
pub(crate) enum DriverEnd {
    /// We closed it (the client was dropped).
    Closed,
    /// The server or the network ended it: the error says how.
    Failed(String),
    /// We aborted the driver to close the socket at once.
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}", error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

impl Connector {
    /// A connector for `config`'s database, announcing itself as `application_name`.
    pub(crate) fn new(config: &PoolConfig, application_name: &str) -> Connector {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .dbname(&config.database)
            .user(&config.user)
            .application_name(application_name)
            .connect_timeout(config.limits.connection_timeout)
            // Keepalives and the user timeout make a dead peer show up as an
            // error instead of a hang (DESIGN.md, mobc facts).
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(30))
            .ssl_mode(tls::driver_mode(config.sslmode));
        // tokio-postgres redacts the password in its own Debug output; it
        // is never logged from here.
        if let Some(password) = &config.password {
            pg.password(password.expose());
        }
        if let Some(timeout) = config.limits.statement_timeout {
            pg.options(format!("-c statement_timeout={}", timeout.as_millis()));
        }
        Connector {
            pg,
            tls: tls::connector(config),
        }
    }

    /// Connects and spawns the connection's driver task. `on_end` runs
    /// exactly once when the driver ends, however it ends (also on abort),
    /// so whatever it releases is released.
    pub(crate) async fn open<F>(&self, on_end: F) -> Result<(Client, AbortHandle), OpenError>
    where
        F: FnOnce(DriverEnd) + Send + 'static,
    {
        match &self.tls {
            Err(why) => Err(OpenError::Tls(why.clone())),
            Ok(Tls::Plain) => {
                let (client, connection) = self.pg.connect(NoTls).await?;
                Ok((client, spawn_driver(connection, on_end)))
            }
            Ok(Tls::Rustls(connector)) => {
                let (client, connection) = self.pg.connect(connector.clone()).await?;
                Ok((client, spawn_driver(connection, on_end)))
            }
        }
    }
}

fn spawn_driver<S, T, F>(connection: tokio_postgres::Connection<S, T>, on_end: F) -> AbortHandle
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(DriverEnd) + Send + 'static,
{
    let mut guard = EndGuard(Some(on_end));
    tokio::spawn(async move {
        let end = match connection.await {
            Ok(()) => DriverEnd::Closed,
            Err(err) => DriverEnd::Failed(error_chain(&err)),
        };
        guard.finish(end);
    })
    .abort_handle()
}

/// Calls `on_end` with `Aborted` if the task is dropped before finishing.
struct EndGuard<F: FnOnce(DriverEnd)>(Option<F>);

impl<F: FnOnce(DriverEnd)> EndGuard<F> {
    fn finish(&mut self, end: DriverEnd) {
        if let Some(on_end) = self.0.take() {
            on_end(end);
        }
    }
}

impl<F: FnOnce(DriverEnd)> Drop for EndGuard<F> {
    fn drop(&mut self) {
        self.finish(DriverEnd::Aborted);
    }
}

/// An error with its causes, `outer: inner: innermost`: tokio-postgres
/// puts the useful part ("password missing", "connection refused") in the
/// source, not in its own message.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
