//! grpc.health.v1 answers, kept honest from the event stream:
//!
//! - `""` (the server): SERVING until shutdown begins (liveness);
//! - `poolplane.v1.PoolAdmin`, `poolplane.v1.PoolEvents`: SERVING until shutdown;
//! - `poolplane.v1.Query`: SERVING while at least one pool is HEALTHY or
//!   DEGRADED (readiness: some SQL can run here);
//! - `poolplane.v1.Query/<pool>`: SERVING while that pool is HEALTHY or DEGRADED.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::app::App;
use crate::events::EventKind;
use crate::health::HealthState;

const QUERY: &str = "poolplane.v1.Query";
const ALWAYS_SERVING: [&str; 3] = ["", "poolplane.v1.PoolAdmin", "poolplane.v1.PoolEvents"];

/// Updates `reporter` whenever pools or their health change; runs until aborted.
pub(super) async fn track(app: Arc<App>, mut reporter: HealthReporter) {
    for service in ALWAYS_SERVING {
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let Ok(mut subscription) = app.events().subscribe(None) else {
        return;
    };
    let mut known: Vec<String> = Vec::new();
    update(&app, &mut reporter, &mut known).await;
    loop {
        match subscription.live.recv().await {
            Ok(event) => {
                let relevant = matches!(
                    event.detail.kind(),
                    EventKind::HealthChanged | EventKind::PoolCreated | EventKind::PoolRemoved
                );
                if relevant {
                    update(&app, &mut reporter, &mut known).await;
                }
            }
            // Missed events may have been relevant: recompute from the source.
            Err(RecvError::Lagged(_)) => update(&app, &mut reporter, &mut known).await,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn update(app: &App, reporter: &mut HealthReporter, known: &mut Vec<String>) {
    let pools = app.pools_with_health();
    let mut any_ready = false;
    let mut current = Vec::with_capacity(pools.len());
    for (info, health) in pools {
        let ready = matches!(health.state, HealthState::Healthy | HealthState::Degraded);
        any_ready |= ready;
        let service = format!("{QUERY}/{}", info.config.name);
        reporter.set_service_status(&service, status(ready)).await;
        current.push(service);
    }
    for gone in known.iter().filter(|service| !current.contains(service)) {
        reporter.clear_service_status(gone).await;
    }
    *known = current;
    reporter.set_service_status(QUERY, status(any_ready)).await;
}

fn status(ready: bool) -> ServingStatus {
    if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Everything NOT_SERVING: the server is shutting down.
pub(super) async fn not_serving(reporter: &HealthReporter) {
    for service in ALWAYS_SERVING.into_iter().chain([QUERY]) {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}
