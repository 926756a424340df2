//! Vendor ingest formats: each seed's example payload, verbatim, gets the vendor's
//! documented response and reads back through the query routes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer;

const NEMO: &str = include_str!("../fixtures/nemo-intake-example.json");
const AVIDO: &str = include_str!("../fixtures/avido-example.json");
const RESPAN: &str = include_str!("../fixtures/respan-example.json");
const KEYWORDSAI_PY: &str = include_str!("../fixtures/keywordsai-example.py.txt");

async fn post_json(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemo_intake_example_and_its_errors() {
    let server = TestServer::start().await;
    let path = "/apis/intake/v2/workspaces/nemo-ws/ingest/otlp/v1/traces";
    let (status, body) = post_json(&server, path, &[], NEMO).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"errors": []}));

    let trace = get(
        &server,
        "/apis/intake/v2/workspaces/nemo-ws/traces/4bf92f3577b34da6a3ce929d0e0e4736",
    )
    .await;
    let span = &trace["spans"][0];
    assert_eq!(span["name"], "GET /api/user");
    assert_eq!(span["kind"], "SERVER");
    assert_eq!(
        span["start_time"], "2021-04-20T02:07:57.123456800Z",
        "19-digit nanoseconds kept exactly"
    );
    assert_eq!(span["duration_ns"], 1_000_000_000);
    assert_eq!(span["service_name"], "user-service");
    assert_eq!(span["attributes"]["http.status_code"], "200");
    assert_eq!(span["resource_attributes"]["host.name"], "host123");

    let bad = r#"{"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spans": [
        {"spanId": "00f067aa0ba902b8", "name": "good", "startTimeUnixNano": 1618884477123456800},
        {"traceId": "xyz", "spanId": "00f067aa0ba902b9", "name": "bad trace"},
        {"spanId": "0102", "name": "short span"}]}"#;
    let (status, body) = post_json(&server, path, &[], bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"errors": [
            "span 1: Invalid traceId format: must be a 16-byte hex string",
            "span 2: Invalid spanId format: must be an 8-byte hex string",
        ]})
    );
    let spans = get(
        &server,
        "/apis/intake/v2/workspaces/nemo-ws/spans?filter[name]=good",
    )
    .await;
    assert_eq!(
        spans["pagination"]["total_results"], 1,
        "the good span of the request is stored"
    );

    let (status, body) = post_json(&server, path, &[], "{not json").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body"]));
    assert!(body["detail"][0]["msg"].is_string() && body["detail"][0]["type"].is_string());
    let (status, _) = post_json(
        &server,
        "/apis/intake/v2/workspaces/Bad!/ingest/otlp/v1/traces",
        &[],
        NEMO,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // OTLP protobuf on the same route.
    use prost::Message;
    let pb =
        crate::common::otlp::request(vec![crate::common::otlp::span(5, 5, "pb")]).encode_to_vec();
    let resp = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/x-protobuf")
        .body(pb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"errors": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avido_example_answers_deterministic_ids() {
    let server = TestServer::start().await;
    let headers = [
        ("x-application-id", "avido-app"),
        ("x-api-key", "ignored-without-keys"),
    ];
    let (status, first) = post_json(&server, "/v0/otel/traces", &headers, AVIDO).await;
    assert_eq!(status, StatusCode::OK);
    let entry = &first["data"][0];
    assert_eq!(entry["success"], true);
    let id = entry["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "5", "a version-5 UUID");
    let page = get(&server, "/apis/intake/v2/workspaces/avido-app/traces").await;
    let t = &page["data"][0];
    assert_eq!(t["name"], "llm.generate");
    assert_eq!(t["input_tokens"], 12);
    assert_eq!(t["output_tokens"], 18);
    assert_eq!(t["total_tokens"], 30);
    assert_eq!(t["duration_ms"], 500.0);
    let (_, again) = post_json(&server, "/v0/otel/traces", &headers, AVIDO).await;
    assert_eq!(again, first, "a retried request answers the same ids");

    let bad = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
        {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"0000000000000000","name":"zero"},
        {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b1","name":"ok"}]}]}]}"#;
    let (status, body) = post_json(&server, "/v0/otel/traces", &headers, bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["success"], false);
    assert!(
        body["data"][0]["error"]
            .as_str()
            .unwrap()
            .contains("span_id is all zeros")
    );
    assert_eq!(body["data"][1]["success"], true);

    let (status, _) = post_json(
        &server,
        "/v0/otel/traces",
        &[("x-application-id", "../etc")],
        AVIDO,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn check_logs_example(server: &TestServer, body: &str, workspace: &str) {
    let (status, answer) = post_json(
        server,
        "/v1/traces/ingest",
        &[("x-workspace", workspace)],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"status": "ok", "ingested_spans": 2, "created_traces": 1, "trace_ids": ["a-trace-id"], "errors": []})
    );
    let page = get(
        server,
        &format!("/apis/intake/v2/workspaces/{workspace}/traces"),
    )
    .await;
    let t = &page["data"][0];
    assert_eq!(t["id"], "a-trace-id", "vendor ids are kept as given");
    assert_eq!(t["root_span_id"], "root-span-id");
    assert_eq!(t["name"], "pirate_joke_plus_audience_reactions.workflow");
    assert_eq!(t["input_tokens"], 15);
    assert_eq!(t["output_tokens"], 10);
    assert_eq!(t["total_tokens"], 25);
    assert_eq!(t["cost_usd"], 2.25e-05);
    assert_eq!(t["started_at"], "2025-09-08T07:46:14.007279Z");
    assert_eq!(t["duration_ms"], 5034.556);
    let trace = get(
        server,
        &format!("/apis/intake/v2/workspaces/{workspace}/traces/a-trace-id"),
    )
    .await;
    let child = &trace["spans"][1];
    assert_eq!(child["span_id"], "child-span-id");
    assert_eq!(child["parent_span_id"], "root-span-id");
    assert_eq!(child["model"], "gpt-3.5-turbo");
    assert_eq!(child["provider"], "openai");
    assert_eq!(child["duration_ns"], 610_535_000);
    assert!(
        child["input"]
            .as_str()
            .unwrap()
            .contains("Tell me a joke about opentelemetry")
    );
    assert_eq!(child["attributes"]["span_path"], "joke_creation");
    assert_eq!(
        child["attributes"]["span_workflow_name"],
        "pirate_joke_generator"
    );
    assert!(
        child["attributes"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with("_params"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respan_and_keywordsai_examples_build_one_trace() {
    let server = TestServer::start().await;
    check_logs_example(&server, RESPAN, "respan").await;
    // The Keywords AI example is Python; `requests` sends `None` as JSON `null`.
    check_logs_example(
        &server,
        &KEYWORDSAI_PY.replace("None", "null"),
        "keywordsai",
    )
    .await;

    let (status, answer) = post_json(
        &server,
        "/v1/traces/ingest",
        &[],
        r#"[{"trace_unique_id":"t1","span_unique_id":"ok","start_time":"2025-01-01T00:00:00Z","latency":1},
            {"span_unique_id":"no-trace","start_time":"2025-01-01T00:00:00Z"},
            {"trace_unique_id":"t1","span_unique_id":"bad-time","start_time":"soon"}]"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["ingested_spans"], 1);
    assert_eq!(answer["errors"].as_array().unwrap().len(), 2);
    assert_eq!(answer["errors"][0], "span 1: trace_unique_id is required");
    let (status, body) = post_json(
        &server,
        "/v1/traces/ingest",
        &[],
        r#"{"trace_unique_id":"x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("array"));
}
