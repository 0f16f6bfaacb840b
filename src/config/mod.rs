//! Configuration: the YAML schema rooted at `connection_pool`, validation
//! with messages that name the key, the line, the bad value and what is
//! allowed, and secret resolution (passwords from env vars or files).
//!
//! Loading never touches the network or a database: it reads the file and
//! the secrets it names, nothing else. The result, [`Config`], is what the
//! rest of the service runs on; the raw serde structs stay private.

mod files;
mod lines;
mod schema;
mod secret;
mod targets;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use secret::{PasswordSource, Secret};
pub use targets::AllowedTargets;

/// The access token a token file holds now (trailing newline dropped).
pub(crate) fn read_token_file(path: &str) -> std::io::Result<Secret> {
    secret::read_secret_file(path)
        .map(|token| Secret::new(token.trim_end_matches(['\n', '\r']).to_string()))
}
pub use tls::{ServerIdentity, ServerTls, TlsFiles, TlsMaterial};
pub(crate) use validate::{check_limits, check_thresholds};
pub use validate::{pool_from_request, retarget, PoolRequest, TargetRequest};

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `connection_pool.enabled`: when false the server starts with no pools.
    pub enabled: bool,
    pub pools: Vec<PoolConfig>,
    /// `connection_pool.default_pool` with built-in defaults filled in: what
    /// a pool created at run time inherits.
    pub defaults: PoolDefaults,
    pub health: HealthConfig,
    pub monitoring: MonitoringConfig,
    pub security: SecurityConfig,
    pub server: ServerConfig,
}

/// The effective settings of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    pub password_source: PasswordSource,
    pub application_name: String,
    pub sslmode: SslMode,
    /// Certificates from `security.ssl`, used by every mode but disable.
    pub tls: TlsFiles,
    pub limits: PoolLimits,
    /// With `security.authentication.method: oauth2`: where each new
    /// connection reads its password (an access token).
    pub token_file: Option<String>,
    /// `security.authentication.timeout_ms`: the most a login may take
    /// (the connect timeout is the smaller of this and the pool's).
    pub authentication_timeout: Duration,
    /// The largest row, error or notice a connection takes from PostgreSQL
    /// (from `server.max_result_bytes`); larger ones never reach memory
    /// whole (`postgres::limit`).
    pub max_message_bytes: u64,
    pub recovery: RecoveryConfig,
    pub alerts: AlertThresholds,
    pub sessions: SessionLimits,
}

/// What a pool allows `Session` streams, which hold a connection each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most connections sessions may hold at once (`max_session_connections`);
    /// `None`: half of `max_connections`, at least one.
    pub max_connections: Option<u32>,
    /// A session with no statement for this long ends (`session_idle_timeout_ms`);
    /// a session may ask for less.
    pub idle_timeout: Duration,
    /// A session idle inside a transaction block this long ends, its
    /// transaction rolled back (`idle_in_transaction_timeout_ms`; 0 = never).
    pub idle_in_transaction_timeout: Option<Duration>,
    /// A session ends after this long, whatever it does (`max_session_duration_ms`; 0 = never).
    pub max_duration: Option<Duration>,
    /// A session holding its connection longer than this is reported as a
    /// leak (`leak_detection_threshold_ms`; 0 = off).
    pub leak_threshold: Option<Duration>,
}

impl SessionLimits {
    /// The most connections sessions may hold in a pool of `max` connections.
    pub fn max_connections(&self, max: u32) -> u32 {
        self.max_connections.unwrap_or((max / 2).max(1)).min(max)
    }
}

/// When a pool's alerts fire; changeable live (UpdatePool).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertThresholds {
    /// Active / max connections above this fires high-utilization.
    pub utilization: f64,
    /// Pool-side failures / acquisition attempts above this fires high-error-rate.
    pub error_rate: f64,
    /// Average acquire wait above this fires slow-acquire.
    pub acquire_wait: Duration,
}

/// How a pool reconnects after its database became unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Recovery attempts at backoff pace before falling back to the
    /// regular check interval (`max_retries`, else
    /// `health_monitoring.max_recovery_attempts`).
    pub max_attempts: u32,
    /// The first backoff delay; it doubles per attempt up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// The settings `UpdatePool` may change on a live pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long an acquirer waits for a connection, and a connect may take.
    pub connection_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection idle longer than this is checked before it is handed out.
    pub health_check_interval: Duration,
    pub statement_timeout: Option<Duration>,
    /// Connections older than this (less up to 10% jitter) are replaced.
    pub max_lifetime: Duration,
}

/// A named database login from `connection_pool.credentials`.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub user: String,
    pub password: Option<Secret>,
    pub source: PasswordSource,
}

/// Values pools inherit when they do not set their own.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDefaults {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The password of pools that name none of their own, read at load.
    pub password: Option<Secret>,
    pub password_source: PasswordSource,
    /// `connection_pool.credentials`, by name, read at load.
    pub credentials: BTreeMap<String, Credential>,
    pub sslmode: SslMode,
    pub tls: TlsFiles,
    pub limits: PoolLimits,
    /// Every pool's `token_file`.
    pub token_file: Option<String>,
    /// Every pool's `authentication_timeout`.
    pub authentication_timeout: Duration,
    /// The password travels in cleartext (LDAP): pools must use TLS.
    pub password_needs_tls: bool,
    /// Every pool's `max_message_bytes` (not settable per pool).
    pub max_message_bytes: u64,
    pub recovery: RecoveryConfig,
    pub alerts: AlertThresholds,
    pub sessions: SessionLimits,
}

/// `connection_pool.health_monitoring` (used by the health monitor).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub enabled: bool,
    pub check_interval: Duration,
    pub probe_timeout: Duration,
    pub idle_timeout: Duration,
    pub automatic_recovery: bool,
    pub max_recovery_attempts: u32,
    /// A check slower than this makes the pool DEGRADED.
    pub degraded_latency: Duration,
    /// Failed checks in a row that make the pool UNHEALTHY.
    pub failure_threshold: u32,
    /// Connections all pools' probes may hold at once.
    pub max_probe_connections: u32,
}

/// `connection_pool.monitoring` (used by the metrics collector and alerts).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoringConfig {
    pub enabled: bool,
    pub collection_interval: Duration,
    pub retention_period: Duration,
    pub enable_alerts: bool,
    pub utilization_threshold: f64,
    pub error_rate_threshold: f64,
    pub acquire_wait_threshold: Duration,
    /// Samples in a row a condition must hold before its alert fires.
    pub fire_after_samples: u32,
    /// Samples in a row a condition must be clear before its alert resolves.
    pub resolve_after_samples: u32,
    /// Ended alerts kept for ListAlerts.
    pub alert_history: u32,
}

/// `connection_pool.security`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    pub ssl_enabled: bool,
    /// The certificates `ssl` names, loaded when `ssl.enabled`.
    pub tls: TlsFiles,
    pub verify_peer: bool,
    pub ca_certificate: Option<String>,
    pub client_certificate: Option<String>,
    pub client_key: Option<String>,
    pub authentication_timeout: Duration,
    /// How pools log in to PostgreSQL.
    pub authentication: DatabaseAuth,
}

/// `security.authentication.method`: how pools log in to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseAuth {
    /// Each pool's user and password (password, md5 or SCRAM).
    Database,
    /// PostgreSQL's LDAP method: the password goes in cleartext, so only
    /// over TLS (every pool's sslmode must be at least `require`).
    Ldap,
    /// The password is an access token read from `token_file` at each new
    /// connection (a projected token rotates it in place).
    OAuth2 { token_file: String },
}

/// Most bytes of SQL text a statement span carries (`trace_sql_text`).
pub const TRACED_SQL_TEXT_BYTES: usize = 1_024;

/// `server.log_format`: one line of text per event, or one JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub const NAMES: [&'static str; 2] = ["text", "json"];

    pub fn parse(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// `connection_pool.server`: listeners and server-wide limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    /// `/metrics` and `/status`.
    pub http_listen: SocketAddr,
    /// The most rows one Execute may return.
    pub max_result_rows: u32,
    /// The most bytes of values one Execute may return (as
    /// `SqlValue::response_bytes` counts them).
    pub max_result_bytes: u64,
    /// The largest request message accepted.
    pub max_request_bytes: u64,
    /// The whole shutdown's budget: in-flight calls, then the drains.
    pub shutdown_timeout: Duration,
    /// How long DeletePool lets in-flight work run when the request sets none.
    pub drain_timeout: Duration,
    /// Events kept for Watch subscribers that resume after a sequence.
    pub event_replay_buffer: u32,
    /// How far a Watch subscriber may fall behind before it loses events.
    pub event_subscriber_buffer: u32,
    /// Where pools created over the API may connect (by default, only
    /// where the configured pools do).
    pub allowed_targets: AllowedTargets,
    /// The most pools the server holds.
    pub max_pools: u32,
    /// How callers prove who they are (off: everyone is an admin).
    pub auth: crate::auth::Authenticator,
    /// Serve plaintext without authentication on a non-loopback address
    /// anyway (refused otherwise).
    pub allow_insecure: bool,
    /// TLS on the gRPC listener.
    pub tls: Option<ServerTls>,
    /// SHA-256 of the bearer token `/metrics` requires, if it requires one.
    pub metrics_token: Option<[u8; 32]>,
    /// Calls one caller (identity) may have in flight at once.
    pub max_calls_per_caller: u32,
    /// gRPC connections open at once; more are refused (and logged).
    pub max_connections: u32,
    /// Serve gRPC reflection (for grpcurl and similar tools).
    pub reflection: bool,
    /// How log lines are written (`--log-format` overrides it).
    pub log_format: LogFormat,
    /// Put the statement's SQL text (cut to [`TRACED_SQL_TEXT_BYTES`]) on
    /// its trace span. Off: the text may hold literals a trace store
    /// should not keep. Parameter values are never traced.
    pub trace_sql_text: bool,
    /// How long a new gRPC connection may take to start speaking
    /// (plaintext) or to finish its TLS handshake.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Why serving the gRPC API on `addr` as configured would expose it to
    /// anyone who can reach the address, if it would.
    pub fn exposure(&self, addr: SocketAddr) -> Option<String> {
        let client_certificates = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        if addr.ip().is_loopback()
            || self.auth.is_on()
            || client_certificates
            || self.allow_insecure
        {
            return None;
        }
        Some(format!(
            "{addr} is reachable from other hosts, and the API would be served without authentication: anyone who reaches it could run SQL and manage pools. Configure server.auth.tokens or client certificates (server.tls.client_ca_file; see README \"Security\"), listen on 127.0.0.1, or set server.allow_insecure: true to accept the risk"
        ))
    }
}

/// How the connection to PostgreSQL uses TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it; the certificate is verified only if a CA is configured.
    Prefer,
    /// TLS or fail; the certificate is verified only if a CA is configured.
    Require,
    /// TLS, certificate chain verified against the CA; host name not checked.
    VerifyCa,
    /// TLS, chain verified and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub const ALLOWED: &'static [&'static str] =
        &["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(text: &str) -> Option<SslMode> {
        match text {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode cannot work without a CA to verify against.
    pub fn needs_ca(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// One problem in a configuration, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `connection_pool.pools[0].max_connections`.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        let noun = if count == 1 { "error" } else { "errors" };
        write!(f, "{}: {count} configuration {noun}", self.source_name)?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source_name = path.display().to_string();
        // A FIFO or a device in its place must neither block nor flood the
        // server (a reload reads it while serving).
        let unreadable = |message: String| ConfigErrors {
            source_name: source_name.clone(),
            errors: vec![ConfigError {
                path: "<file>".into(),
                line: None,
                message,
            }],
        };
        let bytes = files::read_regular(path, validate::MAX_FILE_BYTES as u64)
            .map_err(|err| unreadable(format!("cannot read the file: {err}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|err| unreadable(format!("the file is not UTF-8: {err}")))?;
        Config::parse(&text, &source_name)
    }

    /// Validates configuration text; `source_name` labels the errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text).map_err(|errors| ConfigErrors {
            source_name: source_name.to_string(),
            errors,
        })
    }
}
