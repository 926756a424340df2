//! Valid but hostile OTLP: shapes that used to amplify. One large resource shared by many
//! spans is stored once (bounded buffer, WAL and Parquet bytes) and survives `kill -9`;
//! spans spread over decades cannot make one request write thousands of files.

use std::path::Path;

use arrow::array::AsArray;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message;

use crate::common::{files_under, metric, otlp, parquet_files};
use crate::crash::{Spanlake, send};

/// The span ids in the Parquet tree, read without the other (large) columns.
fn stored_span_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for file in parquet_files(dir) {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["span_id"]);
        for batch in builder.with_projection(mask).build().unwrap() {
            let batch = batch.unwrap();
            ids.extend(
                batch
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
    }
    ids.sort();
    ids
}

fn bytes_under(dir: &Path, ext: &str) -> u64 {
    files_under(dir, |p| p.extension().is_some_and(|x| x == ext))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// An OTLP protobuf request: spans of `trace` with the given span ids, under one resource
/// whose attribute `blob` holds `len` bytes cycling through `letters` letters from `first`.
fn under_a_big_resource(
    trace: u8,
    ids: impl Iterator<Item = u64>,
    len: usize,
    first: u8,
    letters: usize,
) -> Vec<u8> {
    let spans = ids
        .map(|id| {
            let mut s = otlp::span(trace, 0, "under-a-big-resource");
            s.span_id = id.to_be_bytes().to_vec();
            s
        })
        .collect();
    let mut request = otlp::request(spans);
    let blob: String = (0..len)
        .map(|i| char::from(first + (i * 7 % letters) as u8))
        .collect();
    request.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(otlp::kv("blob", otlp::s(&blob)));
    request.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_resource_shared_by_many_spans_is_stored_once_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    // The reported failure: 160 spans under one resource with an 8 MiB attribute became a
    // 1.3 GB WAL record that replay refused, and the acknowledged spans were lost.
    let body = under_a_big_resource(0xcd, 1..=160, 8 << 20, b'a', 26);
    let size = body.len() as u64;
    let client = reqwest::Client::new();
    assert!(send(&client, server.http, body).await, "acknowledged");

    let buffered = metric(server.http, "spanlake_buffer_bytes").await.unwrap();
    assert!(
        buffered < 2 * size,
        "buffer holds {buffered} bytes for a {size}-byte request"
    );
    let wal = bytes_under(&dir.path().join("wal"), "wal");
    assert!(
        wal < 2 * size,
        "WAL holds {wal} bytes for a {size}-byte request"
    );

    server.kill_9();
    let restarted = Spanlake::start(dir.path(), &[]);
    restarted.terminate();

    let expected: Vec<String> = (1..=160u64).map(|id| format!("{id:016x}")).collect();
    assert_eq!(
        stored_span_ids(dir.path()),
        expected,
        "every acked span, once"
    );
    let parquet = bytes_under(dir.path(), "parquet");
    assert!(
        parquet < 2 * size,
        "Parquet holds {parquet} bytes for a {size}-byte request"
    );
}

/// Reads the trace of [`under_a_big_resource`] (160 spans, 8 MiB `blob`) through the API:
/// a page of two spans carries the attribute twice; the whole trace is over the JSON cap
/// and says so; SQL on the attribute sees every span.
async fn read_the_trace_under_a_big_resource(http: std::net::SocketAddr) {
    let id = "cd".repeat(16);
    let base = format!("http://{http}/apis/intake/v2/workspaces/default");
    let resp = reqwest::get(format!("{base}/spans?filter[trace_id]={id}&page_size=2"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page: serde_json::Value = resp.json().await.unwrap();
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{}", page["pagination"]);
    for span in data {
        let blob = span["resource_attributes"]["blob"].as_str().unwrap();
        assert_eq!(blob.len(), 8 << 20);
    }
    let resp = reqwest::get(format!("{base}/traces/{id}")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let message = resp.text().await.unwrap();
    assert!(message.contains("--sql-max-json-bytes"), "{message}");
    let row = crate::common::sql_row(
        http,
        "default",
        "SELECT COUNT(*) AS n, MAX(length(resource_attributes['blob'])) AS len FROM spans \
         WHERE resource_attributes['blob'] LIKE 'ahov%' AND service_name IS NOT NULL",
    )
    .await;
    assert_eq!(row, serde_json::json!({"n": 160, "len": 8 << 20}));
    let row = crate::common::sql_row(http, "default", "SELECT COUNT(*) AS n FROM spans").await;
    assert_eq!(row, serde_json::json!({"n": 160}), "a scan of no columns");
    let join = "SELECT COUNT(*) AS n FROM spans a JOIN spans b \
                ON a.service_name = b.service_name AND a.span_id = b.span_id";
    let row = crate::common::sql_row(http, "default", join).await;
    assert_eq!(
        row,
        serde_json::json!({"n": 160}),
        "a join on a shared column"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_resource_is_read_back_without_a_copy_per_span() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    // Reads used to expand the shared 8 MiB value into every row before the memory pool
    // saw it: a page of two spans was refused after the sort had held 160 copies.
    let body = under_a_big_resource(0xcd, 1..=160, 8 << 20, b'a', 26);
    assert!(send(&reqwest::Client::new(), server.http, body).await);
    read_the_trace_under_a_big_resource(server.http).await;
    server.terminate();
    assert_eq!(stored_span_ids(dir.path()).len(), 160);
    // The same answers from Parquet, whose shared columns are dictionary-encoded (the
    // scan reads them back as dictionaries: the answers below come from the files).
    for file in parquet_files(dir.path()) {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        let metadata = builder.metadata();
        let row_group = metadata.row_group(0);
        let service = (0..row_group.num_columns())
            .map(|i| row_group.column(i))
            .find(|c| c.column_path().string() == "service_name")
            .unwrap();
        assert!(
            service
                .encodings()
                .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY),
            "{:?}",
            service.encodings().collect::<Vec<_>>()
        );
    }
    let restarted = Spanlake::start(dir.path(), &[]);
    read_the_trace_under_a_big_resource(restarted.http).await;
    restarted.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_cannot_spread_over_thousands_of_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    // 2,000 spans whose start times are spread over 22 years, all valid OTLP.
    let base: u64 = 1_000_000_000 * 1_000_000_000; // 2001-09-09
    let step: u64 = 22 * 365 * 24 * 3600 * 1_000_000_000 / 2000;
    let spans = (0..2000u64)
        .map(|i| {
            let mut s = otlp::span(0xee, 0, "spread");
            s.span_id = (i + 1).to_be_bytes().to_vec();
            s.start_time_unix_nano = base + i * step;
            s.end_time_unix_nano = base + i * step + 1_000;
            s
        })
        .collect();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.http))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&otlp::request(spans)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let partial = &answer["partialSuccess"];
    assert_eq!(partial["rejectedSpans"], "1968", "{answer}");
    let message = partial["errorMessage"].as_str().unwrap();
    assert!(message.contains("at most 32 hours"), "{message}");
    server.terminate();

    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 32, "one file per hour the request kept");
    assert_eq!(stored_span_ids(dir.path()).len(), 32);
    // The spans kept are stored in their true hour, however old.
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("date=2001-09-09"))
    );
}

/// A protobuf length prefix.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_structure_multiplies_their_size_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        client
            .post(format!("http://{}{path}", server.http))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    // 8 MiB of empty spans (2 bytes each on the wire, ~300 bytes each decoded): 4M spans.
    let spans: Vec<u8> = [0x12u8, 0x00].repeat(4 << 20);
    let resource_spans = [vec![0x12], varint(spans.len()), spans].concat();
    let body = [vec![0x0a], varint(resource_spans.len()), resource_spans].concat();
    let answer = post("/v1/traces", "application/x-protobuf", body)
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let status =
        spanlake::proto::google_rpc::Status::decode(answer.bytes().await.unwrap()).unwrap();
    assert!(
        status.message.contains("decoding this request would hold"),
        "{}",
        status.message
    );

    // The same in OTLP JSON: `{}` per span.
    let json = format!(
        "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{}{{}}]}}]}}]}}",
        "{},".repeat(2 << 20)
    );
    let answer = post("/v1/traces", "application/json", json.into_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let text = answer.text().await.unwrap();
    assert!(text.contains("decoding this request would hold"), "{text}");

    // Span logs: 2M items of `0`, each a refused item with its reason.
    let logs = format!("[{}0]", "0,".repeat(2 << 20));
    let answer = post("/v1/traces/ingest", "application/json", logs.into_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status(), 413, "{:?}", answer.text().await);

    // NeMo intake's simplified JSON: one tiny attribute map per span.
    let nemo = format!(
        "{{\"traceId\":\"{}\",\"spans\":[{}{{}}]}}",
        "ab".repeat(16),
        "{\"attributes\":{\"a\":1}},".repeat(1 << 18)
    );
    let answer = post(
        "/apis/intake/v2/workspaces/default/ingest/otlp/v1/traces",
        "application/json",
        nemo.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 413, "{:?}", answer.text().await);

    // The server is still there and takes an ordinary request.
    let ordinary = otlp::request(vec![otlp::span(0x21, 1, "after")]).encode_to_vec();
    assert!(send(&client, server.http, ordinary).await);
    assert_eq!(
        metric(server.http, "spanlake_inflight_bytes").await,
        Some(0)
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_values_larger_than_a_default_dictionary_are_still_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spanlake::start(dir.path(), &["--flush-interval", "1h"]);
    let client = reqwest::Client::new();
    // Two resources of 10 MiB each (20 MiB of distinct shared values, past the 16 MiB a
    // dictionary page held before), 30 spans each, flushed into one file.
    let mut size = 0;
    for (trace, letter) in [(0xd1u8, b'a'), (0xd2, b'k')] {
        let ids = (1..=30u64).map(|id| u64::from(trace) << 32 | id);
        let body = under_a_big_resource(trace, ids, 10 << 20, letter, 16);
        size += body.len() as u64;
        assert!(send(&client, server.http, body).await, "acknowledged");
    }
    server.terminate();
    assert_eq!(stored_span_ids(dir.path()).len(), 60, "every acked span");
    let parquet = bytes_under(dir.path(), "parquet");
    assert!(
        parquet < 2 * size,
        "Parquet holds {parquet} bytes for {size} bytes of requests"
    );
}
