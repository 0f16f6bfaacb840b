//! The gRPC surface: thin tonic services that translate protobuf to the
//! application core (`app`) and back, plus health and reflection, and
//! [`serve`], which runs them (and the HTTP listener) until shutdown.
//!
//! Invariant: the services hold no logic beyond translation; every domain
//! error becomes a `tonic::Status` in `status.rs` and nowhere else.

mod admin;
pub mod auth;
mod convert;
mod deadline;
mod decode_errors;
mod events;
mod query;
mod readiness;
mod status;
mod tls;

// For `crate::fuzzing` only.
pub(crate) use convert::{value_to_proto, values_from_proto};

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::app::App;
use crate::config::Config;
use crate::http::{GrpcMetrics, GrpcMetricsLayer, HttpState};
use crate::proto::pool_admin_server::PoolAdminServer;
use crate::proto::pool_events_server::PoolEventsServer;
use crate::proto::query_server::QueryServer;

/// The sockets the server answers on, bound by the caller (port 0 in tests).
pub struct Listeners {
    /// gRPC: PoolAdmin, Query, PoolEvents, health, reflection.
    pub grpc: TcpListener,
    /// HTTP: `/metrics`.
    pub http: TcpListener,
}

/// Starts the core from `config` and serves it until `shutdown` completes
/// (see [`serve`]).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(App::start(&config), listeners, shutdown).await
}

/// Serves the gRPC API and `/metrics` for `app` until `shutdown` completes,
/// then reports NOT_SERVING, ends Watch streams, lets in-flight calls
/// finish and drains every pool, all within `server.shutdown_timeout_ms`
/// (then running statements are cancelled), and stops the HTTP listener
/// last.
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let grpc_metrics = GrpcMetrics::register(&registry)?;
    let (http_stop_tx, http_stop) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(crate::http::serve(
        HttpState {
            app: Arc::clone(&app),
            registry,
        },
        listeners.http,
        async {
            let _ = http_stop.await;
        },
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = tokio::spawn(readiness::track(Arc::clone(&app), health.clone()));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max_request = usize::try_from(app.server().max_request_bytes).unwrap_or(usize::MAX);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        // A peer that stops answering HTTP/2 pings is closed: a dead client
        // does not hold its connection (and its place) for ever.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(GrpcMetricsLayer::new(grpc_metrics))
        // Inside the metrics layer, so they count the code clients see.
        .layer(decode_errors::DecodeErrorsLayer)
        // Inside both: a refused call is counted and relabelled like any other.
        .layer(auth::AuthLayer::new(
            app.server().auth.clone(),
            app.server().max_calls_per_caller,
        ))
        .add_service(health_service)
        .add_optional_service(app.server().reflection.then_some(reflection_v1))
        .add_optional_service(app.server().reflection.then_some(reflection_v1alpha))
        .add_service(
            PoolAdminServer::new(admin::AdminService::new(Arc::clone(&app)))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            QueryServer::new(query::QueryService::new(Arc::clone(&app), stopping.clone()))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            PoolEventsServer::new(events::EventsService::new(Arc::clone(&app), stopping))
                .max_decoding_message_size(max_request),
        )
        .serve_with_incoming_shutdown(
            tls::incoming(
                listeners.grpc,
                tls::Listening {
                    tls: app.server().tls.as_ref(),
                    max_connections: app.server().max_connections,
                    handshake_timeout: app.server().handshake_timeout,
                },
            )?,
            async {
                let _ = stop_rx.await;
            },
        );
    tokio::pin!(server);

    let shutdown_timeout = app.server().shutdown_timeout;
    // One budget for the whole shutdown: in-flight calls, then the drains.
    let mut stop_by = tokio::time::Instant::now() + shutdown_timeout;
    tokio::select! {
        result = &mut server => result?,
        () = shutdown => {
            stop_by = tokio::time::Instant::now() + shutdown_timeout;
            tracing::info!("shutting down: refusing new calls, finishing in-flight ones");
            readiness.abort();
            readiness::not_serving(&health).await;
            let _ = stopping_tx.send(true);
            let _ = stop_tx.send(());
            match tokio::time::timeout_at(stop_by, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    timeout = ?shutdown_timeout,
                    "in-flight calls did not finish in time; closing anyway"
                ),
            }
        }
    }
    // What is left of the budget; with none left, statements still running
    // are cancelled at once.
    app.shutdown(stop_by.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    let _ = http_stop_tx.send(());
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "HTTP listener ended with an error"),
        Err(err) => tracing::warn!(error = %err, "HTTP listener task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}
