//! One value can be 1 GB in PostgreSQL; none reaches poolplane's memory
//! whole. A row over server.max_result_bytes is refused like a result over
//! it (or ends a truncated result), a huge error arrives shortened with its
//! SQLSTATE, a huge notice is dropped, over plain TCP and over TLS alike.

use tonic::Code;

use crate::support::{cluster, config_yaml, exec, meta, nothing_left_running, v, TestServer};

fn pid_of(response: poolplane::proto::ExecuteResponse) -> poolplane::proto::Value {
    response.rows[0].values[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_rows_errors_and_notices_never_arrive_whole() {
    let mut yaml = config_yaml(&[]);
    yaml = yaml.replace(
        "  pools:\n",
        "  pools:\n    - name: big_plain\n      database: postgres\n      sslmode: disable\n      max_connections: 1\n    - name: big_tls\n      database: postgres\n      sslmode: verify-full\n      host: 127.0.0.1\n      max_connections: 1\n",
    );
    yaml.push_str(&format!(
        "  security:\n    ssl:\n      enabled: true\n      verify_peer: true\n      ca_certificate: {}\n",
        cluster().ca_certificate().display()
    ));
    let server = TestServer::start(&yaml).await;
    let mut client = server.query().await;
    let pid = "SELECT pg_backend_pid()::int8";

    for pool in ["big_plain", "big_tls"] {
        // 300 MB in one value.
        let status = client
            .execute(exec(pool, "SELECT repeat('x', 300000000)", vec![]))
            .await
            .expect_err("too large");
        assert_eq!(status.code(), Code::ResourceExhausted, "{pool}: {status:?}");
        assert!(
            meta(&status, "poolplane-byte-limit").is_some(),
            "{status:?}"
        );
        nothing_left_running(pool).await;

        // Truncation keeps the rows before the one too large to take.
        let mut request = exec(
            pool,
            "SELECT i::int8, repeat('x', i * 3000000) FROM generate_series(1, 3) i",
            vec![],
        );
        request.allow_truncation = true;
        let truncated = client
            .execute(request)
            .await
            .expect("truncated")
            .into_inner();
        assert!(truncated.truncated, "{pool}");
        assert_eq!(truncated.rows.len(), 1, "{pool}");
        assert_eq!(truncated.rows[0].values[0], v::int(1));
        nothing_left_running(pool).await;

        // The same through ExecuteStream: the rows before it, then the error.
        let mut parts = client
            .execute_stream(exec(
                pool,
                "SELECT i::int8, repeat('x', i * 3000000) FROM generate_series(1, 3) i",
                vec![],
            ))
            .await
            .expect("stream")
            .into_inner();
        let mut rows = 0;
        let status = loop {
            match parts.message().await {
                Ok(Some(message)) => {
                    if let Some(poolplane::proto::execute_stream_response::Part::Rows(chunk)) =
                        message.part
                    {
                        rows += chunk.rows.len();
                    }
                }
                Ok(None) => panic!("{pool}: the stream ended without an error"),
                Err(status) => break status,
            }
        };
        assert_eq!(rows, 1, "{pool}");
        assert_eq!(status.code(), Code::ResourceExhausted, "{pool}: {status:?}");
        nothing_left_running(pool).await;

        // An error of 50 MB: its SQLSTATE and the start of its message,
        // on a connection that is kept.
        let before = pid_of(
            client
                .execute(exec(pool, pid, vec![]))
                .await
                .expect("pid")
                .into_inner(),
        );
        let status = client
            .execute(exec(
                pool,
                "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = repeat('y', 50000000); END $$",
                vec![],
            ))
            .await
            .expect_err("raised");
        assert_eq!(status.code(), Code::InvalidArgument, "{pool}: {status:?}");
        assert_eq!(
            meta(&status, "poolplane-sqlstate").as_deref(),
            Some("22023")
        );
        assert!(status.message().contains("yyyyyyyyyy"), "{status:?}");
        assert!(
            status.message().len() < 2048,
            "{} bytes",
            status.message().len()
        );
        // A notice of 50 MB is dropped; the statement succeeds.
        client
            .execute(exec(
                pool,
                "DO $$ BEGIN RAISE NOTICE '%', repeat('z', 50000000); END $$",
                vec![],
            ))
            .await
            .expect("a huge notice is no failure");
        let after = pid_of(
            client
                .execute(exec(pool, pid, vec![]))
                .await
                .expect("pid")
                .into_inner(),
        );
        assert_eq!(before, after, "{pool}: the connection was kept");
    }
    server.stop().await;
}
