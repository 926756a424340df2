//! API keys: the 401/403 matrix over every route and both gRPC services, and the refusal
//! to serve a non-loopback address without keys.

use prost::Message;
use reqwest::StatusCode;
use serde_json::json;
use spanlake::app::Server;
use spanlake::config::ServeConfig;

use crate::common::{TestServer, otlp};

const KEYS: &str = r#"
[[keys]]
key = "k-alpha"
workspaces = ["alpha"]
scopes = ["ingest", "read"]

[[keys]]
key = "k-alpha-read"
workspaces = ["alpha"]
scopes = ["read"]

[[keys]]
key = "k-beta"
workspaces = ["beta"]
scopes = ["ingest", "read"]
"#;

async fn server_with_keys() -> (TestServer, tempfile::TempDir) {
    let keys_dir = tempfile::tempdir().unwrap();
    let path = keys_dir.path().join("keys.toml");
    std::fs::write(&path, KEYS).unwrap();
    let server = TestServer::start_with(|c| c.api_keys = Some(path)).await;
    (server, keys_dir)
}

/// A request of one route; `key` goes in the header named `key_header`.
async fn call(server: &TestServer, route: &str, key_header: Option<(&str, &str)>) -> StatusCode {
    let client = reqwest::Client::new();
    let trace = otlp::request(vec![otlp::span(0xaa, 1, "auth")]).encode_to_vec();
    let logs =
        r#"[{"trace_unique_id":"t","span_unique_id":"s","start_time":"2025-01-01T00:00:00Z"}]"#;
    let mut req = match route {
        "otlp" => client
            .post(server.url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-workspace", "alpha")
            .body(trace),
        "nemo" => client
            .post(server.url("/apis/intake/v2/workspaces/alpha/ingest/otlp/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(trace),
        "avido" => client
            .post(server.url("/v0/otel/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-application-id", "alpha")
            .body(trace),
        "logs" => client
            .post(server.url("/v1/traces/ingest"))
            .header("content-type", "application/json")
            .header("x-workspace", "alpha")
            .body(logs),
        "traces" => client.get(server.url("/apis/intake/v2/workspaces/alpha/traces")),
        "trace" => client.get(server.url(&format!(
            "/apis/intake/v2/workspaces/alpha/traces/{}",
            "aa".repeat(16)
        ))),
        "spans" => client.get(server.url("/apis/intake/v2/workspaces/alpha/spans")),
        "sql" => client
            .post(server.url("/apis/intake/v2/workspaces/alpha/sql"))
            .body(json!({"query": "SELECT 1"}).to_string()),
        "metrics" => client.get(server.url("/metrics")),
        other => panic!("unknown route {other}"),
    };
    if let Some((name, value)) = key_header {
        req = req.header(name, value);
    }
    req.send().await.unwrap().status()
}

const INGEST: [&str; 4] = ["otlp", "nemo", "avido", "logs"];
const READ: [&str; 4] = ["traces", "trace", "spans", "sql"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_route_follows_the_matrix() {
    let (server, _keys) = server_with_keys().await;
    // Ingest first so that the trace lookup finds its trace.
    for route in INGEST {
        assert_eq!(
            call(&server, route, Some(("x-api-key", "k-alpha"))).await,
            StatusCode::OK,
            "{route}"
        );
    }
    for route in INGEST.iter().chain(READ.iter()) {
        assert_eq!(
            call(&server, route, None).await,
            StatusCode::UNAUTHORIZED,
            "{route}: no key"
        );
        assert_eq!(
            call(&server, route, Some(("authorization", "Bearer nope"))).await,
            StatusCode::UNAUTHORIZED,
            "{route}: unknown key"
        );
        assert_eq!(
            call(&server, route, Some(("x-api-key", "k-beta"))).await,
            StatusCode::FORBIDDEN,
            "{route}: other workspace"
        );
    }
    for route in READ {
        assert_eq!(
            call(&server, route, Some(("authorization", "Bearer k-alpha"))).await,
            StatusCode::OK,
            "{route}"
        );
        assert_eq!(
            call(&server, route, Some(("x-api-key", "k-alpha-read"))).await,
            StatusCode::OK,
            "{route}"
        );
    }
    for route in INGEST {
        assert_eq!(
            call(&server, route, Some(("x-api-key", "k-alpha-read"))).await,
            StatusCode::FORBIDDEN,
            "{route}: no ingest scope"
        );
    }
    assert_eq!(
        call(&server, "metrics", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&server, "metrics", Some(("x-api-key", "k-beta"))).await,
        StatusCode::OK
    );
    for open in ["/healthz", "/readyz"] {
        let status = reqwest::get(server.url(open)).await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{open} stays open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_one_workspace_needs_no_header() {
    let (mut server, _keys) = server_with_keys().await;
    let resp = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("authorization", "Bearer k-beta")
        .body(otlp::request(vec![otlp::span(1, 1, "to-beta")]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rows = server.stop_and_read().await;
    assert!(
        rows.file_of("0101010101010101")
            .to_string_lossy()
            .contains("workspace=beta/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_follow_the_matrix() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use spanlake::proto::query::ListTracesRequest;
    use spanlake::proto::query::query_service_client::QueryServiceClient;
    use tonic::Code;
    let (server, _keys) = server_with_keys().await;
    let export = |key: Option<&'static str>, ws: &'static str| {
        let url = server.grpc_url();
        async move {
            let mut client = TraceServiceClient::connect(url).await.unwrap();
            let mut req = tonic::Request::new(otlp::request(vec![otlp::span(2, 2, "g")]));
            req.metadata_mut()
                .insert("x-workspace", ws.parse().unwrap());
            if let Some(k) = key {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {k}").parse().unwrap());
            }
            client.export(req).await.map(|_| ()).map_err(|e| e.code())
        }
    };
    assert_eq!(export(None, "alpha").await, Err(Code::Unauthenticated));
    assert_eq!(
        export(Some("wrong"), "alpha").await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        export(Some("k-beta"), "alpha").await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        export(Some("k-alpha-read"), "alpha").await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(export(Some("k-alpha"), "alpha").await, Ok(()));

    let list = |key: Option<&'static str>| {
        let url = server.grpc_url();
        async move {
            let mut client = QueryServiceClient::connect(url).await.unwrap();
            let mut req = tonic::Request::new(ListTracesRequest {
                workspace: "alpha".into(),
                ..Default::default()
            });
            if let Some(k) = key {
                req.metadata_mut().insert("x-api-key", k.parse().unwrap());
            }
            client
                .list_traces(req)
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    assert_eq!(list(None).await, Err(Code::Unauthenticated));
    assert_eq!(list(Some("k-beta")).await, Err(Code::PermissionDenied));
    assert_eq!(list(Some("k-alpha-read")).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_addresses_need_keys_or_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let start = |allow: bool| {
        let mut config = ServeConfig::with_data_dir(dir.path());
        config.allow_unauthenticated = allow;
        async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            Server::start(config, grpc, http).await
        }
    };
    let err = start(false).await.err().expect("refused without keys");
    assert!(err.to_string().contains("--allow-unauthenticated"), "{err}");
    let server = start(true).await.expect("allowed with the flag");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_key_only_its_workspaces() {
    let (server, _keys) = server_with_keys().await;
    for (ws, key) in [("alpha", "k-alpha"), ("beta", "k-beta")] {
        let status = reqwest::Client::new()
            .post(server.url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-workspace", ws)
            .header("x-api-key", key)
            .body(otlp::request(vec![otlp::span(0xab, 1, "m")]).encode_to_vec())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    let metrics = |key: &'static str| {
        let url = server.url("/metrics");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let beta = metrics("k-beta").await;
    assert!(beta.contains("workspace=\"beta\""), "{beta}");
    assert!(
        !beta.contains("alpha"),
        "a beta key sees nothing of alpha:\n{beta}"
    );
    let alpha = metrics("k-alpha-read").await;
    assert!(alpha.contains("workspace=\"alpha\"") && !alpha.contains("beta"));
    assert!(
        alpha.contains("spanlake_wal_bytes"),
        "process-wide series stay"
    );
}
