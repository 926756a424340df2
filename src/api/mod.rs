//! API: the query routes over HTTP (NeMo-compatible trace listing and lookup, span
//! listing, analyst SQL). This module routes and authorizes; [`read`] runs the reads,
//! [`sql_text`] writes their SQL, [`nemo`] and [`render`] shape the answers.
//!
//! Input: HTTP requests under `/apis/intake/v2/workspaces/{workspace}/`. Output: JSON in
//! the NeMo shapes (`TracesPage`, `Trace`, FastAPI validation errors), or SQL results as
//! JSON, CSV or Arrow IPC. Invariants: parameters are validated before any query runs
//! (422 with every problem listed); user values reach SQL only as escaped literals; the
//! page is chosen from root spans first, and rollups are computed for that page's traces
//! only.

mod access;
pub mod flight;
pub mod grpc;
pub mod json;
mod nemo;
pub mod params;
pub mod pg;
mod read;
pub mod render;
mod sql_text;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, header};
use serde_json::json;

use crate::auth::{Auth, Scope, credential};
use crate::error::ApiError;
use crate::query::QueryEngine;
use crate::receive::{API_KEY_HEADER, AUTHORIZATION_HEADER};
use crate::workspace::Workspace;
use params::ValidationError;
pub use read::{spans_page, trace_with_spans, traces_page};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Runs queries.
    pub engine: Arc<QueryEngine>,
    /// API keys.
    pub auth: Arc<Auth>,
}

/// The query routes.
pub fn router(state: ApiState) -> Router {
    let base = "/apis/intake/v2/workspaces/{workspace}";
    Router::new()
        .route(&format!("{base}/traces"), get(list_traces))
        .route(&format!("{base}/traces/{{trace_id}}"), get(get_trace))
        .route(&format!("{base}/spans"), get(list_spans))
        .route(&format!("{base}/sql"), post(sql))
        .with_state(state)
}

/// The workspace `name` if the request's key may read it: 401 before anything else for
/// a missing or unknown key, then 422 for an invalid name, then 403.
pub fn authorize_read(
    auth: &Auth,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
    name: &str,
) -> Result<Workspace, ApiError> {
    let credential = credential(authorization, api_key);
    auth.authenticate(credential)?;
    let ws = workspace(name)?;
    Ok(auth.authorize(credential, Some(ws), Scope::Read)?)
}

fn read_access(state: &ApiState, headers: &HeaderMap, name: &str) -> Result<Workspace, ApiError> {
    let header = |n: &str| headers.get(n).map(|v| v.as_bytes());
    authorize_read(
        &state.auth,
        header(AUTHORIZATION_HEADER),
        header(API_KEY_HEADER),
        name,
    )
}

fn workspace(name: &str) -> Result<Workspace, ApiError> {
    Workspace::new(name).map_err(|e| {
        ApiError::Validation(vec![ValidationError::new(
            &["path", "workspace"],
            e.to_string(),
            "string_pattern_mismatch",
            Some(json!(name)),
        )])
    })
}

async fn list_traces(
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    let page = traces_page(&state.engine, &ws, query.as_deref().unwrap_or("")).await?;
    Ok(axum::Json(page).into_response())
}

async fn get_trace(
    State(state): State<ApiState>,
    Path((ws, trace_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    Ok(axum::Json(trace_with_spans(&state.engine, &ws, &trace_id).await?).into_response())
}

async fn list_spans(
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    let page = spans_page(&state.engine, &ws, query.as_deref().unwrap_or("")).await?;
    Ok(axum::Json(page).into_response())
}

#[derive(serde::Deserialize)]
struct SqlRequest {
    query: String,
}

async fn sql(
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Validation(vec![ValidationError::new(
            &["body", "query"],
            format!("the body must be a JSON object {{\"query\": \"…\"}}: {e}"),
            "json_invalid",
            None,
        )])
    })?;
    let answer = state.engine.sql_stream(&ws, &request.query).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    render::sql_answer(accept, answer, state.engine.limits().max_json_bytes).await
}
