//! Integration tests: one binary, so one build and one shared PostgreSQL
//! cluster for every behaviour below (see `support`).

mod chromium;
mod proxy;
mod support;

mod accounting;
mod admin_api;
mod alerts;
mod authorization;
mod bench_tool;
mod check_health;
mod config_validation;
mod created_pools;
mod ctl;
mod db_auth;
mod deadline;
mod deploy;
mod drain;
mod failover;
mod grpc_discovery;
mod grpc_tls;
mod health_recovery;
mod jwt;
mod listener;
mod maintenance;
mod memory_bounds;
mod metrics;
mod oversized_messages;
mod pause;
mod pool_lifecycle;
mod pool_limits;
mod query_types;
mod quickstart;
mod reload;
mod serve_binary;
mod session_hygiene;
mod session_pipeline;
mod sessions;
mod statement_plans;
mod status_codes;
mod status_page;
mod streaming;
mod tls;
mod traces;
mod value_properties;
mod watch;
