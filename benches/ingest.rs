//! The ingest path per stage, per span, for both request shapes: protobuf → Arrow (the
//! server's path, straight from the bytes), bare prost decode (the yardstick), OTLP JSON →
//! Arrow, the WAL record (append to a file), Parquet encode of a flush.
//!
//! `cargo bench --bench ingest`. Each stage is single-threaded, so elements per second
//! here are spans per CPU-second. A request is 512 spans of `spanlake::fake`'s shapes.

use std::io::Write;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use spanlake::decode::decode_json;
use spanlake::fake::Shape;
use spanlake::normalize::{normalize, normalize_protobuf};
use spanlake::proto::ExportTraceServiceRequest;
use spanlake::wal::{encode_otlp_record, encode_record};
use spanlake::workspace::Workspace;

const SPANS: usize = 512;
const START: u64 = 1_763_000_000_000_000_000;

fn name(shape: Shape) -> &'static str {
    match shape {
        Shape::Microservice => "microservice",
        Shape::LlmAgent => "llm_agent",
        Shape::Mixed => "mixed",
    }
}

fn bench(c: &mut Criterion) {
    let ws = Workspace::new("bench").unwrap();
    for shape in [Shape::Microservice, Shape::LlmAgent] {
        let request = spanlake::fake::shaped(shape, SPANS, 7, START);
        let bytes = bytes::Bytes::from(request.encode_to_vec());
        let json = serde_json::to_vec(&request).unwrap();
        let mut g = c.benchmark_group(format!("ingest/{}", name(shape)));
        g.throughput(Throughput::Elements(SPANS as u64));
        g.bench_function("prost_decode", |b| {
            b.iter(|| ExportTraceServiceRequest::decode(&bytes[..]).unwrap())
        });
        g.bench_function("protobuf_to_arrow", |b| {
            b.iter(|| normalize_protobuf(&bytes).unwrap())
        });
        g.bench_function("json_to_arrow", |b| {
            b.iter(|| normalize(&decode_json(&json).unwrap()).unwrap())
        });
        let chunk = normalize_protobuf(&bytes).unwrap().chunk;
        let dir = tempfile::tempdir().unwrap();
        let mut wal = std::fs::File::create(dir.path().join("bench.wal")).unwrap();
        g.bench_function("wal_append_request_bytes", |b| {
            b.iter(|| {
                let frame = encode_otlp_record(&ws, SPANS, bytes.clone());
                wal.write_all(&frame.head).unwrap();
                wal.write_all(&frame.body).unwrap();
            })
        });
        g.bench_function("wal_append_chunk_ipc", |b| {
            b.iter(|| wal.write_all(&encode_record(&ws, &chunk).unwrap()).unwrap())
        });
        g.finish();

        // Parquet is written per flush, not per request: measure it on 100 requests' rows.
        let chunks: Vec<_> = (0..100)
            .map(|i| {
                let b = spanlake::fake::shaped(shape, SPANS, i, START).encode_to_vec();
                normalize_protobuf(&b).unwrap().chunk
            })
            .collect();
        let out = tempfile::tempdir().unwrap();
        let staging = spanlake::flush::Staging {
            root: out.path().to_path_buf(),
            upload: false,
        };
        let files = spanlake::flush::stage_workspace(&staging, &ws, &chunks).unwrap();
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        eprintln!(
            "flush/{}: {:.1} bytes per span on disk",
            name(shape),
            bytes as f64 / (SPANS * 100) as f64
        );
        let mut g = c.benchmark_group(format!("flush/{}", name(shape)));
        g.throughput(Throughput::Elements((SPANS * 100) as u64));
        g.sample_size(10);
        g.bench_function("parquet_encode_51200_spans", |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |out| {
                    let staging = spanlake::flush::Staging {
                        root: out.path().to_path_buf(),
                        upload: false,
                    };
                    spanlake::flush::stage_workspace(&staging, &ws, &chunks).unwrap();
                    out
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
