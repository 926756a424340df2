//! The on-disk form of the WAL: segment files and the checkpoint marker.
//!
//! A segment is `wal/<id:020>.wal`: the 8-byte magic `SPLKWAL1`, then records. A record is
//! `len: u32 LE | crc32: u32 LE | payload` with the CRC over the payload; the payload is
//! `kind: u8 | workspace length: u8 | workspace | body`; kind 3 (OTLP) has the number of
//! spans acknowledged (`u32 LE`) and the request's own protobuf bytes, which replay
//! normalizes again into the chunk that was acknowledged (deterministic, rejecting the
//! same spans; a version that reads a different number of spans from them refuses to
//! start rather than replay something else); kind 2 (spans) a
//! [`SpanChunk`] body (three Arrow IPC streams, see [`SpanChunk::write_ipc`]), written for
//! requests that did not arrive as OTLP protobuf; kind 1, written by earlier versions, one
//! Arrow IPC stream of a batch in the `spans` schema.
//! Segments are written with the magic `SPLKWAL2`; `SPLKWAL1` segments (no kind 3) are
//! still read. A version that knows only `SPLKWAL1` refuses a newer segment instead of
//! taking its records for a torn tail. A record whose checksum matches but whose contents
//! cannot be read is never a torn tail.
//! The checkpoint `wal/checkpoint` holds `<segment> <offset>`: every record before that
//! position is in durable Parquet files.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;

use crate::chunk::SpanChunk;
use crate::workspace::Workspace;

/// The first bytes of every segment file written.
pub const MAGIC: &[u8; 8] = b"SPLKWAL2";
/// The first bytes of segments written by earlier versions (no kind-3 records), still read.
pub const MAGIC_V1: &[u8; 8] = b"SPLKWAL1";
/// Bytes before the first record of a segment.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Bytes of a record's frame before its payload.
pub const FRAME_LEN: usize = 8;
/// Payload kind of earlier versions: one Arrow batch in the `spans` schema.
pub const KIND_SPANS_BATCH: u8 = 1;
/// Payload kind: a [`SpanChunk`].
pub const KIND_SPANS: u8 = 2;
/// Payload kind: an OTLP protobuf `ExportTraceServiceRequest`, as received.
pub const KIND_OTLP: u8 = 3;
/// The largest record accepted on replay; anything claiming more is a torn or corrupt frame.
pub const MAX_RECORD_LEN: u32 = 1 << 30;

const CHECKPOINT_FILE: &str = "checkpoint";
const SEGMENT_EXT: &str = "wal";

/// The number of a segment file; segments are written in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

/// A position in the WAL: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalPosition {
    /// The segment.
    pub segment: SegmentId,
    /// Byte offset within the segment.
    pub offset: u64,
}

/// The path of a segment file.
pub fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}.{SEGMENT_EXT}", id.0))
}

/// The marker recording where segment `id`'s acknowledged records end, written when a
/// failed write could not be cut back out of it.
pub fn good_end_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}.good", id.0))
}

/// Durably records that segment `id` holds acknowledged records only up to `len`.
pub fn write_good_end(dir: &Path, id: SegmentId, len: u64) -> io::Result<()> {
    let target = good_end_path(dir, id);
    let tmp = target.with_extension("good.tmp");
    std::fs::write(&tmp, format!("{len}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &target)?;
    sync_dir(dir)
}

/// Where segment `id`'s acknowledged records end, if a marker says so.
pub fn read_good_end(dir: &Path, id: SegmentId) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(good_end_path(dir, id)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {text:?}, not a length",
                    good_end_path(dir, id).display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The segments in `dir`, oldest first, with their sizes.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(SegmentId, u64)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_EXT))
            .and_then(|n| n.strip_suffix('.'))
        else {
            continue;
        };
        if let Ok(id) = stem.parse::<u64>() {
            segments.push((SegmentId(id), entry.metadata()?.len()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads the checkpoint; none means nothing was ever flushed.
pub fn read_checkpoint(dir: &Path) -> io::Result<Option<WalPosition>> {
    let text = match std::fs::read_to_string(dir.join(CHECKPOINT_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(WalPosition {
            segment: SegmentId(segment),
            offset,
        })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WAL checkpoint file holds {text:?}, not `<segment> <offset>`"),
        )),
    }
}

/// Durably replaces the checkpoint (temporary file, fsync, rename, fsync of the directory).
pub fn write_checkpoint(dir: &Path, position: WalPosition) -> io::Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    std::fs::write(
        &tmp,
        format!("{} {}\n", position.segment.0, position.offset),
    )?;
    std::fs::File::open(&tmp)?.sync_all()?;
    crate::fault::hit(crate::fault::WAL_CHECKPOINT)?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    sync_dir(dir)
}

/// fsyncs a directory so that entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A framed record: its head (frame, kind, workspace and, for a chunk, its IPC body) and
/// the request bytes that follow it for an OTLP record, written together.
pub struct Frame {
    /// Everything but the request bytes.
    pub head: Vec<u8>,
    /// The OTLP request bytes (empty for a chunk record).
    pub body: bytes::Bytes,
}

impl Frame {
    /// The record's payload length (what the frame's length field holds).
    pub fn payload_len(&self) -> usize {
        self.head.len() + self.body.len() - FRAME_LEN
    }

    /// The whole record's length in the file.
    pub fn file_len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

/// Encodes one framed record holding the OTLP protobuf `request` for `workspace`, from
/// which `spans` spans were acknowledged; the request's bytes are not copied.
pub fn encode_otlp_record(workspace: &Workspace, spans: usize, request: bytes::Bytes) -> Frame {
    let ws = workspace.as_str().as_bytes();
    let mut head = Vec::with_capacity(FRAME_LEN + 6 + ws.len());
    head.extend_from_slice(&[0u8; FRAME_LEN]);
    head.push(KIND_OTLP);
    // Workspace names are at most 63 bytes (validated by `Workspace::new`).
    head.push(ws.len() as u8);
    head.extend_from_slice(ws);
    // A request of at most 1 GiB (`MAX_RECORD_LEN`) holds fewer than 2^32 spans.
    head.extend_from_slice(&(spans as u32).to_le_bytes());
    let payload_len = (head.len() - FRAME_LEN + request.len()) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[FRAME_LEN..]);
    crc.update(&request);
    head[0..4].copy_from_slice(&payload_len.to_le_bytes());
    head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    Frame {
        head,
        body: request,
    }
}

/// Encodes one framed record holding `chunk` for `workspace`.
pub fn encode_record(workspace: &Workspace, chunk: &SpanChunk) -> Result<Vec<u8>, ArrowError> {
    let ws = workspace.as_str().as_bytes();
    let mut buf = Vec::with_capacity(FRAME_LEN + 2 + ws.len() + chunk.memory_size());
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    buf.push(KIND_SPANS);
    // Workspace names are at most 63 bytes (validated by `Workspace::new`).
    buf.push(ws.len() as u8);
    buf.extend_from_slice(ws);
    chunk.write_ipc(&mut buf)?;
    let payload_len = (buf.len() - FRAME_LEN) as u32;
    let crc = crc32fast::hash(&buf[FRAME_LEN..]);
    buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// One record read back from a segment.
pub struct Record {
    /// The workspace it belongs to.
    pub workspace: Workspace,
    /// Its spans.
    pub chunk: SpanChunk,
}

/// Why a record could not be read: the segment is cut at that record.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// The file ends inside the record (a torn write).
    #[error("the file ends inside the record (torn write)")]
    Torn,
    /// The checksum does not match, or the frame is implausible.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The checksum matches but the contents cannot be read (by this version): never a
    /// torn tail.
    #[error("unreadable record: {0}")]
    Unreadable(String),
}

/// Whether `bytes` start with a whole frame whose checksum matches and whose payload
/// names a known kind: how replay tells a record that follows a bad one (corruption) from
/// the leftovers of a write cut short (a torn tail).
pub fn frame_checks_out(bytes: &[u8]) -> bool {
    let Some((frame, rest)) = bytes.split_first_chunk::<FRAME_LEN>() else {
        return false;
    };
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    // The smallest payload is kind, workspace length and a one-byte workspace.
    if !(3..=MAX_RECORD_LEN).contains(&len) || len as usize > rest.len() {
        return false;
    }
    let payload = &rest[..len as usize];
    matches!(payload[0], KIND_OTLP | KIND_SPANS | KIND_SPANS_BATCH)
        && crc32fast::hash(payload) == crc
}

/// Reads the next record; `Ok(None)` at a clean end of file.
pub fn read_record(reader: &mut impl Read) -> io::Result<Result<Option<(Record, u64)>, BadRecord>> {
    let mut frame = [0u8; FRAME_LEN];
    match read_full(reader, &mut frame)? {
        0 => return Ok(Ok(None)),
        FRAME_LEN => {}
        _ => return Ok(Err(BadRecord::Torn)),
    }
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len > MAX_RECORD_LEN {
        return Ok(Err(BadRecord::Corrupt(format!(
            "record length {len} is implausible"
        ))));
    }
    let mut payload = vec![0u8; len as usize];
    if read_full(reader, &mut payload)? != payload.len() {
        return Ok(Err(BadRecord::Torn));
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Err(BadRecord::Corrupt("checksum mismatch".into())));
    }
    Ok(parse_payload(&payload).map(|r| Some((r, FRAME_LEN as u64 + len as u64))))
}

fn parse_payload(payload: &[u8]) -> Result<Record, BadRecord> {
    let corrupt = |what: &str| BadRecord::Corrupt(what.to_string());
    // The checksum matched: what cannot be read from here on is not a torn write.
    let unreadable = |what: &str| BadRecord::Unreadable(what.to_string());
    let (&kind, rest) = payload
        .split_first()
        .ok_or_else(|| corrupt("empty payload"))?;
    if !matches!(kind, KIND_OTLP | KIND_SPANS | KIND_SPANS_BATCH) {
        return Err(unreadable(&format!(
            "unknown record kind {kind} (written by a newer version?)"
        )));
    }
    let (&ws_len, rest) = rest.split_first().ok_or_else(|| corrupt("no workspace"))?;
    let (ws, body) = rest
        .split_at_checked(ws_len as usize)
        .ok_or_else(|| corrupt("workspace cut short"))?;
    let workspace = std::str::from_utf8(ws)
        .ok()
        .and_then(|w| Workspace::new(w).ok())
        .ok_or_else(|| corrupt("invalid workspace name"))?;
    let chunk = match kind {
        KIND_OTLP => {
            let (spans, request) = body
                .split_first_chunk::<4>()
                .ok_or_else(|| unreadable("no span count"))?;
            let spans = u32::from_le_bytes(*spans) as usize;
            let chunk = crate::normalize::normalize_protobuf(request)
                .map_err(|e| unreadable(&e.to_string()))?
                .chunk;
            if chunk.num_rows() != spans {
                return Err(unreadable(&format!(
                    "{spans} spans of this OTLP request were acknowledged, but this version \
                     of spanlake reads {} from it (replay it with the version that wrote it)",
                    chunk.num_rows()
                )));
            }
            chunk
        }
        KIND_SPANS => SpanChunk::read_ipc(body).map_err(|e| unreadable(&e.to_string()))?,
        _ => read_batch_record(body).map_err(|e| unreadable(&e.to_string()))?,
    };
    Ok(Record { workspace, chunk })
}

/// A kind-1 record: one IPC stream of batches in the `spans` schema without dictionaries.
fn read_batch_record(ipc: &[u8]) -> Result<SpanChunk, ArrowError> {
    let batches = StreamReader::try_new(ipc, None)?.collect::<Result<Vec<_>, _>>()?;
    let batch = arrow::compute::concat_batches(&crate::chunk::plain_spans_schema(), &batches)?;
    SpanChunk::from_expanded(&batch)
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
