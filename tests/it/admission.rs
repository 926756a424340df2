//! Admission under floods: requests over a front end's concurrency bound, or whose bytes
//! would pass the in-flight budget, are refused at once with 503 / UNAVAILABLE and
//! `Retry-After`, before their work is done; every request answered 200 is stored.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{TestServer, metric, otlp, span_counts};

/// An OTLP/HTTP protobuf upload whose body is sent in two parts, so that it stays in
/// flight (admitted, its first part counted) until [`SlowUpload::finish`].
struct SlowUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowUpload {
    async fn start(http: SocketAddr, body: Vec<u8>, sent_first: usize) -> Self {
        let mut stream = TcpStream::connect(http).await.unwrap();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {http}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..sent_first]).await.unwrap();
        stream.flush().await.unwrap();
        Self {
            stream,
            rest: body[sent_first..].to_vec(),
        }
    }

    /// Sends the rest; the status line of the answer.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = self.stream.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

fn spans(trace: u8, n: usize) -> Vec<u8> {
    otlp::many(n, trace).encode_to_vec()
}

async fn post(http: SocketAddr, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn stored(server: &TestServer) -> u64 {
    span_counts(server.http, "default").await.0
}

/// Waits until the server holds `bytes` or more of in-flight requests.
async fn until_in_flight(server: &TestServer, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(server.http, "spanlake_inflight_bytes")
        .await
        .unwrap_or(0)
        < bytes
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow upload never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_bound_are_refused_at_once() {
    let server = TestServer::start_with(|c| c.max_concurrent_requests = 2).await;
    let first = SlowUpload::start(server.http, spans(0x61, 100), 100).await;
    let second = SlowUpload::start(server.http, spans(0x62, 100), 100).await;
    until_in_flight(&server, 200).await;
    let refused = post(server.http, spans(0x63, 10)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let text = refused.text().await.unwrap();
    assert!(text.contains("--max-concurrent-requests"), "{text}");
    // gRPC is a front end of its own: not affected by HTTP's bound.
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    grpc.export(otlp::many(10, 0x64)).await.unwrap();
    assert!(first.finish().await.contains("200"));
    assert!(second.finish().await.contains("200"));
    assert!(
        post(server.http, spans(0x65, 10))
            .await
            .status()
            .is_success()
    );
    assert_eq!(stored(&server).await, 100 + 100 + 10 + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_over_the_in_flight_budget_are_refused_before_decoding() {
    let server = TestServer::start_with(|c| c.max_inflight_bytes = 1 << 20).await;
    // One upload holds most of the budget: 700 KB of its body are in.
    let big = spans(0x71, 4000);
    assert!(big.len() > 800_000, "{}", big.len());
    let holder = SlowUpload::start(server.http, big, 700_000).await;
    until_in_flight(&server, 700_000).await;
    // Another 600 KB cannot fit, over HTTP or gRPC.
    let other = spans(0x72, 3000);
    assert!(other.len() > 400_000, "{}", other.len());
    let refused = post(server.http, other).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let text = refused.text().await.unwrap();
    assert!(text.contains("--max-inflight-bytes"), "{text}");
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let status = grpc.export(otlp::many(3000, 0x73)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("--max-inflight-bytes"),
        "{status:?}"
    );
    // Small requests still fit; the holder completes; everything acked is stored.
    assert!(
        post(server.http, spans(0x74, 5))
            .await
            .status()
            .is_success()
    );
    assert!(holder.finish().await.contains("200"));
    assert_eq!(stored(&server).await, 4000 + 5);
    // All given back.
    assert_eq!(
        metric(server.http, "spanlake_inflight_bytes").await,
        Some(0)
    );
}
