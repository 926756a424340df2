//! Normalize: OTLP spans → rows of the `spans` schema, appended straight into Arrow builders.
//!
//! Input: a [`DecodedRequest`]. Output: one `RecordBatch` in [`spans_schema`] plus the
//! list of spans rejected (bad ids, out-of-range times), each with a message naming the
//! span and the reason. Invariants: a span is either appended whole (one row in every
//! column) or rejected whole; well-known attributes are lifted into typed columns with the
//! priority lists of ARCHITECTURE.md (span attributes first, then resource attributes),
//! and every attribute is also kept in `attributes`. Per span, attribute lookup is one
//! pass with a `match` on the key and no allocation beyond the builders' own buffers.

mod values;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, ListArray, MapBuilder, RecordBatch, StringBuilder,
    StructArray, TimestampNanosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::error::ArrowError;

use crate::decode::vendor::LogSpan;
use crate::decode::{DecodedRequest, RejectedField, SpanRejection};
use crate::proto::{AnyValue, InstrumentationScope, KeyValue, Resource, Span};
use crate::schema::{self, spans_schema};

pub use values::{write_json, write_json_string, write_text};

/// The result of normalizing one request.
#[derive(Debug)]
pub struct Normalized {
    /// The accepted spans, one row each.
    pub batch: RecordBatch,
    /// Rejected spans, by position in the request.
    pub rejected: Vec<SpanRejection>,
}

/// An Arrow failure while assembling a batch: a bug, never bad input.
#[derive(Debug, thiserror::Error)]
#[error("building the spans batch failed: {0}")]
pub struct NormalizeError(#[from] ArrowError);

/// Normalizes every span of a decoded OTLP request.
pub fn normalize(decoded: &DecodedRequest) -> Result<Normalized, NormalizeError> {
    let spans: usize = decoded
        .request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let mut builder = SpanBatchBuilder::with_capacity(spans);
    let mut rejected = Vec::new();
    let mut pre_rejected = decoded.rejected.iter().peekable();
    let mut index = 0usize;
    for rs in &decoded.request.resource_spans {
        let resource = ResourceContext::new(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                if let Some(r) = pre_rejected.next_if(|r| r.index == index) {
                    rejected.push(r.clone());
                } else if let Err((field, reason)) =
                    builder.append_otlp(&resource, ss.scope.as_ref(), span)
                {
                    rejected.push(SpanRejection {
                        index,
                        field,
                        reason: format!("span {index} ({:?}): {reason}", span.name),
                    });
                }
                index += 1;
            }
        }
    }
    Ok(Normalized {
        batch: builder.finish()?,
        rejected,
    })
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

/// Which typed column an attribute key feeds, and its rank there (0 wins).
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

/// The winning attribute value of each lifted column.
type Lifted<'a> = [Option<(u8, &'a AnyValue)>; LIFT_COUNT];

fn lift<'a>(attributes: &'a [KeyValue]) -> Lifted<'a> {
    let mut lifted: Lifted<'a> = [None; LIFT_COUNT];
    for kv in attributes {
        if let (Some((slot, rank)), Some(value)) = (lift_of(&kv.key), kv.value.as_ref()) {
            let entry = &mut lifted[slot as usize];
            if entry.is_none_or(|(best, _)| rank < best) {
                *entry = Some((rank, value));
            }
        }
    }
    lifted
}

/// What every span of one resource shares: its attributes rendered once, and its lifted
/// values (used where the span has none).
struct ResourceContext<'a> {
    attributes: Vec<(&'a str, String)>,
    service_name: Option<String>,
    lifted: Lifted<'a>,
}

impl<'a> ResourceContext<'a> {
    fn new(resource: Option<&'a Resource>) -> Self {
        let attrs: &'a [KeyValue] = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let mut service_name = None;
        let attributes = attrs
            .iter()
            .map(|kv| {
                let mut text = String::new();
                if let Some(v) = &kv.value {
                    write_text(&mut text, v);
                }
                if kv.key == "service.name" {
                    service_name = Some(text.clone());
                }
                (kv.key.as_str(), text)
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
fn append_attributes(map: &mut StringMapBuilder, attributes: &[KeyValue], scratch: &mut String) {
    for kv in attributes {
        map.keys().append_value(&kv.key);
        scratch.clear();
        if let Some(v) = &kv.value {
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

fn validate(span: &Span) -> Result<(), (RejectedField, String)> {
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
    if all_zero(&span.trace_id) {
        return Err((TraceId, "trace_id is all zeros".into()));
    }
    if span.span_id.len() != 8 {
        return Err((
            SpanId,
            format!("span_id must be 8 bytes, got {}", span.span_id.len()),
        ));
    }
    if all_zero(&span.span_id) {
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
        ("start_time_unix_nano", span.start_time_unix_nano),
        ("end_time_unix_nano", span.end_time_unix_nano),
    ] {
        if t > i64::MAX as u64 {
            return Err((Other, format!("{what} {t} is beyond the year 2262")));
        }
    }
    Ok(())
}

/// Arrow builders for the `spans` schema; one row per appended span.
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
    service_name: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    span_kind_llm: StringBuilder,
    session_id: StringBuilder,
    user_id: StringBuilder,
    model: StringBuilder,
    provider: StringBuilder,
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    cached_tokens: Int64Builder,
    total_tokens: Int64Builder,
    cost_usd: Float64Builder,
    cost_input_usd: Float64Builder,
    cost_output_usd: Float64Builder,
    input: StringBuilder,
    output: StringBuilder,
    experiment_id: StringBuilder,
    test_case_id: StringBuilder,
    attributes: StringMapBuilder,
    resource_attributes: StringMapBuilder,
    events: EventsBuilder,
    links: LinksBuilder,
    scratch: String,
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
    /// Builders sized for about `capacity` spans.
    pub fn with_capacity(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 16);
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
            status_message: s(),
            status: s(),
            service_name: s(),
            scope_name: s(),
            scope_version: s(),
            span_kind_llm: s(),
            session_id: s(),
            user_id: s(),
            model: s(),
            provider: s(),
            input_tokens: i(),
            output_tokens: i(),
            cached_tokens: i(),
            total_tokens: i(),
            cost_usd: f(),
            cost_input_usd: f(),
            cost_output_usd: f(),
            input: s(),
            output: s(),
            experiment_id: s(),
            test_case_id: s(),
            attributes: string_map_builder(),
            resource_attributes: string_map_builder(),
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
            scratch: String::new(),
        }
    }

    /// Appends one OTLP span, or says why it is rejected (then nothing is appended).
    fn append_otlp(
        &mut self,
        resource: &ResourceContext<'_>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) -> Result<(), (RejectedField, String)> {
        validate(span)?;
        let mut buf = [0u8; 64];
        self.trace_id.append_value(hex(&span.trace_id, &mut buf));
        self.span_id.append_value(hex(&span.span_id, &mut buf));
        if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|&b| b == 0) {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id
                .append_value(hex(&span.parent_span_id, &mut buf));
        }
        self.name.append_value(&span.name);
        self.kind.append_value(kind_name(span.kind));
        let start = span.start_time_unix_nano as i64;
        let end = span.end_time_unix_nano as i64;
        self.start_time.append_value(start);
        let ended = end != 0;
        if ended {
            self.end_time.append_value(end);
        } else {
            self.end_time.append_null();
        }
        self.duration_ns
            .append_option((ended && end >= start).then(|| end - start));
        let (code, message) = span
            .status
            .as_ref()
            .map_or((0, ""), |s| (s.code, s.message.as_str()));
        self.status_code.append_value(status_code_name(code));
        opt_str(&mut self.status_message, message);

        let own = lift(&span.attributes);
        let get = |slot: Lift| {
            own[slot as usize]
                .or(resource.lifted[slot as usize])
                .map(|(_, v)| v)
        };
        let error_type = match get(Lift::ErrorType).and_then(|v| v.value.as_ref()) {
            Some(crate::proto::any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        };
        self.status
            .append_value(nemo_status(code, message, error_type, ended));
        match &resource.service_name {
            Some(s) => self.service_name.append_value(s),
            None => self.service_name.append_null(),
        }
        let (scope_name, scope_version) =
            scope.map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
        opt_str(&mut self.scope_name, scope_name);
        opt_str(&mut self.scope_version, scope_version);

        let scratch = &mut self.scratch;
        let mut text = |builder: &mut StringBuilder, slot: Lift| match get(slot) {
            Some(v) => {
                scratch.clear();
                write_text(scratch, v);
                builder.append_value(scratch.as_str());
            }
            None => builder.append_null(),
        };
        text(&mut self.span_kind_llm, Lift::SpanKindLlm);
        text(&mut self.session_id, Lift::SessionId);
        text(&mut self.user_id, Lift::UserId);
        text(&mut self.model, Lift::Model);
        text(&mut self.provider, Lift::Provider);
        text(&mut self.input, Lift::Input);
        text(&mut self.output, Lift::Output);
        text(&mut self.experiment_id, Lift::ExperimentId);
        text(&mut self.test_case_id, Lift::TestCaseId);

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

        append_attributes(&mut self.attributes, &span.attributes, &mut self.scratch);
        for (k, v) in &resource.attributes {
            self.resource_attributes.keys().append_value(k);
            self.resource_attributes.values().append_value(v);
        }
        close_map_row(&mut self.resource_attributes);

        let events = &mut self.events;
        for e in &span.events {
            events
                .time
                .append_value(e.time_unix_nano.min(i64::MAX as u64) as i64);
            events.name.append_value(&e.name);
            append_attributes(&mut events.attributes, &e.attributes, &mut self.scratch);
        }
        push_offset(&mut events.offsets, span.events.len());
        let links = &mut self.links;
        for l in &span.links {
            links.trace_id.append_value(hex(&l.trace_id, &mut buf));
            links.span_id.append_value(hex(&l.span_id, &mut buf));
            opt_str(&mut links.trace_state, &l.trace_state);
            append_attributes(&mut links.attributes, &l.attributes, &mut self.scratch);
        }
        push_offset(&mut links.offsets, span.links.len());
        Ok(())
    }

    /// Appends one vendor span log (ids kept as given, no OTLP resource or scope).
    pub fn append_log(&mut self, log: &LogSpan) {
        self.trace_id.append_value(&log.trace_id);
        self.span_id.append_value(&log.span_id);
        self.parent_span_id
            .append_option(log.parent_span_id.as_deref());
        self.name.append_value(&log.name);
        self.kind.append_value(kind_name(1));
        self.start_time.append_value(log.start_ns);
        self.end_time.append_value(log.end_ns);
        self.duration_ns
            .append_option((log.end_ns >= log.start_ns).then(|| log.end_ns - log.start_ns));
        let code = if log.error.is_some() { 2 } else { 0 };
        let message = log.error.as_deref().unwrap_or("");
        self.status_code.append_value(status_code_name(code));
        opt_str(&mut self.status_message, message);
        self.status
            .append_value(nemo_status(code, message, None, true));
        for b in [
            &mut self.service_name,
            &mut self.scope_name,
            &mut self.scope_version,
            &mut self.span_kind_llm,
            &mut self.session_id,
            &mut self.user_id,
            &mut self.experiment_id,
            &mut self.test_case_id,
        ] {
            b.append_null();
        }
        self.model.append_option(log.model.as_deref());
        self.provider.append_option(log.provider.as_deref());
        self.input_tokens.append_option(log.input_tokens);
        self.output_tokens.append_option(log.output_tokens);
        self.cached_tokens.append_null();
        self.total_tokens.append_option(log.total_tokens);
        self.cost_usd.append_option(log.cost);
        self.cost_input_usd.append_null();
        self.cost_output_usd.append_null();
        self.input.append_option(log.input.as_deref());
        self.output.append_option(log.output.as_deref());
        for (k, v) in &log.attributes {
            self.attributes.keys().append_value(k);
            self.attributes.values().append_value(v);
        }
        close_map_row(&mut self.attributes);
        close_map_row(&mut self.resource_attributes);
        push_offset(&mut self.events.offsets, 0);
        push_offset(&mut self.links.offsets, 0);
    }

    /// Finishes the rows appended so far into a batch and resets the builders.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
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
        let columns: Vec<ArrayRef> = vec![
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
            Arc::new(self.service_name.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.span_kind_llm.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.input_tokens.finish()),
            Arc::new(self.output_tokens.finish()),
            Arc::new(self.cached_tokens.finish()),
            Arc::new(self.total_tokens.finish()),
            Arc::new(self.cost_usd.finish()),
            Arc::new(self.cost_input_usd.finish()),
            Arc::new(self.cost_output_usd.finish()),
            Arc::new(self.input.finish()),
            Arc::new(self.output.finish()),
            Arc::new(self.experiment_id.finish()),
            Arc::new(self.test_case_id.finish()),
            finish_map(&mut self.attributes),
            finish_map(&mut self.resource_attributes),
            events_array,
            links_array,
        ];
        RecordBatch::try_new(spans_schema(), columns)
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
