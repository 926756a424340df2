//! WAL: makes an accepted batch durable before it is acknowledged, and replays on start.
//!
//! Input: `(workspace, RecordBatch)` from the ingest path. Output: the same batch handed to
//! the [`WalSink`] (the buffer), tagged with its segment, only after it was written and —
//! with [`WalSync::Always`] — fsynced; then the caller's `append` returns. Invariants:
//! one writer thread owns the active segment and commits in groups (every append waiting
//! when it wakes shares one `fdatasync`); the queue to it is bounded and the bytes on
//! disk are bounded, beyond either `append` answers [`WalError::Overloaded`] at once; a
//! record over [`MAX_RECORD_LEN`] is refused before it is queued (the reader enforces the
//! same limit); a segment is deleted only by [`Wal::delete_segments_before`], which the
//! flusher calls after the checkpoint covering it is durable.
//!
//! A group is written with one vectored write straight to the file (no user-space buffer),
//! so a refused group leaves nothing behind to be written later: the file is cut back to
//! its last acknowledged byte. If even that fails, the writer is poisoned and refuses every
//! later append and rotation, so no acknowledged record can follow bytes of a refused one.
//!
//! Replay cuts a torn tail: a bad record in the newest segment that no readable record
//! follows (a write cut short by a crash). Any other unreadable record is corruption: replay
//! stops with an error naming the file and offset, unless the operator chose to skip it.

mod format;

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Seek, SeekFrom, Write};

use format::BadRecord;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::fault;

use crate::chunk::SpanChunk;
use crate::workspace::Workspace;

pub use format::{
    Frame, HEADER_LEN, MAGIC, MAX_RECORD_LEN, SegmentId, WalPosition, encode_otlp_record,
    encode_record, list_segments, read_checkpoint, segment_path, sync_dir, write_checkpoint,
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
    /// The request, stored, would be a record over the limit the WAL can replay.
    #[error(
        "the request is {len} bytes once stored, over the write-ahead log's record limit of {limit} bytes; send smaller batches"
    )]
    RecordTooLarge {
        /// The record's payload length.
        len: usize,
        /// The limit ([`MAX_RECORD_LEN`] unless lowered).
        limit: u32,
    },
    /// A failed write could not be undone; the writer takes nothing more until restart.
    #[error(
        "write-ahead log is stopped after a failed write could not be undone: {0}; restart the server"
    )]
    Poisoned(String),
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
    /// The largest record payload accepted: at most [`MAX_RECORD_LEN`], what replay reads.
    pub max_record_len: u32,
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
    Append(Box<Append>),
    Rotate(oneshot::Sender<Result<SegmentId, WalError>>),
    Stop,
}

/// What a record stores for a chunk.
pub enum Source {
    /// The chunk itself (Arrow IPC).
    Chunk,
    /// The OTLP protobuf request the chunk was normalized from, by
    /// [`crate::normalize::normalize_protobuf`]: replay normalizes it again.
    Otlp(bytes::Bytes),
}

struct Append {
    workspace: Workspace,
    chunk: SpanChunk,
    frame: Frame,
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
            file,
            len: HEADER_LEN,
            stats: stats.clone(),
            sink,
            poisoned: None,
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

    /// Appends `chunk`, stored as `source` says; returns once it is durable (per
    /// [`WalSync`]) and in the sink.
    pub async fn append(
        &self,
        workspace: Workspace,
        chunk: SpanChunk,
        source: Source,
    ) -> Result<(), WalError> {
        self.check_capacity()?;
        let frame = match source {
            Source::Otlp(request) => encode_otlp_record(&workspace, chunk.num_rows(), request),
            Source::Chunk => Frame {
                head: encode_record(&workspace, &chunk)
                    .map_err(|e| WalError::Encode(e.to_string()))?,
                body: bytes::Bytes::new(),
            },
        };
        let len = frame.payload_len();
        let limit = self.config.max_record_len.min(MAX_RECORD_LEN);
        if len > limit as usize {
            return Err(WalError::RecordTooLarge { len, limit });
        }
        let (reply, done) = oneshot::channel();
        let cmd = Command::Append(Box::new(Append {
            workspace,
            chunk,
            frame,
            reply,
        }));
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
                match std::fs::remove_file(format::good_end_path(&self.config.dir, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
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

/// Creates segment `id` with its header, durably; on failure nothing is left behind, so
/// the next attempt can create it again.
fn create_segment(dir: &Path, id: SegmentId) -> io::Result<File> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let initialized = (|| {
        fault::hit(fault::WAL_ROTATE)?;
        file.write_all(format::MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)
    })();
    if let Err(e) = initialized {
        drop(file);
        let _ = std::fs::remove_file(&path);
        let _ = sync_dir(dir);
        return Err(e);
    }
    Ok(file)
}

struct Writer {
    rx: Receiver<Command>,
    dir: PathBuf,
    sync: WalSync,
    segment: SegmentId,
    file: File,
    /// Bytes of the segment that hold acknowledged records (the file's length).
    len: u64,
    stats: Arc<WalStats>,
    sink: WalSink,
    /// Why the writer refuses everything, after a failed write it could not undo.
    poisoned: Option<String>,
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
                    Command::Append(a) => pending.push(*a),
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

    /// Writes the group's frames with vectored writes and, with [`WalSync::Always`],
    /// fsyncs; returns the bytes written.
    fn write_group(&mut self, pending: &[Append]) -> io::Result<u64> {
        fault::hit(fault::WAL_WRITE)?;
        let mut slices: Vec<IoSlice<'_>> = pending
            .iter()
            .flat_map(|a| [IoSlice::new(&a.frame.head), IoSlice::new(&a.frame.body)])
            .collect();
        let bytes: u64 = pending.iter().map(|a| a.frame.file_len() as u64).sum();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sync == WalSync::Always {
            fault::hit(fault::WAL_FSYNC)?;
            self.file.sync_data()?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(bytes)
    }

    fn commit(&mut self, pending: &mut Vec<Append>) {
        if pending.is_empty() {
            return;
        }
        if let Some(why) = &self.poisoned {
            let e = WalError::Poisoned(why.clone());
            for a in pending.drain(..) {
                let _ = a.reply.send(Err(e.clone()));
            }
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
                if let Err(undo) = self.undo_partial_write() {
                    error!(error = %undo, segment = self.segment.0, "Could not cut the WAL segment back after a failed write; refusing every write until restart.");
                    // Replay must not read the refused records: mark where the
                    // acknowledged ones end.
                    if let Err(marker) = format::write_good_end(&self.dir, self.segment, self.len) {
                        error!(error = %marker, segment = self.segment.0, "Could not record where the WAL segment's acknowledged records end; the refused requests may be replayed.");
                    }
                    self.poisoned = Some(format!("{e}; undoing it failed: {undo}"));
                }
                let e = Arc::new(e);
                for a in pending.drain(..) {
                    let _ = a.reply.send(Err(WalError::Io(e.clone())));
                }
            }
        }
    }

    /// Cuts whatever part of a failed group reached the file, so that the segment holds
    /// only acknowledged records and the next group starts right after them.
    fn undo_partial_write(&mut self) -> io::Result<()> {
        fault::hit(fault::WAL_UNDO)?;
        self.file.set_len(self.len)?;
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.sync_data()
    }

    fn rotate(&mut self) -> Result<SegmentId, WalError> {
        if let Some(why) = &self.poisoned {
            return Err(WalError::Poisoned(why.clone()));
        }
        let io_err = |e: io::Error| WalError::Io(Arc::new(e));
        self.file.sync_data().map_err(io_err)?;
        let next = SegmentId(self.segment.0 + 1);
        let file = create_segment(&self.dir, next).map_err(io_err)?;
        self.stats
            .bytes_on_disk
            .fetch_add(HEADER_LEN, Ordering::Relaxed);
        self.file = file;
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
    /// Bytes of unreadable records skipped with `--wal-skip-corrupt`.
    pub skipped_bytes: u64,
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
/// what `apply` keeps. A torn tail is cut; any other unreadable record fails replay with
/// an error naming the segment and offset, or with `skip_corrupt` is cut off and logged.
///
/// `committed` is where the table says this node's flushed records end: replay starts at
/// the later of it and the local checkpoint, and new segments start after it (a WAL lost
/// with its node id kept never reuses a position the table already holds).
pub fn replay(
    dir: &Path,
    skip_corrupt: bool,
    committed: Option<WalPosition>,
    mut apply: impl FnMut(WalPosition, SegmentId, Workspace, SpanChunk) -> io::Result<()>,
) -> io::Result<ReplaySummary> {
    std::fs::create_dir_all(dir)?;
    let checkpoint = read_checkpoint(dir)?.max(committed);
    let mut summary = ReplaySummary::default();
    if let Some(c) = checkpoint {
        summary.next_segment = SegmentId((c.segment.0 + u64::from(c.offset > 0)).max(1));
    }
    let segments = list_segments(dir)?;
    let last = segments.last().map(|(id, _)| *id);
    for (id, _) in segments {
        summary.next_segment = summary.next_segment.max(SegmentId(id.0 + 1));
        if checkpoint.is_some_and(|c| id < c.segment) {
            continue;
        }
        let skip_before = match checkpoint {
            Some(c) if c.segment == id => c.offset,
            _ => 0,
        };
        let newest = Some(id) == last;
        replay_segment(
            dir,
            id,
            newest,
            skip_before,
            skip_corrupt,
            &mut summary,
            &mut apply,
        )?;
    }
    summary.bytes_on_disk = list_segments(dir)?.iter().map(|(_, len)| len).sum();
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn replay_segment(
    dir: &Path,
    id: SegmentId,
    newest: bool,
    skip_before: u64,
    skip_corrupt: bool,
    summary: &mut ReplaySummary,
    apply: &mut impl FnMut(WalPosition, SegmentId, Workspace, SpanChunk) -> io::Result<()>,
) -> io::Result<()> {
    let path = segment_path(dir, id);
    if let Some(end) = format::read_good_end(dir, id)? {
        // A failed write that could not be cut back at the time: its bytes were refused.
        if std::fs::metadata(&path)?.len() > end {
            warn!(path = %path.display(), end, "Cutting the records of requests refused after a failed write.");
            cut(&path, end)?;
        }
        std::fs::remove_file(format::good_end_path(dir, id))?;
        sync_dir(dir)?;
    }
    let file = File::open(&path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let header_ok = reader.read_exact(&mut magic).is_ok()
        && (&magic == format::MAGIC || &magic == format::MAGIC_V1);
    if !header_ok {
        // A segment is created with its header fsynced before any record is written to
        // it, so only the newest can lack one (the crash came while creating it). It holds
        // nothing: remove it, or the next start would find it no longer newest.
        if newest && file_len <= HEADER_LEN {
            warn!(path = %path.display(), "Removing a WAL segment a crash left without its header (it holds no record).");
            summary.cut_tails += 1;
            std::fs::remove_file(&path)?;
            return sync_dir(dir);
        }
        let reason = BadRecord::Corrupt("no valid segment header".into());
        return bad_record(
            &path,
            0,
            file_len,
            newest && file_len <= HEADER_LEN,
            reason,
            skip_corrupt,
            summary,
        );
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
                let torn = newest
                    && !matches!(bad, BadRecord::Unreadable(_))
                    && nothing_readable_after(&path, offset)?;
                return bad_record(&path, offset, file_len, torn, bad, skip_corrupt, summary);
            }
        }
    }
}

/// Deals with an unreadable record at `offset`: a torn tail is cut; corruption fails
/// replay, or with `skip_corrupt` is cut off with an ERROR saying what was lost.
fn bad_record(
    path: &Path,
    offset: u64,
    file_len: u64,
    torn: bool,
    bad: BadRecord,
    skip_corrupt: bool,
    summary: &mut ReplaySummary,
) -> io::Result<()> {
    if torn {
        warn!(path = %path.display(), offset, reason = %bad, "WAL segment ends in a torn record (a write cut short by a crash, never acknowledged); cutting it there.");
        summary.cut_tails += 1;
        return cut(path, offset);
    }
    if skip_corrupt {
        error!(path = %path.display(), offset, skipped_bytes = file_len.saturating_sub(offset), reason = %bad, "Skipping an unreadable WAL record and the rest of its segment (--wal-skip-corrupt); spans in them are lost.");
        summary.skipped_bytes += file_len.saturating_sub(offset);
        return cut(path, offset);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "WAL segment {} has an unreadable record at byte {offset} ({bad}), and it is not a \
             torn tail: the {} bytes from there hold acknowledged spans that cannot be read. \
             Keep a copy of the file; to start anyway, losing them, pass --wal-skip-corrupt",
            path.display(),
            file_len.saturating_sub(offset)
        ),
    ))
}

/// Whether no readable record starts anywhere after `offset` in the segment: then a bad
/// record at `offset` is the tail a crash cut short, not corruption. Segments larger than
/// the scan bound are taken as corrupt (refusing to start is the safe side).
fn nothing_readable_after(path: &Path, offset: u64) -> io::Result<bool> {
    const SCAN_LIMIT: u64 = 256 << 20;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len.saturating_sub(offset) > SCAN_LIMIT {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    Ok((1..rest.len()).all(|at| !format::frame_checks_out(&rest[at..])))
}

fn cut(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()?;
    info!(path = %path.display(), len, "Cut WAL segment.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn request(spans: usize, seed: u64) -> Vec<u8> {
        prost::Message::encode_to_vec(&crate::fake::request(
            spans,
            seed,
            1_763_000_000_000_000_000,
        ))
    }

    fn chunk(spans: usize, seed: u64) -> SpanChunk {
        crate::normalize::normalize_protobuf(&request(spans, seed))
            .unwrap()
            .chunk
    }

    #[test]
    fn an_otlp_record_replays_to_the_chunk_it_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut request = crate::fake::request(6, 9, 1_763_000_000_000_000_000);
        // One span is rejected: replay rejects it again.
        request.resource_spans[0].scope_spans[0].spans[2].trace_id = vec![0; 16];
        let bytes = prost::Message::encode_to_vec(&request);
        let normalized = crate::normalize::normalize_protobuf(&bytes).unwrap();
        assert_eq!(normalized.rejected.len(), 1);
        let acked = normalized.chunk.to_batch().unwrap();
        let (wal, rt) = started(dir.path());
        let ws = Workspace::new("w").unwrap();
        rt.block_on(wal.append(ws, normalized.chunk, Source::Otlp(bytes.clone().into())))
            .unwrap();
        wal.stop();
        // The record is the request's bytes, not a copy in another form.
        let segment = std::fs::read(segment_path(dir.path(), SegmentId(1))).unwrap();
        assert!(segment.ends_with(&bytes));
        let replayed = Mutex::new(Vec::new());
        replay(dir.path(), false, None, |_, _, w, c| {
            assert_eq!(w.as_str(), "w");
            replayed.lock().unwrap().push(c.to_batch().unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(replayed.into_inner().unwrap(), vec![acked]);
    }

    #[test]
    fn an_otlp_record_read_differently_is_refused_not_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = prost::Message::encode_to_vec(&crate::fake::request(3, 9, 1));
        let normalized = crate::normalize::normalize_protobuf(&bytes).unwrap();
        // A record that says 4 spans were acknowledged where this version reads 3: as a
        // version with other rules would find it. It is the newest segment's last record.
        let ws = Workspace::new("w").unwrap();
        let frame = encode_otlp_record(&ws, 4, bytes.into());
        assert_eq!(normalized.chunk.num_rows(), 3);
        let mut segment = MAGIC.to_vec();
        segment.extend_from_slice(&frame.head);
        segment.extend_from_slice(&frame.body);
        let path = segment_path(dir.path(), SegmentId(1));
        std::fs::write(&path, &segment).unwrap();
        let err = replay(dir.path(), false, None, |_, _, _, _| Ok(())).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("4 spans of this OTLP request were acknowledged")
                && message.contains("reads 3"),
            "{message}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), segment, "nothing is cut");
    }

    fn config(dir: &Path, max_record_len: u32) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            sync: WalSync::Always,
            queue_capacity: 16,
            max_bytes: u64::MAX,
            max_record_len,
        }
    }

    /// A writer on segment 1 of `dir` and a runtime to append with.
    fn started(dir: &Path) -> (Wal, tokio::runtime::Runtime) {
        let wal = Wal::start(
            config(dir, MAX_RECORD_LEN),
            SegmentId(1),
            Arc::default(),
            Box::new(|_, _, _| {}),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (wal, rt)
    }

    /// Appends three records of 4 spans (then stops the writer); returns the segment path.
    fn three_records(dir: &Path) -> PathBuf {
        let (wal, rt) = started(dir);
        let ws = Workspace::new("w").unwrap();
        // Both record forms: the request's own bytes, and the chunk.
        for seed in 0..3 {
            let source = match seed {
                1 => Source::Otlp(request(4, seed).into()),
                _ => Source::Chunk,
            };
            rt.block_on(wal.append(ws.clone(), chunk(4, seed), source))
                .unwrap();
        }
        wal.stop();
        segment_path(dir, SegmentId(1))
    }

    /// Removes the last `bytes` of the file, as a write cut short would leave it.
    fn cut_off(path: &Path, bytes: u64) {
        let len = std::fs::metadata(path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len - bytes)
            .unwrap();
    }

    fn replayed(dir: &Path, skip_corrupt: bool) -> io::Result<(u64, ReplaySummary)> {
        let rows = Mutex::new(0u64);
        let summary = replay(dir, skip_corrupt, None, |_, _, _, c| {
            *rows.lock().unwrap() += c.num_rows() as u64;
            Ok(())
        })?;
        Ok((rows.into_inner().unwrap(), summary))
    }

    /// Offset of the second record (after the header and the first).
    fn second_record(path: &Path) -> u64 {
        let bytes = std::fs::read(path).unwrap();
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as u64;
        HEADER_LEN + format::FRAME_LEN as u64 + len
    }

    #[test]
    fn a_record_over_the_limit_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(WalStats::default());
        let wal = Wal::start(
            config(dir.path(), 1000),
            SegmentId(1),
            stats.clone(),
            Box::new(|_, _, _| {}),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let refused =
            rt.block_on(wal.append(Workspace::new("w").unwrap(), chunk(64, 1), Source::Chunk));
        assert!(
            matches!(refused, Err(WalError::RecordTooLarge { limit: 1000, .. })),
            "{refused:?}"
        );
        let status = crate::error::Error::Wal(refused.unwrap_err()).http_status();
        assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
        wal.stop();
        assert_eq!(stats.records.load(Ordering::Relaxed), 0);
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), SegmentId(1)))
                .unwrap()
                .len(),
            HEADER_LEN
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_records_before_it_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(dir.path());
        cut_off(&path, 5);
        let (rows, summary) = replayed(dir.path(), false).unwrap();
        assert_eq!((rows, summary.cut_tails), (8, 1));
    }

    #[test]
    fn a_segment_left_without_its_header_is_removed_so_the_next_start_still_works() {
        let dir = tempfile::tempdir().unwrap();
        three_records(dir.path());
        // A crash right after creating segment 2, before its header was written.
        let empty = segment_path(dir.path(), SegmentId(2));
        File::create(&empty).unwrap();
        let (rows, summary) = replayed(dir.path(), false).unwrap();
        assert_eq!((rows, summary.next_segment), (12, SegmentId(3)));
        assert!(!empty.exists());
        // The next run writes segment 3 and dies again: segment 2 must not be in the way.
        let wal = Wal::start(
            config(dir.path(), MAX_RECORD_LEN),
            summary.next_segment,
            Arc::default(),
            Box::new(|_, _, _| {}),
        )
        .unwrap();
        wal.stop();
        assert_eq!(replayed(dir.path(), false).unwrap().0, 12);
    }

    #[test]
    fn a_zeroed_tail_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, bytes).unwrap();
        let (rows, summary) = replayed(dir.path(), false).unwrap();
        assert_eq!((rows, summary.cut_tails), (12, 1));
    }

    #[test]
    fn a_bad_record_followed_by_good_ones_stops_replay_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(dir.path());
        let at = second_record(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize + 20] ^= 0xff; // inside the second record's payload
        std::fs::write(&path, &bytes).unwrap();
        let err = replayed(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("byte {at}")), "{err}");
        assert!(err.contains("--wal-skip-corrupt"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing is cut without the flag"
        );

        let (rows, summary) = replayed(dir.path(), true).unwrap();
        assert_eq!(rows, 4, "the record before the damage replays");
        assert!(summary.skipped_bytes > 0);
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_records(dir.path());
        cut_off(&path, 5);
        // A newer segment exists: the first one was closed whole, so its end is not torn.
        std::fs::write(segment_path(dir.path(), SegmentId(2)), MAGIC).unwrap();
        assert!(replayed(dir.path(), false).is_err());
    }
}
