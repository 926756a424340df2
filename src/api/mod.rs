//! API: the query routes over HTTP (NeMo-compatible trace listing and lookup, span
//! listing, analyst SQL).
//!
//! Input: HTTP requests under `/apis/intake/v2/workspaces/{workspace}/`. Output: JSON in
//! the NeMo shapes (`TracesPage`, `Trace`, FastAPI validation errors), or SQL results as
//! JSON, CSV or Arrow IPC. Invariants: parameters are validated before any query runs
//! (422 with every problem listed); user values reach SQL only as escaped literals; the
//! page is chosen from root spans first, and rollups are computed for that page's traces
//! only.

pub mod grpc;
pub mod json;
pub mod params;
pub mod render;
mod sql_text;

use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, header};
use serde_json::{Map, Value, json};

use crate::auth::{Auth, Scope, credential};
use crate::error::ApiError;
use crate::query::{QueryEngine, ROLLUP_COLUMNS, ROOT_ORDER};
use crate::receive::{API_KEY_HEADER, AUTHORIZATION_HEADER};
use crate::workspace::Workspace;
use params::{ListParams, Mode, SPAN_FILTERS, TRACE_FILTERS, ValidationError};
use sql_text::{conditions, id_variants, in_list, lit, time_conditions, where_clause};

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

/// The characters of `input`/`output` kept in preview mode.
const PREVIEW_CHARS: usize = 300;

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

fn page_json(params: &ListParams, data: Vec<Value>, total: usize) -> Value {
    json!({
        "data": data,
        "pagination": {
            "page": params.page,
            "page_size": params.page_size,
            "current_page_size": data.len(),
            "total_pages": total.div_ceil(params.page_size),
            "total_results": total,
        },
        "sort": params.sort,
        "filter": params.filter.echo,
    })
}

/// One page of `{prefix} SELECT * FROM {from} {filter} ORDER BY {order_by}` and the number
/// of rows over all pages, from one session (one snapshot).
async fn page_and_total(
    engine: &QueryEngine,
    ctx: &datafusion::prelude::SessionContext,
    prefix: &str,
    from: &str,
    filter: &str,
    order_by: &str,
    params: &ListParams,
) -> Result<(Vec<Map<String, Value>>, usize), ApiError> {
    let page_sql = format!(
        "{prefix} SELECT * FROM {from} {filter} ORDER BY {order_by} LIMIT {} OFFSET {}",
        params.page_size,
        params.offset()
    );
    let count_sql = format!("{prefix} SELECT COUNT(*) AS n FROM {from} {filter}");
    let limit = engine.limits().max_json_bytes;
    let rows = json::rows_within(&engine.run(ctx.clone(), page_sql).await?.batches, limit)
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "page {} of {} rows comes to more than {limit} bytes of JSON \
                 (--sql-max-json-bytes); ask for a smaller page_size",
                params.page, params.page_size
            ))
        })?;
    let total = first_count(&engine.run(ctx.clone(), count_sql).await?.batches);
    Ok((rows, total))
}

fn first_count(batches: &[RecordBatch]) -> usize {
    json::rows(batches)
        .first()
        .and_then(|r| r.values().next().and_then(Value::as_u64))
        .unwrap_or(0) as usize
}

/// The small columns of a root span that a trace takes (`input`/`output` are fetched for
/// the page's roots only).
const ROOT_COLUMNS: [&str; 7] = [
    "span_id",
    "name",
    "session_id",
    "end_time",
    "status",
    "experiment_id",
    "test_case_id",
];

/// Per trace, the columns of its root span (see [`ROOT_ORDER`]), as a hash aggregate:
/// memory grows with the number of traces, not spans, and nothing is sorted.
fn root_columns() -> String {
    let mut cols = vec!["trace_id".to_string()];
    cols.extend(
        std::iter::once("start_time")
            .chain(ROOT_COLUMNS)
            .map(|c| format!("first_value({c} ORDER BY {ROOT_ORDER}) AS {c}")),
    );
    cols.join(", ")
}

/// `roots`: the root span of each trace. `time` restricts which spans are considered
/// (partition pruning).
fn roots_cte(time: &[String]) -> String {
    format!(
        "WITH roots AS (SELECT {cols} FROM spans {filter} GROUP BY trace_id)",
        cols = root_columns(),
        filter = where_clause(time),
    )
}

/// Adds `input` and `output` to root rows, fetched for just those spans.
async fn add_input_output(
    engine: &QueryEngine,
    ctx: &datafusion::prelude::SessionContext,
    roots: &mut [Map<String, Value>],
) -> Result<(), ApiError> {
    let ids = |key: &str| -> Vec<String> {
        roots
            .iter()
            .filter_map(|r| r.get(key).and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let (traces, spans) = (ids("trace_id"), ids("span_id"));
    if traces.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT trace_id, span_id, input, output FROM spans WHERE {} AND {}",
        in_list("trace_id", &traces),
        in_list("span_id", &spans)
    );
    let found = json::rows(&engine.run(ctx.clone(), sql).await?.batches);
    for root in roots.iter_mut() {
        let hit = found.iter().find(|f| {
            f.get("trace_id") == root.get("trace_id") && f.get("span_id") == root.get("span_id")
        });
        for key in ["input", "output"] {
            let value = hit.and_then(|h| h.get(key)).cloned().unwrap_or(Value::Null);
            root.insert(key.to_string(), value);
        }
    }
    Ok(())
}

fn trace_column(field: &str) -> &str {
    match field {
        "id" => "trace_id",
        other => other,
    }
}

/// Rollups of the given traces, by trace id.
async fn rollups(
    engine: &QueryEngine,
    ctx: datafusion::prelude::SessionContext,
    ids: &[String],
) -> Result<Map<String, Value>, ApiError> {
    if ids.is_empty() {
        return Ok(Map::new());
    }
    let sql = format!(
        "SELECT {ROLLUP_COLUMNS} FROM spans WHERE {} GROUP BY trace_id",
        in_list("trace_id", ids)
    );
    let result = engine.run(ctx, sql).await?;
    Ok(json::rows(&result.batches)
        .into_iter()
        .filter_map(|mut r| {
            let id = r.remove("trace_id")?.as_str()?.to_string();
            Some((id, Value::Object(r)))
        })
        .collect())
}

fn duration_ms(start: &Value, end: &Value) -> Value {
    let parse = |v: &Value| v.as_str().and_then(crate::time::parse_datetime);
    match (parse(start), parse(end)) {
        (Some(s), Some(e)) => json!((e - s) as f64 / 1e6),
        _ => Value::Null,
    }
}

fn cut(v: &Value) -> Value {
    match v.as_str() {
        Some(s) if s.chars().count() > PREVIEW_CHARS => {
            json!(s.chars().take(PREVIEW_CHARS).collect::<String>())
        }
        _ => v.clone(),
    }
}

/// A NeMo `Trace` from its root span row and (unless summary mode) its rollups.
fn trace_json(
    ws: &Workspace,
    root: &Map<String, Value>,
    rollup: Option<&Value>,
    mode: Mode,
) -> Value {
    let field = |k: &str| root.get(k).cloned().unwrap_or(Value::Null);
    let mut t = Map::new();
    t.insert("id".into(), field("trace_id"));
    t.insert("root_span_id".into(), field("span_id"));
    t.insert("session_id".into(), field("session_id"));
    t.insert("workspace".into(), json!(ws.as_str()));
    t.insert("name".into(), field("name"));
    if let Some(exp) = root.get("experiment_id").filter(|v| !v.is_null()) {
        let mut ctx = Map::new();
        ctx.insert("experiment_id".into(), exp.clone());
        if let Some(tc) = root.get("test_case_id").filter(|v| !v.is_null()) {
            ctx.insert("test_case_id".into(), tc.clone());
        }
        t.insert("experiment_context".into(), Value::Object(ctx));
    }
    t.insert("started_at".into(), field("start_time"));
    match (mode, rollup.and_then(Value::as_object)) {
        (Mode::Summary, _) | (_, None) => {
            t.insert("ended_at".into(), field("end_time"));
            t.insert(
                "duration_ms".into(),
                duration_ms(&field("start_time"), &field("end_time")),
            );
            t.insert("status".into(), field("status"));
        }
        (_, Some(r)) => {
            let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
            t.insert("ended_at".into(), get("ended_at"));
            t.insert(
                "duration_ms".into(),
                duration_ms(&field("start_time"), &get("ended_at")),
            );
            t.insert("status".into(), get("status"));
            for k in [
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "total_tokens",
                "cost_usd",
                "cost_input_usd",
                "cost_output_usd",
                "span_count",
                "error_count",
            ] {
                t.insert(k.into(), get(k));
            }
        }
    }
    if mode == Mode::Preview {
        t.insert("input".into(), cut(&field("input")));
        t.insert("output".into(), cut(&field("output")));
    }
    Value::Object(t)
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

/// The NeMo `TracesPage` for a workspace and a raw query string.
pub async fn traces_page(
    engine: &QueryEngine,
    ws: &Workspace,
    query: &str,
) -> Result<Value, ApiError> {
    let params = params::parse(query, &TRACE_FILTERS).map_err(ApiError::Validation)?;
    let ctx = engine.session(ws).await?;
    let cte = roots_cte(&time_conditions(&params.filter, "start_time"));
    let filter = where_clause(&conditions(&params.filter, trace_column));
    let order = if params.descending() { "DESC" } else { "ASC" };
    let (roots, total) = page_and_total(
        engine,
        &ctx,
        &cte,
        "roots",
        &filter,
        &format!("start_time {order}, trace_id {order}"),
        &params,
    )
    .await?;
    let mut roots = roots;
    if params.mode == Mode::Preview {
        add_input_output(engine, &ctx, &mut roots).await?;
    }
    let rollups = if params.mode == Mode::Summary {
        Map::new()
    } else {
        let ids: Vec<String> = roots
            .iter()
            .filter_map(|r| {
                r.get("trace_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        rollups(engine, ctx, &ids).await?
    };
    let data = roots
        .iter()
        .map(|root| {
            let id = root
                .get("trace_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            trace_json(ws, root, rollups.get(id), params.mode)
        })
        .collect();
    Ok(page_json(&params, data, total))
}

async fn get_trace(
    State(state): State<ApiState>,
    Path((ws, trace_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    Ok(axum::Json(trace_with_spans(&state.engine, &ws, &trace_id).await?).into_response())
}

/// The column marking the root span in a trace lookup's rows (removed before answering).
const IS_ROOT: &str = "spanlake_is_root";

/// One trace: its summary and all its spans in start order.
pub async fn trace_with_spans(
    engine: &QueryEngine,
    ws: &Workspace,
    trace_id: &str,
) -> Result<Value, ApiError> {
    let ctx = engine.session(ws).await?;
    // The id as given (vendor ids keep their case), else lower-cased (OTLP hex ids).
    let mut spans = Vec::new();
    for id in id_variants(trace_id) {
        let sql = format!(
            "SELECT *, ROW_NUMBER() OVER (ORDER BY {ROOT_ORDER}) = 1 AS {IS_ROOT} \
             FROM spans WHERE trace_id = {} ORDER BY start_time, span_id",
            lit(&id)
        );
        let limit = engine.limits().max_json_bytes;
        spans = json::rows_within(&engine.run(ctx.clone(), sql).await?.batches, limit).map_err(
            |_| {
                ApiError::TooLarge(format!(
                    "trace {trace_id} comes to more than {limit} bytes of JSON \
                     (--sql-max-json-bytes); read its spans a page at a time with \
                     GET /apis/intake/v2/workspaces/{ws}/spans?filter[trace_id]={id}&page_size=10, \
                     or choose columns with POST /apis/intake/v2/workspaces/{ws}/sql"
                ))
            },
        )?;
        if !spans.is_empty() {
            break;
        }
    }
    let mut root_at = None;
    for (i, span) in spans.iter_mut().enumerate() {
        if span.remove(IS_ROOT) == Some(Value::Bool(true)) {
            root_at = Some(i);
        }
    }
    let root = root_at.map(|i| &spans[i]).ok_or_else(|| {
        ApiError::NotFound(format!("trace {trace_id} not found in workspace {ws}"))
    })?;
    let id = root
        .get("trace_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rollups = rollups(engine, ctx, std::slice::from_ref(&id)).await?;
    let mut trace = trace_json(ws, root, rollups.get(&id), Mode::Detailed);
    if let Value::Object(t) = &mut trace {
        t.insert(
            "spans".into(),
            Value::Array(spans.into_iter().map(Value::Object).collect()),
        );
    }
    Ok(trace)
}

async fn list_spans(
    State(state): State<ApiState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ws = read_access(&state, &headers, &ws)?;
    let params = params::parse(query.as_deref().unwrap_or(""), &SPAN_FILTERS)
        .map_err(ApiError::Validation)?;
    let engine = &state.engine;
    let ctx = engine.session(&ws).await?;
    let filter = where_clause(&conditions(&params.filter, |f| f));
    let order = if params.descending() { "DESC" } else { "ASC" };
    let (spans, total) = page_and_total(
        engine,
        &ctx,
        "",
        "spans",
        &filter,
        &format!("start_time {order}, span_id {order}"),
        &params,
    )
    .await?;
    let data = spans.into_iter().map(Value::Object).collect();
    Ok(axum::Json(page_json(&params, data, total)).into_response())
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
