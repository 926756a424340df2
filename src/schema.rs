//! The `spans` table: column names and the one Arrow schema of Parquet files and SQL (the
//! WAL and the buffer hold the same columns without dictionaries, see [`plain_type`]). Path
//! pieces of the storage layout live here too.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Column names of the `spans` table, in schema order.
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const START_TIME: &str = "start_time";
    pub const END_TIME: &str = "end_time";
    pub const DURATION_NS: &str = "duration_ns";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const STATUS: &str = "status";
    pub const SERVICE_NAME: &str = "service_name";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const SCOPE_VERSION: &str = "scope_version";
    pub const SPAN_KIND_LLM: &str = "span_kind_llm";
    pub const SESSION_ID: &str = "session_id";
    pub const USER_ID: &str = "user_id";
    pub const MODEL: &str = "model";
    pub const PROVIDER: &str = "provider";
    pub const INPUT_TOKENS: &str = "input_tokens";
    pub const OUTPUT_TOKENS: &str = "output_tokens";
    pub const CACHED_TOKENS: &str = "cached_tokens";
    pub const TOTAL_TOKENS: &str = "total_tokens";
    pub const COST_USD: &str = "cost_usd";
    pub const COST_INPUT_USD: &str = "cost_input_usd";
    pub const COST_OUTPUT_USD: &str = "cost_output_usd";
    pub const INPUT: &str = "input";
    pub const OUTPUT: &str = "output";
    pub const EXPERIMENT_ID: &str = "experiment_id";
    pub const TEST_CASE_ID: &str = "test_case_id";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    /// In the table's data files only: the exact `start_time`, in ns since the epoch.
    pub const START_TIME_UNIX_NANO: &str = "start_time_unix_nano";
    /// In the table's data files only: the exact `end_time`, in ns since the epoch.
    pub const END_TIME_UNIX_NANO: &str = "end_time_unix_nano";
}

/// The partition columns of the Delta table (they are in its log, not in its data files).
pub mod partition {
    pub const WORKSPACE: &str = "workspace";
    pub const DATE: &str = "date";
    pub const HOUR: &str = "hour";
    /// In partition order.
    pub const ALL: [&str; 3] = [WORKSPACE, DATE, HOUR];
}

/// Field names inside the nested columns.
pub mod nested {
    pub const MAP_ENTRIES: &str = "entries";
    pub const MAP_KEYS: &str = "keys";
    pub const MAP_VALUES: &str = "values";
    /// In the table's data files, maps have Parquet's standard names (`key_value`, `key`,
    /// `value`), which readers that match nested fields by name expect.
    pub const FILE_MAP_ENTRIES: &str = "key_value";
    pub const FILE_MAP_KEY: &str = "key";
    pub const FILE_MAP_VALUE: &str = "value";
    pub const LIST_ITEM: &str = "item";
    pub const EVENT_TIME: &str = "time";
    /// In the table's data files only: the exact event time, in ns since the epoch.
    pub const EVENT_TIME_UNIX_NANO: &str = "time_unix_nano";
    pub const EVENT_NAME: &str = "name";
    pub const EVENT_ATTRIBUTES: &str = "attributes";
    pub const LINK_TRACE_ID: &str = "trace_id";
    pub const LINK_SPAN_ID: &str = "span_id";
    pub const LINK_TRACE_STATE: &str = "trace_state";
    pub const LINK_ATTRIBUTES: &str = "attributes";
}

/// Path pieces of the storage layout (`<table>/workspace=<ws>/date=…/hour=…/<ulid>.parquet`,
/// the table by default at `<data-dir>/spans`).
pub mod path {
    pub const WAL_DIR: &str = "wal";
    /// The default table directory under the data dir.
    pub const TABLE_DIR: &str = "spans";
    /// Where a node keeps its generated id, in the data dir.
    pub const NODE_ID_FILE: &str = "node-id";
    /// Where a node stages data files before uploading them to object storage.
    pub const UPLOAD_DIR: &str = "upload";
    pub const WORKSPACE_PREFIX: &str = "workspace=";
    pub const DATE_PREFIX: &str = "date=";
    pub const HOUR_PREFIX: &str = "hour=";
    pub const PARQUET_EXT: &str = "parquet";
    pub const TMP_SUFFIX: &str = ".tmp";
}

/// The timezone of every timestamp column.
pub const UTC: &str = "UTC";

/// `Timestamp(ns, UTC)`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(UTC.into()))
}

/// `Timestamp(µs, UTC)`: Delta's `timestamp`, the type of the time columns in data files.
pub fn micros_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The entries field of a `Map<Utf8, Utf8>` column.
pub fn map_entries_field() -> Arc<Field> {
    Arc::new(Field::new(
        nested::MAP_ENTRIES,
        DataType::Struct(Fields::from(vec![
            Field::new(nested::MAP_KEYS, DataType::Utf8, false),
            Field::new(nested::MAP_VALUES, DataType::Utf8, true),
        ])),
        false,
    ))
}

/// `Map<Utf8, Utf8>`, keys unsorted.
pub fn string_map_type() -> DataType {
    DataType::Map(map_entries_field(), false)
}

/// `Dictionary<Int32, Utf8>`: the type of a text column whose value may be its resource's or
/// its scope's, so that a value shared by many spans is held once per batch.
pub fn shared_text_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `Map<Dictionary<Int32, Utf8>, Dictionary<Int32, Utf8>>`, keys unsorted: the type of
/// `resource_attributes`, whose entries every span of a resource shares.
pub fn shared_map_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            nested::MAP_ENTRIES,
            DataType::Struct(Fields::from(vec![
                Field::new(nested::MAP_KEYS, shared_text_type(), false),
                Field::new(nested::MAP_VALUES, shared_text_type(), true),
            ])),
            false,
        )),
        false,
    )
}

/// `data_type` with its dictionaries replaced by their value type (at any depth): the form
/// in which the WAL and the buffer hold a column (they keep shared values apart instead).
pub fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Dictionary(_, value) => plain_type(value),
        DataType::Map(entries, sorted) => DataType::Map(Arc::new(plain_field(entries)), *sorted),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| plain_field(f)).collect())
        }
        DataType::List(item) => DataType::List(Arc::new(plain_field(item))),
        other => other.clone(),
    }
}

/// `field` with [`plain_type`].
pub fn plain_field(field: &Field) -> Field {
    field.clone().with_data_type(plain_type(field.data_type()))
}

/// The struct fields of one event.
pub fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new(nested::EVENT_TIME, timestamp_type(), false),
        Field::new(nested::EVENT_NAME, DataType::Utf8, false),
        Field::new(nested::EVENT_ATTRIBUTES, string_map_type(), false),
    ])
}

/// The struct fields of one link.
pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new(nested::LINK_TRACE_ID, DataType::Utf8, false),
        Field::new(nested::LINK_SPAN_ID, DataType::Utf8, false),
        Field::new(nested::LINK_TRACE_STATE, DataType::Utf8, true),
        Field::new(nested::LINK_ATTRIBUTES, string_map_type(), false),
    ])
}

/// The list item field of a `List<Struct<…>>` column.
pub fn list_item_field(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new(
        nested::LIST_ITEM,
        DataType::Struct(fields),
        false,
    ))
}

/// The `spans` schema, built once: the schema of Parquet files and of the SQL table. A
/// column whose value may be its resource's or its scope's (`service_name`, `scope_name`,
/// `scope_version`, the lifted text columns but `input` and `output`,
/// `resource_attributes`) is dictionary-encoded,
/// so that a large value shared by many spans is held once per batch, never once per row.
pub fn spans_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use col::*;
            let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            let shared = |name: &str| Field::new(name, shared_text_type(), true);
            let int64 = |name: &str| Field::new(name, DataType::Int64, true);
            let float64 = |name: &str| Field::new(name, DataType::Float64, true);
            Arc::new(Schema::new(vec![
                utf8(TRACE_ID, false),
                utf8(SPAN_ID, false),
                utf8(PARENT_SPAN_ID, true),
                utf8(NAME, false),
                utf8(KIND, false),
                Field::new(START_TIME, timestamp_type(), false),
                Field::new(END_TIME, timestamp_type(), true),
                int64(DURATION_NS),
                utf8(STATUS_CODE, false),
                utf8(STATUS_MESSAGE, true),
                utf8(STATUS, false),
                shared(SERVICE_NAME),
                shared(SCOPE_NAME),
                shared(SCOPE_VERSION),
                shared(SPAN_KIND_LLM),
                shared(SESSION_ID),
                shared(USER_ID),
                shared(MODEL),
                shared(PROVIDER),
                int64(INPUT_TOKENS),
                int64(OUTPUT_TOKENS),
                int64(CACHED_TOKENS),
                int64(TOTAL_TOKENS),
                float64(COST_USD),
                float64(COST_INPUT_USD),
                float64(COST_OUTPUT_USD),
                utf8(INPUT, true),
                utf8(OUTPUT, true),
                shared(EXPERIMENT_ID),
                shared(TEST_CASE_ID),
                Field::new(ATTRIBUTES, string_map_type(), false),
                Field::new(RESOURCE_ATTRIBUTES, shared_map_type(), false),
                Field::new(
                    EVENTS,
                    DataType::List(list_item_field(event_fields())),
                    false,
                ),
                Field::new(LINKS, DataType::List(list_item_field(link_fields())), false),
            ]))
        })
        .clone()
}

/// The schema of the table's data files (and, with the partition columns, of the Delta
/// table): the `spans` columns, but each nanosecond time (`start_time`, `end_time`, an
/// event's `time`) is a microsecond timestamp (Delta's `timestamp`, which every reader
/// knows) followed by the exact time as an integer of nanoseconds since the epoch
/// (`start_time_unix_nano`, `end_time_unix_nano`, `time_unix_nano`), and every map has
/// Parquet's standard field names (`key_value`, `key`, `value`).
pub fn file_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Arc::new(Schema::new(file_fields(spans_schema().fields()))))
        .clone()
}

/// The data-file form of the fields of a struct (or of the `spans` schema).
fn file_fields(fields: &Fields) -> Vec<Field> {
    let mut out = Vec::with_capacity(fields.len() + 2);
    for f in fields {
        match f.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                out.push(f.as_ref().clone().with_data_type(micros_type()));
                out.push(Field::new(
                    unix_nano_name(f.name()),
                    DataType::Int64,
                    f.is_nullable(),
                ));
            }
            other => out.push(f.as_ref().clone().with_data_type(file_type(other))),
        }
    }
    out
}

/// The data-file form of a type (see [`file_schema`]).
pub fn file_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Struct(fields) => DataType::Struct(file_fields(fields).into()),
        DataType::List(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(file_type(item.data_type())),
        )),
        DataType::Map(entries, sorted) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return data_type.clone();
            };
            let renamed =
                |f: &Field, name: &str| Field::new(name, file_type(f.data_type()), f.is_nullable());
            DataType::Map(
                Arc::new(Field::new(
                    nested::FILE_MAP_ENTRIES,
                    DataType::Struct(Fields::from(vec![
                        renamed(&kv[0], nested::FILE_MAP_KEY),
                        renamed(&kv[1], nested::FILE_MAP_VALUE),
                    ])),
                    entries.is_nullable(),
                )),
                *sorted,
            )
        }
        other => other.clone(),
    }
}

/// The name of the exact nanosecond form of the time column `name` in data files.
pub fn unix_nano_name(name: &str) -> String {
    format!("{name}_unix_nano")
}

/// The index of a column in [`spans_schema`].
pub fn column_index(name: &str) -> usize {
    spans_schema()
        .index_of(name)
        .unwrap_or_else(|_| panic!("column {name} is a constant of the spans schema"))
}
