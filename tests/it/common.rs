//! The test harness: a real server on `127.0.0.1:0` listeners over a temp data dir, and
//! helpers that read back what a user would see (the Delta table, its files found through
//! its log by delta-rs, as an outside reader finds them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use spanlake::app::{Listeners, Server};
use spanlake::config::ServeConfig;
use tokio::net::TcpListener;

/// Every listener on `127.0.0.1:0`.
async fn listeners() -> Listeners {
    let bind = || TcpListener::bind("127.0.0.1:0");
    Listeners {
        grpc: bind().await.expect("bind grpc"),
        http: bind().await.expect("bind http"),
        flight: Some(bind().await.expect("bind flight")),
        pg: Some(bind().await.expect("bind pg")),
    }
}

/// A running in-process server and its data directory.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub flight: SocketAddr,
    pub pg: SocketAddr,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::with_data_dir(dir.path());
        configure(&mut config);
        let server = Server::start_on(config, listeners().await)
            .await
            .expect("start");
        let (grpc, http) = (server.grpc_addr(), server.http_addr());
        let flight = server.flight_addr().expect("a Flight SQL listener");
        let pg = server.pg_addr().expect("a PostgreSQL listener");
        wait_until("server ready", || server.is_ready()).await;
        Self {
            server: Some(server),
            dir,
            grpc,
            http,
            flight,
            pg,
        }
    }

    /// Stops the server (flushing to Parquet) and starts a new one on the same directory.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    /// [`TestServer::restart`] with a changed configuration.
    pub async fn restart_with(&mut self, configure: impl FnOnce(&mut ServeConfig)) {
        self.stop().await;
        let mut config = ServeConfig::with_data_dir(self.dir.path());
        configure(&mut config);
        let server = Server::start_on(config, listeners().await)
            .await
            .expect("restart");
        self.grpc = server.grpc_addr();
        self.http = server.http_addr();
        self.flight = server.flight_addr().expect("a Flight SQL listener");
        self.pg = server.pg_addr().expect("a PostgreSQL listener");
        wait_until("server ready", || server.is_ready()).await;
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Stops the server (which flushes every buffer to Parquet).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops the server and returns every row in the Parquet tree.
    pub async fn stop_and_read(&mut self) -> Rows {
        self.stop().await;
        read_tree(self.dir.path())
    }
}

/// Polls `cond` until it holds, failing after a generous deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rows of `query` over workspace `ws` through `POST …/sql` (JSON).
pub async fn sql_rows(http: SocketAddr, ws: &str, query: &str) -> Vec<serde_json::Value> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/apis/intake/v2/workspaces/{ws}/sql"))
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await
        .expect("sql request")
        .json()
        .await
        .expect("a JSON answer");
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{query}: {answer}"))
        .clone()
}

/// The first row of `query` over workspace `ws` through `POST …/sql` (JSON).
pub async fn sql_row(http: SocketAddr, ws: &str, query: &str) -> serde_json::Value {
    sql_rows(http, ws, query)
        .await
        .into_iter()
        .next()
        .unwrap_or(serde_json::Value::Null)
}

/// `COUNT(*)` and `COUNT(DISTINCT span_id)` of workspace `ws`'s spans.
pub async fn span_counts(http: SocketAddr, ws: &str) -> (u64, u64) {
    let row = sql_row(
        http,
        ws,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT span_id) AS d FROM spans",
    )
    .await;
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    (n("n"), n("d"))
}

/// A sample of the Prometheus text at `http`'s `/metrics` (an unlabelled series).
pub async fn metric(http: SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sends `spans` spans of trace `trace` over OTLP/HTTP protobuf to the `default`
/// workspace; they must be acknowledged.
pub async fn ingest_spans(server: &TestServer, spans: usize, trace: u8) {
    let status = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&otlp::many(spans, trace)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::OK, "ingestion is acknowledged");
}

/// Waits (up to a minute) until `http` reports no query running.
pub async fn wait_for_no_query(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(http, "spanlake_queries_running").await != Some(0) {
        assert!(Instant::now() < deadline, "the query kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SQL whose value grows eightfold per subquery through `||` (no function call shows it),
/// to 16·8¹⁴ bytes: over any memory pool.
pub fn eightfold_chain() -> String {
    let mut chain = "WITH t0 AS (SELECT 'aaaaaaaaaaaaaaaa' AS s)".to_string();
    for i in 1..=14 {
        chain += &format!(
            ", t{i} AS (SELECT s||s||s||s||s||s||s||s AS s FROM t{})",
            i - 1
        );
    }
    chain + " SELECT length(s) FROM t14"
}

/// Every file under `dir` whose path `keep` accepts, sorted.
pub fn files_under(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if keep(&p) {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// The data files of the table's latest version under the data dir `dir`, sorted by path.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    table_files(dir)
}

/// Parquet files under the data dir `dir` that no version of the table references now
/// (a failed or crashed flush's; vacuum deletes them).
pub fn uncommitted_files(dir: &Path) -> Vec<PathBuf> {
    let committed = table_files(dir);
    let root = dir.join("spans");
    if !root.exists() {
        return Vec::new();
    }
    let root = root.canonicalize().expect("table dir");
    // Directories starting with `_` are not the table's: its log, the trace index table.
    files_under(&root, |p| {
        p.extension().is_some_and(|e| e == "parquet")
            && !p
                .strip_prefix(&root)
                .is_ok_and(|r| r.to_string_lossy().starts_with('_'))
    })
    .into_iter()
    .filter(|p| !committed.contains(p))
    .collect()
}

/// Rows read back from Parquet, each a column → display-string map, plus its file.
pub struct Rows(pub Vec<(PathBuf, BTreeMap<String, Option<String>>)>);

impl Rows {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The row with this span id (hex); panics if absent or repeated.
    pub fn span(&self, span_id: &str) -> &BTreeMap<String, Option<String>> {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|(_, r)| r["span_id"].as_deref() == Some(span_id))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "span {span_id} should be stored exactly once"
        );
        &found[0].1
    }

    pub fn file_of(&self, span_id: &str) -> &Path {
        &self
            .0
            .iter()
            .find(|(_, r)| r["span_id"].as_deref() == Some(span_id))
            .expect("span present")
            .0
    }

    pub fn span_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .iter()
            .filter_map(|(_, r)| r["span_id"].clone())
            .collect();
        ids.sort();
        ids
    }
}

pub fn read_file(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet footer")
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("read batches")
}

pub fn batch_rows(batch: &RecordBatch) -> Vec<BTreeMap<String, Option<String>>> {
    let options = FormatOptions::default();
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .zip(&formatters)
                .map(|((f, c), fmt)| {
                    let v = (!c.is_null(i)).then(|| fmt.value(i).to_string());
                    (f.name().clone(), v)
                })
                .collect()
        })
        .collect()
}

/// The files of the latest version of the table under the data dir `dir`, as delta-rs
/// lists them from the log (empty before the table has any).
pub fn table_files(dir: &Path) -> Vec<PathBuf> {
    delta_files(&dir.join("spans"))
}

/// The files of the latest version of the trace index table under the data dir `dir`.
pub fn index_files(dir: &Path) -> Vec<PathBuf> {
    delta_files(&dir.join("spans").join("_trace_index"))
}

/// The files of the latest version of the Delta table at `root`, as delta-rs lists them
/// from the log (empty before the table has any).
fn delta_files(root: &Path) -> Vec<PathBuf> {
    let root = root.to_path_buf();
    if !root.join("_delta_log").exists() {
        return Vec::new();
    }
    let root = root.canonicalize().expect("table dir");
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let url = url::Url::from_directory_path(&root).expect("table url");
                let table = deltalake::DeltaTableBuilder::from_url(url)
                    .expect("builder")
                    .load()
                    .await
                    .expect("load the table");
                let mut files: Vec<PathBuf> = table
                    .snapshot()
                    .expect("snapshot")
                    .log_data()
                    .iter()
                    .map(|f| root.join(f.path().as_ref()))
                    .collect();
                files.sort();
                files
            })
        })
        .join()
        .expect("reader thread")
    })
}

/// Every row of the table's latest version, each with its file; `start_time` (and
/// `end_time`) shown to the nanosecond, from the exact `…_unix_nano` columns.
pub fn read_tree(dir: &Path) -> Rows {
    let mut rows = Vec::new();
    for path in table_files(dir) {
        for batch in read_file(&path) {
            for mut row in batch_rows(&batch) {
                for (time, exact) in [
                    ("start_time", "start_time_unix_nano"),
                    ("end_time", "end_time_unix_nano"),
                ] {
                    let ns = row.get(exact).cloned().flatten();
                    let shown = ns.and_then(|n| n.parse::<i64>().ok()).map(|n| {
                        chrono::DateTime::from_timestamp_nanos(n)
                            .format("%Y-%m-%dT%H:%M:%S%.9fZ")
                            .to_string()
                    });
                    row.insert(time.to_string(), shown);
                }
                rows.push((path.clone(), row));
            }
        }
    }
    Rows(rows)
}

/// A small OTLP request builder for hand-made payloads.
pub mod otlp {
    use spanlake::proto::*;

    pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            key_strindex: 0,
        }
    }

    pub fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    pub fn span(trace: u8, id: u8, name: &str) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: name.into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + id as u64,
            end_time_unix_nano: 1_700_000_001_000_000_000,
            ..Default::default()
        }
    }

    pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("test-svc"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "test-scope".into(),
                        version: "0.1".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// `n` spans of one trace with ~10 attributes each.
    pub fn many(n: usize, trace: u8) -> ExportTraceServiceRequest {
        let spans = (0..n)
            .map(|i| {
                let mut sp = span(trace, 0, &format!("op-{i}"));
                sp.span_id = ((i as u64) + 1).to_be_bytes().to_vec();
                sp.attributes = (0..10)
                    .map(|a| kv(&format!("attr.{a}"), s(&format!("value-{i}-{a}"))))
                    .collect();
                sp
            })
            .collect();
        request(spans)
    }
}

/// The same rows through `POST …/sql`.
pub async fn route_rows(
    server: &TestServer,
    key: &str,
    ws: &str,
    query: &str,
) -> Vec<BTreeMap<String, String>> {
    let answer: Value = reqwest::Client::new()
        .post(server.url(&format!("/apis/intake/v2/workspaces/{ws}/sql")))
        .bearer_auth(key)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|row| {
            row.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect()
        })
        .collect()
}

/// The keys of [`analyst_server`].
const ANALYST_KEYS: &str = r#"
[[keys]]
key = "k-alpha"
workspaces = ["alpha"]
scopes = ["ingest", "read"]

[[keys]]
key = "k-beta"
workspaces = ["beta"]
scopes = ["ingest", "read"]

[[keys]]
key = "k-ingest"
workspaces = ["alpha"]
scopes = ["ingest"]
"#;

/// A server with API keys (`k-alpha` reads and writes `alpha`, `k-beta` `beta`, `k-ingest`
/// only writes `alpha`), a 32 MiB query pool, and three spans in each workspace: `alpha`
/// has `checkout` twice and `cart`, `beta` has `secret` three times.
pub async fn analyst_server() -> (TestServer, tempfile::TempDir) {
    let keys_dir = tempfile::tempdir().unwrap();
    let path = keys_dir.path().join("keys.toml");
    std::fs::write(&path, ANALYST_KEYS).unwrap();
    let server = TestServer::start_with(|c| {
        c.api_keys = Some(path);
        c.query.query_memory_bytes = 32 << 20;
    })
    .await;
    for (ws, key, names) in [
        ("alpha", "k-alpha", ["checkout", "checkout", "cart"]),
        ("beta", "k-beta", ["secret", "secret", "secret"]),
    ] {
        let spans = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut span = otlp::span(0x10, i as u8 + 1, name);
                span.attributes.push(otlp::kv("http.route", otlp::s(name)));
                span
            })
            .collect();
        let status = reqwest::Client::new()
            .post(server.url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-workspace", ws)
            .bearer_auth(key)
            .body(prost::Message::encode_to_vec(&otlp::request(spans)))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    (server, keys_dir)
}
