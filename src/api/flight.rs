//! Arrow Flight SQL (`--flight-addr`, default 127.0.0.1:4319): analysts' SQL from ADBC,
//! the Flight SQL JDBC driver and every other Flight SQL client, over the engine that
//! answers `POST …/sql`.
//!
//! Input: Flight SQL calls carrying a key (`authorization: Bearer K`, `Basic` with the key
//! as the password — the handshake answers it with `Bearer K` — or `x-api-key: K`).
//! Output: Arrow record batches streamed in `DoGet`; the catalog `spanlake` holds one
//! schema per workspace the key may read, each with its `spans` table and `traces` view.
//! Invariants: every call is authorized on its own (a statement handle carries SQL and
//! bound parameters, never rights, so handles need no server state and survive a
//! restart); only reads run — updates, ingest, transactions and Substrait are refused, and
//! SQL that is not a query is refused by the engine's sandbox; queries run in the engine's
//! memory pool and timeout; a client that stops reading cancels its query.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementSubstraitPlan, CommandStatementUpdate,
    DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable, SqlInfo,
    SqlSupportedTransaction, TicketStatementQuery, XdbcDataType,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use bytes::Bytes;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::access::Access;
use crate::auth::{Auth, AuthError};
use crate::error::ApiError;
use crate::query::{CATALOG, QueryEngine, QueryError, QueryStream};
use crate::receive::{API_KEY_HEADER, AUTHORIZATION_HEADER};

/// Bytes of one Flight message the service accepts.
const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Bytes of one row of bound parameters (they travel in the statement's handle, which a
/// `FlightInfo` carries twice).
const MAX_PARAMETER_BYTES: usize = 256 << 10;
/// Messages of a parameter upload.
const MAX_PARAMETER_MESSAGES: usize = 16;

/// The Flight SQL service.
pub struct FlightSql {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

impl FlightSql {
    /// A service answering from `engine`, with the keys of `auth`.
    pub fn new(engine: Arc<QueryEngine>, auth: Arc<Auth>) -> Self {
        Self { engine, auth }
    }

    /// The gRPC service to serve.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The workspaces the call's key may read (every workspace when access is open), or
    /// why it may read none.
    fn readable(&self, metadata: &MetadataMap) -> Result<Access, Status> {
        let credential = credential(metadata);
        Access::of(&self.auth, &self.engine, credential.as_deref()).map_err(denied)
    }

    /// A session over the workspaces of `access` (unqualified names resolve in its home).
    async fn session(
        &self,
        access: &Access,
    ) -> Result<datafusion::prelude::SessionContext, Status> {
        access
            .session(&self.engine, &[])
            .await
            .map_err(query_status)
    }

    /// The answer's schema as Flight sends it, planning the statement in the caller's
    /// workspaces: a statement that cannot run fails here.
    async fn describe(&self, access: &Access, statement: &Statement) -> Result<Schema, Status> {
        let ctx = self.session(access).await?;
        let params = statement.params()?;
        let schema = self
            .engine
            .describe(ctx, statement.sql.clone(), params, access.checked())
            .await
            .map_err(query_status)?;
        Ok(as_sent(schema))
    }

    /// Runs `statement` and streams its answer.
    async fn run(&self, metadata: &MetadataMap, handle: &[u8]) -> Result<DoGetStream, Status> {
        let access = self.readable(metadata)?;
        let statement = Statement::decode(handle)?;
        let ctx = self.session(&access).await?;
        let params = statement.params()?;
        let answer = self
            .engine
            .stream_with(ctx, statement.sql, params, access.checked())
            .await
            .map_err(query_status)?;
        Ok(stream_answer(answer))
    }

    /// A `FlightInfo` whose one endpoint runs `statement` in `DoGet`.
    async fn statement_info(
        &self,
        metadata: &MetadataMap,
        statement: Statement,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let access = self.readable(metadata)?;
        let schema = self.describe(&access, &statement).await?;
        let ticket = TicketStatementQuery {
            statement_handle: statement.encode(),
        };
        info(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    /// The tables of every workspace the call may read, as `GetTables` lists them.
    async fn tables(
        &self,
        query: CommandGetTables,
        metadata: &MetadataMap,
    ) -> Result<RecordBatch, Status> {
        let access = self.readable(metadata)?;
        let ctx = self.session(&access).await?;
        let mut builder = query.into_builder();
        for ws in &access.workspaces {
            for (table, kind) in [("spans", "TABLE"), ("traces", "VIEW")] {
                let reference =
                    datafusion::common::TableReference::full(CATALOG, ws.as_str(), table);
                let provider = ctx
                    .table_provider(reference)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                builder
                    .append(
                        CATALOG,
                        ws.as_str(),
                        table,
                        kind,
                        &as_sent(provider.schema()),
                    )
                    .map_err(Status::from)?;
            }
        }
        builder.build().map_err(Status::from)
    }
}

/// The key a call carries: `authorization: Bearer K`, `authorization: Basic` with the key
/// as the password (ADBC and JDBC send user and password so), else `x-api-key: K`.
fn credential(metadata: &MetadataMap) -> Option<Vec<u8>> {
    let header = |name: &str| metadata.get(name).map(|v| v.as_bytes());
    let authorization = header(AUTHORIZATION_HEADER);
    if let Some(basic) = authorization.and_then(|v| {
        let (scheme, rest) = v.split_at_checked(6)?;
        scheme.eq_ignore_ascii_case(b"basic ").then_some(rest)
    }) {
        // Go clients send base64 without padding.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine.decode(basic.trim_ascii()).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let password = decoded[colon + 1..].to_vec();
        return (!password.is_empty()).then_some(password);
    }
    crate::auth::credential(authorization, header(API_KEY_HEADER)).map(<[u8]>::to_vec)
}

fn denied(e: AuthError) -> Status {
    ApiError::from(e).to_grpc_status()
}

fn query_status(e: QueryError) -> Status {
    ApiError::from(e).to_grpc_status()
}

/// A statement handle: the SQL and, once bound, its one row of parameters as an Arrow IPC
/// stream. `S1`, the SQL's length (u32, little-endian), the SQL, then the parameters.
struct Statement {
    sql: String,
    params: Option<Bytes>,
}

impl Statement {
    const MAGIC: &'static [u8; 2] = b"S1";

    fn encode(&self) -> Bytes {
        let params = self.params.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(6 + self.sql.len() + params.len());
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&(self.sql.len() as u32).to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        out.extend_from_slice(params);
        out.into()
    }

    fn decode(handle: &[u8]) -> Result<Self, Status> {
        let bad = || Status::invalid_argument("not a statement handle of this server");
        let rest = handle.strip_prefix(Self::MAGIC).ok_or_else(bad)?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let (sql, params) = rest
            .split_at_checked(u32::from_le_bytes(*len) as usize)
            .ok_or_else(bad)?;
        Ok(Self {
            sql: String::from_utf8(sql.to_vec()).map_err(|_| bad())?,
            params: (!params.is_empty()).then(|| Bytes::copy_from_slice(params)),
        })
    }

    /// The bound parameters, `$1` first.
    fn params(&self) -> Result<Vec<ScalarValue>, Status> {
        let Some(bytes) = &self.params else {
            return Ok(Vec::new());
        };
        let bad = |e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("the statement handle's parameters: {e}"))
        };
        let mut reader = StreamReader::try_new(&bytes[..], None).map_err(|e| bad(&e))?;
        let batch = reader
            .next()
            .transpose()
            .map_err(|e| bad(&e))?
            .ok_or_else(|| bad(&"no row"))?;
        batch
            .columns()
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0).map_err(|e| bad(&e)))
            .collect()
    }
}

/// One row of parameters as the bytes a handle carries.
fn params_bytes(batch: &RecordBatch) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    writer
        .write(batch)
        .and_then(|()| writer.finish())
        .map_err(|e| Status::internal(e.to_string()))?;
    drop(writer);
    Ok(out.into())
}

/// `schema` as Flight's encoder sends answers of it (dictionaries hydrated, large lists as
/// lists): a client compares the announced schema with the streamed one.
fn as_sent(schema: SchemaRef) -> Schema {
    let encoder = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(futures::stream::empty::<Result<RecordBatch, FlightError>>());
    encoder
        .known_schema()
        .map_or_else(|| schema.as_ref().clone(), |s| s.as_ref().clone())
}

/// A `FlightInfo` with one endpoint whose ticket is `ticket`.
fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// A metadata command's `FlightInfo`: the command itself is the ticket.
fn command_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    info(schema, command.as_any().encode_to_vec(), descriptor)
}

/// One batch as a `DoGet` answer.
fn stream_batch(
    schema: SchemaRef,
    batch: Result<RecordBatch, Status>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch?;
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

/// A query's answer as a `DoGet` stream; dropping it cancels the query.
fn stream_answer(answer: QueryStream) -> DoGetStream {
    let schema = answer.schema.clone();
    let batches = futures::stream::unfold(answer, |mut answer| async move {
        let item = answer.next().await?;
        Some((
            item.map_err(|e| FlightError::Tonic(Box::new(query_status(e)))),
            answer,
        ))
    });
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

fn read_only(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not supported: spanlake's Flight SQL is read-only (queries only); \
         spans are written over OTLP"
    ))
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "spanlake");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().expect("the static SQL info is well-formed")
});

static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types = [
        ("BOOLEAN", XdbcDataType::XdbcBit, None),
        ("INT", XdbcDataType::XdbcInteger, Some(32)),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(64)),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53)),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None),
        ("VARBINARY", XdbcDataType::XdbcVarbinary, None),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, None),
    ];
    for (name, data_type, size) in types {
        let text = matches!(data_type, XdbcDataType::XdbcVarchar);
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: size,
            literal_prefix: text.then(|| "'".into()),
            literal_suffix: text.then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: text,
            searchable: Searchable::Full,
            unsigned_attribute: size.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: None,
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: size.map(|_| 2),
            interval_precision: None,
        });
    }
    b.build().expect("the static type info is well-formed")
});

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        self.readable(request.metadata())?;
        // The key is the bearer token: the client proved it holds it, and a token that is
        // the key survives a restart of the server.
        let key = credential(request.metadata());
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::new(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if let Some(key) = key {
            let bearer = format!("Bearer {}", String::from_utf8_lossy(&key));
            let value = tonic::metadata::MetadataValue::try_from(bearer)
                .map_err(|_| Status::unauthenticated("the key is not a valid header value"))?;
            response.metadata_mut().insert(AUTHORIZATION_HEADER, value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement = Statement {
            sql: query.query,
            params: None,
        };
        let (metadata, _, descriptor) = request.into_parts();
        self.statement_info(&metadata, statement, descriptor).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement = Statement::decode(&query.prepared_statement_handle)?;
        let (metadata, _, descriptor) = request.into_parts();
        self.statement_info(&metadata, statement, descriptor).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let stream = self
            .run(request.metadata(), &ticket.statement_handle)
            .await?;
        Ok(Response::new(stream))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let stream = self
            .run(request.metadata(), &query.prepared_statement_handle)
            .await?;
        Ok(Response::new(stream))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let access = self.readable(request.metadata())?;
        let statement = Statement {
            sql: query.query,
            params: None,
        };
        let ctx = self.session(&access).await?;
        let (schema, parameters) = self
            .engine
            .prepare(ctx, statement.sql.clone(), access.checked())
            .await
            .map_err(query_status)?;
        // A parameter whose type the SQL does not tell is announced as text.
        let parameters = Schema::new(
            parameters
                .into_iter()
                .enumerate()
                .map(|(i, t)| Field::new(i.to_string(), t.unwrap_or(DataType::Utf8), true))
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: statement.encode(),
            dataset_schema: schema_bytes(&as_sent(schema))?,
            parameter_schema: schema_bytes(&as_sent(Arc::new(parameters)))?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.readable(request.metadata())?;
        let mut statement = Statement::decode(&query.prepared_statement_handle)?;
        let mut batches = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let read = async {
            let (mut row, mut messages) = (None, 0);
            while let Some(batch) = batches.next().await {
                let batch = batch.map_err(Status::from)?;
                messages += 1;
                match (batch.num_rows(), &row) {
                    (0, _) if messages <= MAX_PARAMETER_MESSAGES => {}
                    (1, None) => row = Some(batch),
                    _ => {
                        return Err(Status::invalid_argument(
                            "bind one row of parameters: a query runs once, for one row",
                        ));
                    }
                }
            }
            Ok(row)
        };
        let timeout = self.engine.limits().timeout;
        let row = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| Status::deadline_exceeded("binding parameters took too long"))??;
        // New parameters replace the ones the handle carried.
        statement.params = row.as_ref().map(params_bytes).transpose()?;
        if statement
            .params
            .as_ref()
            .is_some_and(|p| p.len() > MAX_PARAMETER_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "the parameters take more than {MAX_PARAMETER_BYTES} bytes; a statement's \
                 values travel in its handle"
            )));
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(statement.encode()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold no server state: closing one is always done.
        self.readable(request.metadata())?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.into_builder().schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.readable(request.metadata())?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        stream_batch(schema, builder.build().map_err(Status::from))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let access = self.readable(request.metadata())?;
        let mut builder = query.into_builder();
        for ws in &access.workspaces {
            builder.append(CATALOG, ws.as_str());
        }
        let schema = builder.schema();
        stream_batch(schema, builder.build().map_err(Status::from))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let schema = query.clone().into_builder().schema();
        let batch = self.tables(query, request.metadata()).await;
        stream_batch(schema, batch)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.into_builder().schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.readable(request.metadata())?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        let schema = builder.schema();
        stream_batch(schema, builder.build().map_err(Status::from))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.readable(request.metadata())?;
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        stream_batch(schema, builder.build().map_err(Status::from))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.readable(request.metadata())?;
        let schema = query.into_builder(&XDBC_TYPES).schema();
        command_info(&query, &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.readable(request.metadata())?;
        let builder = query.into_builder(&XDBC_TYPES);
        let schema = builder.schema();
        stream_batch(schema, builder.build().map_err(Status::from))
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update statement"))
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("bulk ingestion"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update statement"))
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("a Substrait plan"))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(read_only("a transaction"))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
