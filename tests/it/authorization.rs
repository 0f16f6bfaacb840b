//! Who may call what: every method of the API, taken from the proto
//! descriptors (so a new RPC cannot be missed), called with no
//! credentials, a bad token, and each role, on a pool in and out of the
//! caller's scope. A refused call is UNAUTHENTICATED (who?) or
//! PERMISSION_DENIED (not allowed), before any work; an allowed one may
//! still fail for other reasons (an empty request), never with those two.

use bytes::{Buf, BufMut};
use poolplane::api::auth::{access, Access};
use poolplane::auth::{Right, Role};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{bearer, config_yaml_with, PoolSpec, TestServer};
use poolplane::proto::pool_admin_client::PoolAdminClient;

/// Requests and responses as raw bytes: any method can be called.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// One method of the API, as the descriptors describe it.
#[derive(Debug, Clone)]
struct Method {
    service: String,
    name: String,
    server_streaming: bool,
    client_streaming: bool,
    /// The number of the request's `pool` or `name` string field, if any
    /// (Session's is in its first request).
    pool_field: Option<i32>,
}

fn methods() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(poolplane::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let messages: Vec<(String, &prost_types::DescriptorProto)> = set
        .file
        .iter()
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", file.package(), m.name()), m))
        })
        .collect();
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let input = messages
                    .iter()
                    .find(|(name, _)| name == method.input_type())
                    .map(|(_, m)| *m)
                    .unwrap_or_else(|| panic!("input type of {}", method.name()));
                let pool_field = input
                    .field
                    .iter()
                    .find(|f| {
                        matches!(f.name(), "pool" | "name")
                            && f.r#type() == prost_types::field_descriptor_proto::Type::String
                    })
                    .map(|f| f.number())
                    .or((method.name() == "Session").then_some(0));
                methods.push(Method {
                    service: format!("{}.{}", file.package(), service.name()),
                    name: method.name().to_string(),
                    server_streaming: method.server_streaming(),
                    client_streaming: method.client_streaming(),
                    pool_field,
                });
            }
        }
    }
    methods
}

/// A request naming `pool` in its pool field (protobuf by hand: tag, length, bytes).
fn request_for(method: &Method, pool: &str) -> Vec<u8> {
    let Some(field) = method.pool_field else {
        return Vec::new();
    };
    let mut bytes = vec![u8::try_from((field << 3) | 2).expect("small field number")];
    bytes.push(u8::try_from(pool.len()).expect("short name"));
    bytes.extend_from_slice(pool.as_bytes());
    bytes
}

/// The code a call ends with before any result: `None` if it was let in
/// (it may still fail, for other reasons).
async fn refusal(
    channel: &Channel,
    method: &Method,
    pool: &str,
    token: Option<&str>,
) -> Option<Code> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path: http::uri::PathAndQuery = format!("/{}/{}", method.service, method.name)
        .parse()
        .expect("path");
    let mut request = tonic::Request::new(request_for(method, pool));
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let code = if method.client_streaming {
        // Only Session streams requests: its pool is in the first, `open`.
        assert_eq!(
            method.name, "Session",
            "a new client-streaming method: test it"
        );
        let open = poolplane::proto::SessionRequest {
            request: Some(poolplane::proto::session_request::Request::Open(
                poolplane::proto::SessionOpen {
                    pool: pool.into(),
                    ..Default::default()
                },
            )),
        };
        let mut streaming = tonic::Request::new(futures::stream::iter(vec![open.encode_to_vec()]));
        *streaming.metadata_mut() = request.metadata().clone();
        grpc.streaming(streaming, path, RawCodec)
            .await
            .err()
            .map(|status| status.code())
    } else if method.server_streaming {
        grpc.server_streaming(request, path, RawCodec)
            .await
            .err()
            .map(|status| status.code())
    } else {
        grpc.unary(request, path, RawCodec)
            .await
            .err()
            .map(|status| status.code())
    };
    code.filter(|code| matches!(code, Code::Unauthenticated | Code::PermissionDenied))
}

const TOKENS: [(&str, &str, Role, &str); 4] = [
    ("root", "admin-token-0123456789", Role::Admin, "[\"*\"]"),
    (
        "oncall",
        "operator-token-0123456789",
        Role::Operator,
        "[\"mine\"]",
    ),
    (
        "dashboard",
        "viewer-token-0123456789",
        Role::Viewer,
        "[\"*\"]",
    ),
    ("app", "client-token-0123456789", Role::Client, "[\"mine\"]"),
];

/// JWTs of the matrix: valid ones are never sent, only the broken kinds.
struct Jwts {
    _dir: tempfile::TempDir,
    jwks: std::path::PathBuf,
    broken: Vec<(&'static str, String)>,
}

fn jwts() -> Jwts {
    use crate::jwt::{base64url, claims, key, now, sign};
    let dir = tempfile::tempdir().expect("tempdir");
    let (signer, jwk) = key("m1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [jwk]}).to_string()).expect("jwks");
    let mut expired = claims("admin", &["*"]);
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut audience = claims("admin", &["*"]);
    audience["aud"] = serde_json::json!("someone-else");
    let mut issuer = claims("admin", &["*"]);
    issuer["iss"] = serde_json::json!("https://evil.test");
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("admin", &["*"]).to_string().as_bytes())
    );
    Jwts {
        broken: vec![
            ("an expired JWT", sign(&signer, "m1", expired)),
            ("a JWT for another audience", sign(&signer, "m1", audience)),
            ("a JWT from another issuer", sign(&signer, "m1", issuer)),
            ("an unsigned JWT (alg none)", unsigned),
        ],
        jwks,
        _dir: dir,
    }
}

fn auth_section() -> String {
    auth_section_with(None)
}

fn auth_section_with(jwks: Option<&std::path::Path>) -> String {
    let mut section = String::from("  server:\n    shutdown_timeout_ms: 5000\n    auth:\n");
    if let Some(jwks) = jwks {
        section.push_str(&format!(
            "      jwt:\n        jwks_file: {}\n        issuer: https://issuer.test\n        audience: poolplane\n        algorithms: [ES256]\n",
            jwks.display()
        ));
    }
    section.push_str("      tokens:\n");
    for (name, token, role, pools) in TOKENS {
        let hash: String = poolplane::auth::hash(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        section.push_str(&format!(
            "        - name: {name}\n          token_sha256: \"{hash}\"\n          role: {role}\n          pools: {pools}\n"
        ));
    }
    section
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_exactly_who_it_must() {
    let jwts = jwts();
    let yaml = config_yaml_with(
        &[PoolSpec::new("mine", 1), PoolSpec::new("theirs", 1)],
        &auth_section_with(Some(&jwts.jwks)),
    );
    let server = TestServer::start(&yaml).await;
    let channel = server.channel().await;

    let methods = methods();
    // The table and the proto list the same methods.
    let mut described: Vec<String> = methods
        .iter()
        .map(|m| format!("{}/{}", m.service, m.name))
        .collect();
    let mut tabled: Vec<String> = poolplane::api::auth::ACCESS
        .iter()
        .filter(|(service, _, _)| service.starts_with("poolplane."))
        .map(|(service, method, _)| format!("{service}/{method}"))
        .collect();
    described.sort();
    tabled.sort();
    assert_eq!(described, tabled);
    for method in &methods {
        let path = format!("/{}/{}", method.service, method.name);
        let Some(needed) = access(&path) else {
            panic!("{path} is not in the access table: decide who may call it");
        };
        let Access::Needs(right) = needed else {
            panic!("{path} is open to anyone");
        };

        // Destructive calls go to the pool out of everyone's scope but the
        // admin's, so the rest of the matrix keeps its pools.
        let unknown = [
            ("nobody", None),
            ("a stranger", Some("not-a-token-at-all-123")),
        ];
        let broken = jwts
            .broken
            .iter()
            .map(|(what, token)| (*what, Some(token.as_str())));
        for (caller, token) in unknown.into_iter().chain(broken) {
            assert_eq!(
                refusal(&channel, method, "mine", token).await,
                Some(Code::Unauthenticated),
                "{path} by {caller}"
            );
        }
        for (name, token, role, pools) in TOKENS {
            for pool in ["mine", "theirs"] {
                if role == Role::Admin && matches!(method.name.as_str(), "DeletePool") {
                    continue;
                }
                // ReloadConfig changes every pool: a caller scoped to some may not.
                let in_scope = if method.name == "ReloadConfig" {
                    pools == "[\"*\"]"
                } else {
                    role == Role::Admin
                        || role == Role::Viewer
                        || pool == "mine"
                        || method.pool_field.is_none()
                };
                let expected = if holds(role, right) && in_scope {
                    None
                } else {
                    Some(Code::PermissionDenied)
                };
                assert_eq!(
                    refusal(&channel, method, pool, Some(token)).await,
                    expected,
                    "{path} by {name} ({role}) on `{pool}`"
                );
            }
        }
    }
    // The admin may delete (last: the pool is gone afterwards).
    let delete = methods
        .iter()
        .find(|m| m.name == "DeletePool")
        .expect("DeletePool");
    assert_eq!(
        refusal(&channel, delete, "theirs", Some(TOKENS[0].1)).await,
        None
    );
    // Probes and tools need no credentials.
    for path in [
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        assert_eq!(access(path), Some(Access::Open), "{path}");
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    server.stop().await;
}

/// The README's table of roles, written out here rather than asked of
/// the server.
fn holds(role: Role, right: Right) -> bool {
    match role {
        Role::Admin => true,
        Role::Operator => matches!(right, Right::Read | Right::Operate),
        Role::Viewer => matches!(right, Right::Read),
        Role::Client => matches!(right, Right::Query),
    }
}

/// An alert on a pool outside the caller's scope is, to that caller, no
/// alert: acknowledging it by id answers as for an id that never existed,
/// naming no pool (found by a red team: the answer named the pool, so
/// walking ids listed other pools).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_outside_the_scope_are_not_even_there() {
    let monitoring = "  monitoring:\n    collection_interval_ms: 100\n    connection_utilization_threshold: 0.5\n    alert_fire_after_samples: 2\n";
    let yaml = config_yaml_with(
        &[PoolSpec::new("mine", 1), PoolSpec::new("theirs", 1)],
        &format!("{}{monitoring}", auth_section()),
    );
    let server = TestServer::start(&yaml).await;
    let (admin_token, operator_token) = (TOKENS[0].1, TOKENS[1].1);
    // Saturate `theirs` until its utilization alert fires.
    let mut query = server.query().await;
    let holder = tokio::spawn(async move {
        query
            .execute(bearer(
                admin_token,
                crate::support::exec("theirs", "SELECT pg_sleep(3)", vec![]),
            ))
            .await
    });
    let mut admin = server.admin().await;
    let alerts_on_theirs = |admin: PoolAdminClient<tonic::transport::Channel>| async move {
        let mut admin = admin;
        admin
            .list_alerts(bearer(
                admin_token,
                poolplane::proto::ListAlertsRequest::default(),
            ))
            .await
            .expect("list")
            .into_inner()
            .alerts
            .into_iter()
            .find(|a| a.pool == "theirs")
            .map(|a| a.id)
    };
    crate::support::eventually(
        "the alert on `theirs` fires",
        std::time::Duration::from_secs(10),
        || {
            let admin = admin.clone();
            async move { alerts_on_theirs(admin).await.is_some() }
        },
    )
    .await;
    let alert_id = alerts_on_theirs(admin.clone()).await;
    let id = alert_id.expect("an alert");
    let answer = |id: u64| {
        let mut admin = admin.clone();
        async move {
            admin
                .acknowledge_alert(bearer(
                    operator_token,
                    poolplane::proto::AcknowledgeAlertRequest {
                        id,
                        by: "oncall".into(),
                    },
                ))
                .await
                .expect_err("not the operator's")
        }
    };
    let hidden = answer(id).await;
    let absent = answer(id + 1000).await;
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    assert_eq!(absent.code(), Code::NotFound, "{absent:?}");
    assert!(!hidden.message().contains("theirs"), "{hidden:?}");
    assert_eq!(
        hidden.message().replace(&id.to_string(), "ID"),
        absent.message().replace(&(id + 1000).to_string(), "ID")
    );
    // Nor does the operator's list show it.
    let listed = admin
        .list_alerts(bearer(
            operator_token,
            poolplane::proto::ListAlertsRequest::default(),
        ))
        .await
        .expect("list")
        .into_inner()
        .alerts;
    assert!(listed.iter().all(|a| a.pool == "mine"), "{listed:?}");
    let _ = holder.await;
    server.stop().await;
}

/// A caller may have `server.max_calls_per_caller` calls in flight; one
/// more is RESOURCE_EXHAUSTED at once, and another caller is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_past_its_calls_in_flight_is_refused_and_others_are_not() {
    let yaml = config_yaml_with(
        &[PoolSpec::new("mine", 3), PoolSpec::new("theirs", 1)],
        &auth_section().replace(
            "    shutdown_timeout_ms: 5000\n",
            "    shutdown_timeout_ms: 5000\n    max_calls_per_caller: 2\n",
        ),
    );
    assert!(yaml.contains("max_calls_per_caller: 2"));
    let server = TestServer::start(&yaml).await;
    let client_token = TOKENS[3].1;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut query = server.query().await;
        holders.push(tokio::spawn(async move {
            query
                .execute(bearer(
                    client_token,
                    crate::support::exec("mine", "SELECT pg_sleep(1)", vec![]),
                ))
                .await
        }));
    }
    let admin = crate::support::cluster().admin().await;
    crate::support::eventually("both calls run", std::time::Duration::from_secs(10), || {
        let admin = &admin;
        async move { crate::support::sleeping(admin, "poolplane/mine").await == 2 }
    })
    .await;
    let third = server
        .query()
        .await
        .execute(bearer(
            client_token,
            crate::support::exec("mine", "SELECT 1", vec![]),
        ))
        .await
        .expect_err("a third call in flight");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    // Another caller is not limited by the first one's calls.
    server
        .admin()
        .await
        .list_pools(bearer(
            TOKENS[0].1,
            poolplane::proto::ListPoolsRequest::default(),
        ))
        .await
        .expect("the admin is served");
    for holder in holders {
        holder.await.expect("join").expect("the first two finish");
    }
    // Their places are free again.
    server
        .query()
        .await
        .execute(bearer(
            client_token,
            crate::support::exec("mine", "SELECT 1", vec![]),
        ))
        .await
        .expect("served again");
    server.stop().await;
}

/// A password in a CreatePool request comes only from an admin, and only
/// over TLS: anywhere else it could be read on the wire, or be a
/// non-admin's way to point a pool at a login of its choosing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_password_needs_an_admin_and_tls() {
    let yaml = config_yaml_with(&[PoolSpec::new("mine", 1)], &auth_section());
    let server = TestServer::start(&yaml).await;
    let request = || poolplane::proto::CreatePoolRequest {
        name: "mine_too".into(),
        host: "127.0.0.1".into(),
        port: u32::from(crate::support::cluster().port),
        database: "postgres".into(),
        password: "inline-password-0123456789".into(),
        ..Default::default()
    };
    let mut admin = server.admin().await;
    let status = admin
        .create_pool(bearer(TOKENS[1].1, request()))
        .await
        .expect_err("an operator sends no password");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = admin
        .create_pool(bearer(TOKENS[0].1, request()))
        .await
        .expect_err("not over plaintext");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("TLS"), "{status:?}");
    server.stop().await;
}

/// Failed logins reach the log (target `poolplane::audit`, WARN): the
/// peer, the method, the reason, never the token sent, and at most a line a
/// second with how many failed since, so a guessing client cannot flood
/// it. A change made by a caller is audited with its name as plain text.
/// (Found by a review: a failed login on a data-path method left no trace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_logged_at_a_bounded_rate_without_the_token() {
    let yaml = config_yaml_with(&[PoolSpec::new("mine", 1)], &auth_section_with(None));
    let served = crate::support::ServedBinary::start(&yaml, &[]).await;
    let mut query = poolplane::proto::query_client::QueryClient::new(served.channel().await);
    let started = std::time::Instant::now();
    const GUESSES: usize = 200;
    for n in 0..GUESSES {
        let guess = format!("guessed-token-{n:04}");
        let status = query
            .execute(bearer(
                &guess,
                crate::support::exec("mine", "SELECT 1", vec![]),
            ))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let took = started.elapsed();
    let (admin_name, admin_token, _, _) = TOKENS[0];
    PoolAdminClient::new(served.channel().await)
        .reset_statistics(bearer(
            admin_token,
            poolplane::proto::ResetStatisticsRequest {
                pool: "mine".into(),
            },
        ))
        .await
        .expect("reset");
    let mut log = String::new();
    crate::support::eventually("the audit line", std::time::Duration::from_secs(10), || {
        log = served.log();
        let done = log.contains("ResetStatistics");
        async move { done }
    })
    .await;
    let failed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("authentication failed"))
        .collect();
    assert!(!failed.is_empty(), "no failed login logged:\n{log}");
    // One line for the first, then at most one a second.
    let most = took.as_secs() as usize + 2;
    assert!(
        failed.len() <= most,
        "{} lines for {GUESSES} failures in {took:?}",
        failed.len()
    );
    let counted: usize = failed
        .iter()
        .filter_map(|line| line.split("failures=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(
        (1..=GUESSES).contains(&counted),
        "failures counted: {counted}"
    );
    for line in &failed {
        for part in [
            "poolplane::audit",
            "WARN",
            "peer=127.0.0.1:",
            "method=/poolplane.v1.Query/Execute",
            "reason=invalid token",
        ] {
            assert!(line.contains(part), "{part:?} missing: {line}");
        }
    }
    assert!(
        !log.contains("guessed-token"),
        "a token sent reached the log"
    );
    assert!(!log.contains(admin_token));
    let audit = log
        .lines()
        .find(|line| line.contains("ResetStatistics"))
        .expect("audited");
    assert!(
        audit.contains(&format!("caller={admin_name} ")),
        "the caller as plain text: {audit}"
    );
}
