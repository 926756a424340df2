//! The Delta table with the real binary: adopting an earlier version's Parquet tree,
//! compaction (duplicates dropped, queries across its commit see every span once),
//! retention and vacuum, and crashes at their steps.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;

use crate::common::{otlp, read_tree, span_counts, table_files, uncommitted_files};
use crate::crash::{Spanlake, send};

const HOUR_NS: u64 = 3_600_000_000_000;
/// 2024-06-10T06:00:00Z: an hour long closed, so compaction takes it.
const OLD_HOUR: u64 = 1_718_000_000_000_000_000 - 1_718_000_000_000_000_000 % HOUR_NS;

/// A request of spans `first..first + n` (`first` > 0: a zero span id is invalid; trace `trace`) starting in `hour_start`'s hour.
fn request(trace: u8, first: u64, n: u64, hour_start: u64) -> Vec<u8> {
    let spans = (first..first + n)
        .map(|id| {
            let mut s = otlp::span(trace, 0, "table-test");
            s.span_id = id.to_be_bytes().to_vec();
            s.start_time_unix_nano = hour_start + id * 1_000_003;
            s.end_time_unix_nano = s.start_time_unix_nano + 1_000;
            s
        })
        .collect();
    otlp::request(spans).encode_to_vec()
}

async fn post(http: SocketAddr, body: Vec<u8>) {
    assert!(
        send(&reqwest::Client::new(), http, body).await,
        "acknowledged"
    );
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a Parquet tree as the earlier version did: `<dir>/workspace=default/date=…/
/// hour=…/<ulid>.parquet`, the `spans` schema with nanosecond timestamps and its Arrow
/// schema embedded; one file per request. Returns the span ids.
fn write_old_tree(dir: &Path, requests: &[Vec<u8>]) -> Vec<String> {
    let mut ids = Vec::new();
    for body in requests {
        let decoded = spanlake::decode::decode_protobuf(body).unwrap();
        let chunk = spanlake::normalize::normalize(&decoded).unwrap().chunk;
        let batches: Vec<_> = chunk.expand(None).map(|b| b.unwrap()).collect();
        let starts = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampNanosecondType>(
            batches[0].column_by_name("start_time").unwrap(),
        );
        let hour = starts.value(0) as u64 / HOUR_NS;
        let (y, m, d, h) = spanlake::time::civil_hour(hour as i64);
        let part = dir
            .join("workspace=default")
            .join(format!("date={y:04}-{m:02}-{d:02}"))
            .join(format!("hour={h:02}"));
        std::fs::create_dir_all(&part).unwrap();
        let file =
            std::fs::File::create(part.join(format!("{}.parquet", ulid::Ulid::new()))).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
        for b in &batches {
            writer.write(b).unwrap();
            let spans =
                arrow::array::AsArray::as_string::<i32>(b.column_by_name("span_id").unwrap());
            ids.extend(spans.iter().map(|s| s.unwrap().to_string()));
        }
        writer.close().unwrap();
    }
    // A temporary file of a flush that crashed before its manifest: never acknowledged.
    let hour = std::fs::read_dir(dir.join("workspace=default"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let hour = std::fs::read_dir(hour)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(hour.join(".01leftover.parquet.tmp"), b"partial").unwrap();
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    ids.sort();
    ids
}

/// Runs `spanlake serve` on `dir` (loopback, any ports) until it exits by itself (a fault
/// crash, a refusal), with `args` and the environment `env`; its output.
fn serve_until_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spanlake"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn old_tree_files(dir: &Path) -> Vec<std::path::PathBuf> {
    crate::common::files_under(dir, |p| {
        p.starts_with(dir.join("workspace=default")) && p.to_string_lossy().contains(".parquet")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_tree_is_adopted_once_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let requests: Vec<_> = (0..3u64)
        .map(|k| request(0x0d, k * 100 + 1, 20, OLD_HOUR + k * HOUR_NS))
        .collect();
    let ids = write_old_tree(dir.path(), &requests);
    assert_eq!(ids.len(), 60);
    // The adoption dies after rewriting its second file, before any commit.
    let crashed = serve_until_exit(
        dir.path(),
        &[],
        &[("SPANLAKE_FAULT", "flush.stage:crash:2")],
    );
    assert!(!crashed.status.success(), "the fault crashes the adoption");
    assert_eq!(
        old_tree_files(dir.path()).len(),
        3,
        "the old files are untouched (the temporary one is gone)"
    );
    let server = Spanlake::start(dir.path(), &[]);
    assert_eq!(span_counts(server.http, "default").await, (60, 60));
    server.terminate();
    assert_eq!(
        read_tree(dir.path()).span_ids(),
        ids,
        "every old span, once"
    );
    assert!(
        old_tree_files(dir.path()).is_empty(),
        "the old tree is gone: {:?}",
        old_tree_files(dir.path())
    );
    // The times are the ones the old files held, to the nanosecond.
    let rows = read_tree(dir.path());
    let first = rows.span(&format!("{:016x}", 1u64));
    assert_eq!(
        first["start_time_unix_nano"].as_deref(),
        Some((OLD_HOUR + 1_000_003).to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spanlake_migrate_adopts_the_tree_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_old_tree(dir.path(), &[request(0x0e, 1, 30, OLD_HOUR)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spanlake"))
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("adopted 1 Parquet files"),
        "{out:?}"
    );
    assert_eq!(read_tree(dir.path()).span_ids(), ids);
    // Serving it afterwards adopts nothing more.
    let server = Spanlake::start(dir.path(), &[]);
    assert_eq!(span_counts(server.http, "default").await, (30, 30));
    server.terminate();
    assert_eq!(read_tree(dir.path()).span_ids(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_an_hour_drops_retries_and_queries_never_see_a_span_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(
        dir.path(),
        &[
            "--flush-interval",
            "50ms",
            "--maintenance-interval",
            "1h",
            "--query-timeout",
            "5s",
        ],
    );
    // Six flushes into one closed hour, one of them a client's retry of another.
    for k in 0..5u64 {
        post(server.http, request(0x0c, k * 10 + 1, 10, OLD_HOUR)).await;
        let want = k as usize + 1;
        wait_for("a flush per request", async || {
            table_files(dir.path()).len() == want
        })
        .await;
    }
    post(server.http, request(0x0c, 21, 10, OLD_HOUR)).await;
    wait_for("the retry's flush", async || {
        table_files(dir.path()).len() == 6
    })
    .await;
    assert_eq!(span_counts(server.http, "default").await, (60, 50));
    server.terminate();

    // Compaction runs every 200 ms while queries run.
    let server = Spanlake::start(
        dir.path(),
        &["--maintenance-interval", "200ms", "--query-timeout", "5s"],
    );
    let http = server.http;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = span_counts(http, "default").await;
        seen.push(counts);
        if table_files(dir.path()).len() == 1 && counts == (50, 50) {
            break;
        }
        assert!(Instant::now() < deadline, "no compaction: {seen:?}");
    }
    for counts in &seen {
        assert!(
            *counts == (60, 50) || *counts == (50, 50),
            "a query saw a span twice or not at all: {counts:?}"
        );
    }
    server.terminate();
    assert_eq!(
        read_tree(dir.path()).len(),
        50,
        "stored once after compaction"
    );
    assert_eq!(table_files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_compaction_or_retention_loses_and_doubles_nothing() {
    for (fault, args) in [
        (
            "compact.commit:crash",
            vec!["--maintenance-interval", "100ms"],
        ),
        ("flush.stage:crash", vec!["--maintenance-interval", "100ms"]),
        (
            "retention.commit:crash",
            vec!["--maintenance-interval", "100ms", "--retention", "1d"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = Spanlake::start(dir.path(), &["--flush-interval", "50ms"]);
        for k in 0..2u64 {
            post(server.http, request(0x0f, k * 10 + 1, 10, OLD_HOUR)).await;
            let want = k as usize + 1;
            wait_for("a flush per request", async || {
                table_files(dir.path()).len() == want
            })
            .await;
        }
        server.terminate();
        let status = serve_until_exit(dir.path(), &args, &[("SPANLAKE_FAULT", fault)]).status;
        assert!(!status.success(), "{fault}: the process crashed");
        let before = read_tree(dir.path()).span_ids();
        assert_eq!(
            before.len(),
            20,
            "{fault}: the table is as before the crash"
        );
        let server = Spanlake::start(dir.path(), &[]);
        assert_eq!(
            span_counts(server.http, "default").await,
            (20, 20),
            "{fault}"
        );
        server.terminate();
        assert!(
            uncommitted_files(dir.path()).len() <= 1,
            "{fault}: at most the crashed step's output is left for vacuum"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_hours_and_vacuum_deletes_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let recent = now - now % HOUR_NS;
    let server = Spanlake::start(dir.path(), &["--flush-interval", "50ms"]);
    post(server.http, request(0x0a, 1, 10, OLD_HOUR)).await;
    post(server.http, request(0x0a, 101, 10, recent)).await;
    wait_for("both hours flushed", async || {
        table_files(dir.path()).len() == 2
    })
    .await;
    server.terminate();
    let old_file = table_files(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().contains("date=2024-06-10"))
        .unwrap();

    let server = Spanlake::start(
        dir.path(),
        &[
            "--retention",
            "2d",
            "--maintenance-interval",
            "100ms",
            "--query-timeout",
            "1s",
            "--vacuum-grace",
            "0s",
        ],
    );
    let http = server.http;
    wait_for("retention", async || {
        span_counts(http, "default").await == (10, 10)
    })
    .await;
    wait_for("vacuum", async || !old_file.exists()).await;
    server.terminate();
    let ids = read_tree(dir.path()).span_ids();
    assert_eq!(ids.len(), 10);
    assert!(
        ids.iter().all(|id| id.as_str() >= "0000000000000064"),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_one_node_id_is_stopped_and_loses_nothing() {
    let (a_dir, b_dir, shared) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let table = shared.path().join("spans");
    let table_arg = table.to_string_lossy().into_owned();
    let args = ["--storage", table_arg.as_str(), "--flush-interval", "100ms"];
    let a = Spanlake::start(a_dir.path(), &args);
    post(a.http, request(0x1a, 1, 10, OLD_HOUR)).await;
    wait_for("a's first flush", async || {
        table_files(shared.path()).len() == 1
    })
    .await;
    // A copy of a's data dir, id and claim included, started beside it.
    for name in ["node-id", "incarnation"] {
        std::fs::copy(a_dir.path().join(name), b_dir.path().join(name)).unwrap();
    }
    let b = Spanlake::start(b_dir.path(), &args);
    // a acknowledges more spans (they are in its WAL) but may no longer commit them.
    post(a.http, request(0x1a, 11, 10, OLD_HOUR)).await;
    let http = a.http;
    wait_for("a's refused flush", async || {
        crate::common::metric(http, "spanlake_flush_errors_total")
            .await
            .unwrap_or(0)
            >= 1
    })
    .await;
    post(b.http, request(0x1b, 101, 10, OLD_HOUR)).await;
    b.terminate();
    assert!(
        !a.terminate_status().success(),
        "a's final flush is refused"
    );
    // a refuses to start again under the taken id.
    let refused = serve_until_exit(a_dir.path(), &args, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("another process is writing"), "{stderr}");
    // Given a new id, a replays its WAL: every span acknowledged by either, once.
    let a = Spanlake::start(
        a_dir.path(),
        &["--storage", table_arg.as_str(), "--node-id", "a-renamed"],
    );
    assert_eq!(span_counts(a.http, "default").await, (30, 30));
    a.terminate();
    assert_eq!(read_tree(shared.path()).span_ids().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_serves_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spanlake::start(dir.path(), &[]);
    for command in ["serve", "migrate"] {
        let second = std::process::Command::new(env!("CARGO_BIN_EXE_spanlake"))
            .args([command, "--data-dir"])
            .arg(dir.path())
            .env("SPANLAKE_GRPC_ADDR", "127.0.0.1:0")
            .env("SPANLAKE_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!second.status.success(), "{command}");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("in use by another spanlake process"),
            "{stderr}"
        );
    }
    post(first.http, request(0x1c, 1, 5, OLD_HOUR)).await;
    first.terminate();
    assert_eq!(read_tree(dir.path()).len(), 5);
}
