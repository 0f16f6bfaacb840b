//! An in-memory connector for unit tests of the pool core under paused
//! time: connections that open, ping, reset, close and break on command,
//! with counts of what was done to them. No database, no sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::connector::{CancelHandle, Connection, Connector, ServerSlot, SlotEnd};

#[derive(Default)]
struct Behaviour {
    connect_delay: Mutex<Duration>,
    close_delay: Mutex<Duration>,
    fail_connects: AtomicBool,
    fail_pings: AtomicBool,
    fail_resets: AtomicBool,
    opened: AtomicU64,
    pings: AtomicU64,
    resets: AtomicU64,
    live: Mutex<Vec<Weak<FakeInner>>>,
}

/// Opens [`FakeConn`]s.
pub(crate) struct FakeConnector {
    behaviour: Arc<Behaviour>,
}

/// Steers a [`FakeConnector`] and reads what happened.
#[derive(Clone)]
pub(crate) struct FakeControl {
    behaviour: Arc<Behaviour>,
}

struct FakeInner {
    broken: AtomicBool,
    slot: Mutex<Option<ServerSlot>>,
    behaviour: Arc<Behaviour>,
}

/// One in-memory connection; dropping it ends it (as dropping a driver's
/// client does).
pub(crate) struct FakeConn(Arc<FakeInner>);

#[derive(Clone)]
pub(crate) struct FakeCancel;

impl FakeConnector {
    pub(crate) fn new() -> (FakeConnector, FakeControl) {
        let behaviour = Arc::new(Behaviour::default());
        (
            FakeConnector {
                behaviour: Arc::clone(&behaviour),
            },
            FakeControl { behaviour },
        )
    }
}

fn read(duration: &Mutex<Duration>) -> Duration {
    duration.lock().map(|d| *d).unwrap_or_default()
}

impl FakeControl {
    pub(crate) fn set_connect_delay(&self, delay: Duration) {
        if let Ok(mut slot) = self.behaviour.connect_delay.lock() {
            *slot = delay;
        }
    }

    pub(crate) fn set_close_delay(&self, delay: Duration) {
        if let Ok(mut slot) = self.behaviour.close_delay.lock() {
            *slot = delay;
        }
    }

    pub(crate) fn fail_connects(&self, fail: bool) {
        self.behaviour.fail_connects.store(fail, Ordering::SeqCst);
    }

    pub(crate) fn fail_pings(&self, fail: bool) {
        self.behaviour.fail_pings.store(fail, Ordering::SeqCst);
    }

    pub(crate) fn fail_resets(&self, fail: bool) {
        self.behaviour.fail_resets.store(fail, Ordering::SeqCst);
    }

    pub(crate) fn opened(&self) -> u64 {
        self.behaviour.opened.load(Ordering::SeqCst)
    }

    pub(crate) fn pings(&self) -> u64 {
        self.behaviour.pings.load(Ordering::SeqCst)
    }

    pub(crate) fn resets(&self) -> u64 {
        self.behaviour.resets.load(Ordering::SeqCst)
    }

    /// The server ends every open connection.
    pub(crate) fn break_all(&self) {
        let live: Vec<Arc<FakeInner>> = self
            .behaviour
            .live
            .lock()
            .map(|live| live.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for conn in live {
            conn.broken.store(true, Ordering::SeqCst);
            if let Some(slot) = conn.slot.lock().ok().and_then(|mut slot| slot.take()) {
                slot.end(SlotEnd::Broken("the fake server ended it".into()));
            }
        }
    }
}

impl Connector for FakeConnector {
    type Conn = FakeConn;
    type Error = String;

    async fn connect(&self, slot: ServerSlot) -> Result<FakeConn, String> {
        let delay = read(&self.behaviour.connect_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.behaviour.fail_connects.load(Ordering::SeqCst) {
            return Err("the fake server refused".into());
        }
        self.behaviour.opened.fetch_add(1, Ordering::SeqCst);
        let inner = Arc::new(FakeInner {
            broken: AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
            behaviour: Arc::clone(&self.behaviour),
        });
        if let Ok(mut live) = self.behaviour.live.lock() {
            live.push(Arc::downgrade(&inner));
        }
        Ok(FakeConn(inner))
    }
}

impl Connection for FakeConn {
    type Cancel = FakeCancel;

    fn is_broken(&self) -> bool {
        self.0.broken.load(Ordering::SeqCst)
    }

    async fn ping(&self) -> Result<(), String> {
        self.0.behaviour.pings.fetch_add(1, Ordering::SeqCst);
        if self.0.behaviour.fail_pings.load(Ordering::SeqCst) || self.is_broken() {
            Err("the fake ping failed".into())
        } else {
            Ok(())
        }
    }

    async fn reset(&self) -> Result<(), String> {
        self.0.behaviour.resets.fetch_add(1, Ordering::SeqCst);
        if self.0.behaviour.fail_resets.load(Ordering::SeqCst) {
            Err("the fake reset failed".into())
        } else {
            Ok(())
        }
    }

    fn close(&self) {
        let Some(slot) = self.0.slot.lock().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        let delay = read(&self.0.behaviour.close_delay);
        if delay.is_zero() {
            drop(slot);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                drop(slot);
            });
        }
    }

    fn cancel_handle(&self) -> FakeCancel {
        FakeCancel
    }
}

impl CancelHandle for FakeCancel {
    async fn cancel(&self) -> bool {
        true
    }
}
