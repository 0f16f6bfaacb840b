//! Session pipelining: statements go to PostgreSQL as they arrive, without
//! waiting for the answers before them, and each answer still says what
//! that statement did and the transaction status right after it.

use std::time::Duration;

use poolplane::proto::query_client::QueryClient;
use poolplane::proto::{statement_result, StatementResult, TransactionStatus};
use tonic::transport::Channel;

use crate::proxy::Proxy;
use crate::sessions::{first_int, open_request, status_of, Session};
use crate::support::{cluster, config_yaml, eventually, v, PoolSpec, TestServer};

/// A server with one pool `pool` of `max` connections (through `port` if
/// given) that one session may hold, and a session open on it.
async fn one_session(
    pool: &str,
    max: u32,
    port: Option<u16>,
) -> (TestServer, QueryClient<Channel>, Session) {
    let mut spec = PoolSpec::new(pool, max).with("max_session_connections: 1");
    if let Some(port) = port {
        spec = spec.port(port);
    }
    let server = TestServer::start(&config_yaml(&[spec])).await;
    let mut client = server.query().await;
    let session = Session::open(&mut client, open_request(pool))
        .await
        .expect("open");
    (server, client, session)
}

fn sqlstate(answer: &StatementResult) -> Option<&str> {
    match &answer.outcome {
        Some(statement_result::Outcome::Error(error)) => Some(error.sqlstate.as_str()),
        _ => None,
    }
}

fn column_type(answer: &StatementResult) -> String {
    match &answer.outcome {
        Some(statement_result::Outcome::Result(result)) => result.columns[0].type_name.clone(),
        other => panic!("no result: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_go_out_before_the_answers_before_them() {
    let proxy = Proxy::start(cluster().port).await;
    let pool = "pipe_ahead";
    let (server, _client, mut session) = one_session(pool, 1, Some(proxy.port)).await;
    // Both texts seen once: their plans are the session's.
    let lock = "SELECT pg_advisory_lock($1::int8)::text";
    session.send(lock, vec![v::int(4242)]).await;
    session.answer().await.expect("lock once");
    session
        .send(
            "SELECT pg_advisory_unlock($1::int8)::text",
            vec![v::int(4242)],
        )
        .await;
    session.answer().await.expect("unlock");
    session.send("SELECT $1::int8", vec![v::int(0)]).await;
    session.answer().await.expect("warm");

    // The first statement waits for a lock the test holds; the twenty
    // behind it are sent all the same.
    let admin = cluster().admin().await;
    admin
        .execute("SELECT pg_advisory_lock(4343)", &[])
        .await
        .expect("hold the lock");
    let before = proxy.bytes_upstream();
    session.send(lock, vec![v::int(4343)]).await;
    for i in 1..=20 {
        session.send("SELECT $1::int8", vec![v::int(i)]).await;
    }
    // Each flight carries at least its SQL text (15 bytes) and framing.
    eventually(
        "all 21 flights reach the server",
        Duration::from_secs(10),
        || async { proxy.bytes_upstream() - before >= 21 * 40 },
    )
    .await;
    admin
        .execute("SELECT pg_advisory_unlock(4343)", &[])
        .await
        .expect("release");
    let first = session.answer().await.expect("the lock");
    assert_eq!(sqlstate(&first), None, "{first:?}");
    for i in 1..=20 {
        let answer = session.answer().await.expect("answer");
        assert_eq!(first_int(&answer), i);
    }
    session.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pipelined_answer_carries_the_status_after_its_statement() {
    let admin = cluster().admin().await;
    admin
        .batch_execute("DROP TABLE IF EXISTS pipe_status; CREATE TABLE pipe_status (n int8)")
        .await
        .expect("table");
    let pool = "pipe_status";
    let (server, _client, mut session) = one_session(pool, 1, None).await;
    let insert = "INSERT INTO pipe_status VALUES ($1::int8)";
    // Plans for every text, so nothing below waits for a prepare.
    for sql in ["BEGIN", "SELECT 1 / $1::int8", "COMMIT"] {
        let params = if sql.contains("$1") {
            vec![v::int(1)]
        } else {
            vec![]
        };
        session.send(sql, params).await;
        session.answer().await.expect("warm");
    }
    session.send(insert, vec![v::int(0)]).await;
    session.answer().await.expect("warm insert");

    // Sent at once; a division by zero fails the transaction halfway, a
    // refused COPY is answered in its place.
    session.send("BEGIN", vec![]).await;
    session.send(insert, vec![v::int(1)]).await;
    session.send("SELECT 1 / $1::int8", vec![v::int(0)]).await;
    session.send("COPY pipe_status FROM STDIN", vec![]).await;
    session.send(insert, vec![v::int(2)]).await;
    session.send("COMMIT", vec![]).await;
    session.send(insert, vec![v::int(3)]).await;
    let expected = [
        (None, TransactionStatus::InTransaction),
        (None, TransactionStatus::InTransaction),
        (Some("22012"), TransactionStatus::Failed),
        // Refused by poolplane itself: no SQLSTATE.
        (Some(""), TransactionStatus::Failed),
        (Some("25P02"), TransactionStatus::Failed),
        (None, TransactionStatus::Idle),
        (None, TransactionStatus::Idle),
    ];
    for (i, (state, status)) in expected.into_iter().enumerate() {
        let answer = session.answer().await.expect("answer");
        let code = sqlstate(&answer).map(str::to_string);
        assert_eq!(
            (code.as_deref(), status_of(&answer)),
            (state, status),
            "answer {i}: {answer:?}"
        );
    }
    session.close().await;
    // The failed transaction left nothing; the statements around it ran.
    let rows: Vec<i64> = admin
        .query("SELECT n FROM pipe_status ORDER BY n", &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows, vec![0, 3]);
    admin
        .batch_execute("DROP TABLE pipe_status")
        .await
        .expect("clean up");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_search_path_changes_what_a_pipelined_text_means() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP SCHEMA IF EXISTS pipe_a CASCADE; DROP SCHEMA IF EXISTS pipe_b CASCADE; \
             CREATE SCHEMA pipe_a; CREATE SCHEMA pipe_b; \
             CREATE TABLE pipe_a.t (x int4); INSERT INTO pipe_a.t VALUES (1); \
             CREATE TABLE pipe_b.t (x text); INSERT INTO pipe_b.t VALUES ('b')",
        )
        .await
        .expect("schemas");
    let pool = "pipe_path";
    let (server, _client, mut session) = one_session(pool, 1, None).await;
    session.ok("SET search_path = pipe_a").await;
    assert_eq!(column_type(&session.run("SELECT x FROM t").await), "int4");
    assert_eq!(column_type(&session.run("SELECT x FROM t").await), "int4");
    // All at once: the SET comes before the SELECT behind it.
    session.send("SET search_path = pipe_b", vec![]).await;
    session.send("SELECT x FROM t", vec![]).await;
    session.answer().await.expect("set");
    assert_eq!(column_type(&session.answer().await.expect("b")), "text");
    // A temporary table shadows it, within the same flight too.
    session
        .send(
            "CREATE TEMP TABLE t (x int8) ON COMMIT PRESERVE ROWS",
            vec![],
        )
        .await;
    session.send("SELECT x FROM t", vec![]).await;
    session.answer().await.expect("temp");
    assert_eq!(
        column_type(&session.answer().await.expect("temp t")),
        "int8"
    );
    session.close().await;
    admin
        .batch_execute("DROP SCHEMA pipe_a CASCADE; DROP SCHEMA pipe_b CASCADE")
        .await
        .expect("clean up");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_plan_bound_still_answers_in_order() {
    let pool = "pipe_bound";
    let (server, _client, mut session) = one_session(pool, 1, None).await;
    // 300 distinct texts (a session keeps 256 plans; the rest run the
    // plain way), inside a transaction, with a repeated text between them
    // that is sent without waiting.
    session.send("BEGIN", vec![]).await;
    for i in 0..300 {
        session.send(&format!("SELECT {i}::int8"), vec![]).await;
        session.send("SELECT $1::int8", vec![v::int(-i)]).await;
    }
    session.send("COMMIT", vec![]).await;
    let begin = session.answer().await.expect("begin");
    assert_eq!(status_of(&begin), TransactionStatus::InTransaction);
    for i in 0..300 {
        let distinct = session.answer().await.expect("distinct");
        assert_eq!(first_int(&distinct), i);
        assert_eq!(status_of(&distinct), TransactionStatus::InTransaction);
        let repeated = session.answer().await.expect("repeated");
        assert_eq!(first_int(&repeated), -i);
        assert_eq!(status_of(&repeated), TransactionStatus::InTransaction);
    }
    let commit = session.answer().await.expect("commit");
    assert_eq!(status_of(&commit), TransactionStatus::Idle);
    session.close().await;
    server.stop().await;
}

/// Found by a red team: around statements prepared for the first time
/// (failing or not), an answer could carry the status of the reply
/// before or after its own, pipelined or one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_stay_right_around_first_prepares_and_their_failures() {
    // Replies trickle in a byte at a time, so the driver hands a prepare's
    // answer (or error) over before its ReadyForQuery has arrived.
    let proxy = Proxy::start(cluster().port).await;
    let pool = "pipe_prepares";
    let server = TestServer::start(&config_yaml(&[PoolSpec::new(pool, 1)
        .port(proxy.port)
        .with("max_session_connections: 1")]))
    .await;
    let mut client = server.query().await;
    use TransactionStatus::{Failed, Idle, InTransaction};
    let script: [(&str, Vec<poolplane::proto::Value>, TransactionStatus); 9] = [
        ("BEGIN", vec![], InTransaction),
        ("SELEC oops", vec![], Failed),
        ("SELECT 1", vec![], Failed),
        ("ROLLBACK", vec![], Idle),
        ("BEGIN", vec![], InTransaction),
        ("SELECT 1 / 0", vec![], Failed),
        ("SELECT $1::int4", vec![v::int(5)], Failed),
        ("ROLLBACK", vec![], Idle),
        ("SELECT 1", vec![], Idle),
    ];
    for round in 0..2 {
        let pipelined = round % 2 == 0;
        proxy.set(crate::proxy::Mode::Forward);
        let mut session = Session::open(&mut client, open_request(pool))
            .await
            .expect("open");
        proxy.set(crate::proxy::Mode::TrickleReplies(Duration::from_micros(
            200,
        )));
        let mut statuses = Vec::new();
        if pipelined {
            for (sql, params, _) in &script {
                session.send(sql, params.clone()).await;
            }
            for _ in &script {
                statuses.push(status_of(&session.answer().await.expect("answer")));
            }
        } else {
            for (sql, params, _) in &script {
                session.send(sql, params.clone()).await;
                statuses.push(status_of(&session.answer().await.expect("answer")));
            }
        }
        let expected: Vec<_> = script.iter().map(|(_, _, status)| *status).collect();
        assert_eq!(statuses, expected, "round {round}, pipelined {pipelined}");
        proxy.set(crate::proxy::Mode::Forward);
        session.close().await;
    }
    server.stop().await;
}

/// Found by a red team: a session's statement whose result was described
/// otherwise than planned made the driver look up a type as prepared
/// statements of its own, which the reset then removed: every later
/// caller of that connection touching a non-built-in type got 26000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_looked_up_under_an_outdated_plan_breaks_nothing_for_the_next_caller() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS pipe_enum; DROP TYPE IF EXISTS pipe_mood; \
             DROP TYPE IF EXISTS pipe_other; \
             CREATE TYPE pipe_mood AS ENUM ('a', 'b'); CREATE TYPE pipe_other AS ENUM ('x'); \
             CREATE TABLE pipe_enum (c text); INSERT INTO pipe_enum VALUES ('a')",
        )
        .await
        .expect("types");
    let pool = "pipe_enum";
    let (server, mut client, mut session) = one_session(pool, 1, None).await;
    assert_eq!(
        column_type(&session.run("SELECT c FROM pipe_enum").await),
        "text"
    );
    // Changed outside poolplane: the session's plan is not set aside.
    admin
        .batch_execute("ALTER TABLE pipe_enum ALTER c TYPE pipe_mood USING c::pipe_mood")
        .await
        .expect("alter");
    // Sent with the text plan; the server describes an enum now.
    let changed = session.run("SELECT c FROM pipe_enum").await;
    assert!(
        sqlstate(&changed).is_some(),
        "an enum is not returned: {changed:?}"
    );
    session.close().await;
    // The next caller, on whatever connection, gets poolplane's own answer
    // for a type it does not return, not the driver's missing statement.
    let status = client
        .execute(crate::support::exec(pool, "SELECT 'x'::pipe_other", vec![]))
        .await
        .expect_err("an enum is not returned");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("cast it"), "{status:?}");
    admin
        .batch_execute("DROP TABLE pipe_enum; DROP TYPE pipe_mood; DROP TYPE pipe_other")
        .await
        .expect("clean up");
    server.stop().await;
}

/// Found by a red team: a catalog change made through the pool reached
/// every connection's plans but not those of sessions already open, which
/// went on casting values a fresh prepare refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_through_the_pool_reaches_open_sessions() {
    let admin = cluster().admin().await;
    admin
        .batch_execute("DROP TABLE IF EXISTS pipe_cast; CREATE TABLE pipe_cast (c numeric)")
        .await
        .expect("table");
    let pool = "pipe_cast";
    let (server, mut client, mut session) = one_session(pool, 2, None).await;
    let insert = "INSERT INTO pipe_cast VALUES ($1) RETURNING c::text";
    session.send(insert, vec![v::numeric("1.5")]).await;
    let first = session.answer().await.expect("first");
    assert_eq!(sqlstate(&first), None, "{first:?}");
    client
        .execute(crate::support::exec(
            pool,
            "ALTER TABLE pipe_cast ALTER c TYPE int USING c::int",
            vec![],
        ))
        .await
        .expect("alter through the pool");
    session.send(insert, vec![v::numeric("2.5")]).await;
    let refused = session.answer().await.expect("answered");
    assert!(
        sqlstate(&refused).is_some(),
        "a numeric for an int is refused: {refused:?}"
    );
    session.close().await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM pipe_cast", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);
    admin
        .batch_execute("DROP TABLE pipe_cast")
        .await
        .expect("clean up");
    server.stop().await;
}

/// Found by a red team: a session with statements still in flight showed
/// as idle in ListSessions once the first of them was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_statements_in_flight_is_listed_active() {
    let pool = "pipe_listed";
    let (server, _client, mut session) = one_session(pool, 1, None).await;
    let lock = "SELECT pg_advisory_lock($1::int8)::text";
    session.send(lock, vec![v::int(6161)]).await;
    session.answer().await.expect("lock once");
    session
        .send(
            "SELECT pg_advisory_unlock($1::int8)::text",
            vec![v::int(6161)],
        )
        .await;
    session.answer().await.expect("unlock");
    let admin = cluster().admin().await;
    admin
        .execute("SELECT pg_advisory_lock(6262)", &[])
        .await
        .expect("hold");
    // The first is answered at once; the second waits for the lock.
    session
        .send("SELECT pg_advisory_unlock($1::int8)::text", vec![v::int(1)])
        .await;
    session.send(lock, vec![v::int(6262)]).await;
    session.answer().await.expect("first answered");
    let listed = crate::sessions::list(&server, pool).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].state,
        poolplane::proto::SessionState::Active as i32,
        "{listed:?}"
    );
    admin
        .execute("SELECT pg_advisory_unlock(6262)", &[])
        .await
        .expect("release");
    session.answer().await.expect("second answered");
    session.close().await;
    server.stop().await;
}
