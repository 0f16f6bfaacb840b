//! Remembered statement plans: a repeated statement costs one round trip
//! (one flight, no prepare); a plan outdated by a schema change never
//! changes an answer; and the retry rule holds on the one-flight path (a
//! flight the server cannot have run moves to another connection, one it
//! may have run never does).

use std::time::Duration;

use poolplane::proto::value::Kind;
use poolplane::proto::ExecuteResponse;

use crate::proxy::{Mode, Proxy};
use crate::support::{
    cluster, config_yaml, eventually, exec, meta, v, PoolSpec, TestServer, SUPERUSER_PASSWORD,
};

fn ints(response: &ExecuteResponse) -> Vec<i64> {
    response
        .rows
        .iter()
        .flat_map(|row| &row.values)
        .map(|value| match &value.kind {
            Some(Kind::IntValue(i)) => *i,
            other => panic!("not an int: {other:?}"),
        })
        .collect()
}

fn column_types(response: &ExecuteResponse) -> Vec<(String, String)> {
    response
        .columns
        .iter()
        .map(|column| (column.name.clone(), column.type_name.clone()))
        .collect()
}

/// Counts, in the shared cluster's log, the Parse messages of `marker`'s
/// statements: (named ones, i.e. prepares; unnamed ones, i.e. flights).
fn parses_logged(marker: &str) -> (usize, usize) {
    let log = std::fs::read_to_string(cluster().dir.join("server.log")).unwrap_or_default();
    let mut named = 0;
    let mut unnamed = 0;
    for line in log.lines().filter(|line| line.contains(marker)) {
        if line.contains("parse <unnamed>:") {
            unnamed += 1;
        } else if line.contains("  parse ") {
            named += 1;
        }
    }
    (named, unnamed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_statement_is_prepared_once_per_connection_then_sent_in_one_flight() {
    // A role whose every Parse, Bind and Execute PostgreSQL logs.
    let admin = cluster().admin().await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS pp_plan_logged; \
             CREATE ROLE pp_plan_logged LOGIN PASSWORD '{SUPERUSER_PASSWORD}'; \
             ALTER ROLE pp_plan_logged SET log_min_duration_statement = 0"
        ))
        .await
        .expect("create the logged role");
    let pool = "plans_once";
    let server = TestServer::start(&config_yaml(&[
        PoolSpec::new(pool, 1).with("user: pp_plan_logged")
    ]))
    .await;
    let marker = format!("pp-plan-marker-{}", std::process::id());
    let sql = format!("SELECT $1::int8 * 2 AS doubled, '{marker}' AS marker");
    let mut client = server.query().await;
    let calls = 20;
    for i in 0..calls {
        let response = client
            .execute(exec(pool, &sql, vec![v::int(i)]))
            .await
            .expect("execute")
            .into_inner();
        assert_eq!(response.rows.len(), 1);
        assert_eq!(
            response.rows[0].values[0].kind,
            Some(Kind::IntValue(i * 2)),
            "call {i}"
        );
    }
    // One prepare (the first call), then every call one flight on the
    // unnamed statement; before plans, each call was a prepare and a run.
    eventually("every parse logged", Duration::from_secs(10), || async {
        parses_logged(&marker).1 >= calls as usize
    })
    .await;
    assert_eq!(parses_logged(&marker), (1, calls as usize));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_outdated_by_a_schema_change_never_changes_an_answer() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS pp_plan_narrow, pp_plan_wide; \
             CREATE TABLE pp_plan_narrow (a int4); INSERT INTO pp_plan_narrow VALUES (1); \
             CREATE TABLE pp_plan_wide (a int4); INSERT INTO pp_plan_wide VALUES (1)",
        )
        .await
        .expect("tables");
    // One connection: every call after the first finds the plan.
    let pool = "plans_outdated";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let client = server.query().await;
    let run = |sql: &'static str, params: Vec<poolplane::proto::Value>| {
        let mut client = client.clone();
        async move { client.execute(exec(pool, sql, params)).await }
    };

    // A parameter the remembered plan (int4) refuses is taken by the
    // catalog as it is now (int8).
    let narrow = "SELECT a FROM pp_plan_narrow WHERE a = $1";
    let first = run(narrow, vec![v::int(1)])
        .await
        .expect("first")
        .into_inner();
    assert_eq!(ints(&first), vec![1]);
    assert_eq!(column_types(&first), vec![("a".into(), "int4".into())]);
    admin
        .batch_execute(
            "ALTER TABLE pp_plan_narrow ALTER a TYPE int8; \
             INSERT INTO pp_plan_narrow VALUES (5000000000)",
        )
        .await
        .expect("widen");
    let widened = run(narrow, vec![v::int(5_000_000_000)])
        .await
        .expect("a value only the new type takes")
        .into_inner();
    assert_eq!(ints(&widened), vec![5_000_000_000]);
    assert_eq!(column_types(&widened), vec![("a".into(), "int8".into())]);

    // Columns added under a remembered plan: the answer describes them,
    // with rows and without.
    let wide = "SELECT * FROM pp_plan_wide";
    let before = run(wide, vec![]).await.expect("before").into_inner();
    assert_eq!(column_types(&before), vec![("a".into(), "int4".into())]);
    admin
        .batch_execute("ALTER TABLE pp_plan_wide ADD COLUMN b int8 DEFAULT 7")
        .await
        .expect("add b");
    let with_rows = run(wide, vec![]).await.expect("with rows").into_inner();
    assert_eq!(
        column_types(&with_rows),
        vec![("a".into(), "int4".into()), ("b".into(), "int8".into())]
    );
    assert_eq!(ints(&with_rows), vec![1, 7]);
    admin
        .batch_execute("DELETE FROM pp_plan_wide; ALTER TABLE pp_plan_wide ADD COLUMN c text")
        .await
        .expect("add c");
    // Remembered again by the call above; now outdated once more.
    let empty = run(wide, vec![]).await.expect("empty").into_inner();
    assert!(empty.rows.is_empty());
    assert_eq!(
        column_types(&empty),
        vec![
            ("a".into(), "int4".into()),
            ("b".into(), "int8".into()),
            ("c".into(), "text".into())
        ]
    );

    // A dropped table is the caller's error; recreated, it works at once.
    admin
        .batch_execute("DROP TABLE pp_plan_wide")
        .await
        .expect("drop");
    let gone = run(wide, vec![]).await.expect_err("the table is gone");
    assert_eq!(meta(&gone, "poolplane-sqlstate").as_deref(), Some("42P01"));
    admin
        .batch_execute("CREATE TABLE pp_plan_wide (z int8); INSERT INTO pp_plan_wide VALUES (42)")
        .await
        .expect("recreate");
    let recreated = run(wide, vec![]).await.expect("recreated").into_inner();
    assert_eq!(column_types(&recreated), vec![("z".into(), "int8".into())]);
    assert_eq!(ints(&recreated), vec![42]);

    admin
        .batch_execute("DROP TABLE pp_plan_narrow, pp_plan_wide")
        .await
        .expect("clean up");
    server.stop().await;
}

async fn backend_pid(
    client: &mut poolplane::proto::query_client::QueryClient<tonic::transport::Channel>,
    pool: &str,
) -> i64 {
    let response = client
        .execute(exec(pool, "SELECT pg_backend_pid()::int8", vec![]))
        .await
        .expect("pid")
        .into_inner();
    ints(&response)[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_the_server_ended_before_reading_moves_to_another_connection() {
    let proxy = Proxy::start(cluster().port).await;
    let pool = "plans_stale";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1).port(proxy.port)])).await;
    let mut client = server.query().await;
    let admin = cluster().admin().await;
    // Twice: the statement's plan is remembered on the connection.
    backend_pid(&mut client, pool).await;
    let old = backend_pid(&mut client, pool).await;

    // The server ends the idle session; its FATAL report waits in the
    // proxy, so the connection still looks alive when the next flight
    // leaves (and is held too).
    proxy.set(Mode::Blackhole);
    admin
        .execute("SELECT pg_terminate_backend($1::int4)", &[&(old as i32)])
        .await
        .expect("terminate");
    let call = {
        let mut client = client.clone();
        tokio::spawn(async move { backend_pid(&mut client, pool).await })
    };
    // The flight has left poolplane once its lease is taken.
    let statistics = || async { crate::support::pool_statistics(&server, pool).await.active };
    eventually("the flight leaves", Duration::from_secs(10), || async {
        statistics().await == 1
    })
    .await;
    eventually("the backend is gone", Duration::from_secs(10), || {
        let admin = &admin;
        async move {
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int4",
                    &[&(old as i32)],
                )
                .await
                .expect("count")
                .get(0);
            left == 0
        }
    })
    .await;
    proxy.set(Mode::Forward);
    // The first reply to the flight is the FATAL report: it never ran,
    // and the call is answered from a new connection.
    let new = call.await.expect("the call succeeds on another connection");
    assert_ne!(new, old);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_that_reached_the_server_is_never_retried() {
    let admin = cluster().admin().await;
    admin
        .batch_execute("DROP TABLE IF EXISTS pp_plan_once; CREATE TABLE pp_plan_once (n int8)")
        .await
        .expect("table");
    let pool = "plans_no_retry";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let mut client = server.query().await;
    let insert = "INSERT INTO pp_plan_once SELECT $1::int8 FROM pg_sleep($2::float8)";
    // Remember the plan (and leave one row).
    client
        .execute(exec(pool, insert, vec![v::int(1), v::float(0.0)]))
        .await
        .expect("first insert");
    let call = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .execute(exec(pool, insert, vec![v::int(2), v::float(30.0)]))
                .await
        })
    };
    eventually("the insert sleeps", Duration::from_secs(10), || {
        let admin = &admin;
        async move {
            let sleeping: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'poolplane/plans_no_retry' \
                     AND wait_event = 'PgSleep'",
                    &[],
                )
                .await
                .expect("count")
                .get(0);
            sleeping == 1
        }
    })
    .await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'poolplane/plans_no_retry' AND wait_event = 'PgSleep'",
            &[],
        )
        .await
        .expect("terminate");
    // Answered with the server's report: run again on another connection,
    // it would sleep 30 s and then succeed.
    let status = call.await.expect("join").expect_err("the connection ended");
    assert_eq!(
        meta(&status, "poolplane-sqlstate").as_deref(),
        Some("57P01"),
        "{status:?}"
    );
    // The terminated insert rolled back; only the first row exists.
    let rows: Vec<i64> = admin
        .query("SELECT n FROM pp_plan_once ORDER BY n", &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows, vec![1]);
    admin
        .batch_execute("DROP TABLE pp_plan_once")
        .await
        .expect("clean up");
    server.stop().await;
}

/// Found by a red team: under an outdated plan, a statement whose result
/// now has a type poolplane does not return ran (and committed) but was
/// answered as a bad request, inviting a retry that would run it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_unreturnable_only_after_it_ran_says_it_may_have_run() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS pp_plan_ev; DROP TYPE IF EXISTS pp_plan_mood; \
             CREATE TYPE pp_plan_mood AS ENUM ('a', 'b'); CREATE TABLE pp_plan_ev (id int8, c text)",
        )
        .await
        .expect("table");
    let pool = "plans_ran";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)])).await;
    let mut client = server.query().await;
    let insert = "INSERT INTO pp_plan_ev VALUES ($1, 'a') RETURNING c";
    client
        .execute(exec(pool, insert, vec![v::int(1)]))
        .await
        .expect("the plan is remembered");
    admin
        .batch_execute("ALTER TABLE pp_plan_ev ALTER c TYPE pp_plan_mood USING c::pp_plan_mood")
        .await
        .expect("alter");
    let ran = client
        .execute(exec(pool, insert, vec![v::int(2)]))
        .await
        .expect_err("an enum is not returned");
    assert_eq!(ran.code(), tonic::Code::InvalidArgument, "{ran:?}");
    assert_eq!(
        meta(&ran, "poolplane-may-have-run").as_deref(),
        Some("true"),
        "{ran:?}"
    );
    // Prepared afresh, the same call is refused before it runs.
    let refused = client
        .execute(exec(pool, insert, vec![v::int(3)]))
        .await
        .expect_err("refused before running");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        meta(&refused, "poolplane-may-have-run"),
        None,
        "{refused:?}"
    );
    let ids: Vec<i64> = admin
        .query("SELECT id FROM pp_plan_ev ORDER BY id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2]);
    admin
        .batch_execute("DROP TABLE pp_plan_ev; DROP TYPE pp_plan_mood")
        .await
        .expect("clean up");
    server.stop().await;
}

/// Found by a red team: after `ALTER ... TYPE`, a remembered plan's old
/// parameter type let PostgreSQL cast a value a fresh prepare refuses (a
/// float into an int column, rounded). A catalog change made through the
/// pool sets every connection's plans aside at once; one made elsewhere
/// is seen within `PLAN_MAX_AGE` (not waited for here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_through_the_pool_sets_its_plans_aside() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS pp_plan_acct; CREATE TABLE pp_plan_acct (id int8, bal float8)",
        )
        .await
        .expect("table");
    let pool = "plans_catalog";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 2)])).await;
    let mut client = server.query().await;
    let insert = "INSERT INTO pp_plan_acct VALUES ($1, $2)";
    // Enough calls, two at a time, that both connections remember the plan.
    for round in 0..5 {
        let (mut first, mut second) = (client.clone(), client.clone());
        let (a, b) = tokio::join!(
            first.execute(exec(pool, insert, vec![v::int(round), v::float(1.5)])),
            second.execute(exec(pool, insert, vec![v::int(round), v::float(1.5)])),
        );
        a.expect("insert");
        b.expect("insert");
    }
    client
        .execute(exec(
            pool,
            "ALTER TABLE pp_plan_acct ALTER bal TYPE int4",
            vec![],
        ))
        .await
        .expect("alter through the pool");
    for i in 0..4 {
        let refused = client
            .execute(exec(pool, insert, vec![v::int(100 + i), v::float(2.5)]))
            .await
            .expect_err("a float for an int column is refused, as a fresh prepare does");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            meta(&refused, "poolplane-field").as_deref(),
            Some("params[1]")
        );
    }
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM pp_plan_acct WHERE id >= 100", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0);
    admin
        .batch_execute("DROP TABLE pp_plan_acct")
        .await
        .expect("clean up");
    server.stop().await;
}

/// ExecuteBatch sends its parameter sets without waiting for each answer:
/// while the first set waits for a lock, the others reach the server; a
/// failing set is the one reported, and nothing of the batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sends_its_sets_ahead_and_reports_the_first_failure() {
    use poolplane::proto::{ExecuteBatchRequest, ParameterSet};
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS pp_batch_ahead; CREATE TABLE pp_batch_ahead (n int8 PRIMARY KEY)",
        )
        .await
        .expect("table");
    let proxy = Proxy::start(cluster().port).await;
    let pool = "batch_ahead";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1).port(proxy.port)])).await;
    let client = server.query().await;
    // Every set waits for a shared lock the test holds exclusively first.
    let sql = "INSERT INTO pp_batch_ahead SELECT $1::int8 FROM pg_advisory_lock_shared(5151)";
    let batch = |values: Vec<i64>| ExecuteBatchRequest {
        pool: pool.into(),
        sql: sql.into(),
        parameter_sets: values
            .into_iter()
            .map(|n| ParameterSet {
                params: vec![v::int(n)],
            })
            .collect(),
    };
    client
        .clone()
        .execute_batch(batch(vec![0]))
        .await
        .expect("warm");
    admin
        .execute("SELECT pg_advisory_lock(5151)", &[])
        .await
        .expect("hold");
    let before = proxy.bytes_upstream();
    let call = {
        let mut client = client.clone();
        tokio::spawn(async move { client.execute_batch(batch((1..=50).collect())).await })
    };
    // Each Bind/Execute/Sync carries at least 30 bytes.
    eventually(
        "all 50 sets reach the server",
        Duration::from_secs(10),
        || async { proxy.bytes_upstream() - before >= 50 * 30 },
    )
    .await;
    admin
        .execute("SELECT pg_advisory_unlock(5151)", &[])
        .await
        .expect("release");
    let done = call.await.expect("join").expect("batch").into_inner();
    assert_eq!(done.rows_affected, vec![1; 50]);

    // Set 3 collides with a row from above: it is the one reported, and
    // the sets around it leave nothing.
    let failed = client
        .clone()
        .execute_batch(batch(vec![100, 101, 102, 7, 103, 104]))
        .await
        .expect_err("a duplicate key");
    assert_eq!(
        meta(&failed, "poolplane-sqlstate").as_deref(),
        Some("23505")
    );
    assert_eq!(
        meta(&failed, "poolplane-batch-index").as_deref(),
        Some("3"),
        "{failed:?}"
    );
    let kept: i64 = admin
        .query_one("SELECT count(*) FROM pp_batch_ahead WHERE n >= 100", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(kept, 0);
    admin
        .batch_execute("DROP TABLE pp_batch_ahead")
        .await
        .expect("clean up");
    server.stop().await;
}
