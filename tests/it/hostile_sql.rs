//! Hostile SQL from a read key (or anyone on loopback): queries that would use unbounded
//! memory are refused with a clear 400, answers stream or are capped, a client that goes
//! away cancels its query, and ingestion keeps being acknowledged throughout.

use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, eightfold_chain, ingest_spans, metric, wait_for_no_query};

async fn sql(server: &TestServer, query: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/apis/intake/v2/workspaces/default/sql"))
        .header("accept", accept)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_generators_are_refused_and_ingestion_goes_on() {
    let server = TestServer::start().await;
    for (query, refused) in [
        (
            "SELECT * FROM generate_series(1, 2000000000)",
            "generate_series()",
        ),
        ("SELECT count(*) FROM range(1, 2000000000)", "range()"),
        ("SELECT unnest(range(1, 2000000000))", "range()"),
        (
            "SELECT unnest(generate_series(1, 2000000000))",
            "generate_series()",
        ),
        ("SELECT repeat('x', 2000000000)", "repeat()"),
        ("SELECT lpad('x', 2000000000)", "lpad()"),
        ("SELECT array_repeat(1, 2000000000)", "array_repeat()"),
        (
            "SELECT name FROM spans WHERE name IN (SELECT repeat(name, 1000000000) FROM spans)",
            "repeat()",
        ),
        (
            "WITH t AS (SELECT value FROM generate_series(1, 10)) SELECT * FROM t",
            "generate_series()",
        ),
    ] {
        let resp = sql(&server, query, "application/json").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("not allowed") && body.contains(refused),
            "{query}: {body}"
        );
        ingest_spans(&server, 5, 0x21).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_arrow_answers_stream_every_row() {
    let server = TestServer::start().await;
    for trace in 0..5u8 {
        ingest_spans(&server, 1000, 0x30 + trace).await;
    }
    let query = "SELECT trace_id, span_id, name FROM spans";
    let csv = sql(&server, query, "text/csv").await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    assert_eq!(text.lines().count(), 5001, "a header and every row");
    assert_eq!(text.lines().next(), Some("trace_id,span_id,name"));
    let empty = sql(&server, &format!("{query} WHERE false"), "text/csv").await;
    assert_eq!(
        empty.text().await.unwrap(),
        "trace_id,span_id,name\n",
        "an answer without rows still has its header"
    );

    let arrow = sql(&server, query, "application/vnd.apache.arrow.stream").await;
    assert_eq!(arrow.status(), StatusCode::OK);
    let bytes = arrow.bytes().await.unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_over_the_cap_is_cut_and_says_so() {
    let server = TestServer::start_with(|c| c.query.sql_max_json_bytes = 20_000).await;
    ingest_spans(&server, 1000, 0x41).await;
    let resp = sql(
        &server,
        "SELECT span_id, name FROM spans",
        "application/json",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.len() <= 20_500, "{} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["truncated"], true);
    let rows = body["rows"].as_array().unwrap().len();
    assert!(rows > 0 && rows < 1000, "{rows}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("--sql-max-json-bytes") && message.contains("text/csv"),
        "{message}"
    );
    // Under the cap: whole, and no truncation mark.
    let small = sql(
        &server,
        "SELECT span_id FROM spans LIMIT 3",
        "application/json",
    )
    .await;
    let small: Value = small.json().await.unwrap();
    assert_eq!(small["rows"].as_array().unwrap().len(), 3);
    assert!(small.get("truncated").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_query() {
    let server = TestServer::start_with(|c| {
        c.query.query_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    ingest_spans(&server, 2000, 0x51).await;
    let http = server.http;
    assert_eq!(metric(http, "spanlake_queries_running").await, Some(0));
    // 8·10⁹ rows streamed as CSV: the client reads the first bytes, then hangs up.
    let mut resp = sql(
        &server,
        "SELECT a.span_id, b.span_id, c.span_id FROM spans a, spans b, spans c",
        "text/csv",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.chunk().await.unwrap().is_some());
    assert_eq!(metric(http, "spanlake_queries_running").await, Some(1));
    drop(resp);
    wait_for_no_query(http).await;
    ingest_spans(&server, 5, 0x52).await;
}

/// `f(f(f(…)))` nested `depth` times around `seed`: `f` is `replace` or another function
/// given as `before`/`after` text around its first argument.
fn nested(depth: usize, seed: &str, before: &str, after: &str) -> String {
    let mut expr = seed.to_string();
    for _ in 0..depth {
        expr = format!("{before}{expr}{after}");
    }
    expr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_grow_their_input_are_bounded_by_the_memory_pool() {
    let server = TestServer::start().await;
    ingest_spans(&server, 50, 0x71).await;
    // Each query would build a value of 10¹³ bytes or more: tenfold per level.
    let tenfold = nested(13, "'aaaaaaaaaa'", "replace(", ", 'a', 'aaaaaaaaaa')");
    let regexp = nested(
        13,
        "'aaaaaaaaaa'",
        "regexp_replace(",
        ", 'a', 'aaaaaaaaaa', 'g')",
    );
    let runtime = nested(14, "name", "replace(", ", 'o', 'oooooooooo')");
    // Eightfold per subquery through `||`, which no function call shows.
    let chain = eightfold_chain();
    // Doubling a list per subquery: `list || list` is planned as array_concat.
    let mut lists = "WITH t0 AS (SELECT [name] AS l FROM spans)".to_string();
    for i in 1..=40 {
        lists += &format!(", t{i} AS (SELECT l || l AS l FROM t{})", i - 1);
    }
    lists += " SELECT cardinality(l) FROM t40";
    for query in [
        format!("SELECT length({tenfold})"),
        format!("SELECT length({regexp})"),
        format!("SELECT length({runtime}) FROM spans"),
        chain,
        lists,
        format!("SELECT length(concat({tenfold}, 'x'))"),
    ] {
        let resp = sql(&server, &query, "application/json").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("memory limit"), "{query}: {body}");
        ingest_spans(&server, 5, 0x72).await;
    }

    // Within bounds the functions answer as before, and `||` keeps its name and nulls.
    let resp = sql(
        &server,
        "SELECT replace('abc', 'b', 'xx') AS r, 'a' || 'b', NULL || 'a' AS n, \
         regexp_replace('foobarbaz', 'b(..)', 'X\\1Y', 'g') AS g, concat('a', NULL, 'b') AS k, \
         upper('straße') AS u, encode(decode('ff', 'hex') || decode('00', 'hex'), 'hex') AS b",
        "application/json",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let names: Vec<&str> = body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["r", "Utf8(\"a\") || Utf8(\"b\")", "n", "g", "k", "u", "b"]
    );
    assert_eq!(
        body["rows"][0],
        json!({"r": "axxc", "Utf8(\"a\") || Utf8(\"b\")": "ab", "n": null,
               "g": "fooXarYXazY", "k": "ab", "u": "STRASSE", "b": "ff00"})
    );
    let resp = sql(
        &server,
        &format!(
            "SELECT count(*) AS n FROM spans WHERE trace_id = '{}' AND name || '-x' = 'op-3-x'",
            "71".repeat(16)
        ),
        "application/json",
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["rows"][0]["n"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_too_large_to_answer_whole_says_how_to_read_it() {
    let server = TestServer::start_with(|c| c.query.sql_max_json_bytes = 50_000).await;
    let mut request = crate::common::otlp::many(50, 0x61);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        span.attributes.push(crate::common::otlp::kv(
            "llm.input",
            crate::common::otlp::s(&"i".repeat(2000)),
        ));
    }
    let status = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let id = "61".repeat(16);
    let base = "/apis/intake/v2/workspaces/default";
    let resp = reqwest::get(server.url(&format!("{base}/traces/{id}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("50000 bytes") && body.contains(&format!("spans?filter[trace_id]={id}")),
        "{body}"
    );
    let page = |size: usize| {
        reqwest::get(server.url(&format!(
            "{base}/spans?filter[trace_id]={id}&page_size={size}"
        )))
    };
    let resp = page(50).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("smaller page_size"));
    let resp = page(10).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 10, "{body}");
}
