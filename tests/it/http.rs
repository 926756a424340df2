//! OTLP/HTTP rules of the OTLP specification, one test per rule, against the real server.

use std::io::Write;

use prost::Message;
use reqwest::StatusCode;
use spanlake::proto::ExportTraceServiceResponse;
use spanlake::proto::google_rpc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestServer, otlp};

const PB: &str = "application/x-protobuf";
const JSON: &str = "application/json";

async fn post(
    server: &TestServer,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request sent")
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()["content-type"].to_str().unwrap().to_string()
}

async fn pb_status(resp: reqwest::Response) -> google_rpc::Status {
    assert_eq!(content_type(&resp), PB);
    google_rpc::Status::decode(resp.bytes().await.unwrap()).expect("google.rpc.Status body")
}

async fn json_body(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(content_type(&resp), JSON);
    serde_json::from_slice(&resp.bytes().await.unwrap()).expect("JSON body")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_is_answered_in_protobuf_and_stored() {
    let mut server = TestServer::start().await;
    let body = otlp::request(vec![otlp::span(1, 1, "a")]).encode_to_vec();
    let resp = post(&server, PB, &[], body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(content_type(&resp), PB);
    let answer = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        answer.partial_success, None,
        "full success leaves partial_success unset"
    );
    let rows = server.stop_and_read().await;
    assert_eq!(rows.span("0101010101010101")["name"].as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_type_is_parsed_leniently_and_echoed_without_parameters() {
    let server = TestServer::start().await;
    let resp = post(
        &server,
        "Application/JSON; charset=utf-8",
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, serde_json::json!({}));
    let resp = post(&server, "application/x-protobuf; proto=x", &[], Vec::new()).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "an empty protobuf request succeeds"
    );
    assert_eq!(content_type(&resp), PB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_media_types_get_415_and_other_methods_405() {
    let server = TestServer::start().await;
    let resp = post(&server, "text/plain", &[], b"hello".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("application/json") && text.contains("application/x-protobuf"),
        "{text}"
    );
    let resp = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no content type"
    );

    let client = reqwest::Client::new();
    let resp = client.get(server.url("/v1/traces")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = client
        .put(server.url("/v1/traces"))
        .header("content-type", JSON)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let status = json_body(resp).await;
    assert!(
        status["message"].as_str().unwrap().contains("POST"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bodies_get_400_with_a_status_in_the_request_encoding() {
    let server = TestServer::start().await;
    let resp = post(&server, PB, &[], vec![0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let status = pb_status(resp).await;
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(
        status.message.contains("invalid OTLP protobuf"),
        "{}",
        status.message
    );

    let resp = post(&server, JSON, &[], b"{\"resourceSpans\": [".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let status = json_body(resp).await;
    assert_eq!(status["code"], 3);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413_also_after_decompression() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 4096).await;
    let mut span = otlp::span(7, 7, "big");
    span.attributes = vec![otlp::kv("blob", otlp::s(&"x".repeat(100_000)))];
    let big = otlp::request(vec![span]).encode_to_vec();
    assert!(big.len() > 4096);
    let resp = post(&server, PB, &[], big.clone()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let status = pb_status(resp).await;
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);

    let compressed = gzip(&big);
    assert!(
        compressed.len() < 4096,
        "the compressed body is under the cap"
    );
    let resp = post(&server, PB, &[("content-encoding", "gzip")], compressed).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_zstd_and_deflate_bodies_are_accepted() {
    let mut server = TestServer::start().await;
    let gz = gzip(&otlp::request(vec![otlp::span(1, 1, "gz")]).encode_to_vec());
    let zs = zstd::encode_all(
        &otlp::request(vec![otlp::span(1, 2, "zstd")]).encode_to_vec()[..],
        3,
    )
    .unwrap();
    let mut de = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    de.write_all(&otlp::request(vec![otlp::span(1, 3, "deflate")]).encode_to_vec())
        .unwrap();
    for (encoding, body) in [
        ("gzip", gz),
        ("zstd", zs),
        ("deflate", de.finish().unwrap()),
    ] {
        let resp = post(&server, PB, &[("content-encoding", encoding)], body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{encoding}");
    }
    let resp = post(&server, PB, &[("content-encoding", "br")], b"x".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        pb_status(resp).await.message,
        "unsupported Content-Encoding: br"
    );
    let resp = post(
        &server,
        PB,
        &[("content-encoding", "gzip")],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let rows = server.stop_and_read().await;
    assert_eq!(
        rows.span("0202020202020202")["name"].as_deref(),
        Some("zstd")
    );
    assert_eq!(
        rows.span("0303030303030303")["name"].as_deref(),
        Some("deflate")
    );
    assert_eq!(rows.span("0101010101010101")["name"].as_deref(), Some("gz"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_spans_are_rejected_alone_with_partial_success() {
    let mut server = TestServer::start().await;
    let mut short_trace = otlp::span(1, 1, "short-trace");
    short_trace.trace_id = vec![1; 8];
    let zero_span = otlp::span(1, 0, "zero-span");
    let good = otlp::span(1, 3, "good");
    let body = otlp::request(vec![short_trace, zero_span, good]).encode_to_vec();
    let resp = post(&server, PB, &[], body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let partial = answer.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial
            .error_message
            .contains("span 0 (\"short-trace\"): trace_id must be 16 bytes, got 8"),
        "{}",
        partial.error_message
    );
    assert!(
        partial
            .error_message
            .contains("span 1 (\"zero-span\"): span_id is all zeros"),
        "{}",
        partial.error_message
    );

    let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
        {"traceId":"not-hex-at-all!!","spanId":"0404040404040404","name":"bad"},
        {"traceId":"04040404040404040404040404040404","spanId":"0505050505050505","name":"fine"}]}]}]}"#;
    let resp = post(&server, JSON, &[], json.as_bytes().to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer = json_body(resp).await;
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("traceId"),
        "{answer}"
    );

    let rows = server.stop_and_read().await;
    assert_eq!(
        rows.span_ids(),
        vec!["0303030303030303", "0505050505050505"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_header_routes_and_bad_names_touch_nothing() {
    let mut server = TestServer::start().await;
    let body = otlp::request(vec![otlp::span(1, 1, "a")]).encode_to_vec();
    let resp = post(&server, PB, &[("x-workspace", "../../etc")], body.clone()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        pb_status(resp)
            .await
            .message
            .contains("invalid workspace name")
    );
    let resp = post(&server, JSON, &[("x-workspace", "Team A")], b"{}".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let mut entries: Vec<_> = std::fs::read_dir(server.dir.path().join("spans"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec!["_delta_log", "_trace_index"],
        "a refused workspace creates nothing"
    );

    let resp = post(&server, PB, &[("x-workspace", "team-a")], body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rows = server.stop_and_read().await;
    assert!(
        rows.file_of("0101010101010101")
            .to_string_lossy()
            .contains("workspace=team-a/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_decoded_as_leniently_as_the_collector() {
    let mut server = TestServer::start().await;
    let body = r#"{"resource_spans":[{"resource":{"attributes":[
          {"key":"service.name","value":{"stringValue":"lenient"}}]},
        "scope_spans":[{"scope":{"name":"s","version":null},"spans":[{
          "trace_id":"ABCDEF0123456789ABCDEF0123456789","span_id":"0A0B0C0D0E0F1011",
          "parentSpanId":"","name":"enum-names","kind":"SPAN_KIND_CONSUMER",
          "startTimeUnixNano":1618884477123456789,"endTimeUnixNano":"1618884478123456799",
          "status":{"code":"STATUS_CODE_ERROR","message":"bad"},
          "attributes":[
            {"key":"big","value":{"intValue":"9007199254740993"}},
            {"key":"nan","value":{"doubleValue":"NaN"}},
            {"key":"inf","value":{"doubleValue":"Infinity"}},
            {"key":"gen_ai.usage.input_tokens","value":{"intValue":7}},
            {"key":"none","value":null},
            {"key":"list","value":{"arrayValue":{"values":[{"stringValue":"x"},{"intValue":"2"}]}}}
          ],
          "events":null, "links":null, "somethingNew":{"nested":[1,2,3]}}]}]}]}"#;
    let resp = post(&server, JSON, &[], body.as_bytes().to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, serde_json::json!({}));
    let rows = server.stop_and_read().await;
    let row = rows.span("0a0b0c0d0e0f1011");
    assert_eq!(
        row["trace_id"].as_deref(),
        Some("abcdef0123456789abcdef0123456789")
    );
    assert_eq!(row["kind"].as_deref(), Some("CONSUMER"));
    assert_eq!(row["status_code"].as_deref(), Some("ERROR"));
    assert_eq!(row["parent_span_id"], None);
    assert_eq!(row["service_name"].as_deref(), Some("lenient"));
    assert_eq!(
        row["start_time"].as_deref(),
        Some("2021-04-20T02:07:57.123456789Z")
    );
    assert_eq!(
        row["duration_ns"].as_deref(),
        Some("1000000010"),
        "19-digit numbers stay exact"
    );
    assert_eq!(row["input_tokens"].as_deref(), Some("7"));
    let attrs = row["attributes"].as_deref().unwrap();
    for part in [
        "big: 9007199254740993",
        "nan: \"NaN\"",
        "inf: \"Infinity\"",
        "list: [\"x\",2]",
    ] {
        assert!(attrs.contains(part), "{part} in {attrs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_specification_example_lands_in_its_2018_partition() {
    let mut server = TestServer::start().await;
    let body = include_str!("../fixtures/otlp-spec-example.json");
    let resp = post(&server, JSON, &[], body.as_bytes().to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rows = server.stop_and_read().await;
    let row = rows.span("eee19b7ec3c1b174");
    assert_eq!(row["name"].as_deref(), Some("I'm a server span"));
    assert_eq!(row["scope_name"].as_deref(), Some("my.library"));
    assert!(
        rows.file_of("eee19b7ec3c1b174")
            .to_string_lossy()
            .contains("workspace=default/date=2018-12-13/hour=14/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_read() {
    let mut server = TestServer::start().await;
    let body = otlp::request(vec![otlp::span(9, 9, "chunked")]).encode_to_vec();
    let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let mut request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let rows = server.stop_and_read().await;
    assert_eq!(
        rows.span("0909090909090909")["name"].as_deref(),
        Some("chunked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_a_retryable_503_with_retry_after() {
    // A buffer bound of one byte: the first request fills it, the next is refused.
    let mut server = TestServer::start_with(|c| c.buffer_max_bytes = 1).await;
    let body = otlp::request(vec![otlp::span(1, 1, "first")]).encode_to_vec();
    assert_eq!(post(&server, PB, &[], body).await.status(), StatusCode::OK);
    let body = otlp::request(vec![otlp::span(1, 2, "second")]).encode_to_vec();
    let resp = post(&server, PB, &[], body).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let status = pb_status(resp).await;
    assert_eq!(status.code, tonic::Code::Unavailable as i32);
    assert!(status.message.contains("retry"), "{}", status.message);
    let rows = server.stop_and_read().await;
    assert_eq!(
        rows.span_ids(),
        vec!["0101010101010101"],
        "the refused span is not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let body = otlp::many(5, 3).encode_to_vec();
    assert_eq!(
        post(&server, PB, &[("x-workspace", "m")], body)
            .await
            .status(),
        StatusCode::OK
    );
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "spanlake_spans_accepted_total{workspace=\"m\",protocol=\"http_protobuf\"} 5",
        "spanlake_spans_rejected_total{workspace=\"m\",protocol=\"http_protobuf\"} 0",
        "spanlake_request_duration_seconds_count{protocol=\"http_protobuf\"} 1",
        "spanlake_wal_fsyncs_total 1",
        "spanlake_buffer_rows 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
