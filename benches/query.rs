//! Query latency over a generated workspace: the first trace-list page and a trace lookup.
//!
//! `cargo bench --bench query -- [SPANS] [DATA_DIR]` (default 10,000,000 spans in a temp
//! dir). Spans come from `spanlake::fake` (traces of 8 spans, ~10 attributes), spread over
//! 48 hours, written straight to the Parquet tree as flushes would write them; then a real
//! server answers HTTP requests, timed end to end (wall clock, median of 5 after a warm-up).

use std::time::{Duration, Instant};

use prost::Message;
use spanlake::app::Server;
use spanlake::config::ServeConfig;
use spanlake::decode::decode_protobuf;
use spanlake::normalize::normalize;
use spanlake::workspace::Workspace;

const START: u64 = 1_763_000_000_000_000_000;
const SPAN_NS: u64 = 48 * 3_600_000_000_000;

fn generate(dir: &std::path::Path, spans: usize) -> String {
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
    let staging = spanlake::flush::Staging::of(&storage, dir);
    let per_request = 512;
    let requests = spans.div_ceil(per_request);
    let per_file = 200; // requests per flush: ~100K spans per file
    let mut batches = Vec::with_capacity(per_file);
    let mut some_trace = String::new();
    let started = Instant::now();
    let existing = !storage.files().of(ws.as_str()).is_empty();
    for k in 0..requests {
        if existing && k != requests / 2 {
            continue; // the tree is already there: only find the trace to look up
        }
        let start = START + (k as u64) * (SPAN_NS / requests as u64);
        let bytes = spanlake::fake::request(per_request, k as u64, start).encode_to_vec();
        let batch = normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk;
        if k == requests / 2 {
            some_trace =
                arrow::array::AsArray::as_string::<i32>(batch.span_column("trace_id").unwrap())
                    .value(0)
                    .to_string();
        }
        if existing {
            continue;
        }
        batches.push(batch);
        if batches.len() == per_file || k + 1 == requests {
            let files = spanlake::flush::stage_workspace(&staging, &ws, &batches).unwrap();
            let adds = files
                .iter()
                .map(|f| deltalake::kernel::Action::Add(f.add(true)))
                .collect();
            let append = deltalake::protocol::DeltaOperation::Write {
                mode: deltalake::protocol::SaveMode::Append,
                partition_by: None,
                predicate: None,
            };
            runtime
                .block_on(storage.commit(adds, append, Vec::new(), true))
                .unwrap();
            batches.clear();
        }
    }
    if !existing {
        eprintln!("generated {spans} spans in {:.1?}", started.elapsed());
    }
    some_trace
}

async fn time(client: &reqwest::Client, url: &str) -> (Duration, serde_json::Value) {
    let mut times = Vec::new();
    let mut body = serde_json::Value::Null;
    for i in 0..6 {
        let t = Instant::now();
        let resp = client.get(url).send().await.unwrap();
        let status = resp.status();
        body = resp.json().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {body}");
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    (times[times.len() / 2], body)
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
    let trace = generate(&dir, spans);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(ServeConfig::with_data_dir(&dir), grpc, http)
            .await
            .unwrap();
        while !server.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let base = format!(
            "http://{}/apis/intake/v2/workspaces/bench",
            server.http_addr()
        );
        let client = reqwest::Client::new();
        for (what, url) in [
            ("first list page (detailed)", format!("{base}/traces")),
            (
                "first list page (summary)",
                format!("{base}/traces?mode=summary"),
            ),
            (
                "list page, last hour",
                format!("{base}/traces?filter[started_at][$gte]=2025-11-15T01:13:20Z"),
            ),
            ("trace lookup", format!("{base}/traces/{trace}")),
        ] {
            let (median, body) = time(&client, &url).await;
            let n = body["data"]
                .as_array()
                .map_or_else(|| body["spans"].as_array().map_or(0, Vec::len), Vec::len);
            println!(
                "{what:32} {:>10.1} ms  ({n} items)",
                median.as_secs_f64() * 1e3
            );
        }
        server.shutdown().await.unwrap();
    });
}
