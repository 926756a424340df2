//! The reads behind the query routes (HTTP and gRPC): trace pages, one trace with its
//! spans, span pages.
//!
//! Input: a workspace and the request's parameters. Output: NeMo-shaped JSON. Invariants:
//! every read of one answer runs in one session (one snapshot); the page is chosen from root
//! spans first and rollups are computed for that page's traces only; an answer whose JSON
//! would pass the JSON cap is refused with a message saying how to ask for less.

use arrow::array::RecordBatch;
use serde_json::{Map, Value};

use super::json;
use super::nemo::{page_json, trace_json};
use super::params::{self, ListParams, Mode, SPAN_FILTERS, TRACE_FILTERS};
use super::sql_text::{
    conditions, id_variants, in_list, lit, roots_cte, time_conditions, trace_column, where_clause,
};
use crate::error::ApiError;
use crate::query::{QueryEngine, ROLLUP_COLUMNS, ROOT_ORDER};
use crate::workspace::Workspace;

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
    let what = format!("page {} of {} rows", params.page, params.page_size);
    let rows = capped_rows(engine, ctx, page_sql, &what, "ask for a smaller page_size").await?;
    let total = first_count(&engine.run(ctx.clone(), count_sql).await?.batches);
    Ok((rows, total))
}

/// The rows of `sql` as JSON objects, rendered as its batches arrive. An answer whose JSON
/// would pass `--sql-max-json-bytes` is refused (its query cancelled) with a message naming
/// `what` it is and saying how to ask for less (`advice`).
async fn capped_rows(
    engine: &QueryEngine,
    ctx: &datafusion::prelude::SessionContext,
    sql: String,
    what: &str,
    advice: &str,
) -> Result<Vec<Map<String, Value>>, ApiError> {
    let limit = engine.limits().max_json_bytes;
    let mut answer = engine.stream(ctx.clone(), sql).await?;
    let mut rows = json::CappedRows::new(limit);
    while let Some(batch) = answer.next().await {
        if !rows.push(&batch?) {
            return Err(ApiError::TooLarge(format!(
                "{what} comes to more than {limit} bytes of JSON (--sql-max-json-bytes); {advice}"
            )));
        }
    }
    Ok(rows.into_rows())
}

fn first_count(batches: &[RecordBatch]) -> usize {
    json::rows(batches)
        .first()
        .and_then(|r| r.values().next().and_then(Value::as_u64))
        .unwrap_or(0) as usize
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
    let found = capped_rows(
        engine,
        ctx,
        sql,
        "the inputs and outputs of this page",
        "ask for a smaller page_size, or mode=summary",
    )
    .await?;
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
        let advice = format!(
            "read its spans a page at a time with GET /apis/intake/v2/workspaces/{ws}/spans\
             ?filter[trace_id]={id}&page_size=10, or choose columns with \
             POST /apis/intake/v2/workspaces/{ws}/sql"
        );
        spans = capped_rows(engine, &ctx, sql, &format!("trace {trace_id}"), &advice).await?;
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

/// A page of spans (the NeMo page shape) for a workspace and a raw query string.
pub async fn spans_page(
    engine: &QueryEngine,
    ws: &Workspace,
    query: &str,
) -> Result<Value, ApiError> {
    let params = params::parse(query, &SPAN_FILTERS).map_err(ApiError::Validation)?;
    let ctx = engine.session(ws).await?;
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
    Ok(page_json(&params, data, total))
}
