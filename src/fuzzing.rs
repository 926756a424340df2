//! Checks shared by the fuzz targets (`fuzz/`) and their regression tests (`tests/`).
//!
//! Input: untrusted bytes. Output: nothing; each check takes the bytes through the stages a
//! request goes through (decode, normalize, the WAL record form and back, expansion into
//! `spans` rows) and panics only on a bug: a refusal is an `Err`, never a panic.

use std::io;

use crate::chunk::SpanChunk;
use crate::decode::DecodedRequest;
use crate::decode::vendor::decode_span_logs;
use crate::normalize::{SpanBatchBuilder, normalize, normalize_protobuf};
use crate::wal;

/// A decoded OTLP request normalizes, survives the WAL form and expands.
pub fn check_request(decoded: DecodedRequest) {
    let normalized = normalize(&decoded).expect("a decoded request always normalizes");
    round_trip(&normalized.chunk);
}

/// OTLP protobuf bytes: walked straight into Arrow, they are accepted exactly when prost
/// decodes them, and give the same rows and rejections as the prost messages normalized.
pub fn check_protobuf(bytes: &[u8]) {
    let direct = normalize_protobuf(bytes);
    let decoded = crate::decode::decode_protobuf(bytes);
    match (direct, decoded) {
        (Ok(direct), Ok(decoded)) => {
            let via_prost = normalize(&decoded).expect("a decoded request always normalizes");
            assert_eq!(direct.rejected, via_prost.rejected);
            let rows = |c: &SpanChunk| c.to_batch().expect("a chunk always expands");
            assert_eq!(rows(&direct.chunk), rows(&via_prost.chunk));
            round_trip(&direct.chunk);
        }
        (Err(_), Err(_)) => {}
        (direct, decoded) => panic!(
            "the direct walk says {:?}, prost says {:?}",
            direct.err(),
            decoded.err()
        ),
    }
}

/// Span logs that decode are stored as a chunk that survives the WAL form and expands.
pub fn check_span_logs(bytes: &[u8]) {
    let Ok(items) = decode_span_logs(bytes) else {
        return;
    };
    let mut builder = SpanBatchBuilder::with_capacity(items.len());
    for log in items.iter().flatten() {
        let _ = builder.append_log(log);
    }
    round_trip(&builder.finish().expect("span logs always build a chunk"));
}

fn round_trip(chunk: &SpanChunk) {
    let mut bytes = Vec::new();
    chunk.write_ipc(&mut bytes).expect("a chunk always encodes");
    let back = SpanChunk::read_ipc(&bytes).expect("an encoded chunk always decodes");
    assert_eq!(back.num_rows(), chunk.num_rows());
    for slice in back.expand(None) {
        slice.expect("a chunk always expands");
    }
}

/// `bytes` as the records of a WAL segment: replay refuses or cuts what it cannot read,
/// and every record it yields expands into rows.
pub fn check_wal_segment(bytes: &[u8]) {
    let dir = tempfile_dir();
    let segment = wal::segment_path(&dir, wal::SegmentId(1));
    let mut content = wal::MAGIC.to_vec();
    content.extend_from_slice(bytes);
    std::fs::write(&segment, content).expect("writing the segment");
    let expand = |_, _, _, chunk: SpanChunk| {
        for slice in chunk.expand(None) {
            slice.map_err(io::Error::other)?;
        }
        Ok(())
    };
    // Refused as corrupt, the same bytes are skipped past with `--wal-skip-corrupt`.
    if wal::replay(&dir, false, None, expand).is_err() {
        let _ = wal::replay(&dir, true, None, expand);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "spanlake-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// Admission's footprint estimate never panics, and never counts less than the spans a
/// protobuf body decodes to.
pub fn check_footprint(bytes: &[u8]) {
    use prost::Message;

    use crate::decode::footprint::{Shape, footprint};
    use crate::proto::{ExportTraceServiceRequest, Span};

    for shape in [
        Shape::Protobuf,
        Shape::OtlpJson,
        Shape::NemoJson,
        Shape::SpanLogs,
    ] {
        let estimate = footprint(shape, bytes);
        if shape != Shape::Protobuf {
            continue;
        }
        if let Ok(request) = ExportTraceServiceRequest::decode(bytes) {
            let spans: usize = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            let least = (spans * std::mem::size_of::<Span>()) as u64;
            assert!(
                estimate >= least,
                "{spans} spans decoded, estimate {estimate} < {least}"
            );
        }
    }
}
