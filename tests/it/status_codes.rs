//! The status-code contract (README.md, "Status codes"), row by row, through a real client.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::support::{config_yaml, exec, free_port, meta, PoolSpec, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_map_by_sqlstate_with_details() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("codes", 2)])).await;
    let mut client = server.query().await;

    let status = client
        .execute(exec("nope", "SELECT 1", vec![]))
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(meta(&status, "poolplane-pool").as_deref(), Some("nope"));

    let status = client
        .execute(exec("codes", "SELEC 1", vec![]))
        .await
        .expect_err("syntax");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("42601")
    );
    assert_eq!(meta(&status, "poolplane-position").as_deref(), Some("1"));

    let status = client
        .execute(exec("codes", "SELECT 1/0", vec![]))
        .await
        .expect_err("div by zero");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("22012")
    );

    let status = client
        .execute(exec(
            "codes",
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure', \
             DETAIL = 'détail ü', HINT = 'retry the transaction'; END $$",
            vec![],
        ))
        .await
        .expect_err("serialization failure");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("40001")
    );
    assert_eq!(
        meta(&status, "poolplane-detail-bin").as_deref(),
        Some("détail ü")
    );
    assert_eq!(
        meta(&status, "poolplane-hint-bin").as_deref(),
        Some("retry the transaction")
    );
    assert_eq!(
        meta(&status, "poolplane-message-bin").as_deref(),
        Some("conflict")
    );

    let status = client
        .execute(exec("codes", "SELECT 1; SELECT 2", vec![]))
        .await
        .expect_err("two statements");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .execute(exec("codes", "SELECT * FROM no_such_table", vec![]))
        .await
        .expect_err("undefined table");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("42P01")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_resource_exhausted_after_the_acquire_timeout() {
    let mut spec = PoolSpec::new("tiny", 1);
    spec.connection_timeout_ms = 300;
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let mut holder = server.query().await;
    let mut client = server.query().await;
    let hold = tokio::spawn(async move {
        holder
            .execute(exec("tiny", "SELECT pg_sleep(2)", vec![]))
            .await
    });
    // Wait until the one connection is really taken.
    let mut admin = server.admin().await;
    crate::support::eventually(
        "the holder has the connection",
        Duration::from_secs(5),
        || {
            let mut admin = admin.clone();
            async move {
                let pool = admin
                    .get_pool(poolplane::proto::GetPoolRequest {
                        name: "tiny".into(),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .ok();
                pool.and_then(|p| p.statistics)
                    .is_some_and(|s| s.active == 1)
            }
        },
    )
    .await;
    let started = Instant::now();
    let status = client
        .execute(exec("tiny", "SELECT 1", vec![]))
        .await
        .expect_err("exhausted");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(meta(&status, "poolplane-pool").as_deref(), Some("tiny"));
    assert!(meta(&status, "poolplane-wait-ms").is_some());
    assert!(
        waited >= Duration::from_millis(250),
        "gave up too early: {waited:?}"
    );
    let stats = admin
        .get_pool(poolplane::proto::GetPoolRequest {
            name: "tiny".into(),
        })
        .await
        .expect("get pool")
        .into_inner()
        .statistics
        .expect("statistics");
    assert_eq!(stats.acquire_timeouts, 1);
    hold.await.expect("join").expect("holder succeeds");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_fast_with_unavailable() {
    let cluster_port = crate::support::cluster().port;
    let dead_port = free_port();
    assert_ne!(dead_port, cluster_port);
    let yaml = config_yaml(&[]).replace(
        "  pools:\n",
        &format!(
            "  pools:\n    - name: dead\n      database: postgres\n      port: {dead_port}\n      min_connections: 1\n      connection_timeout_ms: 10000\n"
        ),
    );
    let server = TestServer::start(&yaml).await;
    let mut client = server.query().await;
    let started = Instant::now();
    let status = client
        .execute(exec("dead", "SELECT 1", vec![]))
        .await
        .expect_err("unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "did not fail fast: {:?}",
        started.elapsed()
    );
    assert!(status.message().contains("dead"), "{}", status.message());
    // The pool started anyway and reports why it cannot connect.
    let mut admin = server.admin().await;
    let pool = admin
        .get_pool(poolplane::proto::GetPoolRequest {
            name: "dead".into(),
        })
        .await
        .expect("pool exists although its database is down")
        .into_inner();
    assert!(!pool.last_error.is_empty());
    assert!(pool.statistics.expect("stats").acquire_errors >= 1);
    server.stop().await;
}

/// A connection lost mid-call is UNAVAILABLE, and the caller learns whether
/// its statement (for a batch, its COMMIT) had been sent: a retry must allow
/// for a statement that may have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_says_whether_the_statement_may_have_run() {
    use crate::proxy::{Mode, Proxy};
    use poolplane::proto::{ExecuteBatchRequest, ParameterSet};
    let proxy = Proxy::start(crate::support::cluster().port).await;
    let pool = "lost_midway";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 2).port(proxy.port)])).await;
    let admin = crate::support::cluster().admin().await;
    let running = |sql: &'static str| {
        let admin = &admin;
        move || async move {
            let running: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'poolplane/lost_midway' \
                     AND state = 'active' AND wait_event = 'PgSleep' AND query = $1",
                    &[&sql],
                )
                .await
                .expect("count")
                .get(0);
            running > 0
        }
    };

    // The statement was sent (it is sleeping, not being parsed): it may
    // have run.
    let call = {
        let mut client = server.query().await;
        tokio::spawn(async move {
            client
                .execute(exec(pool, "SELECT pg_sleep(2)", vec![]))
                .await
        })
    };
    crate::support::eventually(
        "the statement runs",
        Duration::from_secs(10),
        running("SELECT pg_sleep(2)"),
    )
    .await;
    proxy.set(Mode::Cut);
    let status = call
        .await
        .expect("join")
        .expect_err("the connection is cut");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        meta(&status, "poolplane-may-have-run").as_deref(),
        Some("true"),
        "{status:?}"
    );

    // A batch cut before its COMMIT certainly did not commit.
    proxy.set(Mode::Forward);
    crate::support::eventually("the pool works again", Duration::from_secs(10), || {
        let server = &server;
        async move {
            server
                .query()
                .await
                .execute(exec(pool, "SELECT 1", vec![]))
                .await
                .is_ok()
        }
    })
    .await;
    let call = {
        let mut client = server.query().await;
        tokio::spawn(async move {
            client
                .execute_batch(ExecuteBatchRequest {
                    pool: pool.into(),
                    sql: "SELECT pg_sleep($1::float8)".into(),
                    parameter_sets: (0..3)
                        .map(|_| ParameterSet {
                            params: vec![crate::support::v::float(1.0)],
                        })
                        .collect(),
                })
                .await
        })
    };
    crate::support::eventually(
        "the batch runs",
        Duration::from_secs(10),
        running("SELECT pg_sleep($1::float8)"),
    )
    .await;
    proxy.set(Mode::Cut);
    let status = call
        .await
        .expect("join")
        .expect_err("the connection is cut");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        meta(&status, "poolplane-may-have-run").as_deref(),
        Some("false"),
        "{status:?}"
    );
    server.stop().await;
}

/// Requests PostgreSQL or the driver would refuse before anything ran are
/// the caller's mistake: INVALID_ARGUMENT, and the pool's connections stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_running_cost_no_connection() {
    let pool = "refused_early";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let mut client = server.query().await;
    let pid = |response: poolplane::proto::ExecuteResponse| response.rows[0].values[0].clone();
    let first = pid(client
        .execute(exec(pool, "SELECT pg_backend_pid()::int8", vec![]))
        .await
        .expect("pid")
        .into_inner());
    let too_many = vec![crate::support::v::int(1); 65_536];
    for (request, field) in [
        (exec(pool, "SELECT 1\0", vec![]), "sql"),
        (exec(pool, "SELECT $1::int8", too_many), "params"),
    ] {
        let status = client.execute(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(meta(&status, "poolplane-field").as_deref(), Some(field));
    }
    // A placeholder beyond what the protocol can number is PostgreSQL's own error.
    let status = client
        .execute(exec(pool, "SELECT $70000::int8", vec![]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let now = pid(client
        .execute(exec(pool, "SELECT pg_backend_pid()::int8", vec![]))
        .await
        .expect("pid")
        .into_inner());
    assert_eq!(now, first, "the connection was kept");
    server.stop().await;
}

/// An error that quotes huge input still arrives with its real code: the
/// quote is clipped, so the response headers never overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quoting_huge_input_keep_their_code() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("clipped", 1)])).await;
    let mut client = server.query().await;
    let status = client
        .execute(exec(&"p".repeat(100_000), "SELECT 1", vec![]))
        .await
        .expect_err("no such pool");
    assert!(
        matches!(status.code(), Code::NotFound | Code::InvalidArgument),
        "{status:?}"
    );
    assert!(status.message().len() < 2048);
    let digits = "9".repeat(140_000);
    let status = client
        .execute(exec("clipped", &format!("SELECT {digits}::int4"), vec![]))
        .await
        .expect_err("out of range for int4");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < 2048);
    server.stop().await;
}

/// Sends raw bytes as a gRPC message, to test what a real codec never sends.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One length-delimited protobuf field.
fn field(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// A request that cannot be decoded is the caller's error: INVALID_ARGUMENT,
/// not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_arguments() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("undecodable", 1)])).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    // A string field (sql, 2) holding invalid UTF-8; garbage; a parameter
    // nested far beyond protobuf's recursion limit (array_value 15 holding
    // elements 1 holding array_value ...).
    let mut value = Vec::new();
    for _ in 0..200 {
        let array = field(1, &value);
        value = field(15, &array);
    }
    let deep = field(3, &value);
    for body in [
        vec![0x12, 0x02, 0xff, 0xfe],
        vec![0xff, 0xff, 0xff, 0xff, 0xff],
        deep,
    ] {
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary::<Vec<u8>, Vec<u8>, RawCodec>(
                tonic::Request::new(body.clone()),
                http::uri::PathAndQuery::from_static("/poolplane.v1.Query/Execute"),
                RawCodec,
            )
            .await
            .expect_err("undecodable");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("decode"), "{status:?}");
    }
    server.stop().await;
}

/// A request above `server.max_request_bytes` is RESOURCE_EXHAUSTED, and
/// one below it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_the_size_limit_is_resource_exhausted() {
    let server = TestServer::start(&crate::support::config_yaml_with(
        &[PoolSpec::new("request_size", 1)],
        "  server:\n    grpc_listen: 127.0.0.1:0\n    max_request_bytes: 100000\n    shutdown_timeout_ms: 5000\n    drain_timeout_ms: 5000\n",
    ))
    .await;
    let mut client = server.query().await;
    let padded = |bytes: usize| format!("SELECT 1 -- {}", "x".repeat(bytes));
    let status = client
        .execute(exec("request_size", &padded(200_000), vec![]))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("100000"), "{}", status.message());
    client
        .execute(exec("request_size", &padded(50_000), vec![]))
        .await
        .expect("under the limit");
    server.stop().await;
}
