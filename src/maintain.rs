//! Maintenance of the table: compaction, retention and vacuum, in the background.
//!
//! Input: the committed files of the table (never the buffer). Output: commits that merge
//! the small files of closed hours (compaction), that remove whole hours older than
//! `--retention` (retention), and deletions of files no version needs any more (vacuum).
//!
//! Invariants:
//! - compaction reads one hour's small files, each sorted by (trace_id, start_time), as
//!   one sorted merge (a batch per file in memory, whatever their size), drops repeated
//!   (trace_id, span_id) pairs (a client's retry; the first stored copy wins), writes
//!   files of about `--compact-target-bytes`, and commits adds and removes in one commit
//!   with `dataChange = false` and an application transaction per workspace
//!   (`spanlake-compact-<ws>`), so two compactions of one workspace conflict; a conflict,
//!   or an input another writer already removed, abandons the attempt (its files are
//!   deleted) instead of retrying, so two nodes never both merge the same files; after
//!   any other error the log is asked whether the commit happened, and the files are
//!   never deleted unless it surely did not;
//! - retention removes whole partitions with one commit per pass; appends that conflict
//!   with it are retried by their writers;
//! - vacuum deletes a removed file only once it has been removed longer than the query
//!   timeout plus `--vacuum-grace` (a query reads the version it started on), and files no commit
//!   references only after a day (a flush or compaction between writing a file and
//!   committing it is far shorter);
//! - nothing here holds a lock ingest waits for; the table's commit lock is held only for
//!   the commit itself.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::{Action, Transaction};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::flush::{
    FlushError, SHARED_DICTIONARY_BYTES, Staging, discard, partition_path, remove_staged,
    sync_parents, upload, write_data_file,
};
use crate::schema::{col, path, spans_schema};
use crate::storage::files::{ScanFile, scan};
use crate::storage::{DataFile, Storage, remove};
use crate::time::NANOS_PER_HOUR;

/// An hour is closed (its files may be merged) this long after it ended.
const CLOSED_AFTER: Duration = Duration::from_secs(5 * 60);
/// Files merged by one compaction at most (the merge holds a batch of each).
const MAX_INPUTS: usize = 64;
/// Files no commit references are deleted once this old.
const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);
/// How often vacuum looks for files no commit references.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Memory a compaction's merge may use.
const MERGE_MEMORY: usize = 256 << 20;

/// What maintenance does and how often.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// The size compaction aims at.
    pub target_bytes: u64,
    /// How often a pass runs (zero: never).
    pub interval: Duration,
    /// Hours that ended longer ago than this are removed.
    pub retention: Option<Duration>,
    /// How long vacuum keeps a removed file: the query timeout plus a grace period (a
    /// query reads the version it started on until it ends).
    pub keep_removed: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassSummary {
    /// Hours compacted.
    pub compacted_hours: usize,
    /// Files merged away.
    pub merged_files: usize,
    /// Duplicate spans dropped.
    pub duplicates: u64,
    /// Files removed by retention.
    pub expired_files: usize,
    /// Files vacuum deleted.
    pub vacuumed_files: usize,
}

/// Runs maintenance passes until `shutdown`.
pub async fn run(
    storage: Arc<Storage>,
    catalog: Arc<Catalog>,
    data_dir: std::path::PathBuf,
    config: MaintenanceConfig,
    shutdown: CancellationToken,
) {
    if config.interval.is_zero() {
        return;
    }
    let mut last_orphan_scan = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
        let orphans = last_orphan_scan.elapsed() >= ORPHAN_SCAN_EVERY;
        if orphans {
            last_orphan_scan = Instant::now();
        }
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = run_pass(&storage, Some(&catalog), &data_dir, &config, orphans) => pass,
        };
        match pass {
            Ok(s) if s != PassSummary::default() => info!(
                compacted_hours = s.compacted_hours,
                merged_files = s.merged_files,
                duplicates = s.duplicates,
                expired_files = s.expired_files,
                vacuumed_files = s.vacuumed_files,
                "Maintained the table."
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "Table maintenance failed; it is retried on the next pass.")
            }
        }
    }
}

/// One pass: retention, compaction of every closed hour with small files, vacuum.
pub async fn run_pass(
    storage: &Storage,
    catalog: Option<&Catalog>,
    data_dir: &Path,
    config: &MaintenanceConfig,
    orphans: bool,
) -> Result<PassSummary, FlushError> {
    let mut summary = PassSummary::default();
    if let Some(retention) = config.retention {
        summary.expired_files = expire(storage, retention).await?;
    }
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let closed_before = now_ns.saturating_sub(CLOSED_AFTER.as_nanos() as i64);
    let small = config.target_bytes / 2;
    let mut groups: BTreeMap<(String, i64), Vec<Arc<DataFile>>> = BTreeMap::new();
    for f in storage.files().all() {
        if f.size < small && (f.hour + 1).saturating_mul(NANOS_PER_HOUR) <= closed_before {
            groups
                .entry((f.workspace.clone(), f.hour))
                .or_default()
                .push(f.clone());
        }
    }
    for ((workspace, hour), mut files) in groups {
        if files.len() < 2 {
            continue;
        }
        files.truncate(MAX_INPUTS);
        match compact(
            storage,
            catalog,
            data_dir,
            &workspace,
            hour,
            &files,
            config.target_bytes,
        )
        .await
        {
            Ok(Some(d)) => {
                summary.compacted_hours += 1;
                summary.merged_files += files.len();
                summary.duplicates += d;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(workspace, hour, error = %e, "Compacting an hour failed; it is retried on the next pass.")
            }
        }
    }
    if let Some(catalog) = catalog
        && (summary.compacted_hours > 0 || summary.expired_files > 0)
    {
        catalog.changed();
    }
    summary.vacuumed_files = vacuum(storage, config.keep_removed, orphans).await?;
    if let Some(index) = catalog.and_then(Catalog::index) {
        // The index table is never needed for correctness: its failures are only logged.
        match index.vacuum(config.keep_removed).await {
            Ok(n) => summary.vacuumed_files += n,
            Err(e) => {
                warn!(error = %e, "Vacuuming the trace index table failed; it is retried on the next pass.")
            }
        }
    }
    Ok(summary)
}

/// Removes every partition whose hour ended longer than `retention` ago; returns the
/// files removed.
pub async fn expire(storage: &Storage, retention: Duration) -> Result<usize, FlushError> {
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let cutoff = now_ns.saturating_sub(retention.as_nanos().min(i64::MAX as u128) as i64);
    let expired: Vec<Arc<DataFile>> = storage
        .files()
        .all()
        .filter(|f| (f.hour + 1).saturating_mul(NANOS_PER_HOUR) <= cutoff)
        .cloned()
        .collect();
    if expired.is_empty() {
        return Ok(0);
    }
    crate::fault::hit(crate::fault::RETENTION_COMMIT)
        .map_err(crate::flush::io_at(Path::new("retention")))?;
    let actions = expired
        .iter()
        .map(|f| Action::Remove(remove(f, true)))
        .collect();
    // No predicate: a predicate is a read set for the conflict check, and retention reads
    // nothing a concurrent append adds.
    storage
        .commit(
            actions,
            DeltaOperation::Delete { predicate: None },
            Vec::new(),
            false,
        )
        .await?;
    info!(
        files = expired.len(),
        "Removed the partitions past the retention."
    );
    Ok(expired.len())
}

/// Merges `files` (one hour of one workspace) into files of about `target` bytes, without
/// repeated spans; returns the duplicates dropped, or `None` if another writer's commit
/// won.
async fn compact(
    storage: &Storage,
    catalog: Option<&Catalog>,
    data_dir: &Path,
    workspace: &str,
    hour: i64,
    files: &[Arc<DataFile>],
    target: u64,
) -> Result<Option<u64>, FlushError> {
    let version = storage.files();
    let inputs: Vec<ScanFile> = files
        .iter()
        .filter_map(|f| Some(ScanFile::at(&version.url(f)?, f.size)))
        .collect::<Result<_, _>>()
        .map_err(|e| FlushError::Task(e.to_string()))?;
    let ctx = merge_session(storage)?;
    let state = ctx.state();
    let schema = spans_schema();
    let key = |name: &str| -> Result<PhysicalSortExpr, FlushError> {
        Ok(PhysicalSortExpr::new_default(Arc::new(
            Column::new_with_schema(name, &schema).map_err(|e| FlushError::Task(e.to_string()))?,
        )))
    };
    let ordering = LexOrdering::new(vec![key(col::TRACE_ID)?, key(col::START_TIME)?])
        .ok_or_else(|| FlushError::Task("empty ordering".into()))?;
    let inputs_plan = scan(
        &state,
        &inputs,
        None,
        None,
        inputs.len(),
        Some(ordering.clone()),
    )
    .await
    .map_err(|e| FlushError::Task(e.to_string()))?;
    let merged = Arc::new(SortPreservingMergeExec::new(ordering, inputs_plan));
    let stream = merged
        .execute(0, ctx.task_ctx())
        .map_err(|e| FlushError::Task(e.to_string()))?;

    let rows_in: u64 = files.iter().map(|f| f.rows.unwrap_or(0)).sum();
    let bytes_in: u64 = files.iter().map(|f| f.size).sum();
    let rows_per_file = if rows_in == 0 {
        u64::MAX
    } else {
        (target as u128 * rows_in as u128 / bytes_in.max(1) as u128).max(1) as u64
    };
    let staging = Staging::of(storage, data_dir);
    let runtime = tokio::runtime::Handle::current();
    let (root, ws) = (staging.root.clone(), workspace.to_string());
    let written = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        let mut dedup = Dedup::default();
        let mut next = || -> Option<Result<RecordBatch, FlushError>> {
            loop {
                match runtime.block_on(stream.next())? {
                    Ok(batch) => match dedup.keep(&batch) {
                        Ok(b) if b.num_rows() == 0 => continue,
                        r => return Some(r),
                    },
                    Err(e) => return Some(Err(FlushError::Task(e.to_string()))),
                }
            }
        };
        let mut out = Vec::new();
        let mut pending: Option<RecordBatch> = None;
        loop {
            let first = match pending.take().map(Ok).or_else(&mut next) {
                None => break,
                Some(Err(e)) => return Err((e, out)),
                Some(Ok(b)) => b,
            };
            let relative = format!(
                "{}/{}.{}",
                partition_path(&ws, hour),
                ulid::Ulid::new(),
                path::PARQUET_EXT
            );
            let rows = std::cell::Cell::new(first.num_rows() as u64);
            let rest = std::iter::from_fn(|| {
                if rows.get() >= rows_per_file {
                    return None;
                }
                let b = next()?;
                if let Ok(b) = &b {
                    rows.set(rows.get() + b.num_rows() as u64);
                }
                Some(b)
            });
            let batches = std::iter::once(Ok(first)).chain(rest);
            match write_data_file(&root.join(&relative), SHARED_DICTIONARY_BYTES, batches) {
                Ok(facts) => out.push(facts.new_file(relative, &ws, hour)),
                Err(e) => return Err((e, out)),
            }
        }
        Ok((out, dedup.dropped))
    })
    .await
    .map_err(|e| FlushError::Task(e.to_string()))?;
    let (new, dropped) = match written {
        Ok(w) => w,
        Err((e, out)) => {
            remove_staged(&staging, &out);
            return Err(e);
        }
    };
    let finish = async {
        sync_parents(&staging, &new)?;
        if staging.upload {
            upload(storage, &staging, &new).await?;
        }
        crate::fault::hit(crate::fault::COMPACT_COMMIT)
            .map_err(crate::flush::io_at(Path::new("compaction")))?;
        let mut actions: Vec<Action> = new.iter().map(|f| Action::Add(f.add(false))).collect();
        actions.extend(files.iter().map(|f| Action::Remove(remove(f, false))));
        // Removes without a data change are invisible to the conflict check, so two
        // compactions of one workspace are made to conflict through this transaction.
        let now = chrono::Utc::now().timestamp_millis();
        let claim = Transaction::new_with_last_update(
            format!("spanlake-compact-{workspace}"),
            now,
            Some(now),
        );
        storage
            .commit(
                actions,
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: target as i64,
                },
                vec![claim],
                false,
            )
            .await
            .map_err(FlushError::from)
    };
    match finish.await {
        Ok(_) => {
            if let Some(catalog) = catalog {
                catalog.committed(&new);
            }
            Ok(Some(dropped))
        }
        Err(FlushError::Storage(e)) if e.is_conflict() => {
            info!(
                workspace,
                hour,
                "Another writer changed these files first; compaction of this hour is left to it."
            );
            discard(storage, &staging, &new).await;
            Ok(None)
        }
        // Storage::commit already asked the log whether an answered-with-an-error commit
        // happened; when it cannot tell, the files stay (unreferenced ones go to vacuum).
        Err(e) => Err(e),
    }
}

/// A session for one merge, with a bounded pool.
fn merge_session(storage: &Storage) -> Result<SessionContext, FlushError> {
    let env = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(MERGE_MEMORY)))
        .build_arc()
        .map_err(|e| FlushError::Task(e.to_string()))?;
    if let Some((bucket, store)) = storage.remote_store() {
        env.register_object_store(&bucket, store);
    }
    let config = SessionConfig::new().with_batch_size(8192);
    Ok(SessionContext::new_with_config_rt(config, env))
}

/// Drops rows whose (trace_id, span_id) was seen before: rows arrive sorted by trace id,
/// so only the span ids of the current trace are remembered.
#[derive(Default)]
struct Dedup {
    trace: String,
    spans: HashSet<String>,
    dropped: u64,
}

impl Dedup {
    fn keep(&mut self, batch: &RecordBatch) -> Result<RecordBatch, FlushError> {
        let traces = batch
            .column_by_name(col::TRACE_ID)
            .ok_or_else(|| FlushError::Task("no trace_id".into()))?
            .as_string::<i32>();
        let spans = batch
            .column_by_name(col::SPAN_ID)
            .ok_or_else(|| FlushError::Task("no span_id".into()))?
            .as_string::<i32>();
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let trace = traces.value(i);
            if trace != self.trace {
                self.trace = trace.to_string();
                self.spans.clear();
            }
            let new = self.spans.insert(spans.value(i).to_string());
            if !new {
                self.dropped += 1;
            }
            keep.push(new);
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
    }
}

/// Deletes files removed longer ago than `keep_removed` (and, with `orphans`, files no
/// commit references that are older than a day); returns how many.
pub async fn vacuum(
    storage: &Storage,
    keep_removed: Duration,
    orphans: bool,
) -> Result<usize, FlushError> {
    let table = storage.table().await;
    if table.snapshot().is_err() {
        return Ok(0);
    }
    let (mode, keep) = if orphans {
        (VacuumMode::Full, ORPHAN_AGE)
    } else {
        (VacuumMode::Lite, keep_removed)
    };
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(1));
    let before = table.version().unwrap_or(0);
    let (after, metrics) = table
        .vacuum()
        .with_mode(mode)
        .with_retention_period(keep)
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| {
            FlushError::Storage(crate::storage::StorageError::Delta {
                url: storage.url().to_string(),
                source: Box::new(e),
            })
        })?;
    // Vacuum commits through its own handle: make its log entries durable too.
    storage.sync_versions(before, after.version().unwrap_or(before))?;
    Ok(metrics.files_deleted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn repeated_spans_of_a_trace_are_dropped_across_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::TRACE_ID, DataType::Utf8, false),
            Field::new(col::SPAN_ID, DataType::Utf8, false),
        ]));
        let batch = |t: &[&str], s: &[&str]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(t.to_vec())),
                    Arc::new(StringArray::from(s.to_vec())),
                ],
            )
            .unwrap()
        };
        let mut d = Dedup::default();
        assert_eq!(
            d.keep(&batch(&["a", "a", "a"], &["1", "2", "1"]))
                .unwrap()
                .num_rows(),
            2
        );
        assert_eq!(
            d.keep(&batch(&["a", "b"], &["2", "1"])).unwrap().num_rows(),
            1
        );
        assert_eq!(d.dropped, 2);
    }
}
