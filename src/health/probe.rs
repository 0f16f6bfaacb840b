//! The health probe: `SELECT 1` on a connection of its own, outside the
//! pool's slots, so a pool that is busy (every connection leased) is not
//! mistaken for a pool whose database is down, and a database that hangs is
//! not mistaken for a busy pool. It shows in pg_stat_activity as
//! `<application_name>/probe`.
//!
//! Probe connections are outside every pool's `max_connections`, so they
//! have a limit of their own, server-wide ([`ProbeSlots`],
//! `health_monitoring.max_probe_connections`): however many pools there
//! are, their probes never hold more connections than that. A probe keeps
//! its connection between checks while slots are free, and lets it go
//! when they run out, so the probes of many pools take turns.
//!
//! A kept connection proves the database answers, not that the pool can
//! still log in (a rotated password, `NOLOGIN`, a connection limit). So the
//! probe also opens a new connection when the monitor asks (the pool's
//! connects failed since the last check, or it has no connection), after
//! its own last login failed, and at least every [`LOGIN_RECHECK`]. If
//! that fails while the kept connection answers, the outcome says so
//! ([`ProbeOutcome::LoginFailed`]); a probe with no connection that cannot
//! open one says [`ProbeOutcome::ConnectFailed`], for the monitor to judge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use super::state::ProbeOutcome;
use crate::config::PoolConfig;
use crate::postgres::{Connector, DriverEnd};

/// How often the probe logs in anew even when nothing suggests it must:
/// a credential changed on the server is found within this, before the
/// pool's own connections reach their lifetime.
pub(crate) const LOGIN_RECHECK: Duration = Duration::from_secs(60);

/// The server-wide limit on probe connections.
#[derive(Clone)]
pub struct ProbeSlots(Arc<Semaphore>);

impl ProbeSlots {
    pub fn new(max: u32) -> ProbeSlots {
        ProbeSlots(Arc::new(Semaphore::new(max as usize)))
    }

    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).acquire_owned().await.ok()
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }

    fn all_taken(&self) -> bool {
        self.0.available_permits() == 0
    }
}

/// An open probe connection. Its slot is held by its driver task, and so
/// freed only once the backend is gone (as a pool's own connections are).
struct Held {
    client: Client,
}

pub(crate) struct Probe {
    connector: Connector,
    held: Option<Held>,
    slots: ProbeSlots,
    timeout: Duration,
    pool: String,
    /// Whether the pool's role was looked at (once, on the first connection).
    role_checked: bool,
    /// When the probe last opened a connection successfully.
    last_login: Option<Instant>,
    /// The last login attempt failed: try again at every check until one works.
    login_failing: bool,
}

impl Probe {
    pub(crate) fn new(config: &PoolConfig, timeout: Duration, slots: ProbeSlots) -> Probe {
        Probe {
            connector: Connector::new(config, &probe_name(&config.application_name)),
            held: None,
            slots,
            timeout,
            pool: config.name.clone(),
            role_checked: false,
            last_login: None,
            login_failing: false,
        }
    }

    /// Lets go of the probe's connection (its slot is freed once the
    /// backend is gone).
    pub(crate) fn disconnect(&mut self) {
        self.held = None;
    }

    /// One check: connect if needed, then `SELECT 1`, all within the
    /// timeout; with `verify_login` a new connection is opened even if one
    /// is kept. Waiting for a free slot comes first and does not count: it
    /// says nothing about the database.
    pub(crate) async fn run(&mut self, verify_login: bool) -> ProbeOutcome {
        if self
            .held
            .as_ref()
            .is_some_and(|held| held.client.is_closed())
        {
            self.held = None;
        }
        let outcome = if self.held.is_some() && self.login_check_due(verify_login) {
            match self.slots.try_take() {
                Some(slot) => self.log_in_again(slot).await,
                // No second slot: let the kept connection go and log in with its slot.
                None => {
                    self.held = None;
                    self.check_kept_or_new().await
                }
            }
        } else {
            self.check_kept_or_new().await
        };
        // Other pools' probes wait for a slot: take turns.
        if self.slots.all_taken() {
            self.held = None;
        }
        outcome
    }

    fn login_check_due(&self, verify_login: bool) -> bool {
        verify_login
            || self.login_failing
            || self
                .last_login
                .is_none_or(|at| at.elapsed() >= LOGIN_RECHECK)
    }

    /// Opens a new connection while the kept one stays; the new one is
    /// kept if it works. If it does not, the kept one tells whether the
    /// database answers at all.
    async fn log_in_again(&mut self, slot: OwnedSemaphorePermit) -> ProbeOutcome {
        let opened = tokio::time::timeout(self.timeout, self.connect(slot)).await;
        match opened {
            Ok(Ok(client)) => {
                self.held = Some(Held { client });
                self.check_kept_or_new().await
            }
            Ok(Err(error)) => self.answered_without_login(error).await,
            Err(_) => {
                let error = format!("no new connection within {} ms", self.timeout.as_millis());
                self.answered_without_login(error).await
            }
        }
    }

    async fn answered_without_login(&mut self, error: String) -> ProbeOutcome {
        self.login_failing = true;
        match self.check_kept_or_new().await {
            ProbeOutcome::Answered { latency } => ProbeOutcome::LoginFailed {
                latency,
                error: format!("a new connection fails: {error}"),
            },
            other => other,
        }
    }

    /// `SELECT 1` on the kept connection, or on a new one if none is kept;
    /// the connect and the query have the timeout each.
    async fn check_kept_or_new(&mut self) -> ProbeOutcome {
        if self.held.is_none() {
            let Some(slot) = self.slots.take().await else {
                return ProbeOutcome::Failed {
                    error: "the probe slots are closed".into(),
                };
            };
            match tokio::time::timeout(self.timeout, self.connect(slot)).await {
                Ok(Ok(client)) => self.held = Some(Held { client }),
                Ok(Err(error)) => return ProbeOutcome::ConnectFailed { error },
                Err(_) => {
                    return ProbeOutcome::ConnectFailed {
                        error: format!("no connection within {} ms", self.timeout.as_millis()),
                    }
                }
            }
        }
        let Some(held) = self.held.as_ref() else {
            return ProbeOutcome::Failed {
                error: "probe connection missing".into(),
            };
        };
        let started = Instant::now();
        let answered =
            tokio::time::timeout(self.timeout, held.client.simple_query("SELECT 1")).await;
        let error = match answered {
            Ok(Ok(_)) => {
                return ProbeOutcome::Answered {
                    latency: started.elapsed(),
                }
            }
            Ok(Err(err)) => crate::postgres::error_chain(&err),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.held = None;
        ProbeOutcome::Failed { error }
    }

    /// A new connection holding `slot` until its backend is gone.
    async fn connect(&mut self, slot: OwnedSemaphorePermit) -> Result<Client, String> {
        let opened = self
            .connector
            .open(move |_: DriverEnd| drop(slot))
            .await
            .map_err(|err| err.to_string())?;
        self.last_login = Some(Instant::now());
        self.login_failing = false;
        if !self.role_checked {
            self.role_checked = true;
            warn_if_superuser(&opened.client, &self.pool).await;
        }
        Ok(opened.client)
    }
}

/// A pool whose role is a superuser can do anything on the server (`COPY
/// ... TO PROGRAM` runs commands on its host) for whoever may query it.
async fn warn_if_superuser(client: &Client, pool: &str) {
    let Ok(messages) = client.simple_query("SHOW is_superuser").await else {
        return;
    };
    let superuser = messages.iter().any(|message| {
        matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))
    });
    if superuser {
        tracing::warn!(
            %pool,
            "the pool's PostgreSQL role is a superuser: whoever may query this pool can run anything on the database server; use a role with only the rights the callers need (README \"Security\")"
        );
    }
}

/// `<application_name>/probe`, cut to PostgreSQL's 63 bytes on a character boundary.
fn probe_name(application_name: &str) -> String {
    let mut name = format!("{application_name}/probe");
    while name.len() > 63 {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_name_fits_postgres_limit() {
        assert_eq!(probe_name("poolplane/main"), "poolplane/main/probe");
        let long = "é".repeat(40);
        let name = probe_name(&long);
        assert!(name.len() <= 63);
        assert!(name.is_char_boundary(name.len()));
    }
}
