//! The HTTP listener: `GET /metrics` (Prometheus text exposition) for the
//! monitoring stack, and the live status page (`status.rs`: `/`,
//! `/status.json`, `/events`). Thin: the values come from `metrics.rs` and
//! `crate::status`.
//!
//! Invariant: no pool logic here; it reads the application core.

mod grpc_metrics;
mod metrics;
mod status;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::app::App;
pub use grpc_metrics::{GrpcMetrics, GrpcMetricsLayer};
pub use metrics::render;
pub use status::{
    CONTENT_SECURITY_POLICY, HEARTBEAT_INTERVAL, MAX_EVENT_CLIENTS, MIN_UPDATE_INTERVAL,
    PAGE_SESSION_TTL,
};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<App>,
    pub registry: prometheus::Registry,
}

/// Whether a scrape may read `/metrics`: any, or only one that presents
/// the configured token (compared as a hash, in constant time).
fn may_scrape(state: &HttpState, headers: &axum::http::HeaderMap) -> bool {
    let Some(expected) = state.app.server().metrics_token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    presented.is_some_and(|token| {
        use subtle::ConstantTimeEq;
        bool::from(crate::auth::hash(token.as_bytes()).ct_eq(&expected))
    })
}

/// Serves HTTP on `listener` until `shutdown` completes. Then the status
/// page's event streams end, so the graceful shutdown does not wait for
/// browsers to go away.
pub async fn serve(
    state: HttpState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let page = status::StatusPage::start(Arc::clone(&state.app), closing);
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
        .merge(status::router(page));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        })
        .await
}

async fn scrape(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    if !may_scrape(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "send the metrics token: Authorization: Bearer <token>\n",
        )
            .into_response();
    }
    match render(&state.app, &state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering /metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}
