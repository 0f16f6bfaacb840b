//! Execute and ExecuteBatch with every supported type, both directions,
//! against real PostgreSQL: NULLs, extremes, arrays, limits.

use poolplane::proto::{self, value::Kind, ExecuteBatchRequest, ParameterSet};
use tonic::Code;

use crate::support::{config_yaml, exec, meta, v, PoolSpec, TestServer};

const POOL: &str = "types";

async fn server() -> TestServer {
    TestServer::start(&config_yaml(&[PoolSpec::new(POOL, 4)])).await
}

/// Sends `value` as `$1::ty` and returns what comes back.
async fn echo(
    client: &mut proto::query_client::QueryClient<tonic::transport::Channel>,
    ty: &str,
    value: proto::Value,
) -> proto::Value {
    let response = client
        .execute(exec(
            POOL,
            &format!("SELECT $1::{ty} AS v"),
            vec![value.clone()],
        ))
        .await
        .unwrap_or_else(|status| panic!("echo {ty} {value:?}: {status:?}"))
        .into_inner();
    assert_eq!(response.columns.len(), 1);
    assert_eq!(response.rows.len(), 1);
    response.rows[0].values[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_round_trips_exactly() {
    let server = server().await;
    let mut client = server.query().await;
    let cases: Vec<(&str, proto::Value)> = vec![
        ("bool", v::boolean(true)),
        ("bool", v::boolean(false)),
        ("int2", v::int(-32768)),
        ("int2", v::int(32767)),
        ("int4", v::int(i64::from(i32::MIN))),
        ("int4", v::int(i64::from(i32::MAX))),
        ("int8", v::int(i64::MIN)),
        ("int8", v::int(i64::MAX)),
        ("float4", v::float(1.5)),
        ("float8", v::float(f64::INFINITY)),
        ("float8", v::float(f64::NEG_INFINITY)),
        ("float8", v::float(f64::MAX)),
        ("float8", v::float(-0.000_123_456_789)),
        (
            "numeric",
            v::numeric("123456789012345678901234567890123456789012.123456789012"),
        ),
        (
            "numeric",
            v::numeric("-0.000000000000000000000000000000000000000000001"),
        ),
        ("numeric", v::numeric("NaN")),
        ("numeric", v::numeric("Infinity")),
        ("numeric", v::numeric("0")),
        ("text", v::text("")),
        (
            "text",
            v::text("héllo — 日本語 🚀 \"quotes\" and \\ backslash"),
        ),
        ("varchar", v::text("varchar")),
        ("char(3)", v::text("abc")),
        ("name", v::text("a_name")),
        ("bytea", v::bytes(&[])),
        ("bytea", v::bytes(&[0, 1, 127, 128, 255])),
        ("uuid", v::uuid("0e3f8a52-9c1b-4d6e-8f00-123456789abc")),
        ("date", v::date("2024-02-29")),
        ("date", v::date("infinity")),
        ("date", v::date("-infinity")),
        ("time", v::time("23:59:59.999999")),
        ("time", v::time("00:00:00")),
        ("timestamp", v::timestamp("2024-02-29T12:34:56.123456")),
        ("timestamp", v::timestamp("infinity")),
        ("timestamptz", v::timestamptz(1_700_000_000, 123_456_000)),
        ("timestamptz", v::timestamptz(-1_000_000_000, 0)),
        ("interval", v::interval(14, -3, 3_723_000_004)),
        ("jsonb", v::json(r#"{"a": [1, 2, null], "b": "ü"}"#)),
        ("json", v::json(r#"{"keep":  "spacing"}"#)),
        ("int4[]", v::array(vec![v::int(1), v::null(), v::int(3)])),
        ("text[]", v::array(vec![])),
        (
            "text[]",
            v::array(vec![v::text("a"), v::null(), v::text("")]),
        ),
        (
            "numeric[]",
            v::array(vec![v::numeric("1.50"), v::numeric("-2")]),
        ),
        ("bool[]", v::array(vec![v::boolean(true), v::null()])),
        (
            "uuid[]",
            v::array(vec![v::uuid("00000000-0000-0000-0000-000000000000")]),
        ),
        ("date[]", v::array(vec![v::date("1999-12-31")])),
        ("timestamptz[]", v::array(vec![v::timestamptz(0, 0)])),
        (
            "float8[]",
            v::array(vec![v::float(f64::NEG_INFINITY), v::null()]),
        ),
        ("bytea[]", v::array(vec![v::bytes(b"\x00x")])),
        ("jsonb[]", v::array(vec![v::json("[]")])),
        ("interval[]", v::array(vec![v::interval(0, 1, 0)])),
        ("int8[]", v::array(vec![v::int(i64::MIN), v::int(i64::MAX)])),
    ];
    for (ty, value) in cases {
        let back = echo(&mut client, ty, value.clone()).await;
        assert_eq!(back, value, "round trip of {ty}");
    }
    // NULL of every type comes back as null.
    for ty in [
        "bool",
        "int8",
        "numeric",
        "text",
        "bytea",
        "uuid",
        "date",
        "timestamptz",
        "interval",
        "jsonb",
        "int4[]",
    ] {
        assert_eq!(
            echo(&mut client, ty, v::null()).await,
            v::null(),
            "NULL {ty}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_produces_decode_exactly() {
    let server = server().await;
    let mut client = server.query().await;
    let row = client
        .execute(exec(
            POOL,
            "SELECT 'NaN'::float8, '-Infinity'::float4, 1.10::numeric(10,4), 'x'::char(3), \
             '1 year 2 mons 3 days 04:05:06.5'::interval, ARRAY[]::int4[], ARRAY[NULL]::text[], \
             '2000-01-01 00:00:00+00'::timestamptz, 'infinity'::timestamptz, 42::oid",
            vec![],
        ))
        .await
        .expect("select literals")
        .into_inner();
    let values = &row.rows[0].values;
    match &values[0].kind {
        Some(Kind::FloatValue(f)) => assert!(f.is_nan()),
        other => panic!("NaN came back as {other:?}"),
    }
    assert_eq!(values[1], v::float(f64::NEG_INFINITY));
    assert_eq!(values[2], v::numeric("1.1000"));
    assert_eq!(values[3], v::text("x  "));
    assert_eq!(values[4], v::interval(14, 3, 14_706_500_000));
    assert_eq!(values[5], v::array(vec![]));
    assert_eq!(values[6], v::array(vec![v::null()]));
    assert_eq!(values[7], v::timestamptz(946_684_800, 0));
    assert_eq!(values[8], v::text("infinity"));
    assert_eq!(values[9], v::int(42));
    let types: Vec<&str> = row.columns.iter().map(|c| c.type_name.as_str()).collect();
    assert_eq!(types[..3], ["float8", "float4", "numeric"]);
    assert_eq!(types[5], "_int4");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_mismatched_types_are_invalid_arguments() {
    let server = server().await;
    let mut client = server.query().await;

    let status = client
        .execute(exec(POOL, "SELECT point(1, 2) AS p", vec![]))
        .await
        .expect_err("point is unsupported");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("`p`") && status.message().contains("point"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("::text"), "{}", status.message());

    let status = client
        .execute(exec(POOL, "SELECT $1::int4", vec![v::text("7")]))
        .await
        .expect_err("text into int4");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-field").as_deref(),
        Some("params[0]")
    );
    assert!(status.message().contains("int4"), "{}", status.message());

    let status = client
        .execute(exec(POOL, "SELECT $1::int2", vec![v::int(70_000)]))
        .await
        .expect_err("out of range int2");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("out of range"),
        "{}",
        status.message()
    );

    let status = client
        .execute(exec(POOL, "SELECT $1::int4, $2::int4", vec![v::int(1)]))
        .await
        .expect_err("missing parameter");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("2 placeholder(s) but 1"),
        "{}",
        status.message()
    );

    let status = client
        .execute(exec(POOL, "SELECT $1::numeric", vec![v::numeric("1e5")]))
        .await
        .expect_err("exponent numeric");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .execute(exec(POOL, "   ", vec![]))
        .await
        .expect_err("empty sql");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(meta(&status, "poolplane-field").as_deref(), Some("sql"));

    let status = client
        .execute(exec(
            POOL,
            "SELECT $1::int8",
            vec![proto::Value { kind: None }],
        ))
        .await
        .expect_err("kindless value");
    assert_eq!(status.code(), Code::InvalidArgument);

    // The pool is still healthy after all of that.
    let ok = client
        .execute(exec(POOL, "SELECT 1", vec![]))
        .await
        .expect("still works");
    assert_eq!(ok.into_inner().rows[0].values[0], v::int(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limit_fails_or_truncates_as_asked() {
    let server = server().await;
    let mut client = server.query().await;
    let sql = "SELECT g FROM generate_series(1, 20) g";

    let mut request = exec(POOL, sql, vec![]);
    request.max_rows = 5;
    let status = client
        .execute(request.clone())
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(meta(&status, "poolplane-row-limit").as_deref(), Some("5"));

    request.allow_truncation = true;
    let response = client
        .execute(request)
        .await
        .expect("truncated")
        .into_inner();
    assert!(response.truncated);
    assert_eq!(response.rows.len(), 5);
    assert_eq!(response.rows[4].values[0], v::int(5));

    let mut request = exec(POOL, sql, vec![]);
    request.max_rows = 20;
    let response = client
        .execute(request)
        .await
        .expect("exactly at the limit")
        .into_inner();
    assert!(!response.truncated);
    assert_eq!(response.rows.len(), 20);
    assert_eq!(response.rows_affected, 20);

    // Above the server's maximum (1000 in the test config).
    let mut request = exec(POOL, sql, vec![]);
    request.max_rows = 1001;
    let status = client.execute(request).await.expect_err("above server max");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-field").as_deref(),
        Some("max_rows")
    );

    // The server default applies when max_rows is 0.
    let status = client
        .execute(exec(POOL, "SELECT generate_series(1, 1001)", vec![]))
        .await
        .expect_err("server max applies");
    assert_eq!(status.code(), Code::ResourceExhausted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_one_transaction_all_or_nothing() {
    let server = server().await;
    let mut client = server.query().await;
    client
        .execute(exec(
            POOL,
            "CREATE TABLE IF NOT EXISTS batch_items (id int PRIMARY KEY, label text)",
            vec![],
        ))
        .await
        .expect("create table");
    client
        .execute(exec(POOL, "TRUNCATE batch_items", vec![]))
        .await
        .expect("truncate");

    let sets = |ids: &[i64]| -> Vec<ParameterSet> {
        ids.iter()
            .map(|id| ParameterSet {
                params: vec![v::int(*id), v::text(&format!("item {id}"))],
            })
            .collect()
    };
    let batch = |ids: &[i64]| ExecuteBatchRequest {
        pool: POOL.into(),
        sql: "INSERT INTO batch_items (id, label) VALUES ($1, $2)".into(),
        parameter_sets: sets(ids),
    };
    let response = client
        .execute_batch(batch(&[1, 2, 3]))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(response.rows_affected, vec![1, 1, 1]);
    assert_eq!(response.total_rows_affected, 3);

    // Set 1 (id 4) is fine, set 2 duplicates id 1: nothing of this batch stays.
    let status = client
        .execute_batch(batch(&[4, 1, 5]))
        .await
        .expect_err("duplicate key");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("23505")
    );
    assert_eq!(meta(&status, "poolplane-batch-index").as_deref(), Some("1"));
    assert!(meta(&status, "poolplane-detail-bin")
        .unwrap_or_default()
        .contains("(id)=(1)"));

    let count = client
        .execute(exec(POOL, "SELECT count(*) FROM batch_items", vec![]))
        .await
        .expect("count")
        .into_inner();
    assert_eq!(count.rows[0].values[0], v::int(3));

    // A bad parameter in a later set is reported before anything runs.
    let mut bad = batch(&[6, 7]);
    bad.parameter_sets[1].params[0] = v::text("seven");
    let status = client.execute_batch(bad).await.expect_err("bad parameter");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&status, "poolplane-field").as_deref(),
        Some("parameter_sets[1].params[0]")
    );

    let update = client
        .execute(exec(
            POOL,
            "UPDATE batch_items SET label = label || '!'",
            vec![],
        ))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(update.rows_affected, 3);
    assert!(update.columns.is_empty());
    server.stop().await;
}

/// Values PostgreSQL itself would refuse are refused, never silently
/// changed; values it accepts come back as they went in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_round_trip_exactly_or_are_refused() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("edges", 1)])).await;
    let mut client = server.query().await;
    for bad in [1e300, 1e-50] {
        let status = client
            .execute(exec("edges", "SELECT $1::float4", vec![v::float(bad)]))
            .await
            .expect_err("out of float4's range");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad}: {status:?}"
        );
    }
    let end_of_day = client
        .execute(exec("edges", "SELECT $1::time", vec![v::time("24:00:00")]))
        .await
        .expect("24:00:00 is a time")
        .into_inner();
    assert_eq!(end_of_day.rows[0].values[0], v::time("24:00:00"));
    // Not taken for -infinity: outside PostgreSQL's range, refused.
    let status = client
        .execute(exec(
            "edges",
            "SELECT $1::timestamptz",
            vec![v::timestamptz(i64::MIN / 1_000_000 + 1, 0)],
        ))
        .await
        .expect_err("outside timestamptz's range");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Outside google.protobuf.Timestamp's years 1 to 9999: ISO text.
    let far = client
        .execute(exec(
            "edges",
            "SELECT '294276-12-31 23:59:59+00'::timestamptz, '4713-01-01 00:00:00+00 BC'::timestamptz, \
             '2024-02-29 12:00:00+00'::timestamptz",
            vec![],
        ))
        .await
        .expect("far instants")
        .into_inner();
    assert_eq!(
        far.rows[0].values[0],
        v::text("+294276-12-31T23:59:59.000000Z")
    );
    assert_eq!(
        far.rows[0].values[1],
        v::text("-4712-01-01T00:00:00.000000Z")
    );
    assert_eq!(far.rows[0].values[2], v::timestamptz(1_709_208_000, 0));
    server.stop().await;
}
