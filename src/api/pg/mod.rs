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
//! timeout; rows are written as the query makes them, never gathered (a fetch of `n` rows,
//! or a server-side cursor's `FETCH n`, holds `n` and about a batch more); a client that
//! cancels, or closes its connection, ends its statement, while it computes or while its
//! rows stream; the statements of a simple query run one after the other; at most
//! [`MAX_CONNECTIONS`] connections are logged in or logging in at once (as many more may
//! send a cancel request, and are told there are too many).

mod chatter;
mod errors;
mod types;

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context as _;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_partial_query_response,
    send_query_response, send_ready_for_query,
};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, DEFAULT_NAME, METADATA_DATABASE, METADATA_USER,
    PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::access::Access;
use crate::auth::{Auth, AuthError};
use crate::query::{CATALOG, QueryEngine, QueryError, QueryStream, placeholders};
use chatter::Native;
use errors::{bad_password, canceled, error, fatal, gone, query_error};

/// Connections open at once (PostgreSQL's default `max_connections`); as many more are
/// served a cancel request or told "too many clients", and any beyond are closed.
pub const MAX_CONNECTIONS: usize = 100;

/// Rows of one `DataRow` batch read from a cursor with no count.
const FETCH_ALL_ROWS: usize = 8192;

/// Server-side cursors a connection may have open (each is a running query).
const MAX_CURSORS: usize = 16;

/// The PostgreSQL front end.
pub struct PgWire {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
    startup: Arc<Startup>,
    /// Answers a login with "too many clients" (cancel requests still work).
    full: Arc<Startup>,
    cancels: Arc<Cancels>,
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
        let startup = |full| {
            Arc::new(Startup {
                driver: AuthDriver::new(server_parameters()),
                keys: CleartextPasswordAuth::new(Arc::new(Keys {
                    auth: auth.clone(),
                    engine: engine.clone(),
                })),
                open: auth.is_open(),
                full,
                cancels: cancels.clone(),
            })
        };
        let (startup, full) = (startup(false), startup(true));
        Ok(Self {
            engine,
            auth,
            startup,
            full,
            cancels,
            tls,
        })
    }

    /// Serves connections from `listener` until `stop` (which also ends the open ones);
    /// each connection is its own task.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let overflow = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            let (permit, startup) = match open.clone().try_acquire_owned() {
                Ok(permit) => (permit, self.startup.clone()),
                // Full: still served, for a cancel request or to be told so.
                Err(_) => match overflow.clone().try_acquire_owned() {
                    Ok(permit) => (permit, self.full.clone()),
                    Err(_) => {
                        tracing::warn!(
                            "Closed a PostgreSQL connection: {MAX_CONNECTIONS} are open and as \
                             many more are being refused."
                        );
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let (socket, peer) = match watched(socket) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "Watching a PostgreSQL connection failed.");
                    continue;
                }
            };
            let handlers = Handlers {
                queries: Arc::new(Queries {
                    engine: self.engine.clone(),
                    auth: self.auth.clone(),
                    peer: Some(Arc::new(peer)),
                }),
                startup,
                cancels: self.cancels.clone(),
            };
            let (tls, stop) = (self.tls.clone(), stop.clone());
            tokio::spawn(async move {
                let served = pgwire::tokio::process_socket(socket, tls, handlers);
                tokio::select! {
                    served = served => if let Err(e) = served {
                        tracing::debug!(error = %e, "A PostgreSQL connection ended with an error.");
                    },
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    }
}

/// `socket`, and a second handle on it that watches for the client closing it while a
/// statement runs (the protocol reads nothing from the client then).
fn watched(socket: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let socket = socket.into_std()?;
    let peer = socket.try_clone()?;
    Ok((TcpStream::from_std(socket)?, TcpStream::from_std(peer)?))
}

/// Resolves when the client behind `peer` has closed its connection (its end shut for
/// reading: bytes it sent before closing, a `Terminate` or a message sent ahead, do not
/// hide it).
async fn closed(peer: Option<Arc<TcpStream>>) {
    let Some(peer) = peer else {
        return std::future::pending().await;
    };
    loop {
        match peer.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {
                // Bytes to read, which are the protocol's: wait for the next event.
                let _ = peer.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
            _ => return,
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
    p.server_version = format!("{} (spanlake)", chatter::SERVER_VERSION);
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p.time_zone = "UTC".into();
    p
}

/// The handlers of one connection.
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
    /// The user name it logged in with.
    user: String,
    /// Cancels the statement running now.
    current: Mutex<CancellationToken>,
    /// Rows a cursor may still give to the `Execute` running now (the client's row limit):
    /// a fetch portal reads no more of a cursor than it sends, so the next `FETCH` goes on
    /// from there.
    fetch_budget: std::sync::atomic::AtomicUsize,
    /// Its server-side cursors by name.
    cursors: Mutex<HashMap<String, Arc<Declared>>>,
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

    /// Resolves when the statement running now is cancelled.
    fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.current
            .lock()
            .expect("the token lock is never poisoned")
            .clone()
            .cancelled_owned()
    }

    /// The cursor `name`.
    fn cursor(&self, name: &str) -> PgWireResult<Arc<Declared>> {
        self.cursors
            .lock()
            .expect("the cursor lock is never poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| error("34000", format!("cursor \"{name}\" does not exist")))
    }
}

/// A server-side cursor (`DECLARE`).
struct Declared {
    /// Its answer's schema.
    schema: SchemaRef,
    /// Whether it outlives its transaction.
    hold: bool,
    /// Locked only while a part is read: a fetch suspended half way does not hold it.
    cursor: tokio::sync::Mutex<Cursor>,
}

/// A query's answer read a part at a time: by a server-side cursor, or by a portal.
struct Cursor {
    answer: QueryStream,
    /// The batch being read and the rows of it already read.
    pending: Option<(RecordBatch, usize)>,
    /// Whether reading it failed (a later fetch must not read as a clean end).
    failed: bool,
}

impl Cursor {
    fn new(answer: QueryStream) -> Self {
        Self {
            answer,
            pending: None,
            failed: false,
        }
    }

    /// The next rows, at most `limit`; `None` at the end.
    async fn next(&mut self, limit: usize) -> Option<Result<RecordBatch, QueryError>> {
        if self.failed {
            return Some(Err(QueryError::Internal(
                "the cursor's query failed earlier; close the cursor".into(),
            )));
        }
        loop {
            if let Some((batch, read)) = self.pending.take()
                && read < batch.num_rows()
            {
                let n = limit.min(batch.num_rows() - read);
                let rows = batch.slice(read, n);
                self.pending = Some((batch, read + n));
                return Some(Ok(rows));
            }
            match self.answer.next().await? {
                Ok(batch) => self.pending = Some((batch, 0)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
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
            Err(e) => Err(fatal("28000", e.to_string())),
        }
    }
}

/// Logs connections in: the password is an API key (none is asked with open access).
struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider, Principal>,
    keys: CleartextPasswordAuth<Keys>,
    open: bool,
    /// Refuse every login: [`MAX_CONNECTIONS`] are open.
    full: bool,
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
        let user = metadata.get(METADATA_USER).cloned().unwrap_or_default();
        let connection = Arc::new(Connection {
            key,
            wanted,
            user,
            current: Mutex::default(),
            fetch_budget: std::sync::atomic::AtomicUsize::new(usize::MAX),
            cursors: Mutex::default(),
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
            PgWireFrontendMessage::Startup(_) if self.full => {
                return Err(fatal("53300", "sorry, too many clients already"));
            }
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
    /// `DECLARE name CURSOR FOR sql`, `sql` planned by the engine with these parameters.
    Declare {
        name: Arc<str>,
        sql: Arc<str>,
        params: Arc<[Option<DataType>]>,
        hold: bool,
    },
    /// `FETCH count FROM name` of a cursor whose answer has `schema`.
    Fetch {
        name: Arc<str>,
        count: Option<usize>,
        schema: SchemaRef,
    },
}

/// Answers queries, simple and extended, for one connection.
#[derive(Clone)]
struct Queries {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
    /// The client's socket, watched while a statement runs.
    peer: Option<Arc<TcpStream>>,
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
            user: &connection.user,
        };
        Ok(chatter::answer(sql, &scope))
    }

    /// Starts `sql` with `params` in a session over `access`; fails if the statement is
    /// cancelled or the client leaves before it is planned.
    async fn start(
        &self,
        connection: &Connection,
        access: &Access,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> PgWireResult<QueryStream> {
        let ctx = self.session(connection, access).await?;
        let started = self
            .engine
            .stream_with(ctx, sql.to_string(), params, access.checked());
        tokio::select! {
            answer = started => answer.map_err(query_error),
            _ = connection.cancelled() => Err(canceled()),
            () = closed(self.peer.clone()) => Err(gone()),
        }
    }

    /// The rows of `answer`, described by `fields` (those of its schema in text when
    /// `None`).
    fn respond_rows(
        &self,
        connection: &Arc<Connection>,
        answer: QueryStream,
        fields: Option<Arc<Vec<FieldInfo>>>,
    ) -> PgWireResult<Response> {
        let fields = match fields {
            Some(fields) => fields,
            None => Arc::new(types::fields(&answer.schema, None)?),
        };
        let rows = rows(
            Source::Query(Box::new(Cursor::new(answer))),
            None,
            fields.clone(),
            connection.clone(),
            self.peer.clone(),
        );
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// Opens the cursor `name` over `sql` with `params`; outside a transaction block
    /// only a cursor `WITH HOLD` may be, as in PostgreSQL.
    #[allow(clippy::too_many_arguments)]
    async fn declare(
        &self,
        connection: &Connection,
        access: &Access,
        name: &str,
        sql: &str,
        params: Vec<ScalarValue>,
        hold: bool,
        in_transaction: bool,
    ) -> PgWireResult<Response> {
        if !hold && !in_transaction {
            return Err(error(
                "25P01",
                "DECLARE CURSOR can only be used in transaction blocks (or WITH HOLD)",
            ));
        }
        {
            let cursors = connection
                .cursors
                .lock()
                .expect("the cursor lock is never poisoned");
            if cursors.contains_key(name) {
                return Err(error("42P03", format!("cursor \"{name}\" already exists")));
            }
            if cursors.len() >= MAX_CURSORS {
                return Err(error(
                    "54000",
                    format!("at most {MAX_CURSORS} cursors may be open on a connection; close one"),
                ));
            }
        }
        let answer = self.start(connection, access, sql, params).await?;
        let declared = Arc::new(Declared {
            schema: answer.schema.clone(),
            hold,
            cursor: tokio::sync::Mutex::new(Cursor::new(answer)),
        });
        connection
            .cursors
            .lock()
            .expect("the cursor lock is never poisoned")
            .insert(name.to_string(), declared);
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }

    /// The next `count` rows of the cursor `name` (all that are left when `None`), in
    /// `format`; `planned` is the cursor's schema when the `FETCH` was prepared.
    async fn fetch(
        &self,
        connection: &Arc<Connection>,
        name: &str,
        count: Option<usize>,
        format: Option<&Format>,
        planned: Option<&SchemaRef>,
    ) -> PgWireResult<Response> {
        let declared = connection.cursor(name)?;
        if planned.is_some_and(|schema| *schema != declared.schema) {
            return Err(error(
                "0A000",
                "cached plan must not change result type: the cursor was declared again; \
                 prepare the FETCH again",
            ));
        }
        let fields = Arc::new(types::fields(&declared.schema, format)?);
        let rows = rows(
            Source::Cursor(declared),
            count,
            fields.clone(),
            connection.clone(),
            self.peer.clone(),
        );
        let mut response = QueryResponse::new(fields, rows);
        response.set_command_tag("FETCH");
        Ok(Response::Query(response))
    }

    /// The response of a native answer, its rows in `format` (text when `None`), in a
    /// connection whose transaction is in `status`; a refusal is an error.
    async fn respond(
        &self,
        connection: &Arc<Connection>,
        access: &Access,
        native: &Native,
        format: Option<&Format>,
        status: TransactionStatus,
    ) -> PgWireResult<Response> {
        let in_transaction = status != TransactionStatus::Idle;
        Ok(match native {
            Native::Command(tag) => Response::Execution(Tag::new(tag)),
            Native::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Native::End(tag) => {
                // The transaction's cursors end with it, as in PostgreSQL.
                connection
                    .cursors
                    .lock()
                    .expect("the cursor lock is never poisoned")
                    .retain(|_, cursor| cursor.hold);
                // A failed transaction only rolls back, whatever ends it.
                let tag = match status {
                    TransactionStatus::Error => "ROLLBACK",
                    _ => tag,
                };
                Response::TransactionEnd(Tag::new(tag))
            }
            Native::NotAllowed(what) => {
                return Err(query_error(QueryError::NotAllowed(what.clone())));
            }
            Native::Invalid(code, message) => return Err(error(code, message.clone())),
            Native::Rows(batch) => {
                let fields = Arc::new(types::fields(&batch.schema(), format)?);
                let rows = types::RowEncoder::new(fields.clone()).rows(batch)?;
                Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter(rows.into_iter().map(Ok)),
                ))
            }
            Native::Declare { name, query, hold } => {
                return self
                    .declare(
                        connection,
                        access,
                        name,
                        query,
                        Vec::new(),
                        *hold,
                        in_transaction,
                    )
                    .await;
            }
            Native::Fetch { name, count } => {
                return self.fetch(connection, name, *count, format, None).await;
            }
            Native::Close(name) => {
                let mut cursors = connection
                    .cursors
                    .lock()
                    .expect("the cursor lock is never poisoned");
                match name {
                    Some(name) => {
                        if cursors.remove(name).is_none() {
                            return Err(error(
                                "34000",
                                format!("cursor \"{name}\" does not exist"),
                            ));
                        }
                    }
                    None => cursors.clear(),
                }
                Response::Execution(Tag::new("CLOSE CURSOR"))
            }
        })
    }

    /// The response to one statement of a simple query, in a connection whose transaction
    /// is in `status`.
    async fn simple(
        &self,
        connection: &Arc<Connection>,
        sql: &str,
        status: TransactionStatus,
    ) -> PgWireResult<Response> {
        failed_transaction(status, sql)?;
        let access = self.access(connection)?;
        if let Some(native) = self.native(connection, sql, &access).await? {
            return self
                .respond(connection, &access, &native, None, status)
                .await;
        }
        let answer = self.start(connection, &access, sql, Vec::new()).await?;
        self.respond_rows(connection, answer, None)
    }
}

/// What rows are read from: a query's own answer, or a server-side cursor (locked for
/// each part only, so a fetch left suspended does not keep it from the next).
enum Source {
    Query(Box<Cursor>),
    Cursor(Arc<Declared>),
}

impl Source {
    async fn next(&mut self, limit: usize) -> Option<Result<RecordBatch, QueryError>> {
        match self {
            Self::Query(cursor) => cursor.next(limit).await,
            Self::Cursor(declared) => declared.cursor.lock().await.next(limit).await,
        }
    }
}

/// At most `count` rows (all when `None`) of `source` as `DataRow`s of `fields`, a part at
/// a time; an error, a cancel or the client closing its connection ends them (and dropping
/// a query's own answer cancels the query).
fn rows(
    source: Source,
    count: Option<usize>,
    fields: Arc<Vec<FieldInfo>>,
    connection: Arc<Connection>,
    peer: Option<Arc<TcpStream>>,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    let encoder = types::RowEncoder::new(fields);
    let left = count.unwrap_or(usize::MAX);
    futures::stream::unfold(
        Some((source, left, encoder, connection, peer)),
        |state| async move {
            let (mut source, left, mut encoder, connection, peer) = state?;
            if left == 0 {
                return None;
            }
            let mut limit = left.min(FETCH_ALL_ROWS);
            let budget = &connection.fetch_budget;
            if matches!(source, Source::Cursor(_)) {
                limit = limit.min(budget.load(std::sync::atomic::Ordering::Relaxed));
                if limit == 0 {
                    return None;
                }
            }
            let next = tokio::select! {
                next = source.next(limit) => next,
                _ = connection.cancelled() => return Some((vec![Err(canceled())], None)),
                () = closed(peer.clone()) => return Some((vec![Err(gone())], None)),
            };
            match next? {
                Ok(batch) => match encoder.rows(&batch) {
                    Ok(rows) => {
                        if matches!(source, Source::Cursor(_)) {
                            let _ = budget.fetch_update(
                                std::sync::atomic::Ordering::Relaxed,
                                std::sync::atomic::Ordering::Relaxed,
                                |b| Some(b.saturating_sub(batch.num_rows())),
                            );
                        }
                        let left = left - batch.num_rows();
                        let rows = rows.into_iter().map(Ok).collect();
                        Some((rows, Some((source, left, encoder, connection, peer))))
                    }
                    Err(e) => Some((vec![Err(e)], None)),
                },
                Err(e) => Some((vec![Err(query_error(e))], None)),
            }
        },
    )
    .flat_map(futures::stream::iter)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    /// A simple query: its statements one after the other, each answered (its rows
    /// streamed) before the next starts, the first failure ending the query as in
    /// PostgreSQL.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let connection = connection(client)?;
        connection.start();
        let statements = placeholders::statements(&query.query);
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        }
        for sql in statements {
            let mut status = client.transaction_status();
            match self.simple(&connection, sql, status).await? {
                Response::Query(answer) => send_query_response(client, answer, true).await?,
                Response::TransactionStart(tag) => {
                    send_execution_response(client, tag).await?;
                    status = status.to_in_transaction_state();
                }
                Response::TransactionEnd(tag) => {
                    send_execution_response(client, tag).await?;
                    status = status.to_idle_state();
                }
                Response::Execution(tag) => send_execution_response(client, tag).await?,
                Response::Error(e) => return Err(PgWireError::UserError(e)),
                _ => return Err(error("XX000", "an answer of an unexpected kind")),
            }
            // Kept at once: a later statement's failure reports the status it left.
            client.set_transaction_status(status);
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        send_ready_for_query(client, client.transaction_status()).await
    }

    async fn do_query<C>(&self, _client: &mut C, _query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // `on_query` answers each statement as it runs; nothing calls this.
        Err(error(
            "XX000",
            "simple queries are answered statement by statement",
        ))
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
        failed_transaction(client.transaction_status(), sql)?;
        let queries = &self.queries;
        let connection = connection(client)?;
        let access = queries.access(&connection)?;
        let prepare = async |sql: &str| {
            let ctx = queries.session(&connection, &access).await?;
            queries
                .engine
                .prepare(ctx, sql.to_string(), access.checked())
                .await
                .map_err(query_error)
        };
        // A catalog answer ignores parameters: it is computed here, before any is bound.
        let plan = match queries.native(&connection, sql, &access).await? {
            Some(Native::Declare { name, query, hold }) => {
                let (_, params) = prepare(&query).await?;
                Planned::Declare {
                    name: name.into(),
                    sql: query.into(),
                    params: params.into(),
                    hold,
                }
            }
            Some(Native::Fetch { name, count }) => {
                let schema = connection.cursor(&name)?.schema.clone();
                Planned::Fetch {
                    name: name.into(),
                    count,
                    schema,
                }
            }
            Some(native) => Planned::Native(Arc::new(native)),
            None => {
                let (schema, params) = prepare(sql).await?;
                Planned::Query {
                    schema,
                    params: params.into(),
                }
            }
        };
        Ok(Some(Prepared {
            sql: sql.into(),
            plan,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match &statement.plan {
            Planned::Native(_) | Planned::Fetch { .. } => Vec::new(),
            Planned::Query { params, .. } | Planned::Declare { params, .. } => params
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
        match &statement.plan {
            Planned::Native(native) => match native.as_ref() {
                Native::Rows(batch) => types::fields(&batch.schema(), format),
                _ => Ok(Vec::new()),
            },
            Planned::Query { schema, .. } | Planned::Fetch { schema, .. } => {
                types::fields(schema, format)
            }
            Planned::Declare { .. } => Ok(Vec::new()),
        }
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

    /// `Execute` of a portal with rows writes them as the query makes them: all of them
    /// (a row limit of 0 or less, what drivers send), or at most the limit, the portal
    /// suspended until the next `Execute`. (pgwire's own `Execute` gathers a whole answer
    /// before writing it, and sizes a buffer by the client's limit.) Portals without rows
    /// (`SET`, `BEGIN`, …) go through pgwire's.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) if has_rows(&portal.statement.statement) => portal,
            _ => return self._on_execute(client, message).await,
        };
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        // A portal left suspended is not resumed in a failed transaction either.
        failed_transaction(client.transaction_status(), &portal.statement.statement.sql)?;
        client.set_state(PgWireConnectionState::QueryInProgress);
        let state = portal.state();
        let mut state = state.lock().await;
        let sent = match &mut *state {
            PortalExecutionState::Initial => {
                match ExtendedQueryHandler::do_query(self, client, &portal, 0).await {
                    Ok(Response::Query(answer)) => {
                        *state = PortalExecutionState::Suspended(answer);
                        Ok(())
                    }
                    Ok(_) => Err(error("XX000", "a query answered without rows")),
                    Err(e) => Err(e),
                }
            }
            _ => {
                // A later fetch of a suspended portal is the statement running now.
                connection(client)?.start();
                Ok(())
            }
        };
        let limit = usize::try_from(message.max_rows).unwrap_or(0);
        let sent = match (sent, &mut *state) {
            (Err(e), _) => Err(e),
            (Ok(()), PortalExecutionState::Suspended(answer)) => {
                let connection = connection(client)?;
                let budget = if limit == 0 { usize::MAX } else { limit };
                let ordering = std::sync::atomic::Ordering::Relaxed;
                connection.fetch_budget.store(budget, ordering);
                let sent = send_partial_query_response(client, answer, limit).await;
                connection.fetch_budget.store(usize::MAX, ordering);
                sent
            }
            (Ok(()), _) => {
                let done = Tag::new("SELECT").with_rows(0);
                send_execution_response(client, done).await.map(|()| false)
            }
        };
        match sent {
            Ok(suspended) => {
                if !suspended {
                    *state = PortalExecutionState::Finished;
                }
                client.set_state(PgWireConnectionState::ReadyForQuery);
                Ok(())
            }
            Err(e) => {
                // A portal whose answer broke off is gone, not finished.
                drop(state);
                client.portal_store().rm_portal(name);
                Err(e)
            }
        }
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
        connection.start();
        let status = client.transaction_status();
        let in_transaction = status != TransactionStatus::Idle;
        let statement = &portal.statement;
        failed_transaction(status, &statement.statement.sql)?;
        // Every statement is authorized when it runs, not only when it was parsed.
        let access = self.access(&connection)?;
        let format = &portal.result_column_format;
        let bound = |params: &[Option<DataType>]| {
            types::parameters(
                &portal.parameters,
                &portal.parameter_format,
                &statement.parameter_types,
                params,
            )
        };
        match &statement.statement.plan {
            Planned::Native(native) => {
                self.respond(&connection, &access, native, Some(format), status)
                    .await
            }
            Planned::Query { schema, params } => {
                let values = bound(params)?;
                let fields = Arc::new(types::fields(schema, Some(format))?);
                let sql = &statement.statement.sql;
                let answer = self.start(&connection, &access, sql, values).await?;
                self.respond_rows(&connection, answer, Some(fields))
            }
            Planned::Declare {
                name,
                sql,
                params,
                hold,
            } => {
                let values = bound(params)?;
                let declared = self
                    .declare(
                        &connection,
                        &access,
                        name,
                        sql,
                        values,
                        *hold,
                        in_transaction,
                    )
                    .await?;
                // In PostgreSQL a cursor is also a portal of its name, which drivers
                // describe (psycopg does, for the cursor's columns).
                let schema = connection.cursor(name)?.schema.clone();
                let fetch = Prepared {
                    sql: sql.clone(),
                    plan: Planned::Fetch {
                        name: name.clone(),
                        count: None,
                        schema,
                    },
                };
                let statement = StoredStatement::new(name.to_string(), fetch, Vec::new());
                let portal = Portal::new_cursor(name.to_string(), Arc::new(statement));
                client.portal_store().put_portal(Arc::new(portal));
                Ok(declared)
            }
            Planned::Fetch {
                name,
                count,
                schema,
            } => {
                self.fetch(&connection, name, *count, Some(format), Some(schema))
                    .await
            }
        }
    }
}

/// In a transaction a statement failed in (`status` is `Error`), only a statement that
/// ends it may run, as in PostgreSQL: `sql` is refused with 25P02 otherwise, before any
/// work (a query's rows resumed included).
fn failed_transaction(status: TransactionStatus, sql: &str) -> PgWireResult<()> {
    if status == TransactionStatus::Error && !chatter::ends_transaction(sql) {
        return Err(error(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        ));
    }
    Ok(())
}

/// Whether `statement` answers rows (a query, a fetch, or a native answer with rows).
fn has_rows(statement: &Prepared) -> bool {
    match &statement.plan {
        Planned::Query { .. } | Planned::Fetch { .. } => true,
        Planned::Declare { .. } => false,
        Planned::Native(native) => matches!(native.as_ref(), Native::Rows(_)),
    }
}
