//! The gRPC surface: thin tonic services that translate protobuf to the
//! domain (`pool`, `query`) and back, plus health and reflection, and
//! [`run`], which serves them until shutdown.
//!
//! Invariant: the services hold no logic beyond translation; every domain
//! error becomes a `tonic::Status` in `status.rs` and nowhere else.

mod admin;
mod convert;
mod deadline;
mod query;
mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::config::{Config, ServerConfig};
use crate::pool::Registry;
use crate::proto::pool_admin_server::PoolAdminServer;
use crate::proto::query_server::QueryServer;

/// Application state shared by every service: the pools and the
/// server-wide settings. There are no globals; tests build one per server.
pub struct App {
    pub registry: Registry,
    pub server: ServerConfig,
}

impl App {
    /// Builds the registry and starts every configured pool (pools whose
    /// database is down start anyway and report the error).
    pub fn start(config: &Config) -> Arc<App> {
        let registry = Registry::new(config.defaults.clone());
        if config.enabled {
            for pool in &config.pools {
                if let Err(err) = registry.create(pool.clone(), false) {
                    tracing::error!(error = %err, "pool not started");
                }
            }
        } else {
            tracing::warn!("connection_pool.enabled is false: starting with no pools");
        }
        Arc::new(App {
            registry,
            server: config.server.clone(),
        })
    }
}

/// Serves the gRPC API on `listener` until `shutdown` completes, then
/// reports NOT_SERVING, lets in-flight calls finish (bounded by
/// `server.shutdown_timeout_ms`), and drains every pool.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = App::start(&config);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PoolAdminServer<admin::AdminService>>()
        .await;
    health
        .set_serving::<QueryServer<query::QueryService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PoolAdminServer::new(admin::AdminService::new(Arc::clone(
            &app,
        ))))
        .add_service(QueryServer::new(query::QueryService::new(Arc::clone(&app))))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => result?,
        () = shutdown => {
            tracing::info!("shutting down: refusing new calls, finishing in-flight ones");
            health.set_not_serving::<PoolAdminServer<admin::AdminService>>().await;
            health.set_not_serving::<QueryServer<query::QueryService>>().await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(app.server.shutdown_timeout, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    timeout = ?app.server.shutdown_timeout,
                    "in-flight calls did not finish in time; closing anyway"
                ),
            }
        }
    }
    app.registry.close_all(app.server.shutdown_timeout).await;
    tracing::info!("stopped");
    Ok(())
}
