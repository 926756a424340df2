//! OTLP JSON, decoded as leniently as the Go Collector: lowerCamelCase or snake_case
//! keys, hex ids in either case, 64-bit integers as numbers or strings (never through
//! `f64`), enum names or integers, `"NaN"`/`"Infinity"` doubles, `null` as absent, unknown
//! fields ignored. An id that is not hex rejects its span alone.

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{DecodeError, DecodedRequest, RejectedField, SpanRejection};
use crate::proto::{
    AnyValue, ArrayValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, KeyValueList,
    Resource, ResourceSpans, ScopeSpans, Span, Status, any_value, span,
};

/// Decodes an OTLP JSON `ExportTraceServiceRequest`.
pub fn decode_json(bytes: &[u8]) -> Result<DecodedRequest, DecodeError> {
    let request: JRequest = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    Ok(request.into_decoded())
}

/// Decodes an OTLP JSON `ExportTraceServiceRequest` already parsed into a value.
pub fn decode_json_value(value: serde_json::Value) -> Result<DecodedRequest, DecodeError> {
    let request: JRequest = serde_json::from_value(value).map_err(DecodeError::Json)?;
    Ok(request.into_decoded())
}

#[derive(Deserialize)]
struct JRequest {
    #[serde(
        rename = "resourceSpans",
        alias = "resource_spans",
        default,
        deserialize_with = "seq"
    )]
    resource_spans: Vec<JResourceSpans>,
}

#[derive(Deserialize)]
struct JResourceSpans {
    #[serde(default)]
    resource: Option<JResource>,
    #[serde(
        rename = "scopeSpans",
        alias = "scope_spans",
        default,
        deserialize_with = "seq"
    )]
    scope_spans: Vec<JScopeSpans>,
    #[serde(
        rename = "schemaUrl",
        alias = "schema_url",
        default,
        deserialize_with = "string"
    )]
    schema_url: String,
}

#[derive(Deserialize)]
struct JResource {
    #[serde(default, deserialize_with = "seq")]
    attributes: Vec<JKeyValue>,
    #[serde(
        rename = "droppedAttributesCount",
        alias = "dropped_attributes_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
struct JScopeSpans {
    #[serde(default)]
    scope: Option<JScope>,
    #[serde(default, deserialize_with = "seq")]
    spans: Vec<JSpan>,
    #[serde(
        rename = "schemaUrl",
        alias = "schema_url",
        default,
        deserialize_with = "string"
    )]
    schema_url: String,
}

#[derive(Deserialize)]
struct JScope {
    #[serde(default, deserialize_with = "string")]
    name: String,
    #[serde(default, deserialize_with = "string")]
    version: String,
    #[serde(default, deserialize_with = "seq")]
    attributes: Vec<JKeyValue>,
    #[serde(
        rename = "droppedAttributesCount",
        alias = "dropped_attributes_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
struct JSpan {
    #[serde(rename = "traceId", alias = "trace_id", default)]
    trace_id: JId,
    #[serde(rename = "spanId", alias = "span_id", default)]
    span_id: JId,
    #[serde(
        rename = "traceState",
        alias = "trace_state",
        default,
        deserialize_with = "string"
    )]
    trace_state: String,
    #[serde(rename = "parentSpanId", alias = "parent_span_id", default)]
    parent_span_id: JId,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
    #[serde(default, deserialize_with = "string")]
    name: String,
    #[serde(default, deserialize_with = "span_kind")]
    kind: i32,
    #[serde(
        rename = "startTimeUnixNano",
        alias = "start_time_unix_nano",
        default,
        deserialize_with = "u64_lenient"
    )]
    start_time_unix_nano: u64,
    #[serde(
        rename = "endTimeUnixNano",
        alias = "end_time_unix_nano",
        default,
        deserialize_with = "u64_lenient"
    )]
    end_time_unix_nano: u64,
    #[serde(default, deserialize_with = "seq")]
    attributes: Vec<JKeyValue>,
    #[serde(
        rename = "droppedAttributesCount",
        alias = "dropped_attributes_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "seq")]
    events: Vec<JEvent>,
    #[serde(
        rename = "droppedEventsCount",
        alias = "dropped_events_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_events_count: u32,
    #[serde(default, deserialize_with = "seq")]
    links: Vec<JLink>,
    #[serde(
        rename = "droppedLinksCount",
        alias = "dropped_links_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_links_count: u32,
    #[serde(default)]
    status: Option<JStatus>,
}

#[derive(Deserialize)]
struct JEvent {
    #[serde(
        rename = "timeUnixNano",
        alias = "time_unix_nano",
        default,
        deserialize_with = "u64_lenient"
    )]
    time_unix_nano: u64,
    #[serde(default, deserialize_with = "string")]
    name: String,
    #[serde(default, deserialize_with = "seq")]
    attributes: Vec<JKeyValue>,
    #[serde(
        rename = "droppedAttributesCount",
        alias = "dropped_attributes_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
struct JLink {
    #[serde(rename = "traceId", alias = "trace_id", default)]
    trace_id: JId,
    #[serde(rename = "spanId", alias = "span_id", default)]
    span_id: JId,
    #[serde(
        rename = "traceState",
        alias = "trace_state",
        default,
        deserialize_with = "string"
    )]
    trace_state: String,
    #[serde(default, deserialize_with = "seq")]
    attributes: Vec<JKeyValue>,
    #[serde(
        rename = "droppedAttributesCount",
        alias = "dropped_attributes_count",
        default,
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
}

#[derive(Deserialize)]
struct JStatus {
    #[serde(default, deserialize_with = "string")]
    message: String,
    #[serde(default, deserialize_with = "status_code")]
    code: i32,
}

#[derive(Deserialize)]
struct JKeyValue {
    #[serde(default, deserialize_with = "string")]
    key: String,
    #[serde(default)]
    value: Option<JAnyValue>,
}

#[derive(Deserialize)]
struct JAnyValue {
    #[serde(rename = "stringValue", alias = "string_value", default)]
    string_value: Option<String>,
    #[serde(rename = "boolValue", alias = "bool_value", default)]
    bool_value: Option<bool>,
    #[serde(
        rename = "intValue",
        alias = "int_value",
        default,
        deserialize_with = "opt_i64"
    )]
    int_value: Option<i64>,
    #[serde(
        rename = "doubleValue",
        alias = "double_value",
        default,
        deserialize_with = "opt_f64"
    )]
    double_value: Option<f64>,
    #[serde(rename = "arrayValue", alias = "array_value", default)]
    array_value: Option<JArrayValue>,
    #[serde(rename = "kvlistValue", alias = "kvlist_value", default)]
    kvlist_value: Option<JKvList>,
    #[serde(
        rename = "bytesValue",
        alias = "bytes_value",
        default,
        deserialize_with = "opt_base64"
    )]
    bytes_value: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct JArrayValue {
    #[serde(default, deserialize_with = "seq")]
    values: Vec<Option<JAnyValue>>,
}

#[derive(Deserialize)]
struct JKvList {
    #[serde(default, deserialize_with = "seq")]
    values: Vec<JKeyValue>,
}

/// A hex id as found in the JSON: empty, decoded, or not hex (rejects its span).
#[derive(Default)]
enum JId {
    #[default]
    Empty,
    Valid(Vec<u8>),
    Invalid(String),
}

impl<'de> Deserialize<'de> for JId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = JId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hex id string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<JId, E> {
                if s.is_empty() {
                    return Ok(JId::Empty);
                }
                Ok(match decode_hex(s) {
                    Some(bytes) => JId::Valid(bytes),
                    None => JId::Invalid(format!(
                        "{:?} is not a hex string",
                        s.chars().take(64).collect::<String>()
                    )),
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<JId, E> {
                Ok(JId::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<JId, E> {
                Ok(JId::Empty)
            }
        }
        d.deserialize_any(V)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// An integer given as a JSON number or a decimal string; `null` is absent.
enum Int {
    U(u64),
    I(i64),
}

fn lenient_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Int>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<Int>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or a decimal string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Int::U(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Int::I(v)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // serde_json hands out f64 only for numbers with a fraction or exponent, or
            // beyond 64 bits: accept exact small integers, refuse anything lossy.
            if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                Ok(Some(if v < 0.0 {
                    Int::I(v as i64)
                } else {
                    Int::U(v as u64)
                }))
            } else {
                Err(E::custom(format!("{v} is not an exact 64-bit integer")))
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Ok(u) = t.parse::<u64>() {
                Ok(Some(Int::U(u)))
            } else if let Ok(i) = t.parse::<i64>() {
                Ok(Some(Int::I(i)))
            } else {
                Err(E::custom(format!("{s:?} is not a decimal integer")))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match lenient_int(d)? {
        None => Ok(0),
        Some(Int::U(u)) => Ok(u),
        Some(Int::I(i)) => {
            u64::try_from(i).map_err(|_| de::Error::custom(format!("{i} is negative")))
        }
    }
}

fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u64_lenient(d)?;
    u32::try_from(v).map_err(|_| de::Error::custom(format!("{v} does not fit 32 bits")))
}

fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match lenient_int(d)? {
        None => Ok(None),
        Some(Int::I(i)) => Ok(Some(i)),
        Some(Int::U(u)) => i64::try_from(u)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{u} does not fit a signed 64-bit integer"))),
    }
}

fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            match s.trim() {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" | "+Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                t => t
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| E::custom(format!("{s:?} is not a number"))),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

fn opt_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(&s).ok())
        .map(Some)
        .ok_or_else(|| de::Error::custom("bytesValue is not base64"))
}

/// An enum given as an integer or by name; `names` maps a name to its number.
fn enum_value<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
    names: fn(&str) -> Option<i32>,
) -> Result<i32, D::Error> {
    struct V {
        what: &'static str,
        names: fn(&str) -> Option<i32>,
    }
    impl Visitor<'_> for V {
        type Value = i32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {} as an integer or a name", self.what)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<i32, E> {
            if let Ok(n) = s.trim().parse::<i32>() {
                return Ok(n);
            }
            (self.names)(s).ok_or_else(|| E::custom(format!("unknown {} {s:?}", self.what)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V { what, names })
}

fn span_kind<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(d, "span kind", |s| {
        span::SpanKind::from_str_name(s)
            .or_else(|| span::SpanKind::from_str_name(&format!("SPAN_KIND_{s}")))
            .map(|k| k as i32)
    })
}

fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    use crate::proto::status::StatusCode;
    enum_value(d, "status code", |s| {
        StatusCode::from_str_name(s)
            .or_else(|| StatusCode::from_str_name(&format!("STATUS_CODE_{s}")))
            .map(|c| c as i32)
    })
}

impl JRequest {
    fn into_decoded(self) -> DecodedRequest {
        let mut rejected = Vec::new();
        let mut index = 0usize;
        let resource_spans = self
            .resource_spans
            .into_iter()
            .map(|rs| ResourceSpans {
                resource: rs.resource.map(|r| Resource {
                    attributes: key_values(r.attributes),
                    dropped_attributes_count: r.dropped_attributes_count,
                    entity_refs: Vec::new(),
                }),
                scope_spans: rs
                    .scope_spans
                    .into_iter()
                    .map(|ss| ScopeSpans {
                        scope: ss.scope.map(|s| InstrumentationScope {
                            name: s.name,
                            version: s.version,
                            attributes: key_values(s.attributes),
                            dropped_attributes_count: s.dropped_attributes_count,
                        }),
                        spans: ss
                            .spans
                            .into_iter()
                            .map(|s| {
                                let span = s.into_span(index, &mut rejected);
                                index += 1;
                                span
                            })
                            .collect(),
                        schema_url: ss.schema_url,
                    })
                    .collect(),
                schema_url: rs.schema_url,
            })
            .collect();
        DecodedRequest {
            request: ExportTraceServiceRequest { resource_spans },
            rejected,
        }
    }
}

impl JSpan {
    fn into_span(self, index: usize, rejected: &mut Vec<SpanRejection>) -> Span {
        let mut problems = Vec::new();
        let mut first = None;
        let mut id = |field: &str, kind: RejectedField, id: JId| match id {
            JId::Empty => Vec::new(),
            JId::Valid(bytes) => bytes,
            JId::Invalid(why) => {
                first.get_or_insert(kind);
                problems.push(format!("{field} {why}"));
                Vec::new()
            }
        };
        let trace_id = id("traceId", RejectedField::TraceId, self.trace_id);
        let span_id = id("spanId", RejectedField::SpanId, self.span_id);
        let parent_span_id = id(
            "parentSpanId",
            RejectedField::ParentSpanId,
            self.parent_span_id,
        );
        let mut link_problem = None;
        let links = self
            .links
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let mut link_id = |field: &str, id: JId| match id {
                    JId::Empty => Vec::new(),
                    JId::Valid(bytes) => bytes,
                    JId::Invalid(why) => {
                        link_problem.get_or_insert(format!("links[{i}].{field} {why}"));
                        Vec::new()
                    }
                };
                span::Link {
                    trace_id: link_id("traceId", l.trace_id),
                    span_id: link_id("spanId", l.span_id),
                    trace_state: l.trace_state,
                    attributes: key_values(l.attributes),
                    dropped_attributes_count: l.dropped_attributes_count,
                    flags: l.flags,
                }
            })
            .collect();
        problems.extend(link_problem);
        if !problems.is_empty() {
            rejected.push(SpanRejection {
                index,
                field: first.unwrap_or(RejectedField::Other),
                reason: format!("span {index} ({:?}): {}", self.name, problems.join(", ")),
            });
        }
        Span {
            trace_id,
            span_id,
            trace_state: self.trace_state,
            parent_span_id,
            flags: self.flags,
            name: self.name,
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: key_values(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
            events: self
                .events
                .into_iter()
                .map(|e| span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name,
                    attributes: key_values(e.attributes),
                    dropped_attributes_count: e.dropped_attributes_count,
                })
                .collect(),
            dropped_events_count: self.dropped_events_count,
            links,
            dropped_links_count: self.dropped_links_count,
            status: self.status.map(|s| Status {
                message: s.message,
                code: s.code,
            }),
        }
    }
}

fn key_values(kvs: Vec<JKeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| KeyValue {
            key: kv.key,
            value: kv.value.map(JAnyValue::into_any_value),
            key_strindex: 0,
        })
        .collect()
}

impl JAnyValue {
    fn into_any_value(self) -> AnyValue {
        use any_value::Value;
        let value = if let Some(s) = self.string_value {
            Some(Value::StringValue(s))
        } else if let Some(b) = self.bool_value {
            Some(Value::BoolValue(b))
        } else if let Some(i) = self.int_value {
            Some(Value::IntValue(i))
        } else if let Some(d) = self.double_value {
            Some(Value::DoubleValue(d))
        } else if let Some(a) = self.array_value {
            Some(Value::ArrayValue(ArrayValue {
                values: a
                    .values
                    .into_iter()
                    .map(|v| v.map(JAnyValue::into_any_value).unwrap_or_default())
                    .collect(),
            }))
        } else if let Some(kv) = self.kvlist_value {
            Some(Value::KvlistValue(KeyValueList {
                values: key_values(kv.values),
            }))
        } else {
            self.bytes_value.map(Value::BytesValue)
        };
        AnyValue { value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_span(json: &str) -> DecodedRequest {
        let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{json}]}}]}}]}}"#);
        decode_json(body.as_bytes()).expect("decodes")
    }

    fn span_of(d: &DecodedRequest) -> &Span {
        &d.request.resource_spans[0].scope_spans[0].spans[0]
    }

    #[test]
    fn nineteen_digit_numbers_stay_exact() {
        let d = one_span(
            r#"{"traceId":"4BF92F3577B34DA6A3CE929D0E0E4736","spanId":"00f067aa0ba902b7",
               "startTimeUnixNano":1618884477123456789,"endTimeUnixNano":"1618884478123456789",
               "attributes":[{"key":"n","value":{"intValue":"9223372036854775807"}}]}"#,
        );
        let s = span_of(&d);
        assert_eq!(s.start_time_unix_nano, 1_618_884_477_123_456_789);
        assert_eq!(s.end_time_unix_nano, 1_618_884_478_123_456_789);
        assert_eq!(s.trace_id[0], 0x4b);
        assert_eq!(
            s.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(i64::MAX))
        );
    }

    #[test]
    fn enum_names_snake_case_nan_and_null() {
        let d = one_span(
            r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7",
               "kind":"SPAN_KIND_SERVER","status":{"code":"STATUS_CODE_ERROR","message":null},
               "start_time_unix_nano":5, "unknownField": {"x": 1},
               "attributes":[{"key":"nan","value":{"doubleValue":"NaN"}},
                             {"key":"inf","value":{"doubleValue":"-Infinity"}},
                             {"key":"nothing","value":null}], "events": null}"#,
        );
        let s = span_of(&d);
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        assert_eq!(s.start_time_unix_nano, 5);
        assert_eq!(s.trace_id.len(), 16);
        match s.attributes[0].value.as_ref().unwrap().value {
            Some(any_value::Value::DoubleValue(v)) => assert!(v.is_nan()),
            ref other => panic!("{other:?}"),
        }
        assert_eq!(
            s.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::DoubleValue(f64::NEG_INFINITY))
        );
        assert!(s.attributes[2].value.is_none());
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn a_non_hex_id_rejects_only_its_span() {
        let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"zz","spanId":"00f067aa0ba902b7","name":"bad"},
            {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7","name":"good"}
        ]}]}]}"#;
        let d = decode_json(body.as_bytes()).unwrap();
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].index, 0);
        assert!(
            d.rejected[0].reason.contains("traceId"),
            "{}",
            d.rejected[0].reason
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_json(b"{not json").is_err());
        assert!(decode_json(br#"{"resourceSpans":"nope"}"#).is_err());
        assert!(
            decode_json(b"{}")
                .unwrap()
                .request
                .resource_spans
                .is_empty()
        );
    }
}
