//! poolplane: a PostgreSQL connection-pool control plane.
//!
//! One long-running service owns named pools (one per database),
//! runs SQL through them for other services over gRPC (`poolplane.v1.Query`)
//! and lets operators inspect, create, resize and drain them live
//! (`poolplane.v1.PoolAdmin`). See ARCHITECTURE.md for the map.
//!
//! The library never binds ports, reads the environment (beyond the secret
//! sources a configuration names) or installs signal handlers: `main.rs`
//! does, so tests start the whole server in-process on port 0 via [`run`].
//! (Once `main.rs` turns traces on, the OpenTelemetry SDK itself honours
//! its standard `OTEL_*` tuning variables: batch sizes, sampler, headers.)

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod display;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod monitor;
pub mod pool;
mod postgres;
pub mod query;
pub mod quickstart;
pub mod status;
pub mod telemetry;
mod text_cache;

/// Generated protobuf types and gRPC stubs of `poolplane.v1`.
pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("poolplane.v1");

    /// Encoded descriptors of every `poolplane.v1` file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("poolplane_descriptor");
}

pub use api::{run, serve, Listeners};
pub use app::App;
