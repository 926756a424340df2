//! The Delta table: a flush's cost with and without its commit, query latency on a
//! workspace of many small flushes before and after compaction, and compaction's
//! throughput and peak memory.
//!
//! `cargo bench --bench table -- [FLUSHES] [SPANS_PER_FLUSH]` (default 1,000 flushes of
//! 1,000 spans, all in one hour, as a steady trickle of traffic leaves them). Spans come
//! from `spanlake::fake`; flushes are written and committed through the library as the
//! flusher does; then a real server answers HTTP requests, timed end to end (median of 5
//! after a warm-up); then one maintenance pass compacts the hour (peak RSS of the process
//! measured over the pass, from `/proc/self/status` after resetting it).

use std::time::{Duration, Instant};

use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use prost::Message;
use spanlake::app::Server;
use spanlake::chunk::SpanChunk;
use spanlake::config::ServeConfig;
use spanlake::decode::decode_protobuf;
use spanlake::flush::{Staging, stage_workspace};
use spanlake::normalize::normalize;
use spanlake::storage::{Storage, parse_location};
use spanlake::workspace::Workspace;

const START: u64 = 1_763_000_000_000_000_000 - 1_763_000_000_000_000_000 % 3_600_000_000_000;

fn chunks(requests: usize, per_request: usize, first: u64) -> Vec<SpanChunk> {
    (0..requests)
        .map(|k| {
            let start = START + (first + k as u64) * 1_000_000;
            let bytes =
                spanlake::fake::request(per_request, first + k as u64, start).encode_to_vec();
            normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk
        })
        .collect()
}

fn append() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    }
}

fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Storage {
    let location = spanlake::config::storage_location(dir, None);
    rt.block_on(Storage::open(
        parse_location(&location).unwrap(),
        "bench".into(),
        true,
    ))
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Peak RSS since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A flush's Parquet writing alone, then with its Delta commit (and the log's fsync).
fn flush_cost(rt: &tokio::runtime::Runtime) {
    let ws = Workspace::new("bench").unwrap();
    let batches = chunks(100, 512, 0);
    let spans = 100 * 512;
    let (mut stage, mut commit) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(rt, dir.path());
        let staging = Staging::of(&storage, dir.path());
        let t = Instant::now();
        let files = stage_workspace(&staging, &ws, &batches).unwrap();
        stage.push(t.elapsed());
        let t2 = Instant::now();
        let adds = files.iter().map(|f| Action::Add(f.add(true))).collect();
        rt.block_on(storage.commit(adds, append(), Vec::new(), true))
            .unwrap();
        commit.push(t2.elapsed());
    }
    let (s, c) = (median(stage), median(commit));
    println!(
        "flush of {spans} spans: write {:.1} ms, commit {:.1} ms, total {:.1} ms ({:.2} µs/span, commit {:.1}% of it)",
        s.as_secs_f64() * 1e3,
        c.as_secs_f64() * 1e3,
        (s + c).as_secs_f64() * 1e3,
        (s + c).as_secs_f64() * 1e6 / spans as f64,
        c.as_secs_f64() * 100.0 / (s + c).as_secs_f64()
    );
}

async fn time(client: &reqwest::Client, url: &str) -> Duration {
    let mut times = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        let resp = client.get(url).send().await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.bytes().await.unwrap();
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    median(times)
}

async fn queries(dir: &std::path::Path, trace: &str, label: &str) {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ServeConfig::with_data_dir(dir);
    config.maintenance_interval = Duration::ZERO;
    let server = Server::start(config, grpc, http).await.unwrap();
    while !server.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base = format!(
        "http://{}/apis/intake/v2/workspaces/bench",
        server.http_addr()
    );
    let client = reqwest::Client::new();
    for (what, url) in [
        ("first list page", format!("{base}/traces?mode=summary")),
        ("trace lookup", format!("{base}/traces/{trace}")),
    ] {
        let median = time(&client, &url).await;
        println!("{label}: {what:20} {:>9.1} ms", median.as_secs_f64() * 1e3);
    }
    server.shutdown().await.unwrap();
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let flushes = args.first().copied().unwrap_or(1_000);
    let per_flush = args.get(1).copied().unwrap_or(1_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    flush_cost(&rt);

    let dir = tempfile::tempdir().unwrap();
    let storage = open(&rt, dir.path());
    let staging = Staging::of(&storage, dir.path());
    let ws = Workspace::new("bench").unwrap();
    let started = Instant::now();
    let mut trace = String::new();
    for k in 0..flushes {
        let batch = chunks(1, per_flush, k as u64 * per_flush as u64);
        if k == flushes / 2 {
            trace =
                arrow::array::AsArray::as_string::<i32>(batch[0].span_column("trace_id").unwrap())
                    .value(0)
                    .to_string();
        }
        let files = stage_workspace(&staging, &ws, &batch).unwrap();
        let adds = files.iter().map(|f| Action::Add(f.add(true))).collect();
        rt.block_on(storage.commit(adds, append(), Vec::new(), true))
            .unwrap();
    }
    let files = storage.files().of("bench").len();
    let bytes: u64 = storage.files().of("bench").iter().map(|f| f.size).sum();
    println!(
        "wrote {flushes} flushes of {per_flush} spans ({files} files, {:.1} MiB) in {:.1?}",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    rt.block_on(queries(dir.path(), &trace, "before compaction"));

    let config = spanlake::maintain::MaintenanceConfig {
        target_bytes: 256 << 20,
        interval: Duration::from_secs(60),
        retention: None,
        keep_removed: Duration::from_secs(3600),
    };
    let rows = (flushes * per_flush) as f64;
    let mut passes = 0;
    let started = Instant::now();
    reset_peak_rss();
    let before = peak_rss_mib();
    while storage.files().of("bench").len() > 1 {
        // Each pass merges up to 64 files of the hour.
        rt.block_on(spanlake::maintain::run_pass(
            &storage,
            None,
            dir.path(),
            &config,
            false,
        ))
        .unwrap();
        passes += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "compaction: {passes} passes, {:.1?}, {:.0} spans/s, peak RSS {:.0} MiB (was {:.0} MiB before)",
        elapsed,
        rows / elapsed.as_secs_f64(),
        peak_rss_mib(),
        before
    );
    let after: u64 = storage.files().of("bench").iter().map(|f| f.size).sum();
    println!(
        "after compaction: {} files, {:.1} MiB",
        storage.files().of("bench").len(),
        after as f64 / (1 << 20) as f64
    );
    rt.block_on(queries(dir.path(), &trace, "after compaction"));
}
