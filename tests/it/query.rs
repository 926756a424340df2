//! The query routes (NeMo trace listing and lookup, span listing, SQL) against known
//! traces, answered identically from the buffer and, after a restart, from Parquet.

use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spanlake::proto::{Span, Status, any_value::Value as V};

use crate::common::{TestServer, otlp};

const T0: u64 = 1_705_311_000_000_000_000; // 2024-01-15T09:30:00Z
const MIN: u64 = 60_000_000_000;
const HOUR: u64 = 60 * MIN;

fn id16(b: u8) -> Vec<u8> {
    vec![b; 16]
}

fn hex16(b: u8) -> String {
    format!("{b:02x}").repeat(16)
}

fn sp(trace: u8, id: u8, parent: Option<u8>, name: &str, start: u64, ms: u64) -> Span {
    Span {
        trace_id: id16(trace),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * 1_000_000,
        ..Default::default()
    }
}

fn error(mut s: Span, message: &str) -> Span {
    s.status = Some(Status {
        code: 2,
        message: message.into(),
    });
    s
}

fn attrs(mut s: Span, kvs: &[(&str, V)]) -> Span {
    s.attributes = kvs.iter().map(|(k, v)| otlp::kv(k, v.clone())).collect();
    s
}

fn s(v: &str) -> V {
    V::StringValue(v.into())
}

/// Trace A (0xaa): root errs, an LLM child with tokens and cost, a failing tool.
/// Trace B (0xbb): a chat, one hour later. Trace C (0xcc): no parentless span, two hours
/// later. Trace D (0xdd): a cancelled root, three hours later.
fn fixture() -> Vec<Span> {
    let long_input = "x".repeat(1000);
    vec![
        attrs(
            error(sp(0xaa, 0xa1, None, "agent-run", T0, 3000), "tool failed"),
            &[
                ("session.id", s("s1")),
                ("nemo.evaluation.name", s("exp-1")),
                ("nemo.test_case.id", s("tc-1")),
                ("input.value", s(&long_input)),
                ("output.value", s("done")),
            ],
        ),
        attrs(
            sp(
                0xaa,
                0xa2,
                Some(0xa1),
                "chat gpt-4o",
                T0 + 100_000_000,
                1500,
            ),
            &[
                ("gen_ai.usage.input_tokens", V::IntValue(100)),
                ("gen_ai.usage.output_tokens", V::IntValue(20)),
                ("gen_ai.usage.cache_read.input_tokens", V::IntValue(5)),
                ("gen_ai.usage.cost", V::DoubleValue(0.01)),
                ("gen_ai.request.model", s("gpt-4o")),
            ],
        ),
        error(
            sp(
                0xaa,
                0xa3,
                Some(0xa1),
                "tool search",
                T0 + 2_000_000_000,
                4000,
            ),
            "timeout",
        ),
        attrs(
            sp(0xbb, 0xb1, None, "chat", T0 + HOUR, 800),
            &[("session.id", s("s2"))],
        ),
        attrs(
            sp(
                0xbb,
                0xb2,
                Some(0xb1),
                "chat gpt-4o",
                T0 + HOUR + 1_000_000,
                700,
            ),
            &[
                ("gen_ai.usage.input_tokens", V::IntValue(50)),
                ("gen_ai.usage.output_tokens", V::IntValue(10)),
                ("gen_ai.usage.cost", V::DoubleValue(0.02)),
            ],
        ),
        sp(
            0xcc,
            0xc2,
            Some(0xc1),
            "orphan-late",
            T0 + 2 * HOUR + 5_000_000,
            10,
        ),
        sp(0xcc, 0xc3, Some(0xc1), "orphan-early", T0 + 2 * HOUR, 10),
        error(
            sp(0xdd, 0xd1, None, "cancelled-run", T0 + 3 * HOUR, 50),
            "request cancelled",
        ),
    ]
}

async fn ingest(server: &TestServer) {
    let body = otlp::request(fixture()).encode_to_vec();
    let resp = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn traces(server: &TestServer, query: &str) -> Value {
    let (status, body) = get(
        server,
        &format!("/apis/intake/v2/workspaces/default/traces?{query}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

async fn sql(server: &TestServer, query: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.url("/apis/intake/v2/workspaces/default/sql"))
        .header("content-type", "application/json")
        .body(json!({ "query": query }).to_string());
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    req.send().await.unwrap()
}

/// Everything the routes answer for the fixture, collected to compare before and after a
/// restart.
async fn answers(server: &TestServer) -> Vec<Value> {
    let mut out = Vec::new();
    for q in [
        "",
        "page=2&page_size=2",
        "sort=started_at&mode=summary",
        "mode=preview",
        "filter[status]=error",
        "filter[id][$in]=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "filter[started_at][$gte]=2024-01-15T10:00:00Z&filter[started_at][$lte]=2024-01-15T12:00:00Z",
    ] {
        out.push(traces(server, q).await);
    }
    out.push(
        get(
            server,
            &format!("/apis/intake/v2/workspaces/default/traces/{}", hex16(0xaa)),
        )
        .await
        .1,
    );
    out.push(
        get(
            server,
            &format!(
                "/apis/intake/v2/workspaces/default/spans?filter[trace_id]={}",
                hex16(0xaa)
            ),
        )
        .await
        .1,
    );
    out.push(
        sql(
            server,
            "SELECT id, span_count, error_count, status FROM traces ORDER BY started_at",
            None,
        )
        .await
        .json()
        .await
        .unwrap(),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_listing_follows_the_nemo_contract() {
    let server = TestServer::start().await;
    ingest(&server).await;
    let (a, b, c, d) = (hex16(0xaa), hex16(0xbb), hex16(0xcc), hex16(0xdd));

    let page = traces(&server, "").await;
    assert_eq!(
        ids(&page),
        [d.clone(), c.clone(), b.clone(), a.clone()],
        "newest first by default"
    );
    assert_eq!(
        page["pagination"],
        json!({"page": 1, "page_size": 10, "current_page_size": 4, "total_pages": 1, "total_results": 4})
    );
    assert_eq!(page["sort"], "-started_at");

    let ta = &page["data"][3];
    assert_eq!(ta["root_span_id"], "a1a1a1a1a1a1a1a1");
    assert_eq!(ta["name"], "agent-run");
    assert_eq!(ta["session_id"], "s1");
    assert_eq!(ta["workspace"], "default");
    assert_eq!(
        ta["experiment_context"],
        json!({"experiment_id": "exp-1", "test_case_id": "tc-1"})
    );
    assert_eq!(ta["started_at"], "2024-01-15T09:30:00Z");
    assert_eq!(
        ta["ended_at"], "2024-01-15T09:30:06Z",
        "the latest end in the trace"
    );
    assert_eq!(ta["duration_ms"], 6000.0);
    assert_eq!(ta["status"], "error");
    assert_eq!(
        (
            ta["input_tokens"].clone(),
            ta["output_tokens"].clone(),
            ta["cached_tokens"].clone(),
            ta["total_tokens"].clone()
        ),
        (json!(100), json!(20), json!(5), json!(120))
    );
    assert_eq!(ta["cost_usd"], 0.01);
    assert_eq!(
        (ta["span_count"].clone(), ta["error_count"].clone()),
        (json!(3), json!(2))
    );
    assert!(
        ta.get("input").is_none(),
        "detailed mode has no input preview"
    );

    let tc = &page["data"][1];
    assert_eq!(
        tc["root_span_id"], "c3c3c3c3c3c3c3c3",
        "no parentless span: the earliest span"
    );
    assert_eq!(tc["status"], "success");
    assert_eq!(page["data"][0]["status"], "cancelled");
    assert_eq!(page["data"][2]["total_tokens"], 60);

    let p2 = traces(&server, "page=2&page_size=2").await;
    assert_eq!(ids(&p2), [b.clone(), a.clone()]);
    assert_eq!(
        p2["pagination"],
        json!({"page": 2, "page_size": 2, "current_page_size": 2, "total_pages": 2, "total_results": 4})
    );
    assert_eq!(
        ids(&traces(&server, "page=3&page_size=2").await),
        Vec::<String>::new()
    );

    let asc = traces(&server, "sort=started_at&mode=summary").await;
    assert_eq!(ids(&asc), [a.clone(), b.clone(), c.clone(), d.clone()]);
    assert!(
        asc["data"][0].get("span_count").is_none(),
        "summary mode has no rollups"
    );
    assert_eq!(
        asc["data"][0]["ended_at"], "2024-01-15T09:30:03Z",
        "summary: the root's own end"
    );

    let preview = traces(&server, "mode=preview").await;
    assert_eq!(preview["data"][3]["input"].as_str().unwrap().len(), 300);
    assert_eq!(preview["data"][3]["output"], "done");
    assert_eq!(preview["data"][3]["span_count"], 3);

    for (query, want) in [
        ("filter[status]=error", vec![a.clone()]),
        ("filter[status]=cancelled", vec![d.clone()]),
        (
            &format!("filter[id][$in]={a},{b}") as &str,
            vec![b.clone(), a.clone()],
        ),
        (&format!("filter[id]={c}"), vec![c.clone()]),
        ("filter[experiment_id]=exp-1", vec![a.clone()]),
        ("filter[test_case_id]=tc-1", vec![a.clone()]),
        (
            "filter[started_at][$gte]=2024-01-15T10:00:00Z&filter[started_at][$lte]=2024-01-15T12:00:00Z",
            vec![c.clone(), b.clone()],
        ),
    ] {
        let page = traces(&server, query).await;
        assert_eq!(ids(&page), want, "{query}");
        assert_eq!(page["pagination"]["total_results"], want.len(), "{query}");
    }
    let json_filter: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "filter",
            r#"{"session_id": "s2", "started_at": {"$gte": "2024-01-15T09:00:00Z"}}"#,
        )
        .finish();
    let page = traces(&server, &json_filter).await;
    assert_eq!(ids(&page), vec![b.clone()]);
    assert_eq!(page["filter"]["session_id"], "s2", "the filter is echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_get_422_with_fastapi_details() {
    let server = TestServer::start().await;
    for (query, loc) in [
        ("page=0", json!(["query", "page"])),
        ("page=abc", json!(["query", "page"])),
        ("page_size=0", json!(["query", "page_size"])),
        ("page_size=1001", json!(["query", "page_size"])),
        ("sort=name", json!(["query", "sort"])),
        ("mode=everything", json!(["query", "mode"])),
        ("filter[colour]=red", json!(["query", "filter", "colour"])),
        (
            "filter[status]=broken",
            json!(["query", "filter", "status"]),
        ),
        (
            "filter[started_at][$gte]=yesterday",
            json!(["query", "filter", "started_at", "$gte"]),
        ),
        ("filter=not-json", json!(["query", "filter"])),
    ] {
        let (status, body) = get(
            &server,
            &format!("/apis/intake/v2/workspaces/default/traces?{query}"),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let detail = &body["detail"][0];
        assert_eq!(detail["loc"], loc, "{query}: {body}");
        assert!(
            detail["msg"].is_string() && detail["type"].is_string(),
            "{body}"
        );
    }
    let (status, _) = get(&server, "/apis/intake/v2/workspaces/Bad..Name/traces").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = get(
        &server,
        "/apis/intake/v2/workspaces/default/spans?filter[id]=x",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_lookup_and_span_listing() {
    let server = TestServer::start().await;
    ingest(&server).await;
    let (status, trace) = get(
        &server,
        &format!("/apis/intake/v2/workspaces/default/traces/{}", hex16(0xaa)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trace["id"], hex16(0xaa));
    assert_eq!(trace["span_count"], 3);
    let spans = trace["spans"].as_array().unwrap();
    let names: Vec<_> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["agent-run", "chat gpt-4o", "tool search"],
        "in start order"
    );
    assert_eq!(spans[1]["attributes"]["gen_ai.request.model"], "gpt-4o");
    assert_eq!(spans[1]["attributes"]["gen_ai.usage.input_tokens"], "100");
    assert_eq!(spans[1]["input_tokens"], 100);
    assert_eq!(spans[1]["parent_span_id"], "a1a1a1a1a1a1a1a1");
    assert_eq!(spans[0]["resource_attributes"]["service.name"], "test-svc");
    assert_eq!(spans[0]["events"], json!([]));
    assert_eq!(spans[2]["status_message"], "timeout");

    let (status, body) = get(
        &server,
        &format!("/apis/intake/v2/workspaces/default/traces/{}", hex16(0xee)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (status, _) = get(
        &server,
        &format!("/apis/intake/v2/workspaces/other/traces/{}", hex16(0xaa)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "workspaces are separate");

    let base = "/apis/intake/v2/workspaces/default/spans";
    let (_, page) = get(
        &server,
        &format!("{base}?filter[trace_id]={}&sort=started_at", hex16(0xaa)),
    )
    .await;
    assert_eq!(page["pagination"]["total_results"], 3);
    assert_eq!(page["data"][0]["name"], "agent-run");
    let (_, page) = get(&server, &format!("{base}?filter[name]=chat%20gpt-4o")).await;
    assert_eq!(page["pagination"]["total_results"], 2);
    let (_, page) = get(&server, &format!("{base}?filter[status]=error&page_size=1")).await;
    assert_eq!(page["pagination"]["total_results"], 2);
    assert_eq!(page["pagination"]["total_pages"], 2);
    assert_eq!(page["data"][0]["name"], "tool search", "newest first");
    let (_, page) = get(&server, &format!("{base}?filter[session_id]=s2")).await;
    assert_eq!(page["data"][0]["name"], "chat");
    let (_, page) = get(&server, &format!("{base}?filter[started_at][$gte]=2024-01-15T11:00:00Z&filter[started_at][$lte]=2024-01-15T11:59:59Z")).await;
    assert_eq!(page["pagination"]["total_results"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_json_csv_and_arrow() {
    let server = TestServer::start().await;
    ingest(&server).await;
    let resp = sql(
        &server,
        "SELECT id, span_count, error_count, status, total_tokens FROM traces ORDER BY started_at",
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["columns"][1],
        json!({"name": "span_count", "type": "Int64"})
    );
    assert_eq!(
        body["rows"],
        json!([
            {"id": hex16(0xaa), "span_count": 3, "error_count": 2, "status": "error", "total_tokens": 120},
            {"id": hex16(0xbb), "span_count": 2, "error_count": 0, "status": "success", "total_tokens": 60},
            {"id": hex16(0xcc), "span_count": 2, "error_count": 0, "status": "success", "total_tokens": null},
            {"id": hex16(0xdd), "span_count": 1, "error_count": 0, "status": "cancelled", "total_tokens": null},
        ])
    );

    let resp = sql(&server, "SELECT name, attributes['gen_ai.request.model'] AS model FROM spans WHERE input_tokens = 100", Some("text/csv")).await;
    assert_eq!(resp.headers()["content-type"], "text/csv");
    assert_eq!(
        resp.text().await.unwrap(),
        "name,model\nchat gpt-4o,gpt-4o\n"
    );

    let resp = sql(
        &server,
        "SELECT span_id, events FROM spans ORDER BY span_id",
        Some("application/vnd.apache.arrow.stream"),
    )
    .await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = resp.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 8);

    let resp = sql(&server, "SELECT SUM(cost_usd) AS cost FROM spans", None).await;
    let body: Value = resp.json().await.unwrap();
    assert!((body["rows"][0]["cost"].as_f64().unwrap() - 0.03).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_and_sees_one_workspace() {
    let server = TestServer::start().await;
    ingest(&server).await;
    for query in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "DROP VIEW traces",
        "INSERT INTO spans SELECT * FROM spans",
        "DELETE FROM spans",
        "COPY (SELECT 1) TO '/tmp/spanlake-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let resp = sql(&server, query, None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("not allowed"),
            "{query}: {body}"
        );
    }
    for query in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM spanlake.other.spans",
        "SELEC 1",
    ] {
        let resp = sql(&server, query, None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    for query in [
        "EXPLAIN SELECT * FROM spans",
        "SHOW TABLES",
        "DESCRIBE spans",
    ] {
        let resp = sql(&server, query, None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{query}");
    }
    let body: Value = sql(&server, "SHOW TABLES", None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table_schema"] != "information_schema")
        .map(|r| r["table_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{body}");
    assert!(names.contains(&"spans") && names.contains(&"traces"));
    let resp = reqwest::Client::new()
        .post(server.url("/apis/intake/v2/workspaces/default/sql"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_bounded_by_memory_and_time() {
    let server = TestServer::start_with(|c| {
        c.query.query_memory_bytes = 1024 * 1024;
        c.query.query_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let status = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(otlp::many(2000, 0x11).encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let resp = sql(
        &server,
        "SELECT array_agg(a.name || b.name) FROM spans a, spans b",
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("memory limit"));
    let resp = sql(
        &server,
        "SELECT COUNT(*) FROM spans a, spans b, spans c",
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    // Ingestion still works.
    ingest(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_identical_from_the_buffer_and_from_parquet() {
    let mut server = TestServer::start().await;
    ingest(&server).await;
    let from_buffer = answers(&server).await;
    server.restart().await;
    assert!(!crate::common::parquet_files(server.dir.path()).is_empty());
    let from_parquet = answers(&server).await;
    assert_eq!(from_buffer, from_parquet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_command_reads_the_tree_without_a_server() {
    let mut server = TestServer::start().await;
    ingest(&server).await;
    server.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spanlake"))
        .args(["sql", "--data-dir"])
        .arg(server.dir.path())
        .args([
            "--format",
            "csv",
            "SELECT id, span_count FROM traces ORDER BY id",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "id,span_count\n{},3\n{},2\n{},2\n{},1\n",
            hex16(0xaa),
            hex16(0xbb),
            hex16(0xcc),
            hex16(0xdd)
        )
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spanlake"))
        .args(["sql", "--data-dir"])
        .arg(server.dir.path())
        .arg("DROP VIEW traces")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_query_service_has_the_http_semantics() {
    use spanlake::proto::query::query_service_client::QueryServiceClient;
    use spanlake::proto::query::{GetTraceRequest, ListTracesRequest, SqlRequest};
    let server = TestServer::start().await;
    ingest(&server).await;
    let mut client = QueryServiceClient::connect(server.grpc_url())
        .await
        .unwrap();

    let page = client
        .list_traces(ListTracesRequest {
            workspace: "default".into(),
            page_size: Some(2),
            filter: Some(r#"{"status": "error"}"#.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let page: Value = serde_json::from_str(&page.json).unwrap();
    assert_eq!(
        page,
        traces(&server, "page_size=2&filter[status]=error").await
    );

    let err = client
        .list_traces(ListTracesRequest {
            workspace: "default".into(),
            page_size: Some(5000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let trace = client
        .get_trace(GetTraceRequest {
            workspace: "default".into(),
            trace_id: hex16(0xbb),
        })
        .await
        .unwrap()
        .into_inner();
    let trace: Value = serde_json::from_str(&trace.json).unwrap();
    assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
    let err = client
        .get_trace(GetTraceRequest {
            workspace: "default".into(),
            trace_id: hex16(0x01),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut stream = client
        .sql(SqlRequest {
            workspace: "default".into(),
            query: "SELECT span_id FROM spans".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows = 0;
    while let Some(message) = stream.message().await.unwrap() {
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(message.data), None)
                .unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    assert_eq!(rows, 8);
    let err = client
        .sql(SqlRequest {
            workspace: "default".into(),
            query: "DROP VIEW traces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_case_vendor_ids_and_upper_case_otlp_ids_are_found() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    // Two vendor traces whose ids differ only in case are two traces.
    let logs = r#"[{"trace_unique_id":"Trace-MixedCase-1","span_unique_id":"Span-A","start_time":"2025-01-01T00:00:00Z","latency":1},
                   {"trace_unique_id":"trace-mixedcase-1","span_unique_id":"Span-B","start_time":"2025-01-01T00:00:00Z","latency":1}]"#;
    let status = client
        .post(server.url("/v1/traces/ingest"))
        .header("content-type", "application/json")
        .body(logs)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let status = client
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(otlp::request(vec![otlp::span(0xab, 1, "hex")]).encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let base = "/apis/intake/v2/workspaces/default";
    let get = |path: String| client.get(server.url(&path)).send();
    for id in [
        "Trace-MixedCase-1",
        "trace-mixedcase-1",
        &"AB".repeat(16),
        &"ab".repeat(16),
    ] {
        let trace = get(format!("{base}/traces/{id}")).await.unwrap();
        assert_eq!(trace.status(), StatusCode::OK, "{id}");
        let spans: serde_json::Value = get(format!("{base}/spans?filter[trace_id]={id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(spans["pagination"]["total_results"], 1, "{id}: {spans}");
    }
    let lower: serde_json::Value = get(format!("{base}/traces/trace-mixedcase-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let span_ids: Vec<_> = lower["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(span_ids, ["Span-B"], "{lower}");
    assert_eq!(
        get(format!("{base}/traces/TRACE-MIXEDCASE-1"))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "a vendor id is matched by its own case"
    );
    let page = get(format!("{base}/traces?page=9223372036854775807"))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = page.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], json!(["query", "page"]), "{body}");
}
