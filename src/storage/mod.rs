//! Storage: the one Delta Lake table of spans, at `--storage URL` (by default the directory
//! `<data-dir>/spans`), on local disk or S3.
//!
//! Input: data files written whole by a flush, a compaction or a migration (on local disk
//! already fsynced with their directories), described as [`NewFile`]s; removals of files.
//! Output: Delta commits, and [`TableFiles`], the files of one committed version, which
//! queries read.
//!
//! Invariants:
//! - a file enters the log only whole and durable, and on local disk a commit is durable
//!   (its log entry and the log directory fsynced, since the object store does not fsync)
//!   before [`Storage::commit_flush`] or [`Storage::commit`] returns;
//! - a flush's commit carries this node's WAL position as two Delta application
//!   transactions (`spanlake-wal-<node>-segment` and `…-offset`), so replay after a crash
//!   skips exactly what the table already holds, whatever the commit's answer was;
//! - the files queries see change only through [`Storage::install`], which the flusher calls
//!   under the buffer's publication lock; while a flush's commit has an unknown outcome,
//!   nothing else installs a newer version (it could show that flush's spans twice).

pub mod files;
pub mod s3;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, TableProperty};
use tracing::{info, warn};
use url::Url;

use crate::schema::{col, file_schema, partition};
use crate::time::{civil_hour, hour_of_partition};
use crate::wal::{SegmentId, WalPosition, sync_dir};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The Delta log or the object store failed.
    #[error("table at {url}: {source}")]
    Delta {
        /// The table.
        url: String,
        /// The cause.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// A local file could not be written or synced.
    #[error("table at {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--storage` is not a location spanlake can use.
    #[error("--storage {0}: {1}")]
    Location(String, String),
    /// Another process wrote to the table under this node's id.
    #[error(
        "another process is writing to the table as node {0}; each node needs its own --node-id and data dir (this process commits nothing more; its WAL keeps every span)"
    )]
    NodeIdInUse(String),
    /// A commit would remove a file the newest version no longer holds (another writer
    /// removed it first).
    #[error("{0} is no longer in the table; another writer removed it")]
    Gone(String),
}

impl StorageError {
    /// Whether another writer's commit conflicted with this one.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StorageError::Gone(_))
            || matches!(
                self,
                StorageError::Delta { source, .. } if matches!(
                    source.as_ref(),
                    DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(_)
                    }
                )
            )
    }
}

/// How many times a commit that conflicts with another writer's is retried against the
/// newer version before the flush (or compaction, or retention) reports a failure.
const COMMIT_ATTEMPTS: usize = 8;

/// One data file of the table.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Relative to the table root.
    pub path: String,
    /// Its partition.
    pub workspace: String,
    /// Its hour bucket (hours since the epoch).
    pub hour: i64,
    /// Bytes.
    pub size: u64,
    /// Rows, if its statistics say.
    pub rows: Option<u64>,
    /// The smallest and largest `start_time` (ns) in it, if its statistics say.
    pub start_ns: Option<(i64, i64)>,
    /// When it was written (ms since the epoch).
    pub modified_ms: i64,
}

/// The data files of one committed version of the table.
#[derive(Debug, Default)]
pub struct TableFiles {
    /// The version (none before the first commit is seen).
    pub version: Option<u64>,
    root: Option<Url>,
    by_workspace: HashMap<String, Vec<Arc<DataFile>>>,
}

impl TableFiles {
    /// The files of one workspace.
    pub fn of(&self, workspace: &str) -> &[Arc<DataFile>] {
        self.by_workspace
            .get(workspace)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The workspaces with files.
    pub fn workspaces(&self) -> impl Iterator<Item = &str> {
        self.by_workspace.keys().map(String::as_str)
    }

    /// Every file, by workspace.
    pub fn all(&self) -> impl Iterator<Item = &Arc<DataFile>> {
        self.by_workspace.values().flatten()
    }

    /// The URL of a file.
    pub fn url(&self, file: &DataFile) -> Option<Url> {
        self.root.as_ref()?.join(&file.path).ok()
    }

    fn from_table(table: &DeltaTable, root: &Url) -> Self {
        let Ok(state) = table.snapshot() else {
            return Self {
                root: Some(root.clone()),
                ..Default::default()
            };
        };
        let mut by_workspace: HashMap<String, Vec<Arc<DataFile>>> = HashMap::new();
        for view in state.log_data().iter() {
            let values = view.partition_values_map();
            let value = |k: &str| values.get(k).cloned().flatten();
            let (Some(workspace), Some(date), Some(hour)) = (
                value(partition::WORKSPACE),
                value(partition::DATE),
                value(partition::HOUR),
            ) else {
                continue;
            };
            let Some(hour) = hour_of_partition(&date, &hour) else {
                continue;
            };
            let stats = view
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let bound = |which: &str| stats.as_ref()?[which][col::START_TIME_UNIX_NANO].as_i64();
            let file = DataFile {
                path: view.path().into_owned(),
                workspace: workspace.clone(),
                hour,
                size: view.size().max(0) as u64,
                rows: view.num_records().map(|n| n as u64),
                start_ns: bound("minValues").zip(bound("maxValues")),
                modified_ms: view.modification_time(),
            };
            by_workspace
                .entry(workspace)
                .or_default()
                .push(Arc::new(file));
        }
        for files in by_workspace.values_mut() {
            files.sort_by(|a, b| (a.hour, &a.path).cmp(&(b.hour, &b.path)));
        }
        Self {
            version: Some(state.version()),
            root: Some(root.clone()),
            by_workspace,
        }
    }
}

/// A data file written and durable, not yet in the log.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Relative to the table root.
    pub path: String,
    /// Its partition.
    pub workspace: String,
    /// Its hour bucket.
    pub hour: i64,
    /// Bytes.
    pub size: u64,
    /// Rows.
    pub rows: u64,
    /// The smallest and largest `start_time` (ns).
    pub start_ns: (i64, i64),
    /// The smallest and largest `trace_id`.
    pub trace_ids: (String, String),
    /// Its trace index rows, if they were made as it was written.
    pub traces: Option<crate::summary::FileRows>,
}

impl NewFile {
    /// The partition values of an hour of a workspace, as the log holds them.
    pub fn partition_values(workspace: &str, hour: i64) -> HashMap<String, Option<String>> {
        let (y, m, d, h) = civil_hour(hour);
        HashMap::from([
            (
                partition::WORKSPACE.to_string(),
                Some(workspace.to_string()),
            ),
            (
                partition::DATE.to_string(),
                Some(format!("{y:04}-{m:02}-{d:02}")),
            ),
            (partition::HOUR.to_string(), Some(h.to_string())),
        ])
    }

    /// Its `add` action.
    pub fn add(&self, data_change: bool) -> Add {
        let stats = serde_json::json!({
            "numRecords": self.rows,
            "minValues": {
                col::TRACE_ID: self.trace_ids.0,
                col::START_TIME_UNIX_NANO: self.start_ns.0,
            },
            "maxValues": {
                col::TRACE_ID: self.trace_ids.1,
                col::START_TIME_UNIX_NANO: self.start_ns.1,
            },
            "nullCount": {
                col::TRACE_ID: 0,
                col::START_TIME_UNIX_NANO: 0,
            },
        });
        Add {
            path: self.path.clone(),
            partition_values: Self::partition_values(&self.workspace, self.hour),
            size: self.size as i64,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change,
            stats: Some(stats.to_string()),
            ..Default::default()
        }
    }
}

/// The `remove` action of a committed file.
pub fn remove(file: &DataFile, data_change: bool) -> Remove {
    Remove {
        path: file.path.clone(),
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        partition_values: Some(NewFile::partition_values(&file.workspace, file.hour)),
        size: Some(file.size as i64),
        ..Default::default()
    }
}

/// Where the table is, parsed from `--storage`: a URL (`s3://bucket/prefix`, `file:///…`)
/// or a local directory.
pub fn parse_location(location: &str) -> Result<Url, StorageError> {
    let bad = |why: String| StorageError::Location(location.to_string(), why);
    if location.contains("://") {
        let mut url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
        match url.scheme() {
            "s3" | "s3a" => {}
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                return parse_location(&path.to_string_lossy());
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other}; use s3:// or a path"
                )));
            }
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        return Ok(url);
    }
    let path = Path::new(location);
    std::fs::create_dir_all(path).map_err(|e| bad(e.to_string()))?;
    let path = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    Url::from_directory_path(&path).map_err(|()| bad("not an absolute path".into()))
}

/// The Delta table of spans and the files of the version queries read.
pub struct Storage {
    url: Url,
    local: Option<PathBuf>,
    node_id: String,
    /// The store rooted at the table.
    store: Arc<dyn ObjectStore>,
    /// The bucket's URL and store, when the table is not on local disk.
    remote: Option<(Url, Arc<dyn ObjectStore>)>,
    table: tokio::sync::Mutex<DeltaTable>,
    files: RwLock<Arc<TableFiles>>,
    /// False from a flush's commit until its version is installed (with the buffer's
    /// release): meanwhile nothing else installs a version, which could hold its spans.
    settled: AtomicBool,
    /// This process's claim on the node id (see [`Storage::claim`]); 0 before it.
    incarnation: std::sync::atomic::AtomicI64,
    /// The version up to which the claim is known to hold: the handle moved past it only
    /// by conflict-checked commits of this process.
    claim_checked: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("url", &self.url.as_str())
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl Storage {
    /// Opens the table at `url`, creating it when it does not exist and `create` is set.
    pub async fn open(url: Url, node_id: String, create: bool) -> Result<Self, StorageError> {
        s3::register();
        let local = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        let (table, created) = load_or_create(
            &url,
            create,
            "spans",
            "Spans stored by spanlake; see docs/schema.md in the spanlake repository.",
            &file_schema(),
        )
        .await?;
        if created {
            if let Some(root) = &local {
                sync_version(root, 0)?;
                sync_dir(root).map_err(io_at(root))?;
            }
            info!(table = %url, "Created the Delta table of spans.");
        }
        let files = Arc::new(TableFiles::from_table(&table, &url));
        let log_store = table.log_store();
        let remote = match (&local, url.host_str()) {
            (None, Some(host)) => {
                let bucket = Url::parse(&format!("{}://{host}", url.scheme()))
                    .map_err(|e| StorageError::Location(url.to_string(), e.to_string()))?;
                Some((bucket, log_store.root_object_store(None)))
            }
            _ => None,
        };
        Ok(Self {
            store: log_store.object_store(None),
            remote,
            url,
            local,
            node_id,
            table: tokio::sync::Mutex::new(table),
            files: RwLock::new(files),
            settled: AtomicBool::new(true),
            incarnation: std::sync::atomic::AtomicI64::new(0),
            claim_checked: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The table's root.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The table's directory when it is on local disk.
    pub fn local_root(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The object store holding the table, rooted at the table.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The object store of the table's bucket (for the query engine) and its URL, when the
    /// table is not on local disk.
    pub fn remote_store(&self) -> Option<(Url, Arc<dyn ObjectStore>)> {
        self.remote.clone()
    }

    /// The files of the version queries read.
    pub fn files(&self) -> Arc<TableFiles> {
        self.files.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `files` the version queries read (call under the buffer's publication lock
    /// when the same step releases buffered chunks).
    pub fn install(&self, files: Arc<TableFiles>) {
        let mut current = self.files.write().unwrap_or_else(|p| p.into_inner());
        if files.version >= current.version {
            *current = files;
        }
    }

    fn delta(&self) -> impl Fn(DeltaTableError) -> StorageError + '_ {
        |source| StorageError::Delta {
            url: self.url.to_string(),
            source: Box::new(source),
        }
    }

    fn app_ids(&self) -> (String, String) {
        (
            format!("spanlake-wal-{}-segment", self.node_id),
            format!("spanlake-wal-{}-offset", self.node_id),
        )
    }

    fn incarnation_app(&self) -> String {
        format!("spanlake-wal-{}-incarnation", self.node_id)
    }

    /// Claims the node id for this process: a commit recording a new random incarnation
    /// under `spanlake-wal-<node>-incarnation`, also kept in `<data-dir>/incarnation`.
    /// Refuses when the table's incarnation is not the one this data dir last claimed
    /// (another process wrote as this node since). Every flush commit carries the
    /// incarnation, and a flush counts a position in the log as its own only under it.
    pub async fn claim(&self, data_dir: &Path) -> Result<(), StorageError> {
        let local = data_dir.join("incarnation");
        // One number, or two while a claim is under way ("<previous> <next>"): a crash
        // between writing the file and the commit leaves the table at either.
        let mine: Vec<i64> = std::fs::read_to_string(&local)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let mut table = self.table.lock().await;
        self.load_newest(&mut table).await?;
        let current = self.txn_version(&table, &self.incarnation_app()).await?;
        if let Some(current) = current
            && !mine.is_empty()
            && !mine.contains(&current)
        {
            return Err(StorageError::NodeIdInUse(self.node_id.clone()));
        }
        let next = loop {
            let n = (ulid::Ulid::new().random() as i64) & i64::MAX;
            if n != 0 && Some(n) != current {
                break n;
            }
        };
        let write_local = |text: String| {
            let tmp = data_dir.join(".incarnation.tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &local))
                .and_then(|()| sync_dir(data_dir))
                .map_err(io_at(&local))
        };
        let previous = current.map(|c| format!("{c} ")).unwrap_or_default();
        write_local(format!("{previous}{next}"))?;
        let now = chrono::Utc::now().timestamp_millis();
        let txn = Transaction::new_with_last_update(self.incarnation_app(), next, Some(now));
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        self.try_commit(&mut table, Vec::new(), operation, vec![txn])
            .await?;
        write_local(next.to_string())?;
        self.incarnation.store(next, Ordering::Release);
        self.claim_checked
            .store(table.version().unwrap_or(0), Ordering::Release);
        Ok(())
    }

    /// Brings a loaded `table` to the newest version (an unloaded one, before the first
    /// commit, stays as it is).
    async fn load_newest(&self, table: &mut DeltaTable) -> Result<(), StorageError> {
        if table.snapshot().is_ok() {
            table.update_state().await.map_err(self.delta())?;
        }
        Ok(())
    }

    /// The newest version's application transaction `app`.
    pub async fn app_version(&self, app: &str) -> Result<Option<i64>, StorageError> {
        let mut table = self.table.lock().await;
        self.load_newest(&mut table).await?;
        self.txn_version(&table, app).await
    }

    async fn txn_version(
        &self,
        table: &DeltaTable,
        app: &str,
    ) -> Result<Option<i64>, StorageError> {
        let Ok(state) = table.snapshot() else {
            return Ok(None);
        };
        state
            .transaction_version(table.log_store().as_ref(), app)
            .await
            .map_err(self.delta())
    }

    /// An error if `table` shows another process's claim on this node id.
    async fn check_claim(&self, table: &DeltaTable) -> Result<(), StorageError> {
        let mine = self.incarnation.load(Ordering::Acquire);
        if mine != 0 && self.txn_version(table, &self.incarnation_app()).await? != Some(mine) {
            return Err(StorageError::NodeIdInUse(self.node_id.clone()));
        }
        Ok(())
    }

    /// Whether `position` is in `table` as this process's own commit; an error if another
    /// process has claimed the node id.
    async fn holds_position(
        &self,
        table: &DeltaTable,
        position: WalPosition,
    ) -> Result<bool, StorageError> {
        self.check_claim(table).await?;
        Ok(self
            .position_in(table)
            .await?
            .is_some_and(|p| p >= position))
    }

    /// The WAL position of this node's last flush in `table` (everything before it is in
    /// the table).
    async fn position_in(&self, table: &DeltaTable) -> Result<Option<WalPosition>, StorageError> {
        let (segment_app, offset_app) = self.app_ids();
        let segment = self.txn_version(table, &segment_app).await?;
        let offset = self.txn_version(table, &offset_app).await?;
        Ok(segment.map(|s| WalPosition {
            segment: SegmentId(s.max(0) as u64),
            offset: offset.unwrap_or(0).max(0) as u64,
        }))
    }

    /// The WAL position of this node's last committed flush, read from the latest version.
    pub async fn committed_position(&self) -> Result<Option<WalPosition>, StorageError> {
        let mut table = self.table.lock().await;
        self.load_newest(&mut table).await?;
        self.position_in(&table).await
    }

    /// Commits a flush: adds `files` and records `position` for this node in one commit,
    /// retried against newer versions on conflicts (a `retry` of a flush that failed
    /// before first asks the log whether it is there). A commit whose answer was an error but
    /// which the log holds (its position is there) counts as done. Returns the files of the
    /// committed version, for [`Storage::install_flush`]; until that is called (or the
    /// commit fails for sure), no other commit installs its version.
    pub async fn commit_flush(
        &self,
        new: &[NewFile],
        position: WalPosition,
        retry: bool,
    ) -> Result<Arc<TableFiles>, StorageError> {
        let mut table = self.table.lock().await;
        self.settled.store(false, Ordering::Release);
        if retry {
            table.update_state().await.map_err(self.delta())?;
            if self.holds_position(&table, position).await? {
                return Ok(Arc::new(TableFiles::from_table(&table, &self.url)));
            }
        }
        // Commits loaded by a refresh (or made by compaction and retention) were not
        // checked against this process's claim: a claim by another process among them
        // would not conflict with this commit, so look before committing. A claim made
        // after this version conflicts with the commit's own transaction.
        let version = table.version().unwrap_or(0);
        if self.incarnation.load(Ordering::Acquire) != 0
            && version > self.claim_checked.load(Ordering::Acquire)
        {
            self.check_claim(&table).await?;
            self.claim_checked.store(version, Ordering::Release);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let (segment_app, offset_app) = self.app_ids();
        let mut txns = vec![
            Transaction::new_with_last_update(segment_app, position.segment.0 as i64, Some(now)),
            Transaction::new_with_last_update(offset_app, position.offset as i64, Some(now)),
        ];
        let incarnation = self.incarnation.load(Ordering::Acquire);
        if incarnation != 0 {
            txns.push(Transaction::new_with_last_update(
                self.incarnation_app(),
                incarnation,
                Some(now),
            ));
        }
        let actions: Vec<Action> = new.iter().map(|f| Action::Add(f.add(true))).collect();
        let operation = || DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(partition::ALL.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self
                .try_commit(&mut table, actions.clone(), operation(), txns.clone())
                .await
            {
                Ok(()) => {
                    self.claim_checked
                        .store(table.version().unwrap_or(0), Ordering::Release);
                    break;
                }
                Err(e) => e,
            };
            // Whatever the answer, the log says whether the commit happened.
            table.update_state().await.map_err(self.delta())?;
            if self.holds_position(&table, position).await? {
                self.claim_checked
                    .store(table.version().unwrap_or(0), Ordering::Release);
                warn!(error = %failure, "A flush commit answered with an error but is in the log; it counts as done.");
                self.sync_log()?;
                break;
            }
            if attempt >= COMMIT_ATTEMPTS || !retryable(&failure) {
                // Still unsettled: a write the store answered with an error may yet
                // land; the retry of this flush settles it.
                return Err(failure);
            }
            warn!(error = %failure, attempt, "A flush commit conflicted with another writer's; retrying on the newer version.");
        }
        Ok(Arc::new(TableFiles::from_table(&table, &self.url)))
    }

    /// Makes the version of a flush's commit the one queries read (under the buffer's
    /// publication lock, in the step that drops the flushed chunks); other commits may
    /// install their versions again.
    pub fn install_flush(&self, files: Arc<TableFiles>) {
        self.install(files);
        self.settled.store(true, Ordering::Release);
    }

    /// Commits `actions` (a compaction, a retention or a migration) with the application
    /// transactions `txns`; an append (`retry_conflicts`) is retried against newer versions
    /// on conflicts, anything that removes files is not (the other writer's commit may
    /// have removed them already), and is refused at once if a file it removes is no longer
    /// in the newest version this node loaded.
    /// Returns the files of the committed version, already installed for queries unless
    /// a flush's outcome is pending.
    pub async fn commit(
        &self,
        actions: Vec<Action>,
        operation: DeltaOperation,
        txns: Vec<Transaction>,
        retry_conflicts: bool,
    ) -> Result<Arc<TableFiles>, StorageError> {
        let mut table = self.table.lock().await;
        // The conflict check covers commits after the version this one is made on, so a
        // file to remove must still be in that version: the files were chosen from the
        // version queries read, which may be older.
        let removed: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove(r) => Some(r.path.as_str()),
                _ => None,
            })
            .collect();
        if !removed.is_empty() {
            let present = active_paths(&table);
            if let Some(gone) = removed.iter().find(|p| !present.contains(**p)) {
                return Err(StorageError::Gone(gone.to_string()));
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self
                .try_commit(&mut table, actions.clone(), operation.clone(), txns.clone())
                .await
            {
                Ok(()) => break,
                Err(e) => e,
            };
            // An error answer does not mean the commit is not in the log (a lost answer
            // whose retry then conflicted with the commit itself): the log says.
            table.update_state().await.map_err(self.delta())?;
            if in_log(&table, &actions) {
                warn!(error = %failure, "A commit answered with an error but is in the log; it counts as done.");
                self.sync_log()?;
                break;
            }
            if !(retry_conflicts && attempt < COMMIT_ATTEMPTS && retryable(&failure)) {
                return Err(failure);
            }
            warn!(error = %failure, attempt, "A commit conflicted with another writer's; retrying on the newer version.");
        }
        let files = Arc::new(TableFiles::from_table(&table, &self.url));
        if self.settled.load(Ordering::Acquire) {
            self.install(files.clone());
        }
        Ok(files)
    }

    /// fsyncs the log of a local table (after a commit whose answer was lost).
    pub fn sync_log(&self) -> Result<(), StorageError> {
        match &self.local {
            Some(root) => sync_log_dir(root),
            None => Ok(()),
        }
    }

    /// fsyncs log entries `after + 1 ..= upto` of a local table (written by operations
    /// that commit through their own handle, like vacuum).
    pub fn sync_versions(&self, after: u64, upto: u64) -> Result<(), StorageError> {
        if let Some(root) = &self.local {
            for v in after + 1..=upto {
                sync_version(root, v)?;
            }
        }
        Ok(())
    }

    /// Loads the newest version (other nodes' commits); returns its files when it is newer
    /// than what queries read.
    pub async fn refresh(&self) -> Result<Option<Arc<TableFiles>>, StorageError> {
        let mut table = self.table.lock().await;
        if table.snapshot().is_err() {
            match table.load().await {
                Ok(()) => {}
                Err(DeltaTableError::NotATable(_)) => return Ok(None),
                Err(e) => return Err(self.delta()(e)),
            }
        } else {
            table.update_state().await.map_err(self.delta())?;
        }
        let version = table.version();
        if version <= self.files().version {
            return Ok(None);
        }
        Ok(Some(Arc::new(TableFiles::from_table(&table, &self.url))))
    }

    /// A copy of the table handle at its loaded version (for vacuum and other operations
    /// that consume one).
    pub async fn table(&self) -> DeltaTable {
        self.table.lock().await.clone()
    }

    async fn try_commit(
        &self,
        table: &mut DeltaTable,
        actions: Vec<Action>,
        operation: DeltaOperation,
        txns: Vec<Transaction>,
    ) -> Result<(), StorageError> {
        let log_store = table.log_store();
        let state = table.snapshot().map_err(self.delta())?;
        let finished = CommitBuilder::from(
            CommitProperties::default()
                .with_application_transactions(txns)
                .with_max_retries(COMMIT_ATTEMPTS),
        )
        .with_actions(actions)
        .build(Some(state), log_store, operation)
        .await
        .map_err(self.delta())?;
        let version = finished.version();
        table.state = Some(finished.snapshot());
        if let Some(root) = &self.local {
            sync_version(root, version)?;
        }
        Ok(())
    }
}

/// The paths of the files in `table`'s version (none before its first commit).
fn active_paths(table: &DeltaTable) -> std::collections::HashSet<String> {
    match table.snapshot() {
        Ok(state) => state
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect(),
        Err(_) => Default::default(),
    }
}

/// Whether `table`'s version holds the effect of `actions`: every added file present and
/// every removed one gone (with fresh file names, only the commit itself can do that).
fn in_log(table: &DeltaTable, actions: &[Action]) -> bool {
    let present = active_paths(table);
    let mut adds = 0;
    for a in actions {
        match a {
            Action::Add(add) if !present.contains(&add.path) => return false,
            Action::Add(_) => adds += 1,
            Action::Remove(r) if present.contains(&r.path) => return false,
            _ => {}
        }
    }
    adds > 0
}

/// Whether a failed commit may succeed against a newer version.
fn retryable(e: &StorageError) -> bool {
    match e {
        StorageError::Delta { source, .. } => matches!(
            source.as_ref(),
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            } | DeltaTableError::VersionAlreadyExists(_)
        ),
        _ => false,
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs log entry `version` of a local table, its checkpoint if one was written, and
/// the log directory.
fn sync_version(root: &Path, version: u64) -> Result<(), StorageError> {
    let log = root.join("_delta_log");
    for name in [
        format!("{version:020}.json"),
        format!("{version:020}.checkpoint.parquet"),
        "_last_checkpoint".to_string(),
    ] {
        let path = log.join(name);
        match std::fs::File::open(&path) {
            Ok(f) => f.sync_all().map_err(io_at(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    sync_dir(&log).map_err(io_at(&log))
}

/// fsyncs every entry of a local table's log (after a commit whose answer was lost).
fn sync_log_dir(root: &Path) -> Result<(), StorageError> {
    let log = root.join("_delta_log");
    for entry in std::fs::read_dir(&log).map_err(io_at(&log))? {
        let path = entry.map_err(io_at(&log))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_at(&path))?;
        }
    }
    sync_dir(&log).map_err(io_at(&log))
}

/// Loads the Delta table at `url`; when there is none and `create` is set, creates it (see
/// [`create_partitioned`]) as `name` with `comment`. Returns it (not loaded when there is
/// none and nothing was created) and whether it was created.
pub(crate) async fn load_or_create(
    url: &Url,
    create: bool,
    name: &str,
    comment: &str,
    data: &arrow::datatypes::Schema,
) -> Result<(DeltaTable, bool), StorageError> {
    let delta = |source: DeltaTableError| StorageError::Delta {
        url: url.to_string(),
        source: Box::new(source),
    };
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(delta)?
        .build()
        .map_err(delta)?;
    match table.load().await {
        Ok(()) => Ok((table, false)),
        Err(DeltaTableError::NotATable(_)) if create => {
            let created = create_partitioned(&table, url, name, comment, data)
                .await
                .map_err(delta)?;
            Ok((created, true))
        }
        Err(DeltaTableError::NotATable(_)) => Ok((table, false)),
        Err(e) => Err(delta(e)),
    }
}

/// Creates a table of `data`'s columns partitioned by `workspace`, `date`, `hour`, removed
/// files kept an hour; if another node created it meanwhile, loads theirs.
async fn create_partitioned(
    table: &DeltaTable,
    url: &Url,
    name: &str,
    comment: &str,
    data: &arrow::datatypes::Schema,
) -> Result<DeltaTable, DeltaTableError> {
    let data: StructType = data.try_into_kernel()?;
    let partitions: StructType = (&arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new(
            partition::WORKSPACE,
            arrow::datatypes::DataType::Utf8,
            false,
        ),
        arrow::datatypes::Field::new(partition::DATE, arrow::datatypes::DataType::Date32, false),
        arrow::datatypes::Field::new(partition::HOUR, arrow::datatypes::DataType::Int32, false),
    ]))
        .try_into_kernel()?;
    let created = table
        .create()
        .with_table_name(name)
        .with_comment(comment)
        .with_columns(data.fields().cloned())
        .with_columns(partitions.fields().cloned())
        .with_partition_columns(partition::ALL)
        .with_configuration_property(
            TableProperty::DeletedFileRetentionDuration,
            Some("interval 1 hours"),
        )
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        Err(e) => {
            warn!(table = name, error = %e, "Creating the table failed; another node may have created it, loading it.");
            let mut t = DeltaTableBuilder::from_url(url.clone())?.build()?;
            t.load().await?;
            Ok(t)
        }
    }
}

/// Locks `<data-dir>/lock` for this process (released when the file is dropped, or when
/// the process dies): two processes on one data dir would share one WAL.
pub fn lock_data_dir(data_dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
            "{} is in use by another spanlake process (it holds {})",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// This node's id: `--node-id`, or the one kept in `<data-dir>/node-id`, generated once.
pub fn node_id(data_dir: &Path, given: Option<&str>) -> std::io::Result<String> {
    let valid = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if let Some(id) = given {
        if !valid(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--node-id {id:?}: use 1 to 64 letters, digits, '-' or '_'"),
            ));
        }
        return Ok(id.to_string());
    }
    let path = data_dir.join(crate::schema::path::NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if valid(id.trim()) => return Ok(id.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a node id", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let tmp = data_dir.join(format!(".{}.tmp", crate::schema::path::NODE_ID_FILE));
    std::fs::write(&tmp, &id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(data_dir)?;
    Ok(id)
}
