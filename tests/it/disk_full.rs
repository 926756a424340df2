//! A full disk (a small tmpfs the test mounts; needs root, as in CI): ingestion answers
//! 503 with Retry-After instead of acknowledging what it cannot keep, queries still answer,
//! and once there is room again every acknowledged span is stored exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use prost::Message;

use crate::common::{otlp, read_tree};
use crate::crash::Spanlake;

struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn mount(dir: &Path, size: &str, remount: bool) -> bool {
    let options = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_503_and_loses_nothing_acked() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(mount(dir.path(), "12m", false), "mount a 12 MiB tmpfs");
    let _unmount = Tmpfs(dir.path());
    let data = dir.path().join("data");
    let server = Spanlake::start(&data, &["--flush-interval", "200ms"]);
    let client = reqwest::Client::new();
    let (mut acked, mut refused) = (Vec::new(), 0);
    for k in 0..400u64 {
        let spans = (0..200u64)
            .map(|i| {
                let mut s = otlp::span(0xdf, 0, &"x".repeat(200));
                s.span_id = (k * 200 + i + 1).to_be_bytes().to_vec();
                s.attributes = vec![otlp::kv(
                    "payload",
                    otlp::s(&format!("{k}-{i}-{}", "y".repeat(300))),
                )];
                s
            })
            .collect();
        let response = client
            .post(format!("http://{}/v1/traces", server.http))
            .header("content-type", "application/x-protobuf")
            .body(otlp::request(spans).encode_to_vec())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acked.extend((k * 200 + 1..=k * 200 + 200).map(|id| format!("{id:016x}"))),
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!(
                "a full disk answered {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert!(
        refused >= 5,
        "the disk should have filled up ({} spans acked)",
        acked.len()
    );
    assert!(!acked.is_empty());
    // Queries still answer while the disk is full.
    let health = client
        .get(format!("http://{}/healthz", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The final flush may fail for want of room: the WAL keeps everything acked.
    let _ = server.terminate_status();

    assert!(mount(dir.path(), "256m", true), "grow the tmpfs");
    Spanlake::start(&data, &[]).terminate();
    let mut counts = BTreeMap::new();
    for id in read_tree(&data).span_ids() {
        *counts.entry(id).or_insert(0) += 1;
    }
    let twice = counts.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "stored twice");
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acked spans lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}
