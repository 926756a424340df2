//! Query: DataFusion sessions over one workspace's `spans` (the Delta table's files of one
//! version ∪ the buffer, its attributes restored by [`restore`]) and `traces`.
//!
//! Input: a workspace and SQL (from the API, the gRPC query service or `spanlake sql`).
//! Output: Arrow record batches. Invariants: a session sees exactly one workspace — its
//! `spans` table and the `traces` view, nothing else (no file or URL tables, no DDL, DML,
//! COPY or SET, no table functions nor functions whose output an argument sizes: see
//! [`sandbox`]); a function whose output can outgrow its arguments reserves it in the
//! memory pool first (see [`guard`]); the table version and the buffer are snapshotted
//! together under the buffer's publication lock, so a flush in progress never shows a span
//! twice or not at all, and a compaction commit never either (a query reads one version's
//! files, which vacuum keeps past the query timeout); every
//! query runs on a dedicated runtime, within a shared memory pool and a timeout that covers
//! its whole answer; answers stream through a bounded channel, so a result is never held
//! whole, and a client that goes away cancels its query.

mod compact;
mod decode;
mod guard;
pub mod placeholders;
mod restore;
pub mod sandbox;
mod table;
mod traces;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::buffer::Buffer;
use crate::catalog::{Catalog, TraceView};
use crate::storage::Storage;
use crate::workspace::Workspace;

pub use table::SpansTable;
pub use traces::{TraceLoader, TracesTable, traces_schema};

/// The catalog of every session: one schema per workspace.
pub const CATALOG: &str = "spanlake";

/// Parameters a prepared statement may have.
const MAX_PARAMETERS: usize = 1024;

/// Bytes of Parquet metadata kept between queries.
const METADATA_CACHE_BYTES: usize = 128 << 20;

/// Limits applied to every query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Bytes of the memory pool shared by all running queries.
    pub memory_bytes: usize,
    /// How long one query may run, its whole answer included.
    pub timeout: Duration,
    /// Bytes of a JSON answer of the SQL route before it is cut (and says so).
    pub max_json_bytes: usize,
}

/// Query failures.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is not a read-only query (DDL, DML, COPY, SET, …).
    #[error(
        "not allowed: {0}; only read-only queries are allowed (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE)"
    )]
    NotAllowed(String),
    /// The SQL does not parse, plan or run.
    #[error("{0}")]
    Sql(String),
    /// The query needed more memory than the pool has.
    #[error("query exceeded the memory limit of {limit} bytes: {message}")]
    Memory {
        /// The pool size.
        limit: usize,
        /// DataFusion's message.
        message: String,
    },
    /// The query ran past its timeout.
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    /// The query names a workspace its key may not read.
    #[error("this API key may not read workspace {0}")]
    Workspace(Workspace),
    /// The server is replaying its write-ahead log; answers would miss acknowledged spans.
    #[error("starting: the write-ahead log is being replayed; retry shortly")]
    Starting,
    /// Something failed that is not the query's fault.
    #[error("query failed: {0}")]
    Internal(String),
}

/// Builds sessions and runs queries.
pub struct QueryEngine {
    storage: Arc<Storage>,
    buffer: Option<Arc<Buffer>>,
    limits: QueryLimits,
    runtime_env: Arc<RuntimeEnv>,
    /// Builds the trace index's view of a snapshot.
    loader: Arc<TraceLoader>,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Queries executing now (their answers still streaming).
    running: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the buffer holds every acknowledged span (the WAL is replayed).
    ready: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A query's answer as it is produced: the schema at once, the batches as the consumer
/// takes them (at most two wait in between). Dropping it cancels the query.
pub struct QueryStream {
    /// The answer's schema.
    pub schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    /// Set once the answer's end (its last batch, or its error) is queued: an answer
    /// that stops without it was cut (by the timeout while the consumer was not taking
    /// batches, or by a failure of the query task) and must not look complete.
    complete: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the timeout cut it.
    cut: Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
}

impl QueryStream {
    /// The next batch; `None` at the end, an error when the answer ended early (an answer
    /// cut by its timeout, or by a failed query task, never looks complete).
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        use std::sync::atomic::Ordering;
        match self.batches.recv().await {
            Some(item) => Some(item),
            None if self.complete.load(Ordering::Acquire) => None,
            None => {
                // Said once; then the answer is over.
                self.complete.store(true, Ordering::Release);
                Some(Err(if self.cut.load(Ordering::Acquire) {
                    QueryError::Timeout(self.timeout)
                } else {
                    QueryError::Internal("the query ended early".into())
                }))
            }
        }
    }

    /// Every batch (for answers bounded by their SQL, like a page of a listing).
    pub async fn collect(mut self) -> Result<QueryResult, QueryError> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok(QueryResult {
            schema: self.schema,
            batches,
        })
    }
}

/// The result of a query.
pub struct QueryResult {
    /// The result's schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl QueryEngine {
    /// An engine over the table in `storage` and, when serving, the live buffer.
    pub fn new(
        storage: Arc<Storage>,
        catalog: Arc<Catalog>,
        buffer: Option<Arc<Buffer>>,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.memory_bytes)))
            // Data files' footers and page indexes, kept between queries (files never
            // change, so an entry never goes stale; the least recently used go first).
            .with_metadata_cache_limit(METADATA_CACHE_BYTES)
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        if let Some((bucket, store)) = storage.remote_store() {
            runtime_env.register_object_store(&bucket, store);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("query")
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let loader = Arc::new(TraceLoader {
            catalog,
            loading: tokio::sync::Mutex::new(()),
            runtime_env: runtime_env.clone(),
        });
        Ok(Self {
            storage,
            buffer,
            limits,
            runtime_env,
            loader,
            runtime: Some(runtime),
            running: Arc::default(),
            ready: Box::new(|| true),
        })
    }

    /// The engine answering [`QueryError::Starting`] while `ready` says no: until the WAL
    /// is replayed the buffer lacks acknowledged spans, and an answer would miss them.
    pub fn with_ready(mut self, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.ready = Box::new(ready);
        self
    }

    /// The limits every query runs under.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// Queries executing now (a gauge for `/metrics`).
    pub fn running(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.running.clone()
    }

    /// Every workspace with spans, stored or buffered, by name.
    pub fn workspaces(&self) -> Vec<Workspace> {
        let mut all: std::collections::BTreeSet<Workspace> = self
            .storage
            .files()
            .workspaces()
            .filter_map(|name| Workspace::new(name).ok())
            .collect();
        if let Some(buffer) = &self.buffer {
            all.extend(buffer.workspaces());
        }
        all.into_iter().collect()
    }

    /// A session holding only `workspace`'s `spans` table and `traces` view.
    pub async fn session(&self, workspace: &Workspace) -> Result<SessionContext, QueryError> {
        let table = self.snapshot(workspace)?;
        self.session_over(workspace, table).await
    }

    /// The workspace's spans as queries read them now (one version's files ∪ the buffer).
    pub fn snapshot(&self, workspace: &Workspace) -> Result<SpansTable, QueryError> {
        if !(self.ready)() {
            return Err(QueryError::Starting);
        }
        Ok(SpansTable::snapshot(
            &self.storage,
            workspace,
            self.buffer.as_deref(),
        ))
    }

    /// Loads every workspace's trace index into memory (after a start, so that the first
    /// listing does not wait for it).
    pub async fn warm_up(&self) {
        let started = std::time::Instant::now();
        let files = self.storage.files();
        let mut traces = 0;
        for name in files.workspaces() {
            let Ok(ws) = Workspace::new(name) else {
                continue;
            };
            let loaded = match self.snapshot(&ws) {
                Ok(table) => self.traces(&ws, &table).await,
                Err(e) => Err(e),
            };
            match loaded {
                Ok(view) => traces += view.len(),
                Err(e) => {
                    tracing::warn!(workspace = name, error = %e, "Loading the trace index failed; the first listing loads it.")
                }
            }
        }
        tracing::info!(traces, elapsed = ?started.elapsed(), "Loaded the trace index.");
        // Files summarized from their data get their index files at the next sync.
        self.loader.catalog.changed();
    }

    /// Every trace of the snapshot `table` of `workspace`, from the trace index.
    pub async fn traces(
        &self,
        workspace: &Workspace,
        table: &SpansTable,
    ) -> Result<TraceView, QueryError> {
        // On the query runtime: loading and merging rows is CPU work ingestion must not
        // wait for.
        let runtime = self.runtime()?;
        let (loader, workspace, table) = (self.loader.clone(), workspace.clone(), table.clone());
        runtime
            .spawn(async move { loader.view(&workspace, &table).await })
            .await
            .map_err(|e| QueryError::Internal(format!("loading the trace index: {e}")))?
    }

    /// A session over the snapshot `table` of `workspace` (its `spans` table and `traces`
    /// view).
    pub async fn session_over(
        &self,
        workspace: &Workspace,
        table: SpansTable,
    ) -> Result<SessionContext, QueryError> {
        let ctx = self.empty_session(workspace);
        self.register(&ctx, workspace, table)?;
        Ok(ctx)
    }

    /// A session over several workspaces, each a schema of [`CATALOG`] with its `spans`
    /// and `traces`; unqualified names resolve in `home`.
    pub async fn session_of(
        &self,
        workspaces: &[Workspace],
        home: &Workspace,
    ) -> Result<SessionContext, QueryError> {
        let ctx = self.empty_session(home);
        for ws in workspaces.iter().filter(|ws| is_schema_name(ws)) {
            let table = self.snapshot(ws)?;
            self.register(&ctx, ws, table)?;
        }
        Ok(ctx)
    }

    /// A sandboxed session without tables whose default schema is `home`.
    fn empty_session(&self, home: &Workspace) -> SessionContext {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2)
            .with_default_catalog_and_schema(CATALOG, home.as_str());
        let pool = self.runtime_env.memory_pool.clone();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime_env.clone())
            .with_default_features()
            .with_physical_optimizer_rules(decode::GuardJoinKeys::first_of(pool.clone()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(decode::GuardDecodes::new(pool)));
        sandbox::remove_table_functions(&ctx);
        ctx
    }

    /// Adds `workspace`'s schema, with the snapshot `table` as its `spans` and the trace
    /// index's view as its `traces`.
    fn register(
        &self,
        ctx: &SessionContext,
        workspace: &Workspace,
        table: SpansTable,
    ) -> Result<(), QueryError> {
        let internal = |e: DataFusionError| QueryError::Internal(e.to_string());
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| QueryError::Internal("the session has no catalog".into()))?;
        if catalog.schema(workspace.as_str()).is_none() {
            catalog
                .register_schema(workspace.as_str(), Arc::new(MemorySchemaProvider::new()))
                .map_err(internal)?;
        }
        let name = |table: &'static str| TableReference::partial(workspace.as_str(), table);
        let spans = restore::spans_view(Arc::new(table.clone())).map_err(internal)?;
        ctx.register_table(name("spans"), Arc::new(spans))
            .map_err(internal)?;
        let traces = TracesTable::new(self.loader.clone(), workspace.clone(), table);
        ctx.register_table(name("traces"), Arc::new(traces))
            .map_err(internal)?;
        Ok(())
    }

    /// Runs read-only `sql` over `workspace`; the whole answer.
    pub async fn sql(&self, workspace: &Workspace, sql: &str) -> Result<QueryResult, QueryError> {
        self.sql_stream(workspace, sql).await?.collect().await
    }

    /// Runs read-only `sql` over `workspace`; the answer as it is produced.
    pub async fn sql_stream(
        &self,
        workspace: &Workspace,
        sql: &str,
    ) -> Result<QueryStream, QueryError> {
        let ctx = self.session(workspace).await?;
        self.stream(ctx, sql.to_string()).await
    }

    /// Runs read-only `sql` in an existing session (for several queries over one
    /// snapshot); the whole answer.
    pub async fn run(&self, ctx: SessionContext, sql: String) -> Result<QueryResult, QueryError> {
        self.stream(ctx, sql).await?.collect().await
    }

    /// Plans `sql` (refused if the sandbox forbids it) and starts it on the query runtime;
    /// returns once it is planned. The timeout runs from now to the answer's last batch.
    pub async fn stream(
        &self,
        ctx: SessionContext,
        sql: String,
    ) -> Result<QueryStream, QueryError> {
        self.stream_with(ctx, sql, Vec::new(), None).await
    }

    /// [`QueryEngine::stream`] with `params` bound to `$1`, `$2`, … (or to the query's `?`
    /// in order); when `readable` is given, a query naming a workspace outside it is
    /// refused with [`QueryError::Workspace`].
    pub async fn stream_with(
        &self,
        ctx: SessionContext,
        sql: String,
        params: Vec<ScalarValue>,
        readable: Option<&[Workspace]>,
    ) -> Result<QueryStream, QueryError> {
        let limits = self.limits;
        let readable = readable.map(<[Workspace]>::to_vec);
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let runtime = self.runtime()?;
        let (planned, schema) = oneshot::channel();
        let (tx, batches) = mpsc::channel(2);
        let running = self.running.clone();
        let pool = self.runtime_env.memory_pool.clone();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut_by_timeout, completed) = (cut.clone(), complete.clone());
        runtime.spawn(async move {
            let start = async {
                let plan = plan(&ctx, &sql, params, readable.as_deref(), limits).await?;
                let plan = guard::guard_plan(plan, &pool).map_err(|e| classify(e, limits))?;
                let df = ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| classify(e, limits))?;
                let schema = Arc::new(df.schema().as_arrow().clone());
                let stream = df.execute_stream().await.map_err(|e| classify(e, limits))?;
                Ok::<_, QueryError>((schema, stream))
            };
            let mut stream = match tokio::time::timeout_at(deadline, start).await {
                Ok(Ok((s, stream))) => {
                    if planned.send(Ok(s)).is_err() {
                        return;
                    }
                    stream
                }
                Ok(Err(e)) => {
                    let _ = planned.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = planned.send(Err(QueryError::Timeout(limits.timeout)));
                    return;
                }
            };
            running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            loop {
                let next = tokio::select! {
                    next = tokio::time::timeout_at(deadline, stream.next()) => next,
                    // A consumer gone while a batch is being computed ends the query now.
                    () = tx.closed() => break,
                };
                let item = match next {
                    Ok(None) => {
                        completed.store(true, std::sync::atomic::Ordering::Release);
                        break;
                    }
                    Ok(Some(batch)) => batch.map_err(|e| classify(e, limits)),
                    Err(_) => Err(QueryError::Timeout(limits.timeout)),
                };
                let last = item.is_err();
                let sent = tokio::time::timeout_at(deadline, tx.send(item)).await;
                match sent {
                    // The consumer took too long: the answer ends cut, and says so.
                    Err(_) => cut_by_timeout.store(true, std::sync::atomic::Ordering::Release),
                    // The error queued is the answer's end.
                    Ok(Ok(())) if last => {
                        completed.store(true, std::sync::atomic::Ordering::Release)
                    }
                    _ => {}
                }
                if last || !matches!(sent, Ok(Ok(()))) {
                    // An error ends the answer; a consumer gone (or too slow) ends the query.
                    break;
                }
            }
            // Dropping the stream aborts every task of the query.
            drop(stream);
            running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        let schema = schema
            .await
            .map_err(|_| QueryError::Internal("the query task ended early".into()))??;
        Ok(QueryStream {
            schema,
            batches,
            complete,
            cut,
            timeout: limits.timeout,
        })
    }
}

impl QueryEngine {
    /// The schema of `sql`'s answer with `params` bound, planned but not run (refused as
    /// [`QueryEngine::stream_with`] would refuse it).
    pub async fn describe(
        &self,
        ctx: SessionContext,
        sql: String,
        params: Vec<ScalarValue>,
        readable: Option<&[Workspace]>,
    ) -> Result<SchemaRef, QueryError> {
        let (limits, readable) = (self.limits, readable.map(<[Workspace]>::to_vec));
        let pool = self.runtime_env.memory_pool.clone();
        self.on_runtime(async move {
            let plan = plan(&ctx, &sql, params, readable.as_deref(), limits).await?;
            // Guarded as a run is, so the schema is the one the answer streams with.
            let plan = guard::guard_plan(plan, &pool).map_err(|e| classify(e, limits))?;
            Ok(Arc::new(plan.schema().as_arrow().clone()))
        })
        .await
    }

    /// A statement to run later with parameters: its answer's schema (as far as it is
    /// known before binding) and the type of each parameter, `$1` first (`None` where
    /// the SQL does not tell).
    pub async fn prepare(
        &self,
        ctx: SessionContext,
        sql: String,
        readable: Option<&[Workspace]>,
    ) -> Result<(SchemaRef, Vec<Option<DataType>>), QueryError> {
        let (limits, readable) = (self.limits, readable.map(<[Workspace]>::to_vec));
        let pool = self.runtime_env.memory_pool.clone();
        self.on_runtime(async move {
            let plan = plan(&ctx, &sql, Vec::new(), readable.as_deref(), limits).await?;
            let mut types: Vec<(usize, Option<DataType>)> = plan
                .get_parameter_types()
                .map_err(|e| classify(e, limits))?
                .into_iter()
                .map(|(id, t)| (id.get(1..).and_then(|n| n.parse().ok()).unwrap_or(0), t))
                .collect();
            types.sort_by_key(|(n, _)| *n);
            // Numbered 1 to n without gaps (the ids are the client's: `$99999999999` must
            // not size anything).
            if types.len() > MAX_PARAMETERS
                || types.iter().enumerate().any(|(i, (n, _))| *n != i + 1)
            {
                return Err(QueryError::Sql(format!(
                    "the query's parameters must be $1, $2, … without gaps, at most \
                     {MAX_PARAMETERS} of them"
                )));
            }
            let plan = guard::guard_plan(plan, &pool).map_err(|e| classify(e, limits))?;
            let params = types.into_iter().map(|(_, t)| t).collect();
            Ok((Arc::new(plan.schema().as_arrow().clone()), params))
        })
        .await
    }

    /// The runtime queries run on (until the engine is dropped).
    fn runtime(&self) -> Result<&tokio::runtime::Runtime, QueryError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime is shut down".into()))
    }

    /// Runs `work` on the query runtime within the query timeout.
    async fn on_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, QueryError>> + Send + 'static,
    ) -> Result<T, QueryError> {
        let runtime = self.runtime()?;
        let timeout = self.limits.timeout;
        runtime
            .spawn(tokio::time::timeout(timeout, work))
            .await
            .map_err(|e| QueryError::Internal(format!("the query task failed: {e}")))?
            .map_err(|_| QueryError::Timeout(timeout))?
    }
}

/// Whether `workspace` can be a schema of a session: `information_schema`, a valid
/// workspace name, is DataFusion's own and cannot.
pub fn is_schema_name(workspace: &Workspace) -> bool {
    workspace.as_str() != "information_schema"
}

/// Plans read-only `sql` in `ctx` with `params` bound: refused if it names a workspace
/// outside `readable` (when given) or is not a query the sandbox allows.
async fn plan(
    ctx: &SessionContext,
    sql: &str,
    params: Vec<ScalarValue>,
    readable: Option<&[Workspace]>,
    limits: QueryLimits,
) -> Result<LogicalPlan, QueryError> {
    let state = ctx.state();
    let sql = placeholders::number(sql)?;
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state
        .sql_to_statement(&sql, &dialect)
        .map_err(|e| classify(e, limits))?;
    if let Some(readable) = readable {
        let references = state
            .resolve_table_references(&statement)
            .map_err(|e| classify(e, limits))?;
        for reference in references {
            let Some(schema) = reference.schema() else {
                continue;
            };
            let ours = reference.catalog().is_none_or(|c| c == CATALOG);
            if ours
                && schema != "information_schema"
                && !readable.iter().any(|w| w.as_str() == schema)
                && let Ok(ws) = Workspace::new(schema)
            {
                return Err(QueryError::Workspace(ws));
            }
        }
    }
    let mut plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| classify(e, limits))?;
    if !params.is_empty() {
        plan = plan
            .with_param_values(params)
            .map_err(|e| classify(e, limits))?;
    }
    sandbox::check(&plan)?;
    Ok(plan)
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; shut it down in
        // the background instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn classify(e: DataFusionError, limits: QueryLimits) -> QueryError {
    let root = e.find_root();
    match root {
        DataFusionError::ResourcesExhausted(message) => QueryError::Memory {
            limit: limits.memory_bytes,
            message: message.clone(),
        },
        DataFusionError::External(e) if e.is::<sandbox::Refused>() => {
            QueryError::NotAllowed(e.to_string())
        }
        DataFusionError::External(_)
        | DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_) => QueryError::Internal(root.to_string()),
        _ => QueryError::Sql(root.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queries_wait_for_the_replay_of_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(10),
            max_json_bytes: 1 << 20,
        };
        let url = crate::storage::parse_location(&dir.path().to_string_lossy()).unwrap();
        let storage = Storage::open(url, "test".into(), true).await.unwrap();
        let catalog = Arc::new(Catalog::open(&storage, false).await);
        let engine = QueryEngine::new(Arc::new(storage), catalog, None, limits)
            .unwrap()
            .with_ready(|| false);
        let ws = Workspace::new("default").unwrap();
        let err = engine.sql(&ws, "SELECT 1").await.err();
        assert!(matches!(err, Some(QueryError::Starting)), "{err:?}");
        let answer = crate::error::ApiError::Query(QueryError::Starting);
        assert_eq!(
            answer.http_status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer.to_grpc_status().code(), tonic::Code::Unavailable);
    }
}
