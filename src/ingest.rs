//! The ingest path shared by every front end: normalize → WAL (durable) → buffer → ack.
//!
//! Input: a workspace and a [`DecodedRequest`]. Output: an [`IngestOutcome`] once every
//! accepted span is durable in the WAL (and in the buffer), or an [`Error`]. Invariants:
//! nothing is acknowledged before the WAL says it is durable; overload (buffer or WAL over
//! its bound, replay not finished) is refused before any work, never queued without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::buffer::Buffer;
use crate::chunk::SpanChunk;
use crate::decode::{DecodedRequest, SpanRejection};
use crate::error::Error;
use crate::normalize::{normalize, normalize_protobuf};
use crate::proto::ExportTracePartialSuccess;
use crate::wal::{Source, Wal};
use crate::workspace::Workspace;

/// At most this many rejection reasons are spelled out in one `error_message`.
const MAX_REASONS: usize = 10;

/// What happened to the spans of one request.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// Spans stored.
    pub accepted: usize,
    /// Spans refused, with reasons.
    pub rejected: Vec<SpanRejection>,
}

impl IngestOutcome {
    /// `(accepted, rejected)` span counts.
    pub fn counts(&self) -> (u64, u64) {
        (self.accepted as u64, self.rejected.len() as u64)
    }

    /// The OTLP `partial_success`: unset on full success.
    pub fn partial_success(&self) -> Option<ExportTracePartialSuccess> {
        if self.rejected.is_empty() {
            return None;
        }
        let mut message = self
            .rejected
            .iter()
            .take(MAX_REASONS)
            .map(|r| r.reason.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if self.rejected.len() > MAX_REASONS {
            message.push_str(&format!("; and {} more", self.rejected.len() - MAX_REASONS));
        }
        Some(ExportTracePartialSuccess {
            rejected_spans: self.rejected.len() as i64,
            error_message: message,
        })
    }
}

/// Accepts decoded requests into the WAL and buffer.
pub struct Ingester {
    wal: OnceLock<Arc<Wal>>,
    buffer: Arc<Buffer>,
    max_buffer_bytes: u64,
    ready: AtomicBool,
}

impl Ingester {
    /// An ingester that refuses requests until [`Ingester::set_ready`].
    pub fn new(buffer: Arc<Buffer>, max_buffer_bytes: u64) -> Self {
        Self {
            wal: OnceLock::new(),
            buffer,
            max_buffer_bytes,
            ready: AtomicBool::new(false),
        }
    }

    /// Opens for writes once the WAL is replayed and its writer started.
    pub fn set_ready(&self, wal: Arc<Wal>) {
        let _ = self.wal.set(wal);
        self.ready.store(true, Ordering::Release);
    }

    /// Whether replay is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Refuses at once when replay is not done or a bound is passed.
    fn admit(&self) -> Result<&Arc<Wal>, Error> {
        let wal = match (self.is_ready(), self.wal.get()) {
            (true, Some(wal)) => wal,
            _ => return Err(Error::NotReady),
        };
        let bytes = self.buffer.bytes();
        if bytes >= self.max_buffer_bytes {
            return Err(Error::BufferFull { bytes });
        }
        wal.check_capacity()?;
        Ok(wal)
    }

    /// Stores the valid spans of an OTLP protobuf request durably, normalized straight
    /// from its bytes, which are also its WAL record; returns once they are acknowledged.
    pub async fn ingest_protobuf(
        &self,
        workspace: &Workspace,
        body: bytes::Bytes,
    ) -> Result<IngestOutcome, Error> {
        self.admit()?;
        let normalized = normalize_protobuf(&body)?;
        let accepted = normalized.chunk.num_rows();
        self.store(workspace, normalized.chunk, Source::Otlp(body))
            .await?;
        Ok(IngestOutcome {
            accepted,
            rejected: normalized.rejected,
        })
    }

    /// Stores the valid spans of `decoded` durably; returns once they are acknowledged.
    pub async fn ingest(
        &self,
        workspace: &Workspace,
        decoded: DecodedRequest,
    ) -> Result<IngestOutcome, Error> {
        self.admit()?;
        let normalized = normalize(&decoded)?;
        drop(decoded);
        let accepted = normalized.chunk.num_rows();
        self.ingest_chunk(workspace, normalized.chunk).await?;
        Ok(IngestOutcome {
            accepted,
            rejected: normalized.rejected,
        })
    }

    /// Stores an already normalized chunk durably; returns once it is acknowledged.
    pub async fn ingest_chunk(&self, workspace: &Workspace, chunk: SpanChunk) -> Result<(), Error> {
        self.store(workspace, chunk, Source::Chunk).await
    }

    async fn store(
        &self,
        workspace: &Workspace,
        chunk: SpanChunk,
        source: Source,
    ) -> Result<(), Error> {
        let wal = self.admit()?;
        if chunk.num_rows() > 0 {
            wal.append(workspace.clone(), chunk, source).await?;
        }
        Ok(())
    }
}
