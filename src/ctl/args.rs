//! `poolplane ctl`'s command line (clap derive): the connection and output
//! flags every subcommand takes, the subcommands and their flags, and the
//! parsers of durations (`10m`, `500ms`).

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use poolplane::client::ConnectArgs;
use poolplane::proto;

/// Operate a running poolplane over its gRPC API. Every flag here may
/// also come after the subcommand (`poolplane ctl pools --addr ...`).
#[derive(Debug, Args)]
#[command(mut_args(|arg| arg.global(true)))]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// table: aligned columns for people; json: the response message as JSON
    /// (watch: one event per line).
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Deadline of each call (not watch): 30s, 2m, 500ms; a bare number is seconds.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub(crate) timeout: Duration,
    #[command(subcommand)]
    pub(crate) command: CtlCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

// Parsed once; the size of `pool create`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum CtlCommand {
    /// Every pool, one line each (PgBouncer's SHOW POOLS).
    Pools,
    /// Show, create, change or delete one pool.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Pause a pool: new calls wait (they do not fail) until `resume`.
    Pause(PauseArgs),
    /// End a pause: the waiting calls run, in arrival order.
    Resume { name: String },
    /// Replace every server connection of a pool (no call fails).
    Reconnect { name: String },
    /// Read the server's configuration file again and apply it (as SIGHUP does).
    Reload,
    /// Live sessions (PgBouncer's SHOW CLIENTS).
    Sessions {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
    },
    /// End a session: its statement is cancelled, its transaction rolled back.
    Kill {
        #[arg(value_name = "SESSION_ID")]
        session_id: u64,
    },
    /// Active alerts (`--all`: ended ones too); `alerts ack ID`, `alerts clear ID`.
    Alerts(AlertsArgs),
    /// A pool's metrics samples.
    History {
        name: String,
        /// Only samples this recent: 10m, 1h, 90s.
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        since: Option<Duration>,
    },
    /// Health as the monitor knows it, of one pool or all (`--probe`: check now).
    Health {
        name: Option<String>,
        /// Probe the database now (CheckHealth; an operator's right) instead
        /// of showing the last check.
        #[arg(long)]
        probe: bool,
    },
    /// Stream events as they happen, one per line, until Ctrl-C or the server ends it.
    Watch(WatchArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum PoolCommand {
    /// Everything about one pool: settings, connections, statistics, health.
    Show { name: String },
    /// Create and start a pool.
    Create(CreateArgs),
    /// Change a pool live: limits, timeouts, thresholds, or its target (a failover).
    Update(UpdateArgs),
    /// Drain and remove a pool.
    Delete {
        name: String,
        /// Cancel statements still running at once instead of waiting for them.
        #[arg(long)]
        force: bool,
        /// How long statements may run before they are cancelled [default: the server's drain_timeout_ms].
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        drain_timeout: Option<Duration>,
    },
}

/// Limits, timeouts and alert thresholds, as `CreatePool` and `UpdatePool`
/// name them; unset ones are left alone (update) or inherited (create).
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// max_connections.
    #[arg(long, visible_alias = "max-connections", value_name = "N")]
    pub(crate) max: Option<u32>,
    /// min_connections.
    #[arg(long, visible_alias = "min-connections", value_name = "N")]
    pub(crate) min: Option<u32>,
    #[arg(long, value_name = "MS")]
    pub(crate) connection_timeout_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub(crate) idle_timeout_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub(crate) health_check_interval_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub(crate) statement_timeout_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub(crate) max_lifetime_ms: Option<u64>,
    #[arg(long, value_name = "RATIO")]
    pub(crate) utilization_alert_threshold: Option<f64>,
    #[arg(long, value_name = "RATIO")]
    pub(crate) error_rate_alert_threshold: Option<f64>,
    #[arg(long, value_name = "MS")]
    pub(crate) acquire_wait_alert_threshold_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) database: String,
    /// [default: the server's default_pool host]
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// [default: the server's default_pool port]
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// [default: the server's default_pool user]
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// A login from the server's connection_pool.credentials (user and password).
    #[arg(long)]
    pub(crate) credential: Option<String>,
    /// disable, prefer or require.
    #[arg(long)]
    pub(crate) sslmode: Option<String>,
    #[arg(long)]
    pub(crate) application_name: Option<String>,
    /// Answer with the existing pool instead of ALREADY_EXISTS.
    #[arg(long)]
    pub(crate) if_not_exists: bool,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// A new target host (a failover).
    #[arg(long)]
    pub(crate) host: Option<String>,
    #[arg(long)]
    pub(crate) port: Option<u16>,
    #[arg(long)]
    pub(crate) database: Option<String>,
    #[arg(long)]
    pub(crate) user: Option<String>,
    #[arg(long)]
    pub(crate) credential: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PauseArgs {
    pub(crate) name: String,
    /// How long work in flight may take before it is cancelled [default: the server's drain_timeout_ms].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub(crate) wait: Option<Duration>,
    /// Cancel work in flight at once.
    #[arg(long)]
    pub(crate) force: bool,
    /// Close every server connection while paused (for a database restart).
    #[arg(long)]
    pub(crate) drain_connections: bool,
    /// Most calls that may wait for the resume [default: 1000].
    #[arg(long, value_name = "N")]
    pub(crate) queue_limit: Option<u32>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AlertsArgs {
    #[command(subcommand)]
    pub(crate) action: Option<AlertAction>,
    /// Also the ended alerts the server still keeps.
    #[arg(long)]
    pub(crate) all: bool,
    /// Only this pool's.
    #[arg(long)]
    pub(crate) pool: Option<String>,
    /// Only this severity.
    #[arg(long, value_enum)]
    pub(crate) severity: Option<Severity>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertAction {
    /// Mark an active alert as seen (it stays active until its condition clears).
    Ack {
        id: u64,
        /// Who acknowledges [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
    /// End an active alert now (it fires again if its condition still holds).
    Clear { id: u64 },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Severity {
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub(crate) fn to_proto(self) -> proto::AlertSeverity {
        match self {
            Severity::Warning => proto::AlertSeverity::Warning,
            Severity::Error => proto::AlertSeverity::Error,
            Severity::Critical => proto::AlertSeverity::Critical,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only this pool's events (repeat for more) [default: every pool, also ones created later].
    #[arg(long = "pool", value_name = "POOL")]
    pub(crate) pools: Vec<String>,
    /// Only these kinds, comma-separated [default: all but metrics-snapshot].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) kinds: Vec<WatchKind>,
    /// Start with the current state of every pool and active alert.
    #[arg(long)]
    pub(crate) snapshot: bool,
}

/// The event kinds a watch can ask for (stream control always comes).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum WatchKind {
    PoolCreated,
    PoolUpdated,
    PoolRemoved,
    HealthChanged,
    ConnectionLost,
    ConnectionRecovered,
    CheckCompleted,
    AlertTriggered,
    AlertAcknowledged,
    AlertResolved,
    MetricsSnapshot,
    SessionLeak,
    ConfigReloaded,
    ConfigReloadFailed,
}

impl WatchKind {
    pub(crate) fn to_proto(self) -> proto::EventKind {
        use proto::EventKind as K;
        match self {
            WatchKind::PoolCreated => K::PoolCreated,
            WatchKind::PoolUpdated => K::PoolUpdated,
            WatchKind::PoolRemoved => K::PoolRemoved,
            WatchKind::HealthChanged => K::HealthChanged,
            WatchKind::ConnectionLost => K::ConnectionLost,
            WatchKind::ConnectionRecovered => K::ConnectionRecovered,
            WatchKind::CheckCompleted => K::CheckCompleted,
            WatchKind::AlertTriggered => K::AlertTriggered,
            WatchKind::AlertAcknowledged => K::AlertAcknowledged,
            WatchKind::AlertResolved => K::AlertResolved,
            WatchKind::MetricsSnapshot => K::MetricsSnapshot,
            WatchKind::SessionLeak => K::SessionLeak,
            WatchKind::ConfigReloaded => K::ConfigReloaded,
            WatchKind::ConfigReloadFailed => K::ConfigReloadFailed,
        }
    }
}

/// The longest duration any flag takes: 30 days.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `500ms`, `30s`, `10m`, `2h`, `1d`, or a bare number of seconds
/// (fractions allowed: `1.5s`); more than zero, at most 30 days.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use ms, s, m, h or d (e.g. 10m)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: use e.g. 500ms, 30s, 10m, 2h"))?;
    let seconds = value * seconds_per_unit;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("`{text}`: more than zero, please"));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("`{text}`: at most 30 days"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "", "0", "0s", "-1s", "ten", "5 weeks", "1e400", "31d", "1.2.3s",
        ] {
            assert!(duration(bad).is_err(), "{bad} accepted");
        }
    }
}
