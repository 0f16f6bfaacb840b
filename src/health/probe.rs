//! The health probe: `SELECT 1` on a connection of its own, outside the
//! pool's slots, so a pool that is busy (every connection leased) is not
//! mistaken for a pool whose database is down, and a database that hangs is
//! not mistaken for a busy pool. The connection is kept between probes and
//! replaced after any failure. It shows in pg_stat_activity as
//! `<application_name>/probe`.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::state::ProbeOutcome;
use crate::config::PoolConfig;
use crate::postgres::{Connector, DriverEnd};

pub(crate) struct Probe {
    connector: Connector,
    client: Option<Client>,
    timeout: Duration,
    pool: String,
    /// Whether the pool's role was looked at (once, on the first connection).
    role_checked: bool,
}

impl Probe {
    pub(crate) fn new(config: &PoolConfig, timeout: Duration) -> Probe {
        Probe {
            connector: Connector::new(config, &probe_name(&config.application_name)),
            client: None,
            timeout,
            pool: config.name.clone(),
            role_checked: false,
        }
    }

    /// One check: connect if needed, then `SELECT 1`, all within the timeout.
    pub(crate) async fn run(&mut self) -> ProbeOutcome {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.check()).await;
        match result {
            Ok(Ok(())) => ProbeOutcome::Answered {
                latency: started.elapsed(),
            },
            Ok(Err(error)) => {
                self.client = None;
                ProbeOutcome::Failed { error }
            }
            Err(_) => {
                self.client = None;
                ProbeOutcome::Failed {
                    error: format!("no answer within {} ms", self.timeout.as_millis()),
                }
            }
        }
    }

    async fn check(&mut self) -> Result<(), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let opened = self
                .connector
                .open(|_: DriverEnd| {})
                .await
                .map_err(|err| err.to_string())?;
            if !self.role_checked {
                self.role_checked = true;
                warn_if_superuser(&opened.client, &self.pool).await;
            }
            self.client = Some(opened.client);
        }
        let client = self.client.as_ref().ok_or("probe connection missing")?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|err| crate::postgres::error_chain(&err))
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
