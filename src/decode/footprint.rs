//! Footprint: how many bytes decoding and normalizing a body will hold, reckoned from its
//! bytes before any of it is decoded.
//!
//! Input: a decompressed request body and the shape its route decodes it as. Output: an
//! estimate, in bytes, of the peak that the decoded messages (prost structs, serde values),
//! the strings copied into them and the span rows of the chunk reach. Invariants: one
//! linear pass, no allocation beyond a stack bounded by the decoders' own nesting limits;
//! malformed input is counted as far as it goes (the decoder will refuse it, having
//! allocated no more than that). The estimate follows the structure, not the byte count:
//! 2 bytes of protobuf can become a 300-byte `Span`, 3 bytes of JSON a map node of
//! 600 bytes, which is what admission must see before the work, not after.

use std::mem::size_of;

use super::vendor::LogSpan;
use crate::proto::span::{Event, Link};
use crate::proto::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, Status,
};

/// What a span adds once normalized: its row in the chunk's builders and in the WAL
/// record's IPC form (about 34 columns of offsets, values and validity).
const SPAN_ROW: u64 = 256;
/// A `serde_json::Value` and its slot in a map or vector.
const JSON_VALUE: u64 = 64;
/// A `serde_json::Map` (a B-tree) holding at least one member: one node.
const JSON_MAP_NODE: u64 = 640;
/// Nesting deeper than the decoders accept (serde_json and prost both stop at 100–128)
/// ends the count: the body will be refused.
const MAX_DEPTH: usize = 128;

/// How a route decodes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OTLP protobuf into prost messages.
    Protobuf,
    /// OTLP JSON through typed structs into prost messages.
    OtlpJson,
    /// NeMo intake JSON: a `serde_json::Value` tree, rewritten into OTLP JSON values, then
    /// decoded as OTLP JSON.
    NemoJson,
    /// Respan / Keywords AI span logs: a `serde_json::Value` tree, then one span (or one
    /// reason) per item of the top-level array.
    SpanLogs,
}

/// The estimated bytes decoding `body` as `shape` holds at its peak.
pub fn footprint(shape: Shape, body: &[u8]) -> u64 {
    match shape {
        Shape::Protobuf => protobuf(body),
        Shape::OtlpJson | Shape::NemoJson | Shape::SpanLogs => json(shape, body),
    }
}

/// The OTLP messages whose decoding allocates, by the field that holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    /// An `ArrayValue`: a list of `AnyValue`.
    List,
    /// A `KeyValueList`: a list of `KeyValue`.
    KvList,
}

impl Msg {
    /// The message in field `field` of `self`, if that field holds one.
    fn child(self, field: u64) -> Option<Msg> {
        use Msg::*;
        Some(match (self, field) {
            (Request, 1) => ResourceSpans,
            (ResourceSpans, 1) => Resource,
            (ResourceSpans, 2) => ScopeSpans,
            (Resource, 1) | (Scope, 3) | (Span, 9) | (Event, 3) | (Link, 4) => KeyValue,
            (ScopeSpans, 1) => Scope,
            (ScopeSpans, 2) => Span,
            (Span, 11) => Event,
            (Span, 13) => Link,
            (Span, 15) => Status,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => List,
            (AnyValue, 6) => KvList,
            (List, 1) => AnyValue,
            (KvList, 1) => KeyValue,
            _ => return None,
        })
    }

    /// What one decoded instance holds, with the slack of the vector that grows to hold it
    /// (half again on average).
    fn cost(self) -> u64 {
        let grown = |n: usize| 3 * n as u64 / 2;
        match self {
            Msg::Request => 0,
            Msg::ResourceSpans => grown(size_of::<ResourceSpans>()),
            Msg::Resource => grown(size_of::<Resource>()),
            Msg::ScopeSpans => grown(size_of::<ScopeSpans>()),
            Msg::Scope => grown(size_of::<InstrumentationScope>()),
            Msg::Span => grown(size_of::<Span>()) + SPAN_ROW,
            Msg::Event => grown(size_of::<Event>()),
            Msg::Link => grown(size_of::<Link>()),
            Msg::Status => grown(size_of::<Status>()),
            // A list element may be either; count the larger.
            Msg::KeyValue | Msg::List | Msg::KvList => {
                grown(size_of::<KeyValue>().max(size_of::<AnyValue>()))
            }
            Msg::AnyValue => grown(size_of::<AnyValue>()),
        }
    }
}

/// Reads a base-128 varint at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn protobuf(body: &[u8]) -> u64 {
    let mut total = 0u64;
    // (message, end of its bytes); the request spans the body.
    let mut stack: Vec<(Msg, usize)> = vec![(Msg::Request, body.len())];
    let mut at = 0usize;
    while let Some(&(msg, end)) = stack.last() {
        if at >= end {
            stack.pop();
            continue;
        }
        let Some(key) = varint(body, &mut at) else {
            break;
        };
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                if varint(body, &mut at).is_none() {
                    break;
                }
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let Some(len) = varint(body, &mut at) else {
                    break;
                };
                let Some(field_end) = usize::try_from(len)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .filter(|e| *e <= end)
                else {
                    break;
                };
                match msg.child(field) {
                    Some(child) if stack.len() < MAX_DEPTH => {
                        total += child.cost();
                        stack.push((child, field_end));
                    }
                    Some(_) => break,
                    None => {
                        // A string or bytes field (or an unknown one, skipped): its copy.
                        total += len;
                        at = field_end;
                    }
                }
            }
            // A group (deprecated, but skipped by the decoder, which goes on after it): its
            // fields are counted as the enclosing message's, which only counts more.
            3 | 4 => {}
            _ => break,
        }
    }
    total
}

/// The JSON key that names a container, as far as its cost goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    ResourceSpans,
    ScopeSpans,
    Spans,
    Events,
    Links,
    Other,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"resourceSpans" | b"resource_spans" => Key::ResourceSpans,
            b"scopeSpans" | b"scope_spans" => Key::ScopeSpans,
            b"spans" => Key::Spans,
            b"events" => Key::Events,
            b"links" => Key::Links,
            _ => Key::Other,
        }
    }

    /// What an object under this key costs once decoded as OTLP (the typed struct and the
    /// prost message it becomes).
    fn otlp_object(self) -> u64 {
        let twice = |n: usize| 2 * n as u64;
        match self {
            Key::ResourceSpans => twice(size_of::<ResourceSpans>()),
            Key::ScopeSpans => twice(size_of::<ScopeSpans>()),
            Key::Spans => twice(size_of::<Span>()) + SPAN_ROW,
            Key::Events => twice(size_of::<Event>()),
            Key::Links => twice(size_of::<Link>()),
            Key::Other => twice(size_of::<KeyValue>() + size_of::<AnyValue>()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Container {
    array: bool,
    key: Key,
    depth: usize,
}

fn json(shape: Shape, body: &[u8]) -> u64 {
    let values = shape != Shape::OtlpJson;
    // A value: its serde_json node where the route parses into values.
    let value_cost = if values { JSON_VALUE } else { 0 };
    let mut total = 0u64;
    let mut stack: Vec<Container> = Vec::new();
    let mut pending_key = Key::Other;
    let mut at = 0usize;
    let n = body.len();
    while at < n {
        let b = body[at];
        match b {
            b'"' => {
                let start = at + 1;
                at = start;
                // To the closing quote, stepping over escapes (a vectorized search: the
                // strings are most of an OTLP JSON body).
                while at < n {
                    match memchr::memchr2(b'"', b'\\', &body[at..]) {
                        Some(i) if body[at + i] == b'\\' => at += i + 2,
                        Some(i) => {
                            at += i;
                            break;
                        }
                        None => at = n,
                    }
                }
                let text = &body[start..at.min(n)];
                at += 1;
                while at < n && body[at].is_ascii_whitespace() {
                    at += 1;
                }
                if at < n && body[at] == b':' && stack.last().is_some_and(|c| !c.array) {
                    pending_key = if text.contains(&b'\\') {
                        // An escaped key names what its unescaped text names.
                        serde_json::from_slice::<String>(&body[start - 1..start + text.len() + 1])
                            .map_or(Key::Other, |k| Key::of(k.as_bytes()))
                    } else {
                        Key::of(text)
                    };
                    at += 1;
                    // The key is a String in a map (values) or nothing (typed structs).
                    total += if values { text.len() as u64 } else { 0 };
                } else {
                    total += 2 * text.len() as u64 + value_cost;
                    top_level_item(shape, &stack, &mut total);
                }
                continue;
            }
            b'{' | b'[' => {
                let parent = stack.last().copied();
                let key = match parent {
                    Some(p) if p.array => p.key,
                    _ => std::mem::replace(&mut pending_key, Key::Other),
                };
                top_level_item(shape, &stack, &mut total);
                if b == b'{' {
                    total += key.otlp_object();
                    if values {
                        total += JSON_MAP_NODE + JSON_VALUE;
                    }
                } else {
                    total += value_cost;
                }
                let depth = stack.len() + 1;
                if depth > MAX_DEPTH {
                    break;
                }
                stack.push(Container {
                    array: b == b'[',
                    key,
                    depth,
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b',' | b':' => {}
            c if c.is_ascii_whitespace() => {}
            _ => {
                // A number, true, false or null.
                while at < n
                    && !matches!(body[at], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                {
                    at += 1;
                }
                total += value_cost;
                top_level_item(shape, &stack, &mut total);
                continue;
            }
        }
        at += 1;
    }
    match shape {
        // Rewritten into OTLP JSON values (a flat attribute becomes a key/value object and
        // a value object), then decoded as OTLP JSON.
        Shape::NemoJson => 3 * total,
        _ => total,
    }
}

/// An item of the top-level array of span logs becomes a span or the reason it is refused.
fn top_level_item(shape: Shape, stack: &[Container], total: &mut u64) {
    if shape == Shape::SpanLogs && stack.last().is_some_and(|c| c.array && c.depth == 1) {
        *total += (size_of::<Result<LogSpan, String>>() + 64) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::proto::ExportTraceServiceRequest;

    fn request_of_empty_spans(n: usize) -> Vec<u8> {
        let mut spans = Vec::new();
        for _ in 0..n {
            spans.extend_from_slice(&[0x12, 0x00]); // ScopeSpans.spans: an empty Span
        }
        // ResourceSpans { scope_spans (2): ScopeSpans { spans } }
        let resource_spans = [vec![0x12], varint_bytes(spans.len()), spans].concat();
        [
            vec![0x0a],
            varint_bytes(resource_spans.len()),
            resource_spans,
        ]
        .concat()
    }

    fn varint_bytes(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn empty_protobuf_spans_count_as_the_spans_they_decode_to() {
        let body = request_of_empty_spans(1000);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1000);
        let estimate = footprint(Shape::Protobuf, &body);
        assert!(
            estimate >= 1000 * size_of::<Span>() as u64,
            "{estimate} for {} bytes",
            body.len()
        );
        assert!(estimate / body.len() as u64 > 100);
    }

    #[test]
    fn ordinary_requests_stay_within_a_small_factor_of_their_size() {
        for shape in [
            crate::fake::Shape::Microservice,
            crate::fake::Shape::LlmAgent,
        ] {
            let request = crate::fake::shaped(shape, 200, 7, 1_700_000_000_000_000_000);
            let body = request.encode_to_vec();
            let ratio = footprint(Shape::Protobuf, &body) as f64 / body.len() as f64;
            assert!(
                (0.5..12.0).contains(&ratio),
                "{shape:?}: protobuf ×{ratio:.1}"
            );
        }
        let json = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/otlp_json/spec-example.json"
        ))
        .unwrap();
        let ratio = footprint(Shape::OtlpJson, &json) as f64 / json.len() as f64;
        assert!((0.5..12.0).contains(&ratio), "OTLP JSON ×{ratio:.1}");
    }

    #[test]
    fn json_made_of_tiny_containers_is_counted_per_container() {
        let body = format!("[{}0]", "{\"a\":1},".repeat(1000));
        let estimate = footprint(Shape::SpanLogs, body.as_bytes());
        assert!(estimate >= 1000 * JSON_MAP_NODE, "{estimate}");
        let zeros = format!("[{}0]", "0,".repeat(1000));
        let items = footprint(Shape::SpanLogs, zeros.as_bytes());
        assert!(items >= 1000 * size_of::<Result<LogSpan, String>>() as u64);
        let spans = format!(
            "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{}{{}}]}}]}}]}}",
            "{},".repeat(1000)
        );
        let estimate = footprint(Shape::OtlpJson, spans.as_bytes());
        assert!(estimate >= 1000 * size_of::<Span>() as u64, "{estimate}");
    }

    #[test]
    fn nesting_beyond_the_decoders_limit_ends_the_count() {
        let deep = "[".repeat(1 << 20);
        assert!(footprint(Shape::OtlpJson, deep.as_bytes()) < 1 << 20);
    }

    #[test]
    fn a_group_before_the_spans_does_not_end_the_count() {
        // An unknown field 99 as an empty group, which the decoder skips and goes on.
        let body = [vec![0x9b, 0x06, 0x9c, 0x06], request_of_empty_spans(1000)].concat();
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1000);
        assert!(footprint(Shape::Protobuf, &body) >= 1000 * size_of::<Span>() as u64);
    }

    #[test]
    fn key_value_lists_count_their_values_as_messages() {
        use crate::proto::{AnyValue, KeyValueList, any_value::Value as V};
        let empty_array = || AnyValue {
            value: Some(V::ArrayValue(Default::default())),
        };
        let kvlist = AnyValue {
            value: Some(V::KvlistValue(KeyValueList {
                values: (0..1000)
                    .map(|_| KeyValue {
                        key: String::new(),
                        value: Some(empty_array()),
                        key_strindex: 0,
                    })
                    .collect(),
            })),
        };
        let mut span = Span::default();
        span.attributes.push(KeyValue {
            key: "k".into(),
            value: Some(kvlist),
            key_strindex: 0,
        });
        let request = crate::proto::ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        assert!(footprint(Shape::Protobuf, &body) >= 1000 * 2 * size_of::<AnyValue>() as u64);
    }

    #[test]
    fn an_escaped_key_counts_as_the_key_it_spells() {
        let spans = format!(
            "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"sp\\u0061ns\":[{}{{}}]}}]}}]}}",
            "{},".repeat(1000)
        );
        let estimate = footprint(Shape::OtlpJson, spans.as_bytes());
        assert!(estimate >= 1000 * size_of::<Span>() as u64, "{estimate}");
    }
}
