//! Durability, with the real binary: `kill -9` in the middle of ingestion, restart on the
//! same directory, and every acknowledged span is there exactly once; a torn WAL tail is
//! cut on restart; SIGTERM flushes and exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use crate::common::{otlp, read_tree};

pub(crate) struct Spanlake {
    child: std::process::Child,
    pub(crate) http: SocketAddr,
}

impl Spanlake {
    pub(crate) fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// Starts the binary with extra environment variables (e.g. `SPANLAKE_FAULT`). These
    /// tests ingest only: the analysts' listeners are `off`, and none is opened.
    pub(crate) fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spanlake"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--flight-addr", "off", "--pg-addr", "off"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn spanlake");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The listeners are printed before the storage line, readiness whenever replay ends.
        let (mut http, mut listed, mut ready) = (None, false, false);
        while http.is_none() || !listed || !ready {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("spanlake prints its addresses and readiness");
            if let Some(rest) = line.strip_prefix("spanlake: HTTP listening on ") {
                http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            assert!(
                !line.contains("Flight SQL listening") && !line.contains("PostgreSQL wire"),
                "an analysts' listener is off: {line}"
            );
            listed |= line.starts_with("spanlake: storing spans");
            ready |= line.starts_with("spanlake: ready");
        }
        Self {
            child,
            http: http.expect("address"),
        }
    }

    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM (unless it already exited); the exit status (a failed final flush or an
    /// injected crash is a non-zero exit).
    pub(crate) fn terminate_status(mut self) -> std::process::ExitStatus {
        if let Some(exited) = self.child.try_wait().expect("try_wait") {
            return exited;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        self.child.wait().expect("exit")
    }

    pub(crate) fn terminate(self) {
        let exit = self.terminate_status();
        assert!(exit.success(), "SIGTERM must end in exit 0, got {exit:?}");
    }
}

impl Drop for Spanlake {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A request of `n` spans whose span ids are `first..first + n`.
fn request(first: u64, n: u64) -> Vec<u8> {
    let spans = (first..first + n)
        .map(|id| {
            let mut s = otlp::span(0xab, 0, "crash-test");
            s.span_id = id.to_be_bytes().to_vec();
            s.attributes = vec![otlp::kv("i", otlp::s(&id.to_string()))];
            s
        })
        .collect();
    otlp::request(spans).encode_to_vec()
}

fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}

pub(crate) async fn send(client: &reqwest::Client, http: SocketAddr, body: Vec<u8>) -> bool {
    match client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
    {
        Ok(resp) => resp.status() == reqwest::StatusCode::OK,
        Err(_) => false,
    }
}

fn stored_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in read_tree(dir).span_ids() {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_spans_survive_kill_9_mid_ingestion_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Small flush thresholds, so that Parquet files, checkpoints and WAL segments all
    // exist when the process dies.
    let server = Spanlake::start(
        dir.path(),
        &["--flush-rows", "300", "--flush-interval", "200ms"],
    );
    let http = server.http;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for worker in 0..4u64 {
        let (acked, client) = (acked.clone(), client.clone());
        senders.push(tokio::spawn(async move {
            for k in 0..1000u64 {
                let first = (worker * 1000 + k) * 50 + 1;
                if send(&client, http, request(first, 50)).await {
                    acked.lock().unwrap().push(first);
                } else {
                    return;
                }
            }
        }));
    }
    crate::common::wait_until("40 acknowledged requests", || {
        acked.lock().unwrap().len() >= 40
    })
    .await;
    server.kill_9();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().clone();

    let restarted = Spanlake::start(dir.path(), &[]);
    restarted.terminate();

    let counts = stored_counts(dir.path());
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "spans stored twice: {duplicated:?}");
    let missing: Vec<String> = acked
        .iter()
        .flat_map(|first| (*first..first + 50).map(hex_id))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged spans lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    let client = reqwest::Client::new();
    for k in 0..5u64 {
        assert!(send(&client, server.http, request(k * 10 + 1, 10)).await);
    }
    server.kill_9();

    let wal_dir = dir.path().join("wal");
    let last = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .expect("a WAL segment");
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);

    let restarted = Spanlake::start(dir.path(), &[]);
    restarted.terminate();

    let stored: BTreeSet<String> = stored_counts(dir.path()).into_keys().collect();
    let expected: BTreeSet<String> = (1..=40).map(hex_id).collect();
    assert_eq!(
        stored, expected,
        "the first four requests survive, the torn fifth is cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_everything_and_restart_adds_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    let client = reqwest::Client::new();
    assert!(send(&client, server.http, request(1, 25)).await);
    server.terminate();
    let after_first = stored_counts(dir.path());
    assert_eq!(after_first.len(), 25);
    // A second start finds a clean WAL: nothing is replayed again.
    Spanlake::start(dir.path(), &[]).terminate();
    let after_second = stored_counts(dir.path());
    assert_eq!(after_first, after_second);
    assert!(after_second.values().all(|n| *n == 1));
}
