//! Trace summaries (the trace index's rows): per data file (or per buffered snapshot), one row per trace it holds,
//! with everything the trace listing filters, sorts and shows.
//!
//! Input: `spans` rows (batches as a data file is written, read back from a data file, or
//! expanded from the buffer's chunks). Output: [`TraceRow`]s sorted by trace id, one per
//! trace. Invariants: [`TraceRow::merge`] is associative and commutative, and merging the
//! rows of any split of a trace's spans gives exactly what the trace rules give over all of
//! them — the root is the first span in the root-span order (parentless first, then start
//! time, then span id), counts and sums add, token and cost sums stay null while no
//! span carries the value, the end is the latest span end.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayAccessor, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    StringArray, TypedDictionaryArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimestampNanosecondType,
};
use arrow::error::ArrowError;

use crate::schema::col;

/// A span's status as the trace rules count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Error,
    Cancelled,
    Unknown,
}

impl Status {
    /// The stored text (`success`, `error`, `cancelled`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
            Status::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "error" => Status::Error,
            "cancelled" => Status::Cancelled,
            "unknown" => Status::Unknown,
            _ => Status::Success,
        }
    }
}

/// The fields a trace takes from its root span.
#[derive(Debug, Clone, PartialEq)]
pub struct Root {
    /// Whether the span has no parent.
    pub parentless: bool,
    /// Its start (ns since the epoch): the trace's `started_at`.
    pub start_ns: i64,
    pub span_id: Arc<str>,
    /// Its end (the trace's end in summary mode).
    pub end_ns: Option<i64>,
    pub name: Arc<str>,
    /// The root span's own status (what `filter[status]` matches).
    pub status: Status,
    pub session_id: Option<Arc<str>>,
    pub service_name: Option<Arc<str>>,
    pub experiment_id: Option<Arc<str>>,
    pub test_case_id: Option<Arc<str>>,
}

/// The root-span rule, the one place it is defined: a trace's root is its first span in
/// this order — parentless first, then the earliest, then the smallest span id (the
/// `traces` table and the listing show it).
fn root_order(parentless: bool, start_ns: i64, span_id: &str) -> (bool, i64, &str) {
    (!parentless, start_ns, span_id)
}

impl Root {
    fn precedes(&self, other: &Root) -> bool {
        root_order(self.parentless, self.start_ns, &self.span_id)
            < root_order(other.parentless, other.start_ns, &other.span_id)
    }
}

/// The token sums, in this order: input, output, cached, total.
pub const TOKEN_COLUMNS: [&str; 4] = [
    col::INPUT_TOKENS,
    col::OUTPUT_TOKENS,
    col::CACHED_TOKENS,
    col::TOTAL_TOKENS,
];
/// The cost sums, in this order: total, input, output.
pub const COST_COLUMNS: [&str; 3] = [col::COST_USD, col::COST_INPUT_USD, col::COST_OUTPUT_USD];

/// One trace's summary over some of its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    pub trace_id: Arc<str>,
    pub root: Root,
    /// The latest span end, if any span ended.
    pub max_end_ns: Option<i64>,
    /// Spans counted (a span stored twice counts twice until compaction removes the copy).
    pub spans: i64,
    pub errors: i64,
    pub cancelled: i64,
    pub unknown: i64,
    /// Sums of [`TOKEN_COLUMNS`]; `None` while no span carries the value.
    pub tokens: [Option<i64>; 4],
    /// Sums of [`COST_COLUMNS`]; `None` while no span carries the value.
    pub costs: [Option<f64>; 3],
}

fn add_int(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.wrapping_add(b)),
        (a, b) => a.or(b),
    }
}

fn add_float(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl TraceRow {
    /// The trace's status rollup: `error` if any span errs, else `cancelled` if any span
    /// was, else `unknown` if no span ended, else `success`.
    pub fn status(&self) -> Status {
        if self.errors > 0 {
            Status::Error
        } else if self.cancelled > 0 {
            Status::Cancelled
        } else if self.unknown == self.spans {
            Status::Unknown
        } else {
            Status::Success
        }
    }

    /// Adds `other` (rows of the same trace).
    pub fn merge(&mut self, other: &TraceRow) {
        if other.root.precedes(&self.root) {
            self.root = other.root.clone();
        }
        self.max_end_ns = self.max_end_ns.max(other.max_end_ns);
        self.spans += other.spans;
        self.errors += other.errors;
        self.cancelled += other.cancelled;
        self.unknown += other.unknown;
        self.add_sums(other.tokens, other.costs);
    }

    fn add_sums(&mut self, tokens: [Option<i64>; 4], costs: [Option<f64>; 3]) {
        for (a, b) in self.tokens.iter_mut().zip(tokens) {
            *a = add_int(*a, b);
        }
        for (a, b) in self.costs.iter_mut().zip(costs) {
            *a = add_float(*a, b);
        }
    }
}

/// Index rows of one data file, sorted by trace id.
pub type FileRows = Arc<[TraceRow]>;

/// Sorts `rows` by trace id and merges the rows of each trace into one.
pub fn merge_sorted(mut rows: Vec<TraceRow>) -> Vec<TraceRow> {
    if !rows.is_sorted_by(|a, b| a.trace_id <= b.trace_id) {
        rows.sort_by(|a, b| a.trace_id.cmp(&b.trace_id));
    }
    let mut out: Vec<TraceRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(last) if last.trace_id == row.trace_id => last.merge(&row),
            _ => out.push(row),
        }
    }
    out
}

/// A text column: plain, or dictionary-encoded (the shared columns in memory).
enum Text<'a> {
    Plain(&'a StringArray),
    Dictionary(TypedDictionaryArray<'a, Int32Type, StringArray>),
}

impl<'a> Text<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, ArrowError> {
        let array = column(batch, name)?;
        match array.data_type() {
            DataType::Utf8 => Ok(Text::Plain(array.as_string::<i32>())),
            DataType::Dictionary(_, _) => array
                .as_dictionary_opt::<Int32Type>()
                .and_then(|d| d.downcast_dict::<StringArray>())
                .map(Text::Dictionary)
                .ok_or_else(|| type_error(name, array.data_type())),
            other => Err(type_error(name, other)),
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Text::Plain(a) => (!a.is_null(i)).then(|| a.value(i)),
            Text::Dictionary(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

fn type_error(name: &str, t: &DataType) -> ArrowError {
    ArrowError::SchemaError(format!("column {name} has the unexpected type {t}"))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("the spans have no column {name}")))
}

/// A column of i64 values: a `Timestamp(ns)` in memory, the exact `*_unix_nano` of a
/// data file, or plain `Int64`.
struct Ints<'a> {
    values: &'a [i64],
    nulls: Option<&'a NullBuffer>,
}

impl<'a> Ints<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, ArrowError> {
        let array = column(batch, name)?;
        let (values, nulls) = match array.data_type() {
            DataType::Int64 => {
                let a = array.as_primitive::<Int64Type>();
                (a.values().as_ref(), a.nulls())
            }
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, _) => {
                let a = array.as_primitive::<TimestampNanosecondType>();
                (a.values().as_ref(), a.nulls())
            }
            other => return Err(type_error(name, other)),
        };
        Ok(Self { values, nulls })
    }

    /// A time column, read from its exact `*_unix_nano` twin when the batch has one.
    fn time(batch: &'a RecordBatch, name: &str) -> Result<Self, ArrowError> {
        let exact = crate::schema::unix_nano_name(name);
        if batch.column_by_name(&exact).is_some() {
            Self::of(batch, &exact)
        } else {
            Self::of(batch, name)
        }
    }

    fn get(&self, i: usize) -> Option<i64> {
        match self.nulls {
            Some(n) if n.is_null(i) => None,
            _ => Some(self.values[i]),
        }
    }
}

/// The token and cost columns of a batch (spans and index files name them alike).
struct Sums<'a> {
    tokens: Vec<Ints<'a>>,
    costs: Vec<&'a arrow::array::PrimitiveArray<Float64Type>>,
}

impl<'a> Sums<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        let tokens = TOKEN_COLUMNS
            .iter()
            .map(|c| Ints::of(batch, c))
            .collect::<Result<Vec<_>, _>>()?;
        let costs = COST_COLUMNS
            .iter()
            .map(|c| {
                let a = column(batch, c)?;
                a.as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| type_error(c, a.data_type()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tokens, costs })
    }

    /// Row `i`'s values (`None` for nulls).
    fn at(&self, i: usize) -> ([Option<i64>; 4], [Option<f64>; 3]) {
        let mut tokens = [None; 4];
        for (v, c) in tokens.iter_mut().zip(&self.tokens) {
            *v = c.get(i);
        }
        let mut costs = [None; 3];
        for (v, c) in costs.iter_mut().zip(&self.costs) {
            *v = (!c.is_null(i)).then(|| c.value(i));
        }
        (tokens, costs)
    }
}

/// The columns a summary reads from spans (`spans` names; a data file's exact
/// `*_unix_nano` times are read in place of `start_time`/`end_time` when present).
pub const SUMMARY_COLUMNS: [&str; 18] = [
    col::TRACE_ID,
    col::SPAN_ID,
    col::PARENT_SPAN_ID,
    col::NAME,
    col::START_TIME,
    col::END_TIME,
    col::STATUS,
    col::SERVICE_NAME,
    col::SESSION_ID,
    col::INPUT_TOKENS,
    col::OUTPUT_TOKENS,
    col::CACHED_TOKENS,
    col::TOTAL_TOKENS,
    col::COST_USD,
    col::COST_INPUT_USD,
    col::COST_OUTPUT_USD,
    col::EXPERIMENT_ID,
    col::TEST_CASE_ID,
];

/// Builds index rows from spans batches, cheaply when rows of a trace come together (a
/// data file's rows are sorted by trace id); any order gives the same result.
#[derive(Debug, Default)]
pub struct Summarizer {
    rows: Vec<TraceRow>,
}

fn shared(s: Option<&str>, last: &mut Option<Arc<str>>) -> Option<Arc<str>> {
    let s = s?;
    match last {
        Some(l) if &**l == s => Some(l.clone()),
        _ => {
            let v: Arc<str> = Arc::from(s);
            *last = Some(v.clone());
            Some(v)
        }
    }
}

impl Summarizer {
    /// Adds the spans of `batch`.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let trace = Text::of(batch, col::TRACE_ID)?;
        let span = Text::of(batch, col::SPAN_ID)?;
        let parent = Text::of(batch, col::PARENT_SPAN_ID)?;
        let name = Text::of(batch, col::NAME)?;
        let status = Text::of(batch, col::STATUS)?;
        let service = Text::of(batch, col::SERVICE_NAME)?;
        let session = Text::of(batch, col::SESSION_ID)?;
        let experiment = Text::of(batch, col::EXPERIMENT_ID)?;
        let test_case = Text::of(batch, col::TEST_CASE_ID)?;
        let start = Ints::time(batch, col::START_TIME)?;
        let end = Ints::time(batch, col::END_TIME)?;
        let sums = Sums::of(batch)?;
        // Consecutive spans mostly share these values: hold each once.
        let mut interned: [Option<Arc<str>>; 5] = Default::default();
        for i in 0..batch.num_rows() {
            let Some(trace_id) = trace.get(i) else {
                continue;
            };
            let span_status = Status::parse(status.get(i).unwrap_or_default());
            let start_ns = start.get(i).unwrap_or_default();
            let parentless = parent.get(i).is_none();
            let span_id = span.get(i).unwrap_or_default();
            let end_ns = end.get(i);
            let (token_values, cost_values) = sums.at(i);
            let same = matches!(self.rows.last(), Some(last) if &*last.trace_id == trace_id);
            let candidate_wins = |root: &Root| {
                root_order(parentless, start_ns, span_id)
                    < root_order(root.parentless, root.start_ns, &root.span_id)
            };
            let root_needed = match self.rows.last() {
                Some(last) if same => candidate_wins(&last.root),
                _ => true,
            };
            let root = root_needed.then(|| Root {
                parentless,
                start_ns,
                span_id: Arc::from(span_id),
                end_ns,
                name: shared(name.get(i), &mut interned[0]).unwrap_or_else(|| Arc::from("")),
                status: span_status,
                session_id: shared(session.get(i), &mut interned[1]),
                service_name: shared(service.get(i), &mut interned[2]),
                experiment_id: shared(experiment.get(i), &mut interned[3]),
                test_case_id: shared(test_case.get(i), &mut interned[4]),
            });
            let counts = (
                (span_status == Status::Error) as i64,
                (span_status == Status::Cancelled) as i64,
                (span_status == Status::Unknown) as i64,
            );
            if same {
                let last = self.rows.last_mut().expect("checked");
                if let Some(root) = root {
                    last.root = root;
                }
                last.max_end_ns = last.max_end_ns.max(end_ns);
                last.spans += 1;
                last.errors += counts.0;
                last.cancelled += counts.1;
                last.unknown += counts.2;
                last.add_sums(token_values, cost_values);
            } else {
                self.rows.push(TraceRow {
                    trace_id: Arc::from(trace_id),
                    root: root.expect("a new trace takes its first span as root"),
                    max_end_ns: end_ns,
                    spans: 1,
                    errors: counts.0,
                    cancelled: counts.1,
                    unknown: counts.2,
                    tokens: token_values,
                    costs: cost_values,
                });
            }
        }
        Ok(())
    }

    /// The rows, sorted by trace id, one per trace.
    pub fn finish(self) -> Vec<TraceRow> {
        merge_sorted(self.rows)
    }
}

/// Columns of an index file (besides the partition columns of its table).
pub mod index_col {
    pub const TRACE_ID: &str = "trace_id";
    pub const ROOT_SPAN_ID: &str = "root_span_id";
    pub const ROOT_PARENTLESS: &str = "root_parentless";
    pub const ROOT_START_NS: &str = "root_start_ns";
    pub const ROOT_END_NS: &str = "root_end_ns";
    pub const ROOT_NAME: &str = "root_name";
    pub const ROOT_STATUS: &str = "root_status";
    pub const SESSION_ID: &str = "session_id";
    pub const SERVICE_NAME: &str = "service_name";
    pub const EXPERIMENT_ID: &str = "experiment_id";
    pub const TEST_CASE_ID: &str = "test_case_id";
    pub const MAX_END_NS: &str = "max_end_ns";
    pub const SPAN_COUNT: &str = "span_count";
    pub const ERROR_COUNT: &str = "error_count";
    pub const CANCELLED_COUNT: &str = "cancelled_count";
    pub const UNKNOWN_COUNT: &str = "unknown_count";
}

/// The schema of index files: [`index_col`], then the token and cost sums.
pub fn index_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use index_col::*;
            let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
            let int = |n: &str, null: bool| Field::new(n, DataType::Int64, null);
            let mut fields = vec![
                text(TRACE_ID, false),
                text(ROOT_SPAN_ID, false),
                Field::new(ROOT_PARENTLESS, DataType::Boolean, false),
                int(ROOT_START_NS, false),
                int(ROOT_END_NS, true),
                text(ROOT_NAME, false),
                text(ROOT_STATUS, false),
                text(SESSION_ID, true),
                text(SERVICE_NAME, true),
                text(EXPERIMENT_ID, true),
                text(TEST_CASE_ID, true),
                int(MAX_END_NS, true),
                int(SPAN_COUNT, false),
                int(ERROR_COUNT, false),
                int(CANCELLED_COUNT, false),
                int(UNKNOWN_COUNT, false),
            ];
            fields.extend(TOKEN_COLUMNS.iter().map(|c| int(c, true)));
            fields.extend(
                COST_COLUMNS
                    .iter()
                    .map(|c| Field::new(*c, DataType::Float64, true)),
            );
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Index rows as a batch of [`index_schema`].
pub fn to_batch(rows: &[TraceRow]) -> Result<RecordBatch, ArrowError> {
    fn text<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
        Arc::new(v.collect::<StringArray>())
    }
    fn int(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
        Arc::new(v.collect::<Int64Array>())
    }
    let r = || rows.iter();
    let mut columns: Vec<ArrayRef> = vec![
        text(r().map(|t| Some(&*t.trace_id))),
        text(r().map(|t| Some(&*t.root.span_id))),
        Arc::new(
            r().map(|t| Some(t.root.parentless))
                .collect::<BooleanArray>(),
        ),
        int(r().map(|t| Some(t.root.start_ns))),
        int(r().map(|t| t.root.end_ns)),
        text(r().map(|t| Some(&*t.root.name))),
        text(r().map(|t| Some(t.root.status.as_str()))),
        text(r().map(|t| t.root.session_id.as_deref())),
        text(r().map(|t| t.root.service_name.as_deref())),
        text(r().map(|t| t.root.experiment_id.as_deref())),
        text(r().map(|t| t.root.test_case_id.as_deref())),
        int(r().map(|t| t.max_end_ns)),
        int(r().map(|t| Some(t.spans))),
        int(r().map(|t| Some(t.errors))),
        int(r().map(|t| Some(t.cancelled))),
        int(r().map(|t| Some(t.unknown))),
    ];
    for k in 0..TOKEN_COLUMNS.len() {
        columns.push(int(r().map(|t| t.tokens[k])));
    }
    for k in 0..COST_COLUMNS.len() {
        columns.push(Arc::new(r().map(|t| t.costs[k]).collect::<Float64Array>()));
    }
    RecordBatch::try_new(index_schema(), columns)
}

/// Index rows from a batch of [`index_schema`] (an index file read back).
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<TraceRow>, ArrowError> {
    use index_col::*;
    let text = |n: &str| Text::of(batch, n);
    let (trace, span, name, status) = (
        text(TRACE_ID)?,
        text(ROOT_SPAN_ID)?,
        text(ROOT_NAME)?,
        text(ROOT_STATUS)?,
    );
    let (session, service, experiment, test_case) = (
        text(SESSION_ID)?,
        text(SERVICE_NAME)?,
        text(EXPERIMENT_ID)?,
        text(TEST_CASE_ID)?,
    );
    let parentless = column(batch, ROOT_PARENTLESS)?
        .as_boolean_opt()
        .ok_or_else(|| type_error(ROOT_PARENTLESS, &DataType::Boolean))?;
    let ints = |n: &str| Ints::of(batch, n);
    let (start, end, max_end) = (ints(ROOT_START_NS)?, ints(ROOT_END_NS)?, ints(MAX_END_NS)?);
    let counts = [
        ints(SPAN_COUNT)?,
        ints(ERROR_COUNT)?,
        ints(CANCELLED_COUNT)?,
        ints(UNKNOWN_COUNT)?,
    ];
    let sums = Sums::of(batch)?;
    let mut interned: [Option<Arc<str>>; 5] = Default::default();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let count = |k: usize| counts[k].get(i).unwrap_or_default();
        let (t, c) = sums.at(i);
        rows.push(TraceRow {
            trace_id: Arc::from(trace.get(i).unwrap_or_default()),
            root: Root {
                parentless: parentless.value(i),
                start_ns: start.get(i).unwrap_or_default(),
                span_id: Arc::from(span.get(i).unwrap_or_default()),
                end_ns: end.get(i),
                name: shared(name.get(i), &mut interned[0]).unwrap_or_else(|| Arc::from("")),
                status: Status::parse(status.get(i).unwrap_or_default()),
                session_id: shared(session.get(i), &mut interned[1]),
                service_name: shared(service.get(i), &mut interned[2]),
                experiment_id: shared(experiment.get(i), &mut interned[3]),
                test_case_id: shared(test_case.get(i), &mut interned[4]),
            },
            max_end_ns: max_end.get(i),
            spans: count(0),
            errors: count(1),
            cancelled: count(2),
            unknown: count(3),
            tokens: t,
            costs: c,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(trace: &str, span: &str, parentless: bool, start: i64, status: Status) -> TraceRow {
        TraceRow {
            trace_id: Arc::from(trace),
            root: Root {
                parentless,
                start_ns: start,
                span_id: Arc::from(span),
                end_ns: Some(start + 10),
                name: Arc::from(span),
                status,
                session_id: None,
                service_name: None,
                experiment_id: None,
                test_case_id: None,
            },
            max_end_ns: Some(start + 10),
            spans: 1,
            errors: (status == Status::Error) as i64,
            cancelled: 0,
            unknown: 0,
            tokens: [Some(1), None, None, None],
            costs: [None, Some(0.5), None],
        }
    }

    #[test]
    fn merging_picks_the_parentless_earliest_root_and_adds_up() {
        let a = row("t", "child", false, 5, Status::Error);
        let b = row("t", "root", true, 9, Status::Success);
        let c = row("t", "other-root", true, 9, Status::Success);
        let mut ab = a.clone();
        ab.merge(&b);
        ab.merge(&c);
        let mut cb = c.clone();
        cb.merge(&b);
        cb.merge(&a);
        assert_eq!(ab, cb, "merge order does not matter");
        assert_eq!(&*ab.root.span_id, "other-root");
        assert_eq!(ab.spans, 3);
        assert_eq!(ab.status(), Status::Error);
        assert_eq!(ab.tokens[0], Some(3));
        assert_eq!(ab.tokens[1], None);
        assert_eq!(ab.costs[1], Some(1.5));
        assert_eq!(ab.max_end_ns, Some(19));
    }

    #[test]
    fn index_rows_survive_a_batch_round_trip() {
        let rows = vec![
            row("a", "s1", true, 1, Status::Success),
            row("b", "s2", false, 2, Status::Error),
        ];
        let batch = to_batch(&rows).unwrap();
        assert_eq!(from_batch(&batch).unwrap(), rows);
    }
}
