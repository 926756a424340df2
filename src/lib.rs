//! spanlake: a trace store for OpenTelemetry and LLM-observability spans.
//!
//! ```text
//!  OTLP gRPC :4317 ─┐                          ┌─> wal/      append + fsync (group commit)  ── ack
//!  OTLP HTTP :4318 ─┼─> receive/ ─> decode/ ─> normalize/ ─┤
//!                   ┘   (limits,    (bytes →    (typed      └─> buffer/  Arrow batches per workspace
//!                        workspace)  OTLP)       columns)              │   (queryable at once)
//!                                                                      v
//!                                                              flush/  Parquet files + one Delta
//!                                                                      │   commit (with the WAL position)
//!                                                                      v
//!                                                              storage/  the Delta table (disk or S3)
//! ```
//!
//! A request is decoded into OTLP messages, normalized into one [`chunk::SpanChunk`] (rows of
//! the `spans` schema, [`schema`], with each resource's and scope's values stored once), made
//! durable in the [`wal`] and only then acknowledged; the WAL writer hands the chunk to the
//! [`buffer`], and the [`flush`] stage writes buffered chunks as Hive-partitioned Parquet
//! files of the Delta table in [`storage`], expanding them in bounded slices, and commits
//! them with this node's WAL position, before the WAL segments they came from are deleted.

pub mod api;
pub mod app;
pub mod auth;
pub mod buffer;
pub mod catalog;
pub mod chunk;
pub mod config;
pub mod decode;
pub mod error;
pub mod fake;
pub mod fault;
pub mod flush;
pub mod fuzzing;
pub mod ingest;
pub mod loadgen;
pub mod maintain;
pub mod metrics;
pub mod migrate;
pub mod normalize;
pub mod proto;
pub mod query;
pub mod receive;
pub mod schema;
pub mod storage;
pub mod summary;
pub mod time;
pub mod wal;
pub mod workspace;

pub use error::Error;
pub use workspace::Workspace;
