//! OTLP/gRPC rules, with tonic clients against the real server.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use spanlake::proto::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request};

use crate::common::{TestServer, otlp};

async fn client(server: &TestServer) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX)
}

fn with_workspace(req: ExportTraceServiceRequest, ws: &str) -> Request<ExportTraceServiceRequest> {
    let mut r = Request::new(req);
    r.metadata_mut().insert("x-workspace", ws.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_requests_succeed_and_spans_go_to_their_workspace() {
    let mut server = TestServer::start().await;
    let mut c = client(&server).await;
    let answer = c
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success, None);
    c.export(with_workspace(
        otlp::request(vec![otlp::span(2, 1, "w")]),
        "grpc-team",
    ))
    .await
    .unwrap();
    let rows = server.stop_and_read().await;
    assert!(
        rows.file_of("0101010101010101")
            .to_string_lossy()
            .contains("workspace=grpc-team/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_requests_are_accepted() {
    let mut server = TestServer::start().await;
    for (i, encoding) in [CompressionEncoding::Gzip, CompressionEncoding::Zstd]
        .into_iter()
        .enumerate()
    {
        let mut c = client(&server)
            .await
            .send_compressed(encoding)
            .accept_compressed(encoding);
        c.export(otlp::request(vec![otlp::span(
            3,
            i as u8 + 1,
            "compressed",
        )]))
        .await
        .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
    }
    let rows = server.stop_and_read().await;
    assert_eq!(
        rows.span_ids(),
        vec!["0101010101010101", "0202020202020202"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_spans_give_ok_with_partial_success() {
    let mut server = TestServer::start().await;
    let mut bad = otlp::span(4, 1, "bad");
    bad.span_id = vec![1, 2, 3];
    let good = otlp::span(4, 2, "good");
    let answer = client(&server)
        .await
        .export(otlp::request(vec![bad, good]))
        .await
        .unwrap()
        .into_inner();
    let partial = answer.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("span_id must be 8 bytes, got 3"),
        "{}",
        partial.error_message
    );
    let rows = server.stop_and_read().await;
    assert_eq!(rows.span_ids(), vec!["0202020202020202"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_workspace_is_invalid_argument() {
    let server = TestServer::start().await;
    let err = client(&server)
        .await
        .export(with_workspace(
            otlp::request(vec![otlp::span(1, 1, "x")]),
            "../../etc",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("invalid workspace name"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_is_resource_exhausted_not_out_of_range() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 16 * 1024).await;
    let err = client(&server)
        .await
        .export(otlp::many(500, 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_invalid_argument() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<Bytes, ExportTraceServiceResponse, _>(
            Request::new(Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])),
            http::uri::PathAndQuery::from_static(spanlake::receive::grpc::EXPORT_PATH),
            RawRequestCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("invalid OTLP protobuf"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_unavailable() {
    let server = TestServer::start_with(|c| c.buffer_max_bytes = 1).await;
    let mut c = client(&server).await;
    c.export(otlp::request(vec![otlp::span(1, 1, "a")]))
        .await
        .unwrap();
    let err = c
        .export(otlp::request(vec![otlp::span(1, 2, "b")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

/// Sends raw bytes as the request message; decodes the response with prost.
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}
