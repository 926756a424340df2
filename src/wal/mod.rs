//! WAL: makes an accepted batch durable before it is acknowledged, and replays on start.
//!
//! Input: `(workspace, RecordBatch)` from the ingest path. Output: the same batch handed to
//! the [`WalSink`] (the buffer), tagged with its segment, only after it was written and —
//! with [`WalSync::Always`] — fsynced; then the caller's `append` returns. Invariants:
//! one writer thread owns the active segment and commits in groups (every append waiting
//! when it wakes shares one `fdatasync`); the queue to it is bounded and the bytes on
//! disk are bounded, beyond either `append` answers [`WalError::Overloaded`] at once; a
//! segment is deleted only by [`Wal::delete_segments_before`], which the flusher calls
//! after the checkpoint covering it is durable; replay cuts a torn or corrupt tail.

mod format;

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::chunk::SpanChunk;
use crate::workspace::Workspace;

pub use format::{
    HEADER_LEN, MAGIC, SegmentId, WalPosition, encode_record, list_segments, read_checkpoint,
    segment_path, sync_dir, write_checkpoint,
};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalSync {
    /// After the record is written and fsynced (the default; survives power loss).
    Always,
    /// After the record is written to the OS, before fsync: a process crash loses nothing,
    /// a machine crash may lose the last acknowledged requests. Explicit opt-in.
    None,
}

/// Receives each committed batch, in commit order, on the writer thread.
pub type WalSink = Box<dyn Fn(SegmentId, Workspace, SpanChunk) + Send>;

/// WAL failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// The writer's queue or the bytes on disk are over their bound: retry later.
    #[error("write-ahead log is over its bound ({0}); retry later")]
    Overloaded(&'static str),
    /// A write or fsync failed; nothing of the request was acknowledged.
    #[error("write-ahead log write failed: {0}")]
    Io(Arc<io::Error>),
    /// The batch could not be encoded.
    #[error("encoding a WAL record failed: {0}")]
    Encode(String),
    /// The writer has stopped (shutdown).
    #[error("write-ahead log is closed")]
    Closed,
}

impl WalError {
    /// Whether the disk is full (an overload, not a bug).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io(e) if e.kind() == io::ErrorKind::StorageFull)
    }
}

/// Settings of the WAL.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// `<data-dir>/wal`.
    pub dir: PathBuf,
    /// When appends are acknowledged.
    pub sync: WalSync,
    /// Appends that may wait for the writer at once.
    pub queue_capacity: usize,
    /// Bytes of segments on disk beyond which appends are refused until a flush.
    pub max_bytes: u64,
}

/// Counters the WAL keeps (read by `/metrics`).
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes of segment files on disk.
    pub bytes_on_disk: AtomicU64,
    /// Bytes appended since start.
    pub bytes_written: AtomicU64,
    /// fsyncs issued by the writer.
    pub fsyncs: AtomicU64,
    /// Records appended since start.
    pub records: AtomicU64,
}

enum Command {
    Append(Append),
    Rotate(oneshot::Sender<Result<SegmentId, WalError>>),
    Stop,
}

struct Append {
    workspace: Workspace,
    chunk: SpanChunk,
    frame: Vec<u8>,
    reply: oneshot::Sender<Result<(), WalError>>,
}

/// A handle to the WAL writer. Cheap to share behind an `Arc`.
pub struct Wal {
    tx: SyncSender<Command>,
    config: WalConfig,
    stats: Arc<WalStats>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
    /// Starts the writer on a new segment `first`; committed batches go to `sink`.
    pub fn start(
        config: WalConfig,
        first: SegmentId,
        stats: Arc<WalStats>,
        sink: WalSink,
    ) -> io::Result<Self> {
        let file = create_segment(&config.dir, first)?;
        stats.bytes_on_disk.fetch_add(HEADER_LEN, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let writer = Writer {
            rx,
            dir: config.dir.clone(),
            sync: config.sync,
            segment: first,
            file: BufWriter::with_capacity(1 << 20, file),
            len: HEADER_LEN,
            stats: stats.clone(),
            sink,
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            tx,
            config,
            stats,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// The WAL's counters.
    pub fn stats(&self) -> &Arc<WalStats> {
        &self.stats
    }

    /// Refuses at once when the WAL is over its bound.
    pub fn check_capacity(&self) -> Result<(), WalError> {
        if self.stats.bytes_on_disk.load(Ordering::Relaxed) >= self.config.max_bytes {
            return Err(WalError::Overloaded("bytes on disk"));
        }
        Ok(())
    }

    /// Appends `batch`; returns once it is durable (per [`WalSync`]) and in the sink.
    pub async fn append(&self, workspace: Workspace, chunk: SpanChunk) -> Result<(), WalError> {
        self.check_capacity()?;
        let frame =
            encode_record(&workspace, &chunk).map_err(|e| WalError::Encode(e.to_string()))?;
        let (reply, done) = oneshot::channel();
        let cmd = Command::Append(Append {
            workspace,
            chunk,
            frame,
            reply,
        });
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(WalError::Overloaded("writer queue")),
            Err(TrySendError::Disconnected(_)) => return Err(WalError::Closed),
        }
        done.await.map_err(|_| WalError::Closed)?
    }

    /// Closes the active segment (after committing everything queued before this call)
    /// and opens the next; returns the new segment's id. Every batch in a segment below
    /// it has been handed to the sink when this returns.
    pub async fn rotate(&self) -> Result<SegmentId, WalError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Rotate(reply))
            .map_err(|_| WalError::Closed)?;
        done.await.map_err(|_| WalError::Closed)?
    }

    /// Deletes every segment below `segment` (their contents are in durable Parquet).
    pub fn delete_segments_before(&self, segment: SegmentId) -> io::Result<()> {
        for (id, len) in list_segments(&self.config.dir)? {
            if id < segment {
                std::fs::remove_file(segment_path(&self.config.dir, id))?;
                self.stats.bytes_on_disk.fetch_sub(len, Ordering::Relaxed);
                debug!(segment = id.0, "Deleted WAL segment.");
            }
        }
        Ok(())
    }

    /// Commits what is queued and stops the writer thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn create_segment(dir: &Path, id: SegmentId) -> io::Result<File> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    file.write_all(format::MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

struct Writer {
    rx: Receiver<Command>,
    dir: PathBuf,
    sync: WalSync,
    segment: SegmentId,
    file: BufWriter<File>,
    len: u64,
    stats: Arc<WalStats>,
    sink: WalSink,
}

/// The most appends committed under one fsync.
const MAX_GROUP: usize = 4096;

impl Writer {
    fn run(mut self) {
        let mut pending = Vec::new();
        while let Ok(first) = self.rx.recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(cmd) = next.take() {
                taken += 1;
                match cmd {
                    Command::Append(a) => pending.push(a),
                    Command::Rotate(reply) => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.rotate());
                    }
                    Command::Stop => {
                        self.commit(&mut pending);
                        return;
                    }
                }
                if taken < MAX_GROUP {
                    next = self.rx.try_recv().ok();
                }
            }
            self.commit(&mut pending);
        }
        self.commit(&mut pending);
    }

    fn write_group(&mut self, pending: &[Append]) -> io::Result<u64> {
        let mut bytes = 0;
        for a in pending {
            self.file.write_all(&a.frame)?;
            bytes += a.frame.len() as u64;
        }
        self.file.flush()?;
        if self.sync == WalSync::Always {
            self.file.get_ref().sync_data()?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(bytes)
    }

    fn commit(&mut self, pending: &mut Vec<Append>) {
        if pending.is_empty() {
            return;
        }
        match self.write_group(pending) {
            Ok(bytes) => {
                self.len += bytes;
                self.stats.bytes_on_disk.fetch_add(bytes, Ordering::Relaxed);
                self.stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                self.stats
                    .records
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                for a in pending.drain(..) {
                    (self.sink)(self.segment, a.workspace, a.chunk);
                    let _ = a.reply.send(Ok(()));
                }
            }
            Err(e) => {
                warn!(error = %e, segment = self.segment.0, "WAL write failed; the group is refused.");
                self.undo_partial_write();
                let e = Arc::new(e);
                for a in pending.drain(..) {
                    let _ = a.reply.send(Err(WalError::Io(e.clone())));
                }
            }
        }
    }

    /// Cuts whatever part of a failed group reached the file, so that the segment holds
    /// only acknowledged records.
    fn undo_partial_write(&mut self) {
        // Drop the buffered bytes by replacing the writer around a cloned handle.
        let file = match self.file.get_ref().try_clone() {
            Ok(f) => f,
            Err(_) => return,
        };
        let _ = file.set_len(self.len);
        let mut file_for_writer = file;
        let _ = file_for_writer.seek(SeekFrom::Start(self.len));
        let old = std::mem::replace(
            &mut self.file,
            BufWriter::with_capacity(1 << 20, file_for_writer),
        );
        // The old writer's buffer is discarded without being written.
        let (_, _) = old.into_parts();
    }

    fn rotate(&mut self) -> Result<SegmentId, WalError> {
        let io_err = |e: io::Error| WalError::Io(Arc::new(e));
        self.file.flush().map_err(io_err)?;
        self.file.get_ref().sync_data().map_err(io_err)?;
        let next = SegmentId(self.segment.0 + 1);
        let file = create_segment(&self.dir, next).map_err(io_err)?;
        self.stats
            .bytes_on_disk
            .fetch_add(HEADER_LEN, Ordering::Relaxed);
        self.file = BufWriter::with_capacity(1 << 20, file);
        self.segment = next;
        self.len = HEADER_LEN;
        debug!(segment = next.0, "Opened WAL segment.");
        Ok(next)
    }
}

/// What replay found.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    /// Records replayed (not yet covered by the checkpoint).
    pub records: u64,
    /// Rows in them.
    pub rows: u64,
    /// Segments whose tail was cut.
    pub cut_tails: u64,
    /// The first segment id free for new writes.
    pub next_segment: SegmentId,
    /// Bytes of segment files on disk after replay.
    pub bytes_on_disk: u64,
}

impl Default for SegmentId {
    fn default() -> Self {
        SegmentId(1)
    }
}

/// Replays every record after the checkpoint, oldest first, one at a time into `apply`
/// (with the position just after the record). Memory stays bounded by one record plus
/// what `apply` keeps. A torn or corrupt record ends its segment: the file is cut there.
pub fn replay(
    dir: &Path,
    mut apply: impl FnMut(WalPosition, SegmentId, Workspace, SpanChunk) -> io::Result<()>,
) -> io::Result<ReplaySummary> {
    std::fs::create_dir_all(dir)?;
    let checkpoint = read_checkpoint(dir)?;
    let mut summary = ReplaySummary::default();
    if let Some(c) = checkpoint {
        summary.next_segment = SegmentId(c.segment.0.max(1));
    }
    for (id, _) in list_segments(dir)? {
        summary.next_segment = summary.next_segment.max(SegmentId(id.0 + 1));
        if checkpoint.is_some_and(|c| id < c.segment) {
            continue;
        }
        let skip_before = match checkpoint {
            Some(c) if c.segment == id => c.offset,
            _ => 0,
        };
        replay_segment(dir, id, skip_before, &mut summary, &mut apply)?;
    }
    summary.bytes_on_disk = list_segments(dir)?.iter().map(|(_, len)| len).sum();
    Ok(summary)
}

fn replay_segment(
    dir: &Path,
    id: SegmentId,
    skip_before: u64,
    summary: &mut ReplaySummary,
    apply: &mut impl FnMut(WalPosition, SegmentId, Workspace, SpanChunk) -> io::Result<()>,
) -> io::Result<()> {
    let path = segment_path(dir, id);
    let file = File::open(&path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let header_ok =
        io::Read::read_exact(&mut reader, &mut magic).is_ok() && &magic == format::MAGIC;
    if !header_ok {
        warn!(path = %path.display(), "WAL segment has no valid header; it holds no acknowledged record and is cut to empty.");
        cut(&path, 0)?;
        return Ok(());
    }
    let mut offset = HEADER_LEN;
    loop {
        match format::read_record(&mut reader)? {
            Ok(None) => return Ok(()),
            Ok(Some((record, len))) => {
                let end = offset + len;
                if offset >= skip_before {
                    summary.records += 1;
                    summary.rows += record.chunk.num_rows() as u64;
                    let at = WalPosition {
                        segment: id,
                        offset: end,
                    };
                    apply(at, id, record.workspace, record.chunk)?;
                }
                offset = end;
            }
            Err(bad) => {
                warn!(path = %path.display(), offset, reason = %bad, "WAL segment ends in a torn or corrupt record; cutting it there.");
                summary.cut_tails += 1;
                cut(&path, offset)?;
                return Ok(());
            }
        }
    }
}

fn cut(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()?;
    info!(path = %path.display(), len, "Cut WAL segment.");
    Ok(())
}
