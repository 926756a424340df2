//! Rendering SQL answers: JSON (default), CSV or an Arrow IPC stream, chosen by `Accept`.
//!
//! Input: a [`QueryStream`]. Output: an HTTP response. Invariants: CSV and Arrow answers
//! stream batch by batch as the client reads them (a client that goes away drops the
//! stream, which cancels the query); a JSON answer is cut at the configured size and says
//! so; an error before the first batch is an error status, later it ends the body early.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::{Value, json};

use super::json::{row as json_row, value as json_value};
use crate::error::ApiError;
use crate::query::{QueryError, QueryStream};

/// Rows of a CSV answer rendered together (see [`Encoder::rows_per_piece`]).
const CSV_ROWS_PER_PIECE: usize = 16;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Whether `accept` names the media type `m`.
fn accepts(accept: &str, m: &str) -> bool {
    accept.split(',').any(|p| {
        p.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(m)
    })
}

/// The answer to `POST …/sql` in the format `accept` asks for.
pub async fn sql_answer(
    accept: &str,
    mut answer: QueryStream,
    max_json_bytes: usize,
) -> Result<Response, ApiError> {
    let format = if accepts(accept, ARROW_STREAM) {
        Format::Arrow
    } else if accepts(accept, "text/csv") {
        Format::Csv
    } else {
        return json_answer(answer, max_json_bytes).await;
    };
    // An error before any row is still an error status.
    let first = answer.next().await.transpose()?;
    let mut encoder = Encoder::new(format, &answer.schema)?;
    let head = encoder.start(&answer.schema)?;
    let state = Rendering {
        answer: Some(answer),
        encoder,
        head: Some(head),
        pending: first.map(|b| (b, 0)),
    };
    let body = futures::stream::unfold(state, |mut state| async move {
        if let Some(head) = state.head.take() {
            return Some((Ok(Bytes::from(head)), state));
        }
        let answer = state.answer.as_mut()?;
        if state.pending.is_none() {
            match answer.next().await {
                Some(Ok(batch)) => state.pending = Some((batch, 0)),
                Some(Err(e)) => {
                    // After an error the body ends: the client sees a cut answer, not a
                    // false end.
                    state.answer = None;
                    return Some((Err(std::io::Error::other(e)), state));
                }
                None => {
                    state.answer = None;
                    let tail = state.encoder.finish().map_err(std::io::Error::other);
                    return Some((tail.map(Bytes::from), state));
                }
            }
        }
        let (batch, at) = state.pending.take()?;
        let rows = state.encoder.rows_per_piece().min(batch.num_rows() - at);
        let bytes = state.encoder.batch(&batch.slice(at, rows));
        if at + rows < batch.num_rows() {
            state.pending = Some((batch, at + rows));
        }
        if bytes.is_err() {
            state.answer = None;
        }
        Some((bytes.map(Bytes::from).map_err(std::io::Error::other), state))
    });
    Ok((
        [(header::CONTENT_TYPE, format.media_type())],
        Body::from_stream(body),
    )
        .into_response())
}

/// `{"columns": […], "rows": […]}`, cut once the text passes `max_bytes` with
/// `"truncated": true` and a message saying how to get everything.
async fn json_answer(mut answer: QueryStream, max_bytes: usize) -> Result<Response, ApiError> {
    let columns: Vec<Value> = answer
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut out = format!("{{\"columns\":{},\"rows\":[", Value::Array(columns)).into_bytes();
    let (mut rows, mut truncated) = (0usize, false);
    'batches: while let Some(batch) = answer.next().await {
        let batch = batch?;
        for i in 0..batch.num_rows() {
            let row = json_row(&batch, i);
            let at = out.len();
            if rows > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &row).map_err(internal)?;
            if out.len() > max_bytes {
                out.truncate(at);
                truncated = true;
                break 'batches;
            }
            rows += 1;
        }
    }
    // Dropping the stream here cancels whatever the query would still produce.
    drop(answer);
    out.push(b']');
    if truncated {
        let message = format!(
            "the answer was cut after {rows} rows at the JSON limit of {max_bytes} bytes \
             (--sql-max-json-bytes); add a LIMIT, or ask for text/csv or \
             {ARROW_STREAM}, which stream every row"
        );
        out.extend_from_slice(b",\"truncated\":true,\"message\":");
        serde_json::to_writer(&mut out, &message).map_err(internal)?;
    }
    out.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// A streamed answer between two pieces of its body.
struct Rendering {
    /// `None` once the answer has ended (or failed).
    answer: Option<QueryStream>,
    encoder: Encoder,
    /// The bytes before the first row, until sent.
    head: Option<Vec<u8>>,
    /// A batch being rendered and the first row not yet rendered.
    pending: Option<(RecordBatch, usize)>,
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Arrow,
}

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Arrow => ARROW_STREAM,
        }
    }
}

/// Encodes an answer batch by batch.
enum Encoder {
    Csv { header: bool },
    Arrow(Box<StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Self, ApiError> {
        Ok(match format {
            Format::Csv => Encoder::Csv { header: true },
            Format::Arrow => Encoder::Arrow(Box::new(
                StreamWriter::try_new(Vec::new(), schema).map_err(internal)?,
            )),
        })
    }

    /// Bytes before the first row: the CSV header or the Arrow schema message (so an
    /// answer without rows still names its columns).
    fn start(&mut self, schema: &SchemaRef) -> Result<Vec<u8>, ApiError> {
        match self {
            Encoder::Csv { .. } => self.batch(&RecordBatch::new_empty(schema.clone())),
            Encoder::Arrow(w) => Ok(std::mem::take(w.get_mut())),
        }
    }

    /// Rows rendered in one piece of the body: CSV writes every value out (a value shared
    /// through a dictionary becomes one copy per row), so it goes a few rows at a time;
    /// Arrow keeps the batch's own encoding.
    fn rows_per_piece(&self) -> usize {
        match self {
            Encoder::Csv { .. } => CSV_ROWS_PER_PIECE,
            Encoder::Arrow(_) => usize::MAX,
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ApiError> {
        match self {
            Encoder::Csv { header } => {
                let mut out = Vec::new();
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(std::mem::take(header))
                    .build(&mut out);
                w.write(&csv_ready(batch)?).map_err(internal)?;
                drop(w);
                Ok(out)
            }
            Encoder::Arrow(w) => {
                w.write(batch).map_err(internal)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>, ApiError> {
        match self {
            Encoder::Csv { .. } => Ok(Vec::new()),
            Encoder::Arrow(w) => {
                w.finish().map_err(internal)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }
}

impl From<QueryError> for std::io::Error {
    fn from(e: QueryError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// An Arrow IPC stream of the batches.
pub fn to_arrow_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, schema).map_err(internal)?;
    for b in batches {
        w.write(b).map_err(internal)?;
    }
    w.finish().map_err(internal)?;
    drop(w);
    Ok(out)
}

/// CSV with a header; nested values as JSON text.
pub fn to_csv(batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(&mut out);
    for b in batches {
        w.write(&csv_ready(b)?).map_err(internal)?;
    }
    drop(w);
    Ok(out)
}

/// CSV has no nested values: map, list and struct columns are written as JSON text.
fn csv_ready(batch: &RecordBatch) -> Result<RecordBatch, ApiError> {
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if matches!(
            f.data_type(),
            DataType::Map(..) | DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_)
        ) {
            let text: StringArray = (0..c.len())
                .map(|i| {
                    (!arrow::array::Array::is_null(c.as_ref(), i))
                        .then(|| json_value(c, i).to_string())
                })
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            columns.push(Arc::new(text));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(internal)
}
