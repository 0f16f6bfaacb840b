//! Background maintenance of one pool, never left to checkout time. One
//! loop per pool; each pass (`Core::sweep` decides under the table lock):
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
//! between 10 ms and 5 s. The loop ends when its pool is dropped or drained.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::connector::Connector;
use super::core::{Core, SweepLimits};
use crate::config::PoolLimits;

/// What the maintenance loop needs from the pool it tends.
pub(crate) trait Tended: Send + Sync + 'static {
    type Connector: Connector;
    fn core(&self) -> &Core<Self::Connector>;
    fn limits(&self) -> PoolLimits;
    /// Opens connections up to the minimum, if the pool may.
    fn warm_up(&self) -> impl Future<Output = ()> + Send;
}

pub(crate) async fn run<P: Tended>(pool: Weak<P>) {
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

async fn maintain<P: Tended>(pool: &Arc<P>) {
    let limits = pool.limits();
    let core = pool.core();
    let to_ping = core.sweep(&SweepLimits {
        max_lifetime: limits.max_lifetime,
        idle_timeout: limits.idle_timeout,
        check_after: limits.health_check_interval,
        min: limits.min_connections as usize,
    });
    let timeout = limits.connection_timeout.min(Duration::from_secs(5));
    let pings = to_ping.into_iter().map(|(id, conn)| async move {
        // A failed one is closed and reported by the core.
        let _ = core.ping(id, conn, timeout).await;
    });
    futures::future::join_all(pings).await;
    pool.warm_up().await;
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
