//! Arrow ↔ PostgreSQL values for the wire protocol.
//!
//! Input: Arrow schemas and batches of answers; parameter bytes of a `Bind`. Output: the
//! PostgreSQL type of each column, `DataRow`s in text or binary format, and parameters as
//! DataFusion scalars. Invariants: a column is encoded by the PostgreSQL type announced for
//! it, casting the Arrow column to that type's canonical Arrow type first (so an answer
//! whose Arrow type differs from the planned one still matches its description);
//! timestamps are `timestamptz` (UTC), maps, structs and lists are `jsonb` (the JSON the
//! SQL route answers), anything else without a PostgreSQL equivalent is its display text;
//! a value that does not fit its type is an error, never a silent null.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampNanosecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::scalar::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use postgres_types::FromSql;

use super::errors::error;
use crate::api::json;

/// The PostgreSQL type an Arrow column is sent as.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 | DataType::Decimal32(..) | DataType::Decimal64(..) => Type::FLOAT8,
        DataType::Decimal128(..) | DataType::Decimal256(..) => Type::FLOAT8,
        DataType::Timestamp(..) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Map(..)
        | DataType::Struct(_)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..) => Type::JSONB,
        DataType::Dictionary(_, value) => pg_type(value),
        _ => Type::TEXT,
    }
}

/// The Arrow type a value of PostgreSQL type `t` is read as (a parameter) and cast to
/// before it is written (a column), where one fits.
fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 | Type::NUMERIC => DataType::Float64,
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Type::DATE => DataType::Date32,
        Type::BYTEA => DataType::Binary,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::JSONB => {
            DataType::Utf8
        }
        _ => return None,
    })
}

/// The fields of an answer of `schema`, each in the format `format` asks for (text when
/// none does).
pub fn fields(schema: &Schema, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
    if let Some(format) = format {
        check_formats(format, schema.fields().len(), "result columns")?;
    }
    Ok(schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = format.map_or(FieldFormat::Text, |fmt| fmt.format_for(i));
            FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format)
        })
        .collect())
}

/// A `Bind`'s format codes fit `n` values: none, one for all, or one each.
fn check_formats(format: &Format, n: usize, what: &str) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != n => Err(error(
            "08P01",
            format!(
                "bind message has {} format codes for {n} {what}",
                codes.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Encodes batches as `DataRow`s of the fields they were described with.
pub struct RowEncoder {
    fields: Arc<Vec<FieldInfo>>,
    encoder: DataRowEncoder,
}

impl RowEncoder {
    /// An encoder for answers described by `fields`.
    pub fn new(fields: Arc<Vec<FieldInfo>>) -> Self {
        let encoder = DataRowEncoder::new(fields.clone());
        Self { fields, encoder }
    }

    /// Every row of `batch`.
    pub fn rows(&mut self, batch: &RecordBatch) -> PgWireResult<Vec<DataRow>> {
        if batch.num_columns() != self.fields.len() {
            return Err(error(
                "XX000",
                format!(
                    "the answer has {} columns where {} were described",
                    batch.num_columns(),
                    self.fields.len()
                ),
            ));
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.fields.iter())
            .map(|(c, f)| Column::new(c, f.datatype()))
            .collect::<PgWireResult<Vec<_>>>()?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            for column in &columns {
                column.encode(&mut self.encoder, i)?;
            }
            rows.push(self.encoder.take_row());
        }
        Ok(rows)
    }
}

/// One column of a batch, cast to the canonical Arrow type of its PostgreSQL type.
enum Column<'a> {
    Native(ArrayRef, Type),
    /// Text of any other Arrow type (intervals, durations, times, …).
    Display(ArrayFormatter<'a>, &'a ArrayRef),
    /// `jsonb`: the JSON of each value.
    Json(&'a ArrayRef),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef, t: &Type) -> PgWireResult<Self> {
        let string = matches!(
            plain(array.data_type()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        let target = match (t, arrow_type(t)) {
            (&Type::JSONB, _) => return Ok(Self::Json(array)),
            (&Type::TEXT, _) if !string => None,
            (_, target) => target,
        };
        let Some(target) = target else {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &DISPLAY)
                .map_err(|e| error("XX000", e.to_string()))?;
            return Ok(Self::Display(formatter, array));
        };
        let cast = cast_with_options(
            array,
            &target,
            &CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| {
            error(
                "22003",
                format!("a value does not fit PostgreSQL's {}: {e}", t.name()),
            )
        })?;
        Ok(Self::Native(cast, t.clone()))
    }

    fn encode(&self, out: &mut DataRowEncoder, i: usize) -> PgWireResult<()> {
        match self {
            Self::Native(array, t) => {
                if array.is_null(i) {
                    return out.encode_field(&None::<i8>);
                }
                match *t {
                    Type::BOOL => out.encode_field(&array.as_boolean().value(i)),
                    Type::INT2 => out.encode_field(&array.as_primitive::<Int16Type>().value(i)),
                    Type::INT4 => out.encode_field(&array.as_primitive::<Int32Type>().value(i)),
                    Type::INT8 => out.encode_field(&array.as_primitive::<Int64Type>().value(i)),
                    Type::FLOAT4 => out.encode_field(&array.as_primitive::<Float32Type>().value(i)),
                    Type::FLOAT8 => out.encode_field(&array.as_primitive::<Float64Type>().value(i)),
                    Type::TIMESTAMPTZ => {
                        let ns = array.as_primitive::<TimestampNanosecondType>().value(i);
                        out.encode_field(&DateTime::<Utc>::from_timestamp_nanos(ns))
                    }
                    Type::DATE => {
                        let days = array.as_primitive::<Date32Type>().value(i);
                        let date = NaiveDate::from_epoch_days(days)
                            .ok_or_else(|| error("22008", format!("date {days} out of range")))?;
                        out.encode_field(&date)
                    }
                    Type::BYTEA => out.encode_field(&array.as_binary::<i32>().value(i)),
                    _ => out.encode_field(&array.as_string::<i32>().value(i)),
                }
            }
            Self::Display(formatter, array) => {
                if array.is_null(i) {
                    return out.encode_field(&None::<i8>);
                }
                out.encode_field(&formatter.value(i).to_string())
            }
            Self::Json(array) => {
                if array.is_null(i) {
                    return out.encode_field(&None::<i8>);
                }
                out.encode_field(&json::value(array, i))
            }
        }
    }
}

static DISPLAY: FormatOptions<'static> = FormatOptions::new();

/// A dictionary's value type; any other type as it is.
fn plain(data_type: &DataType) -> &DataType {
    match data_type {
        DataType::Dictionary(_, value) => plain(value),
        other => other,
    }
}

/// The parameters of a `Bind`, `$1` first, as DataFusion scalars of the types the query
/// planned for them (`planned`, `None` where it could not tell) — read in the formats and
/// declared types (`declared`, from `Parse`) the client sent them with.
pub fn parameters(
    values: &[Option<Bytes>],
    format: &Format,
    declared: &[Option<Type>],
    planned: &[Option<DataType>],
) -> PgWireResult<Vec<ScalarValue>> {
    check_formats(format, values.len(), "parameters")?;
    if values.len() != planned.len() {
        return Err(error(
            "08P01",
            format!(
                "bind message supplies {} parameters, but the statement has {}",
                values.len(),
                planned.len()
            ),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let declared = declared.get(i).cloned().flatten();
            let target = planned[i]
                .clone()
                .or_else(|| declared.as_ref().and_then(arrow_type))
                .unwrap_or(DataType::Utf8);
            let bad = |e: &dyn std::fmt::Display| {
                error(
                    "22P02",
                    format!("parameter ${}: not a valid {target}: {e}", i + 1),
                )
            };
            let Some(bytes) = value else {
                return ScalarValue::try_from(&target).map_err(|e| bad(&e));
            };
            let scalar = if format.is_binary(i) {
                // In the type the client declared, else the one described to it.
                let t = declared.unwrap_or_else(|| pg_type(&target));
                binary(&t, bytes).map_err(|e| bad(&e))?
            } else {
                let text = std::str::from_utf8(bytes).map_err(|e| bad(&e))?;
                text_scalar(text, &target)
            };
            scalar.cast_to(&target).map_err(|e| bad(&e))
        })
        .collect()
}

/// A text parameter: PostgreSQL's `t`/`f` for booleans, Arrow's parsing for the rest.
fn text_scalar(text: &str, target: &DataType) -> ScalarValue {
    match (target, text) {
        (DataType::Boolean, "t") => ScalarValue::Boolean(Some(true)),
        (DataType::Boolean, "f") => ScalarValue::Boolean(Some(false)),
        _ => ScalarValue::Utf8(Some(text.to_string())),
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A binary parameter of PostgreSQL type `t`.
fn binary(t: &Type, bytes: &[u8]) -> Result<ScalarValue, BoxError> {
    Ok(match *t {
        Type::BOOL => ScalarValue::Boolean(Some(bool::from_sql(t, bytes)?)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_sql(t, bytes)?)),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_sql(t, bytes)?)),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_sql(t, bytes)?)),
        Type::OID => ScalarValue::Int64(Some(u32::from_sql(t, bytes)?.into())),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_sql(t, bytes)?)),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_sql(t, bytes)?)),
        Type::TIMESTAMPTZ => {
            let at = DateTime::<Utc>::from_sql(t, bytes)?;
            ScalarValue::TimestampNanosecond(Some(nanos(at)?), Some("UTC".into()))
        }
        Type::TIMESTAMP => {
            let at = NaiveDateTime::from_sql(t, bytes)?.and_utc();
            ScalarValue::TimestampNanosecond(Some(nanos(at)?), None)
        }
        Type::DATE => {
            let date = NaiveDate::from_sql(t, bytes)?;
            ScalarValue::Date32(Some(date.to_epoch_days()))
        }
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::JSONB => {
            // jsonb's binary form is a version byte, then the text.
            let text = bytes.strip_prefix(&[1]).ok_or("unknown jsonb version")?;
            ScalarValue::Utf8(Some(std::str::from_utf8(text)?.to_string()))
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(Some(String::from_sql(&Type::TEXT, bytes)?))
        }
        _ => return Err(format!("binary {} is not read here; send it as text", t.name()).into()),
    })
}

/// Nanoseconds since the epoch, if the time has them (years 1677 to 2262).
fn nanos(at: DateTime<Utc>) -> Result<i64, BoxError> {
    at.timestamp_nanos_opt()
        .ok_or_else(|| format!("{at} is outside the nanosecond range (years 1677 to 2262)").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, MapBuilder, StringBuilder, TimestampNanosecondArray};
    use arrow::datatypes::Field;

    #[test]
    fn columns_encode_as_their_postgresql_types() {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("k");
        map.values().append_value("v");
        map.append(true).unwrap();
        let batch = RecordBatch::try_from_iter([
            (
                "t",
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_500_000_000_123_456_789])
                        .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![42])) as ArrayRef),
            ("m", Arc::new(map.finish()) as ArrayRef),
        ])
        .unwrap();
        let fields = Arc::new(fields(&batch.schema(), None).unwrap());
        let types: Vec<_> = fields.iter().map(|f| f.datatype().clone()).collect();
        assert_eq!(types, [Type::TIMESTAMPTZ, Type::INT8, Type::JSONB]);
        let rows = RowEncoder::new(fields).rows(&batch).unwrap();
        let text = String::from_utf8_lossy(&rows[0].data).to_string();
        assert!(text.contains("2017-07-14 02:40:00.123456+00"), "{text}");
        assert!(text.contains(r#"{"k":"v"}"#), "{text}");
        assert!(text.contains("42"), "{text}");
    }

    #[test]
    fn parameters_take_the_planned_types() {
        let planned = [Some(DataType::Int64), Some(DataType::Boolean), None];
        let values = [
            Some(Bytes::from_static(b"7")),
            Some(Bytes::from_static(b"t")),
            Some(Bytes::from_static(b"x")),
        ];
        let got = parameters(&values, &Format::UnifiedText, &[], &planned).unwrap();
        assert_eq!(
            got,
            [
                ScalarValue::Int64(Some(7)),
                ScalarValue::Boolean(Some(true)),
                ScalarValue::Utf8(Some("x".into()))
            ]
        );
        let bad = parameters(
            &values[..1],
            &Format::UnifiedText,
            &[],
            &[Some(DataType::Date32)],
        );
        assert!(bad.is_err());
        let mismatched = Format::Individual(vec![0, 0]);
        assert!(parameters(&values, &mismatched, &[], &planned).is_err());
        assert!(
            fields(
                &Schema::new(vec![Field::new("x", DataType::Int32, true)]),
                Some(&mismatched)
            )
            .is_err()
        );
        let field = Field::new("x", DataType::Int32, true);
        assert_eq!(pg_type(field.data_type()), Type::INT4);
    }
}
