//! Upgrade: adopts a data dir written by an earlier version (loose Hive-partitioned
//! Parquet under `<data-dir>/workspace=…`, a private flush manifest in the WAL directory)
//! into the Delta table.
//!
//! Input: the data dir and the opened table. Output: every span of the old tree in the
//! table, once; the old tree removed. Runs on start (before the WAL is replayed) and as
//! `spanlake migrate`.
//!
//! Invariants: a flush the old version left half done is first completed or rolled back
//! exactly as that version would have; old files are rewritten into the data-file layout
//! (`migrated-<ulid>.parquet`, a fresh name each attempt) in batches; a batch's old files
//! are listed in a journal (`wal/adopt.pending`, fsynced) before its commit, which carries
//! the batch number as an application transaction (`spanlake-adopt-<node>`), and are
//! deleted only after it. A restart after a crash asks the log whether the journal's batch
//! was committed: if so its old files are deleted, else adopted again. So each span is
//! either in the old tree or in the table, never both and never neither.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::compute::cast;
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};

use crate::flush::{
    FlushError, MAX_DICTIONARY_BYTES, SHARED_DICTIONARY_BYTES, Staging, io_at, partition_path,
    remove_staged, sync_parents, upload, write_data_file,
};
use crate::schema::{partition, path, spans_schema};
use crate::storage::Storage;
use crate::time::hour_of_partition;
use crate::wal::{SegmentId, WalPosition, read_checkpoint, sync_dir, write_checkpoint};

/// The old flush manifest, in the WAL directory.
const MANIFEST: &str = "flush.pending";
/// Old files rewritten per commit.
const BATCH: usize = 64;
/// The name prefix of a rewritten old file.
const MIGRATED: &str = "migrated-";

/// An old file: its path and its partition.
struct OldFile {
    path: PathBuf,
    workspace: String,
    hour: i64,
}

/// Adopts the old tree under `data_dir` into `storage`; returns the files adopted.
pub async fn adopt(data_dir: &Path, storage: &Storage) -> Result<usize, FlushError> {
    finish_batch(data_dir, storage).await?;
    let dir = data_dir.to_path_buf();
    let old = tokio::task::spawn_blocking(move || -> Result<Vec<OldFile>, FlushError> {
        finish_old_flush(&dir)?;
        remove_old_leftovers(&dir).map_err(io_at(&dir))?;
        list_old_files(&dir).map_err(io_at(&dir))
    })
    .await
    .map_err(|e| FlushError::Task(e.to_string()))??;
    if old.is_empty() {
        return Ok(0);
    }
    info!(
        files = old.len(),
        "Adopting the Parquet tree of an earlier version into the table."
    );
    let staging = Staging::of(storage, data_dir);
    let app = format!("spanlake-adopt-{}", storage.node_id());
    let journal = data_dir.join(path::WAL_DIR).join(JOURNAL);
    let mut adopted = 0;
    for batch in old.chunks(BATCH) {
        let number = storage.app_version(&app).await?.unwrap_or(0) + 1;
        let mut new = Vec::new();
        for old_file in batch {
            // A fresh name each attempt: a name is never reused after a failed attempt.
            let target = format!(
                "{}/{MIGRATED}{}.{}",
                partition_path(&old_file.workspace, old_file.hour),
                ulid::Ulid::new(),
                path::PARQUET_EXT
            );
            let (source, local) = (old_file.path.clone(), staging.root.join(&target));
            let facts = tokio::task::spawn_blocking(move || rewrite(&source, &local))
                .await
                .map_err(|e| FlushError::Task(e.to_string()))??;
            new.push(facts.new_file(target, &old_file.workspace, old_file.hour));
        }
        sync_parents(&staging, &new)?;
        if staging.upload
            && let Err(e) = upload(storage, &staging, &new).await
        {
            remove_staged(&staging, &new);
            return Err(e);
        }
        let olds: Vec<PathBuf> = batch.iter().map(|f| f.path.clone()).collect();
        write_journal(&journal, number, &app, &olds)?;
        let actions = new.iter().map(|f| Action::Add(f.add(true))).collect();
        let now = chrono::Utc::now().timestamp_millis();
        storage
            .commit(
                actions,
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: Some(partition::ALL.iter().map(|c| c.to_string()).collect()),
                    predicate: None,
                },
                vec![Transaction::new_with_last_update(&app, number, Some(now))],
                true,
            )
            .await?;
        remove_old(&olds)?;
        remove_journal(&journal)?;
        adopted += batch.len();
    }
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || remove_empty_old_dirs(&dir))
        .await
        .map_err(|e| FlushError::Task(e.to_string()))?
        .map_err(io_at(data_dir))?;
    info!(
        files = adopted,
        "Adopted the Parquet tree of an earlier version."
    );
    Ok(adopted)
}

/// The journal of the batch being adopted, in the WAL directory: its number and
/// application transaction, then the old files it rewrites.
const JOURNAL: &str = "adopt.pending";

/// Completes the batch a crash interrupted: if the log holds its commit (the adoption's
/// application transaction reached its number), its old files are deleted; else they stay
/// and are adopted again (the rewrites of the failed attempt are left to vacuum).
async fn finish_batch(data_dir: &Path, storage: &Storage) -> Result<(), FlushError> {
    let journal = data_dir.join(path::WAL_DIR).join(JOURNAL);
    let text = match std::fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(&journal)(e)),
    };
    let mut lines = text.lines();
    let head = lines.next().and_then(|l| l.split_once(' '));
    let (number, app) = head
        .and_then(|(n, app)| Some((n.parse::<i64>().ok()?, app.to_string())))
        .ok_or_else(|| {
            io_at(&journal)(io::Error::new(
                io::ErrorKind::InvalidData,
                "unreadable adoption journal",
            ))
        })?;
    // The batch's transaction is under the id it was committed with, whatever the id now.
    if storage.app_version(&app).await?.unwrap_or(0) >= number {
        let olds: Vec<PathBuf> = lines.map(|l| data_dir.join(l)).collect();
        remove_old(&olds)?;
        info!(
            files = olds.len(),
            "Completed an adoption batch interrupted after its commit."
        );
    }
    remove_journal(&journal)
}

fn write_journal(
    journal: &Path,
    number: i64,
    app: &str,
    olds: &[PathBuf],
) -> Result<(), FlushError> {
    let data_dir = journal
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let mut text = format!("{number} {app}\n");
    for p in olds {
        text.push_str(&p.strip_prefix(data_dir).unwrap_or(p).to_string_lossy());
        text.push('\n');
    }
    let tmp = journal.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, journal))
        .and_then(|()| sync_dir(journal.parent().unwrap_or(Path::new("."))))
        .map_err(io_at(journal))
}

fn remove_journal(journal: &Path) -> Result<(), FlushError> {
    match std::fs::remove_file(journal) {
        Ok(()) => sync_dir(journal.parent().unwrap_or(Path::new("."))).map_err(io_at(journal)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(journal)(e)),
    }
}

fn remove_old(olds: &[PathBuf]) -> Result<(), FlushError> {
    for p in olds {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(p)(e)),
        }
    }
    Ok(())
}

/// Rewrites one old file into the data-file layout at `target`.
fn rewrite(source: &Path, target: &Path) -> Result<crate::flush::Facts, FlushError> {
    let file = File::open(source).map_err(io_at(source))?;
    let size = file.metadata().map_err(io_at(source))?.len() as usize;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(8192)
        .build()?;
    let batches = reader.map(|batch| Ok(to_spans(&batch?)?));
    let dictionary = size.clamp(SHARED_DICTIONARY_BYTES, MAX_DICTIONARY_BYTES);
    write_data_file(target, dictionary, batches)
}

/// A batch of an old file in the `spans` schema: columns by name, cast where an earlier
/// layout had another type, null where it had no such column.
fn to_spans(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = spans_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef, arrow::error::ArrowError> {
            match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => cast(c, f.data_type()),
                None => Ok(new_null_array(f.data_type(), batch.num_rows())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// Completes or rolls back a flush the old version left half done (its manifest lists
/// the temporary and final name of each file and the checkpoint the flush moves to).
fn finish_old_flush(data_dir: &Path) -> Result<(), FlushError> {
    let wal_dir = data_dir.join(path::WAL_DIR);
    let manifest = wal_dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(&manifest)(e)),
    };
    let corrupt = || {
        io_at(&manifest)(io::Error::new(
            io::ErrorKind::InvalidData,
            "unreadable flush manifest of an earlier version",
        ))
    };
    let mut lines = text.lines();
    let head: Vec<u64> = lines
        .next()
        .ok_or_else(corrupt)?
        .split(' ')
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .map_err(|_| corrupt())?;
    let [segment, offset] = head[..] else {
        return Err(corrupt());
    };
    let checkpoint = WalPosition {
        segment: SegmentId(segment),
        offset,
    };
    let mut staged = Vec::new();
    for line in lines {
        let (tmp, target) = line.split_once('\t').ok_or_else(corrupt)?;
        staged.push((data_dir.join(tmp), data_dir.join(target)));
    }
    let current = read_checkpoint(&wal_dir).map_err(io_at(&wal_dir))?;
    let done = current.is_some_and(|c| c >= checkpoint);
    let whole = staged
        .iter()
        .all(|(tmp, target)| tmp.exists() || target.exists());
    if !done && whole {
        for (tmp, target) in &staged {
            if tmp.exists() {
                std::fs::rename(tmp, target).map_err(io_at(target))?;
            }
        }
        sync_old_dirs(&staged)?;
        write_checkpoint(&wal_dir, checkpoint).map_err(io_at(&wal_dir))?;
        info!(
            files = staged.len(),
            "Completed a flush of an earlier version interrupted by a crash."
        );
    } else if !done {
        warn!(
            "A file of an interrupted flush of an earlier version is gone; rolling it back, the WAL replays its spans."
        );
        for (tmp, target) in &staged {
            for p in [tmp, target] {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(p)(e)),
                }
            }
        }
        sync_old_dirs(&staged)?;
    }
    std::fs::remove_file(&manifest).map_err(io_at(&manifest))?;
    sync_dir(&wal_dir).map_err(io_at(&wal_dir))
}

fn sync_old_dirs(staged: &[(PathBuf, PathBuf)]) -> Result<(), FlushError> {
    for (_, target) in staged {
        if let Some(dir) = target.parent() {
            sync_dir(dir).map_err(io_at(dir))?;
        }
    }
    Ok(())
}

/// The old tree's partition directories: `(workspace, date dir, hour, hour dir)`.
fn old_partitions(data_dir: &Path) -> io::Result<Vec<(String, PathBuf, i64, PathBuf)>> {
    let entries = |dir: &Path| -> io::Result<Vec<(String, PathBuf)>> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())))
                .filter(|e| e.as_ref().map_or(true, |(_, p)| p.is_dir()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    };
    let mut out = Vec::new();
    for (ws_name, ws_dir) in entries(data_dir)? {
        let Some(workspace) = ws_name.strip_prefix(path::WORKSPACE_PREFIX) else {
            continue;
        };
        for (date_name, date_dir) in entries(&ws_dir)? {
            let Some(date) = date_name.strip_prefix(path::DATE_PREFIX) else {
                continue;
            };
            for (hour_name, hour_dir) in entries(&date_dir)? {
                let Some(hour) = hour_name
                    .strip_prefix(path::HOUR_PREFIX)
                    .and_then(|h| hour_of_partition(date, h))
                else {
                    continue;
                };
                out.push((workspace.to_string(), date_dir.clone(), hour, hour_dir));
            }
        }
    }
    Ok(out)
}

/// The old tree's Parquet files, sorted.
fn list_old_files(data_dir: &Path) -> io::Result<Vec<OldFile>> {
    let mut files = Vec::new();
    for (workspace, _, hour, dir) in old_partitions(data_dir)? {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !n.starts_with('.') && n.ends_with(".parquet")) {
                files.push(OldFile {
                    path: p,
                    workspace: workspace.clone(),
                    hour,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Removes temporary files an earlier version's crash left in its tree.
fn remove_old_leftovers(data_dir: &Path) -> io::Result<()> {
    for (_, _, _, dir) in old_partitions(data_dir)? {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.starts_with('.') && n.ends_with(path::TMP_SUFFIX)) {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// Removes the old tree's directories once they are empty.
fn remove_empty_old_dirs(data_dir: &Path) -> io::Result<()> {
    let partitions = old_partitions(data_dir)?;
    let mut parents: Vec<PathBuf> = Vec::new();
    for (_, date_dir, _, hour_dir) in &partitions {
        let _ = std::fs::remove_dir(hour_dir);
        if !parents.contains(date_dir) {
            parents.push(date_dir.clone());
        }
    }
    for date_dir in &parents {
        let _ = std::fs::remove_dir(date_dir);
        if let Some(ws) = date_dir.parent() {
            let _ = std::fs::remove_dir(ws);
        }
    }
    sync_dir(data_dir)
}
