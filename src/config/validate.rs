//! Turns the raw YAML into a [`Config`]: applies defaults (built-in, then
//! `default_pool`, then the pool's own), checks every range and reference,
//! and collects *every* problem with its key path and line rather than
//! stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::files;
use super::lines::LineIndex;
use super::schema::{
    FileRoot, RawAuth, RawCredential, RawJwt, RawPool, RawRoot, RawServerTls, RawSsl, RawToken,
};
use super::secret::{self, PasswordSource, Secret};
use super::tls::{self, ServerTls, TlsFiles};
use super::{
    AlertThresholds, AllowedTargets, Config, ConfigError, Credential, DatabaseAuth, HealthConfig,
    LogFormat, MonitoringConfig, PoolConfig, PoolDefaults, PoolLimits, RecoveryConfig,
    SecurityConfig, ServerConfig, SessionLimits, SslMode,
};
use crate::auth::{
    self, Authenticator, CertificateEntry, Identity, JwtVerifier, PoolScope, Role, TokenEntry,
};

const ROOT: &str = "connection_pool";
/// Longest pool name: `poolplane/<name>` must fit PostgreSQL's 63-byte application_name.
pub(crate) const MAX_POOL_NAME_LEN: usize = 48;
/// A ceiling on any one pool, far above what a PostgreSQL server accepts.
const MAX_CONNECTIONS_CEILING: i64 = 10_000;
/// A day: no timeout or interval in this file is sensibly longer.
const MAX_DURATION_MS: i64 = 86_400_000;
const AUTH_METHODS: &[&str] = &["database", "ldap", "oauth2"];

/// Parses and validates configuration text.
/// Largest configuration file read: far above any real one, and small
/// enough that a hostile one is rejected quickly.
pub(crate) const MAX_FILE_BYTES: usize = 1 << 20;
/// Deepest nesting of collections allowed: the schema needs a handful; the
/// YAML parser's cost grows with the square of the depth.
const MAX_DEPTH: usize = 32;

pub(crate) fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    bounded(text)?;
    let root: FileRoot = serde_yaml::from_str(text)
        .map_err(|err| vec![tab_indent(text).unwrap_or_else(|| from_serde(&err))])?;
    let mut checker = Checker {
        index: LineIndex::build(text),
        errors: Vec::new(),
        tls_failed: false,
    };
    let config = checker.root(root.connection_pool);
    if checker.errors.is_empty() {
        Ok(config)
    } else {
        Err(checker.errors)
    }
}

/// A pool described by an API request rather than the file; `None` fields
/// inherit the server's defaults.
#[derive(Debug, Default, Clone)]
pub struct PoolRequest {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Refused: a request must not make the server read its environment.
    pub password_env: Option<String>,
    /// Refused: a request must not make the server read its files.
    pub password_file: Option<String>,
    /// A name from `connection_pool.credentials`.
    pub credential: Option<String>,
    pub sslmode: Option<String>,
    pub application_name: Option<String>,
    pub max_connections: Option<u32>,
    pub min_connections: Option<u32>,
    pub connection_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub health_check_interval_ms: Option<u64>,
    pub statement_timeout_ms: Option<u64>,
    pub max_lifetime_ms: Option<u64>,
    pub utilization_alert_threshold: Option<f64>,
    pub error_rate_alert_threshold: Option<f64>,
    pub acquire_wait_alert_threshold_ms: Option<u64>,
}

/// Validates a pool from an API request with the same rules as the file.
/// Error paths are the request's field names.
pub fn pool_from_request(
    request: PoolRequest,
    defaults: &PoolDefaults,
) -> Result<PoolConfig, Vec<ConfigError>> {
    let inline_password = request.password.clone();
    let raw = RawPool {
        name: Some(request.name),
        host: request.host,
        port: request.port.map(i64::from),
        database: Some(request.database),
        user: request.user,
        // Never from a request: see below.
        password_env: None,
        password_file: None,
        credential: request.credential,
        sslmode: request.sslmode,
        application_name: request.application_name,
        max_connections: request.max_connections.map(i64::from),
        min_connections: request.min_connections.map(i64::from),
        connection_timeout_ms: request.connection_timeout_ms.map(saturating_i64),
        idle_timeout_ms: request.idle_timeout_ms.map(saturating_i64),
        health_check_interval_ms: request.health_check_interval_ms.map(saturating_i64),
        statement_timeout_ms: request.statement_timeout_ms.map(saturating_i64),
        max_lifetime_ms: request.max_lifetime_ms.map(saturating_i64),
        max_retries: None,
        retry_delay_ms: None,
        max_retry_delay_ms: None,
        utilization_alert_threshold: request.utilization_alert_threshold,
        error_rate_alert_threshold: request.error_rate_alert_threshold,
        acquire_wait_alert_threshold_ms: request
            .acquire_wait_alert_threshold_ms
            .map(saturating_i64),
        // Session limits come from default_pool.
        max_session_connections: None,
        session_idle_timeout_ms: None,
        idle_in_transaction_timeout_ms: None,
        max_session_duration_ms: None,
        leak_detection_threshold_ms: None,
    };
    let mut checker = Checker {
        index: LineIndex::default(),
        errors: Vec::new(),
        tls_failed: false,
    };
    // The server's environment and files are its own: a pool created over
    // the API would send what they hold to a target the caller chose.
    for (field, named) in [
        ("password_env", request.password_env.is_some()),
        ("password_file", request.password_file.is_some()),
    ] {
        if named {
            checker.error(
                field,
                "pools created over the API cannot read the server's environment or files: name a credential from connection_pool.credentials in `credential`, or send `password`".into(),
            );
        }
    }
    if inline_password.is_some() && raw.credential.is_some() {
        checker.error(
            "password",
            "set either password or credential, not both".into(),
        );
    }
    let pool = checker.pool("", &raw, defaults);
    match pool {
        Some(mut pool) if checker.errors.is_empty() => {
            if let Some(password) = inline_password {
                pool.password = Some(password);
                pool.password_source = PasswordSource::Inline;
            }
            Ok(pool)
        }
        _ => Err(checker.errors),
    }
}

/// Where UpdatePool moves a pool; `None` keeps the current value.
#[derive(Debug, Default, Clone)]
pub struct TargetRequest {
    pub host: Option<String>,
    pub port: Option<u32>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// A name from `connection_pool.credentials`: its user and password.
    pub credential: Option<String>,
}

impl TargetRequest {
    pub fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.port.is_none()
            && self.database.is_none()
            && self.user.is_none()
            && self.credential.is_none()
    }
}

/// `current` moved to a new target, checked with the file's rules. A
/// credential replaces user and password. Another user needs a credential:
/// the pool's password is never tried against a role a caller picks (the
/// answer would tell whether it works there).
pub fn retarget(
    current: &PoolConfig,
    request: TargetRequest,
    defaults: &PoolDefaults,
) -> Result<PoolConfig, Vec<ConfigError>> {
    let mut checker = Checker {
        index: LineIndex::default(),
        errors: Vec::new(),
        tls_failed: false,
    };
    if request.credential.is_none()
        && request
            .user
            .as_ref()
            .is_some_and(|user| *user != current.user)
    {
        checker.error(
            "user",
            "another user needs its own password: name a login from connection_pool.credentials in `credential` (the pool's password is not tried against another role)".into(),
        );
    }
    let raw = RawPool {
        user: request.user,
        credential: request.credential,
        ..RawPool::default()
    };
    let login = checker.login(
        "",
        &raw,
        Login {
            user: current.user.clone(),
            source: current.password_source.clone(),
            password: current.password.clone(),
        },
        &defaults.credentials,
    );
    let mut pool = current.clone();
    pool.host = checker.host("", request.host.as_deref(), &current.host);
    pool.port = checker.port("", request.port.map(i64::from), current.port);
    if let Some(database) = request.database {
        if database.is_empty() {
            checker.error("database", "must not be empty".into());
        }
        pool.database = database;
    }
    pool.user = login.user;
    pool.password = login.password;
    pool.password_source = login.source;
    for (field, value) in [
        ("host", &pool.host),
        ("database", &pool.database),
        ("user", &pool.user),
    ] {
        checker.printable("", field, value);
    }
    if checker.errors.is_empty() {
        Ok(pool)
    } else {
        Err(checker.errors)
    }
}

/// Checks limits changed by UpdatePool with the same rules as the file.
pub(crate) fn check_limits(limits: &PoolLimits) -> Result<(), Vec<ConfigError>> {
    let mut checker = Checker {
        index: LineIndex::default(),
        errors: Vec::new(),
        tls_failed: false,
    };
    checker.limits_consistent("", limits);
    if checker.errors.is_empty() {
        Ok(())
    } else {
        Err(checker.errors)
    }
}

/// Checks alert thresholds changed by UpdatePool with the same rules as the file.
pub(crate) fn check_thresholds(thresholds: &AlertThresholds) -> Result<(), Vec<ConfigError>> {
    let mut checker = Checker {
        index: LineIndex::default(),
        errors: Vec::new(),
        tls_failed: false,
    };
    checker.ratio(
        "",
        "utilization_alert_threshold",
        Some(thresholds.utilization),
        0.8,
    );
    checker.ratio(
        "",
        "error_rate_alert_threshold",
        Some(thresholds.error_rate),
        0.05,
    );
    if thresholds.acquire_wait.is_zero() {
        checker.error("acquire_wait_alert_threshold_ms", "must be positive".into());
    }
    if checker.errors.is_empty() {
        Ok(())
    } else {
        Err(checker.errors)
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

struct Checker {
    index: LineIndex,
    errors: Vec<ConfigError>,
    /// The TLS files failed to load (already reported): modes that need
    /// them are not reported again for every pool.
    tls_failed: bool,
}

impl Checker {
    fn error(&mut self, path: &str, message: String) {
        let line = self.index.line_of(path);
        self.errors.push(ConfigError {
            path: path.to_string(),
            line,
            message,
        });
    }

    fn root(&mut self, raw: RawRoot) -> Config {
        let security = self.security(&raw.security);
        let health = self.health(&raw.health_monitoring);
        let monitoring = self.monitoring(&raw.monitoring);
        let mut server = self.server(&raw.server);
        let credentials = self.credentials(&raw.credentials);
        let mut defaults = self.defaults(
            &raw.default_pool,
            &security,
            &health,
            &monitoring,
            credentials,
        );
        defaults.max_message_bytes = max_message_bytes(server.max_result_bytes);
        let mut pools = Vec::new();
        let mut seen = HashSet::new();
        for (i, raw_pool) in raw.pools.iter().enumerate() {
            let path = format!("{ROOT}.pools[{i}]");
            let Some(pool) = self.pool(&path, raw_pool, &defaults) else {
                continue;
            };
            if !seen.insert(pool.name.clone()) {
                self.error(
                    &format!("{path}.name"),
                    format!(
                        "duplicate pool name `{}`: pool names must be unique",
                        pool.name
                    ),
                );
                continue;
            }
            pools.push(pool);
        }
        if raw.server.allowed_targets.is_none() {
            // Unless told otherwise, API-created pools may go only where
            // the configured ones do.
            server.allowed_targets = AllowedTargets::exactly(
                pools
                    .iter()
                    .map(|pool| (pool.host.as_str(), pool.port))
                    .chain([(defaults.host.as_str(), defaults.port)]),
            );
        }
        if let Some(why) = server.exposure(server.grpc_listen) {
            self.error(&format!("{ROOT}.server.grpc_listen"), why);
        }
        if pools.len() > server.max_pools as usize {
            self.error(
                &format!("{ROOT}.server.max_pools"),
                format!(
                    "{} pools are configured but max_pools is {}",
                    pools.len(),
                    server.max_pools
                ),
            );
        }
        Config {
            enabled: raw.enabled.unwrap_or(true),
            pools,
            defaults,
            health,
            monitoring,
            security,
            server,
        }
    }

    fn defaults(
        &mut self,
        raw: &RawPool,
        security: &SecurityConfig,
        health: &HealthConfig,
        monitoring: &MonitoringConfig,
        credentials: BTreeMap<String, Credential>,
    ) -> PoolDefaults {
        let path = format!("{ROOT}.default_pool");
        if raw.name.is_some() {
            self.error(
                &format!("{path}.name"),
                "default_pool cannot have a name: it is the template every pool in `pools` inherits"
                    .into(),
            );
        }
        let mut builtin = builtin_defaults();
        // With TLS on, pools use it unless they say otherwise.
        if security.ssl_enabled {
            builtin.sslmode = if security.verify_peer {
                SslMode::VerifyFull
            } else {
                SslMode::Require
            };
        }
        builtin.tls = security.tls.clone();
        builtin.password_needs_tls = security.authentication == DatabaseAuth::Ldap;
        builtin.authentication_timeout = security.authentication_timeout;
        builtin.token_file = match &security.authentication {
            DatabaseAuth::OAuth2 { token_file } => Some(token_file.clone()),
            _ => None,
        };
        builtin.recovery.max_attempts = health.max_recovery_attempts;
        builtin.alerts = AlertThresholds {
            utilization: monitoring.utilization_threshold,
            error_rate: monitoring.error_rate_threshold,
            acquire_wait: monitoring.acquire_wait_threshold,
        };
        let limits = self.limits(&path, raw, &builtin.limits);
        let login = self.login(
            &path,
            raw,
            Login {
                user: builtin.user.clone(),
                source: PasswordSource::None,
                password: None,
            },
            &credentials,
        );
        PoolDefaults {
            host: self.host(&path, raw.host.as_deref(), &builtin.host),
            port: self.port(&path, raw.port, builtin.port),
            user: login.user,
            password: login.password,
            password_source: login.source,
            credentials,
            sslmode: self.sslmode(&path, raw.sslmode.as_deref(), builtin.sslmode, &builtin.tls),
            tls: builtin.tls.clone(),
            limits,
            token_file: builtin.token_file.clone(),
            authentication_timeout: builtin.authentication_timeout,
            password_needs_tls: builtin.password_needs_tls,
            max_message_bytes: builtin.max_message_bytes,
            recovery: self.recovery(&path, raw, &builtin.recovery),
            alerts: self.alert_thresholds(&path, raw, &builtin.alerts),
            sessions: self.session_limits(&path, raw, &builtin.sessions, limits.max_connections),
        }
    }

    fn pool(&mut self, path: &str, raw: &RawPool, defaults: &PoolDefaults) -> Option<PoolConfig> {
        let name = self.pool_name(path, raw.name.as_deref())?;
        let database = match raw.database.as_deref() {
            Some(db) if !db.is_empty() => db.to_string(),
            _ => {
                self.error(
                    &key(path, "database"),
                    "missing: every pool names its database".into(),
                );
                String::new()
            }
        };
        let login = self.login(
            path,
            raw,
            Login {
                user: defaults.user.clone(),
                source: defaults.password_source.clone(),
                password: defaults.password.clone(),
            },
            &defaults.credentials,
        );
        let application_name = raw
            .application_name
            .clone()
            .unwrap_or_else(|| format!("poolplane/{name}"));
        if application_name.len() > 63 {
            self.error(
                &key(path, "application_name"),
                format!("`{application_name}` is longer than PostgreSQL's 63-byte limit"),
            );
        }
        let limits = self.limits(path, raw, &defaults.limits);
        let host = self.host(path, raw.host.as_deref(), &defaults.host);
        let user = login.user;
        for (field, value) in [
            ("host", &host),
            ("database", &database),
            ("user", &user),
            ("application_name", &application_name),
        ] {
            self.printable(path, field, value);
        }
        let sslmode = self.sslmode(
            path,
            raw.sslmode.as_deref(),
            defaults.sslmode,
            &defaults.tls,
        );
        if defaults.password_needs_tls && matches!(sslmode, SslMode::Disable | SslMode::Prefer) {
            self.error(
                &key(path, "sslmode"),
                format!(
                    "`{}`: with security.authentication.method ldap the password goes to PostgreSQL in cleartext, so only over TLS: use require, verify-ca or verify-full",
                    sslmode.as_str()
                ),
            );
        }
        Some(PoolConfig {
            host,
            port: self.port(path, raw.port, defaults.port),
            database,
            user,
            password: login.password,
            password_source: login.source,
            application_name,
            sslmode,
            tls: defaults.tls.clone(),
            limits,
            token_file: defaults.token_file.clone(),
            authentication_timeout: defaults.authentication_timeout,
            max_message_bytes: defaults.max_message_bytes,
            recovery: self.recovery(path, raw, &defaults.recovery),
            alerts: self.alert_thresholds(path, raw, &defaults.alerts),
            sessions: self.session_limits(path, raw, &defaults.sessions, limits.max_connections),
            name,
        })
    }

    /// The login a pool section names: a credential, or its own user and
    /// password source, else what it inherits.
    fn login(
        &mut self,
        path: &str,
        raw: &RawPool,
        inherited: Login,
        credentials: &BTreeMap<String, Credential>,
    ) -> Login {
        if let Some(name) = &raw.credential {
            if raw.user.is_some() || raw.password_env.is_some() || raw.password_file.is_some() {
                self.error(
                    &key(path, "credential"),
                    "a credential gives the user and the password: drop user, password_env and password_file, or the credential".into(),
                );
            }
            return match credentials.get(name) {
                Some(credential) => Login {
                    user: credential.user.clone(),
                    source: PasswordSource::Credential(name.clone()),
                    password: credential.password.clone(),
                },
                None => {
                    let declared: Vec<&str> = credentials.keys().map(String::as_str).collect();
                    self.error(
                        &key(path, "credential"),
                        format!(
                            "`{name}` is not declared in {ROOT}.credentials (declared: {})",
                            if declared.is_empty() {
                                "none".to_string()
                            } else {
                                declared.join(", ")
                            }
                        ),
                    );
                    inherited
                }
            };
        }
        let user = raw.user.clone().unwrap_or(inherited.user);
        if raw.password_env.is_none() && raw.password_file.is_none() {
            return Login { user, ..inherited };
        }
        let (source, password) = self.secret(
            path,
            raw.password_env.as_deref(),
            raw.password_file.as_deref(),
        );
        Login {
            user,
            source,
            password,
        }
    }

    /// Reads a password source; an error names the field that failed.
    fn secret(
        &mut self,
        path: &str,
        env: Option<&str>,
        file: Option<&str>,
    ) -> (PasswordSource, Option<Secret>) {
        match secret::resolve(env, file) {
            Ok(found) => found,
            Err(message) => {
                let field = if env.is_some() && file.is_none() {
                    "password_env"
                } else {
                    "password_file"
                };
                self.error(&key(path, field), message);
                (PasswordSource::None, None)
            }
        }
    }

    /// `connection_pool.credentials`, each read now (never at request time).
    fn credentials(&mut self, raw: &[RawCredential]) -> BTreeMap<String, Credential> {
        let mut credentials = BTreeMap::new();
        for (i, entry) in raw.iter().enumerate() {
            let path = format!("{ROOT}.credentials[{i}]");
            let Some(name) = entry.name.clone().filter(|name| is_valid_pool_name(name)) else {
                self.error(
                    &key(&path, "name"),
                    "missing or invalid: 1 to 63 letters, digits, `_` or `-`".into(),
                );
                continue;
            };
            let Some(user) = entry.user.clone().filter(|user| !user.is_empty()) else {
                self.error(
                    &key(&path, "user"),
                    "missing: a credential names its user".into(),
                );
                continue;
            };
            self.printable(&path, "user", &user);
            let (source, password) = self.secret(
                &path,
                entry.password_env.as_deref(),
                entry.password_file.as_deref(),
            );
            let credential = Credential {
                user,
                password,
                source,
            };
            if credentials.insert(name.clone(), credential).is_some() {
                self.error(
                    &key(&path, "name"),
                    format!("duplicate credential name `{name}`"),
                );
            }
        }
        credentials
    }

    fn alert_thresholds(
        &mut self,
        path: &str,
        raw: &RawPool,
        inherited: &AlertThresholds,
    ) -> AlertThresholds {
        AlertThresholds {
            utilization: self.ratio(
                path,
                "utilization_alert_threshold",
                raw.utilization_alert_threshold,
                inherited.utilization,
            ),
            error_rate: self.ratio(
                path,
                "error_rate_alert_threshold",
                raw.error_rate_alert_threshold,
                inherited.error_rate,
            ),
            acquire_wait: self.duration(
                path,
                "acquire_wait_alert_threshold_ms",
                raw.acquire_wait_alert_threshold_ms,
                duration_ms(inherited.acquire_wait),
            ),
        }
    }

    fn recovery(
        &mut self,
        path: &str,
        raw: &RawPool,
        inherited: &RecoveryConfig,
    ) -> RecoveryConfig {
        let recovery = RecoveryConfig {
            max_attempts: self.count(
                path,
                "max_retries",
                raw.max_retries,
                i64::from(inherited.max_attempts),
                0,
                1_000_000,
            ),
            base_delay: self.duration(
                path,
                "retry_delay_ms",
                raw.retry_delay_ms,
                duration_ms(inherited.base_delay),
            ),
            max_delay: self.duration(
                path,
                "max_retry_delay_ms",
                raw.max_retry_delay_ms,
                duration_ms(inherited.max_delay),
            ),
        };
        if recovery.max_delay < recovery.base_delay {
            self.error(
                &key(path, "max_retry_delay_ms"),
                format!(
                    "{} ms is below retry_delay_ms ({} ms): the backoff cap must be at least the first delay",
                    recovery.max_delay.as_millis(),
                    recovery.base_delay.as_millis()
                ),
            );
        }
        recovery
    }

    fn session_limits(
        &mut self,
        path: &str,
        raw: &RawPool,
        inherited: &SessionLimits,
        pool_max: u32,
    ) -> SessionLimits {
        let max_connections = match raw.max_session_connections {
            None => inherited.max_connections,
            Some(value) => Some(self.count(
                path,
                "max_session_connections",
                Some(value),
                1,
                1,
                MAX_CONNECTIONS_CEILING,
            )),
        };
        if let Some(sessions) = max_connections.filter(|sessions| *sessions > pool_max) {
            self.error(
                &key(path, "max_session_connections"),
                format!(
                    "{sessions} is more than max_connections ({pool_max}): allowed 1 to {pool_max}, and less to keep connections for Execute"
                ),
            );
        }
        SessionLimits {
            max_connections,
            idle_timeout: self.duration(
                path,
                "session_idle_timeout_ms",
                raw.session_idle_timeout_ms,
                duration_ms(inherited.idle_timeout),
            ),
            idle_in_transaction_timeout: self.optional_duration(
                path,
                "idle_in_transaction_timeout_ms",
                raw.idle_in_transaction_timeout_ms,
                inherited.idle_in_transaction_timeout,
            ),
            max_duration: self.optional_duration(
                path,
                "max_session_duration_ms",
                raw.max_session_duration_ms,
                inherited.max_duration,
            ),
            leak_threshold: self.optional_duration(
                path,
                "leak_detection_threshold_ms",
                raw.leak_detection_threshold_ms,
                inherited.leak_threshold,
            ),
        }
    }

    /// A duration where 0 means "none", or `inherited` when absent.
    fn optional_duration(
        &mut self,
        path: &str,
        field: &str,
        value: Option<i64>,
        inherited: Option<Duration>,
    ) -> Option<Duration> {
        match value {
            None => inherited,
            Some(0) => None,
            Some(ms) => Some(self.duration(path, field, Some(ms), 1)),
        }
    }

    fn pool_name(&mut self, path: &str, name: Option<&str>) -> Option<String> {
        let path = key(path, "name");
        let Some(name) = name else {
            self.error(&path, "missing: every pool needs a name".into());
            return None;
        };
        if is_valid_pool_name(name) {
            Some(name.to_string())
        } else {
            self.error(
                &path,
                format!(
                    "invalid pool name `{name}`: use 1 to {MAX_POOL_NAME_LEN} letters, digits, `_` or `-`, starting with a letter"
                ),
            );
            None
        }
    }

    fn limits(&mut self, path: &str, raw: &RawPool, inherited: &PoolLimits) -> PoolLimits {
        let max = self.count(
            path,
            "max_connections",
            raw.max_connections,
            i64::from(inherited.max_connections),
            1,
            MAX_CONNECTIONS_CEILING,
        );
        let min = self.count(
            path,
            "min_connections",
            raw.min_connections,
            i64::from(inherited.min_connections).min(i64::from(max)),
            0,
            MAX_CONNECTIONS_CEILING,
        );
        let statement_timeout = match raw.statement_timeout_ms {
            None => inherited.statement_timeout,
            Some(0) => None,
            Some(ms) => Some(self.duration(path, "statement_timeout_ms", Some(ms), 1)),
        };
        let limits = PoolLimits {
            max_connections: max,
            min_connections: min,
            connection_timeout: self.duration(
                path,
                "connection_timeout_ms",
                raw.connection_timeout_ms,
                duration_ms(inherited.connection_timeout),
            ),
            idle_timeout: self.duration(
                path,
                "idle_timeout_ms",
                raw.idle_timeout_ms,
                duration_ms(inherited.idle_timeout),
            ),
            health_check_interval: self.duration(
                path,
                "health_check_interval_ms",
                raw.health_check_interval_ms,
                duration_ms(inherited.health_check_interval),
            ),
            statement_timeout,
            max_lifetime: self.duration(
                path,
                "max_lifetime_ms",
                raw.max_lifetime_ms,
                duration_ms(inherited.max_lifetime),
            ),
        };
        self.limits_consistent(path, &limits);
        limits
    }

    fn limits_consistent(&mut self, path: &str, limits: &PoolLimits) {
        if limits.min_connections > limits.max_connections {
            self.error(
                &key(path, "min_connections"),
                format!(
                    "min_connections ({}) is greater than max_connections ({})",
                    limits.min_connections, limits.max_connections
                ),
            );
        }
        // The same ranges and words as `limits` uses for the file, so an
        // UpdatePool is judged exactly like the config and CreatePool.
        for (field, value, min) in [
            ("max_connections", limits.max_connections, 1),
            ("min_connections", limits.min_connections, 0),
        ] {
            let value = i64::from(value);
            if !(min..=MAX_CONNECTIONS_CEILING).contains(&value) {
                self.error(
                    &key(path, field),
                    format!("{value} is out of range: allowed {min} to {MAX_CONNECTIONS_CEILING}"),
                );
            }
        }
        for (field, value) in [
            ("connection_timeout_ms", Some(limits.connection_timeout)),
            ("idle_timeout_ms", Some(limits.idle_timeout)),
            (
                "health_check_interval_ms",
                Some(limits.health_check_interval),
            ),
            ("statement_timeout_ms", limits.statement_timeout),
            ("max_lifetime_ms", Some(limits.max_lifetime)),
        ] {
            if let Some(value) = value {
                if value.is_zero() || duration_ms(value) > MAX_DURATION_MS {
                    self.error(
                        &key(path, field),
                        format!(
                            "{} ms is out of range: allowed 1 to {MAX_DURATION_MS} ms",
                            value.as_millis()
                        ),
                    );
                }
            }
        }
    }

    /// A whole number in `min..=max`, or `default` when absent.
    fn count(
        &mut self,
        path: &str,
        field: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> u32 {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            u32::try_from(value).unwrap_or(u32::MAX)
        } else {
            self.error(
                &key(path, field),
                format!("{value} is out of range: allowed {min} to {max}"),
            );
            u32::try_from(default.clamp(min, max)).unwrap_or(0)
        }
    }

    /// A positive number of milliseconds, or `default_ms` when absent.
    fn duration(
        &mut self,
        path: &str,
        field: &str,
        value: Option<i64>,
        default_ms: i64,
    ) -> Duration {
        let ms = value.unwrap_or(default_ms);
        if (1..=MAX_DURATION_MS).contains(&ms) {
            Duration::from_millis(ms.unsigned_abs())
        } else {
            let why = if ms <= 0 {
                "must be positive"
            } else {
                "is too long"
            };
            self.error(
                &key(path, field),
                format!("{ms} ms {why}: allowed 1 to {MAX_DURATION_MS} ms"),
            );
            Duration::from_millis(default_ms.clamp(1, MAX_DURATION_MS).unsigned_abs())
        }
    }

    /// Connection parameters travel in NUL-terminated protocol fields: a
    /// control character would fail every connect, so it is refused here;
    /// so is a direction-changing one (U+202E...), which would make the
    /// name read otherwise wherever it is shown (ctl, the status page, logs).
    fn printable(&mut self, path: &str, field: &str, value: &str) {
        if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
            self.error(
                &key(path, field),
                format!(
                    "contains a control character (U+{:04X}) at byte {at}; PostgreSQL cannot take it",
                    u32::from(c)
                ),
            );
        } else if let Some((at, c)) = value
            .char_indices()
            .find(|(_, c)| crate::display::misleading(*c))
        {
            self.error(
                &key(path, field),
                format!(
                    "contains an invisible or direction-changing character (U+{:04X}) at byte {at}, which would make it read otherwise wherever it is shown",
                    u32::from(c)
                ),
            );
        }
    }

    fn host(&mut self, path: &str, host: Option<&str>, default: &str) -> String {
        match host {
            Some("") => {
                self.error(&key(path, "host"), "must not be empty".into());
                default.to_string()
            }
            Some(host) => host.to_string(),
            None => default.to_string(),
        }
    }

    fn port(&mut self, path: &str, port: Option<i64>, default: u16) -> u16 {
        match port {
            None => default,
            Some(port) => match u16::try_from(port) {
                Ok(port) if port != 0 => port,
                _ => {
                    self.error(
                        &key(path, "port"),
                        format!("{port} is not a TCP port: allowed 1 to 65535"),
                    );
                    default
                }
            },
        }
    }

    fn sslmode(
        &mut self,
        path: &str,
        mode: Option<&str>,
        default: SslMode,
        tls: &TlsFiles,
    ) -> SslMode {
        let field = key(path, "sslmode");
        // An inherited mode was checked where it was set.
        let mode = match mode {
            None => return default,
            Some(text) => match SslMode::parse(text) {
                Some(mode) => mode,
                None => {
                    self.error(
                        &field,
                        format!(
                            "`{text}` is not an sslmode: allowed {}",
                            SslMode::ALLOWED.join(", ")
                        ),
                    );
                    return default;
                }
            },
        };
        if mode.needs_ca() && !tls.has_roots() && !self.tls_failed {
            self.error(
                &field,
                format!(
                    "{} needs a CA: set {ROOT}.security.ssl.enabled: true and ca_certificate",
                    mode.as_str()
                ),
            );
        }
        mode
    }

    fn health(&mut self, raw: &super::schema::RawHealthMonitoring) -> HealthConfig {
        let path = format!("{ROOT}.health_monitoring");
        HealthConfig {
            max_probe_connections: self.count(
                &path,
                "max_probe_connections",
                raw.max_probe_connections,
                16,
                1,
                10_000,
            ),
            enabled: raw.enabled.unwrap_or(true),
            check_interval: self.duration(
                &path,
                "check_interval_ms",
                raw.check_interval_ms,
                10_000,
            ),
            probe_timeout: self.duration(
                &path,
                "connection_timeout_ms",
                raw.connection_timeout_ms,
                5_000,
            ),
            idle_timeout: self.duration(&path, "idle_timeout_ms", raw.idle_timeout_ms, 300_000),
            automatic_recovery: raw.enable_automatic_recovery.unwrap_or(true),
            max_recovery_attempts: self.count(
                &path,
                "max_recovery_attempts",
                raw.max_recovery_attempts,
                3,
                0,
                1_000_000,
            ),
            degraded_latency: self.duration(
                &path,
                "degraded_latency_ms",
                raw.degraded_latency_ms,
                1_000,
            ),
            failure_threshold: self.count(
                &path,
                "failure_threshold",
                raw.failure_threshold,
                2,
                1,
                1_000,
            ),
        }
    }

    fn monitoring(&mut self, raw: &super::schema::RawMonitoring) -> MonitoringConfig {
        let path = format!("{ROOT}.monitoring");
        MonitoringConfig {
            enabled: raw.enabled.unwrap_or(true),
            collection_interval: self.duration(
                &path,
                "collection_interval_ms",
                raw.collection_interval_ms,
                10_000,
            ),
            retention_period: self.duration(
                &path,
                "retention_period_ms",
                raw.retention_period_ms,
                3_600_000,
            ),
            enable_alerts: raw.enable_alerts.unwrap_or(true),
            utilization_threshold: self.ratio(
                &path,
                "connection_utilization_threshold",
                raw.connection_utilization_threshold,
                0.8,
            ),
            error_rate_threshold: self.ratio(
                &path,
                "error_rate_threshold",
                raw.error_rate_threshold,
                0.05,
            ),
            acquire_wait_threshold: self.duration(
                &path,
                "acquire_wait_threshold_ms",
                raw.acquire_wait_threshold_ms,
                1_000,
            ),
            fire_after_samples: self.count(
                &path,
                "alert_fire_after_samples",
                raw.alert_fire_after_samples,
                2,
                1,
                1_000,
            ),
            resolve_after_samples: self.count(
                &path,
                "alert_resolve_after_samples",
                raw.alert_resolve_after_samples,
                2,
                1,
                1_000,
            ),
            alert_history: self.count(&path, "alert_history", raw.alert_history, 1_000, 0, 100_000),
        }
    }

    fn ratio(&mut self, path: &str, field: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if (0.0..=1.0).contains(&value) {
            value
        } else {
            self.error(
                &key(path, field),
                format!(
                    "{value} is out of range: allowed 0.0 to 1.0 (a fraction, not a percentage)"
                ),
            );
            default
        }
    }

    fn security(&mut self, raw: &super::schema::RawSecurity) -> SecurityConfig {
        let path = format!("{ROOT}.security");
        let ssl_enabled = raw.ssl.enabled.unwrap_or(false);
        let tls = if ssl_enabled {
            self.tls_files(&format!("{path}.ssl"), &raw.ssl)
        } else {
            TlsFiles::default()
        };
        let auth_path = format!("{path}.authentication");
        let authentication = self.database_auth(&auth_path, &raw.authentication);
        SecurityConfig {
            ssl_enabled,
            tls,
            verify_peer: raw.ssl.verify_peer.unwrap_or(true),
            ca_certificate: raw.ssl.ca_certificate.clone(),
            client_certificate: raw.ssl.client_certificate.clone(),
            client_key: raw.ssl.client_key.clone(),
            authentication_timeout: self.duration(
                &auth_path,
                "timeout_ms",
                raw.authentication.timeout_ms,
                30_000,
            ),
            authentication,
        }
    }

    /// `security.authentication`: how pools log in to PostgreSQL.
    fn database_auth(
        &mut self,
        path: &str,
        raw: &super::schema::RawAuthentication,
    ) -> DatabaseAuth {
        match raw.method.as_deref() {
            None | Some("database") => DatabaseAuth::Database,
            Some("ldap") => DatabaseAuth::Ldap,
            Some("oauth2") => match &raw.token_file {
                Some(file) => {
                    if let Err(err) = secret::read_secret_file(file) {
                        self.error(
                            &key(path, "token_file"),
                            format!("cannot read the token file `{file}`: {err}"),
                        );
                    }
                    DatabaseAuth::OAuth2 {
                        token_file: file.clone(),
                    }
                }
                None => {
                    self.error(
                        &key(path, "token_file"),
                        "missing: with method oauth2, each connection's password is the access token this file holds".into(),
                    );
                    DatabaseAuth::Database
                }
            },
            Some(method) => {
                self.error(
                    &key(path, "method"),
                    format!(
                        "`{method}` is not supported: allowed {}",
                        AUTH_METHODS.join(", ")
                    ),
                );
                DatabaseAuth::Database
            }
        }
    }

    /// With TLS on, the certificate files must load. The first failure is
    /// the error; files that also fail to open are named in it, since they
    /// almost always share one cause (a missing directory).
    fn tls_files(&mut self, path: &str, ssl: &RawSsl) -> TlsFiles {
        if ssl.verify_peer.unwrap_or(true) && ssl.ca_certificate.is_none() {
            self.tls_failed = true;
            self.error(
                &key(path, "ca_certificate"),
                "missing: verify_peer: true needs the CA that signed the server's certificate"
                    .into(),
            );
            return TlsFiles::default();
        }
        match tls::load(
            ssl.ca_certificate.as_deref(),
            ssl.client_certificate.as_deref(),
            ssl.client_key.as_deref(),
        ) {
            Ok(material) => TlsFiles(Some(Arc::new(material))),
            Err(err) => {
                self.tls_failed = true;
                let others: Vec<&str> = [
                    ("ca_certificate", &ssl.ca_certificate),
                    ("client_certificate", &ssl.client_certificate),
                    ("client_key", &ssl.client_key),
                ]
                .into_iter()
                .filter(|(field, file)| {
                    *field != err.field
                        && file
                            .as_deref()
                            .is_some_and(|f| std::fs::File::open(f).is_err())
                })
                .map(|(field, _)| field)
                .collect();
                let also = if others.is_empty() {
                    String::new()
                } else {
                    format!(" ({} also unreadable)", others.join(", "))
                };
                self.error(
                    &key(path, err.field),
                    format!(
                        "{}{also}; fix the path or set ssl.enabled: false",
                        err.message
                    ),
                );
                TlsFiles::default()
            }
        }
    }

    fn server(&mut self, raw: &super::schema::RawServer) -> ServerConfig {
        let path = format!("{ROOT}.server");
        let grpc_listen = match raw.grpc_listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 50051)),
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(
                    &key(&path, "grpc_listen"),
                    format!("`{text}` is not an address: use IP:PORT, e.g. 127.0.0.1:50051 or 0.0.0.0:50051"),
                );
                SocketAddr::from(([127, 0, 0, 1], 50051))
            }),
        };
        let http_listen = match raw.http_listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 9464)),
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(
                    &key(&path, "http_listen"),
                    format!("`{text}` is not an address: use IP:PORT, e.g. 127.0.0.1:9464 or 0.0.0.0:9464"),
                );
                SocketAddr::from(([127, 0, 0, 1], 9464))
            }),
        };
        ServerConfig {
            grpc_listen,
            http_listen,
            max_result_rows: self.count(
                &path,
                "max_result_rows",
                raw.max_result_rows,
                10_000,
                1,
                1_000_000,
            ),
            // Under the 4 MiB most gRPC clients accept by default.
            max_result_bytes: u64::from(self.count(
                &path,
                "max_result_bytes",
                raw.max_result_bytes,
                4_000_000,
                1_024,
                1_073_741_824,
            )),
            max_request_bytes: u64::from(self.count(
                &path,
                "max_request_bytes",
                raw.max_request_bytes,
                4_194_304,
                1_024,
                268_435_456,
            )),
            shutdown_timeout: self.duration(
                &path,
                "shutdown_timeout_ms",
                raw.shutdown_timeout_ms,
                10_000,
            ),
            drain_timeout: self.duration(&path, "drain_timeout_ms", raw.drain_timeout_ms, 30_000),
            event_replay_buffer: self.count(
                &path,
                "event_replay_buffer",
                raw.event_replay_buffer,
                10_000,
                1,
                1_000_000,
            ),
            event_subscriber_buffer: self.count(
                &path,
                "event_subscriber_buffer",
                raw.event_subscriber_buffer,
                1_024,
                1,
                1_000_000,
            ),
            allowed_targets: match &raw.allowed_targets {
                // Filled in from the pools once they are read.
                None => AllowedTargets::default(),
                Some(entries) => AllowedTargets::parse(entries.iter().map(String::as_str))
                    .unwrap_or_else(|message| {
                        self.error(&key(&path, "allowed_targets"), message);
                        AllowedTargets::default()
                    }),
            },
            max_pools: self.count(&path, "max_pools", raw.max_pools, 100, 1, 100_000),
            auth: match &raw.auth {
                None => Authenticator::off(),
                Some(auth) => self.authenticator(&key(&path, "auth"), auth, raw),
            },
            allow_insecure: raw.allow_insecure.unwrap_or(false),
            tls: raw
                .tls
                .as_ref()
                .and_then(|tls| self.server_tls(&key(&path, "tls"), tls)),
            metrics_token: self.metrics_token(&path, raw),
            reflection: raw.reflection.unwrap_or(true),
            log_format: self.log_format(&path, raw.log_format.as_deref()),
            trace_sql_text: raw.trace_sql_text.unwrap_or(false),
            max_connections: self.count(
                &path,
                "max_connections",
                raw.max_connections,
                10_000,
                1,
                1_000_000,
            ),
            handshake_timeout: self.duration(
                &path,
                "handshake_timeout_ms",
                raw.handshake_timeout_ms,
                10_000,
            ),
            max_calls_per_caller: self.count(
                &path,
                "max_calls_per_caller",
                raw.max_calls_per_caller,
                4_096,
                1,
                1_000_000,
            ),
        }
    }

    /// `server.metrics_token_env` / `metrics_token_file`, kept as a hash.
    fn metrics_token(&mut self, path: &str, raw: &super::schema::RawServer) -> Option<[u8; 32]> {
        let source = RawToken {
            token_env: raw.metrics_token_env.clone(),
            token_file: raw.metrics_token_file.clone(),
            ..RawToken::default()
        };
        match (&source.token_env, &source.token_file) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                self.error(
                    &key(path, "metrics_token_env"),
                    "set metrics_token_env or metrics_token_file, not both".into(),
                );
                None
            }
            _ => self.token_hash(path, "metrics_", &source),
        }
    }

    /// `server.tls`, its files read now so a mistake shows at load.
    fn server_tls(&mut self, path: &str, raw: &RawServerTls) -> Option<ServerTls> {
        let (Some(cert_file), Some(key_file)) = (&raw.cert_file, &raw.key_file) else {
            self.error(
                &key(
                    path,
                    if raw.cert_file.is_none() {
                        "cert_file"
                    } else {
                        "key_file"
                    },
                ),
                "missing: TLS needs both cert_file and key_file (PEM)".into(),
            );
            return None;
        };
        let tls = ServerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: raw.client_ca_file.clone(),
        };
        if let Err(message) = tls.identity() {
            self.error(&key(path, "cert_file"), message);
            return None;
        }
        if let Err(message) = tls.client_roots() {
            self.error(&key(path, "client_ca_file"), message);
            return None;
        }
        Some(tls)
    }

    /// `server.auth`: tokens, and identities proven by client certificates
    /// (which need the listener to ask for them).
    fn authenticator(
        &mut self,
        path: &str,
        raw: &RawAuth,
        server: &super::schema::RawServer,
    ) -> Authenticator {
        let jwt = raw
            .jwt
            .as_ref()
            .and_then(|jwt| self.jwt(&key(path, "jwt"), jwt));
        if raw.tokens.is_empty() && raw.mtls.is_empty() && raw.jwt.is_none() {
            self.error(
                path,
                "names no tokens and no certificates: nobody could call the API; add some, or remove server.auth".into(),
            );
        }
        let tokens = if raw.tokens.is_empty() && (!raw.mtls.is_empty() || raw.jwt.is_some()) {
            None
        } else {
            Some(self.tokens(path, raw))
        };
        let client_ca = server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        if !raw.mtls.is_empty() && !client_ca {
            self.error(
                &key(path, "mtls"),
                "client certificates are only asked for with server.tls.client_ca_file".into(),
            );
        }
        let mut certificates = Vec::new();
        for (i, entry) in raw.mtls.iter().enumerate() {
            let path = format!("{path}.mtls[{i}]");
            let (Some(name), Some(san)) = (&entry.name, &entry.san) else {
                self.error(
                    &key(&path, if entry.name.is_none() { "name" } else { "san" }),
                    "missing: a certificate identity needs its name and the certificate's subject alternative name (`san`, a DNS name or a URI such as a SPIFFE ID)".into(),
                );
                continue;
            };
            let Some(role) = self.role(&path, entry.role.as_deref()) else {
                continue;
            };
            certificates.push(CertificateEntry {
                name: san.clone(),
                identity: Identity {
                    name: name.clone(),
                    role,
                    pools: entry
                        .pools
                        .clone()
                        .map_or_else(PoolScope::all, PoolScope::of),
                },
            });
        }
        let authenticator = match tokens {
            Some(tokens) => Authenticator::with_tokens(tokens).with_certificates(certificates),
            None => Authenticator::off().with_certificates(certificates),
        };
        match jwt {
            Some(jwt) => authenticator.with_jwt(jwt),
            None => authenticator,
        }
    }

    /// `server.auth.jwt`: the key set read now; issuer and audience required.
    fn jwt(&mut self, path: &str, raw: &RawJwt) -> Option<JwtVerifier> {
        let mut missing = |field: &str, value: &Option<String>| {
            if value.is_none() {
                self.error(
                    &key(path, field),
                    "missing: JWTs are checked against a key set, an issuer and an audience".into(),
                );
            }
        };
        missing("jwks_file", &raw.jwks_file);
        missing("issuer", &raw.issuer);
        missing("audience", &raw.audience);
        let (Some(file), Some(issuer), Some(audience)) =
            (&raw.jwks_file, &raw.issuer, &raw.audience)
        else {
            return None;
        };
        let keys = match files::read_regular(file, 1024 * 1024)
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(&bytes)
                    .map_err(|err| format!("not a JWK set: {err}"))
            }) {
            Ok(keys) if !keys.keys.is_empty() => keys,
            Ok(_) => {
                self.error(&key(path, "jwks_file"), format!("`{file}` holds no key"));
                return None;
            }
            Err(message) => {
                self.error(&key(path, "jwks_file"), format!("`{file}`: {message}"));
                return None;
            }
        };
        let allowed = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ];
        let mut algorithms = Vec::new();
        for name in raw
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()])
        {
            match name.parse::<jsonwebtoken::Algorithm>() {
                Ok(algorithm) if allowed.contains(&name.as_str()) => algorithms.push(algorithm),
                _ => self.error(
                    &key(path, "algorithms"),
                    format!("`{name}`: allowed values are {}", allowed.join(", ")),
                ),
            }
        }
        let &first = algorithms.first()?;
        let mut validation = jsonwebtoken::Validation::new(first);
        validation.algorithms = algorithms;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_nbf = true;
        // A token without them could be one the same issuer made for
        // another service.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway =
            u64::try_from(raw.leeway_ms.unwrap_or(30_000).max(0) / 1000).unwrap_or(30);
        Some(JwtVerifier {
            keys,
            validation,
            name_claim: raw.name_claim.clone().unwrap_or_else(|| "sub".into()),
            role_claim: raw.role_claim.clone().unwrap_or_else(|| "role".into()),
            pools_claim: raw.pools_claim.clone().unwrap_or_else(|| "pools".into()),
        })
    }

    fn log_format(&mut self, path: &str, name: Option<&str>) -> LogFormat {
        let Some(name) = name else {
            return LogFormat::default();
        };
        LogFormat::parse(name).unwrap_or_else(|| {
            self.error(
                &key(path, "log_format"),
                format!(
                    "`{name}`: allowed values are {}",
                    LogFormat::NAMES.join(", ")
                ),
            );
            LogFormat::default()
        })
    }

    fn role(&mut self, path: &str, role: Option<&str>) -> Option<Role> {
        match role.map(Role::parse) {
            Some(Some(role)) => Some(role),
            other => {
                let allowed: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                self.error(
                    &key(path, "role"),
                    format!(
                        "{}: allowed values are {}",
                        if other.is_none() {
                            "missing".to_string()
                        } else {
                            format!("`{}` is not a role", role.unwrap_or_default())
                        },
                        allowed.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// `server.auth.tokens`: each read now and kept only as its hash.
    fn tokens(&mut self, path: &str, raw: &RawAuth) -> Vec<TokenEntry> {
        let mut entries = Vec::new();
        let mut names = HashSet::new();
        for (i, token) in raw.tokens.iter().enumerate() {
            let path = format!("{path}.tokens[{i}]");
            let name = match token.name.as_deref() {
                Some(name) if is_valid_pool_name(name) => name.to_string(),
                _ => {
                    self.error(
                        &key(&path, "name"),
                        "missing or invalid: 1 to 63 letters, digits, `_` or `-` (it names the caller in logs)".into(),
                    );
                    continue;
                }
            };
            if !names.insert(name.clone()) {
                self.error(
                    &key(&path, "name"),
                    format!("duplicate token name `{name}`"),
                );
            }
            let Some(role) = self.role(&path, token.role.as_deref()) else {
                continue;
            };
            let Some(sha256) = self.token_hash(&path, "", token) else {
                continue;
            };
            // One secret, two identities: whoever holds it would be either,
            // and the stronger would win. Refused, like a certificate that
            // names two identities.
            if let Some(other) = entries
                .iter()
                .find(|entry: &&TokenEntry| entry.sha256 == sha256)
            {
                self.error(
                    &path,
                    format!(
                        "the same token as `{}`: each identity needs a token of its own",
                        other.identity.name
                    ),
                );
                continue;
            }
            let pools = match &token.pools {
                None => PoolScope::all(),
                Some(pools) => PoolScope::of(pools.clone()),
            };
            entries.push(TokenEntry {
                sha256,
                identity: Identity { name, role, pools },
            });
        }
        entries
    }

    /// The hash of one token: given, or of the token read from its source.
    /// `prefix` precedes the field names in errors (`metrics_` for the
    /// metrics token).
    fn token_hash(&mut self, path: &str, prefix: &str, token: &RawToken) -> Option<[u8; 32]> {
        let sources = [
            token.token_sha256.is_some(),
            token.token_env.is_some(),
            token.token_file.is_some(),
        ];
        if sources.iter().filter(|&&given| given).count() != 1 {
            self.error(
                &key(path, &format!("{prefix}token_sha256")),
                "set exactly one of token_sha256, token_env, token_file".into(),
            );
            return None;
        }
        if let Some(hex) = &token.token_sha256 {
            return match decode_sha256(hex) {
                Some(hash) => Some(hash),
                None => {
                    self.error(
                        &key(path, &format!("{prefix}token_sha256")),
                        "not a SHA-256 in hex (64 hex digits; e.g. `printf %s \"$TOKEN\" | sha256sum`)".into(),
                    );
                    None
                }
            };
        }
        let (field, secret) = match (&token.token_env, &token.token_file) {
            (Some(name), _) => ("token_env", secret::resolve(Some(name), None)),
            (_, Some(file)) => ("token_file", secret::resolve(None, Some(file))),
            (None, None) => return None,
        };
        match secret {
            Ok((_, Some(value))) if value.expose().len() >= 16 => {
                Some(auth::hash(value.expose().as_bytes()))
            }
            Ok(_) => {
                self.error(
                    &key(path, &format!("{prefix}{field}")),
                    "the token is shorter than 16 characters: use a long random token".into(),
                );
                None
            }
            Err(message) => {
                self.error(&key(path, &format!("{prefix}{field}")), message);
                None
            }
        }
    }
}

/// 64 hex digits as 32 bytes.
fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// A pool's user and password, and where the password came from.
struct Login {
    user: String,
    source: PasswordSource,
    password: Option<Secret>,
}

/// The largest row, error or notice a pool connection takes from
/// PostgreSQL: a row over `max_result_bytes` could not be returned anyway,
/// and a row's message carries a few bytes of framing per value more than
/// its values.
fn max_message_bytes(max_result_bytes: u64) -> u64 {
    max_result_bytes.saturating_add(64 * 1024)
}

fn builtin_defaults() -> PoolDefaults {
    PoolDefaults {
        max_message_bytes: max_message_bytes(4_000_000),
        token_file: None,
        authentication_timeout: Duration::from_secs(30),
        password_needs_tls: false,
        host: "localhost".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        password_source: PasswordSource::None,
        credentials: BTreeMap::new(),
        sslmode: SslMode::Disable,
        tls: TlsFiles::default(),
        limits: PoolLimits {
            max_connections: 10,
            min_connections: 0,
            connection_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            health_check_interval: Duration::from_secs(60),
            statement_timeout: None,
            max_lifetime: Duration::from_secs(30 * 60),
        },
        recovery: RecoveryConfig {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
        alerts: AlertThresholds {
            utilization: 0.8,
            error_rate: 0.05,
            acquire_wait: Duration::from_secs(1),
        },
        sessions: SessionLimits {
            max_connections: None,
            idle_timeout: Duration::from_secs(180),
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
            max_duration: None,
            leak_threshold: None,
        },
    }
}

pub(crate) fn is_valid_pool_name(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    starts_with_letter
        && name.len() <= MAX_POOL_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Rewrites a serde_yaml error into our shape, adding a "did you mean" to
/// unknown keys.
fn document_error(line: Option<usize>, message: String) -> ConfigError {
    ConfigError {
        path: "<document>".into(),
        line,
        message,
    }
}

/// Refuses, before parsing, a file too large or nested too deep to parse
/// in reasonable time.
fn bounded(text: &str) -> Result<(), Vec<ConfigError>> {
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![document_error(
            None,
            format!(
                "the file has {} bytes; a configuration may have at most {MAX_FILE_BYTES}",
                text.len()
            ),
        )]);
    }
    // YAML's own scanner (yaml-rust2, streaming and iterative) counts the
    // nesting, so quotes, comments and plain scalars such as `it's` are
    // read as YAML reads them, and a deep file stops at the limit.
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let too_deep = |line: usize| {
            Err(vec![document_error(
                Some(line),
                format!("collections nested more than {MAX_DEPTH} deep"),
            )])
        };
        match parser.next_token() {
            // The scanner's own limit (it looks ahead through flow
            // collections before it reports their start).
            Err(err) if err.info().contains("recursion limit") => {
                return too_deep(err.marker().line())
            }
            // Syntax errors are serde_yaml's to report, with its message.
            Ok((yaml_rust2::parser::Event::StreamEnd, _)) | Err(_) => return Ok(()),
            Ok((
                yaml_rust2::parser::Event::MappingStart(..)
                | yaml_rust2::parser::Event::SequenceStart(..),
                mark,
            )) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return too_deep(mark.line());
                }
            }
            Ok((
                yaml_rust2::parser::Event::MappingEnd | yaml_rust2::parser::Event::SequenceEnd,
                _,
            )) => depth = depth.saturating_sub(1),
            Ok(_) => {}
        }
    }
}

/// A tab in a line's indentation, which YAML forbids, with its own message
/// (the parser's is "found character that cannot start any token").
fn tab_indent(text: &str) -> Option<ConfigError> {
    text.lines().enumerate().find_map(|(number, line)| {
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        indent.find('\t').map(|at| {
            document_error(
                Some(number + 1),
                format!(
                    "column {}: a tab in the indentation; YAML indents with spaces only",
                    at + 1
                ),
            )
        })
    })
}

fn from_serde(err: &serde_yaml::Error) -> ConfigError {
    let line = err.location().map(|location| location.line());
    let text = err.to_string();
    // serde_yaml appends " at line L column C"; the line is reported separately.
    let text = match text.find(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    let (path, message) = match text.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => ("<document>".to_string(), text.clone()),
    };
    let message = match unknown_field(&message) {
        Some((field, allowed)) => {
            let hint = closest(&field, &allowed)
                .map(|best| format!("did you mean `{best}`? "))
                .unwrap_or_default();
            let path = if path == "<document>" {
                String::new()
            } else {
                format!("{path}.")
            };
            return ConfigError {
                path: format!("{path}{field}"),
                line,
                message: format!(
                    "unknown key; {hint}allowed keys here: {}",
                    allowed.join(", ")
                ),
            };
        }
        None => message,
    };
    ConfigError {
        path,
        line,
        message,
    }
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`") into the field and the allowed names.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let allowed = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), allowed))
}

fn closest<'a>(field: &str, allowed: &'a [String]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|candidate| (strsim::levenshtein(field, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 3.max(candidate.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}
