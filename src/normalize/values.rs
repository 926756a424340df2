//! Rendering and reading OTLP `AnyValue`s: strings stay as they are, everything else is
//! written as JSON text; numeric columns read ints, doubles and decimal strings.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::decode::view::{Nested, ValueRef};
use crate::decode::wire;

/// Appends `v` as map-value text: a string as itself, any other value JSON-encoded
/// (bytes as base64 text, an absent value as the empty string).
pub fn write_text(out: &mut String, v: ValueRef<'_>) {
    match v {
        ValueRef::Empty => {}
        ValueRef::Str(s) => out.push_str(s),
        ValueRef::Bytes(b) => base64::engine::general_purpose::STANDARD.encode_string(b, out),
        _ => write_json(out, v),
    }
}

/// Appends `v` as a JSON value.
pub fn write_json(out: &mut String, v: ValueRef<'_>) {
    match v {
        ValueRef::Empty => out.push_str("null"),
        ValueRef::Str(s) => write_json_string(out, s),
        ValueRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        ValueRef::Int(i) => {
            let _ = write!(out, "{i}");
        }
        // A dictionary index (profiles only); traces never use it.
        ValueRef::Strindex(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Double(d) => write_json_double(out, d),
        ValueRef::Bytes(b) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        ValueRef::Array(items) => {
            out.push('[');
            let mut item = |i: usize, v: ValueRef<'_>| {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, v);
            };
            match items {
                Nested::Wire(bytes) => wire::array_items(bytes)
                    .enumerate()
                    .for_each(|(i, v)| item(i, v)),
                Nested::Values(values) => values
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| item(i, ValueRef::of(v))),
                Nested::Pairs(_) => {}
            }
            out.push(']');
        }
        ValueRef::KvList(pairs) => {
            out.push('{');
            let mut pair = |i: usize, key: &str, v: Option<ValueRef<'_>>| {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, key);
                out.push(':');
                match v {
                    Some(v) => write_json(out, v),
                    None => out.push_str("null"),
                }
            };
            match pairs {
                Nested::Wire(bytes) => wire::list_pairs(bytes)
                    .enumerate()
                    .for_each(|(i, a)| pair(i, a.key, a.value)),
                Nested::Pairs(kvs) => kvs
                    .iter()
                    .enumerate()
                    .for_each(|(i, kv)| pair(i, &kv.key, kv.value.as_ref().map(ValueRef::of))),
                Nested::Values(_) => {}
            }
            out.push('}');
        }
    }
}

/// A double as JSON; NaN and infinities (which JSON cannot hold) as their OTLP JSON strings.
fn write_json_double(out: &mut String, d: f64) {
    if d.is_nan() {
        out.push_str("\"NaN\"");
    } else if d == f64::INFINITY {
        out.push_str("\"Infinity\"");
    } else if d == f64::NEG_INFINITY {
        out.push_str("\"-Infinity\"");
    } else {
        let _ = write!(out, "{d}");
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// An integer from an int, an integral double, or a decimal string.
pub fn as_i64(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Int(i) => Some(i),
        ValueRef::Double(d) if d.is_finite() && d.fract() == 0.0 => Some(d as i64),
        ValueRef::Str(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && d.fract() == 0.0)
                    .map(|d| d as i64)
            })
        }
        _ => None,
    }
}

/// A float from a double, an int, or a decimal string.
pub fn as_f64(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Double(d) => Some(d),
        ValueRef::Int(i) => Some(i as f64),
        ValueRef::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value};

    fn v(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn text_of_values() {
        let mut s = String::new();
        write_text(&mut s, ValueRef::of(&v(Value::StringValue("a\"b".into()))));
        assert_eq!(s, "a\"b");
        s.clear();
        write_text(&mut s, ValueRef::of(&v(Value::IntValue(200))));
        assert_eq!(s, "200");
        s.clear();
        let list = v(Value::KvlistValue(KeyValueList {
            values: vec![KeyValue {
                key_strindex: 0,
                key: "k\n".into(),
                value: Some(v(Value::ArrayValue(ArrayValue {
                    values: vec![v(Value::BoolValue(true)), v(Value::DoubleValue(1.5))],
                }))),
            }],
        }));
        write_text(&mut s, ValueRef::of(&list));
        assert_eq!(s, r#"{"k\n":[true,1.5]}"#);
        // The same value from its protobuf bytes renders alike.
        let bytes = prost::Message::encode_to_vec(&list);
        let mut wire_text = String::new();
        let walked = crate::decode::wire::value(&bytes).unwrap();
        write_text(&mut wire_text, walked);
        assert_eq!(wire_text, s);
        let parsed: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed["k\n"][1], 1.5);
    }

    #[test]
    fn numbers_from_strings() {
        assert_eq!(
            as_i64(ValueRef::of(&v(Value::StringValue(" 42 ".into())))),
            Some(42)
        );
        assert_eq!(as_i64(ValueRef::of(&v(Value::DoubleValue(3.0)))), Some(3));
        assert_eq!(as_i64(ValueRef::of(&v(Value::DoubleValue(3.5)))), None);
        assert_eq!(
            as_f64(ValueRef::of(&v(Value::StringValue("0.25".into())))),
            Some(0.25)
        );
    }
}
