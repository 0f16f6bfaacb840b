//! The table of a pool's open server connections, across generations.
//!
//! mobc keeps idle connections in a private list; this table lets the
//! maintenance loop see every connection anyway (age, idle time, whether it
//! is leased) and close one at once through its stream's closer. A small
//! state machine per connection settles races between maintenance and a
//! checkout: a connection is IDLE, LEASED or CLOSING, and only a CAS from
//! IDLE moves it to either of the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::stats::CloseReason;
use crate::postgres::Closer;

const IDLE: u8 = 0;
const LEASED: u8 = 1;
const CLOSING: u8 = 2;

/// Why poolplane cancelled a running statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The caller's deadline passed, or the caller went away.
    Deadline,
    /// The pool is being drained and the drain ran out of time (or was forced).
    Drain,
    /// The caller stopped reading the result (a row or size limit): the
    /// rest must not keep the backend busy.
    ResultLimit,
}

const NO_REASON: u8 = u8::MAX;

const FATE_KEEP: u8 = 0;
const FATE_DISCARD: u8 = 1;
const FATE_CANCELLED_DEADLINE: u8 = 2;
const FATE_CANCELLED_DRAIN: u8 = 3;
const FATE_CANCELLED_RESULT_LIMIT: u8 = 4;

/// One open connection as the table sees it.
pub(crate) struct ConnEntry {
    id: u64,
    created: Instant,
    /// This connection's share of the lifetime jitter, 0.0..0.1: it is
    /// retired at `max_lifetime * (1 - jitter)`.
    lifetime_jitter: f64,
    state: AtomicU8,
    fate: AtomicU8,
    /// Why it is being closed, once decided (first decision wins).
    close_reason: AtomicU8,
    /// Microseconds since `created` when it last went idle / was last checked.
    idle_since_us: AtomicU64,
    checked_at_us: AtomicU64,
    client: Mutex<Weak<Client>>,
    closer: Mutex<Option<Closer>>,
}

impl ConnEntry {
    fn new(id: u64, lifetime_jitter: f64) -> ConnEntry {
        ConnEntry {
            id,
            created: Instant::now(),
            lifetime_jitter,
            // A new connection goes straight to the caller that opened it.
            state: AtomicU8::new(LEASED),
            fate: AtomicU8::new(FATE_KEEP),
            close_reason: AtomicU8::new(NO_REASON),
            idle_since_us: AtomicU64::new(0),
            checked_at_us: AtomicU64::new(0),
            client: Mutex::new(Weak::new()),
            closer: Mutex::new(None),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn attach(&self, client: &Arc<Client>, closer: Closer) {
        if let Ok(mut slot) = self.client.lock() {
            *slot = Arc::downgrade(client);
        }
        if let Ok(mut slot) = self.closer.lock() {
            *slot = Some(closer);
        }
    }

    pub(crate) fn client(&self) -> Option<Arc<Client>> {
        self.client.lock().ok().and_then(|weak| weak.upgrade())
    }

    /// Checkout: IDLE → LEASED. False if maintenance is closing it.
    pub(crate) fn try_lease(&self) -> bool {
        match self
            .state
            .compare_exchange(IDLE, LEASED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            // Brand-new connections are handed out already leased.
            Err(current) => current == LEASED,
        }
    }

    /// Return: LEASED → IDLE, starting its idle clock.
    pub(crate) fn release(&self) {
        let now = self.now_us();
        self.idle_since_us.store(now, Ordering::Relaxed);
        self.checked_at_us.store(now, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(LEASED, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.state.load(Ordering::Acquire) == IDLE
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let since = self.idle_since_us.load(Ordering::Relaxed);
        Duration::from_micros(self.now_us().saturating_sub(since))
    }

    pub(crate) fn unchecked_for(&self) -> Duration {
        let at = self.checked_at_us.load(Ordering::Relaxed);
        Duration::from_micros(self.now_us().saturating_sub(at))
    }

    pub(crate) fn mark_checked(&self) {
        self.checked_at_us.store(self.now_us(), Ordering::Relaxed);
    }

    pub(crate) fn lifetime_over(&self, max_lifetime: Duration) -> bool {
        self.created.elapsed() >= max_lifetime.mul_f64(1.0 - self.lifetime_jitter)
    }

    /// Records why the connection is closing; the first reason given stays.
    pub(crate) fn set_close_reason(&self, reason: CloseReason) {
        let _ = self.close_reason.compare_exchange(
            NO_REASON,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_index(self.close_reason.load(Ordering::Acquire))
    }

    /// Closes an idle connection now: IDLE → CLOSING, then close its
    /// socket (the backend ends, then the driver and its slot). False if it
    /// was leased meanwhile; then it is marked to close when it comes back.
    pub(crate) fn close_if_idle(&self, reason: CloseReason) -> bool {
        if self
            .state
            .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.retire_when_returned(reason);
            return false;
        }
        self.set_close_reason(reason);
        if let Some(closer) = self.closer.lock().ok().and_then(|mut slot| slot.take()) {
            closer.close();
        }
        true
    }

    /// Close it when its lease ends, for `reason`.
    pub(crate) fn retire_when_returned(&self, reason: CloseReason) {
        self.set_close_reason(reason);
        self.discard();
    }

    /// Never reuse the connection (a result abandoned half-read, a broken
    /// socket, its lifetime is over).
    pub(crate) fn discard(&self) {
        let _ = self.fate.compare_exchange(
            FATE_KEEP,
            FATE_DISCARD,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Never reuse it, because a cancel request was sent: a late cancel
    /// must not hit the next borrower's statement.
    pub(crate) fn cancelled(&self, reason: CancelReason) {
        let fate = match reason {
            CancelReason::Deadline => FATE_CANCELLED_DEADLINE,
            CancelReason::Drain => FATE_CANCELLED_DRAIN,
            CancelReason::ResultLimit => FATE_CANCELLED_RESULT_LIMIT,
        };
        self.fate.store(fate, Ordering::Release);
    }

    pub(crate) fn reusable(&self) -> bool {
        self.fate.load(Ordering::Acquire) == FATE_KEEP
    }

    pub(crate) fn cancel_reason(&self) -> Option<CancelReason> {
        match self.fate.load(Ordering::Acquire) {
            FATE_CANCELLED_DEADLINE => Some(CancelReason::Deadline),
            FATE_CANCELLED_DRAIN => Some(CancelReason::Drain),
            FATE_CANCELLED_RESULT_LIMIT => Some(CancelReason::ResultLimit),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(crate) struct ConnTable {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<ConnEntry>>>,
}

impl ConnTable {
    pub(crate) fn add(&self, lifetime_jitter: f64) -> Arc<ConnEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnEntry::new(id, lifetime_jitter));
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(id, Arc::clone(&entry));
        }
        entry
    }

    pub(crate) fn remove(&self, id: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&id);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<ConnEntry>> {
        self.entries
            .lock()
            .map(|entries| entries.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closing_cannot_be_leased_and_a_leased_one_is_not_closed() {
        let table = ConnTable::default();
        let entry = table.add(0.0);
        assert!(entry.try_lease(), "new connections are already leased");
        assert!(
            !entry.close_if_idle(CloseReason::Idle),
            "a leased connection is not closed"
        );
        assert!(!entry.reusable(), "but it will not be reused");
        assert_eq!(entry.close_reason(), Some(CloseReason::Idle));

        let entry = table.add(0.0);
        entry.release();
        assert!(entry.is_idle());
        assert!(entry.close_if_idle(CloseReason::Lifetime));
        assert!(!entry.try_lease(), "closing wins over a late checkout");
        entry.set_close_reason(CloseReason::Broken);
        assert_eq!(
            entry.close_reason(),
            Some(CloseReason::Lifetime),
            "the first reason stays"
        );
    }

    #[test]
    fn lifetime_jitter_only_shortens() {
        let table = ConnTable::default();
        let entry = table.add(0.1);
        assert!(!entry.lifetime_over(Duration::from_secs(60)));
        assert!(entry.lifetime_over(Duration::ZERO));
    }

    #[test]
    fn cancel_reason_is_remembered() {
        let entry = ConnTable::default().add(0.0);
        assert_eq!(entry.cancel_reason(), None);
        entry.cancelled(CancelReason::Drain);
        assert_eq!(entry.cancel_reason(), Some(CancelReason::Drain));
        assert!(!entry.reusable());
    }
}
