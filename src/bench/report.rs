//! What `poolplane bench` reports: the figures (calls, calls/s, latency
//! percentiles from the merged histogram, errors by gRPC code, leaks), the
//! conditions they were measured in (date, CPU model and cores, the options,
//! the pool's `max_connections`, poolplane's version), the summary text for
//! stdout, the JSON for `--json`, the exit code, and the progress bar on
//! stderr while the run lasts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::load::{Shared, Tally};
use super::options::{LoadOptions, Mode, Stop};
use super::BenchError;

/// Everything a run measured, and under which conditions.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub poolplane_version: String,
    /// When the run ended, UTC (RFC 3339).
    pub date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    pub cores: usize,
    pub options: RunOptions,
    /// As `PoolAdmin/GetPool` reported it; absent if the caller may not read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_max_connections: Option<u32>,
    pub results: Results,
}

/// The options of the run (never the token, only whether one was sent).
#[derive(Debug, Clone, Serialize)]
pub struct RunOptions {
    pub addr: String,
    pub pool: String,
    pub mode: Mode,
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    pub params: usize,
    pub clients: usize,
    pub connections: usize,
    /// Open loop: calls per second in all; `null` for a closed loop.
    pub rate: Option<f64>,
    pub duration_seconds: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_seconds: f64,
    /// Session mode: statements per transaction (`null`: no transactions).
    pub statements: Option<u32>,
    /// Session mode: statements in flight per session.
    pub pipeline: Option<u32>,
    pub dirty_every: Option<u64>,
    pub timeout_seconds: f64,
    pub tls: bool,
    pub mutual_tls: bool,
    pub token: bool,
}

/// Latency of the answered calls, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Answered calls (session mode: answered workload statements).
    pub calls: u64,
    /// Failed calls, all codes.
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Check statements that found another caller's session state.
    pub leaks: u64,
    /// From the measured part's start to the last answer.
    pub elapsed_seconds: f64,
    pub calls_per_second: f64,
    /// `null` when no call was answered.
    pub latency_us: Option<Latency>,
    pub sessions_opened: u64,
    /// Session opens refused (then retried), by code.
    pub session_open_refusals: BTreeMap<String, u64>,
    /// Failures of what is not a call: BEGIN, COMMIT, a dirty session's
    /// statements, a session that ended with nothing in flight.
    pub other_errors: BTreeMap<String, u64>,
    /// Open loop with a duration: calls due that were never sent.
    pub behind_schedule: u64,
}

impl Results {
    pub(crate) fn new(tally: Tally, elapsed: Duration, behind_schedule: u64) -> Results {
        let elapsed_seconds = elapsed.as_secs_f64();
        let h = &tally.latency;
        let latency = (!h.is_empty()).then(|| Latency {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        });
        Results {
            calls: tally.calls,
            errors: tally.errors.values().sum(),
            errors_by_code: tally.errors,
            leaks: tally.leaks,
            elapsed_seconds,
            calls_per_second: if elapsed_seconds > 0.0 {
                tally.calls as f64 / elapsed_seconds
            } else {
                0.0
            },
            latency_us: latency,
            sessions_opened: tally.sessions_opened,
            session_open_refusals: tally.open_refusals,
            other_errors: tally.other_errors,
            behind_schedule,
        }
    }
}

impl Report {
    pub(crate) fn new(
        options: &LoadOptions,
        pool_max_connections: Option<u32>,
        results: Results,
    ) -> Report {
        let session = options.mode == Mode::Session;
        Report {
            poolplane_version: env!("CARGO_PKG_VERSION").into(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            options: RunOptions {
                addr: options.addr.clone(),
                pool: options.pool.clone(),
                mode: options.mode,
                workload: options.workload.name(),
                sql: match options.workload {
                    super::options::Workload::Sql { ref sql, .. } => Some(sql.clone()),
                    _ => None,
                },
                params: options.workload.params().len(),
                clients: options.clients,
                connections: options.connections,
                rate: options.rate,
                duration_seconds: match options.stop {
                    Stop::After(d) => Some(d.as_secs_f64()),
                    Stop::Requests(_) => None,
                },
                requests: match options.stop {
                    Stop::Requests(n) => Some(n),
                    Stop::After(_) => None,
                },
                warmup_seconds: options.warmup.as_secs_f64(),
                statements: options.transaction.filter(|_| session),
                pipeline: (session && options.pipelined).then_some(options.depth),
                dirty_every: options.dirty_every,
                timeout_seconds: options.timeout.as_secs_f64(),
                tls: options.tls.is_some(),
                mutual_tls: options
                    .tls
                    .as_ref()
                    .is_some_and(|tls| tls.identity.is_some()),
                token: options.token.is_some(),
            },
            pool_max_connections,
            results,
        }
    }

    /// 0, or 1 if any leak was seen.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.results.leaks > 0)
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &std::path::Path) -> Result<(), BenchError> {
        let output = |error: String| BenchError::Output {
            path: path.display().to_string(),
            error,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| output(e.to_string()))?;
        text.push('\n');
        // Never over an existing file (it may be anything).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| output(e.to_string()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| output(e.to_string()))
    }

    /// The summary printed on stdout.
    pub fn summary(&self) -> String {
        let o = &self.options;
        let r = &self.results;
        let mut out = String::new();
        let how = match (o.mode, o.pipeline, o.statements) {
            (Mode::Execute, ..) if o.workload == "getpool" => "PoolAdmin/GetPool".to_string(),
            (Mode::Execute, ..) => "Query/Execute".to_string(),
            (Mode::Session, Some(depth), Some(n)) => {
                format!("Query/Session, transactions of {n}, {depth} in flight")
            }
            (Mode::Session, Some(depth), None) => format!("Query/Session, {depth} in flight"),
            (Mode::Session, None, n) => {
                format!("Query/Session, transactions of {}", n.unwrap_or(1))
            }
        };
        let what = match (o.dirty_every, o.mode) {
            (Some(n), Mode::Execute) => format!("hygiene checks, every {n}th call dirty,"),
            (Some(n), Mode::Session) => format!("hygiene checks, every {n}th session dirty,"),
            (None, _) => o.workload.clone(),
        };
        let _ = writeln!(
            out,
            "poolplane bench: {what} through {how}, pool `{}` at {}",
            o.pool, o.addr
        );
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let shape = match o.rate {
            Some(rate) => format!("open loop at {rate} calls/s"),
            None => "closed loop".into(),
        };
        let length = match (o.duration_seconds, o.requests) {
            (Some(secs), _) => format!("{secs} s"),
            (None, Some(n)) => format!("{n} calls"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} on {}, {shape}, {length} after {} s of warm-up{}",
            plural(o.clients, "client"),
            plural(o.connections, "connection"),
            o.warmup_seconds,
            match self.pool_max_connections {
                Some(max) => format!(", pool max_connections {max}"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "calls      {} in {:.2} s: {:.1} calls/s",
            r.calls, r.elapsed_seconds, r.calls_per_second
        );
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        match &r.latency_us {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "latency    p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p99_9),
                    ms(l.max)
                );
            }
            None => {
                let _ = writeln!(out, "latency    (no call answered)");
            }
        }
        let _ = writeln!(out, "errors     {}", by_code(r.errors, &r.errors_by_code));
        if o.dirty_every.is_some() {
            let _ = writeln!(
                out,
                "leaks      {}{}",
                r.leaks,
                if r.leaks > 0 {
                    ": a caller saw session state another left behind"
                } else {
                    ""
                }
            );
        }
        if o.mode == Mode::Session {
            let refused: u64 = r.session_open_refusals.values().sum();
            let _ = writeln!(
                out,
                "sessions   {} opened; opens refused and retried: {}",
                r.sessions_opened,
                by_code(refused, &r.session_open_refusals)
            );
        }
        let other: u64 = r.other_errors.values().sum();
        if other > 0 {
            let _ = writeln!(
                out,
                "other      failed statements besides calls: {}",
                by_code(other, &r.other_errors)
            );
        }
        if r.behind_schedule > 0 {
            let _ = writeln!(
                out,
                "schedule   {} calls were due and never sent (every client was busy)",
                r.behind_schedule
            );
        }
        out
    }
}

fn by_code(total: u64, codes: &BTreeMap<String, u64>) -> String {
    if total == 0 {
        return "0".into();
    }
    let list: Vec<String> = codes
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    format!("{total} ({})", list.join(", "))
}

/// The CPU's model name, from /proc/cpuinfo (Linux).
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        matches!(
            key.trim(),
            "model name" | "Model" | "Hardware" | "cpu model"
        )
        .then(|| value.trim().to_string())
        .filter(|value| !value.is_empty())
    })
}

/// The progress bar on stderr, while a run lasts (only when asked for:
/// `main.rs` asks when stderr is a terminal).
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(shared: &Arc<Shared>) -> Progress {
        if !shared.options.progress {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let (length, template) = match shared.options.stop {
            Stop::Requests(n) => (n, "{msg:12} [{bar:40}] {pos}/{len} calls"),
            Stop::After(d) => (
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "{msg:12} [{bar:40}] {eta} left",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let ticking = bar.clone();
        let shared = Arc::clone(shared);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let from = shared.schedule.measure_from();
                let now = tokio::time::Instant::now();
                let done = shared.done.load(Ordering::Relaxed);
                if now < from {
                    ticking.set_message("warming up");
                    continue;
                }
                match shared.options.stop {
                    Stop::Requests(_) => {
                        ticking.set_position(done);
                        ticking.set_message("measuring");
                    }
                    Stop::After(_) => {
                        let millis = u64::try_from((now - from).as_millis()).unwrap_or(u64::MAX);
                        ticking.set_position(millis);
                        ticking.set_message(format!("{done} calls"));
                    }
                }
            }
        });
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub(crate) fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
