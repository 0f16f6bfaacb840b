//! The health monitor of one pool: one task that probes the database every
//! `check_interval` (sooner when the pool reports trouble: a connection
//! broke or a connect failed), feeds the state machine, and acts on it:
//!
//! - UNHEALTHY: the pool's breaker opens (calls fail fast with the last
//!   error) and, with automatic recovery on, probes come at backoff pace
//!   (`retry_delay_ms` doubling up to `max_retry_delay_ms`, with jitter)
//!   for `max_retries` attempts, then at `check_interval` again;
//! - leaving UNHEALTHY: the breaker closes, a connection-recovered event is
//!   published and the pool warms back up to `min_connections`.
//!
//! A pool that cannot log in any more while the database answers is
//! DEGRADED as long as it has connections to serve with, and counts towards
//! UNHEALTHY once it has none (no SQL can run there then).
//!
//! Every probe publishes a check-completed event; every state change a
//! health-changed event. `CheckHealth` asks the task for a probe now.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::probe::{Probe, ProbeSlots};
use super::state::{Backoff, HealthMachine, HealthPolicy, HealthState, ProbeOutcome, Transition};
use crate::config::HealthConfig;
use crate::events::{EventBus, EventDetail};
use crate::pool::ManagedPool;

/// What the monitor last found.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub state: HealthState,
    pub last_latency: Option<Duration>,
    pub last_error: Option<String>,
    pub last_check: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub checks: u64,
}

impl HealthReport {
    /// The report of a pool nobody monitors (health_monitoring.enabled: false).
    pub fn unmonitored() -> HealthReport {
        HealthReport::new()
    }

    fn new() -> HealthReport {
        HealthReport {
            state: HealthState::Unknown,
            last_latency: None,
            last_error: None,
            last_check: None,
            consecutive_failures: 0,
            checks: 0,
        }
    }
}

/// Handle to a running monitor; dropping it stops the task.
pub struct Monitor {
    requester: Requester,
    task: tokio::task::JoinHandle<()>,
}

/// Reads a monitor's report and asks it for a probe; cheap to clone.
#[derive(Clone)]
pub struct Requester {
    report: Arc<Mutex<HealthReport>>,
    requests: mpsc::Sender<oneshot::Sender<HealthReport>>,
}

impl Monitor {
    /// Starts monitoring `pool`; the first probe runs at once.
    pub fn start(
        pool: Arc<ManagedPool>,
        config: &HealthConfig,
        slots: ProbeSlots,
        events: Arc<EventBus>,
    ) -> Monitor {
        let report = Arc::new(Mutex::new(HealthReport::new()));
        let (requests, inbox) = mpsc::channel(64);
        let looper = Loop {
            probe: Probe::new(&pool.config(), config.probe_timeout, slots.clone()),
            slots,
            config_version: pool.config_version(),
            pool,
            config: config.clone(),
            events,
            report: Arc::clone(&report),
            machine: HealthMachine::new(HealthPolicy {
                degraded_latency: config.degraded_latency,
                failure_threshold: config.failure_threshold,
            }),
            recovery_attempts: 0,
            unhealthy_since: None,
            connect_failures_seen: 0,
        };
        let task = tokio::spawn(looper.run(inbox));
        Monitor {
            requester: Requester { report, requests },
            task,
        }
    }

    pub fn report(&self) -> HealthReport {
        self.requester.report()
    }

    pub fn requester(&self) -> Requester {
        self.requester.clone()
    }
}

impl Requester {
    pub fn report(&self) -> HealthReport {
        self.report
            .lock()
            .map(|report| report.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Probes now and returns the result (the current report if the
    /// monitor has stopped).
    pub async fn check_now(&self) -> HealthReport {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(reply).await.is_err() {
            return self.report();
        }
        answer.await.unwrap_or_else(|_| self.report())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Loop {
    pool: Arc<ManagedPool>,
    config: HealthConfig,
    events: Arc<EventBus>,
    report: Arc<Mutex<HealthReport>>,
    machine: HealthMachine,
    probe: Probe,
    /// Shared by every pool's probe (`health_monitoring.max_probe_connections`).
    slots: ProbeSlots,
    config_version: u64,
    recovery_attempts: u32,
    unhealthy_since: Option<Instant>,
    /// The pool's failed connects as of the last probe.
    connect_failures_seen: u64,
}

impl Loop {
    async fn run(mut self, mut inbox: mpsc::Receiver<oneshot::Sender<HealthReport>>) {
        // Trouble reports can come in bursts (every connection of a pool
        // breaks at once); probing faster than this gains nothing.
        let min_gap = (self.config.check_interval / 4).max(Duration::from_millis(10));
        let mut next = tokio::time::Instant::now();
        let mut last_probe: Option<tokio::time::Instant> = None;
        loop {
            let mut replies = Vec::new();
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.pool.trouble().notified() => {
                    if last_probe.is_some_and(|at| at.elapsed() < min_gap) {
                        continue;
                    }
                }
                request = inbox.recv() => match request {
                    Some(reply) => replies.push(reply),
                    None => return,
                },
            }
            while let Ok(reply) = inbox.try_recv() {
                replies.push(reply);
            }
            last_probe = Some(tokio::time::Instant::now());
            let delay = self.check().await;
            next = tokio::time::Instant::now() + delay;
            let report = self.current_report();
            for reply in replies {
                let _ = reply.send(report.clone());
            }
        }
    }

    /// One probe and its consequences; returns the delay until the next.
    async fn check(&mut self) -> Duration {
        if self.pool.paused_without_connections() {
            // Paused for a database restart or maintenance: no connection
            // of the pool's, the probe's included; the state stands.
            self.probe.disconnect();
            return self.config.check_interval;
        }
        if self.pool.config_version() != self.config_version {
            self.config_version = self.pool.config_version();
            self.probe = Probe::new(
                &self.pool.config(),
                self.config.probe_timeout,
                self.slots.clone(),
            );
        }
        let connect_failures = self.pool.connect_failures();
        // The kept probe connection speaks for the pool only while the pool
        // has connections of its own and opens new ones without failing.
        let verify_login = connect_failures != self.connect_failures_seen
            || self.pool.established_connections() == 0;
        self.connect_failures_seen = connect_failures;
        let probed = self.probe.run(verify_login).await;
        let outcome = self.judged(probed).await;
        let transition = self.machine.observe(&outcome);
        let state = self.machine.state();
        self.record(&outcome, state);
        let name = self.pool.name();
        let error = outcome.error().map(str::to_string);
        self.events.publish(
            &name,
            EventDetail::CheckCompleted {
                state,
                latency: outcome.latency(),
                error: error.clone(),
            },
        );
        if let Some(transition) = transition {
            self.apply(&name, transition);
        }
        if state == HealthState::Unhealthy {
            // Keep the fail-fast reason current: callers see the latest error.
            self.pool
                .set_fail_fast(error.or_else(|| Some("database unreachable".into())));
        }
        self.next_delay(state)
    }

    /// What the probe found, in the light of the pool's own connections:
    /// a failed login is a failure like any other once the pool has no
    /// connection left to serve with; a probe that could not connect while
    /// one of the pool's idle connections answers found a login that fails
    /// (a connection limit reached, a password changed), not a database
    /// that is down.
    async fn judged(&self, outcome: ProbeOutcome) -> ProbeOutcome {
        match outcome {
            ProbeOutcome::LoginFailed { error, .. } if self.pool.established_connections() == 0 => {
                ProbeOutcome::Failed {
                    error: format!("the pool has no connection left, and {error}"),
                }
            }
            ProbeOutcome::ConnectFailed { error } => {
                match self
                    .pool
                    .ping_an_idle_connection(self.config.probe_timeout)
                    .await
                {
                    Some(Ok(latency)) => ProbeOutcome::LoginFailed {
                        latency,
                        error: format!("a new connection fails: {error}"),
                    },
                    _ => ProbeOutcome::ConnectFailed { error },
                }
            }
            other => other,
        }
    }

    fn apply(&mut self, name: &str, transition: Transition) {
        tracing::info!(
            pool = %name,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            reason = %transition.reason,
            "health changed"
        );
        self.events.publish(
            name,
            EventDetail::HealthChanged {
                from: transition.from,
                to: transition.to,
                reason: transition.reason.clone(),
            },
        );
        if transition.to == HealthState::Unhealthy {
            self.unhealthy_since = Some(Instant::now());
        }
        if let Some(failed_checks) = transition.recovered_after {
            self.pool.set_fail_fast(None);
            let unhealthy_for = self
                .unhealthy_since
                .take()
                .map(|since| since.elapsed())
                .unwrap_or_default();
            self.events.publish(
                name,
                EventDetail::ConnectionRecovered {
                    failed_checks,
                    unhealthy_for,
                },
            );
            let pool = Arc::clone(&self.pool);
            tokio::spawn(async move { pool.warm_up().await });
        }
    }

    fn next_delay(&mut self, state: HealthState) -> Duration {
        if state != HealthState::Unhealthy {
            self.recovery_attempts = 0;
            return self.config.check_interval;
        }
        let recovery = self.pool.config().recovery;
        if !self.config.automatic_recovery || self.recovery_attempts >= recovery.max_attempts {
            return self.config.check_interval;
        }
        let backoff = Backoff {
            base: recovery.base_delay,
            cap: recovery.max_delay,
        };
        let delay = backoff.delay(self.recovery_attempts, fastrand::f64());
        self.recovery_attempts += 1;
        delay
    }

    fn record(&self, outcome: &ProbeOutcome, state: HealthState) {
        let mut report = match self.report.lock() {
            Ok(report) => report,
            Err(poisoned) => poisoned.into_inner(),
        };
        report.state = state;
        report.last_check = Some(SystemTime::now());
        report.checks += 1;
        report.consecutive_failures = self.machine.consecutive_failures();
        report.last_latency = outcome.latency();
        report.last_error = outcome.error().map(str::to_string);
    }

    fn current_report(&self) -> HealthReport {
        self.report
            .lock()
            .map(|report| report.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}
