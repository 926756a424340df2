//! Chunk: the spans of one request as they travel through the WAL and the buffer.
//!
//! Input: rows built by `normalize` (OTLP) or the vendor log builder, as three batches:
//! per-span columns, one row per resource, one row per instrumentation scope (all without
//! dictionaries, [`plain_spans_schema`]). Output: rows of the `spans` schema
//! ([`spans_schema`]), produced by [`gather`] in slices that [`plan_slices`] keeps under
//! [`SLICE_BYTES`].
//!
//! Invariants: a value that belongs to a resource (`service_name`, `resource_attributes`,
//! and the resource's value for each lifted text column, used where the span has none) or
//! to a scope (`scope_name`, `scope_version`) is stored once per resource or scope, never
//! once per span. So the memory and the WAL bytes of a request stay within a small
//! multiple of its size however many spans share one large resource. Gathered rows keep
//! it so: those columns are dictionaries whose values are the chunk's resource and scope
//! arrays (shared, not copied, when a slice comes from one chunk), and only keys are per
//! span. Indices into the resource and scope batches are checked when a chunk is built, so
//! a chunk read back from disk cannot point outside them.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, MapArray, RecordBatch, StructArray,
    UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{cast, concat, interleave};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, UInt32Type};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::common::utils::memory::RecordBatchMemoryCounter;

use crate::schema::{col, plain_field, shared_map_type, spans_schema};

/// The column of the span batch holding each span's row in the resource batch.
pub const RESOURCE_INDEX: &str = "_resource";
/// The column of the span batch holding each span's row in the scope batch.
pub const SCOPE_INDEX: &str = "_scope";

/// Columns whose value is the resource's, for every span of it.
const RESOURCE_ONLY: [&str; 2] = [col::SERVICE_NAME, col::RESOURCE_ATTRIBUTES];
/// Columns whose value is the scope's, for every span of it.
const SCOPE_ONLY: [&str; 2] = [col::SCOPE_NAME, col::SCOPE_VERSION];
/// Lifted text columns: the span's own value, else its resource's. (`input` and `output`
/// are lifted from the span alone: a span's payload, never shared.)
pub const FALLBACK: [&str; 7] = [
    col::SPAN_KIND_LLM,
    col::SESSION_ID,
    col::USER_ID,
    col::MODEL,
    col::PROVIDER,
    col::EXPERIMENT_ID,
    col::TEST_CASE_ID,
];

/// Rows of the `spans` schema expanded at once stay under about this many bytes (a single
/// row larger than it is expanded alone).
pub const SLICE_BYTES: u64 = 16 << 20;
/// And under this many rows.
pub const SLICE_ROWS: usize = 8192;

/// Where a column of the `spans` schema comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Span(usize),
    Resource(usize),
    Scope(usize),
    Fallback { span: usize, resource: usize },
}

struct Layout {
    span: SchemaRef,
    resource: SchemaRef,
    scope: SchemaRef,
    sources: Vec<Source>,
    resource_index: usize,
    scope_index: usize,
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let spans = plain_spans_schema();
        let span_fields: Vec<Field> = spans
            .fields()
            .iter()
            .filter(|f| !RESOURCE_ONLY.contains(&f.name().as_str()))
            .filter(|f| !SCOPE_ONLY.contains(&f.name().as_str()))
            .map(|f| f.as_ref().clone())
            .chain([
                Field::new(RESOURCE_INDEX, DataType::UInt32, false),
                Field::new(SCOPE_INDEX, DataType::UInt32, false),
            ])
            .collect();
        let field = |name: &str| spans.field_with_name(name).cloned();
        let resource_fields: Vec<Field> = RESOURCE_ONLY
            .iter()
            .chain(FALLBACK.iter())
            .filter_map(|n| field(n).ok())
            .collect();
        let scope_fields: Vec<Field> = SCOPE_ONLY.iter().filter_map(|n| field(n).ok()).collect();
        let span = Arc::new(Schema::new(span_fields));
        let resource = Arc::new(Schema::new(resource_fields));
        let scope = Arc::new(Schema::new(scope_fields));
        let at = |schema: &Schema, name: &str| {
            schema
                .index_of(name)
                .unwrap_or_else(|_| panic!("{name} is a column of the chunk layout"))
        };
        let sources = spans
            .fields()
            .iter()
            .map(|f| {
                let name = f.name().as_str();
                if RESOURCE_ONLY.contains(&name) {
                    Source::Resource(at(&resource, name))
                } else if SCOPE_ONLY.contains(&name) {
                    Source::Scope(at(&scope, name))
                } else if FALLBACK.contains(&name) {
                    Source::Fallback {
                        span: at(&span, name),
                        resource: at(&resource, name),
                    }
                } else {
                    Source::Span(at(&span, name))
                }
            })
            .collect();
        Layout {
            resource_index: at(&span, RESOURCE_INDEX),
            scope_index: at(&span, SCOPE_INDEX),
            span,
            resource,
            scope,
            sources,
        }
    })
}

/// The `spans` schema without dictionaries: the columns as the chunk batches hold them, and
/// the schema of WAL records written before chunks existed.
pub fn plain_spans_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = spans_schema()
                .fields()
                .iter()
                .map(|f| plain_field(f))
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The schema of a chunk's span batch.
pub fn span_schema() -> SchemaRef {
    layout().span.clone()
}

/// The schema of a chunk's resource batch.
pub fn resource_schema() -> SchemaRef {
    layout().resource.clone()
}

/// The schema of a chunk's scope batch.
pub fn scope_schema() -> SchemaRef {
    layout().scope.clone()
}

/// The spans of one request: per-span columns plus shared resource and scope rows.
#[derive(Debug, Clone)]
pub struct SpanChunk {
    spans: RecordBatch,
    resources: RecordBatch,
    scopes: RecordBatch,
    /// Bytes one span expands to beyond its own columns (dictionary keys), per resource
    /// and per scope row.
    resource_bytes: Arc<[u64]>,
    scope_bytes: Arc<[u64]>,
    /// Bytes of the resource and scope rows: the dictionary values of an expanded slice.
    shared_bytes: u64,
    /// Bytes of the span batch.
    span_bytes: u64,
    /// Bytes held by the chunk (buffers shared by its arrays, as those of a chunk read
    /// from one WAL record, count once).
    memory: usize,
}

impl SpanChunk {
    /// A chunk from its three batches, checked: the schemas are the chunk layout's and
    /// every span points at an existing resource and scope row.
    pub fn try_new(
        spans: RecordBatch,
        resources: RecordBatch,
        scopes: RecordBatch,
    ) -> Result<Self, ArrowError> {
        let l = layout();
        for (what, batch, schema) in [
            ("span", &spans, &l.span),
            ("resource", &resources, &l.resource),
            ("scope", &scopes, &l.scope),
        ] {
            if batch.schema().fields() != schema.fields() {
                return Err(ArrowError::SchemaError(format!(
                    "the {what} batch of a chunk does not have the chunk layout"
                )));
            }
        }
        for (index, rows, what) in [
            (l.resource_index, resources.num_rows(), "resource"),
            (l.scope_index, scopes.num_rows(), "scope"),
        ] {
            let ix = spans.column(index).as_primitive::<UInt32Type>();
            if ix.null_count() > 0 || ix.values().iter().any(|&i| i as usize >= rows) {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "a span of the chunk points past its {rows} {what} rows"
                )));
            }
        }
        let resource_bytes = keys_bytes(&resources);
        let scope_bytes = keys_bytes(&scopes);
        let mut counter = RecordBatchMemoryCounter::new();
        let shared_bytes = (counter.count_batch(&resources) + counter.count_batch(&scopes)) as u64;
        let span_bytes = counter.count_batch(&spans) as u64;
        let memory = shared_bytes as usize + span_bytes as usize;
        Ok(Self {
            spans,
            resources,
            scopes,
            resource_bytes,
            scope_bytes,
            shared_bytes,
            span_bytes,
            memory,
        })
    }

    /// A chunk holding rows already in the `spans` schema, with or without dictionaries (one
    /// resource and one scope row per span): the form of WAL records written before chunks
    /// existed.
    pub fn from_expanded(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let l = layout();
        let n = batch.num_rows();
        let pick = |schema: &SchemaRef| -> Result<Vec<ArrayRef>, ArrowError> {
            schema
                .fields()
                .iter()
                .map(|f| {
                    let name = f.name().as_str();
                    if name == RESOURCE_INDEX || name == SCOPE_INDEX {
                        Ok(Arc::new(UInt32Array::from_iter_values(0..n as u32)) as ArrayRef)
                    } else if schema.as_ref() == l.resource.as_ref() && FALLBACK.contains(&name) {
                        // The span column already holds the resolved value.
                        Ok(arrow::array::new_null_array(f.data_type(), n))
                    } else {
                        let column = batch.column_by_name(name).ok_or_else(|| {
                            ArrowError::SchemaError(format!("the batch has no column {name}"))
                        })?;
                        cast(column, f.data_type())
                    }
                })
                .collect()
        };
        Self::try_new(
            RecordBatch::try_new(l.span.clone(), pick(&l.span)?)?,
            RecordBatch::try_new(l.resource.clone(), pick(&l.resource)?)?,
            RecordBatch::try_new(l.scope.clone(), pick(&l.scope)?)?,
        )
    }

    /// Spans in the chunk.
    pub fn num_rows(&self) -> usize {
        self.spans.num_rows()
    }

    /// Arrow memory held by the chunk.
    pub fn memory_size(&self) -> usize {
        self.memory
    }

    /// A column of the span batch (a span-level column of the `spans` schema).
    pub fn span_column(&self, name: &str) -> Option<&ArrayRef> {
        self.spans.column_by_name(name)
    }

    /// About how many bytes row `row` takes once expanded (the shared values themselves are
    /// not copied per row: they become the dictionaries of the slice).
    fn expanded_bytes(&self, row: usize, per_span: u64) -> u64 {
        let l = layout();
        let res = self
            .spans
            .column(l.resource_index)
            .as_primitive::<UInt32Type>();
        let scope = self
            .spans
            .column(l.scope_index)
            .as_primitive::<UInt32Type>();
        per_span
            + self.resource_bytes[res.value(row) as usize]
            + self.scope_bytes[scope.value(row) as usize]
    }

    /// Every row in the `spans` schema, projected, in slices of bounded size, each
    /// expanded only when the iterator reaches it.
    pub fn expand(
        &self,
        projection: Option<Vec<usize>>,
    ) -> impl Iterator<Item = Result<RecordBatch, ArrowError>> + Send + use<> {
        let chunk = self.clone();
        let rows: Vec<(usize, usize)> = (0..chunk.num_rows()).map(|r| (0, r)).collect();
        let slices = plan_slices(&[&chunk], &rows);
        slices
            .into_iter()
            .map(move |range| gather(&[&chunk], &rows[range], projection.as_deref()))
    }

    /// Every row as one batch in the `spans` schema. Unbounded: for tests and benchmarks.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let rows: Vec<(usize, usize)> = (0..self.num_rows()).map(|r| (0, r)).collect();
        gather(&[self], &rows, None)
    }

    /// Appends the chunk as three length-prefixed Arrow IPC streams (spans, resources,
    /// scopes).
    pub fn write_ipc(&self, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        write_ipc_parts([&self.spans, &self.resources, &self.scopes], out)
    }

    /// Reads what [`SpanChunk::write_ipc`] wrote.
    pub fn read_ipc(mut bytes: &[u8]) -> Result<Self, ArrowError> {
        let mut parts = Vec::with_capacity(3);
        for _ in 0..3 {
            let (len, rest) = bytes
                .split_first_chunk::<4>()
                .ok_or_else(|| ArrowError::IpcError("chunk part length cut short".into()))?;
            let (part, rest) = rest
                .split_at_checked(u32::from_le_bytes(*len) as usize)
                .ok_or_else(|| ArrowError::IpcError("chunk part cut short".into()))?;
            let mut batches =
                StreamReader::try_new(Cursor::new(part), None)?.collect::<Result<Vec<_>, _>>()?;
            if batches.len() != 1 {
                return Err(ArrowError::IpcError(format!(
                    "a chunk part holds {} batches, not 1",
                    batches.len()
                )));
            }
            parts.extend(batches.pop());
            bytes = rest;
        }
        if !bytes.is_empty() {
            return Err(ArrowError::IpcError("bytes after the chunk".into()));
        }
        let scopes = parts.pop();
        let resources = parts.pop();
        let spans = parts.pop();
        match (spans, resources, scopes) {
            (Some(s), Some(r), Some(c)) => {
                let (s, r) = resolve_retired_fallbacks(s, r)?;
                Self::try_new(s, r, c)
            }
            _ => Err(ArrowError::IpcError("a chunk needs three parts".into())),
        }
    }
}

/// Three batches as length-prefixed Arrow IPC streams.
fn write_ipc_parts(parts: [&RecordBatch; 3], out: &mut Vec<u8>) -> Result<(), ArrowError> {
    for batch in parts {
        let at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        let mut writer = StreamWriter::try_new(&mut *out, batch.schema_ref())?;
        writer.write(batch)?;
        writer.finish()?;
        drop(writer);
        let len = u32::try_from(out.len() - at - 4)
            .map_err(|_| ArrowError::InvalidArgumentError("a chunk part is over 4 GiB".into()))?;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Columns that resources filled for their spans in earlier chunk records, and no longer do.
const RETIRED_FALLBACK: [&str; 2] = [col::INPUT, col::OUTPUT];

/// A chunk record whose resource rows still hold [`RETIRED_FALLBACK`] columns: each span
/// that lacks its own value takes its resource's, as it did when the record was written,
/// and the resource batch loses those columns.
fn resolve_retired_fallbacks(
    spans: RecordBatch,
    resources: RecordBatch,
) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let l = layout();
    // Anything but the span layout and valid indices is left for `try_new` to refuse.
    if resources.schema().fields() == l.resource.fields()
        || spans.schema().fields() != l.span.fields()
    {
        return Ok((spans, resources));
    }
    let index = spans
        .column(l.resource_index)
        .as_primitive::<UInt32Type>()
        .clone();
    let rows = resources.num_rows();
    if index.null_count() > 0 || index.values().iter().any(|&i| i as usize >= rows) {
        return Ok((spans, resources));
    }
    let mut columns = spans.columns().to_vec();
    for name in RETIRED_FALLBACK {
        let (Ok(at), Some(shared)) = (
            spans.schema().index_of(name),
            resources.column_by_name(name),
        ) else {
            continue;
        };
        let own = &columns[at];
        let theirs = arrow::compute::take(shared, &index, None)?;
        let has_own = arrow::compute::is_not_null(own)?;
        columns[at] = arrow::compute::kernels::zip::zip(&has_own, own, &theirs)?;
    }
    let spans = RecordBatch::try_new(spans.schema(), columns)?;
    let kept = l
        .resource
        .fields()
        .iter()
        .map(|f| resources.schema().index_of(f.name()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((spans, resources.project(&kept)?))
}

/// Bytes each span of a row of `batch` (resources or scopes) costs once expanded: a
/// dictionary key per shared column and two per map entry.
fn keys_bytes(batch: &RecordBatch) -> Arc<[u64]> {
    let mut bytes = vec![4 * batch.num_columns() as u64; batch.num_rows()];
    for column in batch.columns() {
        if let Some(m) = column.as_any().downcast_ref::<MapArray>() {
            for (row, b) in bytes.iter_mut().enumerate() {
                *b += 4 + 8 * m.value_length(row) as u64;
            }
        }
    }
    bytes.into()
}

/// Splits `rows` (pairs of chunk and row) into consecutive ranges whose expansion stays
/// under [`SLICE_BYTES`] and [`SLICE_ROWS`]. The shared values of a slice drawn from one
/// chunk are that chunk's own arrays; a slice drawn from several holds a copy of each
/// one's, which counts.
pub fn plan_slices(chunks: &[&SpanChunk], rows: &[(usize, usize)]) -> Vec<Range<usize>> {
    let per_span: Vec<u64> = chunks
        .iter()
        .map(|c| c.span_bytes / c.num_rows().max(1) as u64)
        .collect();
    let mut slices = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    // The chunks of the current slice, and of every chunk whether it is one of them.
    let mut in_slice: Vec<usize> = Vec::new();
    let mut member = vec![false; chunks.len()];
    for (i, &(c, r)) in rows.iter().enumerate() {
        let own = chunks[c].expanded_bytes(r, per_span[c]);
        let copies = |in_slice: &[usize], member: &[bool]| match in_slice {
            _ if member[c] => 0,
            [] => 0,
            [only] => chunks[*only].shared_bytes + chunks[c].shared_bytes,
            _ => chunks[c].shared_bytes,
        };
        let b = own + copies(&in_slice, &member);
        if i > start && (bytes + b > SLICE_BYTES || i - start >= SLICE_ROWS) {
            slices.push(start..i);
            (start, bytes) = (i, 0);
            for x in in_slice.drain(..) {
                member[x] = false;
            }
        }
        bytes += own + copies(&in_slice, &member);
        if !member[c] {
            member[c] = true;
            in_slice.push(c);
        }
    }
    if start < rows.len() {
        slices.push(start..rows.len());
    }
    slices
}

/// The chunks the rows of a slice come from, in order of first appearance.
struct Involved {
    order: Vec<usize>,
    /// Of every chunk, whether rows come from it.
    member: Vec<bool>,
}

impl Involved {
    fn of(chunks: usize, rows: &[(usize, usize)]) -> Self {
        let mut member = vec![false; chunks];
        let mut order = Vec::new();
        for &(c, _) in rows {
            if !member[c] {
                member[c] = true;
                order.push(c);
            }
        }
        Self { order, member }
    }
}

/// Keys into the values of one shared column of the involved chunks: where each chunk's
/// values start, and the values themselves (a chunk's own array when only one chunk is
/// involved, so slices of one chunk share their dictionary).
struct SharedValues {
    values: ArrayRef,
    /// Of every chunk, where its values start (`None` for chunks not involved).
    starts: Vec<Option<usize>>,
}

impl SharedValues {
    /// From `column(c)` of each involved chunk `c`.
    fn new<'a>(
        involved: &Involved,
        column: impl Fn(usize) -> &'a ArrayRef,
    ) -> Result<Self, ArrowError> {
        let mut starts = vec![None; involved.member.len()];
        let mut columns = Vec::with_capacity(involved.order.len());
        let mut at = 0;
        for &c in &involved.order {
            let array = column(c);
            starts[c] = Some(at);
            at += array.len();
            columns.push(array);
        }
        let values = match columns.as_slice() {
            [only] => Arc::clone(only),
            _ => {
                let arrays: Vec<&dyn Array> = columns.iter().map(|c| c.as_ref()).collect();
                concat(&arrays)?
            }
        };
        Ok(Self { values, starts })
    }

    /// Where the values of chunk `chunk` start.
    fn start(&self, chunk: usize) -> Result<usize, ArrowError> {
        self.starts
            .get(chunk)
            .copied()
            .flatten()
            .ok_or_else(|| ArrowError::InvalidArgumentError("a row of no chunk".into()))
    }

    /// The key of row `row` of chunk `chunk`, `None` where the value is null.
    fn key(&self, chunk: usize, row: usize) -> Result<Option<i32>, ArrowError> {
        self.key_at(self.start(chunk)? + row)
    }

    /// The key of value `at`, `None` where it is null.
    fn key_at(&self, at: usize) -> Result<Option<i32>, ArrowError> {
        if self.values.is_null(at) {
            return Ok(None);
        }
        i32::try_from(at)
            .map(Some)
            .map_err(|_| ArrowError::DictionaryKeyOverflowError)
    }
}

/// A dictionary of `values` with `keys`.
fn dictionary(keys: Vec<Option<i32>>, values: ArrayRef) -> Result<ArrayRef, ArrowError> {
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
        Int32Array::from(keys),
        values,
    )?))
}

/// The shared text column `column` of each chunk's `batch` (resources or scopes), for
/// the rows of `at`, as a dictionary.
fn shared_text(
    chunks: &[&SpanChunk],
    involved: &Involved,
    batch: fn(&SpanChunk) -> &RecordBatch,
    column: usize,
    at: &[(usize, usize)],
) -> Result<ArrayRef, ArrowError> {
    let shared = SharedValues::new(involved, |c| batch(chunks[c]).column(column))?;
    let keys = at
        .iter()
        .map(|&(c, r)| shared.key(c, r))
        .collect::<Result<_, _>>()?;
    dictionary(keys, shared.values)
}

/// A lifted text column: the span's own value (`own`, one per row), else its resource's
/// (`column` of the resource batches, rows `at`), as a dictionary holding the span values
/// and, once each, the resource values used.
fn fallback_text(
    chunks: &[&SpanChunk],
    own: ArrayRef,
    column: usize,
    at: &[(usize, usize)],
) -> Result<ArrayRef, ArrowError> {
    let n = own.len();
    let key = |i: usize| {
        i32::try_from(i)
            .map(Some)
            .map_err(|_| ArrowError::DictionaryKeyOverflowError)
    };
    // The resource rows some span falls back to, each once, after the span values.
    let mut used: HashMap<(usize, usize), usize> = HashMap::new();
    let mut pairs = Vec::new();
    let mut keys = Vec::with_capacity(n);
    for (i, &(c, r)) in at.iter().enumerate() {
        if own.is_valid(i) {
            keys.push(key(i)?);
        } else if chunks[c].resources.column(column).is_valid(r) {
            let next = n + pairs.len();
            let k = *used.entry((c, r)).or_insert_with(|| {
                pairs.push((c, r));
                next
            });
            keys.push(key(k)?);
        } else {
            keys.push(None);
        }
    }
    if pairs.is_empty() {
        return dictionary(keys, own);
    }
    let arrays: Vec<&dyn Array> = chunks
        .iter()
        .map(|c| c.resources.column(column).as_ref())
        .collect();
    let theirs = interleave(&arrays, &pairs)?;
    dictionary(keys, concat(&[own.as_ref(), theirs.as_ref()])?)
}

/// The resource attributes of the rows of `at` (pairs of chunk and resource row): each
/// row's entries are keys into the entries of its resource, never copies of them.
fn shared_map(
    chunks: &[&SpanChunk],
    involved: &Involved,
    column: usize,
    at: &[(usize, usize)],
) -> Result<ArrayRef, ArrowError> {
    let maps: Vec<&MapArray> = chunks
        .iter()
        .map(|c| {
            c.resources
                .column(column)
                .as_any()
                .downcast_ref::<MapArray>()
                .ok_or_else(|| ArrowError::SchemaError("resource attributes are not a map".into()))
        })
        .collect::<Result<_, _>>()?;
    let keys = SharedValues::new(involved, |c| maps[c].entries().column(0))?;
    let values = SharedValues::new(involved, |c| maps[c].entries().column(1))?;
    let mut offsets = Vec::with_capacity(at.len() + 1);
    offsets.push(0i32);
    let (mut key_ix, mut value_ix) = (Vec::new(), Vec::new());
    for &(c, r) in at {
        let o = maps[c].value_offsets();
        let (k, v) = (keys.start(c)?, values.start(c)?);
        for entry in o[r] as usize..o[r + 1] as usize {
            key_ix.push(keys.key_at(k + entry)?);
            value_ix.push(values.key_at(v + entry)?);
        }
        let end = i32::try_from(key_ix.len()).map_err(|_| {
            ArrowError::InvalidArgumentError("a slice holds over 2^31 attributes".into())
        })?;
        offsets.push(end);
    }
    let DataType::Map(entries, sorted) = shared_map_type() else {
        return Err(ArrowError::SchemaError(
            "resource_attributes is not a map".into(),
        ));
    };
    let DataType::Struct(fields) = entries.data_type() else {
        return Err(ArrowError::SchemaError(
            "map entries are not a struct".into(),
        ));
    };
    let columns = vec![
        dictionary(key_ix, keys.values)?,
        dictionary(value_ix, values.values)?,
    ];
    let entries_array = StructArray::try_new(fields.clone(), columns, None)?;
    Ok(Arc::new(MapArray::try_new(
        entries,
        OffsetBuffer::new(offsets.into()),
        entries_array,
        None,
        sorted,
    )?))
}

/// The given rows (pairs of chunk and row), in order, as a batch of the `spans` schema
/// projected to `projection`. Shared values become the dictionaries of their columns; keep
/// `rows` to one [`plan_slices`] range.
pub fn gather(
    chunks: &[&SpanChunk],
    rows: &[(usize, usize)],
    projection: Option<&[usize]>,
) -> Result<RecordBatch, ArrowError> {
    let l = layout();
    let schema = match projection {
        Some(p) => Arc::new(spans_schema().project(p)?),
        None => spans_schema(),
    };
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    let via = |index: usize| -> Vec<(usize, usize)> {
        rows.iter()
            .map(|&(c, r)| {
                let ix = chunks[c].spans.column(index).as_primitive::<UInt32Type>();
                (c, ix.value(r) as usize)
            })
            .collect()
    };
    let involved = Involved::of(chunks.len(), rows);
    let mut resource_rows = None;
    let mut scope_rows = None;
    let pick = |column: usize| {
        let arrays: Vec<&dyn Array> = chunks
            .iter()
            .map(|c| c.spans.column(column).as_ref())
            .collect();
        interleave(&arrays, rows)
    };
    let all: Vec<usize>;
    let columns = match projection {
        Some(p) => p,
        None => {
            all = (0..l.sources.len()).collect();
            &all
        }
    };
    let mut out = Vec::with_capacity(columns.len());
    for &c in columns {
        let source = l.sources.get(c).copied().ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("no column {c} in the spans schema"))
        })?;
        let array = match source {
            Source::Span(i) => pick(i)?,
            Source::Resource(i) => {
                let at = resource_rows.get_or_insert_with(|| via(l.resource_index));
                match l.resource.field(i).data_type() {
                    DataType::Map(..) => shared_map(chunks, &involved, i, at)?,
                    _ => shared_text(chunks, &involved, |c| &c.resources, i, at)?,
                }
            }
            Source::Scope(i) => {
                let at = scope_rows.get_or_insert_with(|| via(l.scope_index));
                shared_text(chunks, &involved, |c| &c.scopes, i, at)?
            }
            Source::Fallback { span, resource } => {
                let at = resource_rows.get_or_insert_with(|| via(l.resource_index));
                fallback_text(chunks, pick(span)?, resource, at)?
            }
        };
        out.push(array);
    }
    RecordBatch::try_new_with_options(
        schema,
        out,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_protobuf;
    use crate::normalize::normalize;
    use crate::proto::{
        ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
        ScopeSpans, Span,
    };
    use arrow::array::AsArray;

    fn kv(key: &str, value: &str) -> KeyValue {
        crate::fake::kv(key, crate::fake::s(value))
    }

    fn span(id: u8, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: format!("s{id}"),
            start_time_unix_nano: 1_763_000_000_000_000_000 + id as u64,
            end_time_unix_nano: 1_763_000_001_000_000_000,
            attributes,
            ..Default::default()
        }
    }

    /// Two resources (one with a model, one with a big attribute), three scopes.
    fn chunk() -> SpanChunk {
        let scope = |name: &str, spans| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                version: "1.0".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", "a"),
                            kv("gen_ai.request.model", "m-res"),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![
                        scope(
                            "x",
                            vec![
                                span(1, vec![]),
                                span(2, vec![kv("gen_ai.request.model", "m-own")]),
                            ],
                        ),
                        scope("y", vec![span(3, vec![])]),
                    ],
                    ..Default::default()
                },
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", "b"), kv("blob", &"z".repeat(1 << 20))],
                        ..Default::default()
                    }),
                    scope_spans: vec![scope("z", (4..40).map(|i| span(i, vec![])).collect())],
                    ..Default::default()
                },
            ],
        };
        let bytes = prost::Message::encode_to_vec(&request);
        normalize(&decode_protobuf(&bytes).unwrap()).unwrap().chunk
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        let column = batch.column_by_name(column).unwrap();
        arrow::compute::cast(column, &DataType::Utf8)
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn shared_values_are_stored_once_and_expand_per_span() {
        let chunk = chunk();
        assert_eq!(chunk.num_rows(), 39);
        assert_eq!(chunk.resources.num_rows(), 2);
        assert_eq!(chunk.scopes.num_rows(), 3);
        // 36 spans share a 1 MiB attribute: it is held once.
        assert!(chunk.memory_size() < 2 << 20, "{}", chunk.memory_size());
        let batch = chunk.to_batch().unwrap();
        assert_eq!(batch.schema(), spans_schema());
        // Expanded, they are still held once: as the dictionaries of the shared columns.
        assert!(
            batch.get_array_memory_size() < 2 << 20,
            "{}",
            batch.get_array_memory_size()
        );
        let attributes = batch.column_by_name(col::RESOURCE_ATTRIBUTES).unwrap();
        assert_eq!(
            crate::api::json::value(attributes, 38)["blob"]
                .as_str()
                .map(str::len),
            Some(1 << 20)
        );
        let models = strings(&batch, col::MODEL);
        assert_eq!(
            models[..3],
            [
                Some("m-res".into()),
                Some("m-own".into()),
                Some("m-res".into())
            ]
        );
        assert_eq!(models[3], None);
        let services = strings(&batch, col::SERVICE_NAME);
        assert_eq!(services[2].as_deref(), Some("a"));
        assert_eq!(services[38].as_deref(), Some("b"));
        let scopes = strings(&batch, col::SCOPE_NAME);
        assert_eq!(
            scopes[..4],
            [
                Some("x".into()),
                Some("x".into()),
                Some("y".into()),
                Some("z".into())
            ]
        );
    }

    #[test]
    fn slices_stay_bounded_and_cover_every_row_in_order() {
        let chunk = chunk();
        let rows: Vec<(usize, usize)> = (0..chunk.num_rows()).map(|r| (0, r)).collect();
        let slices = plan_slices(&[&chunk], &rows);
        assert_eq!(slices.len(), 1, "36 spans share one 1 MiB attribute");
        // Rows of several chunks copy each one's shared values: 20 × 1 MiB pass 16 MiB.
        let copies: Vec<SpanChunk> = (0..20).map(|_| chunk.clone()).collect();
        let refs: Vec<&SpanChunk> = copies.iter().collect();
        let mixed: Vec<(usize, usize)> = (0..chunk.num_rows())
            .flat_map(|r| (0..20).map(move |c| (c, r)))
            .collect();
        let mixed_slices = plan_slices(&refs, &mixed);
        assert!(mixed_slices.len() > 1);
        for range in mixed_slices {
            let batch = gather(&refs, &mixed[range], None).unwrap();
            assert!(batch.get_array_memory_size() < 18 << 20);
        }
        assert_eq!(slices.first().map(|s| s.start), Some(0));
        assert!(slices.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(slices.last().map(|s| s.end), Some(rows.len()));
        let parts: Vec<RecordBatch> = chunk.expand(None).collect::<Result<_, _>>().unwrap();
        let whole = arrow::compute::concat_batches(&spans_schema(), &parts).unwrap();
        assert_eq!(whole, chunk.to_batch().unwrap());
        // A projection expands only the columns asked for.
        let p = vec![0, spans_schema().index_of(col::SERVICE_NAME).unwrap()];
        let projected: Vec<RecordBatch> = chunk.expand(Some(p)).collect::<Result<_, _>>().unwrap();
        assert_eq!(projected[0].num_columns(), 2);
    }

    #[test]
    fn ipc_round_trip_and_the_old_record_form() {
        let chunk = chunk();
        let mut bytes = Vec::new();
        chunk.write_ipc(&mut bytes).unwrap();
        let back = SpanChunk::read_ipc(&bytes).unwrap();
        assert_eq!(back.to_batch().unwrap(), chunk.to_batch().unwrap());
        assert!(SpanChunk::read_ipc(&bytes[..bytes.len() - 1]).is_err());
        let old = SpanChunk::from_expanded(&chunk.to_batch().unwrap()).unwrap();
        assert_eq!(old.to_batch().unwrap(), chunk.to_batch().unwrap());
    }

    #[test]
    fn records_whose_resources_filled_input_still_read_as_written() {
        let chunk = chunk();
        // The resource rows of earlier records also held `input` and `output`.
        let mut fields = chunk.resources.schema().fields().to_vec();
        let mut columns = chunk.resources.columns().to_vec();
        for (name, values) in [
            (col::INPUT, vec![Some("from-the-resource"), None]),
            (col::OUTPUT, vec![None, None]),
        ] {
            fields.push(Arc::new(Field::new(name, DataType::Utf8, true)));
            columns.push(Arc::new(arrow::array::StringArray::from(values)));
        }
        let old = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let mut bytes = Vec::new();
        write_ipc_parts([&chunk.spans, &old, &chunk.scopes], &mut bytes).unwrap();
        let back = SpanChunk::read_ipc(&bytes).unwrap().to_batch().unwrap();
        let input = strings(&back, col::INPUT);
        assert_eq!(input[0].as_deref(), Some("from-the-resource"), "resource a");
        assert_eq!(input[38], None, "resource b had none");
        assert_eq!(
            strings(&back, col::MODEL),
            strings(&chunk.to_batch().unwrap(), col::MODEL)
        );
    }

    #[test]
    fn a_damaged_earlier_record_is_refused_not_a_panic() {
        let chunk = chunk();
        let mut fields = chunk.resources.schema().fields().to_vec();
        let mut columns = chunk.resources.columns().to_vec();
        fields.push(Arc::new(Field::new(col::INPUT, DataType::Utf8, true)));
        columns.push(Arc::new(arrow::array::StringArray::from(vec![
            Some("x"),
            None,
        ])));
        let old = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        // Only one resource row left: the spans of the second point past it.
        let mut bytes = Vec::new();
        write_ipc_parts([&chunk.spans, &old.slice(0, 1), &chunk.scopes], &mut bytes).unwrap();
        assert!(SpanChunk::read_ipc(&bytes).is_err());
    }

    #[test]
    fn a_span_pointing_past_its_resources_is_refused() {
        let chunk = chunk();
        let empty = RecordBatch::new_empty(resource_schema());
        let err = SpanChunk::try_new(chunk.spans.clone(), empty, chunk.scopes.clone());
        assert!(err.is_err());
    }
}
