//! The health state machine of one pool, and the recovery backoff. Pure
//! logic: no I/O, no clock of its own (callers pass durations), so every
//! transition is unit-tested exactly.
//!
//! Transitions (probe = one health check of the database):
//! - any state, probe succeeds under `degraded_latency` → HEALTHY
//! - any state, probe succeeds at or above `degraded_latency` → DEGRADED
//! - the database answers, but a new connection fails (the pool's role may
//!   no longer log in: a rotated password, `NOLOGIN`, `CONNECTION LIMIT`)
//!   → DEGRADED: the connections the pool has still serve
//! - probe fails, fewer than `failure_threshold` failures in a row → DEGRADED
//!   (UNKNOWN stays UNKNOWN until the threshold: a pool never seen healthy
//!   is not called degraded)
//! - probe fails, `failure_threshold` failures in a row → UNHEALTHY
//! - UNHEALTHY → HEALTHY/DEGRADED is a *recovery*: it is reported with the
//!   failures it took and how long the pool was unhealthy.

use std::time::Duration;

/// How a pool's database looks from poolplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Not checked yet.
    Unknown,
    Healthy,
    /// Answering, but slowly or with some failed checks.
    Degraded,
    /// `failure_threshold` checks in a row failed: calls fail fast.
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "UNKNOWN",
            HealthState::Healthy => "HEALTHY",
            HealthState::Degraded => "DEGRADED",
            HealthState::Unhealthy => "UNHEALTHY",
        }
    }
}

/// Thresholds of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub degraded_latency: Duration,
    pub failure_threshold: u32,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Answered {
        latency: Duration,
    },
    /// The probe's open connection answered in `latency`, but opening a new
    /// one failed with `error`.
    LoginFailed {
        latency: Duration,
        error: String,
    },
    /// The probe had no connection and could not open one: the database
    /// is down, or refuses the login (the monitor tells which, by asking
    /// one of the pool's own connections).
    ConnectFailed {
        error: String,
    },
    Failed {
        error: String,
    },
}

impl ProbeOutcome {
    /// How long the database took to answer, if it did.
    pub fn latency(&self) -> Option<Duration> {
        match self {
            ProbeOutcome::Answered { latency } | ProbeOutcome::LoginFailed { latency, .. } => {
                Some(*latency)
            }
            ProbeOutcome::ConnectFailed { .. } | ProbeOutcome::Failed { .. } => None,
        }
    }

    /// What went wrong, if anything did.
    pub fn error(&self) -> Option<&str> {
        match self {
            ProbeOutcome::Answered { .. } => None,
            ProbeOutcome::LoginFailed { error, .. }
            | ProbeOutcome::ConnectFailed { error }
            | ProbeOutcome::Failed { error } => Some(error),
        }
    }
}

/// A change of state, with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    pub reason: String,
    /// Set when the pool left UNHEALTHY: the consecutive failures it had.
    pub recovered_after: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct HealthMachine {
    policy: HealthPolicy,
    state: HealthState,
    consecutive_failures: u32,
}

impl HealthMachine {
    pub fn new(policy: HealthPolicy) -> HealthMachine {
        HealthMachine {
            policy,
            state: HealthState::Unknown,
            consecutive_failures: 0,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn set_policy(&mut self, policy: HealthPolicy) {
        self.policy = policy;
    }

    /// Feeds one probe result; returns the transition if the state changed.
    pub fn observe(&mut self, outcome: &ProbeOutcome) -> Option<Transition> {
        let from = self.state;
        let failures_before = self.consecutive_failures;
        let (to, reason) = match outcome {
            ProbeOutcome::Answered { latency } => {
                self.consecutive_failures = 0;
                if *latency >= self.policy.degraded_latency {
                    (
                        HealthState::Degraded,
                        format!(
                            "check took {} ms (degraded at {} ms)",
                            latency.as_millis(),
                            self.policy.degraded_latency.as_millis()
                        ),
                    )
                } else {
                    (
                        HealthState::Healthy,
                        format!("check answered in {} ms", latency.as_millis()),
                    )
                }
            }
            ProbeOutcome::LoginFailed { error, .. } => {
                // The database answers: not a step towards UNHEALTHY.
                self.consecutive_failures = 0;
                (
                    HealthState::Degraded,
                    format!("the database answers, but {error}"),
                )
            }
            ProbeOutcome::ConnectFailed { error } | ProbeOutcome::Failed { error } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let n = self.consecutive_failures;
                let threshold = self.policy.failure_threshold.max(1);
                let reason =
                    format!("{n} check(s) in a row failed (unhealthy at {threshold}): {error}");
                if n >= threshold {
                    (HealthState::Unhealthy, reason)
                } else if from == HealthState::Unknown || from == HealthState::Unhealthy {
                    (from, reason)
                } else {
                    (HealthState::Degraded, reason)
                }
            }
        };
        self.state = to;
        (to != from).then(|| Transition {
            from,
            to,
            reason,
            recovered_after: (from == HealthState::Unhealthy).then_some(failures_before),
        })
    }
}

/// Delays between recovery attempts: `base * 2^attempt`, capped, with up to
/// 20% subtracted at random so many pools do not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay before recovery attempt `attempt` (0-based); `jitter` in
    /// 0.0..1.0 picks how much of the 20% to take off.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        let full = self
            .base
            .saturating_mul(factor)
            .min(self.cap)
            .max(Duration::from_millis(1));
        full.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> HealthMachine {
        HealthMachine::new(HealthPolicy {
            degraded_latency: Duration::from_millis(100),
            failure_threshold: 2,
        })
    }

    fn ok(ms: u64) -> ProbeOutcome {
        ProbeOutcome::Answered {
            latency: Duration::from_millis(ms),
        }
    }

    fn fail() -> ProbeOutcome {
        ProbeOutcome::Failed {
            error: "refused".into(),
        }
    }

    #[test]
    fn first_answer_makes_it_healthy() {
        let mut m = machine();
        let t = m.observe(&ok(5)).expect("transition");
        assert_eq!(
            (t.from, t.to, t.recovered_after),
            (HealthState::Unknown, HealthState::Healthy, None)
        );
        assert_eq!(m.observe(&ok(5)), None, "no transition without a change");
    }

    #[test]
    fn slow_answers_degrade_and_fast_ones_heal() {
        let mut m = machine();
        m.observe(&ok(5));
        assert_eq!(
            m.observe(&ok(150)).map(|t| t.to),
            Some(HealthState::Degraded)
        );
        assert_eq!(m.observe(&ok(5)).map(|t| t.to), Some(HealthState::Healthy));
    }

    #[test]
    fn failures_degrade_then_make_it_unhealthy_and_a_success_recovers() {
        let mut m = machine();
        m.observe(&ok(5));
        assert_eq!(
            m.observe(&fail()).map(|t| t.to),
            Some(HealthState::Degraded)
        );
        let t = m.observe(&fail()).expect("unhealthy");
        assert_eq!(t.to, HealthState::Unhealthy);
        assert!(
            t.reason.contains("2 check(s) in a row failed"),
            "{}",
            t.reason
        );
        assert_eq!(m.observe(&fail()), None, "stays unhealthy");
        let t = m.observe(&ok(5)).expect("recovery");
        assert_eq!(
            (t.from, t.to, t.recovered_after),
            (HealthState::Unhealthy, HealthState::Healthy, Some(3))
        );
        assert_eq!(m.consecutive_failures(), 0);
    }

    #[test]
    fn a_failed_login_degrades_without_counting_towards_unhealthy() {
        let mut m = machine();
        m.observe(&ok(5));
        m.observe(&fail());
        let login_failed = ProbeOutcome::LoginFailed {
            latency: Duration::from_millis(5),
            error: "a new connection fails: password authentication failed".into(),
        };
        assert_eq!(m.observe(&login_failed), None, "already degraded");
        assert_eq!(m.consecutive_failures(), 0, "the database answered");
        for _ in 0..5 {
            m.observe(&login_failed);
        }
        assert_eq!(m.state(), HealthState::Degraded, "never unhealthy");
        let t = m.observe(&ok(5)).expect("healed");
        assert_eq!(t.to, HealthState::Healthy);

        let t = m.observe(&login_failed).expect("degraded");
        assert!(
            t.reason
                .contains("new connection fails: password authentication failed"),
            "{}",
            t.reason
        );
    }

    #[test]
    fn a_pool_never_seen_healthy_is_not_called_degraded() {
        let mut m = machine();
        assert_eq!(m.observe(&fail()), None);
        assert_eq!(
            m.observe(&fail()).map(|t| t.to),
            Some(HealthState::Unhealthy)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay(4, 0.0), Duration::from_millis(1000));
        assert_eq!(b.delay(60, 0.0), Duration::from_millis(1000));
        assert_eq!(b.delay(4, 1.0), Duration::from_millis(800));
    }
}
