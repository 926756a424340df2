//! The reads behind the query routes (HTTP and gRPC): trace pages, one trace with its
//! spans, span pages.
//!
//! Input: a workspace and the request's parameters. Output: NeMo-shaped JSON. Invariants:
//! every read of one answer uses one snapshot (one version's files ∪ the buffer); trace
//! pages, their counts and summaries come from the trace index ([`crate::catalog`]), spans
//! are read only for a page's `input`/`output` and from the files the index says hold a
//! looked-up trace; an answer whose JSON would pass the JSON cap is refused with a message
//! saying how to ask for less.

use arrow::array::RecordBatch;
use std::collections::HashSet;

use serde_json::{Map, Value, json as json_value};

use super::json::timestamp_text;

use super::json;
use super::nemo::{page_json, trace_json};
use super::params::{self, ListParams, Mode, SPAN_FILTERS, TRACE_FILTERS};
use super::sql_text::{conditions, id_variants, in_list, lit, where_clause};
use crate::catalog::{RootField, TraceFilter};
use crate::error::ApiError;
use crate::query::QueryEngine;
use crate::summary::{COST_COLUMNS, TOKEN_COLUMNS, TraceRow};
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

/// The columns of a trace's root span a listing shows (as the span rows name them).
fn root_json(row: &TraceRow) -> Map<String, Value> {
    let text = |v: Option<&str>| v.map_or(Value::Null, |s| json_value!(s));
    let mut root = Map::new();
    root.insert("trace_id".into(), json_value!(&*row.trace_id));
    root.insert("span_id".into(), json_value!(&*row.root.span_id));
    root.insert("name".into(), json_value!(&*row.root.name));
    root.insert("session_id".into(), text(row.root.session_id.as_deref()));
    root.insert(
        "start_time".into(),
        json_value!(timestamp_text(row.root.start_ns)),
    );
    let end = row.root.end_ns.map(timestamp_text);
    root.insert("end_time".into(), text(end.as_deref()));
    root.insert("status".into(), json_value!(row.root.status.as_str()));
    root.insert(
        "experiment_id".into(),
        text(row.root.experiment_id.as_deref()),
    );
    root.insert(
        "test_case_id".into(),
        text(row.root.test_case_id.as_deref()),
    );
    root
}

/// A trace's rollups over all its spans.
fn rollup_json(row: &TraceRow) -> Value {
    let mut r = Map::new();
    let end = row.max_end_ns.map(timestamp_text);
    r.insert("ended_at".into(), end.map_or(Value::Null, Value::String));
    for (name, sum) in TOKEN_COLUMNS.iter().zip(row.tokens) {
        r.insert(
            name.to_string(),
            sum.map_or(Value::Null, |v| json_value!(v)),
        );
    }
    for (name, sum) in COST_COLUMNS.iter().zip(row.costs) {
        let number = sum.and_then(serde_json::Number::from_f64);
        r.insert(name.to_string(), number.map_or(Value::Null, Value::Number));
    }
    r.insert("span_count".into(), json_value!(row.spans));
    r.insert("error_count".into(), json_value!(row.errors));
    r.insert("status".into(), json_value!(row.status().as_str()));
    Value::Object(r)
}

/// A trace listing's filter in the trace index's terms.
fn trace_filter(filter: &params::Filter) -> TraceFilter {
    let mut out = TraceFilter {
        started_gte: filter.started_gte,
        started_lte: filter.started_lte,
        ..Default::default()
    };
    for (field, values) in &filter.strings {
        let root = match field.as_str() {
            "id" => {
                let ids = values.iter().flat_map(|v| id_variants(v)).collect();
                out.ids = Some(ids);
                continue;
            }
            "status" => RootField::Status,
            "session_id" => RootField::SessionId,
            "experiment_id" => RootField::ExperimentId,
            "test_case_id" => RootField::TestCaseId,
            _ => continue,
        };
        out.fields.push((root, values.clone()));
    }
    out
}

/// The NeMo `TracesPage` for a workspace and a raw query string, from the trace index.
pub async fn traces_page(
    engine: &QueryEngine,
    ws: &Workspace,
    query: &str,
) -> Result<Value, ApiError> {
    let params = params::parse(query, &TRACE_FILTERS).map_err(ApiError::Validation)?;
    let table = engine.snapshot(ws)?;
    let view = engine.traces(ws, &table).await?;
    let (page, total) = view.list(
        &trace_filter(&params.filter),
        params.descending(),
        params.offset(),
        params.page_size,
    );
    let mut roots: Vec<Map<String, Value>> = page.iter().map(|r| root_json(r)).collect();
    if params.mode == Mode::Preview {
        // Only the files holding the page's traces.
        let holding: HashSet<String> = page
            .iter()
            .flat_map(|r| view.files_of(&r.trace_id))
            .map(|f| f.path.clone())
            .collect();
        let ctx = engine
            .session_over(ws, table.only(|f| holding.contains(&f.path)))
            .await?;
        add_input_output(engine, &ctx, &mut roots).await?;
    }
    let data = roots
        .iter()
        .zip(&page)
        .map(|(root, row)| {
            let rollup = (params.mode != Mode::Summary).then(|| rollup_json(row));
            trace_json(ws, root, rollup.as_ref(), params.mode)
        })
        .collect();
    Ok(page_json(&params, data, total))
}

/// One trace: its summary (from the trace index) and all its spans in start order, read
/// from the files that hold them; a span stored twice (a retry not yet compacted away) is
/// shown once.
pub async fn trace_with_spans(
    engine: &QueryEngine,
    ws: &Workspace,
    trace_id: &str,
) -> Result<Value, ApiError> {
    let table = engine.snapshot(ws)?;
    let view = engine.traces(ws, &table).await?;
    // The id as given (vendor ids keep their case), else lower-cased (OTLP hex ids).
    let found = id_variants(trace_id)
        .into_iter()
        .find_map(|id| view.get(&id).cloned());
    let row = found.ok_or_else(|| {
        ApiError::NotFound(format!("trace {trace_id} not found in workspace {ws}"))
    })?;
    let id = row.trace_id.to_string();
    let holding: HashSet<String> = view
        .files_of(&id)
        .into_iter()
        .map(|f| f.path.clone())
        .collect();
    let ctx = engine
        .session_over(ws, table.only(|f| holding.contains(&f.path)))
        .await?;
    let sql = format!(
        "SELECT * FROM spans WHERE trace_id = {} ORDER BY start_time, span_id",
        lit(&id)
    );
    let advice = format!(
        "read its spans a page at a time with GET /apis/intake/v2/workspaces/{ws}/spans\
         ?filter[trace_id]={id}&page_size=10, or choose columns with \
         POST /apis/intake/v2/workspaces/{ws}/sql"
    );
    let mut spans = capped_rows(engine, &ctx, sql, &format!("trace {trace_id}"), &advice).await?;
    spans.dedup_by(|b, a| {
        a.get("span_id") == b.get("span_id") && a.get("start_time") == b.get("start_time")
    });
    let mut trace = trace_json(
        ws,
        &root_json(&row),
        Some(&rollup_json(&row)),
        Mode::Detailed,
    );
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
    let table = engine.snapshot(ws)?;
    let traces = params.filter.strings.iter().find(|(f, _)| f == "trace_id");
    let table = match traces {
        // Only the files the trace index says hold those traces.
        Some((_, ids)) => {
            let view = engine.traces(ws, &table).await?;
            let holding: HashSet<String> = ids
                .iter()
                .flat_map(|id| id_variants(id))
                .flat_map(|id| view.files_of(&id))
                .map(|f| f.path.clone())
                .collect();
            table.only(|f| holding.contains(&f.path))
        }
        None => table,
    };
    let ctx = engine.session_over(ws, table).await?;
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
