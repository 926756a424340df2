//! The LLM-observability vendors' ingest bodies.
//!
//! - NeMo intake: OTLP protobuf, OTLP JSON, or the simplified JSON of its example
//!   (top-level `traceId`, `spans[]` with flat `attributes` maps, `kind` by name, a flat
//!   `resource` map) — rewritten into OTLP JSON and decoded by the OTLP JSON decoder, so
//!   every leniency rule (exact 19-digit numbers, hex ids, enum names) holds alike.
//! - Respan / Keywords AI: a JSON array of span logs with the producers' own ids, decoded
//!   into [`LogSpan`]s; an item that lacks an id or has no readable time is refused alone.

use serde_json::{Map, Value, json};

use super::{DecodeError, DecodedRequest, decode_json_value};

/// Decodes a NeMo intake JSON body: OTLP JSON, or the simplified form.
pub fn decode_nemo_json(bytes: &[u8]) -> Result<DecodedRequest, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    let Value::Object(obj) = value else {
        return Err(DecodeError::Body("the body must be a JSON object".into()));
    };
    if obj.contains_key("resourceSpans")
        || obj.contains_key("resource_spans")
        || !obj.contains_key("spans")
    {
        return decode_json_value(Value::Object(obj));
    }
    decode_json_value(simplified_to_otlp(obj)?)
}

/// A flat `{key: value}` map → OTLP `[{key, value: AnyValue}]`.
fn key_values(map: Option<&Value>) -> Result<Value, DecodeError> {
    match map {
        None | Some(Value::Null) => Ok(json!([])),
        Some(Value::Object(m)) => Ok(Value::Array(
            m.iter()
                .map(|(k, v)| json!({"key": k, "value": any_value(v)}))
                .collect(),
        )),
        Some(Value::Array(list)) => Ok(Value::Array(list.clone())),
        Some(other) => Err(DecodeError::Body(format!(
            "attributes must be an object, got {other}"
        ))),
    }
}

/// A JSON value → an OTLP JSON `AnyValue`.
fn any_value(v: &Value) -> Value {
    match v {
        Value::Null => json!({}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::String(s) => json!({"stringValue": s}),
        Value::Array(items) => {
            json!({"arrayValue": {"values": items.iter().map(any_value).collect::<Vec<_>>()}})
        }
        Value::Object(m) => {
            json!({"kvlistValue": {"values": m.iter().map(|(k, v)| json!({"key": k, "value": any_value(v)})).collect::<Vec<_>>()}})
        }
    }
}

fn simplified_to_otlp(obj: Map<String, Value>) -> Result<Value, DecodeError> {
    let top_trace = obj.get("traceId").or_else(|| obj.get("trace_id")).cloned();
    let Some(Value::Array(spans)) = obj.get("spans") else {
        return Err(DecodeError::Body("`spans` must be an array".into()));
    };
    let spans = spans
        .iter()
        .map(|s| {
            let Value::Object(span) = s else {
                return Err(DecodeError::Body("each span must be an object".into()));
            };
            let mut out = span.clone();
            let has_own = out.contains_key("traceId") || out.contains_key("trace_id");
            if let (false, Some(t)) = (has_own, &top_trace) {
                out.insert("traceId".into(), t.clone());
            }
            if let Some(attrs) = span.get("attributes") {
                out.insert("attributes".into(), key_values(Some(attrs))?);
            }
            Ok(Value::Object(out))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "resourceSpans": [{
            "resource": {"attributes": key_values(obj.get("resource"))?},
            "scopeSpans": [{"spans": spans}],
        }]
    }))
}

/// One span log of the Respan / Keywords AI logs-to-trace API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogSpan {
    /// `trace_unique_id`, as given.
    pub trace_id: String,
    /// `span_unique_id`, as given.
    pub span_id: String,
    /// `span_parent_id`; `None` for a root.
    pub parent_span_id: Option<String>,
    /// `span_name`.
    pub name: String,
    /// Start, ns since the epoch.
    pub start_ns: i64,
    /// End, ns since the epoch.
    pub end_ns: i64,
    /// An error message, which makes the span's status ERROR.
    pub error: Option<String>,
    /// `model`.
    pub model: Option<String>,
    /// `provider_id`.
    pub provider: Option<String>,
    /// `prompt_tokens`.
    pub input_tokens: Option<i64>,
    /// `completion_tokens`.
    pub output_tokens: Option<i64>,
    /// `total_tokens`, else input + output.
    pub total_tokens: Option<i64>,
    /// `cost` (USD).
    pub cost: Option<f64>,
    /// `input`, else `prompt_messages` as JSON.
    pub input: Option<String>,
    /// `output`, else `completion_message` as JSON.
    pub output: Option<String>,
    /// Every other field: strings as they are, other values as JSON text.
    pub attributes: Vec<(String, String)>,
}

/// Fields mapped onto columns; every other field goes to `attributes`.
const MAPPED: &[&str] = &[
    "trace_unique_id",
    "span_unique_id",
    "span_parent_id",
    "span_name",
    "start_time",
    "timestamp",
    "latency",
    "input",
    "output",
    "prompt_messages",
    "completion_message",
    "model",
    "provider_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "error_message",
];

/// Decodes a JSON array of span logs; each item is a span or the reason it is refused.
pub fn decode_span_logs(bytes: &[u8]) -> Result<Vec<Result<LogSpan, String>>, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    let Value::Array(items) = value else {
        return Err(DecodeError::Body(
            "the body must be a JSON array of span logs".into(),
        ));
    };
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| log_span(item).map_err(|e| format!("span {i}: {e}")))
        .collect())
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn id(item: &Map<String, Value>, key: &str) -> Result<String, String> {
    match item.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(format!("{key} is required")),
    }
}

fn time(item: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match item.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => crate::time::parse_datetime(s)
            .map(Some)
            .ok_or_else(|| format!("{key} {s:?} is not an RFC 3339 time")),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|secs| Some((secs * 1e9) as i64))
            .ok_or_else(|| format!("{key} is not a time")),
        Some(other) => Err(format!("{key} {other} is not a time")),
    }
}

/// Why a time computed from `latency` is refused.
const OUT_OF_RANGE: &str = "start_time and latency give a time out of range";

fn log_span(item: &Value) -> Result<LogSpan, String> {
    let Value::Object(item) = item else {
        return Err("each span log must be a JSON object".into());
    };
    let trace_id = id(item, "trace_unique_id")?;
    let span_id = id(item, "span_unique_id")?;
    let start = time(item, "start_time")?;
    let end = time(item, "timestamp")?;
    let latency_ns = match item.get("latency") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|l| l.is_finite() && *l >= 0.0)
                .map(|l| (l * 1e9).round() as i64)
                .ok_or_else(|| format!("latency {v} is not a number of seconds"))?,
        ),
    };
    let (start_ns, end_ns) = match (start, end, latency_ns) {
        (Some(s), Some(e), _) => (s, e),
        (Some(s), None, Some(l)) => (s, s.checked_add(l).ok_or(OUT_OF_RANGE)?),
        (None, Some(e), Some(l)) => (e.checked_sub(l).ok_or(OUT_OF_RANGE)?, e),
        (Some(s), None, None) => (s, s),
        (None, Some(e), None) => (e, e),
        (None, None, _) => return Err("start_time or timestamp is required".into()),
    };
    let int = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    };
    let input_tokens = int("prompt_tokens");
    let output_tokens = int("completion_tokens");
    let total_tokens = int("total_tokens").or(match (input_tokens, output_tokens) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    });
    let attributes = item
        .iter()
        .filter(|(k, v)| !MAPPED.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), text(Some(v)).unwrap_or_default()))
        .collect();
    Ok(LogSpan {
        trace_id,
        span_id,
        parent_span_id: text(item.get("span_parent_id")).filter(|p| !p.is_empty()),
        name: text(item.get("span_name")).unwrap_or_default(),
        start_ns,
        end_ns,
        error: text(item.get("error_message")).filter(|e| !e.is_empty()),
        model: text(item.get("model")).filter(|m| !m.is_empty()),
        provider: text(item.get("provider_id")).filter(|p| !p.is_empty()),
        input_tokens,
        output_tokens,
        total_tokens,
        cost: item.get("cost").and_then(Value::as_f64),
        input: text(item.get("input")).or_else(|| text(item.get("prompt_messages"))),
        output: text(item.get("output")).or_else(|| text(item.get("completion_message"))),
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nemo_simplified_example_keeps_19_digit_times() {
        let body = include_bytes!("../../tests/fixtures/nemo-intake-example.json");
        let d = decode_nemo_json(body).unwrap();
        let span = &d.request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.start_time_unix_nano, 1_618_884_477_123_456_800);
        assert_eq!(span.kind, 2);
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.attributes.len(), 4);
        let res = d.request.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
    }

    #[test]
    fn span_logs_map_times_and_refuse_bad_items() {
        let logs = decode_span_logs(br#"[
            {"trace_unique_id":"t","span_unique_id":"s","start_time":"2025-09-08T07:46:14Z","latency":1.5},
            {"trace_unique_id":"t","span_unique_id":"e","timestamp":"2025-09-08T07:46:14Z","latency":0.5,"metadata":{"a":1}},
            {"span_unique_id":"x","start_time":"2025-09-08T07:46:14Z"},
            {"trace_unique_id":"t","span_unique_id":"y","start_time":"yesterday"}
        ]"#).unwrap();
        let a = logs[0].as_ref().unwrap();
        assert_eq!(a.end_ns - a.start_ns, 1_500_000_000);
        let b = logs[1].as_ref().unwrap();
        assert_eq!(b.end_ns - b.start_ns, 500_000_000);
        assert_eq!(
            b.attributes,
            vec![("metadata".to_string(), r#"{"a":1}"#.to_string())]
        );
        assert_eq!(
            logs[2].as_ref().unwrap_err(),
            "span 2: trace_unique_id is required"
        );
        assert!(logs[3].as_ref().unwrap_err().contains("RFC 3339"));
        assert!(decode_span_logs(b"{}").is_err());
    }
}
