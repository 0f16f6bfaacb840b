//! `poolplane.v1.Query`: translation only; `crate::query` runs the SQL.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use std::time::Duration;

use tokio::sync::watch;
use tonic::Streaming;
use tracing::Instrument;

use super::auth::{authorize, authorize_identity, identity};
use super::convert::{
    result_to_proto, session_options_from_proto, session_output_to_proto, stream_part_to_proto,
    values_from_proto,
};
use super::deadline;
use super::status::{invalid_argument, pool_status, query_status};
use super::tls::ConnInfo;
use crate::app::App;
use crate::auth::Right;
use crate::pool::ManagedPool;
use crate::proto::{self, query_server::Query};
use crate::query::{self as q, Holder, SessionContext, SessionInput, Statement, StreamStatement};

pub(crate) struct QueryService {
    app: Arc<App>,
    /// Becomes true when the server shuts down: sessions end.
    stopping: watch::Receiver<bool>,
}

/// How long a new Session stream may take to send its `open`.
const OPEN_WAIT: Duration = Duration::from_secs(30);

impl QueryService {
    pub(crate) fn new(app: Arc<App>, stopping: watch::Receiver<bool>) -> QueryService {
        QueryService { app, stopping }
    }

    fn pool(&self, name: &str) -> Result<Arc<ManagedPool>, Status> {
        if name.is_empty() {
            return Err(invalid_argument("pool", "must not be empty"));
        }
        self.app.registry().get(name).map_err(pool_status)
    }

    /// The row limit for a request: the server maximum unless the caller asks for fewer.
    fn row_limit(&self, requested: u32) -> Result<u32, Status> {
        let max = self.app.server().max_result_rows;
        match requested {
            0 => Ok(max),
            n if n <= max => Ok(n),
            n => Err(invalid_argument(
                "max_rows",
                &format!("{n} is above the server's limit of {max} (server.max_result_rows)"),
            )),
        }
    }
}

/// Requests of a Session read ahead of the statement it runs, at most.
/// Reading them off the connection keeps HTTP/2's guard against floods of
/// small frames quiet for a client pipelining thousands of statements;
/// the budget bounds what a session holds that way.
const READ_AHEAD_REQUESTS: usize = 16_384;
const READ_AHEAD_BYTES: u32 = 16 * 1024 * 1024;

/// Reads `incoming` in a task of its own, up to the read-ahead limits, and
/// yields each request as `convert` makes it. The stream ends when the
/// client ends its side; an error is the last item.
fn read_ahead(
    mut incoming: Streaming<proto::SessionRequest>,
    convert: impl Fn(Result<proto::SessionRequest, Status>) -> SessionInput + Send + 'static,
) -> impl Stream<Item = SessionInput> + Send + Unpin {
    use prost::Message;
    let (queued, taken) = tokio::sync::mpsc::channel(READ_AHEAD_REQUESTS);
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES as usize));
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = incoming.message() => next,
                () = queued.closed() => return,
            };
            let (request, size) = match next {
                Ok(Some(request)) => {
                    let size = u32::try_from(request.encoded_len()).unwrap_or(u32::MAX);
                    (Ok(request), size.clamp(1, READ_AHEAD_BYTES))
                }
                Ok(None) => return,
                Err(status) => (Err(status), 1),
            };
            let failed = request.is_err();
            let room = tokio::select! {
                room = Arc::clone(&budget).acquire_many_owned(size) => room,
                () = queued.closed() => return,
            };
            let Ok(room) = room else { return };
            if queued.send((convert(request), room)).await.is_err() || failed {
                return;
            }
        }
    });
    // The room a request took is given back as the session takes it.
    ReceiverStream::new(taken).map(|(input, _room)| input)
}

type PartStream = Pin<Box<dyn Stream<Item = Result<proto::ExecuteStreamResponse, Status>> + Send>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<proto::SessionResponse, Status>> + Send>>;

impl QueryService {
    fn statement(&self, statement: proto::SessionStatement) -> Result<Statement, Status> {
        Ok(Statement {
            sql: statement.sql,
            params: values_from_proto("statement.params", statement.params)?,
            max_rows: self.row_limit(statement.max_rows)?,
            max_bytes: self.app.server().max_result_bytes,
            allow_truncation: statement.allow_truncation,
            trace_text: self.app.server().trace_sql_text,
        })
    }

    /// One request after `open`, in domain terms.
    fn session_input(&self, request: Result<proto::SessionRequest, Status>) -> SessionInput {
        use proto::session_request::Request as R;
        let invalid = |message: &str| {
            SessionInput::Invalid(q::QueryError::invalid("request", message.to_string()))
        };
        match request {
            Err(status) => SessionInput::Broken(q::QueryError::invalid(
                "request",
                format!("the request stream failed: {}", status.message()),
            )),
            Ok(proto::SessionRequest { request: None }) => {
                invalid("empty: send statement or close")
            }
            Ok(proto::SessionRequest {
                request: Some(R::Open(_)),
            }) => invalid("the session is already open"),
            Ok(proto::SessionRequest {
                request: Some(R::Close(_)),
            }) => SessionInput::Close,
            Ok(proto::SessionRequest {
                request: Some(R::Statement(statement)),
            }) => match self.statement(statement) {
                Ok(statement) => SessionInput::Statement(statement),
                Err(status) => SessionInput::Invalid(q::QueryError::invalid(
                    "statement",
                    status.message().to_string(),
                )),
            },
        }
    }
}

#[tonic::async_trait]
impl Query for QueryService {
    type ExecuteStreamStream = PartStream;
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<SessionStream>, Status> {
        let identity = identity(&request)?.clone();
        let deadline = deadline::from_metadata(request.metadata());
        let peer = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|info| info.peer)
            .map(|peer| peer.to_string())
            .unwrap_or_default();
        let mut incoming = request.into_inner();
        let first = tokio::time::timeout(OPEN_WAIT, incoming.message())
            .await
            .map_err(|_| invalid_argument("open", "no open request within 30 s"))??;
        let open = match first.and_then(|first| first.request) {
            Some(proto::session_request::Request::Open(open)) => open,
            _ => return Err(invalid_argument("open", "the first request must be open")),
        };
        authorize_identity(&identity, Right::Query, &open.pool)?;
        let pool = self.pool(&open.pool)?;
        let options = session_options_from_proto(&open)?;
        let (out, answers) = tokio::sync::mpsc::channel(q::SESSION_BUFFER);
        let context = SessionContext {
            deadline,
            holder: Holder {
                caller: identity.name,
                peer,
            },
            sessions: Arc::clone(self.app.sessions()),
            server_stopping: self.stopping.clone(),
        };
        let service = QueryService::new(Arc::clone(&self.app), self.stopping.clone());
        let inputs = read_ahead(incoming, move |request| service.session_input(request));
        // The session runs on its own; dropping the response (the caller
        // went away) closes the channel, which ends it.
        tokio::spawn(
            q::run_session(pool, options, Box::pin(inputs), out, context).in_current_span(),
        );
        let responses = ReceiverStream::new(answers)
            .map(|answer| answer.map(session_output_to_proto).map_err(query_status));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn execute(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
        authorize(&request, Right::Query, &request.get_ref().pool)?;
        let deadline = deadline::from_metadata(request.metadata());
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        let statement = Statement {
            sql: r.sql,
            params: values_from_proto("params", r.params)?,
            max_rows: self.row_limit(r.max_rows)?,
            max_bytes: self.app.server().max_result_bytes,
            allow_truncation: r.allow_truncation,
            trace_text: self.app.server().trace_sql_text,
        };
        let result = q::execute(&pool, statement, deadline)
            .await
            .map_err(query_status)?;
        Ok(Response::new(result_to_proto(result)))
    }

    async fn execute_batch(
        &self,
        request: Request<proto::ExecuteBatchRequest>,
    ) -> Result<Response<proto::ExecuteBatchResponse>, Status> {
        authorize(&request, Right::Query, &request.get_ref().pool)?;
        let deadline = deadline::from_metadata(request.metadata());
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        let parameter_sets = r
            .parameter_sets
            .into_iter()
            .enumerate()
            .map(|(i, set)| values_from_proto(&format!("parameter_sets[{i}].params"), set.params))
            .collect::<Result<Vec<_>, _>>()?;
        let trace_text = self.app.server().trace_sql_text;
        let result = q::execute_batch(&pool, r.sql, parameter_sets, deadline, trace_text)
            .await
            .map_err(query_status)?;
        let total_rows_affected = result.rows_affected.iter().sum();
        Ok(Response::new(proto::ExecuteBatchResponse {
            rows_affected: result.rows_affected,
            total_rows_affected,
        }))
    }

    async fn execute_stream(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<PartStream>, Status> {
        authorize(&request, Right::Query, &request.get_ref().pool)?;
        let deadline = deadline::from_metadata(request.metadata());
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        let statement = StreamStatement {
            sql: r.sql,
            params: values_from_proto("params", r.params)?,
            max_rows: (r.max_rows != 0).then_some(r.max_rows),
            max_row_bytes: self.app.server().max_result_bytes,
            allow_truncation: r.allow_truncation,
            trace_text: self.app.server().trace_sql_text,
        };
        let (parts, received) = tokio::sync::mpsc::channel(q::STREAM_BUFFER);
        // The statement runs on its own; dropping the response (the caller
        // went away) closes the channel, which stops and cancels it.
        tokio::spawn(
            async move { q::execute_stream(&pool, statement, deadline, parts).await }
                .in_current_span(),
        );
        let responses = ReceiverStream::new(received)
            .map(|part| part.map(stream_part_to_proto).map_err(query_status));
        Ok(Response::new(Box::pin(responses)))
    }
}
