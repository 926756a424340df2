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
mod restore;
pub mod sandbox;
mod table;
mod traces;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::buffer::Buffer;
use crate::catalog::{Catalog, TraceView};
use crate::storage::Storage;
use crate::workspace::Workspace;

pub use table::SpansTable;
pub use traces::{TraceLoader, TracesTable, traces_schema};

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
    #[error("not allowed: {0}; only read-only queries (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) are")]
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
}

impl QueryStream {
    /// The next batch; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        self.batches.recv().await
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
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime is shut down".into()))?;
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
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2)
            .with_default_catalog_and_schema("spanlake", workspace.as_str());
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
        let spans = restore::spans_view(Arc::new(table.clone()))
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        ctx.register_table("spans", Arc::new(spans))
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let traces = TracesTable::new(self.loader.clone(), workspace.clone(), table.clone());
        ctx.register_table("traces", Arc::new(traces))
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(ctx)
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
        let limits = self.limits;
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime is shut down".into()))?;
        let (planned, schema) = oneshot::channel();
        let (tx, batches) = mpsc::channel(2);
        let running = self.running.clone();
        let pool = self.runtime_env.memory_pool.clone();
        runtime.spawn(async move {
            let start = async {
                let plan = ctx
                    .state()
                    .create_logical_plan(&sql)
                    .await
                    .map_err(|e| classify(e, limits))?;
                sandbox::check(&plan)?;
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
                let next = tokio::time::timeout_at(deadline, stream.next()).await;
                let item = match next {
                    Ok(None) => break,
                    Ok(Some(batch)) => batch.map_err(|e| classify(e, limits)),
                    Err(_) => Err(QueryError::Timeout(limits.timeout)),
                };
                let last = item.is_err();
                let sent = tokio::time::timeout_at(deadline, tx.send(item)).await;
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
        Ok(QueryStream { schema, batches })
    }
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
