//! ExecuteStream: rows arrive in order, in chunks, then `end`; limits,
//! SQL errors and refusals end the stream with the same codes as Execute;
//! a reader that stops reading stops PostgreSQL (flow control), and one
//! that goes away or runs out of time gets its statement cancelled.

use std::time::Duration;

use poolplane::proto::execute_stream_response::Part;
use poolplane::proto::{value::Kind, ExecuteRequest, ResultEnd, Value};
use tonic::Code;

use crate::support::{
    busy_backends, cluster, config_yaml, eventually, exec, meta, nothing_left_running,
    pool_statistics, v, PoolSpec, TestServer,
};

/// What one stream delivered.
#[derive(Debug)]
struct Delivered {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    chunks: usize,
    /// `end`, or the status the stream ended with instead.
    end: Result<ResultEnd, tonic::Status>,
}

async fn stream(server: &TestServer, request: ExecuteRequest) -> Delivered {
    let mut delivered = Delivered {
        columns: Vec::new(),
        rows: Vec::new(),
        chunks: 0,
        end: Err(tonic::Status::unknown("the stream ended without `end`")),
    };
    let mut parts = match server.query().await.execute_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            delivered.end = Err(status);
            return delivered;
        }
    };
    loop {
        match parts.message().await {
            Ok(Some(message)) => match message.part.expect("a part") {
                Part::Header(header) => {
                    assert!(delivered.columns.is_empty() && delivered.chunks == 0);
                    delivered.columns = header.columns.into_iter().map(|c| c.name).collect();
                }
                Part::Rows(chunk) => {
                    assert!(!chunk.rows.is_empty(), "no empty chunks");
                    delivered.chunks += 1;
                    delivered
                        .rows
                        .extend(chunk.rows.into_iter().map(|row| row.values));
                }
                Part::End(end) => {
                    delivered.end = Ok(end);
                    assert!(parts.message().await.expect("clean end").is_none());
                    return delivered;
                }
            },
            Ok(None) => return delivered,
            Err(status) => {
                delivered.end = Err(status);
                return delivered;
            }
        }
    }
}

fn int_of(value: &Value) -> i64 {
    match value.kind {
        Some(Kind::IntValue(i)) => i,
        ref other => panic!("expected an int, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_arrives_in_order_in_chunks_then_the_end() {
    let pool = "stream_rows";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 2)])).await;

    // 5 MB: more than Execute may return (server.max_result_bytes).
    let sql = "SELECT i::int8 AS n, repeat('x', 1000) AS pad FROM generate_series(1, 5000) i";
    let too_big = server
        .query()
        .await
        .execute(exec(pool, sql, vec![]))
        .await
        .expect_err("too large for Execute");
    assert_eq!(too_big.code(), Code::ResourceExhausted);

    let delivered = stream(&server, exec(pool, sql, vec![])).await;
    let end = delivered.end.expect("complete");
    assert_eq!(delivered.columns, ["n", "pad"]);
    assert_eq!(delivered.rows.len(), 5000);
    for (i, row) in delivered.rows.iter().enumerate() {
        assert_eq!(int_of(&row[0]), i as i64 + 1, "rows in order");
        assert_eq!(row[1], v::text(&"x".repeat(1000)));
    }
    assert!(delivered.chunks > 1, "{} chunk(s)", delivered.chunks);
    assert_eq!((end.rows_affected, end.truncated), (5000, false));

    // No rows: the header and the end. A write: what it affected.
    let empty = stream(&server, exec(pool, "SELECT 1 AS one WHERE false", vec![])).await;
    assert_eq!(empty.columns, ["one"]);
    assert_eq!(
        (empty.chunks, empty.end.expect("complete").rows_affected),
        (0, 0)
    );
    let written = stream(
        &server,
        exec(
            pool,
            "WITH t(x) AS (VALUES (1), (2), (3)) SELECT x * $1::int8 FROM t",
            vec![v::int(7)],
        ),
    )
    .await;
    let values: Vec<i64> = written.rows.iter().map(|row| int_of(&row[0])).collect();
    assert_eq!(values, [7, 14, 21]);
    assert_eq!(written.end.expect("complete").rows_affected, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_errors_and_refusals_end_the_stream_with_execute_codes() {
    let pool = "stream_limits";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    // In the select list, generate_series streams (in FROM it would
    // materialize all of its rows first).
    let endless = "SELECT generate_series(1, 100000000)::int8";
    let limited = |truncate: bool| ExecuteRequest {
        max_rows: 10,
        allow_truncation: truncate,
        ..exec(pool, endless, vec![])
    };

    let truncated = stream(&server, limited(true)).await;
    assert_eq!(truncated.rows.len(), 10);
    let end = truncated.end.expect("truncated is an end");
    assert_eq!((end.rows_affected, end.truncated), (10, true));
    nothing_left_running(pool).await;

    let refused = stream(&server, limited(false)).await;
    let status = refused.end.expect_err("over the row limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(meta(&status, "poolplane-row-limit").as_deref(), Some("10"));
    nothing_left_running(pool).await;

    // One row bigger than a response may be (server.max_result_bytes).
    let huge_row = stream(
        &server,
        exec(
            pool,
            "SELECT repeat('x', 5000000) FROM generate_series(1, 3)",
            vec![],
        ),
    )
    .await;
    let status = huge_row.end.expect_err("row too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        meta(&status, "poolplane-byte-limit").is_some(),
        "{status:?}"
    );
    nothing_left_running(pool).await;

    // A SQL error after some rows: the rows so far, then the error, no end.
    let failing = stream(
        &server,
        exec(
            pool,
            "SELECT 10 / (5 - i) FROM generate_series(1, 10) i",
            vec![],
        ),
    )
    .await;
    assert!(failing.rows.len() <= 4, "{:?}", failing.rows);
    let status = failing.end.expect_err("division by zero");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("22012")
    );

    for (sql, code) in [
        ("BEGIN", Code::FailedPrecondition),
        ("COPY pg_class TO STDOUT", Code::Unimplemented),
        ("SELECT 1; SELECT 2", Code::InvalidArgument),
        ("", Code::InvalidArgument),
    ] {
        let status = stream(&server, exec(pool, sql, vec![]))
            .await
            .end
            .expect_err("refused");
        assert_eq!(status.code(), code, "{sql}: {status:?}");
    }
    let status = stream(&server, exec("no_such_pool", "SELECT 1", vec![]))
        .await
        .end
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);

    // The one connection is still the pool's, clean and working.
    let after = stream(&server, exec(pool, "SELECT 1::int8", vec![])).await;
    assert_eq!(int_of(&after.rows[0][0]), 1);
    let stats = pool_statistics(&server, pool).await;
    assert_eq!(stats.active, 0, "{stats:?}");
    server.stop().await;
}

/// Backends of `app_name` blocked sending to their client.
async fn blocked_writing(admin: &tokio_postgres::Client, app_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event = 'ClientWrite'",
            &[&app_name],
        )
        .await
        .expect("count backends blocked writing")
        .get(0)
}

/// A reader that stops reading stops PostgreSQL: the backend blocks
/// writing to poolplane instead of poolplane buffering the result. When
/// the reader goes away the statement is cancelled and the pool's
/// numbers come back to rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_stops_postgresql_and_one_that_leaves_cancels_it() {
    let pool = "stream_flow";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    // About 10 GB if anyone read it all.
    let sql = "SELECT repeat('x', 100000) FROM generate_series(1, 100000)";
    let mut parts = server
        .query()
        .await
        .execute_stream(exec(pool, sql, vec![]))
        .await
        .expect("stream")
        .into_inner();
    for _ in 0..3 {
        parts.message().await.expect("a part").expect("more");
    }
    eventually(
        "the backend waits for poolplane to read",
        Duration::from_secs(10),
        || {
            let (admin, app) = (&admin, &app);
            async move { blocked_writing(admin, app).await == 1 }
        },
    )
    .await;
    assert_eq!(pool_statistics(&server, pool).await.active, 1);

    drop(parts);
    eventually("the statement is cancelled", Duration::from_secs(5), || {
        let (admin, app) = (&admin, &app);
        async move { busy_backends(admin, app).await == 0 }
    })
    .await;
    eventually("the lease has ended", Duration::from_secs(5), || {
        let server = &server;
        async move { pool_statistics(server, pool).await.active == 0 }
    })
    .await;
    let after = stream(&server, exec(pool, "SELECT 2::int8", vec![])).await;
    assert_eq!(int_of(&after.rows[0][0]), 2);
    server.stop().await;
}

/// The deadline covers the whole stream: when it passes, the statement is
/// cancelled in PostgreSQL and the stream ends with DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_the_whole_stream() {
    let pool = "stream_deadline";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let mut request = tonic::Request::new(exec(
        pool,
        "SELECT i::int8, repeat('x', 100000), pg_sleep(CASE WHEN i = 3 THEN 30 ELSE 0 END) \
         FROM generate_series(1, 5) i",
        vec![],
    ));
    request.set_timeout(Duration::from_millis(1500));
    let mut parts = server
        .query()
        .await
        .execute_stream(request)
        .await
        .expect("stream")
        .into_inner();
    let mut rows = 0;
    let status = loop {
        match parts.message().await {
            Ok(Some(message)) => {
                if let Some(Part::Rows(chunk)) = message.part {
                    rows += chunk.rows.len();
                }
            }
            Ok(None) => panic!("ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // PostgreSQL sends what it has produced once its output buffer fills:
    // with rows this large, at least the first one before the sleep.
    assert!(rows >= 1, "the rows before the sleep arrived as produced");
    nothing_left_running(pool).await;
    server.stop().await;
}

/// A forced DeletePool while a stream's reader has stopped: the backend is
/// blocked writing to poolplane, where a cancel request cannot reach it,
/// so the stream lets go of its result; the drain then closes the
/// connection, and no backend of the pool outlives the call (found by a
/// red team: it stayed, running, outside every limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_frees_a_stream_whose_reader_stopped() {
    let pool = "stream_drained";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    let mut parts = server
        .query()
        .await
        .execute_stream(exec(
            pool,
            "SELECT repeat('x', 100000) FROM generate_series(1, 100000)",
            vec![],
        ))
        .await
        .expect("stream")
        .into_inner();
    parts.message().await.expect("a part").expect("more");
    eventually(
        "the backend waits for poolplane to read",
        Duration::from_secs(10),
        || {
            let (admin, app) = (&admin, &app);
            async move { blocked_writing(admin, app).await == 1 }
        },
    )
    .await;
    let report = server
        .admin()
        .await
        .delete_pool(poolplane::proto::DeletePoolRequest {
            name: pool.into(),
            drain_timeout_ms: 0,
            force: true,
        })
        .await
        .expect("deleted")
        .into_inner();
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(report.connections_closed, 1, "{report:?}");
    assert_eq!(
        crate::support::backends(&admin, &app).await,
        0,
        "the backend is gone"
    );
    // The reader, reading again, learns the pool went away.
    let status = loop {
        match parts.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    server.stop().await;
}

/// As Execute does, a row too large to send ends a result that may be
/// truncated with `truncated: true` (the rows before it), instead of an
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_truncates_when_truncation_is_allowed() {
    let pool = "stream_truncated";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    for (big_at, rows) in [(5, 4), (11, 10)] {
        let request = ExecuteRequest {
            max_rows: 10,
            allow_truncation: true,
            ..exec(
                pool,
                &format!(
                    "SELECT g::int8, CASE WHEN g = {big_at} THEN repeat('x', 10000000) END \
                     FROM generate_series(1, 100) g"
                ),
                vec![],
            )
        };
        let delivered = stream(&server, request).await;
        assert_eq!(delivered.rows.len(), rows, "row {big_at} too large");
        let end = delivered.end.expect("a truncated end");
        assert!(end.truncated);
        nothing_left_running(pool).await;
    }
    server.stop().await;
}
