//! Query latency at scale: the trace listing (filters, deep pages), a trace lookup and an
//! analyst GROUP BY, end to end over HTTP against a real server.
//!
//! `cargo bench --bench query -- [SPANS] [DATA_DIR]` (default 10,000,000 spans in a temp
//! dir). A workspace is generated once per DATA_DIR: traces of 1–64 spans (the mixed shape
//! of `spanlake::fake`, one request in ten of the LLM-agent shape, a session on most roots)
//! spread over 7 days, written as one file per hour (as after compaction), then 1,000
//! small flushes of 100 spans on top in the last hours. Run it twice on one DATA_DIR: the
//! second run only serves, so its peak RSS is the server's. With `--compact`, the small
//! flushes are compacted first (as the server's maintenance would). Each request: p50 and
//! p90 of 20 timed requests after 3 of warm-up.

use std::time::{Duration, Instant};

use prost::Message;
use spanlake::app::Server;
use spanlake::config::ServeConfig;
use spanlake::decode::decode_protobuf;
use spanlake::fake::{Shape, mix, shaped};
use spanlake::normalize::normalize;
use spanlake::proto::{ExportTraceServiceRequest, KeyValue};
use spanlake::workspace::Workspace;

/// 2026-11-01T00:00:00Z.
const START: u64 = 1_793_491_200_000_000_000;
const HOUR: u64 = 3_600_000_000_000;
const HOURS: u64 = 7 * 24;
const SMALL_FLUSHES: usize = 1_000;
const SMALL_FLUSH_SPANS: usize = 100;

/// A request of `spans` spans starting within `[start, start + width)`, regrouped into
/// traces of 1–64 spans whose roots mostly carry a session id.
fn request(seed: u64, spans: usize, start: u64, width: u64) -> ExportTraceServiceRequest {
    let shape = if seed.is_multiple_of(10) {
        Shape::LlmAgent
    } else {
        Shape::Mixed
    };
    let mut request = shaped(shape, spans, seed, start);
    let mut z = mix(seed ^ 0x9e37_79b9);
    let mut left = 0;
    let (mut trace, mut root, mut begin) = (Vec::new(), Vec::new(), start);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        if left == 0 {
            z = mix(z);
            left = 1 + (z % 64) as usize;
            trace = span.trace_id.clone();
            trace[8..].copy_from_slice(&z.to_be_bytes());
            root = span.span_id.clone();
            begin = start + mix(z) % width;
            span.parent_span_id.clear();
            if !z.is_multiple_of(5) {
                span.attributes.push(KeyValue {
                    key: "session.id".into(),
                    value: Some(spanlake::proto::AnyValue {
                        value: Some(spanlake::proto::any_value::Value::StringValue(format!(
                            "session-{}",
                            z % 20_000
                        ))),
                    }),
                    key_strindex: 0,
                });
            }
        } else {
            span.parent_span_id = root.clone();
        }
        let length = span.end_time_unix_nano - span.start_time_unix_nano;
        span.trace_id = trace.clone();
        span.start_time_unix_nano = begin + (64 - left as u64) * 1_000_000;
        span.end_time_unix_nano = span.start_time_unix_nano + length;
        left -= 1;
    }
    request
}

fn chunk(seed: u64, spans: usize, start: u64, width: u64) -> spanlake::chunk::SpanChunk {
    let bytes = request(seed, spans, start, width).encode_to_vec();
    normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk
}

fn generate(dir: &std::path::Path, spans: usize, compact: bool) {
    let ws = Workspace::new("bench").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let location = spanlake::config::storage_location(dir, None);
    let storage = runtime
        .block_on(spanlake::storage::Storage::open(
            spanlake::storage::parse_location(&location).unwrap(),
            "bench".into(),
            true,
        ))
        .unwrap();
    if !storage.files().of(ws.as_str()).is_empty() {
        if compact {
            let config = spanlake::maintain::MaintenanceConfig {
                target_bytes: 256 << 20,
                interval: Duration::from_secs(60),
                retention: None,
                keep_removed: Duration::from_secs(3600),
            };
            loop {
                let pass = runtime
                    .block_on(spanlake::maintain::run_pass(
                        &storage, None, dir, &config, false,
                    ))
                    .unwrap();
                if pass.compacted_hours == 0 {
                    break;
                }
            }
            eprintln!("compacted: {} files", storage.files().of(ws.as_str()).len());
        }
        return;
    }
    let staging = spanlake::flush::Staging::of(&storage, dir);
    let append = || deltalake::protocol::DeltaOperation::Write {
        mode: deltalake::protocol::SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let commit = |files: Vec<spanlake::storage::NewFile>| {
        let adds = files
            .iter()
            .map(|f| deltalake::kernel::Action::Add(f.add(true)))
            .collect();
        runtime
            .block_on(storage.commit(adds, append(), Vec::new(), true))
            .unwrap();
    };
    let started = Instant::now();
    let small = SMALL_FLUSHES * SMALL_FLUSH_SPANS;
    let per_hour = (spans.saturating_sub(small)).div_ceil(HOURS as usize);
    let per_request = 512;
    let mut seed = 0;
    for h in 0..HOURS {
        // One hour's traces start within its first 59 minutes, so they stay in the hour.
        let chunks: Vec<_> = (0..per_hour.div_ceil(per_request))
            .map(|k| {
                seed += 1;
                let n = per_request.min(per_hour - k * per_request);
                chunk(seed, n, START + h * HOUR, HOUR - 60_000_000_000)
            })
            .collect();
        commit(spanlake::flush::stage_workspace(&staging, &ws, &chunks).unwrap());
        if h % 24 == 23 {
            eprintln!("day {} written in {:.0?}", h / 24 + 1, started.elapsed());
        }
    }
    // Small flushes on top, over the last 4 hours.
    let mut files = Vec::new();
    for k in 0..SMALL_FLUSHES {
        seed += 1;
        let start = START + (HOURS - 4) * HOUR + k as u64 * (4 * HOUR / SMALL_FLUSHES as u64);
        let c = chunk(seed, SMALL_FLUSH_SPANS, start, 60_000_000_000);
        files.extend(spanlake::flush::stage_workspace(&staging, &ws, &[c]).unwrap());
        if files.len() >= 100 {
            commit(std::mem::take(&mut files));
        }
    }
    if !files.is_empty() {
        commit(files);
    }
    eprintln!(
        "generated {spans} spans in {:.1?} ({} files)",
        started.elapsed(),
        storage.files().of(ws.as_str()).len()
    );
}

async fn time(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
) -> (Vec<Duration>, serde_json::Value) {
    let mut times = Vec::new();
    let mut body = serde_json::Value::Null;
    for i in 0..23 {
        let t = Instant::now();
        let resp = client
            .execute(request.try_clone().unwrap().build().unwrap())
            .await
            .unwrap();
        let status = resp.status();
        body = resp.json().await.unwrap();
        assert!(status.is_success(), "{status} {body}");
        if i >= 3 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    (times, body)
}

fn rss_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let spans: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let compact = std::env::args().any(|a| a == "--compact");
    generate(&dir, spans, compact);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = ServeConfig::with_data_dir(&dir);
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
        // The first request loads the index (from the index table, or from the files).
        let t = Instant::now();
        let first: serde_json::Value = client
            .get(format!("{base}/traces?mode=detailed&page_size=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        println!(
            "first request after start (loads the index)  {:>10.1} ms  ({} traces)",
            t.elapsed().as_secs_f64() * 1e3,
            first["pagination"]["total_results"]
        );
        println!(
            "RSS after loading the index: {} MiB (at most {} MiB so far)",
            rss_mib("VmRSS:"),
            rss_mib("VmHWM:")
        );
        let trace = first["data"][0]["id"].as_str().unwrap().to_string();
        let session = first["data"][0]["session_id"]
            .as_str()
            .unwrap_or("session-1")
            .to_string();
        let last_hour = spanlake::api::json::timestamp_text((START + (HOURS - 1) * HOUR) as i64);
        let sql = "SELECT service_name, count(*), avg(duration_ns) FROM spans GROUP BY 1";
        let requests = [
            (
                "first list page, detailed",
                client.get(format!("{base}/traces?mode=detailed")),
            ),
            (
                "filter[status]=error",
                client.get(format!("{base}/traces?mode=detailed&filter[status]=error")),
            ),
            (
                "filter[session_id]",
                client.get(format!(
                    "{base}/traces?mode=detailed&filter[session_id]={session}"
                )),
            ),
            (
                "filter[started_at][$gte]=last hour",
                client.get(format!(
                    "{base}/traces?mode=detailed&filter[started_at][$gte]={last_hour}"
                )),
            ),
            (
                "page 50, unfiltered",
                client.get(format!("{base}/traces?mode=detailed&page=50")),
            ),
            (
                "first list page, preview",
                client.get(format!("{base}/traces?mode=preview")),
            ),
            (
                "trace lookup by id",
                client.get(format!("{base}/traces/{trace}")),
            ),
            (
                "spans of a trace (span page)",
                client.get(format!("{base}/spans?filter[trace_id]={trace}")),
            ),
            (
                "SQL GROUP BY service_name",
                client
                    .post(format!("{base}/sql"))
                    .json(&serde_json::json!({ "query": sql })),
            ),
        ];
        println!("{:40} {:>10} {:>10}  answer", "request", "p50 ms", "p90 ms");
        for (what, request) in requests {
            let (times, body) = time(&client, request).await;
            let items = body["data"]
                .as_array()
                .map(Vec::len)
                .or_else(|| body["spans"].as_array().map(Vec::len))
                .or_else(|| body["rows"].as_array().map(Vec::len))
                .unwrap_or(0);
            println!(
                "{what:40} {:>10.1} {:>10.1}  {items} items of {}",
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[times.len() * 9 / 10].as_secs_f64() * 1e3,
                body["pagination"]["total_results"],
            );
        }
        println!(
            "RSS of this process: {} MiB now, {} MiB at most",
            rss_mib("VmRSS:"),
            rss_mib("VmHWM:")
        );
        server.shutdown().await.unwrap();
    });
}
