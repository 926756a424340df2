//! The NeMo answer shapes: a `Trace` from its root span and rollups, and a page.
//!
//! Input: rows as JSON objects (root span columns, rollups). Output: the JSON the NeMo
//! routes answer. Invariants: no query runs here; `input`/`output` are cut to
//! [`PREVIEW_CHARS`] characters in preview mode.

use serde_json::{Map, Value, json};

use super::params::{ListParams, Mode};
use crate::workspace::Workspace;

/// The characters of `input`/`output` kept in preview mode.
const PREVIEW_CHARS: usize = 300;

/// A NeMo page: its data, pagination, and the sort and filter it was asked with.
pub(super) fn page_json(params: &ListParams, data: Vec<Value>, total: usize) -> Value {
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
pub(super) fn trace_json(
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
