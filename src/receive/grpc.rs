//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! Hand-written rather than tonic-generated so that the request reaches us as bytes:
//! tonic's prost codec would answer an undecodable message with INTERNAL (we owe
//! INVALID_ARGUMENT), and the bytes are what a future decoder straight into Arrow wants.
//! tonic's own over-size answer, OUT_OF_RANGE (which clients retry forever), is rewritten
//! to RESOURCE_EXHAUSTED here.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};

use super::admission::{Admission, Admitted, BudgetedBody};
use super::{API_KEY_HEADER, AUTHORIZATION_HEADER, WORKSPACE_HEADER, ingest_workspace};
use crate::auth::Auth;
use crate::decode::footprint::Shape;
use crate::error::Error;
use crate::ingest::{IngestOutcome, Ingester};
use crate::metrics::{Metrics, Protocol};
use crate::proto::ExportTraceServiceResponse;
use crate::workspace::Workspace;

/// The gRPC service name.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The Export method's path.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP/gRPC trace receiver, a tower service for tonic's router.
#[derive(Clone)]
pub struct OtlpGrpcReceiver {
    ingester: Arc<Ingester>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
    admission: Admission,
}

impl OtlpGrpcReceiver {
    /// A receiver feeding `ingester`, refusing messages over `max_message_bytes`
    /// (after decompression).
    pub fn new(
        ingester: Arc<Ingester>,
        auth: Arc<Auth>,
        metrics: Arc<Metrics>,
        max_message_bytes: usize,
        admission: Admission,
    ) -> Self {
        Self {
            ingester,
            auth,
            metrics,
            max_message_bytes,
            admission,
        }
    }

    async fn export(
        &self,
        request: tonic::Request<Bytes>,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let started = Instant::now();
        let mut workspace: Option<Workspace> = None;
        let result: Result<IngestOutcome, Error> = async {
            let meta = |name: &str| request.metadata().get(name).map(|v| v.as_bytes());
            let ws = ingest_workspace(
                &self.auth,
                meta(WORKSPACE_HEADER),
                meta(AUTHORIZATION_HEADER),
                meta(API_KEY_HEADER),
            )?;
            workspace = Some(ws.clone());
            // Admitted in `call`; the message's decoding is reserved before it is decoded.
            if let Some(admitted) = request.extensions().get::<Arc<Admitted>>() {
                admitted.reserve_decoding(request.get_ref(), Shape::Protobuf, 0)?;
            }
            let body = request.get_ref().clone();
            self.ingester.ingest_protobuf(&ws, body).await
        }
        .await;
        self.metrics.record_outcome(
            Protocol::Grpc,
            workspace.as_ref(),
            result.as_ref().map(IngestOutcome::counts),
            started,
        );
        match result {
            Ok(outcome) => Ok(ExportTraceServiceResponse {
                partial_success: outcome.partial_success(),
            }),
            Err(e) => Err(e.to_grpc_status()),
        }
    }
}

impl NamedService for OtlpGrpcReceiver {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<B> tower::Service<http::Request<B>> for OtlpGrpcReceiver
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        // Refused before a byte of the body is read; then every frame is counted as it
        // arrives, so tonic never buffers more than the budget allows.
        let admitted = match self.admission.admit() {
            Ok(admitted) => admitted,
            Err(e) => {
                let status = Error::Admission(e).to_grpc_status();
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(admitted.clone());
        let req = http::Request::from_parts(parts, BudgetedBody::new(body, admitted));
        let this = self.clone();
        Box::pin(async move {
            let max = this.max_message_bytes;
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            let mut response = grpc.unary(ExportMethod(this), req).await;
            remap_out_of_range(&mut response);
            Ok(response)
        })
    }
}

/// tonic answers an over-size message with OUT_OF_RANGE, which OTLP clients retry;
/// the OTLP answer for "too large" is RESOURCE_EXHAUSTED (without RetryInfo). Our own
/// handler never answers OUT_OF_RANGE, so every such status here is tonic's size check.
fn remap_out_of_range(response: &mut http::Response<Body>) {
    let headers = response.headers_mut();
    if headers.get(Status::GRPC_STATUS).map(|v| v.as_bytes())
        == Some((Code::OutOfRange as i32).to_string().as_bytes())
    {
        headers.insert(
            Status::GRPC_STATUS,
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

struct ExportMethod(OtlpGrpcReceiver);

impl UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<tonic::Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let receiver = self.0.clone();
        Box::pin(async move { receiver.export(request).await.map(tonic::Response::new) })
    }
}

/// Decodes a message as its raw bytes; encodes responses with prost.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response failed: {e}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
