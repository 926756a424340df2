//! OTLP/HTTP and the operational routes, and what every HTTP ingest handler shares
//! (admission, body reading, the request's encoding).
//!
//! `POST /v1/traces` takes `application/x-protobuf` and `application/json` (media type
//! parsed leniently), answers in the request's encoding with exactly its media type, and
//! every error body is a `google.rpc.Status` in that encoding (see `crate::error`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use prost::Message;

use super::admission::{Admission, Admitted, BudgetedBody};
use super::body::read_body;
use super::{API_KEY_HEADER, AUTHORIZATION_HEADER, WORKSPACE_HEADER, ingest_workspace};
use crate::auth::{Auth, credential};
use crate::decode::footprint::Shape;
use crate::decode::{Encoding, decode_json};
use crate::error::Error;
use crate::ingest::{IngestOutcome, Ingester};
use crate::metrics::{Metrics, Protocol};
use crate::proto::ExportTraceServiceResponse;
use crate::workspace::Workspace;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The ingest path.
    pub ingester: Arc<Ingester>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The body cap, after decompression.
    pub max_body_bytes: usize,
    /// API keys.
    pub auth: Arc<Auth>,
    /// Admission of ingest requests on the HTTP front end.
    pub admission: Admission,
}

/// An ingest request taken on: its workspace (named by the header `workspace_header`,
/// checked against its API key), its body read under the cap and decompressed, and its
/// admission, to hold until it is answered.
pub(super) struct IngestRequest {
    pub workspace: Workspace,
    pub body: bytes::Bytes,
    pub _admitted: Arc<Admitted>,
}

/// Reads an ingest request: admitted first (or refused before its body is read), its
/// bytes counted as they arrive and, decompressed, reserved for decoding.
pub(super) async fn ingest_request(
    state: &HttpState,
    headers: &HeaderMap,
    workspace_header: &str,
    body: Body,
    shape: Shape,
) -> Result<IngestRequest, Error> {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let workspace = ingest_workspace(
        &state.auth,
        header(workspace_header),
        header(AUTHORIZATION_HEADER),
        header(API_KEY_HEADER),
    )?;
    let (body, admitted) = read_admitted(state, headers, body, shape).await?;
    Ok(IngestRequest {
        workspace,
        body,
        _admitted: admitted,
    })
}

/// Admits a request (or refuses it before its body is read), reads its body counting the
/// bytes as they arrive, decompresses it and reserves what decoding it will hold.
pub(super) async fn read_admitted(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    shape: Shape,
) -> Result<(bytes::Bytes, Arc<Admitted>), Error> {
    let admitted = state.admission.admit()?;
    let body = Body::new(BudgetedBody::new(body, admitted.clone()));
    let mut reserve = |n| admitted.reserve(n).map_err(Error::Admission);
    let (body, held) = read_body(headers, body, state.max_body_bytes, &mut reserve).await?;
    admitted.reserve_decoding(&body, shape, held)?;
    Ok((body, admitted))
}

pub(super) fn request_encoding(headers: &HeaderMap) -> Option<Encoding> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_content_type)
}

pub(super) async fn method_not_allowed(headers: HeaderMap) -> Response {
    let mut response = Error::MethodNotAllowed.to_http_response(request_encoding(&headers));
    response
        .headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

pub(super) async fn otlp_traces(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let Some(encoding) = request_encoding(&headers) else {
        let got = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        return Error::UnsupportedMediaType(got).to_http_response(None);
    };
    let protocol = match encoding {
        Encoding::Protobuf => Protocol::HttpProtobuf,
        Encoding::Json => Protocol::HttpJson,
    };
    let mut workspace: Option<Workspace> = None;
    let result: Result<IngestOutcome, Error> = async {
        let request =
            ingest_request(&state, &headers, WORKSPACE_HEADER, body, encoding.shape()).await?;
        let ws = request.workspace.clone();
        workspace = Some(ws.clone());
        match encoding {
            Encoding::Protobuf => state.ingester.ingest_protobuf(&ws, request.body).await,
            Encoding::Json => {
                let decoded = decode_json(&request.body)?;
                state.ingester.ingest(&ws, decoded).await
            }
        }
    }
    .await;
    state.metrics.record_outcome(
        protocol,
        workspace.as_ref(),
        result.as_ref().map(IngestOutcome::counts),
        started,
    );
    match result {
        Ok(outcome) => export_response(encoding, outcome),
        Err(e) => e.to_http_response(Some(encoding)),
    }
}

/// The 200 answer: `ExportTraceServiceResponse` in the request's encoding.
fn export_response(encoding: Encoding, outcome: IngestOutcome) -> Response {
    let response = ExportTraceServiceResponse {
        partial_success: outcome.partial_success(),
    };
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => {
            // proto3 JSON: int64 as a decimal string; an unset message is omitted.
            let json = match response.partial_success {
                None => serde_json::json!({}),
                Some(p) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedSpans": p.rejected_spans.to_string(),
                        "errorMessage": p.error_message,
                    }
                }),
            };
            json.to_string().into_bytes()
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ingester.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: replaying the write-ahead log\n",
        )
            .into_response()
    }
}

pub(super) async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    // Series naming a workspace are shown only to keys of that workspace.
    let visible = match state.auth.visible_workspaces(credential(
        header(AUTHORIZATION_HEADER),
        header(API_KEY_HEADER),
    )) {
        Ok(visible) => visible,
        Err(e) => return Error::Auth(e).to_http_response(None),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(visible.as_deref()),
    )
        .into_response()
}
