//! The `spans` table of one workspace: the data files of one version of the Delta table
//! (pruned by hour and by their `start_time` bounds from the filters on `start_time`; time
//! columns read exactly, see [`crate::storage::files`]; dictionaries compacted per batch,
//! see [`super::compact`]) ∪ the not-yet-flushed buffer, whose chunks are expanded into the
//! `spans` schema slice by slice as the scan pulls them (only the projected columns), so a
//! scan of the buffer never holds more than one bounded slice per partition.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use super::compact::CompactDictionaries;
use crate::buffer::Buffer;
use crate::chunk::SpanChunk;
use crate::schema::{col, spans_schema};
use crate::storage::files::{ScanFile, scan};
use crate::storage::{DataFile, Storage};
use crate::time::NANOS_PER_HOUR;
use crate::workspace::Workspace;

/// A consistent snapshot of one workspace's spans.
#[derive(Debug, Clone)]
pub struct SpansTable {
    /// The table version the files are of.
    version: Option<u64>,
    /// The workspace's files with their URLs.
    files: Vec<(Arc<DataFile>, url::Url)>,
    chunks: Vec<SpanChunk>,
}

impl SpansTable {
    /// Takes the workspace's files of the version queries read and copies its buffered
    /// chunks (Arc clones), both under the buffer's publication lock.
    pub fn snapshot(storage: &Storage, workspace: &Workspace, buffer: Option<&Buffer>) -> Self {
        let take = || {
            let version = storage.files();
            let files = version
                .of(workspace.as_str())
                .iter()
                .filter_map(|f| Some((f.clone(), version.url(f)?)))
                .collect();
            Self {
                version: version.version,
                files,
                chunks: buffer.map(|b| b.snapshot(workspace)).unwrap_or_default(),
            }
        };
        match buffer {
            Some(buffer) => buffer.read_published(take),
            None => take(),
        }
    }
}

impl SpansTable {
    /// The table version of the snapshot's files.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The snapshot's data files with their URLs.
    pub fn files(&self) -> &[(Arc<DataFile>, url::Url)] {
        &self.files
    }

    /// The snapshot's buffered chunks.
    pub fn chunks(&self) -> &[SpanChunk] {
        &self.chunks
    }

    /// The same snapshot with only the data files `keep` accepts (the buffer whole).
    pub fn only(&self, keep: impl Fn(&DataFile) -> bool) -> Self {
        Self {
            version: self.version,
            files: self
                .files
                .iter()
                .filter(|(f, _)| keep(f))
                .cloned()
                .collect(),
            chunks: self.chunks.clone(),
        }
    }
}

/// The `[lower, upper]` bounds on `start_time` (ns) that `filters` imply.
fn time_bounds(filters: &[Expr]) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    for conj in filters.iter().flat_map(split_conjunction) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conj else {
            continue;
        };
        let (op, value) = match (
            is_start_time(left),
            timestamp_ns(right),
            is_start_time(right),
            timestamp_ns(left),
        ) {
            (true, Some(v), _, _) => (*op, v),
            (_, _, true, Some(v)) => match op.swap() {
                Some(op) => (op, v),
                None => continue,
            },
            _ => continue,
        };
        match op {
            Operator::Gt | Operator::GtEq => lo = Some(lo.map_or(value, |l| l.max(value))),
            Operator::Lt | Operator::LtEq => hi = Some(hi.map_or(value, |h| h.min(value))),
            Operator::Eq => {
                lo = Some(lo.map_or(value, |l| l.max(value)));
                hi = Some(hi.map_or(value, |h| h.min(value)));
            }
            _ => {}
        }
    }
    (lo, hi)
}

fn is_start_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == col::START_TIME)
}

fn timestamp_ns(e: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = e else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        spans_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (lo, hi) = time_bounds(filters);
        let files: Vec<ScanFile> = self
            .files
            .iter()
            .filter(|(f, _)| {
                let (first, last) = f.start_ns.unwrap_or((
                    f.hour.saturating_mul(NANOS_PER_HOUR),
                    (f.hour + 1).saturating_mul(NANOS_PER_HOUR) - 1,
                ));
                lo.is_none_or(|l| last >= l) && hi.is_none_or(|h| first <= h)
            })
            .map(|(f, url)| ScanFile::at(url, f.size))
            .collect::<Result<_>>()?;
        let mut plans = Vec::with_capacity(2);
        if !files.is_empty() {
            let partitions = state.config().target_partitions();
            let scan = scan(state, &files, projection, limit, partitions, None).await?;
            plans.push(Arc::new(CompactDictionaries::new(scan)) as Arc<dyn ExecutionPlan>);
        }
        let buffered = BufferedSpans::new(self.chunks.clone(), projection.cloned())?;
        let schema = buffered.schema.clone();
        plans.push(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::new(buffered)],
            None,
            Vec::new(),
            false,
            limit,
        )?));
        UnionExec::try_new(plans)
    }
}

/// The buffered chunks of a snapshot as one stream of `spans` rows.
#[derive(Debug)]
struct BufferedSpans {
    chunks: Arc<[SpanChunk]>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
}

impl BufferedSpans {
    fn new(chunks: Vec<SpanChunk>, projection: Option<Vec<usize>>) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(spans_schema().project(p)?),
            None => spans_schema(),
        };
        Ok(Self {
            chunks: chunks.into(),
            projection,
            schema,
        })
    }
}

impl PartitionStream for BufferedSpans {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let chunks = self.chunks.clone();
        let projection = self.projection.clone();
        // Each slice is expanded only when the consumer asks for it.
        let slices = (0..chunks.len())
            .flat_map(move |c| chunks[c].expand(projection.clone()))
            .map(|r| r.map_err(datafusion::error::DataFusionError::from));
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            tokio_stream::iter(slices),
        ))
    }
}
