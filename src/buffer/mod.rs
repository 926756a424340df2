//! Buffer: the acknowledged chunks not yet in Parquet, per workspace.
//!
//! Input: chunks from the WAL writer, each tagged with the WAL segment that holds it.
//! Output: snapshots for the flusher (and for queries: a chunk is visible from the moment
//! its request is acknowledged). Invariants: per workspace, chunks are kept in WAL order,
//! so the chunks of segments below a given id are always a prefix; the totals of rows
//! and bytes are bounded by the ingest path's overload check, and the flusher is woken
//! when they pass the flush thresholds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use tokio::sync::Notify;

use crate::chunk::SpanChunk;
use crate::wal::SegmentId;
use crate::workspace::Workspace;

/// When the buffer asks to be flushed.
#[derive(Debug, Clone, Copy)]
pub struct FlushThresholds {
    /// Buffered rows (all workspaces).
    pub rows: u64,
    /// Buffered bytes (all workspaces, Arrow memory).
    pub bytes: u64,
}

struct Entry {
    segment: SegmentId,
    chunk: SpanChunk,
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    workspaces: BTreeMap<Workspace, Vec<Entry>>,
    oldest: Option<Instant>,
}

/// The in-memory part of every workspace's `spans`.
pub struct Buffer {
    inner: Mutex<Inner>,
    /// Held for writing while a flush makes its files visible and drops their chunks;
    /// for reading while a query lists files and snapshots chunks.
    published: RwLock<()>,
    rows: AtomicU64,
    bytes: AtomicU64,
    thresholds: FlushThresholds,
    flush_wanted: Notify,
}

/// The chunks of one workspace taken for a flush.
#[derive(Clone)]
pub struct Taken {
    /// The workspace.
    pub workspace: Workspace,
    /// Its chunks from segments below the flush point, in WAL order.
    pub chunks: Vec<SpanChunk>,
}

impl Buffer {
    /// An empty buffer.
    pub fn new(thresholds: FlushThresholds) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            published: RwLock::new(()),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            thresholds,
            flush_wanted: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every operation is a
        // single push or drain), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a committed chunk.
    pub fn push(&self, segment: SegmentId, workspace: Workspace, chunk: SpanChunk) {
        let rows = chunk.num_rows() as u64;
        let bytes = chunk.memory_size() as u64;
        {
            let mut inner = self.lock();
            inner.oldest.get_or_insert_with(Instant::now);
            inner.workspaces.entry(workspace).or_default().push(Entry {
                segment,
                chunk,
                bytes,
            });
        }
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if rows >= self.thresholds.rows || bytes >= self.thresholds.bytes {
            self.flush_wanted.notify_one();
        }
    }

    /// Buffered rows.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Buffered bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether a flush threshold is passed.
    pub fn over_threshold(&self) -> bool {
        self.rows() >= self.thresholds.rows || self.bytes() >= self.thresholds.bytes
    }

    /// When the oldest buffered chunk arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.lock().oldest
    }

    /// Completes when a flush threshold is passed.
    pub async fn flush_wanted(&self) {
        self.flush_wanted.notified().await
    }

    /// Snapshots every workspace's chunks from segments below `below` (all when `None`).
    /// They stay buffered (and visible) until [`Buffer::release`].
    pub fn take(&self, below: Option<SegmentId>) -> Vec<Taken> {
        let inner = self.lock();
        inner
            .workspaces
            .iter()
            .map(|(ws, entries)| Taken {
                workspace: ws.clone(),
                chunks: entries
                    .iter()
                    .take_while(|e| below.is_none_or(|b| e.segment < b))
                    .map(|e| e.chunk.clone())
                    .collect(),
            })
            .filter(|t| !t.chunks.is_empty())
            .collect()
    }

    /// Drops what [`Buffer::take`] returned, once it is in Parquet.
    fn release(&self, taken: &[Taken]) {
        let (mut rows, mut bytes) = (0, 0);
        let mut inner = self.lock();
        for t in taken {
            if let Some(entries) = inner.workspaces.get_mut(&t.workspace) {
                for e in entries.drain(..t.chunks.len()) {
                    rows += e.chunk.num_rows() as u64;
                    bytes += e.bytes;
                }
                if entries.is_empty() {
                    inner.workspaces.remove(&t.workspace);
                }
            }
        }
        if inner.workspaces.is_empty() {
            inner.oldest = None;
        } else if rows > 0 {
            inner.oldest = Some(Instant::now());
        }
        drop(inner);
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Runs `publish` (which makes flushed files visible) and, if it succeeds, releases
    /// `taken`, as one step for readers of [`Buffer::read_published`].
    pub fn publish<E>(
        &self,
        taken: &[Taken],
        publish: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        // The guarded data is `()`: a poisoned lock protects nothing that could be torn.
        let _guard = self.published.write().unwrap_or_else(|p| p.into_inner());
        publish()?;
        self.release(taken);
        Ok(())
    }

    /// Runs `read` (which lists files and snapshots chunks) while no flush publishes.
    pub fn read_published<R>(&self, read: impl FnOnce() -> R) -> R {
        let _guard = self.published.read().unwrap_or_else(|p| p.into_inner());
        read()
    }

    /// The workspaces holding buffered spans.
    pub fn workspaces(&self) -> Vec<Workspace> {
        self.lock().workspaces.keys().cloned().collect()
    }

    /// The buffered chunks of one workspace, for queries.
    pub fn snapshot(&self, workspace: &Workspace) -> Vec<SpanChunk> {
        self.lock()
            .workspaces
            .get(workspace)
            .map(|entries| entries.iter().map(|e| e.chunk.clone()).collect())
            .unwrap_or_default()
    }
}
