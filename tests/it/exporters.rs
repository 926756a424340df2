//! Real OpenTelemetry exporters (the `opentelemetry-otlp` crate) over gRPC, HTTP protobuf
//! and HTTP JSON; every column of the stored span is read back from Parquet.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use crate::common::{TestServer, sql_rows};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const START_NS: u64 = 1_718_000_000_123_456_789;

fn known_span(span_id: &str) -> SpanData {
    let trace_id = TraceId::from_hex(TRACE).unwrap();
    let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let linked = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let mut events = SpanEvents::default();
    events.events.push(Event::new(
        "retrying",
        at(START_NS + 500_000_000),
        vec![KeyValue::new("attempt", 2i64)],
        0,
    ));
    let mut links = SpanLinks::default();
    links.links.push(Link::new(
        linked,
        vec![KeyValue::new("link.kind", "follows")],
        0,
    ));
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            SpanId::from_hex(span_id).unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: "chat gpt-4o".into(),
        start_time: at(START_NS),
        end_time: at(START_NS + 1_500_000_000),
        attributes: vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.usage.input_tokens", 120i64),
            KeyValue::new("gen_ai.usage.output_tokens", 30i64),
            KeyValue::new("gen_ai.usage.cache_read.input_tokens", 20i64),
            KeyValue::new("gen_ai.usage.cost", 0.0125f64),
            KeyValue::new("llm.cost.prompt", 0.01f64),
            KeyValue::new("llm.cost.completion", 0.0025f64),
            KeyValue::new("gen_ai.conversation.id", "sess-1"),
            KeyValue::new("user.id", "user-7"),
            KeyValue::new("input.value", "What is OTLP?"),
            KeyValue::new("output.value", "A protocol."),
            KeyValue::new("nemo.evaluation.name", "exp-1"),
            KeyValue::new("nemo.test_case.id", "tc-3"),
            KeyValue::new("http.status_code", 429i64),
            KeyValue::new("retry", true),
        ],
        dropped_attributes_count: 0,
        events,
        links,
        status: Status::error("rate limited"),
        instrumentation_scope: InstrumentationScope::builder("my-llm-lib")
            .with_version("1.2.3")
            .build(),
    }
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "checkout"),
            KeyValue::new("deployment.environment", "test"),
        ])
        .build()
}

fn expected_columns(span_id: &str) -> Vec<(&'static str, Option<String>)> {
    let s = |v: &str| Some(v.to_string());
    vec![
        ("trace_id", s(TRACE)),
        ("span_id", s(span_id)),
        ("parent_span_id", s("00f067aa0ba902b7")),
        ("name", s("chat gpt-4o")),
        ("kind", s("CLIENT")),
        ("start_time", s("2024-06-10T06:13:20.123456789Z")),
        ("end_time", s("2024-06-10T06:13:21.623456789Z")),
        ("duration_ns", s("1500000000")),
        ("status_code", s("ERROR")),
        ("status_message", s("rate limited")),
        ("status", s("error")),
        ("service_name", s("checkout")),
        ("scope_name", s("my-llm-lib")),
        ("scope_version", s("1.2.3")),
        ("span_kind_llm", s("chat")),
        ("session_id", s("sess-1")),
        ("user_id", s("user-7")),
        ("model", s("gpt-4o-2024-08-06")),
        ("provider", s("openai")),
        ("input_tokens", s("120")),
        ("output_tokens", s("30")),
        ("cached_tokens", s("20")),
        ("total_tokens", s("150")),
        ("cost_usd", s("0.0125")),
        ("cost_input_usd", s("0.01")),
        ("cost_output_usd", s("0.0025")),
        ("input", s("What is OTLP?")),
        ("output", s("A protocol.")),
        ("experiment_id", s("exp-1")),
        ("test_case_id", s("tc-3")),
    ]
}

fn check_row(rows: &crate::common::Rows, span_id: &str, workspace: &str) {
    let row = rows.span(span_id);
    for (column, want) in expected_columns(span_id) {
        assert_eq!(row[column], want, "column {column} of span {span_id}");
    }
    // In the files a value held by its lifted column is stored there once: its key stays
    // in `attributes` with a null value. An attribute that lost its column to a
    // higher-priority key keeps its value.
    let attributes = row["attributes"].as_deref().unwrap();
    for entry in [
        "gen_ai.usage.input_tokens: ,",
        "gen_ai.usage.cost: ,",
        "input.value: ,",
        "gen_ai.response.model: ,",
        "gen_ai.request.model: gpt-4o,",
        "http.status_code: 429",
        "retry: true",
    ] {
        assert!(attributes.contains(entry), "{entry} in {attributes}");
    }
    let resource = row["resource_attributes"].as_deref().unwrap();
    assert!(resource.contains("service.name: checkout"), "{resource}");
    assert!(
        resource.contains("deployment.environment: test"),
        "{resource}"
    );
    // Outside readers get the event time as a microsecond timestamp and, exactly, in ns.
    let events = row["events"].as_deref().unwrap();
    assert!(
        events.contains("2024-06-10T06:13:20.623456Z")
            && events.contains(&format!("time_unix_nano: {}", START_NS + 500_000_000)),
        "{events}"
    );
    assert!(
        events.contains("retrying") && events.contains("attempt: 2"),
        "{events}"
    );
    let links = row["links"].as_deref().unwrap();
    for part in [
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "link.kind: follows",
    ] {
        assert!(links.contains(part), "{part} in {links}");
    }
    let file = rows.file_of(span_id).to_string_lossy().into_owned();
    assert!(
        file.contains(&format!("workspace={workspace}/date=2024-06-10/hour=06/")),
        "{file}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_http_protobuf_and_http_json_exporters_store_every_column() {
    let mut server = TestServer::start().await;

    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-workspace", "via-grpc".parse().unwrap());
    let mut grpc = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(server.grpc_url())
        .with_metadata(metadata)
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .unwrap();
    grpc.set_resource(&resource());
    grpc.export(vec![known_span("1111111111111111")])
        .await
        .unwrap();

    for (protocol, workspace, span_id) in [
        (Protocol::HttpBinary, "via-http-pb", "2222222222222222"),
        (Protocol::HttpJson, "via-http-json", "3333333333333333"),
    ] {
        let mut exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(server.url("/v1/traces"))
            .with_headers(HashMap::from([(
                "x-workspace".to_string(),
                workspace.to_string(),
            )]))
            .build()
            .unwrap();
        exporter.set_resource(&resource());
        exporter.export(vec![known_span(span_id)]).await.unwrap();
    }

    // SQL's `spans` gives every attribute back as sent.
    for (workspace, span_id) in [
        ("via-grpc", "1111111111111111"),
        ("via-http-pb", "2222222222222222"),
        ("via-http-json", "3333333333333333"),
    ] {
        let query = format!("SELECT attributes FROM spans WHERE span_id = '{span_id}'");
        let rows = sql_rows(server.http, workspace, &query).await;
        let attributes = &rows[0]["attributes"];
        for (key, want) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.request.model", "gpt-4o"),
            ("gen_ai.response.model", "gpt-4o-2024-08-06"),
            ("gen_ai.usage.input_tokens", "120"),
            ("gen_ai.usage.cache_read.input_tokens", "20"),
            ("gen_ai.usage.cost", "0.0125"),
            ("llm.cost.completion", "0.0025"),
            ("input.value", "What is OTLP?"),
            ("nemo.test_case.id", "tc-3"),
            ("http.status_code", "429"),
            ("retry", "true"),
        ] {
            assert_eq!(attributes[key], want, "{key} of {span_id}: {attributes}");
        }
    }

    let rows = server.stop_and_read().await;
    assert_eq!(rows.len(), 3);
    check_row(&rows, "1111111111111111", "via-grpc");
    check_row(&rows, "2222222222222222", "via-http-pb");
    check_row(&rows, "3333333333333333", "via-http-json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_exporters_zstd_grpc_and_gzip_http() {
    let mut server = TestServer::start().await;
    let mut grpc = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(server.grpc_url())
        .with_compression(opentelemetry_otlp::Compression::Zstd)
        .build()
        .unwrap();
    grpc.set_resource(&resource());
    grpc.export(vec![known_span("4444444444444444")])
        .await
        .unwrap();
    let mut http = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(server.url("/v1/traces"))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .unwrap();
    http.set_resource(&resource());
    http.export(vec![known_span("5555555555555555")])
        .await
        .unwrap();
    let rows = server.stop_and_read().await;
    check_row(&rows, "4444444444444444", "default");
    check_row(&rows, "5555555555555555", "default");
}
