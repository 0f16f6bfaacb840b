//! The pool core: every server connection of one pool, each in exactly one
//! state, kept in one table under one lock. Counts (open, idle, active,
//! closing), the `max_connections` limit, resize, drain and maintenance all
//! read that table; nothing keeps a count of its own that could drift.
//!
//! ```text
//!             connect ok                 release (clean)
//! Connecting ───────────► Leased ◄──────────────────────── Idle
//!     │                   │  │ ▲  checkout / handoff ──────▲ │
//!     │ connect failed    │  │ └── Resetting ◄── release   │ │ due for a ping
//!     ▼                   │  │      (dirty)                │ ▼
//!  (gone)                 │  └──────────────────────── Checking
//!                         ▼ close (discarded, retired, broken, lifetime, idle, drain)
//!                      Closing ──── the server closed the socket ───► (gone)
//! ```
//!
//! A connection is in the table from before its connect until the server
//! has closed its socket ([`ServerSlot`]): the table's size is what
//! PostgreSQL counts, so `open ≤ max_connections` holds as the server sees it.
//!
//! Waiters queue in FIFO order and are *handed* what frees up (an idle
//! connection or a slot to connect with) directly, so a newcomer cannot
//! overtake a waiter. A waiter that gives up (timeout, cancelled) returns
//! anything handed to it meanwhile.
//!
//! Invariant: no [`ServerSlot`] and no connection is dropped while the table
//! lock is held (a slot's release takes the lock itself); everything to
//! drop or close is carried out of the critical section first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::connector::{CancelHandle, Connection, Connector, ServerSlot, SlotEnd};
use super::stats::{CloseReason, PoolStats};

/// The state of one server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Holding a slot, being opened.
    Connecting,
    /// In the pool, ready to hand out.
    Idle,
    /// Lent to a caller.
    Leased,
    /// Taken from the idle list for a liveness ping.
    Checking,
    /// Back from a caller that used it; its session is being reset.
    Resetting,
    /// Asked to close; still counted until the server has closed it.
    Closing,
}

/// Connections by state, read in one pass under the lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub connecting: u64,
    pub idle: u64,
    pub leased: u64,
    pub checking: u64,
    pub resetting: u64,
    pub closing: u64,
    /// Most connections open at once since the pool started (or since
    /// statistics were reset).
    pub peak: u64,
}

impl ConnCounts {
    /// Every connection PostgreSQL sees, whatever its state.
    pub fn open(&self) -> u64 {
        self.connecting + self.idle + self.leased + self.checking + self.resetting + self.closing
    }

    /// Lent out, or being reset after a caller: not available.
    pub fn active(&self) -> u64 {
        self.leased + self.resetting
    }

    /// Available, or about to be (a ping of an idle connection).
    pub fn available(&self) -> u64 {
        self.idle + self.checking
    }
}

/// Why a statement on a lease was cancelled by poolplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The caller's deadline passed, or the caller went away.
    Deadline,
    /// The pool is being drained and the drain ran out of time (or was forced).
    Drain,
    /// The caller stopped reading the result (a row or size limit, a value
    /// it cannot return): the rest must not keep the backend busy.
    ResultLimit,
    /// The pool was paused and its in-flight work ran out of time (or the
    /// pause was forced).
    Pause,
}

/// Whether the caller's statement may take effect yet: a race between the
/// statement going out and the caller giving up, settled by one CAS.
const EFFECT_OPEN: u8 = 0;
const EFFECT_SENT: u8 = 1;
const EFFECT_STOPPED: u8 = 2;

const FATE_KEEP: u8 = 0;
const FATE_DISCARD: u8 = 1;
const FATE_CANCELLED: u8 = 2; // + CancelReason index

/// What a lease shares with whoever may cancel it (its caller's deadline,
/// a drain): the connection's cancel handle and its fate.
pub(crate) struct LeaseControl<C: Connector> {
    cancel: <C::Conn as Connection>::Cancel,
    cancel_timeout: Duration,
    fate: AtomicU8,
    /// Something was sent since the connection was last known clean.
    dirty: AtomicBool,
    effect: AtomicU8,
    /// Woken when the lease is cancelled, for work that waits on something
    /// else than the server (a slow reader) and must stop.
    cancelled: tokio::sync::Notify,
}

impl<C: Connector> LeaseControl<C> {
    /// The statement that takes effect (Execute's statement, a batch's
    /// COMMIT) is about to go out; false if the caller gave up first, and
    /// then it must not be sent.
    pub(crate) fn begin_effect(&self) -> bool {
        match self.effect.compare_exchange(
            EFFECT_OPEN,
            EFFECT_SENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(current) => current == EFFECT_SENT,
        }
    }

    /// Whether the statement that takes effect has gone out.
    pub(crate) fn effect_sent(&self) -> bool {
        self.effect.load(Ordering::Acquire) == EFFECT_SENT
    }

    /// The caller gives up: nothing that takes effect goes out from now on.
    /// True if it had already gone out (it may have taken effect).
    pub(crate) fn stop(&self) -> bool {
        match self.effect.compare_exchange(
            EFFECT_OPEN,
            EFFECT_STOPPED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => false,
            Err(current) => current == EFFECT_SENT,
        }
    }

    pub(crate) fn reusable(&self) -> bool {
        self.fate.load(Ordering::Acquire) == FATE_KEEP
    }

    pub(crate) fn discard(&self) {
        let _ = self.fate.compare_exchange(
            FATE_KEEP,
            FATE_DISCARD,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn cancel_reason(&self) -> Option<CancelReason> {
        match self
            .fate
            .load(Ordering::Acquire)
            .checked_sub(FATE_CANCELLED)
        {
            Some(0) => Some(CancelReason::Deadline),
            Some(1) => Some(CancelReason::Drain),
            Some(2) => Some(CancelReason::ResultLimit),
            Some(3) => Some(CancelReason::Pause),
            _ => None,
        }
    }

    pub(crate) fn set_dirty(&self, dirty: bool) {
        self.dirty.store(dirty, Ordering::Release);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Never reuse the connection: a cancel request is about to go out,
    /// and a late one must not hit the next borrower.
    pub(crate) fn mark_cancelled(&self, reason: CancelReason) {
        self.fate
            .store(FATE_CANCELLED + reason as u8, Ordering::Release);
        self.cancelled.notify_waiters();
    }

    /// Resolves once the lease is cancelled (at once if it already is).
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.cancelled.notified();
            tokio::pin!(notified);
            // Registered before the check: a cancel in between still wakes it.
            notified.as_mut().enable();
            if self.cancel_reason().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection, then asks the server to cancel. True if the
    /// request was delivered.
    pub(crate) async fn cancel(&self, reason: CancelReason) -> bool {
        self.stop();
        self.mark_cancelled(reason);
        match tokio::time::timeout(self.cancel_timeout, self.cancel.cancel()).await {
            Ok(sent) => sent,
            Err(_) => {
                tracing::warn!(timeout = ?self.cancel_timeout, "cancel request timed out");
                false
            }
        }
    }
}

/// What frees up for a waiter.
enum Grant<C: Connector> {
    /// An idle connection, now leased to the waiter.
    Conn { id: u64, conn: C::Conn },
    /// A slot (its entry is Connecting) to open a connection with.
    Connect { id: u64, slot: ServerSlot },
}

struct Entry<C: Connector> {
    state: ConnState,
    /// The connection, while the table holds it (Idle).
    conn: Option<C::Conn>,
    /// While leased: what a drain needs to cancel it.
    lease: Option<Arc<LeaseControl<C>>>,
    created: Instant,
    /// This connection's share of the lifetime jitter, 0.0..0.1: it is
    /// retired at `max_lifetime * (1 - jitter)`.
    lifetime_jitter: f64,
    idle_since: Instant,
    checked_at: Instant,
    /// Close it when it comes back instead of reusing it.
    retire: Option<CloseReason>,
    /// Why it is closing; the first reason given stays.
    close_reason: Option<CloseReason>,
    /// Whether the connect succeeded (a failed open is not a "close").
    opened: bool,
    /// A caller's statement runs (or ran) on it since it was last put back:
    /// the server ending it on request now is no pool failure.
    running_statement: bool,
}

struct Table<C: Connector> {
    entries: HashMap<u64, Entry<C>>,
    /// Idle connection ids, most recently returned last (taken LIFO, so
    /// idle ones above the minimum age and get reaped).
    idle: VecDeque<u64>,
    /// Callers waiting, in arrival order, and whether each may be handed a
    /// slot to open a connection with.
    waiters: VecDeque<(u64, Growth, oneshot::Sender<Grant<C>>)>,
    next_id: u64,
    max: usize,
    serving: bool,
    peak: usize,
    /// Set while paused: nothing is handed out, callers queue.
    pause: Option<Pause>,
    /// When the last pause ended: a queued caller's acquire timeout counts
    /// from there.
    resumed_at: Option<Instant>,
}

/// How a pool is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pause {
    /// Most callers that may queue while paused.
    pub(crate) queue_limit: usize,
    /// Close connections as they become idle (for a database restart).
    pub(crate) close_connections: bool,
}

/// The shared part of a pool core; slots and leases point back at it.
pub(crate) struct Core<C: Connector> {
    connector: RwLock<Arc<C>>,
    table: Mutex<Table<C>>,
    /// Woken on every state change a drain or a resize may be waiting for.
    changed: Notify,
    stats: Arc<PoolStats>,
    /// Called with the error when a connection breaks (told by its slot).
    on_broken: Box<dyn Fn(String) + Send + Sync>,
    this: Weak<Core<C>>,
}

/// Anything to drop or close once the lock is released.
struct Aftermath<C: Connector> {
    close: Vec<C::Conn>,
    grants: Vec<Grant<C>>,
}

impl<C: Connector> Default for Aftermath<C> {
    fn default() -> Self {
        Aftermath {
            close: Vec::new(),
            grants: Vec::new(),
        }
    }
}

impl<C: Connector> Aftermath<C> {
    fn run(self) {
        for conn in self.close {
            conn.close();
        }
        // Grants no waiter took: dropping one frees its slot or connection.
        drop(self.grants);
    }
}

/// How one acquisition ended, for the caller to map to an outcome.
pub(crate) enum AcquireError<E> {
    /// Nothing freed up within the timeout.
    Timeout,
    /// The pool stopped serving.
    Draining,
    /// Opening a connection failed.
    Connect(E),
    /// The pool is paused and its queue is full.
    QueueFull,
}

/// Whether an acquisition may open a connection on a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    Open,
    Wait,
}

/// A connection lent out by the core; `core.rs`'s half of a lease.
pub(crate) struct Borrowed<C: Connector> {
    pub(crate) id: u64,
    pub(crate) conn: C::Conn,
    pub(crate) control: Arc<LeaseControl<C>>,
    /// Whether this connection was opened for this acquisition.
    pub(crate) fresh: bool,
}

impl<C: Connector> Core<C> {
    pub(crate) fn new(
        connector: C,
        max: u32,
        stats: Arc<PoolStats>,
        on_broken: impl Fn(String) + Send + Sync + 'static,
    ) -> Arc<Core<C>> {
        Arc::new_cyclic(|this| Core {
            connector: RwLock::new(Arc::new(connector)),
            table: Mutex::new(Table {
                entries: HashMap::new(),
                idle: VecDeque::new(),
                waiters: VecDeque::new(),
                next_id: 0,
                max: max as usize,
                serving: true,
                pause: None,
                resumed_at: None,
                peak: 0,
            }),
            changed: Notify::new(),
            stats,
            on_broken: Box::new(on_broken),
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table<C>> {
        // A panic while holding the lock leaves the table consistent (every
        // transition is a single assignment or a push/remove pair).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn connector(&self) -> Arc<C> {
        match self.connector.read() {
            Ok(connector) => Arc::clone(&connector),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// New connections are opened with `connector` from now on.
    pub(crate) fn set_connector(&self, connector: C) {
        match self.connector.write() {
            Ok(mut current) => *current = Arc::new(connector),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(connector),
        }
    }

    /// Connections by state, now.
    pub(crate) fn counts(&self) -> ConnCounts {
        let table = self.lock();
        let mut counts = ConnCounts {
            peak: table.peak as u64,
            ..ConnCounts::default()
        };
        for entry in table.entries.values() {
            *match entry.state {
                ConnState::Connecting => &mut counts.connecting,
                ConnState::Idle => &mut counts.idle,
                ConnState::Leased => &mut counts.leased,
                ConnState::Checking => &mut counts.checking,
                ConnState::Resetting => &mut counts.resetting,
                ConnState::Closing => &mut counts.closing,
            } += 1;
        }
        counts
    }

    /// Restarts the peak from the connections open now.
    pub(crate) fn reset_peak(&self) {
        let mut table = self.lock();
        table.peak = table.entries.len();
    }

    pub(crate) fn serving(&self) -> bool {
        self.lock().serving
    }

    /// Borrows a connection within `timeout`: an idle one (pinged first if
    /// unchecked for `check_after`), else a new one if a slot is free,
    /// else the first that frees up, in arrival order.
    pub(crate) async fn acquire(
        &self,
        timeout: Duration,
        check_after: Duration,
        cancel_timeout: Duration,
    ) -> Result<Borrowed<C>, AcquireError<C::Error>> {
        self.acquire_as(timeout, check_after, cancel_timeout, Growth::Open)
            .await
    }

    /// As [`Core::acquire`], but opens no connection on a free slot: waits
    /// for one of the open connections (after opening one just failed, a
    /// caller waits for the others rather than failing, or trying again
    /// at once). It is handed returned connections only, never a slot.
    pub(crate) async fn acquire_without_growing(
        &self,
        timeout: Duration,
        check_after: Duration,
        cancel_timeout: Duration,
    ) -> Result<Borrowed<C>, AcquireError<C::Error>> {
        self.acquire_as(timeout, check_after, cancel_timeout, Growth::Wait)
            .await
    }

    async fn acquire_as(
        &self,
        timeout: Duration,
        check_after: Duration,
        cancel_timeout: Duration,
        growth: Growth,
    ) -> Result<Borrowed<C>, AcquireError<C::Error>> {
        let mut deadline = Instant::now() + timeout;
        loop {
            let grant = match self.take_or_queue(growth)? {
                Step::Go(grant) => grant,
                Step::Wait(waiter) => {
                    let (grant, extended) = waiter.wait(deadline, timeout).await?;
                    // A pause moved it: the connect gets the rest.
                    deadline = extended;
                    grant
                }
            };
            let (id, conn, fresh) = match grant {
                Grant::Conn { id, conn } => {
                    if !self
                        .usable(id, &conn, check_after, check_timeout(timeout))
                        .await
                    {
                        continue;
                    }
                    (id, conn, false)
                }
                Grant::Connect { id, slot } => (id, self.open(id, slot, deadline).await?, true),
            };
            let control = Arc::new(LeaseControl {
                cancel: conn.cancel_handle(),
                cancel_timeout,
                fate: AtomicU8::new(FATE_KEEP),
                dirty: AtomicBool::new(false),
                effect: AtomicU8::new(EFFECT_OPEN),
                cancelled: tokio::sync::Notify::new(),
            });
            if !self.mark_leased(id, &control) {
                // The pool began draining while we got it: give it back.
                self.release(id, conn, &control).await;
                return Err(AcquireError::Draining);
            }
            return Ok(Borrowed {
                id,
                conn,
                control,
                fresh,
            });
        }
    }

    /// An idle connection, a slot, or a place in the queue.
    fn take_or_queue(&self, growth: Growth) -> Result<Step<'_, C>, AcquireError<C::Error>> {
        let mut table = self.lock();
        if !table.serving {
            return Err(AcquireError::Draining);
        }
        if let Some(pause) = table.pause {
            if table.waiters.len() >= pause.queue_limit {
                return Err(AcquireError::QueueFull);
            }
        } else if let Some(grant) = table.take_idle() {
            return Ok(Step::Go(grant));
        }
        // A free slot is this caller's unless an earlier one waits for a
        // slot too (those waiting only for a connection do not count).
        if growth == Growth::Open
            && table.pause.is_none()
            && table.entries.len() < table.max
            && !table
                .waiters
                .iter()
                .any(|(_, growth, _)| *growth == Growth::Open)
        {
            return Ok(Step::Go(self.reserve(&mut table)));
        }
        let id = table.next_id;
        table.next_id += 1;
        let (sender, receiver) = oneshot::channel();
        table.waiters.push_back((id, growth, sender));
        Ok(Step::Wait(Waiter {
            core: self,
            id,
            receiver: Some(receiver),
        }))
    }

    /// A new Connecting entry and the slot that frees it.
    fn reserve(&self, table: &mut Table<C>) -> Grant<C> {
        let id = table.next_id;
        table.next_id += 1;
        let now = Instant::now();
        table.entries.insert(
            id,
            Entry {
                state: ConnState::Connecting,
                conn: None,
                lease: None,
                created: now,
                lifetime_jitter: fastrand::f64() * 0.1,
                idle_since: now,
                checked_at: now,
                retire: None,
                close_reason: None,
                opened: false,
                running_statement: false,
            },
        );
        table.peak = table.peak.max(table.entries.len());
        let core = self.this.clone();
        let slot = ServerSlot::new(move |end| {
            if let Some(core) = core.upgrade() {
                core.slot_released(id, end);
            }
        });
        Grant::Connect { id, slot }
    }

    /// Opens a connection on a reserved slot, within `deadline`.
    ///
    /// The connect runs in a task of its own and is never abandoned half
    /// way: a server may already have started a backend for it, and only
    /// the connector can tell when that backend is gone. If the caller stops
    /// waiting (its timeout, or its future dropped), the finished
    /// connection joins the pool instead.
    async fn open(
        &self,
        id: u64,
        slot: ServerSlot,
        deadline: Instant,
    ) -> Result<C::Conn, AcquireError<C::Error>> {
        let Some(core) = self.this.upgrade() else {
            return Err(AcquireError::Draining);
        };
        let connector = self.connector();
        let (result_tx, result_rx) = oneshot::channel();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = connector.connect(slot).await;
            if result.is_ok() {
                core.stats.connection_opened(started.elapsed());
                if let Some(entry) = core.lock().entries.get_mut(&id) {
                    entry.opened = true;
                }
            }
            if let Err(Ok(conn)) = result_tx.send(result) {
                // Nobody waits for it any more: it serves the next caller.
                core.put_back(id, conn, true);
            }
        });
        match tokio::time::timeout_at(deadline, result_rx).await {
            Ok(Ok(Ok(conn))) => Ok(conn),
            Ok(Ok(Err(err))) => Err(AcquireError::Connect(err)),
            // The connect task panicked: its slot went with it.
            Ok(Err(_)) => Err(AcquireError::Timeout),
            Err(_) => Err(AcquireError::Timeout),
        }
    }

    /// Pings a connection taken from the idle list if it is due; closes it
    /// and says false if it is dead.
    async fn usable(
        &self,
        id: u64,
        conn: &C::Conn,
        check_after: Duration,
        ping_timeout: Duration,
    ) -> bool {
        let due = {
            let table = self.lock();
            table
                .entries
                .get(&id)
                .is_none_or(|entry| entry.checked_at.elapsed() >= check_after)
        };
        let failure = if conn.is_broken() {
            Some(None)
        } else if due {
            match tokio::time::timeout(ping_timeout, conn.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(Some(error)),
                Err(_) => Some(Some("check timed out".to_string())),
            }
        } else {
            None
        };
        match failure {
            None => {
                if due {
                    if let Some(entry) = self.lock().entries.get_mut(&id) {
                        entry.checked_at = Instant::now();
                    }
                }
                true
            }
            Some(error) => {
                // A driver that saw the break reports it through the slot;
                // report only what it cannot have seen yet.
                if let (Some(error), false) = (error, conn.is_broken()) {
                    self.stats.connection_broke();
                    (self.on_broken)(error);
                }
                self.close_leased(id, CloseReason::Broken, None);
                false
            }
        }
    }

    /// Records the lease on its entry; false if the pool stopped serving.
    fn mark_leased(&self, id: u64, control: &Arc<LeaseControl<C>>) -> bool {
        let mut table = self.lock();
        let serving = table.serving;
        if let Some(entry) = table.entries.get_mut(&id) {
            entry.state = ConnState::Leased;
            entry.lease = Some(Arc::clone(control));
        }
        serving
    }

    /// Takes a connection back from its lease: resets it first if it was
    /// used, closes it if it cannot be reused.
    pub(crate) async fn release(&self, id: u64, conn: C::Conn, control: &LeaseControl<C>) {
        if let Some(conn) = self.give_back(id, conn, control) {
            self.reset_then_put_back(id, conn).await;
        }
    }

    /// The synchronous part of a release: closes what cannot be reused,
    /// puts back what is clean, and hands back a connection whose session
    /// must be reset first (it is Resetting now).
    pub(crate) fn give_back(
        &self,
        id: u64,
        conn: C::Conn,
        control: &LeaseControl<C>,
    ) -> Option<C::Conn> {
        if conn.is_broken() {
            self.close_leased(id, CloseReason::Broken, Some(conn));
            return None;
        }
        if !control.reusable() {
            self.close_leased(id, CloseReason::Discarded, Some(conn));
            return None;
        }
        if control.is_dirty() {
            if let Some(entry) = self.lock().entries.get_mut(&id) {
                entry.state = ConnState::Resetting;
                entry.lease = None;
            }
            return Some(conn);
        }
        self.put_back(id, conn, true);
        None
    }

    /// Closes a connection that needed a reset nobody can run (no runtime).
    pub(crate) fn close_unreset(&self, id: u64, conn: C::Conn) {
        self.close_leased(id, CloseReason::Discarded, Some(conn));
    }

    /// Resets a connection's session, then puts it back (or closes it).
    pub(crate) async fn reset_then_put_back(&self, id: u64, conn: C::Conn) {
        match conn.reset().await {
            Ok(()) => self.put_back(id, conn, true),
            Err(error) => {
                tracing::warn!(%error, "closing a connection that could not be reset");
                self.close_leased(id, CloseReason::Discarded, Some(conn));
            }
        }
    }

    /// A clean connection returns: to the first waiter, else to the idle
    /// list; or it closes if it must not stay (retired, above a shrunk
    /// maximum, past its lifetime, pool draining). `used` says a caller
    /// had it (its idle time starts over), not just a ping.
    pub(crate) fn put_back(&self, id: u64, conn: C::Conn, used: bool) {
        let mut after: Aftermath<C> = Aftermath::default();
        {
            let mut table = self.lock();
            let live = table.live();
            let max = table.max;
            let serving = table.serving;
            let paused_closing = table.pause.is_some_and(|pause| pause.close_connections);
            let Some(entry) = table.entries.get_mut(&id) else {
                // Its server side is already gone (the slot was released).
                after.close.push(conn);
                drop(table);
                after.run();
                return;
            };
            entry.lease = None;
            entry.running_statement = false;
            let close = if !serving || live > max || paused_closing {
                Some(CloseReason::Retired)
            } else {
                entry.retire
            };
            match close {
                Some(reason) => {
                    entry.state = ConnState::Closing;
                    entry.close_reason.get_or_insert(reason);
                    after.close.push(conn);
                }
                None => table.hand_over(id, conn, used, &mut after),
            }
        }
        self.changed.notify_waiters();
        after.run();
    }

    /// Closes a connection that is out of the idle list (leased, checking,
    /// resetting); `conn` is `None` when its holder already dropped it.
    fn close_leased(&self, id: u64, reason: CloseReason, conn: Option<C::Conn>) {
        {
            let mut table = self.lock();
            if let Some(entry) = table.entries.get_mut(&id) {
                entry.state = ConnState::Closing;
                entry.lease = None;
                entry.close_reason.get_or_insert(reason);
            }
        }
        self.changed.notify_waiters();
        if let Some(conn) = conn {
            conn.close();
        }
    }

    /// A caller's statement is about to run on leased connection `id`.
    pub(crate) fn statement_starts(&self, id: u64) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.running_statement = true;
        }
    }

    /// A connection's server side is gone: its entry leaves the table and
    /// its place goes to the first waiter.
    fn slot_released(&self, id: u64, end: SlotEnd) {
        let mut after: Aftermath<C> = Aftermath::default();
        let removed = {
            let mut table = self.lock();
            let removed = table.entries.remove(&id);
            if let Some(entry) = &removed {
                if entry.state == ConnState::Idle {
                    table.idle.retain(|idle| *idle != id);
                }
            }
            table.grant_free_slots(self, &mut after);
            removed
        };
        let running = removed
            .as_ref()
            .is_some_and(|entry| entry.running_statement);
        let broken = match end {
            SlotEnd::Broken(error) => Some(error),
            // Ended on request while a caller's statement ran: that caller
            // (or an administrator) ended it, the pool did not fail.
            SlotEnd::Terminated(error) if running => {
                tracing::debug!(%error, "a connection was terminated during a caller's statement");
                None
            }
            SlotEnd::Terminated(error) => Some(error),
            SlotEnd::Closed => None,
        };
        if let Some(error) = &broken {
            self.stats.connection_broke();
            (self.on_broken)(error.clone());
        }
        if let Some(mut entry) = removed {
            if entry.opened {
                let reason = entry.close_reason.unwrap_or(if broken.is_some() {
                    CloseReason::Broken
                } else {
                    CloseReason::Discarded
                });
                self.stats.connection_closed(reason);
            }
            after.close.extend(entry.conn.take());
        }
        self.changed.notify_waiters();
        after.run();
    }

    /// Changes the maximum: a larger one serves waiters at once; a smaller
    /// one closes idle connections now and busy ones when they return.
    pub(crate) fn resize(&self, max: u32) {
        let mut after: Aftermath<C> = Aftermath::default();
        {
            let mut table = self.lock();
            table.max = max as usize;
            let mut excess = table.live().saturating_sub(table.max);
            while excess > 0 {
                let Some(id) = table.idle.pop_front() else {
                    break;
                };
                after
                    .close
                    .extend(table.close_idle_entry(id, CloseReason::Retired));
                excess -= 1;
            }
            table.grant_free_slots(self, &mut after);
        }
        self.changed.notify_waiters();
        after.run();
    }

    /// Every connection open now is replaced: idle ones close at once, busy
    /// ones when they return (new settings reach every connection).
    pub(crate) fn retire_all(&self, reason: CloseReason) {
        let mut after: Aftermath<C> = Aftermath::default();
        {
            let mut table = self.lock();
            while let Some(id) = table.idle.pop_front() {
                after.close.extend(table.close_idle_entry(id, reason));
            }
            for entry in table.entries.values_mut() {
                entry.retire.get_or_insert(reason);
            }
        }
        self.changed.notify_waiters();
        after.run();
    }

    /// Waits until at most `max` connections are open, or `timeout` passed;
    /// true if reached.
    pub(crate) async fn wait_open_at_most(&self, max: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |counts| counts.open() <= max)
            .await
    }

    /// Waits until no connection is lent out, or `timeout` passed.
    pub(crate) async fn wait_no_leases(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |counts| {
            counts.leased + counts.resetting + counts.checking == 0
        })
        .await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn(&ConnCounts) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.counts()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(&self.counts());
            }
        }
    }

    /// Pauses: from now on nothing is handed out and callers queue (at most
    /// `pause.queue_limit` of them). With `close_connections`, idle
    /// connections close now and busy ones when they return.
    pub(crate) fn pause(&self, pause: Pause) {
        let mut after: Aftermath<C> = Aftermath::default();
        {
            let mut table = self.lock();
            table.pause = Some(pause);
            if pause.close_connections {
                while let Some(id) = table.idle.pop_front() {
                    after
                        .close
                        .extend(table.close_idle_entry(id, CloseReason::Retired));
                }
            }
        }
        self.changed.notify_waiters();
        after.run();
    }

    /// Ends a pause: queued callers get what frees up, in arrival order.
    pub(crate) fn resume(&self) {
        let mut after: Aftermath<C> = Aftermath::default();
        {
            let mut table = self.lock();
            if table.pause.take().is_none() {
                return;
            }
            table.resumed_at = Some(Instant::now());
            while !table.waiters.is_empty() {
                let Some(Grant::Conn { id, conn }) = table.take_idle() else {
                    break;
                };
                table.hand_over(id, conn, false, &mut after);
            }
            table.grant_free_slots(self, &mut after);
        }
        self.changed.notify_waiters();
        after.run();
    }

    pub(crate) fn paused(&self) -> bool {
        self.pause_in_force().is_some()
    }

    /// The pause in force, if any.
    pub(crate) fn pause_in_force(&self) -> Option<Pause> {
        self.lock().pause
    }

    pub(crate) fn pause_queue_limit(&self) -> usize {
        self.pause_in_force().map_or(0, |pause| pause.queue_limit)
    }

    /// For a queued caller whose acquire `timeout` ran out: a later
    /// deadline if the pool is paused (`timeout` from now, checked again
    /// then) or was resumed since (`timeout` from the resume).
    fn paused_timeout(&self, timeout: Duration) -> Option<Instant> {
        let table = self.lock();
        match (table.pause, table.resumed_at) {
            (Some(_), _) => Some(Instant::now() + timeout),
            (None, Some(resumed)) => Some(resumed + timeout),
            (None, None) => None,
        }
    }

    /// Stops serving: queued callers are refused, idle connections close,
    /// busy ones close when they return.
    pub(crate) fn stop_serving(&self) {
        let mut after: Aftermath<C> = Aftermath::default();
        let waiters = {
            let mut table = self.lock();
            table.serving = false;
            while let Some(id) = table.idle.pop_front() {
                after
                    .close
                    .extend(table.close_idle_entry(id, CloseReason::Retired));
            }
            std::mem::take(&mut table.waiters)
        };
        // A waiter whose sender is dropped hears that the pool stopped.
        drop(waiters);
        self.changed.notify_waiters();
        after.run();
    }

    /// Cancels the statements of every lease out; how many were cancelled.
    pub(crate) async fn cancel_leases(&self, reason: CancelReason) -> u32 {
        let controls: Vec<Arc<LeaseControl<C>>> = {
            let table = self.lock();
            table
                .entries
                .values()
                .filter_map(|entry| entry.lease.clone())
                .collect()
        };
        let count = u32::try_from(controls.len()).unwrap_or(u32::MAX);
        futures::future::join_all(controls.iter().map(|control| control.cancel(reason))).await;
        count
    }

    /// One maintenance pass over the idle connections: closes those past
    /// their lifetime or idle too long above `min`, marks busy ones past
    /// their lifetime to close on return, and returns those due for a ping
    /// (now Checking).
    pub(crate) fn sweep(&self, limits: &SweepLimits) -> Vec<(u64, C::Conn)> {
        let mut after: Aftermath<C> = Aftermath::default();
        let mut to_ping = Vec::new();
        {
            let mut table = self.lock();
            let mut live = table.live();
            let ids: Vec<u64> = table.entries.keys().copied().collect();
            for id in ids {
                let Some(entry) = table.entries.get_mut(&id) else {
                    continue;
                };
                let lifetime = limits.max_lifetime.mul_f64(1.0 - entry.lifetime_jitter);
                let old = entry.created.elapsed() >= lifetime;
                match entry.state {
                    ConnState::Idle if old => {
                        after
                            .close
                            .extend(table.close_idle_entry(id, CloseReason::Lifetime));
                        live = live.saturating_sub(1);
                    }
                    ConnState::Idle
                        if entry.idle_since.elapsed() >= limits.idle_timeout
                            && live > limits.min =>
                    {
                        after
                            .close
                            .extend(table.close_idle_entry(id, CloseReason::Idle));
                        live = live.saturating_sub(1);
                    }
                    ConnState::Idle if entry.checked_at.elapsed() >= limits.check_after => {
                        entry.state = ConnState::Checking;
                        if let Some(conn) = entry.conn.take() {
                            to_ping.push((id, conn));
                        }
                        table.idle.retain(|idle| *idle != id);
                    }
                    ConnState::Leased | ConnState::Resetting if old => {
                        entry.retire.get_or_insert(CloseReason::Lifetime);
                    }
                    _ => {}
                }
            }
        }
        self.changed.notify_waiters();
        after.run();
        to_ping
    }

    /// An idle connection to ping now (it is Checking until
    /// [`Core::pinged`]), the most recently used first; `None` without one.
    pub(crate) fn check_one_idle(&self) -> Option<(u64, C::Conn)> {
        let mut table = self.lock();
        let id = table.idle.pop_back()?;
        let entry = table.entries.get_mut(&id)?;
        let conn = entry.conn.take()?;
        entry.state = ConnState::Checking;
        Some((id, conn))
    }

    /// Pings a connection taken for a check (`sweep`, `check_one_idle`)
    /// within `timeout`, then puts it back or closes it ([`Core::pinged`]).
    pub(crate) async fn ping(
        &self,
        id: u64,
        conn: C::Conn,
        timeout: Duration,
    ) -> Result<(), String> {
        let result = match tokio::time::timeout(timeout, conn.ping()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer to a keepalive check within {timeout:?}")),
        };
        self.pinged(id, conn, result.clone());
        result
    }

    /// Finishes a maintenance ping: back to the pool, or closed.
    pub(crate) fn pinged(&self, id: u64, conn: C::Conn, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(entry) = self.lock().entries.get_mut(&id) {
                    entry.checked_at = Instant::now();
                }
                self.put_back(id, conn, false);
            }
            Err(error) => {
                if !conn.is_broken() {
                    self.stats.connection_broke();
                    (self.on_broken)(error);
                }
                self.close_leased(id, CloseReason::Broken, Some(conn));
            }
        }
    }

    /// Opens connections until `min` are open (never above the maximum).
    pub(crate) async fn warm_up(&self, min: u32, timeout: Duration) -> WarmUp {
        let slots: Vec<Grant<C>> = {
            let mut table = self.lock();
            if !table.serving || table.pause.is_some() {
                return WarmUp::default();
            }
            let target = (min as usize).min(table.max);
            let missing = target.saturating_sub(table.entries.len());
            (0..missing).map(|_| self.reserve(&mut table)).collect()
        };
        let deadline = Instant::now() + timeout;
        let opens = slots.into_iter().map(|grant| async move {
            let Grant::Connect { id, slot } = grant else {
                return Ok(false);
            };
            match self.open(id, slot, deadline).await {
                Ok(conn) => {
                    self.put_back(id, conn, true);
                    Ok(true)
                }
                Err(AcquireError::Connect(err)) => Err(err.to_string()),
                Err(AcquireError::Timeout) => Err(format!("connect timed out after {timeout:?}")),
                Err(AcquireError::Draining | AcquireError::QueueFull) => Ok(false),
            }
        });
        let mut warmed = WarmUp::default();
        for result in futures::future::join_all(opens).await {
            match result {
                Ok(opened) => warmed.opened += usize::from(opened),
                Err(error) => {
                    warmed.error.get_or_insert(error);
                }
            }
        }
        warmed
    }
}

/// What a warm-up did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WarmUp {
    pub(crate) opened: usize,
    /// The first connect error, if any connect failed.
    pub(crate) error: Option<String>,
}

/// What a maintenance sweep judges idle connections by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SweepLimits {
    pub(crate) max_lifetime: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) check_after: Duration,
    /// Idle reaping keeps at least this many open.
    pub(crate) min: usize,
}

/// A check is one round trip: bounded by the acquire budget and 5 s.
fn check_timeout(acquire_timeout: Duration) -> Duration {
    acquire_timeout.min(Duration::from_secs(5))
}

impl<C: Connector> Table<C> {
    /// Connections not on their way out.
    fn live(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.state != ConnState::Closing)
            .count()
    }

    /// The most recently returned idle connection, now leased.
    fn take_idle(&mut self) -> Option<Grant<C>> {
        while let Some(id) = self.idle.pop_back() {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if let Some(conn) = entry.conn.take() {
                entry.state = ConnState::Leased;
                return Some(Grant::Conn { id, conn });
            }
        }
        None
    }

    /// An idle connection leaves the list to close; the caller closes it.
    fn close_idle_entry(&mut self, id: u64, reason: CloseReason) -> Option<C::Conn> {
        self.idle.retain(|idle| *idle != id);
        let entry = self.entries.get_mut(&id)?;
        entry.state = ConnState::Closing;
        entry.close_reason.get_or_insert(reason);
        entry.conn.take()
    }

    /// A clean connection goes to the first waiter still waiting, else idle
    /// (always idle while paused).
    fn hand_over(&mut self, id: u64, conn: C::Conn, used: bool, after: &mut Aftermath<C>) {
        let mut grant = Grant::Conn { id, conn };
        while let Some((_, _, waiter)) = self
            .pause
            .is_none()
            .then(|| self.waiters.pop_front())
            .flatten()
        {
            match waiter.send(grant) {
                Ok(()) => {
                    if let Some(entry) = self.entries.get_mut(&id) {
                        entry.state = ConnState::Leased;
                    }
                    return;
                }
                Err(returned) => grant = returned,
            }
        }
        match grant {
            Grant::Conn { id, conn } => match self.entries.get_mut(&id) {
                Some(entry) => {
                    entry.state = ConnState::Idle;
                    if used {
                        entry.idle_since = Instant::now();
                    }
                    entry.conn = Some(conn);
                    self.idle.push_back(id);
                }
                None => after.close.push(conn),
            },
            other => after.grants.push(other),
        }
    }

    /// Free places under the maximum go to waiters, as slots to connect
    /// with; only to those that may open one (a caller whose own connect
    /// just failed waits for a connection, not for another failure).
    fn grant_free_slots(&mut self, core: &Core<C>, after: &mut Aftermath<C>) {
        if !self.serving || self.pause.is_some() {
            return;
        }
        let may_grow = |(_, growth, _): &(u64, Growth, _)| *growth == Growth::Open;
        while self.entries.len() < self.max && self.waiters.iter().any(may_grow) {
            let mut offer = Some(core.reserve(self));
            while let Some(grant) = offer.take() {
                let taker = self.waiters.iter().position(may_grow);
                let Some((_, _, waiter)) = taker.and_then(|at| self.waiters.remove(at)) else {
                    // Nobody is waiting after all: the reserved slot goes (its
                    // release takes the lock, so only after we let go of it).
                    after.grants.push(grant);
                    return;
                };
                offer = waiter.send(grant).err();
            }
        }
    }
}

/// What an acquisition does next.
enum Step<'a, C: Connector> {
    /// Use this at once.
    Go(Grant<C>),
    /// Wait in the queue.
    Wait(Waiter<'a, C>),
}

/// A place in the queue. Dropped before it got anything, it leaves the
/// queue; anything handed to it meanwhile goes back.
struct Waiter<'a, C: Connector> {
    core: &'a Core<C>,
    id: u64,
    receiver: Option<oneshot::Receiver<Grant<C>>>,
}

impl<C: Connector> Waiter<'_, C> {
    async fn wait(
        mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Grant<C>, Instant), AcquireError<C::Error>> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Err(AcquireError::Draining);
        };
        let mut deadline = deadline;
        loop {
            match tokio::time::timeout_at(deadline, &mut *receiver).await {
                Ok(Ok(grant)) => {
                    self.receiver = None;
                    return Ok((grant, deadline));
                }
                // The sender was dropped: the pool stopped serving.
                Ok(Err(_)) => return Err(AcquireError::Draining),
                Err(_) => match self.core.paused_timeout(timeout) {
                    // Paused (or resumed since): the timeout is about the
                    // time the pool serves, not the pause.
                    Some(later) if later > Instant::now() => deadline = later,
                    _ => return Err(AcquireError::Timeout),
                },
            }
        }
    }
}

impl<C: Connector> Drop for Waiter<'_, C> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        {
            let mut table = self.core.lock();
            table.waiters.retain(|(id, _, _)| *id != self.id);
        }
        // Handed something after all, between the timeout and now.
        match receiver.try_recv() {
            Ok(Grant::Conn { id, conn }) => self.core.put_back(id, conn, false),
            Ok(grant @ Grant::Connect { .. }) => drop(grant),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::testing::{FakeConnector, FakeControl};

    fn core(max: u32) -> (Arc<Core<FakeConnector>>, FakeControl, Arc<PoolStats>) {
        let (connector, control) = FakeConnector::new();
        let stats = Arc::new(PoolStats::new());
        let core = Core::new(connector, max, Arc::clone(&stats), |_| {});
        (core, control, stats)
    }

    const SECOND: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);

    async fn borrow(core: &Core<FakeConnector>) -> Borrowed<FakeConnector> {
        match core.acquire(SECOND, HOUR, SECOND).await {
            Ok(borrowed) => borrowed,
            Err(_) => panic!("acquire failed"),
        }
    }

    async fn give_back(core: &Core<FakeConnector>, borrowed: Borrowed<FakeConnector>) {
        core.release(borrowed.id, borrowed.conn, &borrowed.control)
            .await;
    }

    /// Lets spawned close tasks and slot releases run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_opens_then_reuses_and_counts_follow_the_states() {
        let (core, control, stats) = core(2);
        let first = borrow(&core).await;
        assert!(first.fresh);
        assert_eq!(core.counts().leased, 1);
        give_back(&core, first).await;
        assert_eq!(
            (core.counts().idle, core.counts().open()),
            (1, 1),
            "returned idle"
        );
        let again = borrow(&core).await;
        assert!(!again.fresh, "the idle connection is reused");
        assert_eq!(control.opened(), 1);
        give_back(&core, again).await;
        assert_eq!(stats.lifetime(ConnCounts::default()).connections_created, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_times_out_and_a_waiter_gets_the_next_returned_connection() {
        let (core, _control, _) = core(1);
        let held = borrow(&core).await;
        let started = Instant::now();
        let timed_out = core.acquire(SECOND, HOUR, SECOND).await;
        assert!(matches!(timed_out, Err(AcquireError::Timeout)));
        assert_eq!(started.elapsed(), SECOND, "waited exactly the timeout");
        assert_eq!(
            core.lock().waiters.len(),
            0,
            "the timed-out waiter left the queue"
        );

        let core2 = Arc::clone(&core);
        let waiter = tokio::spawn(async move { core2.acquire(SECOND, HOUR, SECOND).await.ok() });
        settle().await;
        assert_eq!(core.lock().waiters.len(), 1);
        give_back(&core, held).await;
        let handed = waiter
            .await
            .ok()
            .flatten()
            .expect("handed the returned connection");
        assert!(!handed.fresh);
        assert_eq!(core.counts().open(), 1, "no second connection was opened");
        give_back(&core, handed).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_queues_callers_past_their_timeout_and_the_resume_serves_them_in_order() {
        let (core, _control, _) = core(1);
        give_back(&core, borrow(&core).await).await;
        core.pause(Pause {
            queue_limit: 3,
            close_connections: false,
        });
        let (served, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for n in 0..3 {
            let (core, served) = (Arc::clone(&core), served.clone());
            waiters.push(tokio::spawn(async move {
                let borrowed = borrow(&core).await;
                let _ = served.send(n);
                tokio::time::sleep(SECOND / 10).await;
                give_back(&core, borrowed).await;
            }));
            settle().await;
        }
        assert_eq!(
            core.lock().waiters.len(),
            3,
            "an idle connection is not handed out"
        );
        assert!(matches!(
            core.acquire(SECOND, HOUR, SECOND).await,
            Err(AcquireError::QueueFull)
        ));
        tokio::time::sleep(10 * SECOND).await;
        assert_eq!(
            core.lock().waiters.len(),
            3,
            "still waiting, ten timeouts later"
        );
        core.resume();
        for waiter in waiters {
            waiter.await.expect("served");
        }
        let order: Vec<i32> = std::iter::from_fn(|| order.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(
            core.counts().open(),
            1,
            "served one after another on one connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_that_closes_connections_closes_idle_now_and_busy_on_return() {
        let (core, _control, _) = core(2);
        let busy = borrow(&core).await;
        give_back(&core, borrow(&core).await).await;
        assert_eq!(core.counts().open(), 2);
        core.pause(Pause {
            queue_limit: 10,
            close_connections: true,
        });
        settle().await;
        assert_eq!(core.counts().open(), 1, "the idle one closed");
        give_back(&core, busy).await;
        settle().await;
        assert_eq!(core.counts().open(), 0, "the busy one closed on return");
        assert_eq!(
            core.warm_up(2, SECOND).await,
            WarmUp::default(),
            "no warm-up while paused"
        );
        core.resume();
        give_back(&core, borrow(&core).await).await;
        assert_eq!(core.counts().open(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_nothing_behind() {
        let (core, _control, _) = core(1);
        let held = borrow(&core).await;
        let core2 = Arc::clone(&core);
        let waiter = tokio::spawn(async move { core2.acquire(HOUR, HOUR, SECOND).await.is_ok() });
        settle().await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(core.lock().waiters.len(), 0);
        give_back(&core, held).await;
        assert_eq!(
            core.counts().idle,
            1,
            "the connection went idle, not to the dead waiter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_connect_finishes_and_joins_the_pool() {
        let (core, control, stats) = core(1);
        control.set_connect_delay(Duration::from_secs(10));
        let core2 = Arc::clone(&core);
        let connecting =
            tokio::spawn(async move { core2.acquire(HOUR, HOUR, SECOND).await.is_ok() });
        settle().await;
        assert_eq!(core.counts().connecting, 1);
        connecting.abort();
        let _ = connecting.await;
        // The server may already have a backend for it: the place stays
        // taken until the connect ends.
        assert_eq!(core.counts().connecting, 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!((core.counts().idle, core.counts().open()), (1, 1));
        assert_eq!(stats.lifetime(ConnCounts::default()).connections_created, 1);
        let borrowed = borrow(&core).await;
        assert!(
            !borrowed.fresh,
            "the finished connect serves the next caller"
        );
        give_back(&core, borrowed).await;

        // A caller whose own timeout passes mid-connect leaves it the same way.
        let (core, control, _) = self::core(1);
        control.set_connect_delay(Duration::from_secs(10));
        assert!(matches!(
            core.acquire(SECOND, HOUR, SECOND).await,
            Err(AcquireError::Timeout)
        ));
        assert_eq!(core.counts().connecting, 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(core.counts().idle, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connect_is_an_error_and_frees_its_slot() {
        let (core, control, _) = core(1);
        control.fail_connects(true);
        let result = core.acquire(SECOND, HOUR, SECOND).await;
        assert!(matches!(result, Err(AcquireError::Connect(_))));
        assert_eq!(core.counts().open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_may_not_grow_waits_for_a_connection_not_a_slot() {
        let (core, control, _) = core(2);
        let held = borrow(&core).await;
        control.fail_connects(true);
        let core2 = Arc::clone(&core);
        let waiter =
            tokio::spawn(async move { core2.acquire_without_growing(HOUR, HOUR, SECOND).await });
        settle().await;
        assert_eq!(core.lock().waiters.len(), 1, "queued though a slot is free");
        // A slot that frees up is not handed to it: a caller that may grow
        // takes it (and fails to connect), the waiter stays.
        let grower = core.acquire(SECOND, HOUR, SECOND).await;
        assert!(matches!(grower, Err(AcquireError::Connect(_))));
        settle().await;
        assert_eq!(
            core.lock().waiters.len(),
            1,
            "still waiting, no connect tried"
        );
        give_back(&core, held).await;
        let borrowed = waiter
            .await
            .expect("join")
            .ok()
            .expect("handed the returned connection");
        assert!(!borrowed.fresh);
        give_back(&core, borrowed).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_discarded_lease_closes_and_counts_until_the_server_lets_go() {
        let (core, control, stats) = core(2);
        control.set_close_delay(SECOND);
        let borrowed = borrow(&core).await;
        borrowed.control.discard();
        give_back(&core, borrowed).await;
        assert_eq!(core.counts().closing, 1, "closing still counts as open");
        tokio::time::sleep(SECOND * 2).await;
        settle().await;
        assert_eq!(core.counts().open(), 0);
        let closed = stats.lifetime(ConnCounts::default());
        assert_eq!(closed.closed_by_reason[CloseReason::Discarded as usize], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dirty_lease_is_reset_before_reuse_and_closed_if_the_reset_fails() {
        let (core, control, _) = core(1);
        let borrowed = borrow(&core).await;
        borrowed.control.set_dirty(true);
        give_back(&core, borrowed).await;
        assert_eq!(control.resets(), 1);
        assert_eq!(core.counts().idle, 1);
        control.fail_resets(true);
        let borrowed = borrow(&core).await;
        borrowed.control.set_dirty(true);
        give_back(&core, borrowed).await;
        settle().await;
        assert_eq!(
            core.counts().open(),
            0,
            "a connection that cannot be reset is closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_closes_idle_now_and_busy_on_return_growing_serves_waiters() {
        let (core, _control, _) = core(3);
        let a = borrow(&core).await;
        let b = borrow(&core).await;
        let c = borrow(&core).await;
        give_back(&core, c).await;
        core.resize(1);
        settle().await;
        assert_eq!(core.counts().open(), 2, "the idle one closed at once");
        give_back(&core, b).await;
        settle().await;
        assert_eq!(core.counts().open(), 1, "a busy one closed on return");
        give_back(&core, a).await;
        assert_eq!((core.counts().open(), core.counts().idle), (1, 1));

        let held = borrow(&core).await;
        let core2 = Arc::clone(&core);
        let waiter = tokio::spawn(async move { core2.acquire(HOUR, HOUR, SECOND).await.is_ok() });
        settle().await;
        core.resize(2);
        assert!(
            waiter.await.unwrap_or(false),
            "a grown pool serves the waiter at once"
        );
        give_back(&core, held).await;
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_refuses_waiters_closes_idle_and_closes_returns() {
        let (core, _control, _) = core(2);
        let a = borrow(&core).await;
        let b = borrow(&core).await;
        give_back(&core, b).await;
        let core2 = Arc::clone(&core);
        core.resize(1);
        let waiter = tokio::spawn(async move { core2.acquire(HOUR, HOUR, SECOND).await });
        settle().await;
        core.stop_serving();
        assert!(matches!(waiter.await, Ok(Err(AcquireError::Draining))));
        assert!(matches!(
            core.acquire(SECOND, HOUR, SECOND).await,
            Err(AcquireError::Draining)
        ));
        let cancelled = core.cancel_leases(CancelReason::Drain).await;
        assert_eq!(cancelled, 1);
        assert_eq!(a.control.cancel_reason(), Some(CancelReason::Drain));
        give_back(&core, a).await;
        assert!(core.wait_open_at_most(0, SECOND).await);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_retires_old_and_idle_connections_above_min_and_pings_the_rest() {
        let (core, control, stats) = core(4);
        let limits = SweepLimits {
            max_lifetime: Duration::from_secs(100),
            idle_timeout: Duration::from_secs(10),
            check_after: Duration::from_secs(5),
            min: 1,
        };
        let borrowed: Vec<_> = futures::future::join_all((0..3).map(|_| borrow(&core))).await;
        let mut borrowed = borrowed.into_iter();
        let busy = borrowed.next();
        for b in borrowed {
            give_back(&core, b).await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let to_ping = core.sweep(&limits);
        assert_eq!(to_ping.len(), 2, "both idle connections are due for a ping");
        assert_eq!(core.counts().checking, 2);
        for (id, conn) in to_ping {
            let result = conn.ping().await;
            core.pinged(id, conn, result);
        }
        assert_eq!(control.pings(), 2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        core.sweep(&limits);
        settle().await;
        assert_eq!(
            core.counts().open(),
            1,
            "idle above min reaped: only the busy one is left"
        );
        let idle_closed =
            stats.lifetime(ConnCounts::default()).closed_by_reason[CloseReason::Idle as usize];
        assert_eq!(idle_closed, 2);

        tokio::time::sleep(Duration::from_secs(100)).await;
        core.sweep(&limits);
        if let Some(busy) = busy {
            give_back(&core, busy).await;
        }
        settle().await;
        assert_eq!(
            core.counts().open(),
            0,
            "past its lifetime, closed when it came back"
        );
        let lifetime =
            stats.lifetime(ConnCounts::default()).closed_by_reason[CloseReason::Lifetime as usize];
        assert_eq!(lifetime, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkout_pings_a_connection_unchecked_too_long_and_replaces_a_dead_one() {
        let (core, control, stats) = core(1);
        let borrowed = borrow(&core).await;
        give_back(&core, borrowed).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        control.fail_pings(true);
        let replaced = core
            .acquire(SECOND, Duration::from_secs(5), SECOND)
            .await
            .map_err(|_| ())
            .expect("a new connection replaces the dead one");
        assert!(replaced.fresh);
        assert_eq!(stats.lifetime(ConnCounts::default()).broken_connections, 1);
        give_back(&core, replaced).await;
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_opens_the_minimum_and_no_more_than_the_maximum() {
        let (core, control, _) = core(2);
        assert_eq!(core.warm_up(5, SECOND).await.opened, 2);
        assert_eq!((core.counts().idle, control.opened()), (2, 2));
        assert_eq!(core.warm_up(1, SECOND).await, WarmUp::default());
        assert_eq!(control.opened(), 2, "already enough");
    }

    #[tokio::test(start_paused = true)]
    async fn a_statement_and_a_caller_giving_up_settle_who_was_first() {
        let (core, _control, _) = core(2);
        let sent_first = borrow(&core).await;
        assert!(sent_first.control.begin_effect());
        assert!(sent_first.control.stop(), "it may have run");
        assert!(sent_first.control.begin_effect(), "already out");
        let stopped_first = borrow(&core).await;
        assert!(!stopped_first.control.stop(), "nothing was sent");
        assert!(
            !stopped_first.control.begin_effect(),
            "must not be sent now"
        );
        give_back(&core, sent_first).await;
        give_back(&core, stopped_first).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_breaks_while_idle_leaves_the_table() {
        let (core, control, stats) = core(2);
        let borrowed = borrow(&core).await;
        give_back(&core, borrowed).await;
        control.break_all();
        settle().await;
        assert_eq!(core.counts().open(), 0);
        assert_eq!(stats.lifetime(ConnCounts::default()).broken_connections, 1);
        assert_eq!(
            stats.lifetime(ConnCounts::default()).closed_by_reason[CloseReason::Broken as usize],
            1
        );
    }
}
