//! Arrow rows → JSON: strings, numbers, booleans as themselves, dictionary values as their
//! value, timestamps as RFC 3339 (UTC, `Z`), maps as objects, lists and structs as arrays and objects; any
//! other type as its display text. NaN and infinities become `null` (JSON has none).

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, RecordBatch,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray,
};
use arrow::datatypes::{
    DataType, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};

/// RFC 3339 text of a nanosecond timestamp.
pub fn timestamp_text(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The JSON value of `array[i]`.
pub fn value(array: &ArrayRef, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Utf8 => json!(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(i)),
        DataType::Utf8View => json!(array.as_string_view().value(i)),
        DataType::Boolean => json!(
            array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|a| a.value(i))
        ),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => json!(array.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => json!(array.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => json!(array.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => json!(array.as_primitive::<UInt64Type>().value(i)),
        DataType::Float32 => array
            .as_any()
            .downcast_ref::<Float32Array>()
            .map_or(Value::Null, |a| float(a.value(i) as f64)),
        DataType::Float64 => array
            .as_any()
            .downcast_ref::<Float64Array>()
            .map_or(Value::Null, |a| float(a.value(i))),
        DataType::Timestamp(unit, _) => {
            let ns = match unit {
                TimeUnit::Nanosecond => array
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .map(|a| a.value(i)),
                TimeUnit::Microsecond => array
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .map(|a| a.value(i) * 1_000),
                TimeUnit::Millisecond => array
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .map(|a| a.value(i) * 1_000_000),
                TimeUnit::Second => array
                    .as_any()
                    .downcast_ref::<TimestampSecondArray>()
                    .map(|a| a.value(i) * 1_000_000_000),
            };
            ns.map_or(Value::Null, |ns| json!(timestamp_text(ns)))
        }
        DataType::Dictionary(key_type, _) => {
            let d = array.as_any_dictionary();
            dictionary_key(d.keys(), key_type, i).map_or(Value::Null, |k| value(d.values(), k))
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            let entries = map.value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut obj = Map::new();
            for j in 0..entries.len() {
                let key = match value(keys, j) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, value(values, j));
            }
            Value::Object(obj)
        }
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(i);
            Value::Array((0..items.len()).map(|j| value(&items, j)).collect())
        }
        DataType::LargeList(_) => {
            let items = array.as_list::<i64>().value(i);
            Value::Array((0..items.len()).map(|j| value(&items, j)).collect())
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), value(c, i)))
                    .collect(),
            )
        }
        _ => ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
            .map_or(Value::Null, |f| json!(f.value(i).to_string())),
    }
}

/// The key of row `i` of a dictionary's `keys` (of type `key_type`).
fn dictionary_key(keys: &dyn Array, key_type: &DataType, i: usize) -> Option<usize> {
    let key = match key_type {
        DataType::Int8 => keys.as_primitive::<Int8Type>().value(i) as i64,
        DataType::Int16 => keys.as_primitive::<Int16Type>().value(i) as i64,
        DataType::Int32 => keys.as_primitive::<Int32Type>().value(i) as i64,
        DataType::Int64 => keys.as_primitive::<Int64Type>().value(i),
        DataType::UInt8 => keys.as_primitive::<UInt8Type>().value(i) as i64,
        DataType::UInt16 => keys.as_primitive::<UInt16Type>().value(i) as i64,
        DataType::UInt32 => keys.as_primitive::<UInt32Type>().value(i) as i64,
        DataType::UInt64 => i64::try_from(keys.as_primitive::<UInt64Type>().value(i)).ok()?,
        _ => return None,
    };
    usize::try_from(key).ok()
}

/// Row `i` of `batch` as a JSON object keyed by column name.
pub fn row(batch: &RecordBatch, i: usize) -> Map<String, Value> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), value(c, i)))
        .collect()
}

/// Every row of `batches` as a JSON object keyed by column name.
pub fn rows(batches: &[RecordBatch]) -> Vec<Map<String, Value>> {
    let mut rows = CappedRows::new(usize::MAX);
    for batch in batches {
        rows.push(batch);
    }
    rows.into_rows()
}

/// Rows as JSON objects, added batch by batch, holding at most about `limit` bytes of
/// their JSON text.
pub struct CappedRows {
    rows: Vec<Map<String, Value>>,
    size: usize,
    limit: usize,
}

impl CappedRows {
    /// No rows yet, at most `limit` bytes of text.
    pub fn new(limit: usize) -> Self {
        Self {
            rows: Vec::new(),
            size: 0,
            limit,
        }
    }

    /// Adds the rows of `batch`; `false` once their text would pass the limit (rendering
    /// stops at that row, so memory stays near the limit).
    pub fn push(&mut self, batch: &RecordBatch) -> bool {
        for i in 0..batch.num_rows() {
            let row = row(batch, i);
            self.size = row
                .iter()
                .map(|(k, v)| k.len() + 4 + text_len(v))
                .fold(self.size.saturating_add(2), usize::saturating_add);
            if self.size > self.limit {
                return false;
            }
            self.rows.push(row);
        }
        true
    }

    /// The rows added.
    pub fn into_rows(self) -> Vec<Map<String, Value>> {
        self.rows
    }
}

/// At least the length of `v` as JSON text (numbers count 20).
fn text_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        // Quotes and backslashes gain one byte escaped, control characters five.
        Value::String(s) => s.bytes().fold(s.len() + 2, |n, b| match b {
            b'"' | b'\\' => n + 1,
            0..0x20 => n + 5,
            _ => n,
        }),
        Value::Array(a) => a.iter().map(|v| text_len(v) + 1).sum::<usize>() + 2,
        Value::Object(o) => {
            o.iter()
                .map(|(k, v)| k.len() + 4 + text_len(v))
                .sum::<usize>()
                + 2
        }
    }
}
