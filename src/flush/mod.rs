//! Flush: buffered chunks → Hive-partitioned Parquet, then the WAL checkpoint.
//!
//! Input: the [`Buffer`]'s chunks from WAL segments below a rotation point. Output:
//! `<data-dir>/workspace=<ws>/date=YYYY-MM-DD/hour=HH/<ulid>.parquet`, partitioned by span
//! start time (UTC), rows sorted by (trace_id, start_time), zstd, row groups of 128K rows,
//! page statistics, a bloom filter on trace_id. Rows are sorted by their keys alone and
//! written in slices of bounded size ([`crate::chunk::plan_slices`]), with a row group closed
//! once its encoded bytes pass [`ROW_GROUP_BYTES`], so a flush never holds the buffer
//! expanded nor concatenated. Invariants: a file appears under its real
//! name only whole and fsynced (temporary name, fsync, rename, fsync of the directory);
//! the WAL checkpoint moves, and segments are deleted, only after every file covering them
//! is durable; chunks leave the buffer only then too, so nothing acknowledged is ever
//! invisible or lost. Old spans are never dropped: a span from 2018 goes to `date=2018-…`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{SortColumn, concat, lexsort_to_indices};
use arrow::datatypes::TimestampNanosecondType;
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::buffer::{Buffer, Taken};
use crate::chunk::{FALLBACK, SpanChunk, gather, plan_slices};
use crate::fault;
use crate::metrics::Metrics;
use crate::schema::{col, column_index, nested, path, spans_schema};
use crate::time::{civil_hour, hour_bucket};
use crate::wal::{Wal, WalError, WalPosition, read_checkpoint, sync_dir, write_checkpoint};
use crate::workspace::Workspace;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A row group is closed early once the writer holds this many encoded bytes.
pub const ROW_GROUP_BYTES: usize = 128 << 20;
/// Dictionary pages of the columns whose values repeat per resource or scope may grow to
/// at least this size before Parquet falls back to plain encoding, so that a large shared
/// value is stored once per row group rather than once per span.
const SHARED_DICTIONARY_BYTES: usize = 16 << 20;
/// The most a shared column's dictionary page may hold (a Parquet page size is an i32).
const MAX_DICTIONARY_BYTES: usize = 1 << 30;

/// The dictionary limit of the shared columns of a file written from `chunks`: room for
/// every distinct value of such a column (a resource's or scope's value is held once in its
/// chunk, a lifted column's own values once per span), so a file never holds a shared value
/// once per span, however large it is.
fn shared_dictionary_bytes(chunks: &[&SpanChunk]) -> usize {
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
    /// The blocking task died.
    #[error("flush task failed: {0}")]
    Task(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FlushError + '_ {
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
            nested::MAP_ENTRIES,
            nested::MAP_KEYS,
        ],
        vec![
            col::RESOURCE_ATTRIBUTES,
            nested::MAP_ENTRIES,
            nested::MAP_VALUES,
        ],
    ]
    .into_iter()
    .chain(FALLBACK.iter().map(|c| vec![*c]));
    shared
        .fold(WriterProperties::builder(), |b, path| {
            b.set_column_dictionary_page_size_limit(
                ColumnPath::new(path.into_iter().map(str::to_string).collect()),
                shared_dictionary,
            )
        })
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled(ColumnPath::from(col::TRACE_ID), true)
        .set_sorting_columns(Some(vec![
            SortingColumn {
                column_idx: column_index(col::TRACE_ID) as i32,
                descending: false,
                nulls_first: false,
            },
            SortingColumn {
                column_idx: column_index(col::START_TIME) as i32,
                descending: false,
                nulls_first: false,
            },
        ]))
        .build()
}

/// The directory of one hour of one workspace.
pub fn partition_dir(data_dir: &Path, workspace: &Workspace, hour: i64) -> PathBuf {
    let (y, m, d, h) = civil_hour(hour);
    data_dir
        .join(format!("{}{}", path::WORKSPACE_PREFIX, workspace))
        .join(format!("{}{y:04}-{m:02}-{d:02}", path::DATE_PREFIX))
        .join(format!("{}{h:02}", path::HOUR_PREFIX))
}

/// A file written and fsynced under its temporary name, not yet visible.
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
}

impl Staged {
    /// Where the file will be visible.
    pub fn target(&self) -> &Path {
        &self.target
    }
}

/// Makes staged files visible (rename) and durable (fsync of their directories).
pub fn publish(staged: &[Staged]) -> Result<(), FlushError> {
    for s in staged {
        std::fs::rename(&s.tmp, &s.target).map_err(io_at(&s.target))?;
    }
    sync_parents(staged)
}

/// fsyncs the directories of `staged` files and their parents up to the data dir, so the
/// new names and any directory created for them survive a crash.
fn sync_parents(staged: &[Staged]) -> Result<(), FlushError> {
    let mut dirs: Vec<&Path> = Vec::new();
    for s in staged {
        let mut d = s.target.parent();
        for _ in 0..4 {
            let Some(p) = d else { break };
            if !dirs.contains(&p) {
                dirs.push(p);
            }
            d = p.parent();
        }
    }
    for d in dirs {
        sync_dir(d).map_err(io_at(d))?;
    }
    Ok(())
}

/// Writes one workspace's chunks as one sorted file per hour and makes them visible;
/// returns the files.
pub fn write_workspace(
    data_dir: &Path,
    workspace: &Workspace,
    chunks: &[SpanChunk],
) -> Result<Vec<PathBuf>, FlushError> {
    let staged = stage_workspace(data_dir, workspace, chunks)?;
    publish(&staged)?;
    Ok(staged.into_iter().map(|s| s.target).collect())
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

/// Writes one workspace's chunks as one sorted file per hour under temporary names.
pub fn stage_workspace(
    data_dir: &Path,
    workspace: &Workspace,
    chunks: &[SpanChunk],
) -> Result<Vec<Staged>, FlushError> {
    let chunks: Vec<&SpanChunk> = chunks.iter().filter(|c| c.num_rows() > 0).collect();
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let start = key_column(&chunks, col::START_TIME)?;
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: key_column(&chunks, col::TRACE_ID)?,
                options: None,
            },
            SortColumn {
                values: start.clone(),
                options: None,
            },
        ],
        None,
    )?;
    let located: Vec<(usize, usize)> = chunks
        .iter()
        .enumerate()
        .flat_map(|(c, chunk)| (0..chunk.num_rows()).map(move |r| (c, r)))
        .collect();
    let start = start.as_primitive::<TimestampNanosecondType>();
    let mut hours: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    for &i in order.values() {
        hours
            .entry(hour_bucket(start.value(i as usize)))
            .or_default()
            .push(located[i as usize]);
    }
    drop(located);
    let mut files = Vec::with_capacity(hours.len());
    for (hour, rows) in hours {
        files.push(write_file(
            &partition_dir(data_dir, workspace, hour),
            &chunks,
            &rows,
        )?);
    }
    Ok(files)
}

/// Writes `rows` of `chunks` to a temporary name in `dir`, fsynced; [`publish`] makes it
/// visible. A failed write leaves no temporary file behind.
fn write_file(
    dir: &Path,
    chunks: &[&SpanChunk],
    rows: &[(usize, usize)],
) -> Result<Staged, FlushError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let name = ulid::Ulid::new().to_string();
    let tmp = dir.join(format!(".{name}.{}{}", path::PARQUET_EXT, path::TMP_SUFFIX));
    let target = dir.join(format!("{name}.{}", path::PARQUET_EXT));
    let written = (|| -> Result<(), FlushError> {
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        let properties = writer_properties(shared_dictionary_bytes(chunks));
        let mut writer = ArrowWriter::try_new(file, spans_schema(), Some(properties))?;
        for slice in plan_slices(chunks, rows) {
            writer.write(&gather(chunks, &rows[slice], None)?)?;
            if writer.in_progress_size() >= ROW_GROUP_BYTES {
                writer.flush()?;
            }
        }
        let file = writer.into_inner()?;
        fault::hit(fault::FLUSH_STAGE).map_err(io_at(&tmp))?;
        file.sync_all().map_err(io_at(&tmp))
    })();
    if let Err(e) = written {
        remove_quietly(&tmp);
        return Err(e);
    }
    debug!(path = %target.display(), rows = rows.len(), "Wrote Parquet file.");
    Ok(Staged { tmp, target })
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

/// Stages every taken workspace; returns the files and the rows in them. On failure the
/// files staged so far are removed, so a failed flush never keeps a full disk full.
pub fn stage_taken(data_dir: &Path, taken: &[Taken]) -> Result<(Vec<Staged>, u64), FlushError> {
    let mut files = Vec::new();
    let mut rows = 0;
    for t in taken {
        match stage_workspace(data_dir, &t.workspace, &t.chunks) {
            Ok(staged) => files.extend(staged),
            Err(e) => {
                for f in &files {
                    remove_quietly(&f.tmp);
                }
                return Err(e);
            }
        }
        rows += t.chunks.iter().map(|c| c.num_rows() as u64).sum::<u64>();
    }
    Ok((files, rows))
}

/// A flush whose manifest is durable: from then on it is completed, never re-staged, so a
/// failure part-way can only be retried into the same files.
pub struct PendingFlush {
    taken: Vec<Taken>,
    staged: Vec<Staged>,
    checkpoint: WalPosition,
    rows: u64,
    /// Whether its files are visible and its chunks released from the buffer (once only).
    published: std::sync::atomic::AtomicBool,
}

impl PendingFlush {
    /// Files this flush publishes.
    pub fn files(&self) -> usize {
        self.staged.len()
    }

    /// Rows in them.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// Stages the taken chunks and durably records the flush (its files, fsynced with every
/// directory they were created in, and the checkpoint it moves to) in a manifest.
///
/// The flush is one atomic step for recovery: once the manifest is durable, a crash is
/// rolled forward on start by [`recover_pending_flush`], so replay never re-reads records
/// whose files were published; before it, a crash leaves only temporary files, removed on
/// start, and the WAL replays the records.
pub fn stage_flush(
    data_dir: &Path,
    taken: Vec<Taken>,
    checkpoint: WalPosition,
) -> Result<PendingFlush, FlushError> {
    let (staged, rows) = stage_taken(data_dir, &taken)?;
    let recorded =
        sync_parents(&staged).and_then(|()| write_manifest(data_dir, &staged, checkpoint));
    if let Err(e) = recorded {
        for f in &staged {
            remove_quietly(&f.tmp);
        }
        return Err(e);
    }
    Ok(PendingFlush {
        taken,
        staged,
        checkpoint,
        rows,
        published: Default::default(),
    })
}

/// Completes a staged flush: makes its files visible and drops its chunks from the buffer
/// in one step for queries, then makes the names durable, moves the checkpoint and removes
/// the manifest. Idempotent: after a failure, call it again with the same flush.
pub fn complete_flush(
    data_dir: &Path,
    buffer: &Buffer,
    pending: &PendingFlush,
) -> Result<(), FlushError> {
    let wal_dir = data_dir.join(path::WAL_DIR);
    if !pending.published.load(Ordering::Acquire) {
        buffer.publish(&pending.taken, || rename_all_or_none(&pending.staged))?;
        pending.published.store(true, Ordering::Release);
    }
    sync_parents(&pending.staged)?;
    fault::hit(fault::FLUSH_COMMIT).map_err(io_at(&wal_dir))?;
    write_checkpoint(&wal_dir, pending.checkpoint).map_err(io_at(&wal_dir))?;
    remove_manifest(&wal_dir)
}

/// Renames every staged file to its target (those already renamed are skipped); if one
/// fails, renames the others back, so that readers see all of the flush or none of it.
fn rename_all_or_none(staged: &[Staged]) -> Result<(), FlushError> {
    let mut renamed = Vec::new();
    let mut failure = None;
    for s in staged {
        if !s.tmp.exists() && s.target.exists() {
            continue;
        }
        let step =
            fault::hit(fault::FLUSH_PUBLISH).and_then(|()| std::fs::rename(&s.tmp, &s.target));
        match step {
            Ok(()) => renamed.push(s),
            Err(e) => {
                failure = Some(io_at(&s.target)(e));
                break;
            }
        }
    }
    let Some(failure) = failure else {
        return Ok(());
    };
    for s in renamed {
        if let Err(e) = std::fs::rename(&s.target, &s.tmp) {
            error!(path = %s.target.display(), error = %e, "Could not take back a file of a failed flush; its spans are visible twice until the flush is retried.");
        }
    }
    Err(failure)
}

/// Stages the taken chunks and completes the flush (tests, benchmarks and replay).
pub fn write_taken(
    data_dir: &Path,
    buffer: &Buffer,
    taken: Vec<Taken>,
    checkpoint: WalPosition,
) -> Result<(usize, u64), FlushError> {
    let pending = stage_flush(data_dir, taken, checkpoint)?;
    complete_flush(data_dir, buffer, &pending)?;
    Ok((pending.files(), pending.rows()))
}

/// The manifest of a flush in progress, in the WAL directory.
const MANIFEST: &str = "flush.pending";

/// Durably records a flush about to publish `staged` and move the checkpoint.
fn write_manifest(
    data_dir: &Path,
    staged: &[Staged],
    checkpoint: WalPosition,
) -> Result<(), FlushError> {
    let wal_dir = data_dir.join(path::WAL_DIR);
    let relative = |p: &Path| {
        p.strip_prefix(data_dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut text = format!("{} {}\n", checkpoint.segment.0, checkpoint.offset);
    for s in staged {
        text.push_str(&format!("{}\t{}\n", relative(&s.tmp), relative(&s.target)));
    }
    let tmp = wal_dir.join(format!("{MANIFEST}{}", path::TMP_SUFFIX));
    std::fs::write(&tmp, text).map_err(io_at(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_at(&tmp))?;
    let target = wal_dir.join(MANIFEST);
    std::fs::rename(&tmp, &target).map_err(io_at(&target))?;
    sync_dir(&wal_dir).map_err(io_at(&wal_dir))
}

fn remove_manifest(wal_dir: &Path) -> Result<(), FlushError> {
    let path = wal_dir.join(MANIFEST);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(wal_dir).map_err(io_at(wal_dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Completes a flush that a crash interrupted between its manifest and its checkpoint:
/// publishes its staged files (complete and fsynced before the manifest was written) and
/// moves the checkpoint. Runs on start, before leftovers are removed and the WAL replayed.
///
/// If a file of the manifest is gone under both its names, the flush is rolled back
/// instead (its published files removed, the checkpoint left where it was), so the WAL
/// replays those records: nothing is skipped that is not in a file.
pub fn recover_pending_flush(data_dir: &Path) -> Result<bool, FlushError> {
    let wal_dir = data_dir.join(path::WAL_DIR);
    let manifest = wal_dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_at(&manifest)(e)),
    };
    let corrupt = || FlushError::Io {
        path: manifest.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, "unreadable flush manifest"),
    };
    let mut lines = text.lines();
    let mut head = lines
        .next()
        .ok_or_else(corrupt)?
        .split(' ')
        .map(str::parse::<u64>);
    let (Some(Ok(segment)), Some(Ok(offset))) = (head.next(), head.next()) else {
        return Err(corrupt());
    };
    let checkpoint = WalPosition {
        segment: crate::wal::SegmentId(segment),
        offset,
    };
    let mut staged = Vec::new();
    for line in lines {
        let (tmp, target) = line.split_once('\t').ok_or_else(corrupt)?;
        staged.push(Staged {
            tmp: data_dir.join(tmp),
            target: data_dir.join(target),
        });
    }
    let current = read_checkpoint(&wal_dir).map_err(io_at(&wal_dir))?;
    if current.is_some_and(|c| c >= checkpoint) {
        // The flush completed; only the manifest's removal was cut short.
        remove_manifest(&wal_dir)?;
        return Ok(false);
    }
    if let Some(missing) = staged
        .iter()
        .find(|s| !s.tmp.exists() && !s.target.exists())
    {
        warn!(path = %missing.target.display(), "A file of an interrupted flush is gone; rolling the flush back, the WAL replays its spans.");
        for s in &staged {
            remove_quietly(&s.target);
            remove_quietly(&s.tmp);
        }
        sync_parents(&staged)?;
        remove_manifest(&wal_dir)?;
        return Ok(false);
    }
    rename_all_or_none(&staged)?;
    sync_parents(&staged)?;
    write_checkpoint(&wal_dir, checkpoint).map_err(io_at(&wal_dir))?;
    remove_manifest(&wal_dir)?;
    info!(
        files = staged.len(),
        "Completed a flush interrupted by a crash."
    );
    Ok(true)
}

/// Removes temporary files left by a crash in the middle of a flush.
pub fn remove_leftovers(data_dir: &Path) -> io::Result<usize> {
    fn walk(dir: &Path, removed: &mut usize) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                if entry.file_name() != path::WAL_DIR {
                    walk(&p, removed)?;
                }
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(path::TMP_SUFFIX))
            {
                std::fs::remove_file(&p)?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    if data_dir.exists() {
        walk(data_dir, &mut removed)?;
    }
    Ok(removed)
}

/// Moves buffered chunks to Parquet and advances the WAL checkpoint.
pub struct ParquetFlusher {
    data_dir: PathBuf,
    wal_dir: PathBuf,
    buffer: Arc<Buffer>,
    wal: Arc<Wal>,
    metrics: Arc<Metrics>,
    max_age: Duration,
    /// One checkpoint at a time; holds a flush whose manifest is durable but whose
    /// completion failed, to be completed (never re-staged) by the next checkpoint.
    pending: tokio::sync::Mutex<Option<Arc<PendingFlush>>>,
}

impl ParquetFlusher {
    /// A flusher over `buffer` and `wal`, flushing data older than `max_age`.
    pub fn new(
        data_dir: PathBuf,
        buffer: Arc<Buffer>,
        wal: Arc<Wal>,
        metrics: Arc<Metrics>,
        max_age: Duration,
    ) -> Self {
        Self {
            wal_dir: data_dir.join(path::WAL_DIR),
            data_dir,
            buffer,
            wal,
            metrics,
            max_age,
            pending: tokio::sync::Mutex::new(None),
        }
    }

    /// Flushes on thresholds and age until `shutdown`; the final flush is the caller's.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(
            self.max_age
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.buffer.flush_wanted() => {}
                _ = tick.tick() => {
                    let due = self.buffer.over_threshold()
                        || self.buffer.oldest().is_some_and(|t| t.elapsed() >= self.max_age)
                        || self.has_pending();
                    if !due {
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

    /// Whether a flush failed after its manifest was written (it is retried even when
    /// nothing new is buffered, or the checkpoint would never move).
    fn has_pending(&self) -> bool {
        self.pending.try_lock().is_ok_and(|p| p.is_some())
    }

    /// Rotates the WAL, writes everything buffered before the rotation to Parquet,
    /// moves the checkpoint and deletes the covered segments. A flush left incomplete by
    /// an earlier failure is completed first, with the files it already staged.
    pub async fn checkpoint(&self) -> Result<(), FlushError> {
        let mut slot = self.pending.lock().await;
        let started = std::time::Instant::now();
        let pending = match slot.take() {
            Some(pending) => pending,
            None => {
                let next = self.wal.rotate().await?;
                let taken = self.buffer.take(Some(next));
                let data_dir = self.data_dir.clone();
                let checkpoint = WalPosition {
                    segment: next,
                    offset: 0,
                };
                Arc::new(
                    tokio::task::spawn_blocking(move || stage_flush(&data_dir, taken, checkpoint))
                        .await
                        .map_err(|e| FlushError::Task(e.to_string()))??,
                )
            }
        };
        let (data_dir, buffer, p) = (self.data_dir.clone(), self.buffer.clone(), pending.clone());
        let completed = tokio::task::spawn_blocking(move || complete_flush(&data_dir, &buffer, &p))
            .await
            .map_err(|e| FlushError::Task(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = completed {
            *slot = Some(pending);
            return Err(e);
        }
        let (files, rows, next) = (pending.files(), pending.rows(), pending.checkpoint.segment);
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
                "Flushed buffer to Parquet."
            );
        }
        Ok(())
    }
}

/// During replay: writes everything buffered and checkpoints at `position` (every record
/// before it has been replayed into the buffer).
pub fn flush_replayed(
    data_dir: &Path,
    buffer: &Buffer,
    position: WalPosition,
) -> Result<(), FlushError> {
    let taken = buffer.take(None);
    write_taken(data_dir, buffer, taken, position)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SegmentId, read_checkpoint};

    #[test]
    fn an_interrupted_flush_is_rolled_forward_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(data.join(path::WAL_DIR)).unwrap();
        let bytes =
            prost::Message::encode_to_vec(&crate::fake::request(16, 1, 1_763_000_000_000_000_000));
        let chunk = crate::normalize::normalize(&crate::decode::decode_protobuf(&bytes).unwrap())
            .unwrap()
            .chunk;
        let ws = Workspace::new("w").unwrap();
        let staged = stage_workspace(data, &ws, &[chunk]).unwrap();
        let at = WalPosition {
            segment: SegmentId(7),
            offset: 0,
        };
        write_manifest(data, &staged, at).unwrap();
        // The crash: nothing renamed, the checkpoint not moved.
        assert!(!staged[0].target().exists());
        assert!(recover_pending_flush(data).unwrap());
        assert!(staged[0].target().exists() && !staged[0].tmp.exists());
        assert_eq!(
            read_checkpoint(&data.join(path::WAL_DIR)).unwrap(),
            Some(at)
        );
        assert!(
            !recover_pending_flush(data).unwrap(),
            "nothing left to recover"
        );
    }

    const AT: WalPosition = WalPosition {
        segment: SegmentId(7),
        offset: 0,
    };

    fn staged_flush(data: &Path, at: WalPosition) -> Vec<Staged> {
        std::fs::create_dir_all(data.join(path::WAL_DIR)).unwrap();
        let mut spans = crate::fake::request(16, 1, 1_763_000_000_000_000_000);
        // Two hours, so the flush has two files.
        let second = crate::fake::request(16, 2, 1_763_000_000_000_000_000 + 3_600_000_000_000);
        spans.resource_spans.extend(second.resource_spans);
        let bytes = prost::Message::encode_to_vec(&spans);
        let chunk = crate::normalize::normalize(&crate::decode::decode_protobuf(&bytes).unwrap())
            .unwrap()
            .chunk;
        let ws = Workspace::new("w").unwrap();
        let staged = stage_workspace(data, &ws, &[chunk]).unwrap();
        assert_eq!(staged.len(), 2);
        write_manifest(data, &staged, at).unwrap();
        staged
    }

    #[test]
    fn a_flush_with_a_missing_file_is_rolled_back_for_replay() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let staged = staged_flush(data, AT);
        std::fs::rename(&staged[0].tmp, &staged[0].target).unwrap();
        std::fs::remove_file(&staged[1].tmp).unwrap();
        assert!(
            !recover_pending_flush(data).unwrap(),
            "nothing rolled forward"
        );
        assert!(
            !staged[0].target().exists(),
            "the published half is taken back"
        );
        assert_eq!(read_checkpoint(&data.join(path::WAL_DIR)).unwrap(), None);
        assert!(!data.join(path::WAL_DIR).join(MANIFEST).exists());
    }

    #[test]
    fn a_completed_flush_whose_manifest_stayed_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let staged = staged_flush(data, AT);
        for s in &staged {
            std::fs::rename(&s.tmp, &s.target).unwrap();
        }
        write_checkpoint(&data.join(path::WAL_DIR), AT).unwrap();
        assert!(!recover_pending_flush(data).unwrap());
        assert!(staged.iter().all(|s| s.target().exists()));
        assert!(!data.join(path::WAL_DIR).join(MANIFEST).exists());
    }
}
