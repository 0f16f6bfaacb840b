//! The YAML file as written: serde structs that mirror `connection_pool` key
//! for key. Every struct denies unknown keys so a typo is an error, not a
//! silently ignored setting. Nothing here applies defaults across sections or
//! checks ranges; `validate` does that.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRoot {
    pub(crate) connection_pool: RawRoot,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoot {
    pub(crate) enabled: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) default_pool: RawPool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) pools: Vec<RawPool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) health_monitoring: RawHealthMonitoring,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) monitoring: RawMonitoring,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) security: RawSecurity,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) server: RawServer,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) credentials: Vec<RawCredential>,
}

/// A named database login that pools (also those created over the API)
/// refer to, so that requests never name the server's files or variables.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub(crate) name: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password_env: Option<String>,
    pub(crate) password_file: Option<String>,
}

/// A section written with no value (`default_pool:` or `default_pool: ~`)
/// is the same as a section left out, as an empty `connection_pool:` is.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One pool, or (as `default_pool`) the values every pool inherits.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) name: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<i64>,
    pub(crate) database: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password_env: Option<String>,
    pub(crate) password_file: Option<String>,
    /// A name from `credentials`: its user and password.
    pub(crate) credential: Option<String>,
    pub(crate) sslmode: Option<String>,
    pub(crate) application_name: Option<String>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) min_connections: Option<i64>,
    pub(crate) connection_timeout_ms: Option<i64>,
    pub(crate) idle_timeout_ms: Option<i64>,
    pub(crate) health_check_interval_ms: Option<i64>,
    pub(crate) statement_timeout_ms: Option<i64>,
    pub(crate) max_lifetime_ms: Option<i64>,
    pub(crate) max_retries: Option<i64>,
    pub(crate) retry_delay_ms: Option<i64>,
    pub(crate) max_retry_delay_ms: Option<i64>,
    pub(crate) utilization_alert_threshold: Option<f64>,
    pub(crate) error_rate_alert_threshold: Option<f64>,
    pub(crate) acquire_wait_alert_threshold_ms: Option<i64>,
    pub(crate) max_session_connections: Option<i64>,
    pub(crate) session_idle_timeout_ms: Option<i64>,
    pub(crate) idle_in_transaction_timeout_ms: Option<i64>,
    pub(crate) max_session_duration_ms: Option<i64>,
    pub(crate) leak_detection_threshold_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthMonitoring {
    pub(crate) max_probe_connections: Option<i64>,
    pub(crate) enabled: Option<bool>,
    pub(crate) check_interval_ms: Option<i64>,
    pub(crate) connection_timeout_ms: Option<i64>,
    pub(crate) idle_timeout_ms: Option<i64>,
    pub(crate) enable_automatic_recovery: Option<bool>,
    pub(crate) max_recovery_attempts: Option<i64>,
    pub(crate) degraded_latency_ms: Option<i64>,
    pub(crate) failure_threshold: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMonitoring {
    pub(crate) enabled: Option<bool>,
    pub(crate) collection_interval_ms: Option<i64>,
    pub(crate) retention_period_ms: Option<i64>,
    pub(crate) enable_alerts: Option<bool>,
    pub(crate) connection_utilization_threshold: Option<f64>,
    pub(crate) error_rate_threshold: Option<f64>,
    pub(crate) acquire_wait_threshold_ms: Option<i64>,
    pub(crate) alert_fire_after_samples: Option<i64>,
    pub(crate) alert_resolve_after_samples: Option<i64>,
    pub(crate) alert_history: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecurity {
    #[serde(default)]
    pub(crate) ssl: RawSsl,
    #[serde(default)]
    pub(crate) authentication: RawAuthentication,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSsl {
    pub(crate) enabled: Option<bool>,
    pub(crate) verify_peer: Option<bool>,
    pub(crate) ca_certificate: Option<String>,
    pub(crate) client_certificate: Option<String>,
    pub(crate) client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthentication {
    pub(crate) method: Option<String>,
    pub(crate) timeout_ms: Option<i64>,
    /// For `oauth2`: the file holding the current access token.
    pub(crate) token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) grpc_listen: Option<String>,
    pub(crate) http_listen: Option<String>,
    pub(crate) max_result_rows: Option<i64>,
    pub(crate) max_result_bytes: Option<i64>,
    pub(crate) max_request_bytes: Option<i64>,
    pub(crate) shutdown_timeout_ms: Option<i64>,
    pub(crate) drain_timeout_ms: Option<i64>,
    pub(crate) event_replay_buffer: Option<i64>,
    pub(crate) event_subscriber_buffer: Option<i64>,
    pub(crate) allowed_targets: Option<Vec<String>>,
    pub(crate) max_pools: Option<i64>,
    pub(crate) allow_insecure: Option<bool>,
    pub(crate) auth: Option<RawAuth>,
    pub(crate) tls: Option<RawServerTls>,
    pub(crate) metrics_token_env: Option<String>,
    pub(crate) max_calls_per_caller: Option<i64>,
    pub(crate) reflection: Option<bool>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) handshake_timeout_ms: Option<i64>,
    pub(crate) metrics_token_file: Option<String>,
    pub(crate) log_format: Option<String>,
    pub(crate) trace_sql_text: Option<bool>,
}

/// `server.tls`: TLS on the gRPC listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub(crate) cert_file: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) client_ca_file: Option<String>,
}

/// `server.auth`: how callers of the API prove who they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) tokens: Vec<RawToken>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) mtls: Vec<RawCertificateIdentity>,
    pub(crate) jwt: Option<RawJwt>,
}

/// `server.auth.jwt`: OAuth2 access tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub(crate) jwks_file: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) algorithms: Option<Vec<String>>,
    pub(crate) leeway_ms: Option<i64>,
    pub(crate) name_claim: Option<String>,
    pub(crate) role_claim: Option<String>,
    pub(crate) pools_claim: Option<String>,
}

/// A client certificate name (DNS or URI subject alternative name) and
/// whom it proves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificateIdentity {
    pub(crate) name: Option<String>,
    pub(crate) san: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) pools: Option<Vec<String>>,
}

/// One bearer token: its hash, or where to read it, and whom it proves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub(crate) name: Option<String>,
    pub(crate) token_sha256: Option<String>,
    pub(crate) token_env: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) pools: Option<Vec<String>>,
}
