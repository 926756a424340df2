//! Flush: buffered chunks → data files of the Delta table, one commit, then the WAL
//! checkpoint.
//!
//! Input: the [`Buffer`]'s chunks from WAL segments below a rotation point. Output: one
//! Parquet file per workspace and hour at
//! `<table>/workspace=<ws>/date=YYYY-MM-DD/hour=HH/<ulid>.parquet` (partitioned by span
//! start time, UTC; rows sorted by (trace_id, start_time, span_id), a span repeated in the flush written once; zstd; row groups of 128K rows;
//! page statistics; a bloom filter on trace_id; the time columns as
//! [`crate::storage::files`] lays them out), then one Delta commit that adds them and
//! records this node's WAL position. Rows are sorted by their keys alone and written in
//! slices of bounded size ([`crate::chunk::plan_slices`]), with a row group closed once
//! its encoded bytes pass [`ROW_GROUP_BYTES`], so a flush never holds the buffer expanded.
//!
//! Invariants: a file is in the log only once it is whole and durable (fsynced with its
//! directories on local disk; uploaded on S3); queries see the committed files and lose
//! the flushed chunks in one step, under the buffer's publication lock; the WAL checkpoint
//! moves, and segments are deleted, only after the commit is durable. A flush whose
//! commit failed keeps its files and is retried with them (never re-written), and a retry
//! first asks the log whether the commit happened. Old spans are never dropped: a span
//! from 2018 goes to `date=2018-…`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{SortColumn, concat, lexsort_to_indices};
use arrow::datatypes::TimestampNanosecondType;
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::buffer::{Buffer, Taken};
use crate::catalog::Catalog;
use crate::chunk::{FALLBACK, SpanChunk, gather, plan_slices};
use crate::fault;
use crate::metrics::Metrics;
use crate::schema::{col, file_schema, nested, path};
use crate::storage::files::to_file;
use crate::storage::{NewFile, Storage, StorageError};
use crate::summary::{Summarizer, TraceRow};
use crate::time::{civil_hour, hour_bucket};
use crate::wal::{Wal, WalError, WalPosition, sync_dir, write_checkpoint};
use crate::workspace::Workspace;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A row group is closed early once the writer holds this many encoded bytes.
pub const ROW_GROUP_BYTES: usize = 128 << 20;
/// Dictionary pages of the columns whose values repeat per resource or scope may grow to
/// at least this size before Parquet falls back to plain encoding, so that a large shared
/// value is stored once per row group rather than once per span.
pub const SHARED_DICTIONARY_BYTES: usize = 16 << 20;
/// The most a shared column's dictionary page may hold (a Parquet page size is an i32).
pub const MAX_DICTIONARY_BYTES: usize = 1 << 30;

/// The dictionary limit of the shared columns of a file written from `chunks`: room for
/// every distinct value of such a column (a resource's or scope's value is held once in its
/// chunk, a lifted column's own values once per span), so a file never holds a shared value
/// once per span, however large it is.
pub fn shared_dictionary_bytes(chunks: &[&SpanChunk]) -> usize {
    chunks
        .iter()
        .map(|c| c.memory_size())
        .fold(1 << 20, usize::saturating_add)
        .clamp(SHARED_DICTIONARY_BYTES, MAX_DICTIONARY_BYTES)
}

/// Flush failures; the chunks stay buffered and the WAL keeps them.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// Writing a file or the checkpoint failed.
    #[error("flush I/O failed at {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Assembling the batch failed.
    #[error("flush failed to assemble batches: {0}")]
    Arrow(#[from] ArrowError),
    /// Encoding Parquet failed.
    #[error("flush failed to encode Parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// Rotating the WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The Delta commit (or an upload) failed.
    #[error("flush commit failed: {0}")]
    Storage(#[from] StorageError),
    /// The blocking task died.
    #[error("flush task failed: {0}")]
    Task(String),
}

pub fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FlushError + '_ {
    move |source| FlushError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The Parquet writer settings of the storage layout; the dictionaries of the columns
/// whose values repeat per resource or scope may hold `shared_dictionary` bytes.
pub fn writer_properties(shared_dictionary: usize) -> WriterProperties {
    let shared = [
        vec![col::SERVICE_NAME],
        vec![col::SCOPE_NAME],
        vec![col::SCOPE_VERSION],
        vec![
            col::RESOURCE_ATTRIBUTES,
            nested::FILE_MAP_ENTRIES,
            nested::FILE_MAP_KEY,
        ],
        vec![
            col::RESOURCE_ATTRIBUTES,
            nested::FILE_MAP_ENTRIES,
            nested::FILE_MAP_VALUE,
        ],
    ]
    .into_iter()
    .chain(FALLBACK.iter().map(|c| vec![*c]));
    // Columns of values unique per span: a dictionary would only grow to its limit and
    // fall back (measured: 19% smaller files without, no slower); the integers among
    // them are delta-encoded (5% smaller again, sorted by trace they are close).
    let unique = [
        col::SPAN_ID,
        col::PARENT_SPAN_ID,
        col::START_TIME,
        col::START_TIME_UNIX_NANO,
        col::END_TIME,
        col::END_TIME_UNIX_NANO,
        col::DURATION_NS,
    ];
    let plain = unique.iter().fold(WriterProperties::builder(), |b, c| {
        b.set_column_dictionary_enabled(ColumnPath::from(*c), false)
    });
    let delta = unique[2..].iter().fold(plain, |b, c| {
        b.set_column_encoding(ColumnPath::from(*c), Encoding::DELTA_BINARY_PACKED)
    });
    shared
        .fold(delta, |b, path| {
            b.set_column_dictionary_page_size_limit(
                ColumnPath::new(path.into_iter().map(str::to_string).collect()),
                shared_dictionary,
            )
        })
        // Level 1: level 3 measured 20% slower for 3% smaller LLM files (and larger
        // microservice files).
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(ColumnPath::from(col::TRACE_ID), true)
        .set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: file_column(col::TRACE_ID),
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: file_column(col::START_TIME_UNIX_NANO),
                descending: false,
                nulls_first: false,
            },
        ]))
        .build()
}

/// The index of a column of the data files.
fn file_column(name: &str) -> i32 {
    file_schema()
        .index_of(name)
        .unwrap_or_else(|_| panic!("{name} is a column of the data files")) as i32
}

/// The directory of one hour of one workspace, relative to the table root.
pub fn partition_path(workspace: &str, hour: i64) -> String {
    let (y, m, d, h) = civil_hour(hour);
    format!(
        "{}{workspace}/{}{y:04}-{m:02}-{d:02}/{}{h:02}",
        path::WORKSPACE_PREFIX,
        path::DATE_PREFIX,
        path::HOUR_PREFIX
    )
}

/// Where a flush writes its files before they are committed: straight into the table's
/// directory on local disk, or into a local upload directory for object storage.
#[derive(Debug, Clone)]
pub struct Staging {
    /// The directory files are written under (at their path relative to the table).
    pub root: PathBuf,
    /// Whether they must be uploaded to the table's store before the commit.
    pub upload: bool,
}

impl Staging {
    /// The staging of a table: its own directory when local, else `<data-dir>/upload`.
    pub fn of(storage: &Storage, data_dir: &Path) -> Self {
        match storage.local_root() {
            Some(root) => Self {
                root: root.to_path_buf(),
                upload: false,
            },
            None => Self {
                root: data_dir.join(path::UPLOAD_DIR),
                upload: true,
            },
        }
    }

    /// Removes what a crash left in the upload directory (nothing there is committed).
    pub fn clean(&self) -> io::Result<()> {
        if self.upload {
            match std::fs::remove_dir_all(&self.root) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One span-level column of every chunk, concatenated (the sort keys: small columns).
fn key_column(chunks: &[&SpanChunk], name: &str) -> Result<ArrayRef, FlushError> {
    let arrays = chunks
        .iter()
        .map(|c| c.span_column(name).map(|a| a.as_ref() as &dyn Array))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ArrowError::SchemaError(format!("a chunk has no column {name}")))?;
    Ok(concat(&arrays)?)
}

/// The rows in order of (trace id, start time, span id). Ids in OTLP's form (lowercase hex
/// of 16 and 8 bytes) order as the integers they spell, so they are sorted as packed
/// integer keys; a flush holding any other id is sorted by Arrow over the three columns.
fn key_order(
    traces: &ArrayRef,
    start: &ArrayRef,
    spans: &ArrayRef,
) -> Result<Vec<u32>, ArrowError> {
    let (t, s) = (traces.as_string::<i32>(), spans.as_string::<i32>());
    let times = start.as_primitive::<TimestampNanosecondType>();
    let packed = (traces.null_count() == 0 && spans.null_count() == 0 && start.null_count() == 0)
        .then(|| {
            (0..t.len())
                .map(|i| {
                    let trace = lower_hex(t.value(i), 32)?;
                    let span = lower_hex(s.value(i), 16)?;
                    Some((trace, times.value(i), span as u64, i as u32))
                })
                .collect::<Option<Vec<_>>>()
        })
        .flatten();
    if let Some(mut keys) = packed {
        keys.sort_unstable();
        return Ok(keys.into_iter().map(|k| k.3).collect());
    }
    let column = |values: &ArrayRef| SortColumn {
        values: values.clone(),
        options: None,
    };
    let order = lexsort_to_indices(&[column(traces), column(start), column(spans)], None)?;
    Ok(order.values().to_vec())
}

/// The integer that `text` spells in exactly `digits` lowercase hex digits (at most 32).
fn lower_hex(text: &str, digits: usize) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != digits {
        return None;
    }
    bytes.iter().try_fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// Writes one workspace's chunks as one sorted, durable file per hour under `staging`; a
/// span the chunks hold twice (same trace id, span id and start time) is written once.
pub fn stage_workspace(
    staging: &Staging,
    workspace: &Workspace,
    chunks: &[SpanChunk],
) -> Result<Vec<NewFile>, FlushError> {
    let chunks: Vec<&SpanChunk> = chunks.iter().filter(|c| c.num_rows() > 0).collect();
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let start = key_column(&chunks, col::START_TIME)?;
    let traces = key_column(&chunks, col::TRACE_ID)?;
    let spans = key_column(&chunks, col::SPAN_ID)?;
    let order = key_order(&traces, &start, &spans)?;
    let located: Vec<(usize, usize)> = chunks
        .iter()
        .enumerate()
        .flat_map(|(c, chunk)| (0..chunk.num_rows()).map(move |r| (c, r)))
        .collect();
    let start = start.as_primitive::<TimestampNanosecondType>();
    let (traces, spans) = (traces.as_string::<i32>(), spans.as_string::<i32>());
    let mut hours: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    let mut previous: Option<usize> = None;
    for &i in &order {
        let i = i as usize;
        // A span sent twice (a client's retry) sorts next to itself: it is stored once.
        let repeated = previous.is_some_and(|p| {
            traces.value(p) == traces.value(i)
                && spans.value(p) == spans.value(i)
                && start.value(p) == start.value(i)
        });
        previous = Some(i);
        if repeated {
            continue;
        }
        hours
            .entry(hour_bucket(start.value(i)))
            .or_default()
            .push(located[i]);
    }
    drop(located);
    let mut files = Vec::with_capacity(hours.len());
    for (hour, rows) in hours {
        let relative = format!(
            "{}/{}.{}",
            partition_path(workspace.as_str(), hour),
            ulid::Ulid::new(),
            path::PARQUET_EXT
        );
        match write_file(&staging.root.join(&relative), &chunks, &rows) {
            Ok(facts) => files.push(facts.new_file(relative, workspace.as_str(), hour)),
            Err(e) => {
                remove_staged(staging, &files);
                return Err(e);
            }
        }
    }
    Ok(files)
}

/// What a written file holds, for its statistics in the log.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Bytes.
    pub size: u64,
    /// Rows.
    pub rows: u64,
    /// The smallest and largest `start_time` (ns).
    pub start_ns: (i64, i64),
    /// The first and last `trace_id` (the rows are sorted by it).
    pub trace_ids: (String, String),
    /// Its trace index rows (none if they could not be made: then they are made from the
    /// file when needed).
    pub traces: Option<Vec<TraceRow>>,
}

impl Facts {
    /// The file at `path` (relative to the table) of `workspace`'s `hour`.
    pub fn new_file(self, path: String, workspace: &str, hour: i64) -> NewFile {
        NewFile {
            path,
            workspace: workspace.to_string(),
            hour,
            size: self.size,
            rows: self.rows,
            start_ns: self.start_ns,
            trace_ids: self.trace_ids,
            traces: self.traces.map(Into::into),
        }
    }
}

/// Writes `rows` of `chunks` (sorted by trace id) to `path` and fsyncs it; a failed write
/// leaves no file behind.
fn write_file(
    path: &Path,
    chunks: &[&SpanChunk],
    rows: &[(usize, usize)],
) -> Result<Facts, FlushError> {
    let batches = plan_slices(chunks, rows)
        .into_iter()
        .map(|slice| Ok(gather(chunks, &rows[slice], None)?));
    write_data_file(path, shared_dictionary_bytes(chunks), batches)
}

/// Writes `batches` (of the `spans` schema, sorted by trace id and start time) as one data
/// file at `path`, fsynced, with the shared columns' dictionaries allowed
/// `shared_dictionary` bytes; a failed write leaves no file behind.
pub fn write_data_file(
    path: &Path,
    shared_dictionary: usize,
    batches: impl Iterator<Item = Result<arrow::array::RecordBatch, FlushError>>,
) -> Result<Facts, FlushError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let written = (|| -> Result<Facts, FlushError> {
        let file = File::create(path).map_err(io_at(path))?;
        let properties = writer_properties(shared_dictionary);
        let options = ArrowWriterOptions::new()
            .with_properties(properties)
            .with_skip_arrow_metadata(true);
        let mut writer = ArrowWriter::try_new_with_options(file, file_schema(), options)?;
        let mut start_ns = (i64::MAX, i64::MIN);
        let mut trace_ids: Option<(String, String)> = None;
        let mut count = 0;
        let mut traces = Some(Summarizer::default());
        for batch in batches {
            let batch = batch?;
            count += batch.num_rows() as u64;
            if let Some(Err(e)) = traces.as_mut().map(|t| t.push(&batch)) {
                // The trace index never fails a write: the rows are made from the file later.
                warn!(error = %e, "Summarizing a data file's traces failed.");
                traces = None;
            }
            if let Some(starts) = batch.column_by_name(col::START_TIME) {
                let starts = starts.as_primitive::<TimestampNanosecondType>();
                for v in starts.values().iter() {
                    start_ns = (start_ns.0.min(*v), start_ns.1.max(*v));
                }
            }
            if let Some(ids) = batch.column_by_name(col::TRACE_ID) {
                let ids = ids.as_string::<i32>();
                if !ids.is_empty() {
                    let last = ids.value(ids.len() - 1).to_string();
                    match &mut trace_ids {
                        Some((_, max)) => *max = last,
                        None => trace_ids = Some((ids.value(0).to_string(), last)),
                    }
                }
            }
            writer.write(&to_file(&batch)?)?;
            if writer.in_progress_size() >= ROW_GROUP_BYTES {
                writer.flush()?;
            }
        }
        let file = writer.into_inner()?;
        fault::hit(fault::FLUSH_STAGE).map_err(io_at(path))?;
        file.sync_all().map_err(io_at(path))?;
        let size = file.metadata().map_err(io_at(path))?.len();
        Ok(Facts {
            size,
            rows: count,
            start_ns,
            trace_ids: trace_ids.unwrap_or_default(),
            traces: traces.map(Summarizer::finish),
        })
    })();
    if written.is_err() {
        remove_quietly(path);
    }
    written
}

/// Removes a file this flush created, logging (not failing) when that is impossible.
fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Could not remove a file of a failed flush.")
        }
    }
}

/// Removes staged files that will not be committed.
pub fn remove_staged(staging: &Staging, files: &[NewFile]) {
    for f in files {
        remove_quietly(&staging.root.join(&f.path));
    }
}

/// fsyncs the directories of staged files and their parents up to the table root, so the
/// new names and any directory created for them survive a crash.
pub fn sync_parents(staging: &Staging, files: &[NewFile]) -> Result<(), FlushError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        let mut d = staging.root.join(&f.path);
        for _ in 0..4 {
            if !d.pop() {
                break;
            }
            if !dirs.contains(&d) {
                dirs.push(d.clone());
            }
        }
    }
    for d in dirs {
        sync_dir(&d).map_err(io_at(&d))?;
    }
    Ok(())
}

/// Stages every taken workspace; returns the files and the rows in them. On failure the
/// files staged so far are removed, so a failed flush never keeps a full disk full.
pub fn stage_taken(staging: &Staging, taken: &[Taken]) -> Result<(Vec<NewFile>, u64), FlushError> {
    let mut files = Vec::new();
    let mut rows = 0;
    for t in taken {
        match stage_workspace(staging, &t.workspace, &t.chunks) {
            Ok(staged) => files.extend(staged),
            Err(e) => {
                remove_staged(staging, &files);
                return Err(e);
            }
        }
        rows += t.chunks.iter().map(|c| c.num_rows() as u64).sum::<u64>();
    }
    if let Err(e) = sync_parents(staging, &files) {
        remove_staged(staging, &files);
        return Err(e);
    }
    Ok((files, rows))
}

/// Uploads staged files to the table's object store, then removes the local copies.
pub async fn upload(
    storage: &Storage,
    staging: &Staging,
    files: &[NewFile],
) -> Result<(), FlushError> {
    let store = storage.store();
    for f in files {
        let local = staging.root.join(&f.path);
        let mut file = tokio::fs::File::open(&local).await.map_err(io_at(&local))?;
        let target = object_store::path::Path::from(f.path.as_str());
        let mut writer = object_store::buffered::BufWriter::new(store.clone(), target);
        tokio::io::copy(&mut file, &mut writer)
            .await
            .map_err(io_at(&local))?;
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .map_err(io_at(&local))?;
    }
    remove_staged(staging, files);
    Ok(())
}

/// Deletes files that will never be committed: their staged copies, and on object
/// storage their uploads (failures are left to vacuum).
pub async fn discard(storage: &Storage, staging: &Staging, files: &[NewFile]) {
    remove_staged(staging, files);
    if staging.upload {
        use object_store::ObjectStoreExt as _;
        let store = storage.store();
        for f in files {
            let _ = store
                .delete(&object_store::path::Path::from(f.path.as_str()))
                .await;
        }
    }
}

/// A flush whose files are durable (and uploaded) but whose commit is not known to be
/// done: it is retried with the same files, never re-written.
pub struct PendingFlush {
    taken: Vec<Taken>,
    files: Vec<NewFile>,
    position: WalPosition,
    rows: u64,
    /// Whether a commit was attempted (a retry asks the log first).
    attempted: bool,
    /// When its files were written.
    staged_at: Instant,
}

impl PendingFlush {
    /// Files this flush adds.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Rows in them.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// Writes the taken chunks as durable files (uploaded when the table is remote).
pub async fn stage_flush(
    storage: &Storage,
    staging: &Staging,
    taken: Vec<Taken>,
    position: WalPosition,
) -> Result<PendingFlush, FlushError> {
    let (files, rows, taken) = {
        let staging = staging.clone();
        tokio::task::spawn_blocking(move || {
            stage_taken(&staging, &taken).map(|(files, rows)| (files, rows, taken))
        })
        .await
        .map_err(|e| FlushError::Task(e.to_string()))??
    };
    if staging.upload
        && let Err(e) = upload(storage, staging, &files).await
    {
        remove_staged(staging, &files);
        return Err(e);
    }
    Ok(PendingFlush {
        taken,
        files,
        position,
        rows,
        attempted: false,
        staged_at: Instant::now(),
    })
}

/// Commits a staged flush, then shows its files to queries and drops its chunks from the
/// buffer in one step, then moves the WAL checkpoint. After a failure, call it again with
/// the same flush: a commit the log already holds is not made twice.
pub async fn complete_flush(
    storage: &Storage,
    wal_dir: &Path,
    buffer: &Buffer,
    pending: &mut PendingFlush,
) -> Result<(), FlushError> {
    fault::hit(fault::FLUSH_COMMIT).map_err(io_at(wal_dir))?;
    let files = if pending.files.is_empty() && pending.rows == 0 {
        storage.files()
    } else {
        let retry = std::mem::replace(&mut pending.attempted, true);
        storage
            .commit_flush(&pending.files, pending.position, retry)
            .await?
    };
    buffer.publish(&pending.taken, || -> Result<(), FlushError> {
        fault::hit(fault::FLUSH_PUBLISH).map_err(io_at(wal_dir))?;
        storage.install_flush(files);
        Ok(())
    })?;
    pending.taken.clear();
    let (dir, position) = (wal_dir.to_path_buf(), pending.position);
    tokio::task::spawn_blocking(move || write_checkpoint(&dir, position).map_err(io_at(&dir)))
        .await
        .map_err(|e| FlushError::Task(e.to_string()))??;
    Ok(())
}

/// Stages the taken chunks and completes the flush (replay, tests and benchmarks).
pub async fn write_taken(
    storage: &Storage,
    staging: &Staging,
    wal_dir: &Path,
    buffer: &Buffer,
    taken: Vec<Taken>,
    position: WalPosition,
) -> Result<(usize, u64), FlushError> {
    let mut pending = stage_flush(storage, staging, taken, position).await?;
    complete_flush(storage, wal_dir, buffer, &mut pending).await?;
    Ok((pending.files(), pending.rows()))
}

/// A flush whose commit has failed this long writes its files anew before it tries again:
/// vacuum deletes files no commit references once they are a day old, and a commit must
/// never add a file that is gone.
const RESTAGE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// How often an idle flusher loads the table's newest version (other nodes' commits).
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Moves buffered chunks to the table and advances the WAL checkpoint.
pub struct Flusher {
    storage: Arc<Storage>,
    /// Told the trace index rows of each committed flush.
    catalog: Arc<Catalog>,
    staging: Staging,
    wal_dir: PathBuf,
    buffer: Arc<Buffer>,
    wal: Arc<Wal>,
    metrics: Arc<Metrics>,
    max_age: Duration,
    /// One checkpoint at a time; holds a flush whose files are staged but whose commit
    /// failed, to be completed (never re-staged) by the next checkpoint.
    pending: tokio::sync::Mutex<Option<PendingFlush>>,
}

impl Flusher {
    /// A flusher over `buffer` and `wal`, flushing data older than `max_age` into `storage`.
    pub fn new(
        storage: Arc<Storage>,
        catalog: Arc<Catalog>,
        data_dir: &Path,
        buffer: Arc<Buffer>,
        wal: Arc<Wal>,
        metrics: Arc<Metrics>,
        max_age: Duration,
    ) -> Self {
        Self {
            staging: Staging::of(&storage, data_dir),
            storage,
            catalog,
            wal_dir: data_dir.join(path::WAL_DIR),
            buffer,
            wal,
            metrics,
            max_age,
            pending: tokio::sync::Mutex::new(None),
        }
    }

    /// Flushes on thresholds and age until `shutdown`, and loads other nodes' commits when
    /// idle; the final flush is the caller's.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(
            self.max_age
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refreshed = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.buffer.flush_wanted() => {}
                _ = tick.tick() => {
                    let due = self.buffer.over_threshold()
                        || self.buffer.oldest().is_some_and(|t| t.elapsed() >= self.max_age)
                        || self.has_pending();
                    if !due {
                        if refreshed.elapsed() >= REFRESH_EVERY {
                            refreshed = Instant::now();
                            self.refresh().await;
                        }
                        continue;
                    }
                }
            }
            if let Err(e) = self.checkpoint().await {
                self.metrics.flush_failed();
                error!(error = %e, "Flush failed; the data stays in the WAL and the buffer, retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Shows queries the newest version of the table, unless a flush's commit is pending
    /// (that version could hold spans still in the buffer).
    async fn refresh(&self) {
        let Ok(slot) = self.pending.try_lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        match self.storage.refresh().await {
            Ok(Some(files)) => self
                .buffer
                .publish(&[], || -> Result<(), FlushError> {
                    self.storage.install(files);
                    Ok(())
                })
                .unwrap_or(()),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "Could not load the newest version of the table."),
        }
    }

    /// A pending flush whose files are old: `None` if the log holds its commit (it goes on
    /// as it is), else a flush of the same chunks with new files (the old ones deleted).
    async fn restage(&self, pending: &PendingFlush) -> Result<Option<PendingFlush>, FlushError> {
        let committed = self.storage.committed_position().await?;
        if committed.is_some_and(|p| p >= pending.position) {
            return Ok(None);
        }
        warn!(
            files = pending.files.len(),
            "A flush has not been committed for hours; writing its files anew."
        );
        let restaged = stage_flush(
            &self.storage,
            &self.staging,
            pending.taken.clone(),
            pending.position,
        )
        .await?;
        discard(&self.storage, &self.staging, &pending.files).await;
        Ok(Some(restaged))
    }

    /// Whether a flush failed after its files were staged (it is retried even when
    /// nothing new is buffered, or the checkpoint would never move).
    fn has_pending(&self) -> bool {
        self.pending.try_lock().is_ok_and(|p| p.is_some())
    }

    /// Rotates the WAL, writes everything buffered before the rotation to the table,
    /// moves the checkpoint and deletes the covered segments. A flush left incomplete by
    /// an earlier failure is completed first, with the files it already staged.
    pub async fn checkpoint(&self) -> Result<(), FlushError> {
        let mut slot = self.pending.lock().await;
        let started = Instant::now();
        let mut pending = match slot.take() {
            Some(pending) if pending.staged_at.elapsed() >= RESTAGE_AFTER => {
                match self.restage(&pending).await {
                    Ok(Some(restaged)) => restaged,
                    Ok(None) => pending,
                    Err(e) => {
                        *slot = Some(pending);
                        return Err(e);
                    }
                }
            }
            Some(pending) => pending,
            None => {
                let next = self.wal.rotate().await?;
                let taken = self.buffer.take(Some(next));
                let position = WalPosition {
                    segment: next,
                    offset: 0,
                };
                stage_flush(&self.storage, &self.staging, taken, position).await?
            }
        };
        self.catalog.written(&pending.files);
        if let Err(e) =
            complete_flush(&self.storage, &self.wal_dir, &self.buffer, &mut pending).await
        {
            *slot = Some(pending);
            return Err(e);
        }
        self.catalog.changed();
        let (files, rows, next) = (pending.files(), pending.rows(), pending.position.segment);
        let wal_dir = self.wal_dir.clone();
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || -> Result<(), FlushError> {
            wal.delete_segments_before(next).map_err(io_at(&wal_dir))
        })
        .await
        .map_err(|e| FlushError::Task(e.to_string()))??;
        self.metrics.flushed(files as u64, rows);
        if rows > 0 {
            info!(
                files,
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Flushed buffer to the table."
            );
        }
        Ok(())
    }
}

/// During replay: writes everything buffered to the table and checkpoints at `position`
/// (every record before it has been replayed into the buffer). Runs on a blocking thread.
pub fn flush_replayed(
    runtime: &tokio::runtime::Handle,
    storage: &Storage,
    staging: &Staging,
    wal_dir: &Path,
    buffer: &Buffer,
    position: WalPosition,
) -> Result<(), FlushError> {
    let taken = buffer.take(None);
    runtime.block_on(write_taken(
        storage, staging, wal_dir, buffer, taken, position,
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_records_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging {
            root: dir.path().to_path_buf(),
            upload: false,
        };
        let bytes =
            prost::Message::encode_to_vec(&crate::fake::request(16, 1, 1_763_000_000_000_000_000));
        let chunk = crate::normalize::normalize(&crate::decode::decode_protobuf(&bytes).unwrap())
            .unwrap()
            .chunk;
        let ws = Workspace::new("w").unwrap();
        let files = stage_workspace(&staging, &ws, &[chunk]).unwrap();
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert!(
            f.path.starts_with("workspace=w/date=2025-11-13/hour="),
            "{}",
            f.path
        );
        assert_eq!(f.rows, 16);
        assert!(f.start_ns.0 >= 1_763_000_000_000_000_000 && f.start_ns.0 <= f.start_ns.1);
        assert!(f.trace_ids.0 <= f.trace_ids.1 && !f.trace_ids.0.is_empty());
        assert_eq!(
            std::fs::metadata(dir.path().join(&f.path)).unwrap().len(),
            f.size
        );
    }

    #[test]
    fn packed_keys_sort_as_the_three_columns_do() {
        use arrow::array::{StringArray, TimestampNanosecondArray};
        // Ids of OTLP's form (packed) and ids of other forms (Arrow's sort), with ties in
        // trace and start time and a span sent twice.
        let hex_traces = ["0f", "a0", "0f", "ff", "a0", "0f", "a0"].map(|t| t.repeat(16));
        let hex_spans = ["09", "10", "01", "77", "10", "01", "0a"].map(|s| s.repeat(8));
        let starts = [5, 3, 5, -1, 3, 2, 3];
        let check = |traces: Vec<String>, spans: Vec<String>, packed: bool| {
            let traces: ArrayRef = Arc::new(StringArray::from(traces));
            let spans: ArrayRef = Arc::new(StringArray::from(spans));
            let start: ArrayRef = Arc::new(TimestampNanosecondArray::from(starts.to_vec()));
            let column = |values: &ArrayRef| SortColumn {
                values: values.clone(),
                options: None,
            };
            let arrow =
                lexsort_to_indices(&[column(&traces), column(&start), column(&spans)], None)
                    .unwrap();
            let ours = key_order(&traces, &start, &spans).unwrap();
            let key = |i: u32| {
                let i = i as usize;
                let (t, s) = (traces.as_string::<i32>(), spans.as_string::<i32>());
                (t.value(i).to_string(), starts[i], s.value(i).to_string())
            };
            let want: Vec<_> = arrow.values().iter().map(|&i| key(i)).collect();
            let got: Vec<_> = ours.iter().map(|&i| key(i)).collect();
            assert_eq!(got, want, "packed: {packed}");
            let is_packed = (0..traces.len()).all(|i| {
                lower_hex(traces.as_string::<i32>().value(i), 32).is_some()
                    && lower_hex(spans.as_string::<i32>().value(i), 16).is_some()
            });
            assert_eq!(is_packed, packed);
        };
        check(hex_traces.to_vec(), hex_spans.to_vec(), true);
        let mut odd = hex_traces.to_vec();
        odd[1] = "A0".repeat(16);
        odd[3] = "trace-from-a-vendor".into();
        check(odd, hex_spans.to_vec(), false);
    }
}
