//! The vendor ingest routes, answering in each vendor's documented shape:
//! NeMo intake (`{"errors": [...]}`), Avido (`{"data": [{"success", "id", "error"}]}`)
//! and Respan / Keywords AI (`{"status", "ingested_spans", "created_traces", "trace_ids",
//! "errors"}`). Decoding lives in `decode::vendor`; storing goes through the same
//! [`Ingester`](crate::ingest::Ingester) as OTLP.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::http::{HttpState, ingest_request, read_admitted, request_encoding};
use super::{API_KEY_HEADER, AUTHORIZATION_HEADER, WORKSPACE_HEADER};
use crate::auth::{Scope, credential};
use crate::decode::footprint::Shape;
use crate::decode::vendor::{decode_nemo_json, decode_span_logs};
use crate::decode::{DecodedRequest, Encoding, RejectedField, SpanRejection, decode};
use crate::error::Error;
use crate::metrics::Protocol;
use crate::normalize::SpanBatchBuilder;
use crate::workspace::Workspace;

/// The header naming Avido's application, which is our workspace.
pub const APPLICATION_HEADER: &str = "x-application-id";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

/// NeMo's wording for a refused span.
fn nemo_message(r: &SpanRejection) -> String {
    let what = match r.field {
        RejectedField::TraceId => {
            "Invalid traceId format: must be a 16-byte hex string".to_string()
        }
        RejectedField::SpanId => "Invalid spanId format: must be an 8-byte hex string".to_string(),
        RejectedField::ParentSpanId => {
            "Invalid parentSpanId format: must be an 8-byte hex string".to_string()
        }
        RejectedField::Other => r.reason.clone(),
    };
    format!("span {}: {what}", r.index)
}

/// `POST /apis/intake/v2/workspaces/{workspace}/ingest/otlp/v1/traces`
pub async fn nemo_ingest(
    State(state): State<HttpState>,
    Path(workspace): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut ws = None;
    let result = async {
        let cred = credential(
            header(&headers, AUTHORIZATION_HEADER),
            header(&headers, API_KEY_HEADER),
        );
        state.auth.authenticate(cred)?;
        let named = Workspace::new(&workspace)?;
        let w = state.auth.authorize(cred, Some(named), Scope::Ingest)?;
        ws = Some(w.clone());
        let protobuf = request_encoding(&headers) == Some(Encoding::Protobuf);
        let shape = if protobuf {
            Shape::Protobuf
        } else {
            Shape::NemoJson
        };
        let (bytes, _admitted) = read_admitted(&state, &headers, body, shape).await?;
        if protobuf {
            state.ingester.ingest_protobuf(&w, bytes).await
        } else {
            let decoded = decode_nemo_json(&bytes)?;
            state.ingester.ingest(&w, decoded).await
        }
    }
    .await;
    match result {
        Ok(outcome) => {
            state.metrics.record_outcome(
                Protocol::Nemo,
                ws.as_ref(),
                Ok(outcome.counts()),
                started,
            );
            let errors: Vec<String> = outcome.rejected.iter().map(nemo_message).collect();
            (StatusCode::OK, axum::Json(json!({ "errors": errors }))).into_response()
        }
        Err(e) => {
            state
                .metrics
                .record_outcome(Protocol::Nemo, ws.as_ref(), Err(&e), started);
            e.to_fastapi_response()
        }
    }
}

/// The Avido id of a span: a UUID v5 of its trace and span ids, so that a retried request
/// answers the same ids.
pub fn span_uuid(trace_id: &[u8], span_id: &[u8]) -> uuid::Uuid {
    let mut name = Vec::with_capacity(trace_id.len() + span_id.len() + 1);
    name.extend_from_slice(trace_id);
    name.push(b'/');
    name.extend_from_slice(span_id);
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name)
}

/// `POST /v0/otel/traces` (Avido)
pub async fn avido_ingest(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let encoding = request_encoding(&headers).unwrap_or(Encoding::Json);
    let mut ws = None;
    let result = async {
        let request =
            ingest_request(&state, &headers, APPLICATION_HEADER, body, encoding.shape()).await?;
        let (w, bytes) = (request.workspace.clone(), &request.body);
        ws = Some(w.clone());
        let decoded: DecodedRequest = decode(encoding, bytes)?;
        let ids: Vec<uuid::Uuid> = decoded
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| span_uuid(&s.trace_id, &s.span_id))
            .collect();
        let outcome = state.ingester.ingest(&w, decoded).await?;
        Ok::<_, Error>((ids, outcome))
    }
    .await;
    match result {
        Ok((ids, outcome)) => {
            state.metrics.record_outcome(
                Protocol::Avido,
                ws.as_ref(),
                Ok(outcome.counts()),
                started,
            );
            let mut rejected = outcome.rejected.iter().peekable();
            let data: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| match rejected.next_if(|r| r.index == i) {
                    Some(r) => json!({"success": false, "id": id.to_string(), "error": r.reason}),
                    None => json!({"success": true, "id": id.to_string()}),
                })
                .collect();
            (StatusCode::OK, axum::Json(json!({ "data": data }))).into_response()
        }
        Err(e) => {
            state
                .metrics
                .record_outcome(Protocol::Avido, ws.as_ref(), Err(&e), started);
            e.to_http_response(Some(Encoding::Json))
        }
    }
}

/// `POST /v1/traces/ingest` (Respan / Keywords AI)
pub async fn span_logs_ingest(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut ws = None;
    let result = async {
        let request =
            ingest_request(&state, &headers, WORKSPACE_HEADER, body, Shape::SpanLogs).await?;
        let (w, bytes) = (request.workspace.clone(), &request.body);
        ws = Some(w.clone());
        let items = decode_span_logs(bytes)?;
        let mut builder = SpanBatchBuilder::with_capacity(items.len());
        let mut errors = Vec::new();
        let mut trace_ids: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Ok(log) => match builder.append_log(log) {
                    Ok(()) => {
                        if seen.insert(log.trace_id.as_str()) {
                            trace_ids.push(log.trace_id.clone());
                        }
                    }
                    Err(reason) => errors.push(format!("span {i}: {reason}")),
                },
                Err(e) => errors.push(e.clone()),
            }
        }
        let chunk = builder
            .finish()
            .map_err(crate::normalize::NormalizeError::from)?;
        let ingested = chunk.num_rows();
        state.ingester.ingest_chunk(&w, chunk).await?;
        Ok::<_, Error>((ingested, trace_ids, errors))
    }
    .await;
    match result {
        Ok((ingested, trace_ids, errors)) => {
            state.metrics.record_outcome(
                Protocol::SpanLogs,
                ws.as_ref(),
                Ok((ingested as u64, errors.len() as u64)),
                started,
            );
            let body = json!({
                "status": "ok",
                "ingested_spans": ingested,
                "created_traces": trace_ids.len(),
                "trace_ids": trace_ids,
                "errors": errors,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            state
                .metrics
                .record_outcome(Protocol::SpanLogs, ws.as_ref(), Err(&e), started);
            e.to_fastapi_response()
        }
    }
}
