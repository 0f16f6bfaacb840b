//! The gRPC deadline is the statement's deadline: past it the statement is
//! cancelled in PostgreSQL and the caller gets DEADLINE_EXCEEDED at once.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::support::{cluster, config_yaml, eventually, exec, v, PoolSpec, TestServer};

/// Statements of `app` still running `pg_sleep(10)`.
async fn sleeping_statements(admin: &tokio_postgres::Client, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep(10)%'",
            &[&app],
        )
        .await
        .expect("query activity")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cancels_the_statement_in_postgres() {
    let _turn = crate::support::machine_to_myself().await;
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("deadline", 2)])).await;
    let mut client = server.query().await;
    let admin = cluster().admin().await;

    let mut request = tonic::Request::new(exec("deadline", "SELECT pg_sleep(10)", vec![]));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.execute(request).await.expect_err("deadline passes");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Far below the statement's 10 s: the deadline, not the sleep, ended it
    // (slack for a loaded machine).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        took >= Duration::from_millis(200),
        "returned before the deadline: {took:?}"
    );
    assert!(
        status.message().contains("cancelled in PostgreSQL"),
        "{}",
        status.message()
    );

    eventually("no pg_sleep left running", Duration::from_secs(5), || {
        let admin = &admin;
        async move { sleeping_statements(admin, "poolplane/deadline").await == 0 }
    })
    .await;

    // The pool is clean: the next calls work and see no leftover state.
    for _ in 0..4 {
        let response = client
            .execute(exec("deadline", "SELECT 41 + 1", vec![]))
            .await
            .expect("after a cancel")
            .into_inner();
        assert_eq!(response.rows[0].values[0], v::int(42));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_gets_its_statement_cancelled() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("deadline_drop", 2)])).await;
    let admin = cluster().admin().await;
    let mut client = server.query().await;
    let call = tokio::spawn(async move {
        client
            .execute(exec("deadline_drop", "SELECT pg_sleep(10)", vec![]))
            .await
    });
    eventually("the statement runs", Duration::from_secs(5), || {
        let admin = &admin;
        async move { sleeping_statements(admin, "poolplane/deadline_drop").await == 1 }
    })
    .await;
    call.abort();
    eventually(
        "the abandoned statement is cancelled",
        Duration::from_secs(5),
        || {
            let admin = &admin;
            async move { sleeping_statements(admin, "poolplane/deadline_drop").await == 0 }
        },
    )
    .await;
    server.stop().await;
}

/// A batch is stopped between sets when its caller gives up: a cancel
/// request alone would miss a backend idle in the batch's transaction, and
/// the rest would run and COMMIT after the caller heard it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_caller_gave_up_never_commits() {
    let _turn = crate::support::machine_to_myself().await;
    use poolplane::proto::{ExecuteBatchRequest, ParameterSet};
    let pool = "deadline_batch";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 2)])).await;
    let admin = cluster().admin().await;
    admin
        .batch_execute("DROP TABLE IF EXISTS batch_gave_up; CREATE TABLE batch_gave_up (a int8)")
        .await
        .expect("create table");
    let batch = || ExecuteBatchRequest {
        pool: pool.into(),
        sql: "INSERT INTO batch_gave_up VALUES ($1::int8)".into(),
        parameter_sets: (0..20_000)
            .map(|i| ParameterSet {
                params: vec![v::int(i)],
            })
            .collect(),
    };

    // The deadline passes mid-batch.
    let mut request = tonic::Request::new(batch());
    request.set_timeout(Duration::from_millis(300));
    let status = server
        .query()
        .await
        .execute_batch(request)
        .await
        .expect_err("the deadline passes first");
    // The server answers a little before the deadline; on a loaded machine
    // the client's own timer can still win (CANCELLED). Either way the
    // batch must not commit.
    match status.code() {
        Code::DeadlineExceeded => assert_eq!(
            crate::support::meta(&status, "poolplane-may-have-run").as_deref(),
            Some("false"),
            "COMMIT was not reached"
        ),
        Code::Cancelled => {}
        _ => panic!("{status:?}"),
    }

    // The caller goes away mid-batch (its call is dropped, no deadline).
    let mut client = server.query().await;
    let gone =
        tokio::time::timeout(Duration::from_millis(300), client.execute_batch(batch())).await;
    assert!(gone.is_err(), "the batch was still running");

    // Both batches' connections are closed (their work was cancelled); had
    // either committed, its 20,000 rows would be there.
    let app = format!("poolplane/{pool}");
    eventually(
        "the cancelled batches' backends are gone",
        Duration::from_secs(10),
        || {
            let (admin, app) = (&admin, &app);
            async move { crate::support::backends(admin, app).await == 0 }
        },
    )
    .await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM batch_gave_up", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "a batch committed after its caller gave up");
    server.stop().await;
}
