//! Opening PostgreSQL connections: the driver configuration of a pool
//! (timeouts, keepalives, application_name, statement_timeout), TLS, and
//! the driver task of each connection, which reports how it ended.
//!
//! Used by the pool's PostgreSQL connector and by the health probe; knows nothing
//! about pooling.

mod limit;
pub(crate) mod plans;
pub(crate) mod reset;
mod stream;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, NoTls};

use crate::config::PoolConfig;
pub use limit::TransactionStatus;
use limit::{Filter, Limited, LimitedTls};
pub(crate) use limit::{FlightMark, MessageLimit};
pub(crate) use stream::Closer;
use stream::TrackedStream;
use tls::Tls;

/// Opens connections for one pool.
pub(crate) struct Connector {
    pg: tokio_postgres::Config,
    /// `Err` holds why TLS could not be set up; every open reports it.
    tls: Result<Tls, String>,
    endpoint: Arc<Endpoint>,
    /// `PoolConfig::max_message_bytes`.
    max_message_bytes: u64,
    /// `PoolConfig::token_file`: read at each open, for the password.
    token_file: Option<String>,
}

/// A connection just opened; its driver task runs.
pub(crate) struct Opened {
    pub(crate) client: Client,
    /// Closes the connection from outside.
    pub(crate) closer: Closer,
    /// What the connection's message filter dropped.
    pub(crate) limit: Arc<MessageLimit>,
}

/// Where a pool's server listens; also where cancel requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) connect_timeout: Duration,
}

impl Endpoint {
    /// Sends PostgreSQL a cancel request for the statement `token`'s
    /// connection runs (over plain TCP, which PostgreSQL accepts for
    /// cancel requests whatever pg_hba.conf says).
    pub(crate) async fn cancel(&self, token: &CancelToken) -> Result<(), String> {
        let stream = stream::connect(&self.host, self.port, self.connect_timeout)
            .await
            .map_err(|err| err.to_string())?;
        token
            .cancel_query_raw(stream, NoTls)
            .await
            .map_err(|err| error_chain(&err))
    }
}

/// How a connection's driver task ended.
#[derive(Debug)]
pub(crate) enum DriverEnd {
    /// We closed it (the client was dropped).
    Closed,
    /// The server or the network ended it: the error says how.
    Failed(String),
    /// The server ended it on request (SQLSTATE 57P01: `pg_terminate_backend`,
    /// or a fast shutdown).
    Terminated(String),
    /// The driver task was dropped without finishing (runtime shutdown).
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}", error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
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
            // The socket itself (connect timeout, keepalives, user timeout)
            // is set up in `stream::connect`.
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
            endpoint: Arc::new(Endpoint {
                host: config.host.clone(),
                port: config.port,
                // The whole login (TCP, TLS, authentication) is bounded by
                // both the pool's timeout and the authentication timeout.
                connect_timeout: config
                    .limits
                    .connection_timeout
                    .min(config.authentication_timeout),
            }),
            max_message_bytes: config.max_message_bytes,
            token_file: config.token_file.clone(),
        }
    }

    /// The driver configuration for one open: with a token file, its
    /// current token is the password (a rotated token is used at once).
    fn driver_config(&self) -> Result<std::borrow::Cow<'_, tokio_postgres::Config>, OpenError> {
        let Some(file) = &self.token_file else {
            return Ok(std::borrow::Cow::Borrowed(&self.pg));
        };
        let token = crate::config::read_token_file(file).map_err(|err| {
            OpenError::Io(std::io::Error::new(
                err.kind(),
                format!("cannot read the token file `{file}`: {err}"),
            ))
        })?;
        if token.expose().is_empty() {
            return Err(OpenError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the token file `{file}` is empty"),
            )));
        }
        let mut pg = self.pg.clone();
        pg.password(token.expose());
        Ok(std::borrow::Cow::Owned(pg))
    }

    pub(crate) fn endpoint(&self) -> Arc<Endpoint> {
        Arc::clone(&self.endpoint)
    }

    /// Connects and spawns the connection's driver task. `on_end` runs
    /// exactly once, when the driver ends (the backend is gone by then, see
    /// `stream.rs`), however it ends, so whatever it releases is released.
    /// The [`Closer`] closes the connection from outside.
    pub(crate) async fn open<F>(&self, on_end: F) -> Result<Opened, OpenError>
    where
        F: FnOnce(DriverEnd) + Send + 'static,
    {
        let timeout = self.endpoint.connect_timeout;
        let timed_out = || {
            OpenError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connection setup timed out after {} ms",
                    timeout.as_millis()
                ),
            ))
        };
        let closer = Closer::default();
        let open = self.open_within(on_end, closer.clone());
        tokio::pin!(open);
        match tokio::time::timeout(timeout, &mut open).await {
            Ok(result) => result,
            Err(_) => {
                // The server may already run a backend for this handshake:
                // close our side and let the handshake see the server's
                // EOF, so `on_end` (what holds the connection's place) goes
                // only once that backend is gone. Bounded like any close.
                closer.close();
                let _ = tokio::time::timeout(stream::CLOSE_WAIT * 2, open).await;
                Err(timed_out())
            }
        }
    }

    async fn open_within<F>(&self, on_end: F, closer: Closer) -> Result<Opened, OpenError>
    where
        F: FnOnce(DriverEnd) + Send + 'static,
    {
        let tcp = stream::connect(
            &self.endpoint.host,
            self.endpoint.port,
            self.endpoint.connect_timeout,
        )
        .await?;
        let pg = self.driver_config()?;
        let stream = TrackedStream::new(tcp, closer.clone());
        let limit = MessageLimit::new(self.max_message_bytes);
        // Every message passes a size filter before the driver buffers it:
        // right above the socket for plain connections, above the
        // decryption for TLS ones.
        let client = match &self.tls {
            Err(why) => return Err(OpenError::Tls(why.clone())),
            Ok(Tls::Plain) => {
                let stream = Limited::new(stream, Filter::messages(Arc::clone(&limit)));
                let (client, connection) = pg.connect_raw(stream, NoTls).await?;
                spawn_driver(connection, closer.clone(), Arc::clone(&limit), on_end);
                client
            }
            Ok(Tls::Rustls(make)) => {
                // Should the server refuse TLS (`prefer`), plain messages
                // follow its answer on the socket itself.
                let stream = Limited::new(stream, Filter::after_ssl_answer(Arc::clone(&limit)));
                let tls = MakeTlsConnect::<Limited<TrackedStream>>::make_tls_connect(
                    &mut make.clone(),
                    &self.endpoint.host,
                )
                .map_err(|err| OpenError::Tls(err.to_string()))?;
                let tls = LimitedTls::new(tls, Arc::clone(&limit));
                let (client, connection) = pg.connect_raw(stream, tls).await?;
                spawn_driver(connection, closer.clone(), Arc::clone(&limit), on_end);
                client
            }
        };
        Ok(Opened {
            client,
            closer,
            limit,
        })
    }
}

fn spawn_driver<S, T, F>(
    connection: tokio_postgres::Connection<S, T>,
    closer: Closer,
    limit: Arc<MessageLimit>,
    on_end: F,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(DriverEnd) + Send + 'static,
{
    let mut guard = EndGuard(Some(on_end));
    tokio::spawn(async move {
        let end = match connection.await {
            Ok(()) => DriverEnd::Closed,
            // Closed on our request: the driver sees end-of-file, which is
            // no failure. A FATAL report from the server (terminated,
            // shutting down) is a break even if we were closing it too.
            Err(err) if closer.requested() && err.as_db_error().is_none() => DriverEnd::Closed,
            // Told first (in the report a statement received, or unasked).
            Err(err) if limit.terminated() => DriverEnd::Terminated(error_chain(&err)),
            Err(err) => DriverEnd::Failed(error_chain(&err)),
        };
        guard.finish(end);
    });
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
