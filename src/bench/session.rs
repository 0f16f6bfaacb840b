//! Session-mode clients of `poolplane bench`: each holds a `Query/Session`
//! stream and runs its calls on it — transactions of `--statements` (BEGIN,
//! N statements, COMMIT), or up to `--pipeline` statements in flight
//! without waiting for each answer. With `--dirty-every` a session lasts one
//! transaction (or one window of statements), so connections change hands,
//! and every Nth session leaves session state behind and goes away without
//! cleaning up (half of them by ending the request stream, half by
//! cancelling the call) while the other sessions' statements check for it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::load::{code_name, is_leak, Shared, Tally, Ticket};
use super::options::DIRTY_SESSION_SQL;
use crate::proto::{
    self, query_client::QueryClient, session_request::Request as Req,
    session_response::Response as Resp, statement_result::Outcome,
};

/// A session ended under the client (its calls in flight are counted as failed).
struct Broken;

/// What sent a statement, to match its answer (answers come in order).
enum Sent {
    Call {
        ticket: Ticket,
        started: Instant,
        check: bool,
    },
    /// BEGIN, COMMIT, a dirty session's statements: not calls.
    Other,
}

/// How a session's run of calls ended.
enum Ended {
    /// No calls left in the schedule.
    Finished,
    /// One transaction (or window) done; the session ends (`--dirty-every`).
    UnitDone,
}

struct Session {
    requests: mpsc::Sender<proto::SessionRequest>,
    responses: Streaming<proto::SessionResponse>,
    inflight: VecDeque<Sent>,
    depth: usize,
}

fn statement(sql: &str) -> proto::SessionRequest {
    proto::SessionRequest {
        request: Some(Req::Statement(proto::SessionStatement {
            sql: sql.into(),
            ..Default::default()
        })),
    }
}

impl Session {
    /// Sends `open` and waits for `opened` (a connection is then held).
    async fn open(shared: &Shared, client: &mut QueryClient<Channel>) -> Result<Session, Status> {
        let depth = usize::try_from(shared.options.depth).unwrap_or(usize::MAX);
        // Room for a full window, the transaction's ends and `close`:
        // sending never waits on the channel.
        let (requests, queued) = mpsc::channel(depth.saturating_add(8).min(65_536));
        let open = proto::SessionRequest {
            request: Some(Req::Open(proto::SessionOpen {
                pool: shared.options.pool.clone(),
                ..Default::default()
            })),
        };
        requests
            .send(open)
            .await
            .map_err(|_| Status::internal("the request stream closed before open"))?;
        let mut responses = client
            .session(shared.request(ReceiverStream::new(queued)))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(proto::SessionResponse {
                response: Some(Resp::Opened(_)),
            }) => Ok(Session {
                requests,
                responses,
                inflight: VecDeque::new(),
                depth: depth.max(1),
            }),
            other => Err(Status::unknown(format!(
                "the session answered {other:?} to open"
            ))),
        }
    }

    /// Counts what was in flight as failed with `code`; the session is over.
    fn fail_all(&mut self, shared: &Shared, tally: &mut Tally, code: Code) -> Broken {
        let mut calls = 0;
        for sent in self.inflight.drain(..) {
            if let Sent::Call { ticket, .. } = sent {
                tally.failed(shared, ticket, code);
                calls += 1;
            }
        }
        if calls == 0 {
            *tally.other_errors.entry(code_name(code)).or_default() += 1;
        }
        Broken
    }

    fn handle(
        &mut self,
        message: Result<Option<proto::SessionResponse>, Status>,
        shared: &Shared,
        tally: &mut Tally,
    ) -> Result<(), Broken> {
        let result = match message {
            Ok(Some(proto::SessionResponse {
                response: Some(Resp::Result(result)),
            })) => result,
            // `opened` or `closed` mid-session, or an empty answer.
            Ok(Some(_)) => return Err(self.fail_all(shared, tally, Code::Internal)),
            Ok(None) => return Err(self.fail_all(shared, tally, Code::Unknown)),
            Err(status) => return Err(self.fail_all(shared, tally, status.code())),
        };
        match self.inflight.pop_front() {
            Some(Sent::Call {
                ticket,
                started,
                check,
            }) => match result.outcome {
                Some(Outcome::Result(answer)) => {
                    tally.answered(shared, ticket, started, check && is_leak(&answer))
                }
                Some(Outcome::Error(error)) => {
                    tally.failed(shared, ticket, Code::from_i32(error.code))
                }
                None => tally.failed(shared, ticket, Code::Unknown),
            },
            Some(Sent::Other) => {
                if let Some(Outcome::Error(error)) = result.outcome {
                    let code = code_name(Code::from_i32(error.code));
                    *tally.other_errors.entry(code).or_default() += 1;
                }
            }
            // An answer to nothing asked.
            None => return Err(self.fail_all(shared, tally, Code::Internal)),
        }
        Ok(())
    }

    async fn answer(&mut self, shared: &Shared, tally: &mut Tally) -> Result<(), Broken> {
        let message = self.responses.message().await;
        self.handle(message, shared, tally)
    }

    /// Waits for answers until fewer than the window are in flight.
    async fn room(&mut self, shared: &Shared, tally: &mut Tally) -> Result<(), Broken> {
        while self.inflight.len() >= self.depth {
            self.answer(shared, tally).await?;
        }
        Ok(())
    }

    /// Waits for every answer.
    async fn drain(&mut self, shared: &Shared, tally: &mut Tally) -> Result<(), Broken> {
        while !self.inflight.is_empty() {
            self.answer(shared, tally).await?;
        }
        Ok(())
    }

    /// Open loop: waits until `due`, taking answers meanwhile (so their
    /// latency is not stretched by the wait).
    async fn wait_until(
        &mut self,
        due: Instant,
        shared: &Shared,
        tally: &mut Tally,
    ) -> Result<(), Broken> {
        loop {
            if Instant::now() >= due {
                return Ok(());
            }
            if self.inflight.is_empty() {
                tokio::time::sleep_until(due).await;
                return Ok(());
            }
            // `message()` is cancel-safe: an answer is never lost to the timer.
            let message = tokio::select! {
                () = tokio::time::sleep_until(due) => return Ok(()),
                message = self.responses.message() => message,
            };
            self.handle(message, shared, tally)?;
        }
    }

    async fn send(
        &mut self,
        request: proto::SessionRequest,
        sent: Sent,
        shared: &Shared,
        tally: &mut Tally,
    ) -> Result<(), Broken> {
        self.room(shared, tally).await?;
        self.inflight.push_back(sent);
        if self.requests.send(request).await.is_err() {
            // The call is over: its answers, then its status, say how.
            self.drain(shared, tally).await?;
            return Err(self.fail_all(shared, tally, Code::Unknown));
        }
        Ok(())
    }

    /// Runs calls until the schedule ends, or (`one_unit`) after one
    /// transaction or window.
    async fn run(
        &mut self,
        shared: &Shared,
        tally: &mut Tally,
        first: Ticket,
        one_unit: bool,
    ) -> Result<Ended, Broken> {
        let options = &shared.options;
        let unit = match options.transaction {
            Some(n) => u64::from(n),
            None if one_unit => u64::from(options.depth),
            None => u64::MAX,
        };
        let mut next = Some(first);
        loop {
            let mut begun = false;
            let mut sent = 0;
            while sent < unit {
                let Some(ticket) = next.take().or_else(|| shared.schedule.take()) else {
                    if begun {
                        self.send(statement("COMMIT"), Sent::Other, shared, tally)
                            .await?;
                    }
                    return Ok(Ended::Finished);
                };
                if let Some(due) = ticket.due {
                    self.wait_until(due, shared, tally).await?;
                }
                if options.transaction.is_some() && !begun {
                    self.send(statement("BEGIN"), Sent::Other, shared, tally)
                        .await?;
                    begun = true;
                }
                self.room(shared, tally).await?;
                let request = proto::SessionRequest {
                    request: Some(Req::Statement(shared.statement())),
                };
                let call = Sent::Call {
                    ticket,
                    started: ticket.due.unwrap_or_else(Instant::now),
                    check: shared.checking(),
                };
                self.send(request, call, shared, tally).await?;
                sent += 1;
            }
            if begun {
                self.send(statement("COMMIT"), Sent::Other, shared, tally)
                    .await?;
            }
            if one_unit {
                return Ok(Ended::UnitDone);
            }
        }
    }

    /// Ends the session properly: every answer, `close`, `closed`.
    async fn close(mut self, shared: &Shared, tally: &mut Tally) {
        if self.drain(shared, tally).await.is_err() {
            return;
        }
        let close = proto::SessionRequest {
            request: Some(Req::Close(proto::SessionClose {})),
        };
        if self.requests.send(close).await.is_err() {
            return;
        }
        // Read to the end (the trailers), so the call finishes cleanly.
        while let Ok(Some(_)) = self.responses.message().await {}
    }

    /// Leaves session state behind (a setting, a temporary table, an
    /// advisory lock) and goes away without `close`: by ending the request
    /// stream, or (`cancel`) by dropping the call.
    async fn end_dirty(mut self, shared: &Shared, tally: &mut Tally, cancel: bool) {
        for sql in DIRTY_SESSION_SQL {
            if self
                .send(statement(sql), Sent::Other, shared, tally)
                .await
                .is_err()
            {
                return;
            }
        }
        if self.drain(shared, tally).await.is_err() || cancel {
            return;
        }
        let Session {
            requests,
            mut responses,
            ..
        } = self;
        drop(requests);
        while let Ok(Some(_)) = responses.message().await {}
    }
}

/// Waits between refused session opens: doubling from the first to the last.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A session-mode client: sessions, one after another, until the schedule ends.
pub(crate) async fn session_client(shared: Arc<Shared>, channel: Channel) -> Tally {
    let mut tally = Tally::new();
    let mut client = QueryClient::new(channel);
    let one_unit = shared.checking();
    let mut pending: Option<Ticket> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        // A call held back by refusals is dropped once the time is up
        // (open loop: the report counts it behind schedule).
        let ticket = match pending.take() {
            Some(_) if shared.schedule.expired() => break,
            Some(ticket) => ticket,
            None => match shared.schedule.take() {
                Some(ticket) => ticket,
                None => break,
            },
        };
        let mut session = match Session::open(&shared, &mut client).await {
            Ok(session) => session,
            // Sessions of the pool hold all they may: try again later,
            // with the same call (open loop: its latency keeps counting),
            // backing off so refused clients do not load the server.
            Err(status)
                if status.code() == Code::ResourceExhausted && !shared.schedule.expired() =>
            {
                *tally
                    .open_refusals
                    .entry(code_name(status.code()))
                    .or_default() += 1;
                pending = Some(ticket);
                let jitter = fastrand::u64(0..=backoff.as_millis() as u64 / 2);
                let wake = Instant::now() + backoff + Duration::from_millis(jitter);
                tokio::time::sleep_until(shared.schedule.until().map_or(wake, |end| wake.min(end)))
                    .await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(status) => {
                tally.failed(&shared, ticket, status.code());
                continue;
            }
        };
        tally.sessions_opened += 1;
        backoff = MIN_BACKOFF;
        let number = shared.sessions.fetch_add(1, Ordering::Relaxed);
        match session.run(&shared, &mut tally, ticket, one_unit).await {
            Err(Broken) => continue,
            Ok(Ended::Finished) => {
                session.close(&shared, &mut tally).await;
                break;
            }
            Ok(Ended::UnitDone) if shared.dirty(number) => {
                let every = shared.options.dirty_every.unwrap_or(1);
                let cancel = (number / every) % 2 == 1;
                session.end_dirty(&shared, &mut tally, cancel).await;
            }
            Ok(Ended::UnitDone) => session.close(&shared, &mut tally).await,
        }
    }
    tally
}
