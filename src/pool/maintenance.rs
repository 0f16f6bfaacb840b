//! Background maintenance of one pool, never left to checkout time (mobc
//! enforces lifetimes only lazily, DESIGN.md). One loop per pool; each pass:
//!
//! - retires connections past `max_lifetime` (less a per-connection jitter
//!   of up to 10%, so they do not all reconnect at once): idle ones close
//!   now, busy ones close when they come back, in-flight work undisturbed;
//! - closes connections idle for `idle_timeout` while more than
//!   `min_connections` are open;
//! - pings (empty query, bounded) idle connections unchecked for
//!   `health_check_interval`, closing the ones that fail, so a broken
//!   connection is found before a caller borrows it;
//! - opens connections back up to `min_connections`.
//!
//! A pass runs every quarter of the shortest of those three durations,
//! between 10 ms and 5 s. Closing means aborting the connection's driver:
//! the socket closes at once and the backend exits.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::conns::ConnEntry;
use super::managed::ManagedPool;
use super::stats::CloseReason;
use crate::config::PoolLimits;

pub(crate) async fn run(pool: Weak<ManagedPool>) {
    loop {
        let period = match pool.upgrade() {
            Some(pool) => {
                maintain(&pool).await;
                cadence(&pool.limits())
            }
            None => return,
        };
        tokio::time::sleep(period).await;
    }
}

fn cadence(limits: &PoolLimits) -> Duration {
    let shortest = limits
        .idle_timeout
        .min(limits.max_lifetime)
        .min(limits.health_check_interval);
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

async fn maintain(pool: &ManagedPool) {
    let limits = pool.limits();
    let entries = pool.shared().conns.snapshot();
    let mut open = entries.len() as u64;
    let min = u64::from(limits.min_connections);
    let mut to_ping = Vec::new();
    for entry in entries {
        if entry.lifetime_over(limits.max_lifetime) {
            if entry.close_if_idle(CloseReason::Lifetime) {
                open = open.saturating_sub(1);
            }
            continue;
        }
        if !entry.is_idle() {
            continue;
        }
        if entry.idle_for() >= limits.idle_timeout && open > min {
            if entry.close_if_idle(CloseReason::Idle) {
                open = open.saturating_sub(1);
            }
            continue;
        }
        if entry.unchecked_for() >= limits.health_check_interval {
            to_ping.push(entry);
        }
    }
    let timeout = limits.connection_timeout.min(Duration::from_secs(5));
    futures::future::join_all(to_ping.into_iter().map(|entry| ping(pool, entry, timeout))).await;
    pool.warm_up().await;
}

/// Runs an empty query on an idle connection; closes it if that fails.
async fn ping(pool: &ManagedPool, entry: Arc<ConnEntry>, timeout: Duration) {
    let Some(client) = entry.client() else {
        return;
    };
    let failure = match tokio::time::timeout(timeout, client.simple_query("")).await {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(crate::postgres::error_chain(&err)),
        Err(_) => Some(format!("keepalive timed out after {timeout:?}")),
    };
    match failure {
        None => entry.mark_checked(),
        Some(error) => {
            // The driver may already have reported this break; a second
            // report would count one broken connection twice.
            if !client.is_closed() {
                pool.shared().connection_broke(error);
            }
            entry.close_if_idle(CloseReason::Broken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_is_a_quarter_of_the_shortest_duration_within_bounds() {
        let mut limits = PoolLimits {
            max_connections: 1,
            min_connections: 0,
            connection_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(300),
            health_check_interval: Duration::from_secs(8),
            statement_timeout: None,
            max_lifetime: Duration::from_secs(1800),
        };
        assert_eq!(cadence(&limits), Duration::from_secs(2));
        limits.idle_timeout = Duration::from_millis(20);
        assert_eq!(cadence(&limits), Duration::from_millis(10));
        limits.idle_timeout = Duration::from_secs(3600);
        limits.health_check_interval = Duration::from_secs(3600);
        assert_eq!(cadence(&limits), Duration::from_secs(5));
    }
}
