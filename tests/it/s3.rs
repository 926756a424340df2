//! One Delta table on S3 shared by two nodes, with the real binary against a local
//! S3-compatible server. These tests need that server: `scripts/test-delta` installs and
//! starts one, then runs them with `--ignored`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use prost::Message;

use crate::common::{otlp, sql_row};
use crate::crash::{Spanlake, send};

/// The S3 settings the script passes: endpoint and bucket.
fn s3() -> (String, String) {
    let endpoint = std::env::var("SPANLAKE_TEST_S3_ENDPOINT")
        .expect("SPANLAKE_TEST_S3_ENDPOINT (run scripts/test-delta)");
    let bucket = std::env::var("SPANLAKE_TEST_S3_BUCKET")
        .expect("SPANLAKE_TEST_S3_BUCKET (run scripts/test-delta)");
    (endpoint, bucket)
}

fn env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A node on the S3 table `storage` (flushing every 200 ms unless `extra` says otherwise).
fn node(dir: &Path, storage: &str, id: &str, endpoint: &str, extra: &[&str]) -> Spanlake {
    let env = env(endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--storage",
        storage,
        "--node-id",
        id,
        "--flush-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Spanlake::start_with_env(dir, &args, &env)
}

/// Spans with ids `first..first + n` in one request.
fn request(first: u64, n: u64) -> Vec<u8> {
    let spans = (first..first + n)
        .map(|id| {
            let mut s = otlp::span(0x5e, 0, "s3-test");
            s.span_id = id.to_be_bytes().to_vec();
            s
        })
        .collect();
    otlp::request(spans).encode_to_vec()
}

/// Sends `requests` requests of 10 spans from `first` on; the ids acknowledged.
async fn send_range(http: SocketAddr, first: u64, requests: u64) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for k in 0..requests {
        let start = first + k * 10;
        if send(&client, http, request(start, 10)).await {
            acked.extend((start..start + 10).map(|id| format!("{id:016x}")));
        }
    }
    acked
}

/// Every span id the table holds, read by a node that only queries.
async fn stored(http: SocketAddr) -> (u64, BTreeSet<String>) {
    let row = sql_row(
        http,
        "default",
        "SELECT count(*) AS n, string_agg(span_id, ',') AS ids FROM spans",
    )
    .await;
    let n = row["n"].as_u64().expect("count");
    let ids = row["ids"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (n, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local S3 server: run scripts/test-delta"]
async fn two_nodes_share_one_s3_table_and_lose_nothing_acked() {
    let (endpoint, bucket) = s3();
    let storage = format!("s3://{bucket}/two-nodes-{}", ulid::Ulid::new());
    let (a_dir, b_dir, c_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = node(a_dir.path(), &storage, "node-a", &endpoint, &[]);
    let b = node(b_dir.path(), &storage, "node-b", &endpoint, &[]);
    // Both nodes under load at once, then node a dies mid-way.
    let (mut acked_a, acked_b) =
        tokio::join!(send_range(a.http, 1, 30), send_range(b.http, 100_001, 30));
    a.kill_9();
    let a = node(a_dir.path(), &storage, "node-a", &endpoint, &[]);
    let (more_a, more_b) = tokio::join!(
        send_range(a.http, 50_001, 10),
        send_range(b.http, 150_001, 10)
    );
    acked_a.extend(more_a);
    // Each node sees the other's committed spans (after a refresh) plus its own buffer.
    let expected: BTreeSet<String> = acked_a
        .iter()
        .chain(&acked_b)
        .chain(&more_b)
        .cloned()
        .collect();
    assert_eq!(expected.len(), 800, "every request acknowledged");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (n, ids) = stored(b.http).await;
        if n == expected.len() as u64 && ids == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b sees {n} spans, expected {}",
            expected.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    a.terminate();
    b.terminate();
    // A third node, which never wrote, reads the table: every acked span exactly once.
    let c = node(c_dir.path(), &storage, "node-c", &endpoint, &[]);
    let (n, ids) = stored(c.http).await;
    assert_eq!(ids, expected, "the table holds exactly the acked spans");
    assert_eq!(n, expected.len() as u64, "no span is stored twice");
    c.terminate();
}

/// Spans `first..first + n` starting in the long-closed hour of 2024-06-10T06.
fn old_hour_request(first: u64, n: u64) -> Vec<u8> {
    const HOUR_NS: u64 = 3_600_000_000_000;
    let hour = 1_718_000_000_000_000_000 - 1_718_000_000_000_000_000 % HOUR_NS;
    let spans = (first..first + n)
        .map(|id| {
            let mut s = otlp::span(0x5f, 0, "s3-compaction");
            s.span_id = id.to_be_bytes().to_vec();
            s.start_time_unix_nano = hour + id * 1_000;
            s.end_time_unix_nano = s.start_time_unix_nano + 1_000;
            s
        })
        .collect();
    otlp::request(spans).encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local S3 server: run scripts/test-delta"]
async fn two_nodes_compacting_one_hour_store_each_span_once() {
    let (endpoint, bucket) = s3();
    let storage = format!("s3://{bucket}/compaction-{}", ulid::Ulid::new());
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &Path, id: &str| {
        let extra = ["--maintenance-interval", "300ms"];
        node(dir, &storage, id, &endpoint, &extra)
    };
    let a = start(a_dir.path(), "compact-a");
    let b = start(b_dir.path(), "compact-b");
    // Many small flushes into one closed hour from both nodes, while both compact it.
    let client = reqwest::Client::new();
    let mut expected = BTreeSet::new();
    for k in 0..40u64 {
        let (node, first) = if k % 2 == 0 {
            (&a, 1 + k * 10)
        } else {
            (&b, 1 + k * 10)
        };
        assert!(send(&client, node.http, old_hour_request(first, 10)).await);
        expected.extend((first..first + 10).map(|id| format!("{id:016x}")));
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (n, ids) = stored(a.http).await;
        assert!(n >= ids.len() as u64);
        assert_eq!(n, ids.len() as u64, "a span stored twice");
        if ids == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node a sees {n} of {} spans",
            expected.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Let a few more passes run on both nodes, then check again on each.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for node in [&a, &b] {
        let (n, ids) = stored(node.http).await;
        assert_eq!((n, &ids), (expected.len() as u64, &expected));
    }
    a.terminate();
    b.terminate();
}
