//! The event bus: every event gets a server-wide increasing sequence number
//! and a timestamp, goes into a bounded replay buffer (except periodic
//! telemetry, which is live-only), and is broadcast to live subscribers.
//!
//! A subscriber that falls behind by more than its buffer loses the oldest
//! events it has not read and is told how many (tokio's broadcast lag), so
//! no subscriber can slow a publisher or another subscriber. Publishing
//! never blocks beyond one short mutex.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::health::HealthState;
use crate::monitor::{Alert, MetricsSample};
use crate::query::SessionInfo;

/// One thing that happened to one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub sequence: u64,
    pub time: SystemTime,
    pub pool: String,
    pub detail: EventDetail,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventDetail {
    PoolCreated,
    PoolUpdated,
    PoolRemoved,
    HealthChanged {
        from: HealthState,
        to: HealthState,
        reason: String,
    },
    /// A pool connection broke (the server or the network ended it).
    ConnectionLost {
        error: String,
    },
    /// The pool reached its database again after being unhealthy.
    ConnectionRecovered {
        failed_checks: u32,
        unhealthy_for: Duration,
    },
    CheckCompleted {
        state: HealthState,
        latency: Option<Duration>,
        error: Option<String>,
    },
    AlertTriggered(Alert),
    AlertAcknowledged(Alert),
    /// Resolved, or cleared by hand (the alert's state says which).
    AlertResolved(Alert),
    /// Opt-in for subscribers: one per pool per collection interval.
    MetricsSnapshot(MetricsSample),
    /// A session has held its connection past the pool's leak threshold.
    SessionLeak(SessionInfo),
    /// The configuration file was applied again (server-wide: no pool).
    ConfigReloaded(ReloadReport),
    /// A reload found errors and changed nothing (server-wide: no pool).
    ConfigReloadFailed {
        errors: Vec<String>,
    },
}

/// What a configuration reload did, pool by pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub created: Vec<String>,
    /// Draining: they disappear once their work is done.
    pub removed: Vec<String>,
    /// Settings changed live, connections kept.
    pub changed: Vec<String>,
    /// A new target or connection setting: connections being replaced.
    pub reconnected: Vec<String>,
    pub unchanged: Vec<String>,
    /// Sections that differ from the running server's and apply only at a
    /// restart.
    pub restart_needed: Vec<String>,
    /// Pools the file asks for that could not be started (e.g. server.max_pools).
    pub failed: Vec<String>,
}

/// The kind of an event, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
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

impl EventKind {
    /// Periodic telemetry (one per check, one per collection interval per
    /// pool): sent live but not kept for replay, so it cannot crowd the
    /// changes a resuming subscriber needs out of the replay buffer.
    pub fn is_live_only(self) -> bool {
        matches!(self, EventKind::CheckCompleted | EventKind::MetricsSnapshot)
    }
}

impl EventDetail {
    pub fn kind(&self) -> EventKind {
        match self {
            EventDetail::PoolCreated => EventKind::PoolCreated,
            EventDetail::PoolUpdated => EventKind::PoolUpdated,
            EventDetail::PoolRemoved => EventKind::PoolRemoved,
            EventDetail::HealthChanged { .. } => EventKind::HealthChanged,
            EventDetail::ConnectionLost { .. } => EventKind::ConnectionLost,
            EventDetail::ConnectionRecovered { .. } => EventKind::ConnectionRecovered,
            EventDetail::CheckCompleted { .. } => EventKind::CheckCompleted,
            EventDetail::AlertTriggered(_) => EventKind::AlertTriggered,
            EventDetail::AlertAcknowledged(_) => EventKind::AlertAcknowledged,
            EventDetail::AlertResolved(_) => EventKind::AlertResolved,
            EventDetail::MetricsSnapshot(_) => EventKind::MetricsSnapshot,
            EventDetail::SessionLeak(_) => EventKind::SessionLeak,
            EventDetail::ConfigReloaded(_) => EventKind::ConfigReloaded,
            EventDetail::ConfigReloadFailed { .. } => EventKind::ConfigReloadFailed,
        }
    }
}

pub struct EventBus {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    lagged_events: AtomicU64,
}

struct Ring {
    /// The sequence the next event gets; sequences start at 1.
    next: u64,
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The sequence of the newest event dropped from the buffer (0: none).
    evicted_through: u64,
}

/// What a new subscriber starts from: the buffered events it asked to
/// replay, then everything published after them, with nothing in between
/// missed or repeated.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The last sequence published when the subscription began (0 if none).
    pub last_sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The events right after `requested` were already dropped from the
    /// replay buffer: the subscriber must start over with a snapshot.
    #[error("cannot resume after sequence {requested}: the oldest event still buffered is {oldest}; start again with a snapshot")]
    TooOld { requested: u64, oldest: u64 },
    /// No such sequence was ever published here (the server restarted?).
    #[error("cannot resume after sequence {requested}: the latest event is {latest} (has the server restarted?); start again with a snapshot")]
    FromTheFuture { requested: u64, latest: u64 },
}

impl EventBus {
    /// `replay_capacity` events are kept for resuming; a live subscriber
    /// may fall `subscriber_capacity` events behind before it loses any.
    pub fn new(replay_capacity: usize, subscriber_capacity: usize) -> EventBus {
        let (live, _) = broadcast::channel(subscriber_capacity.max(1));
        EventBus {
            ring: Mutex::new(Ring {
                next: 1,
                events: VecDeque::with_capacity(replay_capacity.min(4096)),
                capacity: replay_capacity.max(1),
                evicted_through: 0,
            }),
            live,
            lagged_events: AtomicU64::new(0),
        }
    }

    /// Publishes an event and returns its sequence number.
    pub fn publish(&self, pool: &str, detail: EventDetail) -> u64 {
        let mut ring = self.lock();
        let event = Arc::new(Event {
            sequence: ring.next,
            time: SystemTime::now(),
            pool: pool.to_string(),
            detail,
        });
        ring.next += 1;
        if !event.detail.kind().is_live_only() {
            if ring.events.len() == ring.capacity {
                if let Some(evicted) = ring.events.pop_front() {
                    ring.evicted_through = evicted.sequence;
                }
            }
            ring.events.push_back(Arc::clone(&event));
        }
        // Sent under the lock, so a subscription taken under the same lock
        // sees each event exactly once: in its replay or live.
        let _no_subscribers = self.live.send(Arc::clone(&event));
        event.sequence
    }

    /// Subscribes to live events, first replaying those after
    /// `resume_after` (none when `None`). Live-only kinds are not replayed.
    pub fn subscribe(&self, resume_after: Option<u64>) -> Result<Subscription, ResumeError> {
        let ring = self.lock();
        let latest = ring.next - 1;
        let replay = match resume_after {
            None => Vec::new(),
            Some(requested) if requested > latest => {
                return Err(ResumeError::FromTheFuture { requested, latest })
            }
            Some(requested) => {
                if requested < ring.evicted_through {
                    return Err(ResumeError::TooOld {
                        requested,
                        oldest: ring.evicted_through + 1,
                    });
                }
                ring.events
                    .iter()
                    .filter(|e| e.sequence > requested)
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            replay,
            live: self.live.subscribe(),
            last_sequence: latest,
        })
    }

    /// The last sequence published (0 if none).
    pub fn last_sequence(&self) -> u64 {
        self.lock().next - 1
    }

    /// Counts events a slow subscriber lost (reported to it as a lag event).
    pub fn record_lag(&self, lost: u64) {
        self.lagged_events.fetch_add(lost, Ordering::Relaxed);
    }

    /// Events lost by slow subscribers since start, summed over subscribers.
    pub fn lagged_events(&self) -> u64 {
        self.lagged_events.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        match self.ring.lock() {
            Ok(ring) => ring,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_n(bus: &EventBus, n: usize) {
        for _ in 0..n {
            bus.publish("p", EventDetail::PoolUpdated);
        }
    }

    #[test]
    fn sequences_increase_from_one() {
        let bus = EventBus::new(10, 10);
        assert_eq!(bus.publish("a", EventDetail::PoolCreated), 1);
        assert_eq!(bus.publish("b", EventDetail::PoolCreated), 2);
        assert_eq!(bus.last_sequence(), 2);
    }

    #[test]
    fn resume_replays_exactly_what_followed() {
        let bus = EventBus::new(10, 10);
        publish_n(&bus, 5);
        let sub = bus.subscribe(Some(3)).expect("resumable");
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.sequence).collect();
        assert_eq!(replayed, [4, 5]);
        assert_eq!(sub.last_sequence, 5);
        let sub = bus.subscribe(Some(5)).expect("nothing to replay");
        assert!(sub.replay.is_empty());
    }

    #[test]
    fn resume_from_an_evicted_or_unknown_sequence_is_refused() {
        let bus = EventBus::new(4, 10);
        publish_n(&bus, 10);
        // Buffer holds 7..=10: resuming after 6 is fine, after 5 is not.
        assert!(bus.subscribe(Some(6)).is_ok());
        assert_eq!(
            bus.subscribe(Some(5)).err(),
            Some(ResumeError::TooOld {
                requested: 5,
                oldest: 7
            })
        );
        assert_eq!(
            bus.subscribe(Some(11)).err(),
            Some(ResumeError::FromTheFuture {
                requested: 11,
                latest: 10
            })
        );
    }

    #[test]
    fn live_only_events_keep_their_sequence_but_not_a_replay_slot() {
        let bus = EventBus::new(2, 10);
        bus.publish("p", EventDetail::PoolCreated);
        for _ in 0..100 {
            bus.publish(
                "p",
                EventDetail::CheckCompleted {
                    state: HealthState::Healthy,
                    latency: None,
                    error: None,
                },
            );
        }
        assert_eq!(bus.publish("p", EventDetail::PoolUpdated), 102);
        let sub = bus.subscribe(Some(0)).expect("nothing durable was evicted");
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.sequence).collect();
        assert_eq!(replayed, [1, 102]);
    }

    #[tokio::test]
    async fn live_events_follow_the_replay_without_gap_or_repeat() {
        let bus = EventBus::new(100, 100);
        publish_n(&bus, 3);
        let mut sub = bus.subscribe(Some(1)).expect("resumable");
        publish_n(&bus, 2);
        let mut seen: Vec<u64> = sub.replay.iter().map(|e| e.sequence).collect();
        while let Ok(event) = sub.live.try_recv() {
            seen.push(event.sequence);
        }
        assert_eq!(seen, [2, 3, 4, 5]);
    }
}
