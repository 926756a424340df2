//! Wire: an OTLP `ExportTraceServiceRequest` walked straight from its protobuf bytes.
//!
//! Input: the decompressed body. Output: [`SpanVisitor`] calls whose ids, names, keys and
//! string values are slices of the body: no message, `String` or `Vec` is built per span
//! or per attribute. Invariants: a body is accepted exactly when prost would decode it
//! (wire types of known fields, lengths, varints, UTF-8 of every string field, nesting
//! depth, unknown fields skipped whole), and every value reads as prost would read it:
//! the last occurrence of a scalar wins, repeated fields concatenate, the occurrences of
//! a singular message merge field by field. A value given twice in one message where prost
//! merges the occurrences (a `KeyValue`'s `value`, an `AnyValue`'s `array_value` or
//! `kvlist_value`; never produced by an encoder) is not walked: [`WireError::Merged`]
//! sends the body to prost. The visitor may have been called before a later part of the
//! body is found bad; the caller then drops what it built.

use super::view::{Attr, EventRef, LinkRef, Nested, Parts, SpanRef, SpanVisitor, ValueRef};

/// Why a body was not walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body is not a valid protobuf request.
    #[error("{0}")]
    Bad(String),
    /// The body gives a value twice in one message where prost merges the two (a
    /// `KeyValue`'s `value`, an `AnyValue`'s `array_value` or `kvlist_value`): never
    /// produced by an encoder; the caller decodes such a body with prost instead.
    #[error("a value is given twice in one message")]
    Merged,
}

type Result<T> = std::result::Result<T, WireError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(WireError::Bad(what.into()))
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// prost's default recursion limit: nested messages deeper than this are refused.
const MAX_DEPTH: u32 = 100;

/// Reads a message's fields from the front of its bytes.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn more(&self) -> bool {
        !self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    break;
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() < 10 && self.buf.iter().all(|&b| b >= 0x80) {
            bad("the message ends inside a varint")
        } else {
            bad("a varint is longer than 64 bits")
        }
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        let Ok(key) = u32::try_from(key) else {
            return bad(format!("field key {key} is out of range"));
        };
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return bad(format!("unknown wire type {wire}"));
        }
        if key >> 3 == 0 {
            return bad("field number 0");
        }
        Ok((key >> 3, wire))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.buf.split_at_checked(n) {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(head)
            }
            None => bad(format!(
                "{what} needs {n} bytes, {} are left",
                self.buf.len()
            )),
        }
    }

    fn len_delimited(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(n, what)
    }

    fn fixed64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Skips a field this walker does not read, checking it is whole. Like prost, no field
    /// is skipped in a message at the nesting limit.
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<()> {
        if depth >= MAX_DEPTH {
            return bad("unknown fields nested too deep");
        }
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8, "a fixed64 field").map(drop),
            FIXED32 => self.take(4, "a fixed32 field").map(drop),
            LEN => self.len_delimited("a length-delimited field").map(drop),
            START_GROUP => loop {
                if !self.more() {
                    return bad(format!("group {field} is not closed"));
                }
                let (f, w) = self.key()?;
                if w == END_GROUP {
                    if f != field {
                        return bad(format!("group {field} is closed as {f}"));
                    }
                    return Ok(());
                }
                self.skip(f, w, depth + 1)?;
            },
            _ => bad(format!("an unexpected end of group {field}")),
        }
    }
}

/// Checks `wire` is what field `what` is encoded with.
fn want(wire: u8, expected: u8, what: &str) -> Result<()> {
    if wire == expected {
        Ok(())
    } else {
        bad(format!("{what} has wire type {wire}, not {expected}"))
    }
}

fn text<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(_) => bad(format!("{what} is not UTF-8")),
    }
}

fn string_field<'a>(r: &mut Reader<'a>, wire: u8, what: &str) -> Result<&'a str> {
    want(wire, LEN, what)?;
    text(r.len_delimited(what)?, what)
}

fn bytes_field<'a>(r: &mut Reader<'a>, wire: u8, what: &str) -> Result<&'a [u8]> {
    want(wire, LEN, what)?;
    r.len_delimited(what)
}

fn message_field<'a>(r: &mut Reader<'a>, wire: u8, depth: u32, what: &str) -> Result<&'a [u8]> {
    want(wire, LEN, what)?;
    if depth >= MAX_DEPTH {
        return bad(format!(
            "{what} is nested more than {MAX_DEPTH} messages deep"
        ));
    }
    r.len_delimited(what)
}

fn varint_field(r: &mut Reader<'_>, wire: u8, what: &str) -> Result<u64> {
    want(wire, VARINT, what)?;
    r.varint()
}

fn fixed64_field(r: &mut Reader<'_>, wire: u8, what: &str) -> Result<u64> {
    want(wire, FIXED64, what)?;
    r.fixed64(what)
}

fn fixed32_field(r: &mut Reader<'_>, wire: u8, what: &str) -> Result<()> {
    want(wire, FIXED32, what)?;
    r.take(4, what).map(drop)
}

/// Walks a whole request into `visitor`.
pub fn walk<'a>(body: &'a [u8], visitor: &mut impl SpanVisitor<'a>) -> Result<()> {
    let mut walker = Walker::default();
    let mut r = Reader::new(body);
    while r.more() {
        match r.key()? {
            (1, wire) => {
                let rs = message_field(&mut r, wire, 0, "resource_spans")?;
                walker.resource_spans(rs, visitor)?;
            }
            (field, wire) => r.skip(field, wire, 0)?,
        }
    }
    Ok(())
}

/// How many spans `body` holds, counted over the request's outer messages only (no span
/// is read): what builders for its rows are sized by. A malformed body counts the spans
/// before the fault ([`walk`] says what is wrong with it).
pub fn count_spans(body: &[u8]) -> usize {
    /// Calls `each` on the length-delimited fields numbered `number` of a message; false
    /// at the first fault (here or in `each`).
    fn fields(bytes: &[u8], number: u32, mut each: impl FnMut(&[u8]) -> bool) -> bool {
        let mut r = Reader::new(bytes);
        while r.more() {
            let Ok((field, wire)) = r.key() else {
                return false;
            };
            let whole = if field == number && wire == LEN {
                r.len_delimited("").is_ok_and(&mut each)
            } else {
                r.skip(field, wire, 0).is_ok()
            };
            if !whole {
                return false;
            }
        }
        true
    }
    let mut spans = 0;
    fields(body, 1, |rs| {
        fields(rs, 2, |ss| {
            fields(ss, 2, |_| {
                spans += 1;
                true
            })
        })
    });
    spans
}

/// Scratch vectors reused for the whole request.
#[derive(Default)]
struct Walker<'a> {
    resource: Vec<Attr<'a>>,
    parts: Parts<'a>,
}

impl<'a> Walker<'a> {
    fn resource_spans(
        &mut self,
        bytes: &'a [u8],
        visitor: &mut impl SpanVisitor<'a>,
    ) -> Result<()> {
        // The resource may follow its scopes in the bytes: read it first.
        self.resource.clear();
        let mut r = Reader::new(bytes);
        while r.more() {
            match r.key()? {
                (1, wire) => {
                    let resource = message_field(&mut r, wire, 1, "resource")?;
                    resource_attributes(resource, &mut self.resource)?;
                }
                (2, wire) => drop(message_field(&mut r, wire, 1, "scope_spans")?),
                (3, wire) => drop(string_field(&mut r, wire, "ResourceSpans.schema_url")?),
                (field, wire) => r.skip(field, wire, 1)?,
            }
        }
        visitor.resource(&self.resource);
        let mut r = Reader::new(bytes);
        while r.more() {
            match r.key()? {
                (2, wire) => {
                    let ss = message_field(&mut r, wire, 1, "scope_spans")?;
                    self.scope_spans(ss, visitor)?;
                }
                (field, wire) => r.skip(field, wire, 1)?,
            }
        }
        Ok(())
    }

    fn scope_spans(&mut self, bytes: &'a [u8], visitor: &mut impl SpanVisitor<'a>) -> Result<()> {
        let (mut name, mut version) = ("", "");
        let mut r = Reader::new(bytes);
        while r.more() {
            match r.key()? {
                (1, wire) => {
                    let scope = message_field(&mut r, wire, 2, "scope")?;
                    instrumentation_scope(scope, &mut name, &mut version)?;
                }
                (2, wire) => drop(message_field(&mut r, wire, 2, "spans")?),
                (3, wire) => drop(string_field(&mut r, wire, "ScopeSpans.schema_url")?),
                (field, wire) => r.skip(field, wire, 2)?,
            }
        }
        visitor.scope(name, version);
        let mut r = Reader::new(bytes);
        while r.more() {
            match r.key()? {
                (2, wire) => {
                    let span = message_field(&mut r, wire, 2, "spans")?;
                    self.span(span, visitor)?;
                }
                (field, wire) => r.skip(field, wire, 2)?,
            }
        }
        Ok(())
    }

    fn span(&mut self, bytes: &'a [u8], visitor: &mut impl SpanVisitor<'a>) -> Result<()> {
        const DEPTH: u32 = 3;
        let parts = &mut self.parts;
        parts.clear();
        let mut span = SpanRef::default();
        let mut r = Reader::new(bytes);
        while r.more() {
            match r.key()? {
                (1, w) => span.trace_id = bytes_field(&mut r, w, "Span.trace_id")?,
                (2, w) => span.span_id = bytes_field(&mut r, w, "Span.span_id")?,
                (3, w) => drop(string_field(&mut r, w, "Span.trace_state")?),
                (4, w) => span.parent_span_id = bytes_field(&mut r, w, "Span.parent_span_id")?,
                (5, w) => span.name = string_field(&mut r, w, "Span.name")?,
                (6, w) => span.kind = varint_field(&mut r, w, "Span.kind")? as i32,
                (7, w) => span.start = fixed64_field(&mut r, w, "Span.start_time_unix_nano")?,
                (8, w) => span.end = fixed64_field(&mut r, w, "Span.end_time_unix_nano")?,
                (9, w) => {
                    let kv = message_field(&mut r, w, DEPTH, "Span.attributes")?;
                    parts.attributes.push(key_value(kv, DEPTH + 1)?);
                }
                (10 | 12 | 14, w) => {
                    varint_field(&mut r, w, "a Span dropped count")?;
                }
                (11, w) => {
                    let event = message_field(&mut r, w, DEPTH, "Span.events")?;
                    let at = parts.nested.len();
                    let mut e = EventRef {
                        time: 0,
                        name: "",
                        attributes: at..at,
                    };
                    let mut er = Reader::new(event);
                    while er.more() {
                        match er.key()? {
                            (1, w) => e.time = fixed64_field(&mut er, w, "Event.time_unix_nano")?,
                            (2, w) => e.name = string_field(&mut er, w, "Event.name")?,
                            (3, w) => {
                                let kv = message_field(&mut er, w, DEPTH + 1, "Event.attributes")?;
                                parts.nested.push(key_value(kv, DEPTH + 2)?);
                            }
                            (4, w) => {
                                varint_field(&mut er, w, "Event.dropped_attributes_count")?;
                            }
                            (field, w) => er.skip(field, w, DEPTH + 1)?,
                        }
                    }
                    e.attributes = at..parts.nested.len();
                    parts.events.push(e);
                }
                (13, w) => {
                    let link = message_field(&mut r, w, DEPTH, "Span.links")?;
                    let at = parts.nested.len();
                    let mut l = LinkRef {
                        trace_id: &[],
                        span_id: &[],
                        trace_state: "",
                        attributes: at..at,
                    };
                    let mut lr = Reader::new(link);
                    while lr.more() {
                        match lr.key()? {
                            (1, w) => l.trace_id = bytes_field(&mut lr, w, "Link.trace_id")?,
                            (2, w) => l.span_id = bytes_field(&mut lr, w, "Link.span_id")?,
                            (3, w) => l.trace_state = string_field(&mut lr, w, "Link.trace_state")?,
                            (4, w) => {
                                let kv = message_field(&mut lr, w, DEPTH + 1, "Link.attributes")?;
                                parts.nested.push(key_value(kv, DEPTH + 2)?);
                            }
                            (5, w) => {
                                varint_field(&mut lr, w, "Link.dropped_attributes_count")?;
                            }
                            (6, w) => fixed32_field(&mut lr, w, "Link.flags")?,
                            (field, w) => lr.skip(field, w, DEPTH + 1)?,
                        }
                    }
                    l.attributes = at..parts.nested.len();
                    parts.links.push(l);
                }
                (15, w) => {
                    let status = message_field(&mut r, w, DEPTH, "Span.status")?;
                    let mut sr = Reader::new(status);
                    while sr.more() {
                        match sr.key()? {
                            (2, w) => {
                                span.status_message = string_field(&mut sr, w, "Status.message")?
                            }
                            (3, w) => {
                                span.status_code = varint_field(&mut sr, w, "Status.code")? as i32
                            }
                            (field, w) => sr.skip(field, w, DEPTH + 1)?,
                        }
                    }
                }
                (16, w) => fixed32_field(&mut r, w, "Span.flags")?,
                (field, w) => r.skip(field, w, DEPTH)?,
            }
        }
        visitor.span(&span, parts);
        Ok(())
    }
}

fn resource_attributes<'a>(bytes: &'a [u8], out: &mut Vec<Attr<'a>>) -> Result<()> {
    let mut r = Reader::new(bytes);
    while r.more() {
        match r.key()? {
            (1, wire) => {
                let kv = message_field(&mut r, wire, 2, "Resource.attributes")?;
                out.push(key_value(kv, 3)?);
            }
            (2, wire) => {
                varint_field(&mut r, wire, "Resource.dropped_attributes_count")?;
            }
            (3, wire) => entity_ref(message_field(&mut r, wire, 2, "Resource.entity_refs")?)?,
            (field, wire) => r.skip(field, wire, 2)?,
        }
    }
    Ok(())
}

/// Checks a resource's `EntityRef` (not stored) as prost would decode it.
fn entity_ref(bytes: &[u8]) -> Result<()> {
    const DEPTH: u32 = 3;
    let mut r = Reader::new(bytes);
    while r.more() {
        match r.key()? {
            (1..=4, wire) => drop(string_field(&mut r, wire, "an EntityRef string")?),
            (field, wire) => r.skip(field, wire, DEPTH)?,
        }
    }
    Ok(())
}

fn instrumentation_scope<'a>(
    bytes: &'a [u8],
    name: &mut &'a str,
    version: &mut &'a str,
) -> Result<()> {
    let mut r = Reader::new(bytes);
    while r.more() {
        match r.key()? {
            (1, wire) => *name = string_field(&mut r, wire, "InstrumentationScope.name")?,
            (2, wire) => *version = string_field(&mut r, wire, "InstrumentationScope.version")?,
            (3, wire) => {
                let kv = message_field(&mut r, wire, 3, "InstrumentationScope.attributes")?;
                key_value(kv, 4)?;
            }
            (4, wire) => {
                varint_field(
                    &mut r,
                    wire,
                    "InstrumentationScope.dropped_attributes_count",
                )?;
            }
            (field, wire) => r.skip(field, wire, 3)?,
        }
    }
    Ok(())
}

/// A `KeyValue` message at nesting `depth`.
fn key_value(bytes: &[u8], depth: u32) -> Result<Attr<'_>> {
    let mut attr = Attr {
        key: "",
        value: None,
    };
    let mut r = Reader::new(bytes);
    while r.more() {
        match r.key()? {
            (1, wire) => attr.key = string_field(&mut r, wire, "KeyValue.key")?,
            (2, wire) => {
                let value = message_field(&mut r, wire, depth, "KeyValue.value")?;
                if attr.value.is_some() {
                    return Err(WireError::Merged);
                }
                attr.value = Some(any_value(value, depth + 1)?);
            }
            (3, wire) => {
                varint_field(&mut r, wire, "KeyValue.key_strindex")?;
            }
            (field, wire) => r.skip(field, wire, depth)?,
        }
    }
    Ok(attr)
}

/// An `AnyValue` message at nesting `depth`; nested arrays and lists are checked whole.
fn any_value(bytes: &[u8], depth: u32) -> Result<ValueRef<'_>> {
    let mut value = ValueRef::Empty;
    let mut r = Reader::new(bytes);
    while r.more() {
        value = match r.key()? {
            (1, w) => ValueRef::Str(string_field(&mut r, w, "AnyValue.string_value")?),
            (2, w) => ValueRef::Bool(varint_field(&mut r, w, "AnyValue.bool_value")? != 0),
            (3, w) => ValueRef::Int(varint_field(&mut r, w, "AnyValue.int_value")? as i64),
            (4, w) => ValueRef::Double(f64::from_bits(fixed64_field(
                &mut r,
                w,
                "AnyValue.double_value",
            )?)),
            (5, w) => {
                let array = message_field(&mut r, w, depth, "AnyValue.array_value")?;
                if matches!(value, ValueRef::Array(_)) {
                    return Err(WireError::Merged);
                }
                check_items(array, depth + 1, false)?;
                ValueRef::Array(Nested::Wire(array))
            }
            (6, w) => {
                let list = message_field(&mut r, w, depth, "AnyValue.kvlist_value")?;
                if matches!(value, ValueRef::KvList(_)) {
                    return Err(WireError::Merged);
                }
                check_items(list, depth + 1, true)?;
                ValueRef::KvList(Nested::Wire(list))
            }
            (7, w) => ValueRef::Bytes(bytes_field(&mut r, w, "AnyValue.bytes_value")?),
            (8, w) => {
                ValueRef::Strindex(varint_field(&mut r, w, "AnyValue.string_value_strindex")? as i32)
            }
            (field, w) => {
                r.skip(field, w, depth)?;
                value
            }
        };
    }
    Ok(value)
}

/// Checks the items of an `ArrayValue` (`AnyValue`s) or a `KeyValueList` (`KeyValue`s).
fn check_items(bytes: &[u8], depth: u32, pairs: bool) -> Result<()> {
    let what = if pairs {
        "KeyValueList.values"
    } else {
        "ArrayValue.values"
    };
    let mut r = Reader::new(bytes);
    while r.more() {
        match r.key()? {
            (1, wire) => {
                let item = message_field(&mut r, wire, depth, what)?;
                if pairs {
                    key_value(item, depth + 1)?;
                } else {
                    any_value(item, depth + 1)?;
                }
            }
            (field, wire) => r.skip(field, wire, depth)?,
        }
    }
    Ok(())
}

/// A standalone `AnyValue` message.
pub fn value(bytes: &[u8]) -> Result<ValueRef<'_>> {
    any_value(bytes, 0)
}

/// The items of checked `ArrayValue` bytes.
pub fn array_items(bytes: &[u8]) -> impl Iterator<Item = ValueRef<'_>> {
    items(bytes).map(|item| any_value(item, 0).unwrap_or(ValueRef::Empty))
}

/// The pairs of checked `KeyValueList` bytes.
pub fn list_pairs(bytes: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    items(bytes).map(|item| {
        key_value(item, 0).unwrap_or(Attr {
            key: "",
            value: None,
        })
    })
}

/// The field-1 messages of checked bytes.
fn items(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut r = Reader::new(bytes);
    std::iter::from_fn(move || {
        while r.more() {
            match r.key() {
                Ok((1, LEN)) => return r.len_delimited("an item").ok(),
                Ok((field, wire)) if r.skip(field, wire, 0).is_ok() => {}
                _ => return None,
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::count_spans;
    use crate::decode::decode_protobuf;
    use crate::normalize::{normalize, normalize_protobuf};
    use crate::proto::{
        AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
        Status, any_value,
    };

    fn field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        crate::fake::kv(key, crate::fake::s(value))
    }

    fn span(id: u8) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            name: format!("s{id}"),
            start_time_unix_nano: 1_763_000_000_000_000_000,
            end_time_unix_nano: 1_763_000_001_000_000_000,
            attributes: vec![kv("gen_ai.request.model", "m"), kv("k", "v")],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        }
    }

    /// Both decoders on `body`: the same rows and rejections, or both refuse it.
    fn agree(body: &[u8]) -> bool {
        match (normalize_protobuf(body), decode_protobuf(body)) {
            (Ok(direct), Ok(decoded)) => {
                let prost = normalize(&decoded).unwrap();
                assert_eq!(direct.rejected, prost.rejected);
                assert_eq!(
                    direct.chunk.to_batch().unwrap(),
                    prost.chunk.to_batch().unwrap()
                );
                true
            }
            (Err(_), Err(_)) => false,
            (a, b) => panic!("direct {:?}, prost {:?}", a.err(), b.err()),
        }
    }

    #[test]
    fn fields_in_any_order_repeated_or_unknown_read_as_prost_reads_them() {
        let scope = ScopeSpans {
            spans: vec![span(1), span(2)],
            ..Default::default()
        }
        .encode_to_vec();
        let resource = |attrs: Vec<KeyValue>| {
            Resource {
                attributes: attrs,
                ..Default::default()
            }
            .encode_to_vec()
        };
        // The resource after its scopes, given twice (its attributes concatenate), and an
        // unknown field of every wire type.
        let mut rs = field(2, &scope);
        rs.extend(field(1, &resource(vec![kv("service.name", "a")])));
        rs.extend(field(99, b"unknown"));
        rs.extend([0xa0, 0x06, 0x05]); // field 100, varint
        rs.extend([0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 101, fixed64
        rs.extend([0xb5, 0x06, 1, 2, 3, 4]); // field 102, fixed32
        rs.extend(field(1, &resource(vec![kv("gen_ai.request.model", "r")])));
        // A span whose status comes in two parts (they merge) and whose name is given twice.
        let mut odd = span(3).encode_to_vec();
        odd.extend(field(
            15,
            &Status {
                code: 0,
                message: "second".into(),
            }
            .encode_to_vec(),
        ));
        odd.extend(field(5, b"renamed"));
        let mut scope2 = field(2, &odd);
        scope2.extend(field(1, b"")); // an empty scope
        rs.extend(field(2, &scope2));
        let body = field(1, &rs);
        assert!(agree(&body));
        let direct = normalize_protobuf(&body).unwrap().chunk.to_batch().unwrap();
        assert_eq!(direct.num_rows(), 3);
        assert_eq!(count_spans(&body), 3);
    }

    #[test]
    fn values_prost_merges_read_as_prost_reads_them() {
        let array = |items: &[&str]| {
            let values: Vec<AnyValue> = items
                .iter()
                .map(|s| AnyValue {
                    value: Some(any_value::Value::StringValue(s.to_string())),
                })
                .collect();
            AnyValue {
                value: Some(any_value::Value::ArrayValue(crate::proto::ArrayValue {
                    values,
                })),
            }
            .encode_to_vec()
        };
        // A KeyValue with two values, an AnyValue with two arrays; an entity ref and an
        // unknown field at the nesting limit beside them.
        let mut twice = field(1, b"k");
        twice.extend(field(2, &array(&["a"])));
        twice.extend(field(2, &array(&["b", "c"])));
        let mut two_arrays = field(1, b"k2");
        let mut value = array(&["x"]);
        value.extend(array(&["y"]));
        two_arrays.extend(field(2, &value));
        let mut span_bytes = span(1).encode_to_vec();
        span_bytes.extend(field(9, &twice));
        span_bytes.extend(field(9, &two_arrays));
        let mut rs = field(1, &field(3, &field(2, b"service")));
        rs.extend(field(2, &field(2, &span_bytes)));
        let body = field(1, &rs);
        assert!(agree(&body));
        let batch = normalize_protobuf(&body).unwrap().chunk.to_batch().unwrap();
        let attributes = format!("{:?}", batch.column_by_name("attributes").unwrap());
        assert!(
            attributes.contains(r#"[\"a\",\"b\",\"c\"]"#),
            "{attributes}"
        );
        // An EntityRef whose string is not UTF-8, refused by both.
        let bad_entity = field(1, &field(1, &field(3, &field(2, &[0xff]))));
        assert!(!agree(&bad_entity));
    }

    #[test]
    fn malformed_bodies_are_refused_by_both() {
        let good = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(1)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        assert!(agree(&good));
        for cut in 1..good.len() {
            agree(&good[..cut]);
        }
        // A name that is not UTF-8, a timestamp sent as a varint, a field number 0, a varint
        // past 64 bits, an unknown wire type.
        let mut bad_name = span(1).encode_to_vec();
        bad_name.extend(field(5, &[0xff, 0xfe]));
        let as_varint = [0x38, 0x01]; // field 7 with wire type 0
        for span_bytes in [bad_name, as_varint.to_vec(), vec![0x00, 0x01], vec![0x0f]] {
            let body = field(1, &field(2, &field(2, &span_bytes)));
            assert!(!agree(&body), "{span_bytes:?}");
        }
        let long_varint = [
            0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(!agree(&field(1, &field(2, &field(2, &long_varint)))));
        let err = normalize_protobuf(&field(1, &field(2, &field(2, &[0x38, 0x01]))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Span.start_time_unix_nano has wire type 0"),
            "{err}"
        );
    }

    #[test]
    fn nesting_past_the_limit_is_refused_like_prost() {
        let mut value = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for depth in 0..120 {
            value = AnyValue {
                value: Some(any_value::Value::ArrayValue(crate::proto::ArrayValue {
                    values: vec![value],
                })),
            };
            let mut s = span(1);
            s.attributes.push(KeyValue {
                key: "deep".into(),
                value: Some(value.clone()),
                ..Default::default()
            });
            let body = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![s],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec();
            let _ = (depth, agree(&body));
        }
    }
}
