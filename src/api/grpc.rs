//! The gRPC query service (`spanlake.query.v1.QueryService`): the HTTP routes' semantics
//! over gRPC, sharing their code.

use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::render::to_arrow_ipc;
use super::{authorize_read, trace_with_spans, traces_page};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::proto::query::query_service_server::QueryService;
use crate::proto::query::{ArrowIpc, GetTraceRequest, JsonDocument, ListTracesRequest, SqlRequest};
use crate::query::QueryEngine;
use crate::receive::{API_KEY_HEADER, AUTHORIZATION_HEADER};
use crate::workspace::Workspace;

/// The query service.
pub struct QueryGrpc {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
}

impl QueryGrpc {
    /// A service answering from `engine`.
    pub fn new(engine: Arc<QueryEngine>, auth: Arc<Auth>) -> Self {
        Self { engine, auth }
    }

    fn access<T>(&self, request: &Request<T>, workspace: &str) -> Result<Workspace, Status> {
        let meta = |name: &str| request.metadata().get(name).map(|v| v.as_bytes());
        authorize_read(
            &self.auth,
            meta(AUTHORIZATION_HEADER),
            meta(API_KEY_HEADER),
            workspace,
        )
        .map_err(|e| e.to_grpc_status())
    }
}

type SqlStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ArrowIpc, Status>> + Send>>;

#[tonic::async_trait]
impl QueryService for QueryGrpc {
    async fn list_traces(
        &self,
        request: Request<ListTracesRequest>,
    ) -> Result<Response<JsonDocument>, Status> {
        let ws = self.access(&request, &request.get_ref().workspace)?;
        let r = request.into_inner();
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            let page = r.page.map(|p| p.to_string());
            let size = r.page_size.map(|p| p.to_string());
            for (key, value) in [
                ("page", &page),
                ("page_size", &size),
                ("sort", &r.sort),
                ("mode", &r.mode),
                ("filter", &r.filter),
            ] {
                if let Some(v) = value {
                    query.append_pair(key, v);
                }
            }
            query.finish()
        };
        let page = traces_page(&self.engine, &ws, &query)
            .await
            .map_err(|e| e.to_grpc_status())?;
        Ok(Response::new(JsonDocument {
            json: page.to_string(),
        }))
    }

    async fn get_trace(
        &self,
        request: Request<GetTraceRequest>,
    ) -> Result<Response<JsonDocument>, Status> {
        let ws = self.access(&request, &request.get_ref().workspace)?;
        let r = request.into_inner();
        let trace = trace_with_spans(&self.engine, &ws, &r.trace_id)
            .await
            .map_err(|e| e.to_grpc_status())?;
        Ok(Response::new(JsonDocument {
            json: trace.to_string(),
        }))
    }

    type SqlStream = SqlStream;

    async fn sql(&self, request: Request<SqlRequest>) -> Result<Response<SqlStream>, Status> {
        let ws = self.access(&request, &request.get_ref().workspace)?;
        let r = request.into_inner();
        let answer = self
            .engine
            .sql_stream(&ws, &r.query)
            .await
            .map_err(|e| ApiError::from(e).to_grpc_status())?;
        // Each batch goes out as its own IPC stream as the client reads; an empty answer
        // is one message with the schema. Dropping the stream cancels the query.
        let schema = answer.schema.clone();
        let stream = futures::stream::unfold((Some(answer), false), move |(answer, sent)| {
            let schema = schema.clone();
            async move {
                let mut answer = answer?;
                let message = match answer.next().await {
                    Some(Ok(batch)) => to_arrow_ipc(&schema, std::slice::from_ref(&batch)),
                    Some(Err(e)) => Err(ApiError::from(e)),
                    None if !sent => to_arrow_ipc(&schema, &[]),
                    None => return None,
                };
                let next = message.is_ok().then_some(answer);
                let item = message
                    .map(|data| ArrowIpc { data })
                    .map_err(|e| e.to_grpc_status());
                Some((item, (next, true)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
