//! Faults injected at each step of WAL appends, rotation, flush and checkpoint
//! (`SPANLAKE_FAULT`), with the real binary: an I/O error there and a crash there both keep
//! every acknowledged span, exactly once, in what queries see while the server runs and in
//! the table after a restart; a request answered with an error is not stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use prost::Message;

use crate::common::{metric, otlp, parquet_files, read_tree, span_counts, uncommitted_files};
use crate::crash::{Spanlake, send};

const HOUR_NS: u64 = 3_600_000_000_000;

/// Spans `first..first + n` whose start hours alternate, so one flush writes two files.
fn request(first: u64, n: u64) -> Vec<u8> {
    let spans = (first..first + n)
        .map(|id| {
            let mut s = otlp::span(0xfa, 0, "fault-test");
            s.span_id = id.to_be_bytes().to_vec();
            s.start_time_unix_nano += (id % 2) * HOUR_NS;
            s.end_time_unix_nano = s.start_time_unix_nano + 1_000;
            s
        })
        .collect();
    otlp::request(spans).encode_to_vec()
}

/// Sends 4 requests of 10 spans; the ids of those acknowledged and of those refused
/// (answered with an error, or not at all).
async fn send_four(http: SocketAddr) -> (Vec<String>, Vec<String>) {
    let client = reqwest::Client::new();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for k in 0..4u64 {
        let ids = (k * 10 + 1..=k * 10 + 10).map(|id| format!("{id:016x}"));
        if send(&client, http, request(k * 10 + 1, 10)).await {
            acked.extend(ids);
        } else {
            refused.extend(ids);
        }
    }
    (acked, refused)
}

/// Sends 4 requests of 10 spans; all must be acknowledged.
async fn ingest(http: SocketAddr) -> Vec<String> {
    let (acked, refused) = send_four(http).await;
    assert!(refused.is_empty(), "refused: {refused:?}");
    acked
}

/// Waits until at least `n` flushes have failed.
async fn wait_for_flush_errors(http: SocketAddr, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while flush_errors(http).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} failed flushes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn flush_errors(http: SocketAddr) -> u64 {
    metric(http, "spanlake_flush_errors_total")
        .await
        .unwrap_or(0)
}

fn assert_exactly_once(dir: &Path, expected: &[String]) {
    let mut counts = BTreeMap::new();
    for id in read_tree(dir).span_ids() {
        *counts.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "acked but lost: {missing:?}");
}

fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    uncommitted_files(dir)
}

/// A step that fails every time: queries keep seeing every span once, the final flush
/// fails (exit non-zero, the WAL keeps everything), and a restart without the fault
/// stores every span once.
async fn failing_step(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fault = format!("{point}:error:0");
    let server = Spanlake::start_with_env(
        dir.path(),
        &["--flush-interval", "100ms"],
        &[("SPANLAKE_FAULT", &fault)],
    );
    let acked = ingest(server.http).await;
    let http = server.http;
    wait_for_flush_errors(http, 2).await;
    let seen = span_counts(http, "default").await;
    assert_eq!(seen, (40, 40), "{point}: queries see each span once");
    if point == fault_points::STAGE {
        assert!(
            temp_files(dir.path()).is_empty(),
            "a failed flush removes its temp files"
        );
    }
    assert!(
        !server.terminate_status().success(),
        "the final flush fails at {point}"
    );
    Spanlake::start(dir.path(), &[]).terminate();
    assert_exactly_once(dir.path(), &acked);
}

/// A crash at the step: a restart stores every acked span once.
async fn crash_at(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fault = format!("{point}:crash");
    let server = Spanlake::start_with_env(
        dir.path(),
        &["--flush-interval", "1h"],
        &[("SPANLAKE_FAULT", &fault)],
    );
    let acked = ingest(server.http).await;
    // SIGTERM's final flush reaches the step and dies there.
    let status = server.terminate_status();
    assert!(
        !status.success(),
        "{point}: the process should have crashed: {status:?}"
    );
    let restarted = Spanlake::start(dir.path(), &[]);
    let seen = span_counts(restarted.http, "default").await;
    assert_eq!(seen, (40, 40), "{point}");
    restarted.terminate();
    assert_exactly_once(dir.path(), &acked);
    assert_eq!(parquet_files(dir.path()).len() % 2, 0, "whole flushes only");
}

mod fault_points {
    pub const STAGE: &str = "flush.stage";
    pub const PUBLISH: &str = "flush.publish";
    pub const COMMIT: &str = "flush.commit";
}

/// Restarts on `dir` without faults, stops (flushing), and checks the table.
fn recovered(dir: &Path, acked: &[String], refused_not_stored: &[String]) {
    Spanlake::start(dir, &[]).terminate();
    assert_exactly_once(dir, acked);
    let stored: std::collections::BTreeSet<String> =
        read_tree(dir).span_ids().into_iter().collect();
    let leaked: Vec<_> = refused_not_stored
        .iter()
        .filter(|id| stored.contains(*id))
        .collect();
    assert!(
        leaked.is_empty(),
        "answered with an error, yet stored: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_write_and_fsync_errors_refuse_the_request_and_store_none_of_it() {
    for point in ["wal.write", "wal.fsync"] {
        let dir = tempfile::tempdir().unwrap();
        let fault = format!("{point}:error:2");
        let server = Spanlake::start_with_env(
            dir.path(),
            &["--flush-interval", "1h"],
            &[("SPANLAKE_FAULT", &fault)],
        );
        let (acked, refused) = send_four(server.http).await;
        assert_eq!(
            (acked.len(), refused.len()),
            (30, 10),
            "{point}: the second request fails alone"
        );
        server.terminate();
        recovered(dir.path(), &acked, &refused);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_that_cannot_be_undone_stores_nothing_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The second group's fsync fails, and cutting it back out of the segment fails too.
    let server = Spanlake::start_with_env(
        dir.path(),
        &["--flush-interval", "1h"],
        &[("SPANLAKE_FAULT", "wal.fsync:error:2,wal.undo:error")],
    );
    let (acked, refused) = send_four(server.http).await;
    assert_eq!(
        acked.len(),
        10,
        "the first request only; the WAL refuses after the failure"
    );
    server.kill_9();
    recovered(dir.path(), &acked, &refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_wal_steps_lose_nothing_acked() {
    // `wal.rotate`'s first hit is the segment opened at start; its second, the flush's.
    for (point, nth) in [
        ("wal.write", 3),
        ("wal.fsync", 3),
        ("wal.rotate", 2),
        ("wal.checkpoint", 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fault = format!("{point}:crash:{nth}");
        let server = Spanlake::start_with_env(
            dir.path(),
            &["--flush-interval", "1h"],
            &[("SPANLAKE_FAULT", &fault)],
        );
        let (acked, _) = send_four(server.http).await;
        assert!(acked.len() >= 20, "{point}: {} acked", acked.len());
        // Requests crash the write steps; SIGTERM's final flush reaches the others.
        let _ = server.terminate_status();
        recovered(dir.path(), &acked, &[]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rotation_or_checkpoint_is_retried_and_loses_nothing() {
    for (point, nth) in [("wal.rotate", 2), ("wal.checkpoint", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let fault = format!("{point}:error:{nth}");
        let server = Spanlake::start_with_env(
            dir.path(),
            &["--flush-interval", "100ms"],
            &[("SPANLAKE_FAULT", &fault)],
        );
        let acked = ingest(server.http).await;
        wait_for_flush_errors(server.http, 1).await;
        // The next flush succeeds: the failed step left nothing in its way.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while metric(server.http, "spanlake_flushes_total")
            .await
            .unwrap_or(0)
            < 1
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{point}: no flush succeeded after the failure"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let seen = span_counts(server.http, "default").await;
        assert_eq!(seen, (40, 40), "{point}");
        server.terminate();
        recovered(dir.path(), &acked, &[]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_errors_at_every_step_lose_and_double_nothing() {
    for point in [
        fault_points::STAGE,
        fault_points::PUBLISH,
        fault_points::COMMIT,
    ] {
        failing_step(point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_every_flush_step_lose_and_double_nothing() {
    for point in [
        fault_points::STAGE,
        fault_points::PUBLISH,
        fault_points::COMMIT,
    ] {
        crash_at(point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_failing_after_its_commit_is_retried_without_committing_twice() {
    let dir = tempfile::tempdir().unwrap();
    // The first flush's commit is in the log, but showing it to queries fails.
    let server = Spanlake::start_with_env(
        dir.path(),
        &["--flush-interval", "100ms"],
        &[("SPANLAKE_FAULT", "flush.publish:error:1")],
    );
    let acked = ingest(server.http).await;
    let http = server.http;
    wait_for_flush_errors(http, 1).await;
    let seen = span_counts(http, "default").await;
    assert_eq!(seen, (40, 40), "every span once while the flush is retried");
    server.terminate();
    assert_exactly_once(dir.path(), &acked);
}
