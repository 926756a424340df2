//! View: OTLP spans as borrowed values, the one form `normalize` reads.
//!
//! Input: either protobuf bytes walked by [`super::wire`] (every id, name, key and string
//! value is a slice of the request) or prost messages (the JSON path, [`walk_request`]).
//! Output: calls on a [`SpanVisitor`], in request order: each resource, each of its scopes,
//! each of their spans. Invariants: nothing here allocates per value; a span's attributes,
//! events and links are lent to the visitor in scratch vectors reused from span to span;
//! nested values (arrays, key-value lists) stay in their source form, already checked, and
//! are rendered from it.

use std::ops::Range;

use crate::proto::{AnyValue, ExportTraceServiceRequest, KeyValue, any_value::Value};

/// An OTLP `AnyValue`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// An `AnyValue` with no value set.
    Empty,
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// `string_value_strindex` (profiles only; traces never use it).
    Strindex(i32),
    /// `array_value`.
    Array(Nested<'a>),
    /// `kvlist_value`.
    KvList(Nested<'a>),
}

/// The items of an array or key-value list value, in their source form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nested<'a> {
    /// The protobuf bytes of an `ArrayValue` or `KeyValueList`, checked when the request
    /// was walked.
    Wire(&'a [u8]),
    /// The values of a prost `ArrayValue`.
    Values(&'a [AnyValue]),
    /// The pairs of a prost `KeyValueList`.
    Pairs(&'a [KeyValue]),
}

impl<'a> ValueRef<'a> {
    /// The view of a prost `AnyValue`.
    pub fn of(v: &'a AnyValue) -> Self {
        match &v.value {
            None => ValueRef::Empty,
            Some(Value::StringValue(s)) => ValueRef::Str(s),
            Some(Value::BoolValue(b)) => ValueRef::Bool(*b),
            Some(Value::IntValue(i)) => ValueRef::Int(*i),
            Some(Value::DoubleValue(d)) => ValueRef::Double(*d),
            Some(Value::BytesValue(b)) => ValueRef::Bytes(b),
            Some(Value::StringValueStrindex(i)) => ValueRef::Strindex(*i),
            Some(Value::ArrayValue(a)) => ValueRef::Array(Nested::Values(&a.values)),
            Some(Value::KvlistValue(kv)) => ValueRef::KvList(Nested::Pairs(&kv.values)),
        }
    }
}

/// An attribute: its key and, unless the `value` field was absent, its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attr<'a> {
    /// The key.
    pub key: &'a str,
    /// The value; `None` when the `KeyValue` had no `value` field.
    pub value: Option<ValueRef<'a>>,
}

impl<'a> Attr<'a> {
    /// The view of a prost `KeyValue`.
    pub fn of(kv: &'a KeyValue) -> Self {
        Attr {
            key: &kv.key,
            value: kv.value.as_ref().map(ValueRef::of),
        }
    }
}

/// A span event; its attributes are a range of [`Parts::nested`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'a> {
    /// `time_unix_nano`.
    pub time: u64,
    /// `name`.
    pub name: &'a str,
    /// Where its attributes are in [`Parts::nested`].
    pub attributes: Range<usize>,
}

/// A span link; its attributes are a range of [`Parts::nested`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRef<'a> {
    /// `trace_id`.
    pub trace_id: &'a [u8],
    /// `span_id`.
    pub span_id: &'a [u8],
    /// `trace_state`.
    pub trace_state: &'a str,
    /// Where its attributes are in [`Parts::nested`].
    pub attributes: Range<usize>,
}

/// A span's repeated parts, in vectors reused from span to span.
#[derive(Debug, Default)]
pub struct Parts<'a> {
    /// The span's attributes.
    pub attributes: Vec<Attr<'a>>,
    /// Its events.
    pub events: Vec<EventRef<'a>>,
    /// Its links.
    pub links: Vec<LinkRef<'a>>,
    /// The attributes of its events and links.
    pub nested: Vec<Attr<'a>>,
}

impl Parts<'_> {
    /// Empties the vectors, keeping their capacity.
    pub fn clear(&mut self) {
        self.attributes.clear();
        self.events.clear();
        self.links.clear();
        self.nested.clear();
    }
}

/// A span, borrowed; absent fields read as their protobuf defaults.
#[derive(Debug, Clone, Default)]
pub struct SpanRef<'a> {
    /// `trace_id` bytes.
    pub trace_id: &'a [u8],
    /// `span_id` bytes.
    pub span_id: &'a [u8],
    /// `parent_span_id` bytes (empty for a root).
    pub parent_span_id: &'a [u8],
    /// `name`.
    pub name: &'a str,
    /// `kind`.
    pub kind: i32,
    /// `start_time_unix_nano`.
    pub start: u64,
    /// `end_time_unix_nano`.
    pub end: u64,
    /// `status.code`.
    pub status_code: i32,
    /// `status.message`.
    pub status_message: &'a str,
}

/// Receives a walked request.
pub trait SpanVisitor<'a> {
    /// The spans that follow belong to a resource with these attributes.
    fn resource(&mut self, attributes: &[Attr<'a>]);
    /// The spans that follow belong to this instrumentation scope (empty strings when the
    /// scope or its field is absent).
    fn scope(&mut self, name: &'a str, version: &'a str);
    /// One span with its attributes, events and links.
    fn span(&mut self, span: &SpanRef<'a>, parts: &Parts<'a>);
}

/// Walks a prost request: the form OTLP JSON is decoded into.
pub fn walk_request<'a>(
    request: &'a ExportTraceServiceRequest,
    visitor: &mut impl SpanVisitor<'a>,
) {
    let mut attrs: Vec<Attr<'a>> = Vec::new();
    let mut parts = Parts::default();
    for rs in &request.resource_spans {
        attrs.clear();
        if let Some(r) = &rs.resource {
            attrs.extend(r.attributes.iter().map(Attr::of));
        }
        visitor.resource(&attrs);
        for ss in &rs.scope_spans {
            let (name, version) = ss
                .scope
                .as_ref()
                .map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            visitor.scope(name, version);
            for span in &ss.spans {
                parts.clear();
                parts
                    .attributes
                    .extend(span.attributes.iter().map(Attr::of));
                for e in &span.events {
                    let at = parts.nested.len();
                    parts.nested.extend(e.attributes.iter().map(Attr::of));
                    parts.events.push(EventRef {
                        time: e.time_unix_nano,
                        name: &e.name,
                        attributes: at..parts.nested.len(),
                    });
                }
                for l in &span.links {
                    let at = parts.nested.len();
                    parts.nested.extend(l.attributes.iter().map(Attr::of));
                    parts.links.push(LinkRef {
                        trace_id: &l.trace_id,
                        span_id: &l.span_id,
                        trace_state: &l.trace_state,
                        attributes: at..parts.nested.len(),
                    });
                }
                let (status_code, status_message) = span
                    .status
                    .as_ref()
                    .map_or((0, ""), |s| (s.code, s.message.as_str()));
                let view = SpanRef {
                    trace_id: &span.trace_id,
                    span_id: &span.span_id,
                    parent_span_id: &span.parent_span_id,
                    name: &span.name,
                    kind: span.kind,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    status_code,
                    status_message,
                };
                visitor.span(&view, &parts);
            }
        }
    }
}
