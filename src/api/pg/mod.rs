//! The PostgreSQL wire protocol (`--pg-addr`, default 127.0.0.1:5433): analysts' SQL from
//! `psql`, psycopg, Grafana, Metabase and every other PostgreSQL client, over the engine that
//! answers `POST …/sql`.
//!
//! Input: PostgreSQL connections (protocol 3.0, TLS when `--pg-tls-cert`/`--pg-tls-key`
//! are given), the password being an API key; simple and extended queries. Output: rows
//! in text or binary format ([`types`]); each workspace the key may read is a schema with
//! its `spans` table and `traces` view, unqualified names resolving in the workspace named
//! as database or user when the key may read it (else as on the other analyst routes).
//! Invariants: the key is checked at login and again for every statement; only reads run
//! (the engine's sandbox refuses anything else; `SET`, transactions and catalog queries are
//! answered without it, see [`chatter`]); queries run in the engine's memory pool and
//! timeout; a client that goes away, or cancels, ends its query while rows still stream.

mod chatter;
mod types;

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context as _;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::{Sink, StreamExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access::Access;
use crate::auth::{Auth, AuthError};
use crate::query::{CATALOG, QueryEngine, QueryError, QueryStream, placeholders};
use chatter::Native;

/// The PostgreSQL front end.
pub struct PgWire {
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
}

impl PgWire {
    /// A front end answering from `engine` with the keys of `auth`, over TLS when `tls`
    /// holds a certificate chain and key (PEM files).
    pub fn new(
        engine: Arc<QueryEngine>,
        auth: Arc<Auth>,
        tls: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let tls = tls.map(|(cert, key)| tls_acceptor(cert, key)).transpose()?;
        let cancels = Arc::new(Cancels::default());
        let queries = Arc::new(Queries {
            engine: engine.clone(),
            auth: auth.clone(),
        });
        let startup = Arc::new(Startup {
            driver: AuthDriver::new(server_parameters()),
            keys: CleartextPasswordAuth::new(Arc::new(Keys {
                auth: auth.clone(),
                engine,
            })),
            open: auth.is_open(),
            cancels: cancels.clone(),
        });
        Ok(Self {
            handlers: Arc::new(Handlers {
                queries,
                startup,
                cancels,
            }),
            tls,
        })
    }

    /// Serves connections from `listener` until `stop`; each connection is its own task.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let socket = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accepting a PostgreSQL connection failed.");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let (tls, handlers) = (self.tls.clone(), self.handlers.clone());
            tokio::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(error = %e, "A PostgreSQL connection ended with an error.");
                }
            });
        }
    }
}

/// A TLS acceptor with the certificate chain and private key of two PEM files.
fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificates of {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key of {}", key.display()))?;
    // The provider is named: the dependency tree enables two, and rustls will not choose.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not make a server configuration")?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What clients are told at login: a read-only PostgreSQL 16 in UTC.
fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.6 (spanlake)".into();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p.time_zone = "UTC".into();
    p
}

/// An error of SQLSTATE `code`.
fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// A query failure as PostgreSQL's error class for it.
fn query_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::NotAllowed(_) => "25006",
        QueryError::Sql(m) if m.contains("ParserError") => "42601",
        QueryError::Sql(m) if m.contains("not found") => "42P01",
        QueryError::Sql(m) if m.contains("No field named") => "42703",
        QueryError::Sql(_) => "42000",
        QueryError::Memory { .. } => "53200",
        QueryError::Timeout(_) => "57014",
        QueryError::Workspace(_) => "42501",
        QueryError::Starting => "57P03",
        QueryError::Internal(_) => "XX000",
    };
    error(code, e.to_string())
}

/// A failed login, worded as PostgreSQL words it (clients and people look for this text).
fn bad_password(user: Option<&str>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28P01".into(),
        format!(
            "password authentication failed for user \"{}\": the password must be an API key \
             with the read scope",
            user.unwrap_or_default()
        ),
    )))
}

fn canceled() -> PgWireError {
    error("57014", "canceling statement due to user request")
}

/// The handlers of every connection.
struct Handlers {
    queries: Arc<Queries>,
    startup: Arc<Startup>,
    cancels: Arc<Cancels>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancels.clone()
    }
}

/// A logged-in connection.
struct Connection {
    /// The key it logged in with (`None` with open access).
    key: Option<Vec<u8>>,
    /// The workspaces unqualified names should resolve in, if readable: the database
    /// name, then the user name.
    wanted: Vec<String>,
    /// Cancels the statement running now.
    current: Mutex<CancellationToken>,
}

impl Connection {
    /// [`Connection::wanted`] as names.
    fn wanted(&self) -> Vec<&str> {
        self.wanted.iter().map(String::as_str).collect()
    }

    /// A token for a new statement (a cancel request cancels the latest).
    fn start(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self
            .current
            .lock()
            .expect("the token lock is never poisoned") = token.clone();
        token
    }

    fn cancel(&self) {
        self.current
            .lock()
            .expect("the token lock is never poisoned")
            .cancel();
    }
}

fn connection<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Connection>> {
    client
        .session_extensions()
        .get::<Arc<Connection>>()
        .map(|c| c.as_ref().clone())
        .ok_or_else(|| error("28000", "the connection is not logged in"))
}

/// The key a client logged in with.
#[derive(Debug)]
struct Principal(Vec<u8>);

/// Checks passwords as API keys.
struct Keys {
    auth: Arc<Auth>,
    engine: Arc<QueryEngine>,
}

impl Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys")
    }
}

#[async_trait]
impl AuthSource<Principal> for Keys {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Keys are verified, never handed out.
        Err(bad_password(login.user()))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<Principal>> {
        match Access::of(&self.auth, &self.engine, Some(presented)) {
            Ok(_) => Ok(Some(Principal(presented.to_vec()))),
            Err(e) if e.is_unauthenticated() => Err(bad_password(login.user())),
            Err(e) => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                e.to_string(),
            )))),
        }
    }
}

/// Logs connections in: the password is an API key (none is asked with open access).
struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider, Principal>,
    keys: CleartextPasswordAuth<Keys>,
    open: bool,
    cancels: Arc<Cancels>,
}

impl Startup {
    async fn log_in<C>(
        &self,
        client: &mut C,
        key: Option<Vec<u8>>,
        final_message: Option<pgwire::messages::startup::Authentication>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let metadata = client.metadata();
        let wanted = [METADATA_DATABASE, METADATA_USER]
            .iter()
            .filter_map(|k| metadata.get(*k).cloned())
            .collect();
        let connection = Arc::new(Connection {
            key,
            wanted,
            current: Mutex::default(),
        });
        client
            .session_extensions()
            .insert::<Arc<Connection>>(connection.clone());
        self.driver
            .complete_authentication(client, final_message)
            .await?;
        let (pid, secret) = client.pid_and_secret_key();
        let registration = self.cancels.register(pid, secret, &connection);
        client.session_extensions().insert(registration);
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.open {
                    return self.log_in(client, None, None).await;
                }
                self.driver
                    .begin_authentication(client, self.keys.create())
                    .await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated {
                identity,
                final_message,
            } => {
                let key = identity.map(|p| p.0);
                if key.is_none() {
                    return Err(bad_password(None));
                }
                self.log_in(client, key, final_message).await
            }
        }
    }
}

/// Connections by process id, for cancel requests.
#[derive(Default)]
struct Cancels {
    connections: Mutex<HashMap<i32, (SecretKey, Weak<Connection>)>>,
}

/// A connection's place in [`Cancels`], given up when the connection ends.
struct Registration {
    pid: i32,
    cancels: Arc<Cancels>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut connections) = self.cancels.connections.lock() {
            connections.remove(&self.pid);
        }
    }
}

impl Cancels {
    fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: SecretKey,
        connection: &Arc<Connection>,
    ) -> Registration {
        self.connections
            .lock()
            .expect("the connection map is never poisoned")
            .insert(pid, (secret, Arc::downgrade(connection)));
        Registration {
            pid,
            cancels: self.clone(),
        }
    }
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let connection = self
            .connections
            .lock()
            .ok()
            .and_then(|c| c.get(&request.pid).cloned())
            .filter(|(secret, _)| secret.eq_value(&request.secret_key))
            .and_then(|(_, connection)| connection.upgrade());
        if let Some(connection) = connection {
            connection.cancel();
        }
    }
}

/// A statement of the extended protocol, as `Parse` left it.
#[derive(Debug, Clone)]
struct Prepared {
    sql: Arc<str>,
    plan: Planned,
}

#[derive(Debug, Clone)]
enum Planned {
    /// Answered without the engine.
    Native(Arc<Native>),
    /// Planned by the engine: the answer's schema and the parameters' types.
    Query {
        schema: SchemaRef,
        params: Arc<[Option<DataType>]>,
    },
}

/// Answers queries, simple and extended.
#[derive(Clone)]
struct Queries {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
}

impl Queries {
    /// What the connection's key may read now.
    fn access(&self, connection: &Connection) -> PgWireResult<Access> {
        Access::of(&self.auth, &self.engine, connection.key.as_deref()).map_err(|e| {
            let code = match e {
                AuthError::Workspace(_) | AuthError::Scope(_) => "42501",
                _ => "28000",
            };
            error(code, e.to_string())
        })
    }

    async fn session(
        &self,
        connection: &Connection,
        access: &Access,
    ) -> PgWireResult<SessionContext> {
        access
            .session(&self.engine, &connection.wanted())
            .await
            .map_err(query_error)
    }

    /// The native answer to `sql`, if it has one (catalog answers list the relations of
    /// a session over `access`).
    async fn native(
        &self,
        connection: &Connection,
        sql: &str,
        access: &Access,
    ) -> PgWireResult<Option<Native>> {
        let mut relations = Vec::new();
        if chatter::reads_catalog(sql) {
            let ctx = self.session(connection, access).await?;
            let first = access.workspaces[0].as_str();
            let mut schemas = Vec::with_capacity(2);
            for table in ["spans", "traces"] {
                let provider = ctx
                    .table_provider(TableReference::full(CATALOG, first, table))
                    .await
                    .map_err(|e| error("XX000", e.to_string()))?;
                schemas.push(provider.schema());
            }
            relations = chatter::relations(&access.workspaces, &schemas[0], &schemas[1]);
        }
        let scope = chatter::Scope {
            workspaces: &access.workspaces,
            home: access.home(&connection.wanted()),
            relations: &relations,
        };
        Ok(chatter::answer(sql, &scope))
    }

    /// Runs `sql` with `params`, its rows described by `fields` (those of its answer's
    /// schema in text when `None`); ends early when `token` is cancelled.
    async fn run(
        &self,
        ctx: SessionContext,
        access: &Access,
        sql: &str,
        params: Vec<ScalarValue>,
        fields: Option<Arc<Vec<FieldInfo>>>,
        token: CancellationToken,
    ) -> PgWireResult<Response> {
        let started = self
            .engine
            .stream_with(ctx, sql.to_string(), params, access.checked());
        let answer = tokio::select! {
            answer = started => answer.map_err(query_error)?,
            () = token.cancelled() => return Err(canceled()),
        };
        let fields = fields.unwrap_or_else(|| Arc::new(types::fields(&answer.schema, None)));
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            rows(answer, fields, token),
        )))
    }

    /// The response to one statement of a simple query.
    async fn simple(
        &self,
        connection: &Connection,
        sql: &str,
        token: &CancellationToken,
    ) -> PgWireResult<Response> {
        let access = self.access(connection)?;
        if let Some(native) = self.native(connection, sql, &access).await? {
            return Ok(respond(&native, None));
        }
        let ctx = self.session(connection, &access).await?;
        self.run(ctx, &access, sql, Vec::new(), None, token.clone())
            .await
    }
}

/// The response of a native answer, its rows in `format` (text when `None`).
fn respond(native: &Native, format: Option<&Format>) -> Response {
    match native {
        Native::Command(tag) => Response::Execution(Tag::new(tag)),
        Native::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Native::NotAllowed(what) => Response::Error(Box::new(
            query_error(QueryError::NotAllowed(what.clone())).into(),
        )),
        Native::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        Native::Rows(batch) => {
            let fields = Arc::new(types::fields(&batch.schema(), format));
            let rows = types::RowEncoder::new(fields.clone()).rows(batch);
            let rows = match rows {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            Response::Query(QueryResponse::new(fields, futures::stream::iter(rows)))
        }
    }
}

/// The rows of `answer` as `DataRow`s of `fields`, batch by batch; an error or a cancel
/// ends them (and dropping them cancels the query).
fn rows(
    answer: QueryStream,
    fields: Arc<Vec<FieldInfo>>,
    token: CancellationToken,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    let encoder = types::RowEncoder::new(fields);
    futures::stream::unfold(Some((answer, encoder, token)), |state| async move {
        let (mut answer, mut encoder, token) = state?;
        let next = tokio::select! {
            next = answer.next() => next,
            () = token.cancelled() => return Some((vec![Err(canceled())], None)),
        };
        match next? {
            Ok(batch) => match encoder.rows(&batch) {
                Ok(rows) => Some((
                    rows.into_iter().map(Ok).collect(),
                    Some((answer, encoder, token)),
                )),
                Err(e) => Some((vec![Err(e)], None)),
            },
            Err(e) => Some((vec![Err(query_error(e))], None)),
        }
    })
    .flat_map(futures::stream::iter)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let token = connection.start();
        let statements = placeholders::statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for sql in statements {
            match self.simple(&connection, sql, &token).await {
                Ok(response) => responses.push(response),
                Err(e) => {
                    // The first failure ends the query, as in PostgreSQL.
                    responses.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// Plans statements at `Parse`.
struct Parser {
    queries: Queries,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = placeholders::statements(sql);
        let sql = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(error(
                    "42601",
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
        };
        let queries = &self.queries;
        let connection = connection(client)?;
        let access = queries.access(&connection)?;
        if let Some(native) = queries.native(&connection, sql, &access).await? {
            return Ok(Some(Prepared {
                sql: sql.into(),
                plan: Planned::Native(Arc::new(native)),
            }));
        }
        let ctx = queries.session(&connection, &access).await?;
        let (schema, params) = queries
            .engine
            .prepare(ctx, sql.to_string(), access.checked())
            .await
            .map_err(query_error)?;
        Ok(Some(Prepared {
            sql: sql.into(),
            plan: Planned::Query {
                schema,
                params: params.into(),
            },
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match &statement.plan {
            Planned::Native(_) => Vec::new(),
            Planned::Query { params, .. } => params
                .iter()
                .map(|t| t.as_ref().map_or(Type::UNKNOWN, types::pg_type))
                .collect(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &statement.plan {
            Planned::Native(native) => match native.as_ref() {
                Native::Rows(batch) => types::fields(&batch.schema(), format),
                _ => Vec::new(),
            },
            Planned::Query { schema, .. } => types::fields(schema, format),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser {
            queries: self.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let token = connection.start();
        let statement = &portal.statement;
        let format = &portal.result_column_format;
        match &statement.statement.plan {
            Planned::Native(native) => Ok(respond(native, Some(format))),
            Planned::Query { schema, params } => {
                let values = types::parameters(
                    &portal.parameters,
                    &portal.parameter_format,
                    &statement.parameter_types,
                    params,
                )?;
                let access = self.access(&connection)?;
                let ctx = self.session(&connection, &access).await?;
                let fields = Arc::new(types::fields(schema, Some(format)));
                let sql = &statement.statement.sql;
                self.run(ctx, &access, sql, values, Some(fields), token)
                    .await
            }
        }
    }
}
