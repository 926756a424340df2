//! The trace index table: a second Delta table, at `<storage>/_trace_index`, holding for each
//! data file of the spans table one index file at the same relative path — that file's
//! trace index rows ([`super::index`]), partitioned by the same `workspace`, `date`, `hour`.
//!
//! Input: the spans table's files of a version and their rows from the [`super::Catalog`].
//! Output: index files, and commits that bring the index table's files in line with the
//! spans table's (adds for files without one, removes for files the spans table no longer
//! has). Invariants: an index file is a pure function of the data file at its path, so a
//! reader uses it whenever that data file is in the version it reads, whatever version of
//! the index table it loaded; nothing depends on the index table for correctness (a
//! missing, late or unreadable index file is recomputed from its data file), so it is
//! committed after the spans commit, and a failed or conflicting index commit only leaves
//! work for the next sync. The directory's leading `_` keeps it out of the spans table for
//! every Delta reader and for vacuum.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use object_store::ObjectStoreExt as _;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tracing::info;
use url::Url;

use super::Catalog;
use crate::storage::{NewFile, Storage, StorageError, load_or_create};
use crate::summary::{FileRows, TraceRow, from_batch, index_schema, to_batch};

/// The index table's directory inside the spans table's root.
pub const INDEX_DIR: &str = "_trace_index";

/// What one sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Index files added.
    pub added: usize,
    /// Index files removed.
    pub removed: usize,
}

/// The trace index table.
pub struct IndexTable {
    url: Url,
    store: Arc<dyn ObjectStore>,
    table: tokio::sync::Mutex<DeltaTable>,
    /// The index files of the loaded version.
    paths: RwLock<Arc<HashSet<String>>>,
}

impl std::fmt::Debug for IndexTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexTable")
            .field("url", &self.url.as_str())
            .finish()
    }
}

fn paths_of(table: &DeltaTable) -> HashSet<String> {
    match table.snapshot() {
        Ok(state) => state
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect(),
        Err(_) => HashSet::new(),
    }
}

impl IndexTable {
    /// Opens the index table of the spans table `storage`, creating it if `create`; none
    /// when it does not exist and may not be created.
    pub async fn open(storage: &Storage, create: bool) -> Result<Option<Self>, StorageError> {
        let spans = storage.url();
        let url = spans
            .join(&format!("{INDEX_DIR}/"))
            .map_err(|e| StorageError::Location(spans.to_string(), e.to_string()))?;
        if let Some(root) = storage.local_root() {
            let dir = root.join(INDEX_DIR);
            if !create && !dir.exists() {
                return Ok(None);
            }
            std::fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let (table, created) = load_or_create(
            &url,
            create,
            "trace_index",
            "spanlake's trace index: per data file of the spans table, one row per trace; see docs/storage.md in the spanlake repository.",
            &index_schema(),
        )
        .await?;
        if created {
            info!(table = %url, "Created the trace index table.");
        }
        let paths = paths_of(&table);
        Ok(Some(Self {
            store: table.log_store().object_store(None),
            url,
            table: tokio::sync::Mutex::new(table),
            paths: RwLock::new(Arc::new(paths)),
        }))
    }

    /// Whether the loaded version has an index file for the data file at `path`.
    pub fn has(&self, path: &str) -> bool {
        self.paths
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
    }

    /// The rows of the index file for the data file at `path`.
    pub async fn read(&self, path: &str) -> Result<Vec<TraceRow>, StorageError> {
        let location = object_store::path::Path::from(path);
        let bytes = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.error(e.into()))?
            .bytes()
            .await
            .map_err(|e| self.error(e.into()))?;
        let failed = |e: String| self.error(DeltaTableError::Generic(format!("{path}: {e}")));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| failed(e.to_string()))?
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let mut rows = Vec::new();
        for batch in reader {
            rows.extend(
                from_batch(&batch.map_err(|e| failed(e.to_string()))?)
                    .map_err(|e| failed(e.to_string()))?,
            );
        }
        Ok(rows)
    }

    fn error(&self, source: DeltaTableError) -> StorageError {
        StorageError::Delta {
            url: self.url.to_string(),
            source: Box::new(source),
        }
    }

    /// Brings the index table in line with the newest version of the spans table: writes
    /// and adds an index file for each data file without one whose rows `rows_of` knows,
    /// removes the index files of data files that version no longer has; one commit.
    ///
    /// The index table is loaded before the spans table: an index file another node
    /// committed is then always of a data file that the spans version read after holds,
    /// unless that file was removed — so only index files of removed data files go.
    pub async fn sync(
        &self,
        storage: &Storage,
        rows_of: impl Fn(&str) -> Option<FileRows>,
    ) -> Result<Synced, StorageError> {
        let mut table = self.table.lock().await;
        let loaded = if table.snapshot().is_ok() {
            table.update_state().await
        } else {
            table.load().await
        };
        match loaded {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => return Ok(Synced::default()),
            Err(e) => return Err(self.error(e)),
        }
        let present = paths_of(&table);
        let files = match storage.refresh().await? {
            Some(newer) => newer,
            None => storage.files(),
        };
        let live: HashMap<&str, _> = files.all().map(|f| (f.path.as_str(), f)).collect();
        let mut actions = Vec::new();
        let mut synced = Synced::default();
        for (path, file) in &live {
            if present.contains(*path) {
                continue;
            }
            let Some(rows) = rows_of(path) else {
                continue;
            };
            let bytes = encode(&rows).map_err(|e| self.error(DeltaTableError::Generic(e)))?;
            let size = bytes.len() as i64;
            self.store
                .put(&object_store::path::Path::from(*path), bytes.into())
                .await
                .map_err(|e| self.error(e.into()))?;
            actions.push(Action::Add(Add {
                path: path.to_string(),
                partition_values: NewFile::partition_values(&file.workspace, file.hour),
                size,
                modification_time: chrono::Utc::now().timestamp_millis(),
                data_change: true,
                ..Default::default()
            }));
            synced.added += 1;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let removed: Vec<String> = present
            .iter()
            .filter(|p| !live.contains_key(p.as_str()))
            .cloned()
            .collect();
        for path in &removed {
            actions.push(Action::Remove(Remove {
                path: path.clone(),
                data_change: true,
                deletion_timestamp: Some(now),
                ..Default::default()
            }));
            synced.removed += 1;
        }
        if actions.is_empty() {
            *self.paths.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(present);
            return Ok(synced);
        }
        let state = table.snapshot().map_err(|e| self.error(e))?;
        let finished = CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(
                Some(state),
                table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .map_err(|e| self.error(e))?;
        table.state = Some(finished.snapshot());
        *self.paths.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(paths_of(&table));
        Ok(synced)
    }

    /// Deletes index files removed longer ago than `keep`; returns how many.
    pub async fn vacuum(&self, keep: std::time::Duration) -> Result<usize, StorageError> {
        let table = {
            let mut table = self.table.lock().await;
            if table.snapshot().is_ok() {
                table.update_state().await.map_err(|e| self.error(e))?;
            }
            table.clone()
        };
        if table.snapshot().is_err() {
            return Ok(0);
        }
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(1));
        let (_, metrics) = table
            .vacuum()
            .with_mode(VacuumMode::Lite)
            .with_retention_period(keep)
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| self.error(e))?;
        Ok(metrics.files_deleted.len())
    }
}

/// An index file's bytes.
fn encode(rows: &[TraceRow]) -> Result<Vec<u8>, String> {
    let batch = to_batch(rows).map_err(|e| e.to_string())?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), index_schema(), Some(properties))
        .map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.into_inner().map_err(|e| e.to_string())
}

/// Keeps the index table in line with the spans table until `shutdown`: a sync whenever a
/// commit changed the files queries read.
pub async fn run(
    catalog: Arc<Catalog>,
    storage: Arc<Storage>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = catalog.wanted() => {}
        }
        match catalog.sync(&storage).await {
            Ok(s) if s != Synced::default() => {
                tracing::debug!(
                    added = s.added,
                    removed = s.removed,
                    "Synced the trace index table."
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Syncing the trace index table failed; it is retried after the next commit.")
            }
        }
    }
}
