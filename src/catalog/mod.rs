//! Catalog: what queries keep between requests — per data file its trace index rows
//! ([`crate::summary`]), and per workspace those rows merged over the files of the version queries
//! read ([`Merged`]); the trace index table ([`table`]) persists the per-file rows.
//!
//! Input: data files with their index rows (offered by the flush and compaction as they
//! write them, read from the index table, or summarized from the data file itself) and the
//! buffer's chunks. Output: a [`TraceView`] — every trace of one snapshot (one version's
//! files ∪ the buffer), listed, counted and looked up without reading spans. Invariants: a
//! file's rows are a pure function of its (immutable) content, so rows from any source are
//! interchangeable; a workspace's merged rows are for exactly one version's set of files,
//! extended in place when files are only added (a flush) and rebuilt when any is removed
//! (compaction, retention), and only ever replaced by a newer version's; the rows of a file
//! are forgotten when a commit removes it (or it is discarded uncommitted); the buffer's
//! rows are merged per request on top, never into the cache.

pub mod table;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::summary::{FileRows, Status, TraceRow};

use crate::storage::{DataFile, NewFile, Storage, StorageError};
use table::{IndexTable, Synced};

/// One workspace's traces over a set of data files.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    paths: HashSet<String>,
    /// The rows of the files merged, which entries point into.
    files: Vec<FileRows>,
    entries: Vec<Entry>,
    /// Per entry, what a listing scans without reading the row.
    keys: Vec<Key>,
    by_id: HashMap<Arc<str>, u32>,
}

/// The fields of a trace a listing filters and sorts on, packed: scanning millions of them
/// reads a few bytes per trace instead of its row.
#[derive(Debug, Clone, Copy)]
struct Key {
    start_ns: i64,
    /// [`text_hash`] of the root's session id.
    session: u32,
    status: Status,
}

impl Key {
    fn of(row: &TraceRow) -> Self {
        Self {
            start_ns: row.root.start_ns,
            session: text_hash(row.root.session_id.as_deref()),
            status: row.root.status,
        }
    }
}

/// A 32-bit FNV-1a hash of a text, never 0; 0 for none.
fn text_hash(s: Option<&str>) -> u32 {
    let Some(s) = s else { return 0 };
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h | 1
}

/// One trace of a [`Merged`]: most traces are in one file, whose row is used as it is.
#[derive(Debug, Clone)]
enum Entry {
    /// Row `row` of file `file`.
    One { file: u32, row: u32 },
    /// The rows of several files merged.
    Many(Box<TraceRow>),
}

impl Merged {
    fn of(files: &[(Arc<DataFile>, FileRows)]) -> Self {
        let mut merged = Merged::default();
        for (f, rows) in files {
            if merged.paths.insert(f.path.clone()) {
                merged.add(rows);
            }
        }
        merged
    }

    fn add(&mut self, rows: &FileRows) {
        let file = self.files.len() as u32;
        self.files.push(rows.clone());
        for (i, row) in rows.iter().enumerate() {
            match self.by_id.get(&row.trace_id) {
                Some(&at) => {
                    let entry = &mut self.entries[at as usize];
                    let key = match entry {
                        Entry::Many(merged) => {
                            merged.merge(row);
                            Key::of(merged)
                        }
                        Entry::One { file, row: r } => {
                            let mut merged = self.files[*file as usize][*r as usize].clone();
                            merged.merge(row);
                            let key = Key::of(&merged);
                            *entry = Entry::Many(Box::new(merged));
                            key
                        }
                    };
                    self.keys[at as usize] = key;
                }
                None => {
                    self.by_id
                        .insert(row.trace_id.clone(), self.entries.len() as u32);
                    self.entries.push(Entry::One {
                        file,
                        row: i as u32,
                    });
                    self.keys.push(Key::of(row));
                }
            }
        }
    }

    fn row(&self, at: usize) -> &TraceRow {
        match &self.entries[at] {
            Entry::One { file, row } => &self.files[*file as usize][*row as usize],
            Entry::Many(merged) => merged,
        }
    }

    fn rows(&self) -> impl DoubleEndedIterator<Item = (usize, &TraceRow)> {
        (0..self.entries.len()).map(|i| (i, self.row(i)))
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).map(|&at| at as usize)
    }

    /// Traces merged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The warm state of the trace index, and the index table.
#[derive(Debug, Default)]
pub struct Catalog {
    files: Mutex<HashMap<String, FileRows>>,
    merged: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    /// The trace index table beside the spans table, if it could be opened.
    index: Option<IndexTable>,
    /// Set when the index table may be behind (a commit added or removed files).
    wanted: tokio::sync::Notify,
}

/// A workspace's kept merge and the table version of its files.
#[derive(Debug, Default)]
struct Slot {
    version: Option<u64>,
    merged: Arc<Merged>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    /// The catalog of the spans table `storage`, with its index table (created if
    /// `create`; without one, every file's rows are summarized from the file).
    pub async fn open(storage: &Storage, create: bool) -> Self {
        let index = match IndexTable::open(storage, create).await {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, "The trace index table cannot be opened; traces are summarized from the data files.");
                None
            }
        };
        Self {
            index,
            ..Default::default()
        }
    }

    /// The index table, if there is one.
    pub fn index(&self) -> Option<&IndexTable> {
        self.index.as_ref()
    }

    /// Remembers the rows of files written (before their commit, so that queries find
    /// them as soon as the files are visible; rows of files never committed are forgotten
    /// at the next sync).
    pub fn written(&self, files: &[NewFile]) {
        for f in files {
            if let Some(rows) = &f.traces {
                self.offer(&f.path, rows.clone());
            }
        }
    }

    /// Remembers the rows of committed files and says the index table is behind.
    pub fn committed(&self, files: &[NewFile]) {
        self.written(files);
        self.changed();
    }

    /// Says the index table may be behind the spans table.
    pub fn changed(&self) {
        self.wanted.notify_one();
    }

    /// Waits until the index table may be behind.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Brings the index table in line with the newest version of the spans table, then
    /// forgets the rows of every file that version does not hold (removed by any node; a
    /// file committed since is loaded again when needed).
    pub async fn sync(&self, storage: &Storage) -> Result<Synced, StorageError> {
        let synced = match &self.index {
            Some(index) => index.sync(storage, |p| self.rows_of(p)).await,
            None => Ok(Synced::default()),
        };
        let live = storage.files();
        let live: HashSet<&str> = live.all().map(|f| f.path.as_str()).collect();
        lock(&self.files).retain(|p, _| live.contains(p.as_str()));
        synced
    }

    /// Remembers the index rows of the data file at `path` (relative to the table).
    pub fn offer(&self, path: &str, rows: FileRows) {
        lock(&self.files).insert(path.to_string(), rows);
    }

    /// The index rows of the data file at `path`, if known.
    pub fn rows_of(&self, path: &str) -> Option<FileRows> {
        lock(&self.files).get(path).cloned()
    }

    /// `workspace`'s traces over exactly `files` (each with its rows), the files of table
    /// version `version`. The merge kept for the workspace is extended in place when the
    /// files only grew, rebuilt when some were removed; a snapshot older than it (or a part
    /// of a version) gets a merge of its own, never kept.
    pub fn merged(
        &self,
        workspace: &str,
        version: Option<u64>,
        files: &[(Arc<DataFile>, FileRows)],
    ) -> Arc<Merged> {
        let slot = lock(&self.merged)
            .entry(workspace.to_string())
            .or_default()
            .clone();
        let mut slot = lock(&slot);
        let live: HashSet<&str> = files.iter().map(|(f, _)| f.path.as_str()).collect();
        let current = &slot.merged;
        let same = current.paths.len() == live.len()
            && current.paths.iter().all(|p| live.contains(p.as_str()));
        if version < slot.version || (version == slot.version && !same) {
            drop(slot);
            return Arc::new(Merged::of(files));
        }
        slot.version = version;
        if same {
            return slot.merged.clone();
        }
        let grows = slot.merged.paths.iter().all(|p| live.contains(p.as_str()));
        if grows {
            // A flush added files: merge theirs in (in place unless a request holds it).
            let merged = Arc::make_mut(&mut slot.merged);
            for (f, rows) in files {
                if merged.paths.insert(f.path.clone()) {
                    merged.add(rows);
                }
            }
        } else {
            // Files were removed (compaction, retention): rebuild.
            slot.merged = Arc::new(Merged::of(files));
        }
        slot.merged.clone()
    }
}

/// The root-span fields a listing filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootField {
    SessionId,
    ExperimentId,
    TestCaseId,
    /// The root span's own status.
    Status,
}

/// A trace listing's filter.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    /// Trace ids (any of them), as stored.
    pub ids: Option<Vec<String>>,
    /// Root fields that must equal one of the values.
    pub fields: Vec<(RootField, Vec<String>)>,
    /// `started_at >=` (ns).
    pub started_gte: Option<i64>,
    /// `started_at <=` (ns).
    pub started_lte: Option<i64>,
}

impl TraceFilter {
    /// Whether a trace with `key` may match (when it does, [`Self::matches`] decides
    /// unless [`Self::decided_by_key`]).
    fn may_match(&self, key: &Key) -> bool {
        let start = key.start_ns;
        if self.started_gte.is_some_and(|g| start < g)
            || self.started_lte.is_some_and(|l| start > l)
        {
            return false;
        }
        self.fields.iter().all(|(field, values)| match field {
            RootField::Status => values.iter().any(|v| v == key.status.as_str()),
            RootField::SessionId => values.iter().any(|v| text_hash(Some(v)) == key.session),
            _ => true,
        })
    }

    /// Whether [`Self::may_match`] is the whole answer (no field needs the row).
    fn decided_by_key(&self) -> bool {
        self.ids.is_none()
            && self
                .fields
                .iter()
                .all(|(field, _)| *field == RootField::Status)
    }

    fn matches(&self, row: &TraceRow) -> bool {
        let start = row.root.start_ns;
        if self.started_gte.is_some_and(|g| start < g)
            || self.started_lte.is_some_and(|l| start > l)
        {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.iter().any(|i| **i == *row.trace_id)
        {
            return false;
        }
        self.fields.iter().all(|(field, values)| {
            let value = match field {
                RootField::SessionId => row.root.session_id.as_deref(),
                RootField::ExperimentId => row.root.experiment_id.as_deref(),
                RootField::TestCaseId => row.root.test_case_id.as_deref(),
                RootField::Status => Some(row.root.status.as_str()),
            };
            value.is_some_and(|v| values.iter().any(|w| w == v))
        })
    }
}

/// Every trace of one snapshot: the merged rows of its files with the buffer's on top.
#[derive(Debug)]
pub struct TraceView {
    merged: Arc<Merged>,
    /// Traces the buffer touches, merged with their rows in `merged` if any.
    overlay: Vec<TraceRow>,
    /// Positions in `overlay` by trace id.
    overlay_at: HashMap<Arc<str>, usize>,
    /// Positions in `merged.rows` that `overlay` replaces.
    replaced: HashSet<usize>,
    /// The snapshot's files with their rows (to find a trace's files).
    files: Vec<(Arc<DataFile>, FileRows)>,
}

impl TraceView {
    /// The view of `merged` (over `files`) with the buffer's rows `buffered` on top.
    pub fn new(
        merged: Arc<Merged>,
        files: Vec<(Arc<DataFile>, FileRows)>,
        buffered: Vec<TraceRow>,
    ) -> Self {
        let mut replaced = HashSet::new();
        let overlay = buffered
            .into_iter()
            .map(|b| match merged.position(&b.trace_id) {
                Some(at) => {
                    replaced.insert(at);
                    let mut row = merged.row(at).clone();
                    row.merge(&b);
                    row
                }
                None => b,
            })
            .collect();
        let overlay: Vec<TraceRow> = overlay;
        let overlay_at = overlay
            .iter()
            .enumerate()
            .map(|(i, r)| (r.trace_id.clone(), i))
            .collect();
        Self {
            merged,
            overlay,
            overlay_at,
            replaced,
            files,
        }
    }

    /// Traces in all.
    pub fn len(&self) -> usize {
        self.merged.len() + self.overlay.len() - self.replaced.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The trace with id `id` (as stored).
    pub fn get(&self, id: &str) -> Option<&TraceRow> {
        if let Some(&at) = self.overlay_at.get(id) {
            return Some(&self.overlay[at]);
        }
        self.merged.position(id).map(|at| self.merged.row(at))
    }

    /// The data files holding spans of trace `id`.
    pub fn files_of(&self, id: &str) -> Vec<Arc<DataFile>> {
        self.files
            .iter()
            .filter(|(_, rows)| rows.binary_search_by(|r| (*r.trace_id).cmp(id)).is_ok())
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Every trace (those of older files first).
    pub fn rows(&self) -> impl DoubleEndedIterator<Item = &TraceRow> {
        let replaced = &self.replaced;
        let kept = self
            .merged
            .rows()
            .filter_map(move |(i, r)| (!replaced.contains(&i)).then_some(r));
        kept.chain(self.overlay.iter())
    }

    /// The page `[offset, offset + limit)` of the traces `filter` matches, by `started_at`
    /// then id (both descending or both ascending), and how many match in all.
    pub fn list(
        &self,
        filter: &TraceFilter,
        descending: bool,
        offset: usize,
        limit: usize,
    ) -> (Vec<&TraceRow>, usize) {
        let keep = offset.saturating_add(limit);
        let mut top = Top::new(keep, descending);
        let mut total = 0;
        if let Some(ids) = &filter.ids {
            let mut seen = HashSet::new();
            for row in ids
                .iter()
                .filter(|i| seen.insert(i.as_str()))
                .filter_map(|i| self.get(i))
            {
                if filter.matches(row) {
                    total += 1;
                    top.offer(row.root.start_ns, || row);
                }
            }
        } else {
            // The packed keys first; a row is read only when a filter needs it or it
            // enters the page. Rows of older files come first: newest-first listings read
            // them backwards, so the page fills with the best rows early.
            let by_key = filter.decided_by_key();
            let merged = &self.merged;
            let replaced = (!self.replaced.is_empty()).then_some(&self.replaced);
            let mut visit = |i: usize| {
                if replaced.is_some_and(|r| r.contains(&i)) {
                    return;
                }
                let key = &merged.keys[i];
                if !filter.may_match(key) || !(by_key || filter.matches(merged.row(i))) {
                    return;
                }
                total += 1;
                top.offer(key.start_ns, || merged.row(i));
            };
            if descending {
                (0..merged.len()).rev().for_each(&mut visit);
            } else {
                (0..merged.len()).for_each(&mut visit);
            }
            for row in &self.overlay {
                if filter.matches(row) {
                    total += 1;
                    top.offer(row.root.start_ns, || row);
                }
            }
        }
        let mut page = top.into_sorted();
        let page = page.split_off(offset.min(page.len()));
        (page, total)
    }
}

/// The best `keep` rows offered, in listing order.
struct Top<'a> {
    keep: usize,
    descending: bool,
    /// Its top is the worst row kept.
    heap: BinaryHeap<Ranked<'a>>,
}

impl<'a> Top<'a> {
    fn new(keep: usize, descending: bool) -> Self {
        Self {
            keep,
            descending,
            heap: BinaryHeap::with_capacity(keep.min(1 << 16) + 1),
        }
    }

    /// Offers the row starting at `start_ns` (read only if it may be kept).
    fn offer(&mut self, start_ns: i64, row: impl FnOnce() -> &'a TraceRow) {
        if self.keep == 0 {
            return;
        }
        if self.heap.len() == self.keep {
            let worst = self.heap.peek().map_or(start_ns, |w| w.row.root.start_ns);
            let worse = if self.descending {
                start_ns < worst
            } else {
                start_ns > worst
            };
            if worse {
                return;
            }
        }
        let ranked = Ranked {
            row: row(),
            descending: self.descending,
        };
        if self.heap.len() < self.keep {
            self.heap.push(ranked);
        } else if self.heap.peek().is_some_and(|worst| ranked < *worst) {
            self.heap.pop();
            self.heap.push(ranked);
        }
    }

    fn into_sorted(self) -> Vec<&'a TraceRow> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.row)
            .collect()
    }
}

/// A row in listing order: `Ord` puts better-ranked rows first (smaller).
struct Ranked<'a> {
    row: &'a TraceRow,
    descending: bool,
}

impl Ranked<'_> {
    fn key(&self) -> (i64, &str) {
        (self.row.root.start_ns, &self.row.trace_id)
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Ranked<'_> {}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let order = self.key().cmp(&other.key());
        if self.descending {
            order.reverse()
        } else {
            order
        }
    }
}
