//! `poolplane.v1.PoolEvents/Watch`: a subscription to the event bus turned
//! into a gRPC stream: optional snapshot, replay after a sequence, live
//! events filtered by pool and kind, a LAGGED event when the subscriber fell
//! behind, and a clean end when the server shuts down.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use super::auth::identity;
use super::convert::{event_kind_from_proto, event_to_proto, lagged_event, snapshot_events};
use super::status::{invalid_argument, resume_status};
use crate::app::App;
use crate::auth::PoolScope;
use crate::events::{Event, EventBus, EventKind};
use crate::proto::{self, pool_events_server::PoolEvents};

pub(crate) struct EventsService {
    app: Arc<App>,
    stopping: watch::Receiver<bool>,
}

impl EventsService {
    pub(crate) fn new(app: Arc<App>, stopping: watch::Receiver<bool>) -> EventsService {
        EventsService { app, stopping }
    }
}

/// Which events a subscriber asked for.
struct Filter {
    pools: HashSet<String>,
    kinds: HashSet<EventKind>,
    /// The pools the caller may see at all.
    scope: PoolScope,
}

impl Filter {
    /// Metrics snapshots are opt-in: only subscribers naming the kind get them.
    fn matches(&self, event: &Event) -> bool {
        let kind = event.detail.kind();
        let kind_wanted = if self.kinds.is_empty() {
            kind != EventKind::MetricsSnapshot
        } else {
            self.kinds.contains(&kind)
        };
        kind_wanted && self.matches_pool(&event.pool)
    }

    fn matches_pool(&self, pool: &str) -> bool {
        self.scope.contains(pool) && (self.pools.is_empty() || self.pools.contains(pool))
    }
}

/// The state of one Watch stream between items.
struct WatchStream {
    /// Snapshot and replayed events, sent before anything live.
    queued: VecDeque<proto::Event>,
    live: broadcast::Receiver<Arc<Event>>,
    filter: Filter,
    stopping: watch::Receiver<bool>,
    bus: Arc<EventBus>,
}

impl WatchStream {
    async fn next(&mut self) -> Option<proto::Event> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            tokio::select! {
                changed = self.stopping.changed() => {
                    if changed.is_err() || *self.stopping.borrow() {
                        return None;
                    }
                }
                received = self.live.recv() => match received {
                    Ok(event) if self.filter.matches(&event) => return Some(event_to_proto(&event)),
                    Ok(_) => {}
                    Err(RecvError::Lagged(lost)) => {
                        self.bus.record_lag(lost);
                        return Some(lagged_event(lost));
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl PoolEvents for EventsService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let scope = identity(&request)?.pools.clone();
        let r = request.into_inner();
        if r.snapshot && r.resume_after.is_some() {
            return Err(invalid_argument(
                "resume_after",
                "choose snapshot (start from now) or resume_after (continue), not both",
            ));
        }
        let kinds = r
            .kinds
            .iter()
            .map(|kind| event_kind_from_proto(*kind))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = Filter {
            pools: r.pools.into_iter().collect(),
            kinds: kinds.into_iter().flatten().collect(),
            scope,
        };
        let bus = Arc::clone(self.app.events());
        let subscription = bus.subscribe(r.resume_after).map_err(resume_status)?;
        let mut queued: VecDeque<proto::Event> = VecDeque::new();
        if r.snapshot {
            // Taken after subscribing: nothing between the snapshot and the
            // live events is missed (an event may also show in the snapshot).
            let pools = self
                .app
                .pools_with_health()
                .into_iter()
                .filter(|(info, _)| filter.matches_pool(&info.config.name))
                .collect();
            let alerts = self
                .app
                .monitoring()
                .active_alerts()
                .into_iter()
                .filter(|alert| filter.matches_pool(&alert.pool))
                .collect();
            queued.extend(snapshot_events(pools, alerts, subscription.last_sequence));
        }
        queued.extend(
            subscription
                .replay
                .iter()
                .filter(|event| filter.matches(event))
                .map(|event| event_to_proto(event)),
        );
        let state = WatchStream {
            queued,
            live: subscription.live,
            filter,
            stopping: self.stopping.clone(),
            bus,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let event = state.next().await?;
            Some((Ok(event), state))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
