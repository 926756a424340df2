//! Normalize: OTLP spans → rows of the `spans` schema, appended straight into Arrow builders.
//!
//! Input: a [`DecodedRequest`]. Output: one `RecordBatch` in [`spans_schema`] plus the
//! list of spans rejected (bad ids, out-of-range times), each with a message naming the
//! span and the reason. Invariants: a span is either appended whole (one row in every
//! column) or rejected whole; well-known attributes are lifted into typed columns with the
//! priority lists of docs/schema.md (span attributes first, then resource attributes);
//! a span attribute whose value its typed column holds (the column reads back as the same
//! text) is stored there only, its key in `attributes` with a null value (the query layer
//! puts the value back); every other attribute goes to `attributes` whole. Per span,
//! attribute lookup is one pass with a `match` on the key and no allocation beyond the
//! builders' own buffers.

mod values;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, ListArray, MapBuilder, RecordBatch, StringBuilder,
    StructArray, TimestampNanosecondBuilder, UInt32Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::error::ArrowError;

use crate::chunk::{self, SpanChunk};
use crate::decode::vendor::LogSpan;
use crate::decode::view::{Attr, Parts, SpanRef, SpanVisitor, ValueRef, walk_request};
use crate::decode::{DecodeError, DecodedRequest, RejectedField, SpanRejection, wire};
use crate::schema;
use crate::time::{duration_ns, hour_bucket};

pub use values::{write_json, write_json_string, write_text};

/// The result of normalizing one request.
#[derive(Debug)]
pub struct Normalized {
    /// The accepted spans, one row each.
    pub chunk: SpanChunk,
    /// Rejected spans, by position in the request.
    pub rejected: Vec<SpanRejection>,
}

/// Why a request could not be normalized.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// An Arrow failure while assembling a batch: a bug, never bad input.
    #[error("building the spans batch failed: {0}")]
    Arrow(#[from] ArrowError),
    /// The body is not a valid request (nothing of it is kept).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Normalizes every span of a decoded OTLP request (the prost form, as OTLP JSON is
/// decoded).
pub fn normalize(decoded: &DecodedRequest) -> Result<Normalized, NormalizeError> {
    let spans: usize = decoded
        .request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let mut normalizer = Normalizer::new(spans, &decoded.rejected);
    walk_request(&decoded.request, &mut normalizer);
    normalizer.finish()
}

/// Normalizes a protobuf request straight from its bytes: every value goes from the body
/// into the builders, with no message decoded in between.
pub fn normalize_protobuf(body: &[u8]) -> Result<Normalized, NormalizeError> {
    let mut normalizer = Normalizer::new(wire::count_spans(body), &[]);
    match wire::walk(body, &mut normalizer) {
        Ok(()) => normalizer.finish(),
        // A value prost merges from two occurrences: decoded the way it reads it.
        Err(wire::WireError::Merged) => normalize(&crate::decode::decode_protobuf(body)?),
        Err(e) => Err(DecodeError::from(e).into()),
    }
}

/// Appends walked spans to a [`SpanBatchBuilder`], counting their positions.
struct Normalizer<'a, 'r> {
    builder: SpanBatchBuilder,
    resource: ResourceContext<'a>,
    scope: (&'a str, &'a str),
    pre_rejected: std::iter::Peekable<std::slice::Iter<'r, SpanRejection>>,
    rejected: Vec<SpanRejection>,
    index: usize,
}

impl<'a, 'r> Normalizer<'a, 'r> {
    fn new(capacity: usize, pre_rejected: &'r [SpanRejection]) -> Self {
        Self {
            builder: SpanBatchBuilder::with_capacity(capacity),
            resource: ResourceContext::new(&[]),
            scope: ("", ""),
            pre_rejected: pre_rejected.iter().peekable(),
            rejected: Vec::new(),
            index: 0,
        }
    }

    fn finish(mut self) -> Result<Normalized, NormalizeError> {
        Ok(Normalized {
            chunk: self.builder.finish()?,
            rejected: self.rejected,
        })
    }
}

impl<'a> SpanVisitor<'a> for Normalizer<'a, '_> {
    fn resource(&mut self, attributes: &[Attr<'a>]) {
        self.resource = ResourceContext::new(attributes);
        self.builder.start_resource();
    }

    fn scope(&mut self, name: &'a str, version: &'a str) {
        self.scope = (name, version);
        self.builder.start_scope();
    }

    fn span(&mut self, span: &SpanRef<'a>, parts: &Parts<'a>) {
        let index = self.index;
        self.index += 1;
        if let Some(r) = self.pre_rejected.next_if(|r| r.index == index) {
            self.rejected.push(r.clone());
        } else if let Err((field, reason)) =
            self.builder
                .append_otlp(&self.resource, self.scope, span, parts)
        {
            self.rejected.push(SpanRejection {
                index,
                field,
                reason: format!("span {index} ({:?}): {reason}", span.name),
            });
        }
    }
}

/// The typed columns filled from attributes, in the order of [`LIFT_COUNT`] slots.
#[derive(Clone, Copy)]
enum Lift {
    SpanKindLlm,
    SessionId,
    UserId,
    Model,
    Provider,
    InputTokens,
    OutputTokens,
    CachedTokens,
    TotalTokens,
    Cost,
    CostInput,
    CostOutput,
    Input,
    Output,
    ExperimentId,
    TestCaseId,
    ErrorType,
}

const LIFT_COUNT: usize = Lift::ErrorType as usize + 1;

/// The column each lift fills, by slot (`ErrorType`, the last, only sets `status`).
const LIFTED_COLUMNS: [&str; LIFT_COUNT - 1] = {
    use crate::schema::col::*;
    [
        SPAN_KIND_LLM,
        SESSION_ID,
        USER_ID,
        MODEL,
        PROVIDER,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        CACHED_TOKENS,
        TOTAL_TOKENS,
        COST_USD,
        COST_INPUT_USD,
        COST_OUTPUT_USD,
        INPUT,
        OUTPUT,
        EXPERIMENT_ID,
        TEST_CASE_ID,
    ]
};

/// Which typed column an attribute key feeds, and its rank there (0 wins). Part of the
/// file format: stored files hold a lifted value's key with a null value and
/// [`stored_column`] finds the value by this table, so a key may be added but never moved
/// to another column or removed without a format change.
fn lift_of(key: &str) -> Option<(Lift, u8)> {
    use Lift::*;
    Some(match key {
        "openinference.span.kind" => (SpanKindLlm, 0),
        "gen_ai.operation.name" => (SpanKindLlm, 1),
        "traceloop.span.kind" => (SpanKindLlm, 2),
        "gen_ai.conversation.id" => (SessionId, 0),
        "session.id" => (SessionId, 1),
        "langfuse.session.id" => (SessionId, 2),
        "traceloop.association.properties.session_id" => (SessionId, 3),
        "user.id" => (UserId, 0),
        "langfuse.user.id" => (UserId, 1),
        "traceloop.association.properties.user_id" => (UserId, 2),
        "gen_ai.response.model" => (Model, 0),
        "gen_ai.request.model" => (Model, 1),
        "llm.model_name" => (Model, 2),
        "gen_ai.provider.name" => (Provider, 0),
        "gen_ai.system" => (Provider, 1),
        "llm.provider" => (Provider, 2),
        "llm.system" => (Provider, 3),
        "gen_ai.usage.input_tokens" => (InputTokens, 0),
        "llm.token_count.prompt" => (InputTokens, 1),
        "gen_ai.usage.prompt_tokens" => (InputTokens, 2),
        "gen_ai.usage.output_tokens" => (OutputTokens, 0),
        "llm.token_count.completion" => (OutputTokens, 1),
        "gen_ai.usage.completion_tokens" => (OutputTokens, 2),
        "gen_ai.usage.cache_read.input_tokens" => (CachedTokens, 0),
        "llm.token_count.prompt_details.cache_read" => (CachedTokens, 1),
        "gen_ai.usage.cache_read_input_tokens" => (CachedTokens, 2),
        "gen_ai.usage.total_tokens" => (TotalTokens, 0),
        "llm.token_count.total" => (TotalTokens, 1),
        "llm.usage.total_tokens" => (TotalTokens, 2),
        "gen_ai.usage.cost" => (Cost, 0),
        "llm.cost.total" => (Cost, 1),
        "llm.cost.prompt" => (CostInput, 0),
        "llm.cost.completion" => (CostOutput, 0),
        "input.value" => (Input, 0),
        "gen_ai.input.messages" => (Input, 1),
        "traceloop.entity.input" => (Input, 2),
        "output.value" => (Output, 0),
        "gen_ai.output.messages" => (Output, 1),
        "traceloop.entity.output" => (Output, 2),
        "nemo.evaluation.name" => (ExperimentId, 0),
        "nemo.experiment.id" => (ExperimentId, 1),
        "nemo.test_case.name" => (TestCaseId, 0),
        "nemo.test_case.id" => (TestCaseId, 1),
        "error.type" => (ErrorType, 0),
        _ => return None,
    })
}

/// The attribute that fills a lifted column: the column, its rank, value and position.
#[derive(Clone, Copy)]
struct Won<'a> {
    slot: Lift,
    rank: u8,
    value: ValueRef<'a>,
    at: usize,
}

/// The winning attribute of each lifted column.
type Lifted<'a> = [Option<Won<'a>>; LIFT_COUNT];

fn lift<'a>(attributes: &[Attr<'a>]) -> Lifted<'a> {
    let mut lifted: Lifted<'a> = [None; LIFT_COUNT];
    for (at, kv) in attributes.iter().enumerate() {
        if let (Some((slot, rank)), Some(value)) = (lift_of(kv.key), kv.value) {
            let entry = &mut lifted[slot as usize];
            if entry.is_none_or(|best| rank < best.rank) {
                *entry = Some(Won {
                    slot,
                    rank,
                    value,
                    at,
                });
            }
        }
    }
    lifted
}

/// The lifted columns an attribute may be stored in instead of `attributes`, in slot order
/// (the order [`stored_column`] indexes).
pub fn lifted_columns() -> &'static [&'static str] {
    &LIFTED_COLUMNS
}

/// For a span attribute key whose value may be held by a lifted column: that column's
/// position in [`lifted_columns`]. In a stored `attributes` map such a key with a null
/// value means "the value is the column's, as text" (see [`column_text_i64`] and
/// [`column_text_f64`] for the numeric columns).
pub fn stored_column(key: &str) -> Option<usize> {
    let (lift, _) = lift_of(key)?;
    let slot = lift as usize;
    (slot < LIFTED_COLUMNS.len()).then_some(slot)
}

/// The text of a token column's value, as `attributes` held it.
pub fn column_text_i64(i: i64) -> String {
    i.to_string()
}

/// The text of a cost column's value, as `attributes` held it.
pub fn column_text_f64(f: f64) -> String {
    let mut text = String::new();
    values::write_json(&mut text, ValueRef::Double(f));
    text
}

/// Whether lifted column `slot` holds attribute value `v` so that it reads back as the
/// same text the `attributes` map would hold: then the value is stored in the column only.
/// Text columns always do (they hold the map's text); numeric columns do for numbers and
/// for strings that are the number's own spelling; `error.type` has no column.
fn stored_in_column(slot: Lift, v: ValueRef<'_>, scratch: &mut String) -> bool {
    use Lift::*;
    let column = match slot {
        ErrorType => return false,
        InputTokens | OutputTokens | CachedTokens | TotalTokens => match v {
            ValueRef::Int(_) => return true,
            _ => match values::as_i64(v) {
                Some(i) => column_text_i64(i),
                None => return false,
            },
        },
        Cost | CostInput | CostOutput => match values::as_f64(v) {
            Some(f) if f.is_finite() => column_text_f64(f),
            _ => return false,
        },
        _ => return true,
    };
    scratch.clear();
    write_text(scratch, v);
    *scratch == column
}

/// What every span of one resource shares: its attributes rendered once, and its lifted
/// values (used where the span has none).
struct ResourceContext<'a> {
    attributes: Vec<(&'a str, String)>,
    service_name: Option<String>,
    lifted: Lifted<'a>,
}

impl<'a> ResourceContext<'a> {
    fn new(attrs: &[Attr<'a>]) -> Self {
        let mut service_name = None;
        let attributes = attrs
            .iter()
            .map(|kv| {
                let mut text = String::new();
                if let Some(v) = kv.value {
                    write_text(&mut text, v);
                }
                if kv.key == "service.name" {
                    service_name = Some(text.clone());
                }
                (kv.key, text)
            })
            .collect();
        Self {
            attributes,
            service_name,
            lifted: lift(attrs),
        }
    }
}

type StringMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

fn string_map_builder() -> StringMapBuilder {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

fn finish_map(builder: &mut StringMapBuilder) -> ArrayRef {
    Arc::new(builder.finish())
}

/// Appends one map row of OTLP attributes, rendering values with `scratch`.
fn append_attributes(map: &mut StringMapBuilder, attributes: &[Attr<'_>], scratch: &mut String) {
    for kv in attributes {
        map.keys().append_value(kv.key);
        scratch.clear();
        if let Some(v) = kv.value {
            write_text(scratch, v);
        }
        map.values().append_value(scratch.as_str());
    }
    close_map_row(map);
}

fn close_map_row(map: &mut StringMapBuilder) {
    // Keys and values were appended pairwise just above, so their lengths always match.
    map.append(true)
        .expect("map keys and values are appended in pairs");
}

/// Builders for `List<Struct<time, name, attributes>>`.
struct EventsBuilder {
    offsets: Vec<i32>,
    time: TimestampNanosecondBuilder,
    name: StringBuilder,
    attributes: StringMapBuilder,
}

/// Builders for `List<Struct<trace_id, span_id, trace_state, attributes>>`.
struct LinksBuilder {
    offsets: Vec<i32>,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    trace_state: StringBuilder,
    attributes: StringMapBuilder,
}

fn list_offsets(capacity: usize) -> Vec<i32> {
    let mut offsets = Vec::with_capacity(capacity + 1);
    offsets.push(0);
    offsets
}

fn push_offset(offsets: &mut Vec<i32>, len: usize) {
    let last = *offsets.last().unwrap_or(&0);
    offsets.push(last + len as i32);
}

fn finish_list(
    offsets: &mut Vec<i32>,
    fields: arrow::datatypes::Fields,
    children: Vec<ArrayRef>,
) -> Result<ArrayRef, ArrowError> {
    let offsets = std::mem::replace(offsets, list_offsets(0));
    let item = schema::list_item_field(fields.clone());
    let values = StructArray::try_new(fields, children, None)?;
    Ok(Arc::new(ListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        None,
    )?))
}

/// Lower-case hex of an id, into a stack buffer.
fn hex<'b>(id: &[u8], buf: &'b mut [u8; 64]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = id.len().min(32);
    for (i, b) in id[..n].iter().enumerate() {
        buf[2 * i] = DIGITS[(b >> 4) as usize];
        buf[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..2 * n]).unwrap_or_default()
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "INTERNAL",
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

fn status_code_name(code: i32) -> &'static str {
    match code {
        1 => "OK",
        2 => "ERROR",
        _ => "UNSET",
    }
}

fn mentions_cancel(s: &str) -> bool {
    s.len() >= 6
        && s.as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"cancel"))
}

/// NeMo's span status: `cancelled` when the status message or `error.type` says the work
/// was cancelled, `error` for an ERROR status, `unknown` for a span that never ended,
/// `success` otherwise.
pub fn nemo_status(
    status_code: i32,
    message: &str,
    error_type: Option<&str>,
    ended: bool,
) -> &'static str {
    if status_code != 1 && (mentions_cancel(message) || error_type.is_some_and(mentions_cancel)) {
        "cancelled"
    } else if status_code == 2 {
        "error"
    } else if !ended {
        "unknown"
    } else {
        "success"
    }
}

fn validate(span: &SpanRef<'_>) -> Result<(), (RejectedField, String)> {
    use RejectedField::*;
    fn all_zero(b: &[u8]) -> bool {
        b.iter().all(|&x| x == 0)
    }
    if span.trace_id.len() != 16 {
        return Err((
            TraceId,
            format!("trace_id must be 16 bytes, got {}", span.trace_id.len()),
        ));
    }
    if all_zero(span.trace_id) {
        return Err((TraceId, "trace_id is all zeros".into()));
    }
    if span.span_id.len() != 8 {
        return Err((
            SpanId,
            format!("span_id must be 8 bytes, got {}", span.span_id.len()),
        ));
    }
    if all_zero(span.span_id) {
        return Err((SpanId, "span_id is all zeros".into()));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err((
            ParentSpanId,
            format!(
                "parent_span_id must be 8 bytes or empty, got {}",
                span.parent_span_id.len()
            ),
        ));
    }
    for (what, t) in [
        ("start_time_unix_nano", span.start),
        ("end_time_unix_nano", span.end),
    ] {
        if t > i64::MAX as u64 {
            return Err((Other, format!("{what} {t} is beyond the year 2262")));
        }
    }
    Ok(())
}

/// One request may place its spans in at most this many distinct hours (one Parquet file
/// each per flush); spans in further hours are rejected with a reason.
pub const MAX_HOURS_PER_REQUEST: usize = 32;

/// Arrow builders for a [`SpanChunk`]; one row per appended span, one per resource and
/// scope that has an appended span.
pub struct SpanBatchBuilder {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    status: StringBuilder,
    /// The span's own values of the lifted text columns ([`LIFTED_TEXT`] order).
    own_text: [StringBuilder; LIFTED_TEXT.len()],
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    cached_tokens: Int64Builder,
    total_tokens: Int64Builder,
    cost_usd: Float64Builder,
    cost_input_usd: Float64Builder,
    cost_output_usd: Float64Builder,
    attributes: StringMapBuilder,
    events: EventsBuilder,
    links: LinksBuilder,
    resource_index: UInt32Builder,
    scope_index: UInt32Builder,
    resources: ResourceRows,
    scopes: ScopeRows,
    /// The rows of the resource and scope being appended, once a span of them is.
    current_resource: Option<u32>,
    current_scope: Option<u32>,
    hours: Vec<i64>,
    scratch: String,
}

/// The lifted text columns, in `spans` schema order.
const LIFTED_TEXT: [Lift; 9] = [
    Lift::SpanKindLlm,
    Lift::SessionId,
    Lift::UserId,
    Lift::Model,
    Lift::Provider,
    Lift::Input,
    Lift::Output,
    Lift::ExperimentId,
    Lift::TestCaseId,
];

/// The lifted text columns a resource may fill for its spans, in [`chunk::FALLBACK`]
/// order: all but `input` and `output`, which are a span's own payload.
const FALLBACK_SLOTS: [Lift; 7] = [
    Lift::SpanKindLlm,
    Lift::SessionId,
    Lift::UserId,
    Lift::Model,
    Lift::Provider,
    Lift::ExperimentId,
    Lift::TestCaseId,
];

/// One row per resource: `service_name`, `resource_attributes`, lifted text fallbacks.
struct ResourceRows {
    service_name: StringBuilder,
    attributes: StringMapBuilder,
    text: [StringBuilder; FALLBACK_SLOTS.len()],
    rows: u32,
}

/// One row per instrumentation scope.
struct ScopeRows {
    name: StringBuilder,
    version: StringBuilder,
    rows: u32,
}

fn timestamp_builder(capacity: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(capacity).with_timezone(schema::UTC)
}

fn opt_str(builder: &mut StringBuilder, s: &str) {
    if s.is_empty() {
        builder.append_null();
    } else {
        builder.append_value(s);
    }
}

impl SpanBatchBuilder {
    /// Builders sized for about `capacity` spans: offsets and values of the columns every
    /// span fills; text that may be absent grows as it comes.
    pub fn with_capacity(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 8);
        let sparse = || StringBuilder::with_capacity(capacity, 0);
        let i = || Int64Builder::with_capacity(capacity);
        let f = || Float64Builder::with_capacity(capacity);
        Self {
            trace_id: StringBuilder::with_capacity(capacity, capacity * 32),
            span_id: StringBuilder::with_capacity(capacity, capacity * 16),
            parent_span_id: StringBuilder::with_capacity(capacity, capacity * 16),
            name: s(),
            kind: s(),
            start_time: timestamp_builder(capacity),
            end_time: timestamp_builder(capacity),
            duration_ns: i(),
            status_code: s(),
            status_message: sparse(),
            status: s(),
            own_text: std::array::from_fn(|_| sparse()),
            input_tokens: i(),
            output_tokens: i(),
            cached_tokens: i(),
            total_tokens: i(),
            cost_usd: f(),
            cost_input_usd: f(),
            cost_output_usd: f(),
            attributes: string_map_builder(),
            events: EventsBuilder {
                offsets: list_offsets(capacity),
                time: timestamp_builder(0),
                name: StringBuilder::new(),
                attributes: string_map_builder(),
            },
            links: LinksBuilder {
                offsets: list_offsets(capacity),
                trace_id: StringBuilder::new(),
                span_id: StringBuilder::new(),
                trace_state: StringBuilder::new(),
                attributes: string_map_builder(),
            },
            resource_index: UInt32Builder::with_capacity(capacity),
            scope_index: UInt32Builder::with_capacity(capacity),
            resources: ResourceRows {
                service_name: StringBuilder::new(),
                attributes: string_map_builder(),
                text: std::array::from_fn(|_| StringBuilder::new()),
                rows: 0,
            },
            scopes: ScopeRows {
                name: StringBuilder::new(),
                version: StringBuilder::new(),
                rows: 0,
            },
            current_resource: None,
            current_scope: None,
            hours: Vec::new(),
            scratch: String::new(),
        }
    }

    /// The spans appended next belong to a new resource.
    pub fn start_resource(&mut self) {
        self.current_resource = None;
        self.current_scope = None;
    }

    /// The spans appended next belong to a new scope of the current resource.
    pub fn start_scope(&mut self) {
        self.current_scope = None;
    }

    /// The current resource's row, appended on first use (a resource without accepted
    /// spans takes no row).
    fn resource_row(&mut self, resource: Option<&ResourceContext<'_>>) -> u32 {
        if let Some(row) = self.current_resource {
            return row;
        }
        let r = &mut self.resources;
        match resource.and_then(|c| c.service_name.as_deref()) {
            Some(s) => r.service_name.append_value(s),
            None => r.service_name.append_null(),
        }
        for (k, v) in resource.map_or(&[][..], |c| &c.attributes[..]) {
            r.attributes.keys().append_value(k);
            r.attributes.values().append_value(v);
        }
        close_map_row(&mut r.attributes);
        for (builder, slot) in r.text.iter_mut().zip(FALLBACK_SLOTS) {
            match resource.and_then(|c| c.lifted[slot as usize]) {
                Some(Won { value: v, .. }) => {
                    self.scratch.clear();
                    write_text(&mut self.scratch, v);
                    builder.append_value(self.scratch.as_str());
                }
                None => builder.append_null(),
            }
        }
        let row = r.rows;
        r.rows += 1;
        self.current_resource = Some(row);
        row
    }

    /// The current scope's row, appended on first use.
    fn scope_row(&mut self, (name, version): (&str, &str)) -> u32 {
        if let Some(row) = self.current_scope {
            return row;
        }
        opt_str(&mut self.scopes.name, name);
        opt_str(&mut self.scopes.version, version);
        let row = self.scopes.rows;
        self.scopes.rows += 1;
        self.current_scope = Some(row);
        row
    }

    /// Refuses a span whose start hour would be one more than a request may cover.
    fn check_hour(&mut self, start_ns: i64) -> Result<(), String> {
        let hour = hour_bucket(start_ns);
        if self.hours.contains(&hour) {
            return Ok(());
        }
        if self.hours.len() >= MAX_HOURS_PER_REQUEST {
            let (y, m, d, h) = crate::time::civil_hour(hour);
            return Err(format!(
                "start time {y:04}-{m:02}-{d:02}T{h:02} falls in a {}th distinct hour of this \
                 request; one request may cover at most {MAX_HOURS_PER_REQUEST} hours (send \
                 spans far apart in time in separate requests)",
                MAX_HOURS_PER_REQUEST + 1
            ));
        }
        self.hours.push(hour);
        Ok(())
    }

    /// Appends one OTLP span, or says why it is rejected (then nothing is appended).
    fn append_otlp(
        &mut self,
        resource: &ResourceContext<'_>,
        scope: (&str, &str),
        span: &SpanRef<'_>,
        parts: &Parts<'_>,
    ) -> Result<(), (RejectedField, String)> {
        validate(span)?;
        let start = span.start as i64;
        self.check_hour(start)
            .map_err(|reason| (RejectedField::Other, reason))?;
        let resource_row = self.resource_row(Some(resource));
        let scope_row = self.scope_row(scope);
        self.resource_index.append_value(resource_row);
        self.scope_index.append_value(scope_row);
        let mut buf = [0u8; 64];
        self.trace_id.append_value(hex(span.trace_id, &mut buf));
        self.span_id.append_value(hex(span.span_id, &mut buf));
        if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|&b| b == 0) {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id
                .append_value(hex(span.parent_span_id, &mut buf));
        }
        self.name.append_value(span.name);
        self.kind.append_value(kind_name(span.kind));
        let end = span.end as i64;
        self.start_time.append_value(start);
        let ended = end != 0;
        if ended {
            self.end_time.append_value(end);
        } else {
            self.end_time.append_null();
        }
        self.duration_ns
            .append_option(duration_ns(start, ended.then_some(end)));
        let (code, message) = (span.status_code, span.status_message);
        self.status_code.append_value(status_code_name(code));
        opt_str(&mut self.status_message, message);

        let own = lift(&parts.attributes);
        let get = |slot: Lift| {
            own[slot as usize]
                .or(resource.lifted[slot as usize])
                .map(|w| w.value)
        };
        let error_type = match get(Lift::ErrorType) {
            Some(ValueRef::Str(s)) => Some(s),
            _ => None,
        };
        self.status
            .append_value(nemo_status(code, message, error_type, ended));

        // Text values of the resource are stored once in its row, not copied per span.
        for (builder, slot) in self.own_text.iter_mut().zip(LIFTED_TEXT) {
            match own[slot as usize] {
                Some(Won { value: v, .. }) => {
                    self.scratch.clear();
                    write_text(&mut self.scratch, v);
                    builder.append_value(self.scratch.as_str());
                }
                None => builder.append_null(),
            }
        }

        let int = |slot: Lift| get(slot).and_then(values::as_i64);
        let input_tokens = int(Lift::InputTokens);
        let output_tokens = int(Lift::OutputTokens);
        self.input_tokens.append_option(input_tokens);
        self.output_tokens.append_option(output_tokens);
        self.cached_tokens.append_option(int(Lift::CachedTokens));
        self.total_tokens.append_option(
            int(Lift::TotalTokens)
                .or_else(|| sum(input_tokens, output_tokens, i64::saturating_add)),
        );
        let float = |slot: Lift| get(slot).and_then(values::as_f64);
        let cost_input = float(Lift::CostInput);
        let cost_output = float(Lift::CostOutput);
        self.cost_usd.append_option(
            float(Lift::Cost).or_else(|| sum(cost_input, cost_output, |a, b| a + b)),
        );
        self.cost_input_usd.append_option(cost_input);
        self.cost_output_usd.append_option(cost_output);

        // A lifted value lives in its column, not again in `attributes`.
        let mut in_columns = [usize::MAX; LIFT_COUNT];
        for w in own.iter().flatten() {
            if stored_in_column(w.slot, w.value, &mut self.scratch) {
                in_columns[w.slot as usize] = w.at;
            }
        }
        for (at, kv) in parts.attributes.iter().enumerate() {
            self.attributes.keys().append_value(kv.key);
            if in_columns.contains(&at) {
                // The key stays, so the value is found again under it (see
                // `stored_column`).
                self.attributes.values().append_null();
                continue;
            }
            self.scratch.clear();
            if let Some(v) = kv.value {
                write_text(&mut self.scratch, v);
            }
            self.attributes.values().append_value(self.scratch.as_str());
        }
        close_map_row(&mut self.attributes);

        let events = &mut self.events;
        for e in &parts.events {
            events.time.append_value(e.time.min(i64::MAX as u64) as i64);
            events.name.append_value(e.name);
            let attributes = &parts.nested[e.attributes.clone()];
            append_attributes(&mut events.attributes, attributes, &mut self.scratch);
        }
        push_offset(&mut events.offsets, parts.events.len());
        let links = &mut self.links;
        for l in &parts.links {
            links.trace_id.append_value(hex(l.trace_id, &mut buf));
            links.span_id.append_value(hex(l.span_id, &mut buf));
            opt_str(&mut links.trace_state, l.trace_state);
            let attributes = &parts.nested[l.attributes.clone()];
            append_attributes(&mut links.attributes, attributes, &mut self.scratch);
        }
        push_offset(&mut links.offsets, parts.links.len());
        Ok(())
    }

    /// Appends one vendor span log (ids kept as given, no OTLP resource or scope), or says
    /// why it is rejected (then nothing is appended).
    pub fn append_log(&mut self, log: &LogSpan) -> Result<(), String> {
        self.check_hour(log.start_ns)?;
        let resource_row = self.resource_row(None);
        let scope_row = self.scope_row(("", ""));
        self.resource_index.append_value(resource_row);
        self.scope_index.append_value(scope_row);
        self.trace_id.append_value(&log.trace_id);
        self.span_id.append_value(&log.span_id);
        self.parent_span_id
            .append_option(log.parent_span_id.as_deref());
        self.name.append_value(&log.name);
        self.kind.append_value(kind_name(1));
        self.start_time.append_value(log.start_ns);
        self.end_time.append_value(log.end_ns);
        self.duration_ns
            .append_option(duration_ns(log.start_ns, Some(log.end_ns)));
        let code = if log.error.is_some() { 2 } else { 0 };
        let message = log.error.as_deref().unwrap_or("");
        self.status_code.append_value(status_code_name(code));
        opt_str(&mut self.status_message, message);
        self.status
            .append_value(nemo_status(code, message, None, true));
        for (builder, slot) in self.own_text.iter_mut().zip(LIFTED_TEXT) {
            let value = match slot {
                Lift::Model => log.model.as_deref(),
                Lift::Provider => log.provider.as_deref(),
                Lift::Input => log.input.as_deref(),
                Lift::Output => log.output.as_deref(),
                _ => None,
            };
            builder.append_option(value);
        }
        self.input_tokens.append_option(log.input_tokens);
        self.output_tokens.append_option(log.output_tokens);
        self.cached_tokens.append_null();
        self.total_tokens.append_option(log.total_tokens);
        self.cost_usd.append_option(log.cost);
        self.cost_input_usd.append_null();
        self.cost_output_usd.append_null();
        for (k, v) in &log.attributes {
            self.attributes.keys().append_value(k);
            self.attributes.values().append_value(v);
        }
        close_map_row(&mut self.attributes);
        push_offset(&mut self.events.offsets, 0);
        push_offset(&mut self.links.offsets, 0);
        Ok(())
    }

    /// Finishes the rows appended so far into a chunk and resets the builders.
    pub fn finish(&mut self) -> Result<SpanChunk, ArrowError> {
        let events = &mut self.events;
        let events_array = finish_list(
            &mut events.offsets,
            schema::event_fields(),
            vec![
                Arc::new(events.time.finish()),
                Arc::new(events.name.finish()),
                finish_map(&mut events.attributes),
            ],
        )?;
        let links = &mut self.links;
        let links_array = finish_list(
            &mut links.offsets,
            schema::link_fields(),
            vec![
                Arc::new(links.trace_id.finish()),
                Arc::new(links.span_id.finish()),
                Arc::new(links.trace_state.finish()),
                finish_map(&mut links.attributes),
            ],
        )?;
        let [
            span_kind_llm,
            session_id,
            user_id,
            model,
            provider,
            input,
            output,
            experiment_id,
            test_case_id,
        ] = &mut self.own_text;
        // In the order of `chunk::span_schema()`: the spans schema without the resource
        // and scope columns, then the two indices.
        let spans: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ns.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.status.finish()),
            Arc::new(span_kind_llm.finish()),
            Arc::new(session_id.finish()),
            Arc::new(user_id.finish()),
            Arc::new(model.finish()),
            Arc::new(provider.finish()),
            Arc::new(self.input_tokens.finish()),
            Arc::new(self.output_tokens.finish()),
            Arc::new(self.cached_tokens.finish()),
            Arc::new(self.total_tokens.finish()),
            Arc::new(self.cost_usd.finish()),
            Arc::new(self.cost_input_usd.finish()),
            Arc::new(self.cost_output_usd.finish()),
            Arc::new(input.finish()),
            Arc::new(output.finish()),
            Arc::new(experiment_id.finish()),
            Arc::new(test_case_id.finish()),
            finish_map(&mut self.attributes),
            events_array,
            links_array,
            Arc::new(self.resource_index.finish()),
            Arc::new(self.scope_index.finish()),
        ];
        let r = &mut self.resources;
        let mut resources: Vec<ArrayRef> = vec![
            Arc::new(r.service_name.finish()),
            finish_map(&mut r.attributes),
        ];
        resources.extend(r.text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let scopes: Vec<ArrayRef> = vec![
            Arc::new(self.scopes.name.finish()),
            Arc::new(self.scopes.version.finish()),
        ];
        self.resources.rows = 0;
        self.scopes.rows = 0;
        self.current_resource = None;
        self.current_scope = None;
        self.hours.clear();
        SpanChunk::try_new(
            RecordBatch::try_new(chunk::span_schema(), spans)?,
            RecordBatch::try_new(chunk::resource_schema(), resources)?,
            RecordBatch::try_new(chunk::scope_schema(), scopes)?,
        )
    }
}

/// The sum of whichever of `a` and `b` are present.
fn sum<T>(a: Option<T>, b: Option<T>, add: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(add(a, b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
