use arrow::array::{Array, AsArray, Float64Array, Int64Array};

use super::*;
use crate::decode::DecodedRequest;
use crate::proto::{
    AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
    Status, any_value::Value,
};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn span(attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "s".into(),
        start_time_unix_nano: 10,
        end_time_unix_nano: 30,
        attributes,
        ..Default::default()
    }
}

fn one(resource: Vec<KeyValue>, spans: Vec<Span>) -> Normalized {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    normalize(&DecodedRequest {
        request,
        rejected: Vec::new(),
    })
    .unwrap()
}

fn text(n: &Normalized, column: &str, row: usize) -> Option<String> {
    let batch = n.chunk.to_batch().unwrap();
    let a = arrow::compute::cast(
        batch.column(column_index(column)),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let a = a.as_string::<i32>();
    (!a.is_null(row)).then(|| a.value(row).to_string())
}

fn column_index(name: &str) -> usize {
    crate::schema::column_index(name)
}

#[test]
fn the_first_key_of_each_priority_list_wins_whatever_the_order() {
    let n = one(
        vec![],
        vec![span(vec![
            kv("traceloop.span.kind", Value::StringValue("workflow".into())),
            kv("openinference.span.kind", Value::StringValue("LLM".into())),
            kv("gen_ai.operation.name", Value::StringValue("chat".into())),
            kv("llm.model_name", Value::StringValue("m-old".into())),
            kv("gen_ai.request.model", Value::StringValue("m-req".into())),
            kv("langfuse.session.id", Value::StringValue("lf".into())),
            kv("session.id", Value::StringValue("sess".into())),
            kv("llm.token_count.prompt", Value::IntValue(5)),
            kv("llm.token_count.completion", Value::StringValue("7".into())),
            kv("llm.cost.prompt", Value::DoubleValue(0.5)),
            kv("llm.cost.completion", Value::IntValue(1)),
        ])],
    );
    assert_eq!(text(&n, "span_kind_llm", 0).as_deref(), Some("LLM"));
    assert_eq!(text(&n, "model", 0).as_deref(), Some("m-req"));
    assert_eq!(text(&n, "session_id", 0).as_deref(), Some("sess"));
    let int = |c: &str| {
        n.chunk
            .to_batch()
            .unwrap()
            .column(column_index(c))
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(int("input_tokens"), 5);
    assert_eq!(int("output_tokens"), 7);
    assert_eq!(
        int("total_tokens"),
        12,
        "total falls back to input + output"
    );
    let float = |c: &str| {
        n.chunk
            .to_batch()
            .unwrap()
            .column(column_index(c))
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(
        float("cost_usd"),
        1.5,
        "cost falls back to input + output cost"
    );
    assert_eq!(float("cost_input_usd"), 0.5);
}

#[test]
fn resource_attributes_fill_what_the_span_lacks() {
    let n = one(
        vec![
            kv("service.name", Value::StringValue("svc".into())),
            kv("user.id", Value::StringValue("from-resource".into())),
            kv("gen_ai.system", Value::StringValue("res-provider".into())),
            kv("input.value", Value::StringValue("res-input".into())),
        ],
        vec![span(vec![kv(
            "gen_ai.provider.name",
            Value::StringValue("span-provider".into()),
        )])],
    );
    assert_eq!(text(&n, "service_name", 0).as_deref(), Some("svc"));
    assert_eq!(text(&n, "user_id", 0).as_deref(), Some("from-resource"));
    assert_eq!(text(&n, "provider", 0).as_deref(), Some("span-provider"));
    // `input` and `output` are a span's own payload: a resource's stays in its attributes.
    assert_eq!(text(&n, "input", 0), None);
}

#[test]
fn nemo_status_rules() {
    assert_eq!(nemo_status(2, "boom", None, true), "error");
    assert_eq!(nemo_status(1, "", None, true), "success");
    assert_eq!(nemo_status(0, "", None, true), "success");
    assert_eq!(nemo_status(0, "", None, false), "unknown");
    assert_eq!(nemo_status(2, "Request Cancelled", None, true), "cancelled");
    assert_eq!(
        nemo_status(2, "", Some("asyncio.CancelledError"), true),
        "cancelled"
    );
    assert_eq!(
        nemo_status(1, "cancelled", None, true),
        "success",
        "an OK span is never cancelled"
    );
}

#[test]
fn status_and_times_become_columns() {
    let mut s = span(vec![kv("error.type", Value::StringValue("timeout".into()))]);
    s.status = Some(Status {
        code: 2,
        message: "deadline".into(),
    });
    s.end_time_unix_nano = 0;
    let n = one(vec![], vec![s]);
    assert_eq!(text(&n, "status_code", 0).as_deref(), Some("ERROR"));
    assert_eq!(text(&n, "status", 0).as_deref(), Some("error"));
    assert!(
        n.chunk
            .to_batch()
            .unwrap()
            .column(column_index("end_time"))
            .is_null(0),
        "an unended span has no end"
    );
    assert!(
        n.chunk
            .to_batch()
            .unwrap()
            .column(column_index("duration_ns"))
            .is_null(0)
    );
}

#[test]
fn invalid_ids_and_times_reject_only_their_span() {
    let mut bad_parent = span(vec![]);
    bad_parent.parent_span_id = vec![1, 2];
    let mut late = span(vec![]);
    late.start_time_unix_nano = u64::MAX;
    let mut zero_parent = span(vec![]);
    zero_parent.parent_span_id = vec![0; 8];
    let n = one(vec![], vec![bad_parent, late, zero_parent]);
    assert_eq!(n.chunk.to_batch().unwrap().num_rows(), 1);
    assert_eq!(
        n.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(
        n.rejected[0]
            .reason
            .contains("parent_span_id must be 8 bytes")
    );
    assert!(n.rejected[1].reason.contains("beyond the year 2262"));
    assert_eq!(
        text(&n, "parent_span_id", 0),
        None,
        "an all-zero parent means root"
    );
}

#[test]
fn token_totals_saturate_instead_of_overflowing() {
    let n = one(
        vec![],
        vec![span(vec![
            kv("gen_ai.usage.input_tokens", Value::IntValue(i64::MAX)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(5)),
        ])],
    );
    let total = n
        .chunk
        .to_batch()
        .unwrap()
        .column(column_index("total_tokens"))
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(total, i64::MAX);
}
