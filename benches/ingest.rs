//! The ingest path per span: request bytes → prost → Arrow rows → WAL record → Parquet.
//!
//! `cargo bench --bench ingest`. Each stage is single-threaded, so elements per second
//! here are spans per CPU-second. The request is 512 spans with ~10 attributes each
//! (`spanlake::fake::request`).

use std::io::Write;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use spanlake::decode::decode_protobuf;
use spanlake::normalize::normalize;
use spanlake::proto::ExportTraceServiceRequest;
use spanlake::wal::encode_record;
use spanlake::workspace::Workspace;

const SPANS: usize = 512;
const START: u64 = 1_763_000_000_000_000_000;

fn bench(c: &mut Criterion) {
    let bytes = spanlake::fake::request(SPANS, 7, START).encode_to_vec();
    let ws = Workspace::new("bench").unwrap();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(SPANS as u64));

    g.bench_function("prost_decode", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(&bytes[..]).unwrap())
    });
    g.bench_function("decode_normalize", |b| {
        b.iter(|| normalize(&decode_protobuf(&bytes).unwrap()).unwrap())
    });
    let batch = normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk;
    g.bench_function("wal_encode_record", |b| {
        b.iter(|| encode_record(&ws, &batch).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let mut wal = std::fs::File::create(dir.path().join("bench.wal")).unwrap();
    g.bench_function("decode_normalize_wal_append", |b| {
        b.iter(|| {
            let batch = normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk;
            let record = encode_record(&ws, &batch).unwrap();
            wal.write_all(&record).unwrap();
            batch
        })
    });
    g.finish();

    // Parquet is written per flush, not per request: measure it on 100 requests' rows.
    let batches: Vec<_> = (0..100)
        .map(|i| {
            let b = spanlake::fake::request(SPANS, i, START).encode_to_vec();
            normalize(&decode_protobuf(&b).unwrap()).unwrap().chunk
        })
        .collect();
    let mut g = c.benchmark_group("flush");
    g.throughput(Throughput::Elements((SPANS * 100) as u64));
    g.sample_size(10);
    g.bench_function("parquet_write_51200_spans", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |out| {
                let staging = spanlake::flush::Staging {
                    root: out.path().to_path_buf(),
                    upload: false,
                };
                spanlake::flush::stage_workspace(&staging, &ws, &batches).unwrap();
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
