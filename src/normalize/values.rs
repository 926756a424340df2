//! Rendering and reading OTLP `AnyValue`s: strings stay as they are, everything else is
//! written as JSON text; numeric columns read ints, doubles and decimal strings.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::proto::{AnyValue, any_value::Value};

/// Appends `v` as map-value text: a string as itself, any other value JSON-encoded
/// (bytes as base64 text, an absent value as the empty string).
pub fn write_text(out: &mut String, v: &AnyValue) {
    match &v.value {
        None => {}
        Some(Value::StringValue(s)) => out.push_str(s),
        Some(Value::BytesValue(b)) => {
            base64::engine::general_purpose::STANDARD.encode_string(b, out)
        }
        Some(_) => write_json(out, v),
    }
}

/// Appends `v` as a JSON value.
pub fn write_json(out: &mut String, v: &AnyValue) {
    match &v.value {
        None => out.push_str("null"),
        Some(Value::StringValue(s)) => write_json_string(out, s),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        // A dictionary index (profiles only); traces never use it.
        Some(Value::StringValueStrindex(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(d)) => write_json_double(out, *d),
        Some(Value::BytesValue(b)) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, item) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, &item.key);
                out.push(':');
                match &item.value {
                    Some(v) => write_json(out, v),
                    None => out.push_str("null"),
                }
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
pub fn as_i64(v: &AnyValue) -> Option<i64> {
    match v.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.is_finite() && d.fract() == 0.0 => Some(*d as i64),
        Value::StringValue(s) => {
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
pub fn as_f64(v: &AnyValue) -> Option<f64> {
    match v.value.as_ref()? {
        Value::DoubleValue(d) => Some(*d),
        Value::IntValue(i) => Some(*i as f64),
        Value::StringValue(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ArrayValue, KeyValue, KeyValueList};

    fn v(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn text_of_values() {
        let mut s = String::new();
        write_text(&mut s, &v(Value::StringValue("a\"b".into())));
        assert_eq!(s, "a\"b");
        s.clear();
        write_text(&mut s, &v(Value::IntValue(200)));
        assert_eq!(s, "200");
        s.clear();
        write_text(
            &mut s,
            &v(Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key_strindex: 0,
                    key: "k\n".into(),
                    value: Some(v(Value::ArrayValue(ArrayValue {
                        values: vec![v(Value::BoolValue(true)), v(Value::DoubleValue(1.5))],
                    }))),
                }],
            })),
        );
        assert_eq!(s, r#"{"k\n":[true,1.5]}"#);
        let parsed: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed["k\n"][1], 1.5);
    }

    #[test]
    fn numbers_from_strings() {
        assert_eq!(as_i64(&v(Value::StringValue(" 42 ".into()))), Some(42));
        assert_eq!(as_i64(&v(Value::DoubleValue(3.0))), Some(3));
        assert_eq!(as_i64(&v(Value::DoubleValue(3.5))), None);
        assert_eq!(as_f64(&v(Value::StringValue("0.25".into()))), Some(0.25));
    }
}
