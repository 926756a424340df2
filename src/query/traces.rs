//! The `traces` table of one workspace, backed by the trace index: one row per trace of a
//! snapshot (one version's files ∪ the buffer), from the merged index rows
//! ([`crate::catalog`]), never by re-deriving traces from all spans.
//!
//! Input: a snapshot of `spans` ([`SpansTable`]). Output: rows of the `traces` schema
//! ([`traces_schema`]). Invariants: the rows follow the trace rules of
//! [`crate::summary`] (root, rollups, null sums), the same the API's listing shows;
//! `input`/`output` (the root span's, not in the index) are read from the spans only when a
//! query asks for them, joined by (trace id, root span id); index rows of files not yet in
//! memory are loaded from the index table, or summarized from the data file.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::functions_aggregate::expr_fn::min;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlanBuilder, TableType, col};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;

use super::{QueryError, SpansTable};
use crate::catalog::{Catalog, TraceView};
use crate::schema::{col as span_col, column_index, timestamp_type};
use crate::storage::DataFile;
use crate::storage::files::{ScanFile, scan};
use crate::summary::{
    COST_COLUMNS, FileRows, SUMMARY_COLUMNS, Summarizer, TOKEN_COLUMNS, TraceRow, merge_sorted,
};
use crate::workspace::Workspace;

/// About the bytes of a trace in the `traces` table's batch (ids, names, numbers).
const BYTES_PER_TRACE: usize = 200;

/// Data files whose trace index rows are loaded at once.
const LOAD_CONCURRENCY: usize = 8;

/// Builds [`TraceView`]s of snapshots, loading index rows the catalog lacks.
#[derive(Debug)]
pub struct TraceLoader {
    pub(super) catalog: Arc<Catalog>,
    /// Held while files' rows are loaded, so that concurrent requests (and the warm-up
    /// after a start) load each file once.
    pub(super) loading: tokio::sync::Mutex<()>,
    pub(super) runtime_env: Arc<RuntimeEnv>,
}

impl TraceLoader {
    /// Every trace of the snapshot `table` of `workspace`, from the trace index: the
    /// merged rows of its files kept between requests, the buffer's summarized on top.
    pub async fn view(
        &self,
        workspace: &Workspace,
        table: &SpansTable,
    ) -> Result<TraceView, QueryError> {
        let catalog = &self.catalog;
        // Each file's rows: in memory, else from the index table, else summarized from the
        // file itself (a few files at a time). Rows are taken as loaded here, never looked
        // up again: another request may forget a file this snapshot still holds.
        let mut rows: Vec<Option<FileRows>> = table
            .files()
            .iter()
            .map(|(f, _)| catalog.rows_of(&f.path))
            .collect();
        let _loading = if rows.iter().any(Option::is_none) {
            let guard = self.loading.lock().await;
            // Another request may have loaded them meanwhile.
            for (slot, (f, _)) in rows.iter_mut().zip(table.files()) {
                if slot.is_none() {
                    *slot = catalog.rows_of(&f.path);
                }
            }
            Some(guard)
        } else {
            None
        };
        let missing: Vec<(usize, Arc<DataFile>, url::Url)> = table
            .files()
            .iter()
            .enumerate()
            .filter(|(i, _)| rows[*i].is_none())
            .map(|(i, (f, u))| (i, f.clone(), u.clone()))
            .collect();
        let mut loads =
            futures::stream::iter(missing.into_iter().map(|(i, file, url)| async move {
                self.load_rows(file, url).await.map(|loaded| (i, loaded))
            }))
            .buffer_unordered(LOAD_CONCURRENCY);
        while let Some(loaded) = loads.next().await {
            let (i, (file, loaded)) = loaded?;
            catalog.offer(&file.path, loaded.clone());
            rows[i] = Some(loaded);
        }
        drop(loads);
        let files: Vec<(Arc<DataFile>, FileRows)> = table
            .files()
            .iter()
            .zip(rows)
            .map(|((f, _), rows)| {
                let rows = rows.ok_or_else(|| {
                    QueryError::Internal(format!(
                        "the trace index rows of {} were not loaded",
                        f.path
                    ))
                })?;
                Ok((f.clone(), rows))
            })
            .collect::<Result<_, QueryError>>()?;
        let merged = catalog.merged(workspace.as_str(), table.version(), &files);
        let projection: Vec<usize> = SUMMARY_COLUMNS.iter().map(|c| column_index(c)).collect();
        let mut buffered = Summarizer::default();
        for chunk in table.chunks() {
            for batch in chunk.expand(Some(projection.clone())) {
                buffered
                    .push(&batch.map_err(|e| QueryError::Internal(e.to_string()))?)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
            }
        }
        Ok(TraceView::new(merged, files, buffered.finish()))
    }

    /// The trace index rows of a data file: its index file, else the file summarized.
    async fn load_rows(
        &self,
        file: Arc<DataFile>,
        url: url::Url,
    ) -> Result<(Arc<DataFile>, FileRows), QueryError> {
        if let Some(index) = self.catalog.index().filter(|i| i.has(&file.path)) {
            match index.read(&file.path).await {
                // Sorted and one row per trace, whoever wrote the file.
                Ok(rows) => return Ok((file, merge_sorted(rows).into())),
                Err(e) => {
                    tracing::warn!(error = %e, "An index file is unreadable; summarizing its data file instead.")
                }
            }
        }
        let rows = self.summarize_file(&file, &url).await?;
        Ok((file, rows))
    }

    /// The trace index rows of a data file, read from it.
    async fn summarize_file(
        &self,
        file: &DataFile,
        url: &url::Url,
    ) -> Result<FileRows, QueryError> {
        let state = SessionStateBuilder::new()
            .with_runtime_env(self.runtime_env.clone())
            .with_default_features()
            .build();
        let internal =
            |e: DataFusionError| QueryError::Internal(format!("reading {}: {e}", file.path));
        let projection: Vec<usize> = SUMMARY_COLUMNS.iter().map(|c| column_index(c)).collect();
        let files = [ScanFile::at(url, file.size).map_err(internal)?];
        let plan = scan(&state, &files, Some(&projection), None, 1, None)
            .await
            .map_err(internal)?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx())
            .await
            .map_err(internal)?;
        let mut rows = Summarizer::default();
        for batch in &batches {
            rows.push(batch)
                .map_err(|e| QueryError::Internal(format!("reading {}: {e}", file.path)))?;
        }
        Ok(rows.finish().into())
    }
}

/// The columns of `traces`, in order.
pub fn traces_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
            let mut fields = vec![
                text("id", false),
                text("root_span_id", false),
                text("name", false),
                text("session_id", true),
                text("service_name", true),
                Field::new("started_at", timestamp_type(), false),
                Field::new("ended_at", timestamp_type(), true),
                Field::new("duration_ms", DataType::Float64, true),
                text("status", false),
                text("experiment_id", true),
                text("test_case_id", true),
                text(INPUT, true),
                text(OUTPUT, true),
            ];
            fields.extend(
                TOKEN_COLUMNS
                    .iter()
                    .map(|c| Field::new(*c, DataType::Int64, true)),
            );
            fields.extend(
                COST_COLUMNS
                    .iter()
                    .map(|c| Field::new(*c, DataType::Float64, true)),
            );
            fields.push(Field::new("span_count", DataType::Int64, false));
            fields.push(Field::new("error_count", DataType::Int64, false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

const INPUT: &str = span_col::INPUT;
const OUTPUT: &str = span_col::OUTPUT;

/// The index's columns of `traces` (all but `input`/`output`) for `rows`.
fn index_batch(rows: &[&TraceRow]) -> Result<RecordBatch> {
    let schema = traces_schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != INPUT && f.name() != OUTPUT)
        .map(|f| f.as_ref().clone())
        .collect();
    let text = |f: &dyn Fn(&TraceRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(r)).collect::<StringArray>())
    };
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(v).with_timezone(crate::schema::UTC))
    };
    let mut columns: Vec<ArrayRef> = vec![
        text(&|r| Some(&r.trace_id)),
        text(&|r| Some(&r.root.span_id)),
        text(&|r| Some(&r.root.name)),
        text(&|r| r.root.session_id.as_deref()),
        text(&|r| r.root.service_name.as_deref()),
        ts(rows.iter().map(|r| Some(r.root.start_ns)).collect()),
        ts(rows.iter().map(|r| r.max_end_ns).collect()),
        Arc::new(
            rows.iter()
                .map(|r| r.max_end_ns.map(|e| (e - r.root.start_ns) as f64 / 1e6))
                .collect::<Float64Array>(),
        ),
        text(&|r| Some(r.status().as_str())),
        text(&|r| r.root.experiment_id.as_deref()),
        text(&|r| r.root.test_case_id.as_deref()),
    ];
    for k in 0..TOKEN_COLUMNS.len() {
        columns.push(Arc::new(
            rows.iter().map(|r| r.tokens[k]).collect::<Int64Array>(),
        ));
    }
    for k in 0..COST_COLUMNS.len() {
        columns.push(Arc::new(
            rows.iter().map(|r| r.costs[k]).collect::<Float64Array>(),
        ));
    }
    columns.push(Arc::new(
        rows.iter().map(|r| Some(r.spans)).collect::<Int64Array>(),
    ));
    columns.push(Arc::new(
        rows.iter().map(|r| Some(r.errors)).collect::<Int64Array>(),
    ));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// `traces` over one snapshot.
#[derive(Debug)]
pub struct TracesTable {
    loader: Arc<TraceLoader>,
    workspace: Workspace,
    spans: SpansTable,
}

impl TracesTable {
    /// The traces of the snapshot `spans` of `workspace`.
    pub fn new(loader: Arc<TraceLoader>, workspace: Workspace, spans: SpansTable) -> Self {
        Self {
            loader,
            workspace,
            spans,
        }
    }
}

fn external(e: QueryError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for TracesTable {
    fn schema(&self) -> SchemaRef {
        traces_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let view = self
            .loader
            .view(&self.workspace, &self.spans)
            .await
            .map_err(external)?;
        // The rows are copied into one batch: its size must fit the query pool first.
        let reservation =
            MemoryConsumer::new("the traces table").register(&state.runtime_env().memory_pool);
        reservation.try_grow(view.len().saturating_mul(BYTES_PER_TRACE))?;
        let rows: Vec<&TraceRow> = view.rows().collect();
        let batch = index_batch(&rows)?;
        drop(reservation);
        let schema = traces_schema();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let needs_text = wanted
            .iter()
            .any(|&i| matches!(schema.field(i).name().as_str(), INPUT | OUTPUT));
        if !needs_text {
            // Every column but input/output comes from the index alone.
            let index_schema = batch.schema();
            let positions = wanted
                .iter()
                .map(|&i| index_schema.index_of(schema.field(i).name()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            return Ok(MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                index_schema,
                Some(positions),
            )?);
        }
        // The root spans' input and output, joined in (a span stored twice gives one): the
        // spans are first narrowed to the root spans (a semi join whose hash table holds
        // the roots, not the spans), so the grouping holds a row per trace, not per span.
        let index = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?);
        let text_columns = [span_col::TRACE_ID, span_col::SPAN_ID, INPUT, OUTPUT]
            .map(column_index)
            .to_vec();
        let id_columns = ["id", "root_span_id"]
            .iter()
            .map(|c| index.schema().index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let roots =
            LogicalPlanBuilder::scan("r", provider_as_source(index.clone()), Some(id_columns))?
                .build()?;
        let spans = LogicalPlanBuilder::from(roots)
            .join(
                LogicalPlanBuilder::scan(
                    "s",
                    provider_as_source(Arc::new(self.spans.clone())),
                    Some(text_columns),
                )?
                .build()?,
                JoinType::RightSemi,
                (
                    vec!["id", "root_span_id"],
                    vec![span_col::TRACE_ID, span_col::SPAN_ID],
                ),
                None,
            )?
            .aggregate(
                vec![col(span_col::TRACE_ID), col(span_col::SPAN_ID)],
                vec![min(col(INPUT)).alias(INPUT), min(col(OUTPUT)).alias(OUTPUT)],
            )?
            .alias("s")?
            .build()?;
        let plan = LogicalPlanBuilder::scan("t", provider_as_source(index), None)?
            .join(
                spans,
                JoinType::Left,
                (
                    vec!["id", "root_span_id"],
                    vec![span_col::TRACE_ID, span_col::SPAN_ID],
                ),
                None,
            )?
            .project(
                wanted
                    .iter()
                    .map(|&i| {
                        let name = schema.field(i).name();
                        let side = if matches!(name.as_str(), INPUT | OUTPUT) {
                            "s"
                        } else {
                            "t"
                        };
                        Expr::Column(datafusion::common::Column::new(Some(side), name))
                    })
                    .collect::<Vec<_>>(),
            )?
            .build()?;
        state.create_physical_plan(&plan).await
    }
}
