//! `poolplane.v1.Query`: translation only; `crate::query` runs the SQL.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::convert::{result_to_proto, stream_part_to_proto, values_from_proto};
use super::deadline;
use super::status::{invalid_argument, pool_status, query_status};
use crate::app::App;
use crate::auth::Right;
use crate::pool::ManagedPool;
use crate::proto::{self, query_server::Query};
use crate::query::{self as q, Statement, StreamStatement};

pub(crate) struct QueryService {
    app: Arc<App>,
}

impl QueryService {
    pub(crate) fn new(app: Arc<App>) -> QueryService {
        QueryService { app }
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

type PartStream = Pin<Box<dyn Stream<Item = Result<proto::ExecuteStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Query for QueryService {
    type ExecuteStreamStream = PartStream;

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
        let result = q::execute_batch(&pool, r.sql, parameter_sets, deadline)
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
        };
        let (parts, received) = tokio::sync::mpsc::channel(q::STREAM_BUFFER);
        // The statement runs on its own; dropping the response (the caller
        // went away) closes the channel, which stops and cancels it.
        tokio::spawn(async move { q::execute_stream(&pool, statement, deadline, parts).await });
        let responses = ReceiverStream::new(received)
            .map(|part| part.map(stream_part_to_proto).map_err(query_status));
        Ok(Response::new(Box::pin(responses)))
    }
}
