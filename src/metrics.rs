//! Metrics: counters and histograms rendered as Prometheus text for `GET /metrics`.
//!
//! Updated once per request (never per span) and per flush; WAL and buffer figures are
//! read from their own atomics at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::buffer::Buffer;
use crate::receive::admission::Budget;
use crate::wal::WalStats;
use crate::workspace::Workspace;

/// The front end a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies.
    HttpJson,
    /// NeMo intake ingest.
    Nemo,
    /// Avido OTLP JSON ingest.
    Avido,
    /// Respan / Keywords AI span logs.
    SpanLogs,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http_protobuf",
            Protocol::HttpJson => "http_json",
            Protocol::Nemo => "nemo",
            Protocol::Avido => "avido",
            Protocol::SpanLogs => "span_logs",
        }
    }
}

const PROTOCOLS: [Protocol; 6] = [
    Protocol::Grpc,
    Protocol::HttpProtobuf,
    Protocol::HttpJson,
    Protocol::Nemo,
    Protocol::Avido,
    Protocol::SpanLogs,
];
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Every metric of the process.
#[derive(Default)]
pub struct Metrics {
    spans: Mutex<BTreeMap<(Workspace, Protocol), [u64; 2]>>,
    requests: Mutex<BTreeMap<(Protocol, &'static str), u64>>,
    latency: [Histogram; PROTOCOLS.len()],
    flushes: AtomicU64,
    flush_errors: AtomicU64,
    flushed_rows: AtomicU64,
    parquet_files: AtomicU64,
    wal: OnceLock<Arc<WalStats>>,
    buffer: OnceLock<Arc<Buffer>>,
    queries_running: OnceLock<Arc<AtomicU64>>,
    inflight: OnceLock<Arc<Budget>>,
}

impl Metrics {
    /// Attaches the WAL and buffer whose figures are read at scrape time.
    pub fn attach(&self, wal: Arc<WalStats>, buffer: Arc<Buffer>) {
        let _ = self.wal.set(wal);
        let _ = self.buffer.set(buffer);
    }

    /// Attaches the in-flight bytes budget of ingest admission.
    pub fn attach_budget(&self, budget: Arc<Budget>) {
        let _ = self.inflight.set(budget);
    }

    /// Attaches the query engine's gauge of running queries.
    pub fn attach_queries(&self, running: Arc<AtomicU64>) {
        let _ = self.queries_running.set(running);
    }

    /// Records one request's outcome.
    pub fn request(
        &self,
        protocol: Protocol,
        workspace: Option<&Workspace>,
        outcome: &'static str,
        accepted: u64,
        rejected: u64,
        elapsed: Duration,
    ) {
        self.latency[protocol as usize].observe(elapsed);
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((protocol, outcome)).or_default() += 1;
        }
        if let (Some(ws), true, Ok(mut s)) = (workspace, accepted + rejected > 0, self.spans.lock())
        {
            let e = s.entry((ws.clone(), protocol)).or_default();
            e[0] += accepted;
            e[1] += rejected;
        }
    }

    /// Records one ingest request: `Ok((accepted, rejected))` or its error.
    pub fn record_outcome(
        &self,
        protocol: Protocol,
        workspace: Option<&Workspace>,
        outcome: Result<(u64, u64), &crate::error::Error>,
        started: std::time::Instant,
    ) {
        let (label, accepted, rejected) = match outcome {
            Ok((a, r)) => (if r > 0 { "partial" } else { "ok" }, a, r),
            Err(e) if e.is_overload() => ("overloaded", 0, 0),
            Err(_) => ("error", 0, 0),
        };
        self.request(
            protocol,
            workspace,
            label,
            accepted,
            rejected,
            started.elapsed(),
        );
    }

    /// Records a successful flush.
    pub fn flushed(&self, files: u64, rows: u64) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.parquet_files.fetch_add(files, Ordering::Relaxed);
        self.flushed_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Records a failed flush.
    pub fn flush_failed(&self) {
        self.flush_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric; per-workspace series only for the
    /// `visible` workspaces (`None`: all).
    pub fn render(&self, visible: Option<&[Workspace]>) -> String {
        let mut out = String::new();
        let o = &mut out;
        header(
            o,
            "spanlake_spans_accepted_total",
            "counter",
            "Spans stored, per workspace and protocol.",
        );
        header(
            o,
            "spanlake_spans_rejected_total",
            "counter",
            "Spans refused (bad ids or times), per workspace and protocol.",
        );
        if let Ok(spans) = self.spans.lock() {
            let shown = |ws: &Workspace| visible.is_none_or(|v| v.contains(ws));
            for ((ws, p), [acc, rej]) in spans.iter().filter(|((ws, _), _)| shown(ws)) {
                let _ = writeln!(
                    o,
                    "spanlake_spans_accepted_total{{workspace=\"{ws}\",protocol=\"{}\"}} {acc}",
                    p.as_str()
                );
                let _ = writeln!(
                    o,
                    "spanlake_spans_rejected_total{{workspace=\"{ws}\",protocol=\"{}\"}} {rej}",
                    p.as_str()
                );
            }
        }
        header(
            o,
            "spanlake_requests_total",
            "counter",
            "Ingest requests, per protocol and outcome.",
        );
        if let Ok(requests) = self.requests.lock() {
            for ((p, outcome), n) in requests.iter() {
                let _ = writeln!(
                    o,
                    "spanlake_requests_total{{protocol=\"{}\",outcome=\"{outcome}\"}} {n}",
                    p.as_str()
                );
            }
        }
        header(
            o,
            "spanlake_request_duration_seconds",
            "histogram",
            "Ingest request latency, receipt to response.",
        );
        for p in PROTOCOLS {
            let h = &self.latency[p as usize];
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "spanlake_request_duration_seconds_bucket{{protocol=\"{}\",le=\"{le}\"}} {}",
                    p.as_str(),
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "spanlake_request_duration_seconds_bucket{{protocol=\"{}\",le=\"+Inf\"}} {count}",
                p.as_str()
            );
            let _ = writeln!(
                o,
                "spanlake_request_duration_seconds_sum{{protocol=\"{}\"}} {}",
                p.as_str(),
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                o,
                "spanlake_request_duration_seconds_count{{protocol=\"{}\"}} {count}",
                p.as_str()
            );
        }
        if let Some(w) = self.wal.get() {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            simple(
                o,
                "spanlake_wal_bytes",
                "gauge",
                "Bytes of WAL segments on disk.",
                load(&w.bytes_on_disk),
            );
            simple(
                o,
                "spanlake_wal_written_bytes_total",
                "counter",
                "Bytes appended to the WAL.",
                load(&w.bytes_written),
            );
            simple(
                o,
                "spanlake_wal_records_total",
                "counter",
                "Records appended to the WAL.",
                load(&w.records),
            );
            simple(
                o,
                "spanlake_wal_fsyncs_total",
                "counter",
                "fsyncs of the WAL (group commits).",
                load(&w.fsyncs),
            );
        }
        if let Some(b) = self.inflight.get() {
            simple(
                o,
                "spanlake_inflight_bytes",
                "gauge",
                "Bytes reserved by ingest requests in flight (--max-inflight-bytes).",
                b.used(),
            );
        }
        if let Some(q) = self.queries_running.get() {
            simple(
                o,
                "spanlake_queries_running",
                "gauge",
                "Queries executing now, their answers still streaming.",
                q.load(Ordering::Relaxed),
            );
        }
        if let Some(b) = self.buffer.get() {
            simple(
                o,
                "spanlake_buffer_rows",
                "gauge",
                "Rows buffered, not yet in Parquet.",
                b.rows(),
            );
            simple(
                o,
                "spanlake_buffer_bytes",
                "gauge",
                "Bytes buffered, not yet in Parquet.",
                b.bytes(),
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        simple(
            o,
            "spanlake_flushes_total",
            "counter",
            "Flushes of the buffer to Parquet.",
            load(&self.flushes),
        );
        simple(
            o,
            "spanlake_flush_errors_total",
            "counter",
            "Failed flushes (retried).",
            load(&self.flush_errors),
        );
        simple(
            o,
            "spanlake_flushed_rows_total",
            "counter",
            "Rows written to Parquet.",
            load(&self.flushed_rows),
        );
        simple(
            o,
            "spanlake_parquet_files_total",
            "counter",
            "Parquet files written.",
            load(&self.parquet_files),
        );
        out
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(o: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}
