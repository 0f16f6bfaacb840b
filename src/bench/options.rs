//! `poolplane bench`'s command line for a load run ([`LoadArgs`], parsed by
//! clap in `main.rs`) and its validation into [`LoadOptions`], the only form
//! the load generator takes: every combination that makes no sense is
//! refused here with a message naming the flags, before anything connects.

use std::path::PathBuf;
use std::time::Duration;

use super::params::value_from_json;
use super::BenchError;
use crate::client::{ConnectArgs, Target, TlsFiles};
use crate::config::Secret;
use crate::proto;

/// Most concurrent clients: beyond this a load generator measures itself.
const MAX_CLIENTS: usize = 10_000;
/// Most statements in flight per session client.
const MAX_PIPELINE: u32 = 4_096;
/// Most calls per second an open loop schedules (the schedule hands out
/// one ticket at a time; far beyond what one machine sends, it falls behind
/// without sending anything).
const MAX_RATE: f64 = 20_000.0;
/// Most calls a run may be asked for.
const MAX_REQUESTS: u64 = 1_000_000_000;

/// The statement a check runs instead of the workload under `--dirty-every`:
/// true when the connection carries anything a dirty caller left behind
/// (the setting, an advisory lock, a temporary relation of its own).
pub const CHECK_SQL: &str = "SELECT pg_catalog.current_setting('work_mem') = '7777kB' \
     OR EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
     AND pid = pg_catalog.pg_backend_pid()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_class \
     WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

/// What a dirty Execute call runs: a setting and an advisory lock, through
/// functions Execute accepts (the lock's key is the backend's own, so dirty
/// calls on different connections never wait for each other).
pub const DIRTY_EXECUTE_SQL: &str = "SELECT pg_catalog.set_config('work_mem', '7777kB', false), \
     pg_catalog.pg_advisory_lock(777777, pg_catalog.pg_backend_pid())";

/// What a dirty session runs before it goes away without cleaning up.
pub const DIRTY_SESSION_SQL: [&str; 3] = [
    "SET work_mem = '7777kB'",
    "CREATE TEMP TABLE poolplane_bench_dirty (x int)",
    "SELECT pg_catalog.pg_advisory_lock(777777, pg_catalog.pg_backend_pid())",
];

/// One call per request, or statements on held sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `Query/Execute` per call.
    Execute,
    /// `Query/Session` streams; a call is one answered statement.
    Session,
}

/// The flags of `poolplane bench` (a load run against a running server).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Where the server is, TLS and the token (shared with `poolplane ctl`).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The pool to run on.
    #[arg(long, default_value = "postgres")]
    pub pool: String,
    /// select1, sleep:<ms>, sql (with --sql), or getpool (PoolAdmin/GetPool, no database).
    #[arg(long, default_value = "select1")]
    pub workload: String,
    /// The statement of --workload sql.
    #[arg(long, value_name = "TEXT")]
    pub sql: Option<String>,
    /// A parameter of --workload sql, as a poolplane.v1.Value in protobuf JSON,
    /// e.g. '{"intValue":"41"}'; repeat for $2, $3, ...
    #[arg(long = "param", value_name = "JSON")]
    pub params: Vec<String>,
    /// execute: one Query/Execute per call; session: Query/Session streams.
    #[arg(long, value_enum, default_value_t = Mode::Execute)]
    pub mode: Mode,
    /// Session mode: transactions of N statements (BEGIN, N, COMMIT) [default: 1 without --pipeline].
    #[arg(long, value_name = "N")]
    pub statements: Option<u32>,
    /// Session mode: keep up to D statements in flight per session (no BEGIN/COMMIT unless --statements).
    #[arg(long, value_name = "D")]
    pub pipeline: Option<u32>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// HTTP/2 connections; callers are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds to measure [default: 10, unless --requests].
    #[arg(long, value_name = "SECS", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Calls to measure, then stop.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Open loop: calls scheduled at R per second in all; latency counts from
    /// each call's scheduled start.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Seconds of calls before measuring (not counted).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup: f64,
    /// Every Nth call (execute) or session (session mode) leaves session
    /// state behind; every other call checks for what others left (a leak).
    #[arg(long, value_name = "N")]
    pub dirty_every: Option<u64>,
    /// Deadline of each Execute or GetPool call, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Also write every figure and the conditions to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// What each call runs.
#[derive(Debug, Clone)]
pub enum Workload {
    Select1,
    Sleep {
        ms: u64,
    },
    Sql {
        sql: String,
        params: Vec<proto::Value>,
    },
    /// `PoolAdmin/GetPool`: the gRPC stack without a database.
    GetPool,
}

impl Workload {
    /// The statement it runs; `None` for GetPool.
    pub fn sql(&self) -> Option<String> {
        match self {
            Workload::Select1 => Some("SELECT 1".into()),
            Workload::Sleep { ms } => Some(format!("SELECT pg_catalog.pg_sleep({ms} / 1000.0)")),
            Workload::Sql { sql, .. } => Some(sql.clone()),
            Workload::GetPool => None,
        }
    }

    pub fn params(&self) -> Vec<proto::Value> {
        match self {
            Workload::Sql { params, .. } => params.clone(),
            _ => Vec::new(),
        }
    }

    /// As `--workload` names it.
    pub fn name(&self) -> String {
        match self {
            Workload::Select1 => "select1".into(),
            Workload::Sleep { ms } => format!("sleep:{ms}"),
            Workload::Sql { .. } => "sql".into(),
            Workload::GetPool => "getpool".into(),
        }
    }
}

/// When the measured part ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// A validated load run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub addr: String,
    pub tls: Option<TlsFiles>,
    pub token: Option<Secret>,
    pub pool: String,
    pub workload: Workload,
    pub mode: Mode,
    /// Session mode: statements per transaction; `None` = no transactions.
    pub transaction: Option<u32>,
    /// Session mode: statements in flight per session (1 = wait for each answer).
    pub depth: u32,
    /// `--pipeline` was given.
    pub pipelined: bool,
    pub clients: usize,
    pub connections: usize,
    pub stop: Stop,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub dirty_every: Option<u64>,
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

fn bad(message: impl Into<String>) -> BenchError {
    BenchError::Options(message.into())
}

/// The longest time any flag takes: 30 days.
const MAX_SECONDS: f64 = 30.0 * 24.0 * 3600.0;

fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration, BenchError> {
    let ok =
        value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0)) && value <= MAX_SECONDS;
    if !ok {
        let what = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(bad(format!(
            "{flag} takes seconds, {what}, at most 30 days (got {value})"
        )));
    }
    Duration::try_from_secs_f64(value).map_err(|_| bad(format!("{flag} {value} is out of range")))
}

impl LoadArgs {
    /// Checks every flag against the others. `token` is what main.rs read
    /// from the environment (`--token-env`); `progress` whether stderr is a
    /// terminal.
    pub fn into_options(
        self,
        token: Option<Secret>,
        progress: bool,
    ) -> Result<LoadOptions, BenchError> {
        let Target { addr, tls } = self.connect.target()?;
        if self.pool.is_empty() {
            return Err(bad("--pool must not be empty"));
        }

        let workload = self.workload()?;
        if self.mode == Mode::Session && matches!(workload, Workload::GetPool) {
            return Err(bad(
                "--workload getpool calls PoolAdmin/GetPool: use it with --mode execute",
            ));
        }
        if self.dirty_every.is_some() && matches!(workload, Workload::GetPool) {
            return Err(bad(
                "--dirty-every needs a database: not with --workload getpool",
            ));
        }
        if self.mode == Mode::Execute && (self.statements.is_some() || self.pipeline.is_some()) {
            return Err(bad("--statements and --pipeline are for --mode session"));
        }
        if self.statements == Some(0) {
            return Err(bad("--statements takes 1 or more"));
        }
        if self.pipeline == Some(0) {
            return Err(bad("--pipeline takes 1 or more"));
        }
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(bad(format!(
                "--clients takes 1 to {MAX_CLIENTS} (each client is a task with its own buffers)"
            )));
        }
        if self.pipeline.is_some_and(|depth| depth > MAX_PIPELINE) {
            return Err(bad(format!("--pipeline takes 1 to {MAX_PIPELINE}")));
        }
        if let Some(path) = self.json.as_ref().filter(|path| path.exists()) {
            return Err(bad(format!(
                "--json {}: the file exists; remove it or name another (poolplane bench never overwrites a file)",
                path.display()
            )));
        }
        if self.connections == 0 {
            return Err(bad("--connections takes 1 or more"));
        }
        let stop = match (self.duration, self.requests) {
            (_, Some(0)) => return Err(bad("--requests takes 1 or more")),
            (_, Some(n)) if n > MAX_REQUESTS => {
                return Err(bad(format!("--requests takes 1 to {MAX_REQUESTS}")))
            }
            (_, Some(n)) => Stop::Requests(n),
            (Some(secs), None) => Stop::After(seconds("--duration", secs, false)?),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
                return Err(bad(format!(
                    "--rate takes calls per second, more than 0 and at most {MAX_RATE} (got {rate})"
                )));
            }
        }
        if let Some(n) = self.dirty_every {
            if n < 2 {
                return Err(bad(
                    "--dirty-every takes 2 or more (the calls in between check for leaks)",
                ));
            }
        }
        let pipelined = self.pipeline.is_some();
        let transaction = match (self.statements, pipelined) {
            (Some(n), _) => Some(n),
            (None, false) => Some(1),
            (None, true) => None,
        };
        Ok(LoadOptions {
            addr,
            tls,
            token,
            pool: self.pool,
            workload,
            mode: self.mode,
            transaction: if self.mode == Mode::Session {
                transaction
            } else {
                None
            },
            depth: self.pipeline.unwrap_or(1),
            pipelined,
            clients: self.clients,
            connections: self.connections.min(self.clients),
            stop,
            rate: self.rate,
            warmup: seconds("--warmup", self.warmup, true)?,
            dirty_every: self.dirty_every,
            timeout: seconds("--timeout", self.timeout, false)?,
            progress,
        })
    }

    fn workload(&self) -> Result<Workload, BenchError> {
        let kind = self.workload.as_str();
        if kind != "sql" && (self.sql.is_some() || !self.params.is_empty()) {
            return Err(bad("--sql and --param go with --workload sql"));
        }
        match kind {
            "select1" => Ok(Workload::Select1),
            "getpool" => Ok(Workload::GetPool),
            "sql" => {
                let sql = match &self.sql {
                    Some(sql) if !sql.trim().is_empty() => sql.clone(),
                    _ => return Err(bad("--workload sql needs --sql TEXT")),
                };
                let params = self
                    .params
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        value_from_json(text)
                            .map_err(|why| bad(format!("--param #{} (${}): {why}", i + 1, i + 1)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Workload::Sql { sql, params })
            }
            other => match other.strip_prefix("sleep:") {
                Some(ms) => ms
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 3_600_000)
                    .map(|ms| Workload::Sleep { ms })
                    .ok_or_else(|| {
                        bad(format!(
                            "--workload sleep:<ms> takes milliseconds up to an hour (got `{ms}`)"
                        ))
                    }),
                None => Err(bad(format!(
                    "--workload `{other}`: choose select1, sleep:<ms>, sql (with --sql) or getpool"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn options(args: &[&str]) -> Result<LoadOptions, BenchError> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map_err(|e| BenchError::Options(e.to_string()))?
            .load
            .into_options(None, false)
    }

    fn refused(args: &[&str]) -> String {
        match options(args) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let o = options(&[]).expect("defaults are valid");
        assert_eq!(o.addr, "http://127.0.0.1:50051");
        assert_eq!(o.pool, "postgres");
        assert_eq!(o.mode, Mode::Execute);
        assert!(matches!(o.workload, Workload::Select1));
        assert!(matches!(o.stop, Stop::After(d) if d == Duration::from_secs(10)));
        assert_eq!(o.warmup, Duration::from_secs(1));
        assert_eq!(o.connections, 1);
    }

    #[test]
    fn session_shapes() {
        let o = options(&["--mode", "session"]).expect("valid");
        assert_eq!((o.transaction, o.depth, o.pipelined), (Some(1), 1, false));
        let o = options(&["--mode", "session", "--pipeline", "16"]).expect("valid");
        assert_eq!((o.transaction, o.depth, o.pipelined), (None, 16, true));
        let o =
            options(&["--mode", "session", "--pipeline", "4", "--statements", "3"]).expect("valid");
        assert_eq!((o.transaction, o.depth), (Some(3), 4));
    }

    #[test]
    fn workloads() {
        let o = options(&["--workload", "sleep:250"]).expect("valid");
        assert_eq!(
            o.workload.sql().as_deref(),
            Some("SELECT pg_catalog.pg_sleep(250 / 1000.0)")
        );
        let o = options(&[
            "--workload",
            "sql",
            "--sql",
            "SELECT $1::int8 + $2",
            "--param",
            r#"{"intValue":"41"}"#,
            "--param",
            r#"{"int_value":1}"#,
        ])
        .expect("valid");
        assert_eq!(o.workload.params().len(), 2);
    }

    #[test]
    fn nonsense_is_refused_with_the_flags_named() {
        assert!(refused(&["--clients", "0"]).contains("--clients"));
        assert!(refused(&["--workload", "nope"]).contains("select1, sleep:<ms>, sql"));
        assert!(refused(&["--workload", "sleep:x"]).contains("sleep:<ms>"));
        assert!(refused(&["--workload", "sql"]).contains("--sql"));
        assert!(refused(&["--sql", "SELECT 1"]).contains("--workload sql"));
        assert!(refused(&["--pipeline", "4"]).contains("--mode session"));
        assert!(refused(&["--mode", "session", "--pipeline", "0"]).contains("--pipeline"));
        assert!(refused(&["--mode", "session", "--workload", "getpool"]).contains("getpool"));
        assert!(refused(&["--rate", "0"]).contains("--rate"));
        // Found by a red team: these grew without bound or never ended.
        assert!(refused(&["--clients", "100000000"]).contains("--clients"));
        assert!(refused(&["--rate", "1e308"]).contains("--rate"));
        assert!(refused(&["--rate", "100000"]).contains("--rate"));
        assert!(refused(&["--requests", "18446744073709551615"]).contains("--requests"));
        assert!(refused(&["--mode", "session", "--pipeline", "1000000"]).contains("--pipeline"));
        let existing = std::env::temp_dir().join(format!("pp-bench-exists-{}", std::process::id()));
        std::fs::write(&existing, "keep me").expect("write");
        let path = existing.display().to_string();
        assert!(refused(&["--json", &path]).contains("exists"));
        assert_eq!(std::fs::read_to_string(&existing).expect("read"), "keep me");
        std::fs::remove_file(&existing).expect("remove");
        assert!(refused(&["--duration", "0"]).contains("--duration"));
        assert!(refused(&["--warmup", "1e300"]).contains("--warmup"));
        assert!(refused(&["--timeout", "NaN"]).contains("--timeout"));
        assert!(refused(&["--requests", "0"]).contains("--requests"));
        assert!(refused(&["--dirty-every", "1"]).contains("--dirty-every"));
        assert!(refused(&["--addr", "https://db:1"]).contains("--ca-file"));
        assert!(refused(&["--ca-file", "ca.pem"]).contains("https://"));
        assert!(refused(&["--addr", "ftp://x"]).contains("--addr"));
        assert!(
            refused(&["--workload", "sql", "--sql", "SELECT $1", "--param", "{}"])
                .contains("--param #1")
        );
        assert!(refused(&["--duration", "3", "--requests", "5"]).contains("--requests"));
    }
}
