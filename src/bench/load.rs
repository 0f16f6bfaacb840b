//! The load generator of `poolplane bench`: connects to a running server
//! (HTTP/2 connections, TLS and the bearer token from `crate::client`),
//! hands out calls from one schedule to every client (closed loop, or open
//! loop at a fixed rate with latency counted from each call's scheduled
//! start, so a stalled server shows in the latency), runs the execute-mode
//! clients, and merges what every client saw into a [`Report`].
//! Session-mode clients live in `session.rs`; the report's figures and
//! text in `report.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::options::{LoadOptions, Mode, Stop, Workload, CHECK_SQL, DIRTY_EXECUTE_SQL};
use super::report::{Report, Results};
use super::BenchError;
use crate::client::Target;
use crate::proto::{self, pool_admin_client::PoolAdminClient, query_client::QueryClient};

/// The largest latency recorded: an hour, in microseconds (longer ones count as an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// One call to make: its place in the schedule and whether it is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// Counts every call handed out, warm-up included (for `--dirty-every`).
    pub(crate) seq: u64,
    /// Open loop: when the call is due; latency counts from here.
    pub(crate) due: Option<Instant>,
    /// After the warm-up: recorded.
    pub(crate) counted: bool,
}

/// Hands out the calls of a run to all clients.
pub(crate) struct Schedule {
    start: Instant,
    measure_from: Instant,
    measure_until: Option<Instant>,
    requests: Option<u64>,
    rate: Option<f64>,
    /// Open loop: tickets due before `measure_from`.
    warmup_tickets: u64,
    next: AtomicU64,
    counted: AtomicU64,
}

impl Schedule {
    fn new(options: &LoadOptions, start: Instant) -> Schedule {
        let measure_from = start + options.warmup;
        let (measure_until, requests) = match options.stop {
            Stop::After(duration) => (Some(measure_from + duration), None),
            Stop::Requests(n) => (None, Some(n)),
        };
        let warmup_tickets = options.rate.map_or(0, |rate| {
            (options.warmup.as_secs_f64() * rate).ceil() as u64
        });
        Schedule {
            start,
            measure_from,
            measure_until,
            requests,
            rate: options.rate,
            warmup_tickets,
            next: AtomicU64::new(0),
            counted: AtomicU64::new(0),
        }
    }

    /// The next call, or `None` when the run is over.
    pub(crate) fn take(&self) -> Option<Ticket> {
        let now = Instant::now();
        if let Some(rate) = self.rate {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            // Beyond what an Instant can hold is never due: the run is over.
            let due = Duration::try_from_secs_f64(seq as f64 / rate)
                .ok()
                .and_then(|offset| self.start.checked_add(offset))?;
            let counted = seq >= self.warmup_tickets;
            if counted {
                if let Some(n) = self.requests {
                    if seq - self.warmup_tickets >= n {
                        return None;
                    }
                }
                if let Some(until) = self.measure_until {
                    // Calls still owed at the end are not sent; the
                    // report counts them (behind schedule).
                    if due >= until || now >= until {
                        return None;
                    }
                }
            }
            return Some(Ticket {
                seq,
                due: Some(due),
                counted,
            });
        }
        if now >= self.measure_from {
            if let Some(until) = self.measure_until {
                if now >= until {
                    return None;
                }
            }
            if let Some(n) = self.requests {
                if self.counted.fetch_add(1, Ordering::Relaxed) >= n {
                    return None;
                }
            }
        }
        Some(Ticket {
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            due: None,
            counted: now >= self.measure_from,
        })
    }

    /// When the warm-up ends and measuring begins.
    pub(crate) fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// Duration mode: when the measured time ends.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.measure_until
    }

    /// Duration mode: the measured time is over (a client waiting to retry stops).
    pub(crate) fn expired(&self) -> bool {
        self.measure_until
            .is_some_and(|until| Instant::now() >= until)
    }

    /// Open loop with a duration: calls that were due and never sent.
    fn behind(&self, sent: u64) -> u64 {
        match (self.rate, self.measure_until) {
            (Some(rate), Some(until)) => {
                let due = ((until - self.measure_from).as_secs_f64() * rate).ceil() as u64;
                due.saturating_sub(sent)
            }
            _ => 0,
        }
    }
}

/// What the clients share.
pub(crate) struct Shared {
    pub(crate) options: LoadOptions,
    pub(crate) schedule: Schedule,
    /// Measured calls finished (answered or failed), for the progress bar.
    pub(crate) done: AtomicU64,
    /// Sessions opened so far, for `--dirty-every` in session mode.
    pub(crate) sessions: AtomicU64,
    authorization: Option<MetadataValue<Ascii>>,
}

impl Shared {
    /// A request with the bearer token, if any.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        crate::client::request(message, self.authorization.as_ref())
    }

    /// Is `seq` a dirty call (execute) or session (session mode)?
    pub(crate) fn dirty(&self, seq: u64) -> bool {
        self.options.dirty_every.is_some_and(|n| (seq + 1) % n == 0)
    }

    /// The statement a (non-dirty) call runs: the workload, or the check.
    pub(crate) fn statement(&self) -> proto::SessionStatement {
        match self.options.dirty_every {
            Some(_) => proto::SessionStatement {
                sql: CHECK_SQL.into(),
                ..Default::default()
            },
            None => proto::SessionStatement {
                sql: self.options.workload.sql().unwrap_or_default(),
                params: self.options.workload.params(),
                ..Default::default()
            },
        }
    }

    pub(crate) fn checking(&self) -> bool {
        self.options.dirty_every.is_some()
    }
}

/// What one client saw.
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    pub(crate) calls: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) leaks: u64,
    pub(crate) sessions_opened: u64,
    pub(crate) open_refusals: BTreeMap<String, u64>,
    pub(crate) other_errors: BTreeMap<String, u64>,
    /// When the last measured call finished.
    pub(crate) last_done: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            calls: 0,
            errors: BTreeMap::new(),
            leaks: 0,
            sessions_opened: 0,
            open_refusals: BTreeMap::new(),
            other_errors: BTreeMap::new(),
            last_done: None,
        }
    }

    /// A call answered; `leak` when its check found dirt.
    pub(crate) fn answered(
        &mut self,
        shared: &Shared,
        ticket: Ticket,
        started: Instant,
        leak: bool,
    ) {
        // A leak is a leak during the warm-up too.
        if leak {
            self.leaks += 1;
        }
        if ticket.counted {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.latency
                .saturating_record(micros.clamp(1, MAX_LATENCY_US));
            self.calls += 1;
            self.last_done = Some(Instant::now());
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call failed with `code`.
    pub(crate) fn failed(&mut self, shared: &Shared, ticket: Ticket, code: tonic::Code) {
        if ticket.counted {
            *self.errors.entry(code_name(code)).or_default() += 1;
            self.last_done = Some(Instant::now());
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.calls += other.calls;
        self.leaks += other.leaks;
        self.sessions_opened += other.sessions_opened;
        self.last_done = self.last_done.max(other.last_done);
        for (mine, theirs) in [
            (&mut self.errors, other.errors),
            (&mut self.open_refusals, other.open_refusals),
            (&mut self.other_errors, other.other_errors),
        ] {
            for (code, n) in theirs {
                *mine.entry(code).or_default() += n;
            }
        }
    }
}

/// A gRPC code as the summary shows it: `ResourceExhausted`.
pub(crate) fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// True when a check statement's answer says the connection was dirty.
pub(crate) fn is_leak(response: &proto::ExecuteResponse) -> bool {
    response
        .rows
        .first()
        .and_then(|row| row.values.first())
        .is_some_and(|value| value.kind == Some(proto::value::Kind::BoolValue(true)))
}

/// The pool's `max_connections`, if the caller may read it.
async fn pool_max_connections(
    options: &LoadOptions,
    authorization: Option<&MetadataValue<Ascii>>,
    channel: Channel,
) -> Option<u32> {
    let mut admin = PoolAdminClient::new(channel);
    let mut request = crate::client::request(
        proto::GetPoolRequest {
            name: options.pool.clone(),
        },
        authorization,
    );
    request.set_timeout(options.timeout);
    let pool = admin.get_pool(request).await.ok()?.into_inner();
    pool.spec.map(|spec| spec.max_connections)
}

/// An execute-mode client: one call per ticket, until the schedule ends.
async fn execute_client(shared: Arc<Shared>, channel: Channel) -> Tally {
    let mut tally = Tally::new();
    let mut query = QueryClient::new(channel.clone());
    let mut admin = PoolAdminClient::new(channel);
    let options = &shared.options;
    let workload_sql = options.workload.sql().unwrap_or_default();
    while let Some(ticket) = shared.schedule.take() {
        if let Some(due) = ticket.due {
            tokio::time::sleep_until(due).await;
        }
        let started = ticket.due.unwrap_or_else(Instant::now);
        let dirty = shared.dirty(ticket.seq);
        let outcome = if matches!(options.workload, Workload::GetPool) {
            let mut request = shared.request(proto::GetPoolRequest {
                name: options.pool.clone(),
            });
            request.set_timeout(options.timeout);
            admin.get_pool(request).await.map(|_| false)
        } else {
            let (sql, params) = match (options.dirty_every, dirty) {
                (None, _) => (workload_sql.clone(), options.workload.params()),
                (Some(_), true) => (DIRTY_EXECUTE_SQL.to_string(), Vec::new()),
                (Some(_), false) => (CHECK_SQL.to_string(), Vec::new()),
            };
            let mut request = shared.request(proto::ExecuteRequest {
                pool: options.pool.clone(),
                sql,
                params,
                ..Default::default()
            });
            request.set_timeout(options.timeout);
            let checks = shared.checking() && !dirty;
            query
                .execute(request)
                .await
                .map(|response| checks && is_leak(response.get_ref()))
        };
        match outcome {
            Ok(leak) => tally.answered(&shared, ticket, started, leak),
            Err(status) => tally.failed(&shared, ticket, status.code()),
        }
    }
    tally
}

/// Runs the load described by `options` against the server and reports it.
pub async fn run(options: LoadOptions) -> Result<Report, BenchError> {
    // One HTTP/2 connection per `--connections`, each connected now: a
    // server that cannot be reached ends the run before it starts.
    let target = Target {
        addr: options.addr.clone(),
        tls: options.tls.clone(),
    };
    let channels = target.channels(options.connections).await?;
    let authorization = options
        .token
        .as_ref()
        .map(crate::client::authorization)
        .transpose()?;
    let max_connections = match channels.first() {
        Some(channel) => {
            pool_max_connections(&options, authorization.as_ref(), channel.clone()).await
        }
        None => None,
    };
    // The schedule, warm-up first, starts now.
    let shared = Arc::new(Shared {
        schedule: Schedule::new(&options, Instant::now()),
        options,
        done: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        authorization,
    });
    let progress = super::report::Progress::start(&shared);
    let clients: Vec<_> = (0..shared.options.clients)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                match shared.options.mode {
                    Mode::Execute => execute_client(shared, channel).await,
                    Mode::Session => super::session::session_client(shared, channel).await,
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    let mut panicked = 0;
    for client in futures::future::join_all(clients).await {
        match client {
            Ok(tally) => total.merge(tally),
            Err(_) => panicked += 1,
        }
    }
    progress.finish();
    if panicked > 0 {
        *total.errors.entry("ClientPanicked".into()).or_default() += panicked;
    }
    // From the measured part's start to its last call's end (not to the
    // end of a client's wait before a retry).
    let elapsed = total.last_done.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(shared.schedule.measure_from())
    });
    let errors: u64 = total.errors.values().sum();
    let behind = shared.schedule.behind(total.calls + errors);
    Ok(Report::new(
        &shared.options,
        max_connections,
        Results::new(total, elapsed, behind),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: super::super::LoadArgs,
    }

    fn schedule(args: &[&str]) -> Schedule {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        let options = Cli::try_parse_from(argv)
            .expect("flags parse")
            .load
            .into_options(None, false)
            .expect("valid options");
        Schedule::new(&options, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_hands_out_exactly_the_requests_after_the_warmup() {
        let s = schedule(&["--requests", "3", "--warmup", "1"]);
        let warm = s.take().expect("a warm-up call");
        assert!(!warm.counted && warm.due.is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let counted: Vec<Ticket> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(counted.len(), 3);
        assert!(counted.iter().all(|t| t.counted));
        assert_eq!(counted[0].seq, 1, "the warm-up call had seq 0");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_schedules_every_call_at_the_rate() {
        let s = schedule(&["--rate", "100", "--warmup", "0.5", "--requests", "10"]);
        let start = Instant::now();
        let tickets: Vec<Ticket> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(tickets.len(), 60, "50 warm-up calls, then 10");
        assert_eq!(tickets.iter().filter(|t| t.counted).count(), 10);
        assert!(!tickets[49].counted && tickets[50].counted);
        for (k, ticket) in tickets.iter().enumerate() {
            let due = ticket.due.expect("open loop calls are due");
            let offset = due - start;
            let expected = Duration::from_millis(10 * k as u64);
            assert!(
                offset.abs_diff(expected) < Duration::from_micros(1),
                "{k}: {offset:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_duration_ends_the_schedule_and_counts_what_was_owed() {
        let s = schedule(&["--duration", "2", "--warmup", "0"]);
        assert!(s.take().is_some_and(|t| t.counted));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.take().is_none());
        assert!(s.expired());
        let s = schedule(&["--duration", "2", "--warmup", "0", "--rate", "50"]);
        assert_eq!(s.behind(60), 40, "100 calls were due");
    }

    fn answer(value: proto::value::Kind) -> proto::ExecuteResponse {
        proto::ExecuteResponse {
            rows: vec![proto::Row {
                values: vec![proto::Value { kind: Some(value) }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_true_check_is_a_leak() {
        assert!(is_leak(&answer(proto::value::Kind::BoolValue(true))));
        assert!(!is_leak(&answer(proto::value::Kind::BoolValue(false))));
        assert!(!is_leak(&proto::ExecuteResponse::default()));
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "ResourceExhausted"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "InvalidArgument");
    }
}
