//! The data files of the table: rows of the `spans` schema ↔ the file layout.
//!
//! Input (writes): batches of [`spans_schema`]. Output: the same rows in [`file_schema`],
//! where each nanosecond time becomes a microsecond timestamp (Delta's `timestamp`, which
//! Spark, Trino, DuckDB and Polars read) followed by the exact `…_unix_nano` integer.
//! Reads go the other way inside the Parquet scan: [`FileColumns`] rewrites every reference
//! to a time column (in projections and in pushed-down filters alike) into the exact
//! integer read back as a nanosecond timestamp, so SQL sees `start_time` to the ns and a
//! filter on it prunes with the exact values.
//!
//! Invariants: no value changes on the way through; the microsecond columns are only
//! written (truncated toward zero), never read back by spanlake. Files carry no embedded
//! Arrow schema, so every reader sees plain Parquet types (strings, maps of strings);
//! spanlake's own scans ([`scan`]) ask the Parquet reader for the dictionary types of
//! [`file_schema`], so a value shared by many rows (dictionary-encoded in the file) is read
//! once per batch, never once per row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, MapArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_plan::ExecutionPlan;

use crate::schema::{file_schema, spans_schema, unix_nano_name};

/// `batch` (of the `spans` schema) in the layout of the data files.
pub fn to_file(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = file_schema();
    let columns = fields_to_file(batch.schema().fields(), batch.columns(), schema.fields())?;
    RecordBatch::try_new(schema, columns)
}

/// The columns of a struct (or batch) with `fields`, in the data-file form `target`.
fn fields_to_file(
    fields: &Fields,
    columns: &[ArrayRef],
    target: &Fields,
) -> Result<Vec<ArrayRef>, ArrowError> {
    let source = |name: &str| {
        fields
            .iter()
            .position(|f| f.name() == name)
            .map(|i| &columns[i])
            .ok_or_else(|| ArrowError::SchemaError(format!("no field {name} to store")))
    };
    target
        .iter()
        .map(|t| {
            let exact = t.name().strip_suffix("_unix_nano");
            match exact {
                Some(time) if fields.iter().any(|f| f.name() == time) => {
                    cast(source(time)?, &DataType::Int64)
                }
                _ => to_file_array(source(t.name())?, t.data_type()),
            }
        })
        .collect()
}

/// An array in the data-file form `target` (see [`file_type`]).
fn to_file_array(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match target {
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let children = fields_to_file(st.fields(), st.columns(), fields)?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                st.nulls().cloned(),
            )?))
        }
        _ => retype(array, target, to_file_array),
    }
}

/// An array of a data file in the `spans` form `target` (the inverse of [`to_file_array`]).
fn from_file_array(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match target {
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let source = |name: &str| {
                st.column_by_name(name)
                    .ok_or_else(|| ArrowError::SchemaError(format!("a file has no field {name}")))
            };
            let children = fields
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(TimeUnit::Nanosecond, _)
                        if st.column_by_name(&unix_nano_name(f.name())).is_some() =>
                    {
                        cast(source(&unix_nano_name(f.name()))?, f.data_type())
                    }
                    t => from_file_array(source(f.name())?, t),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                st.nulls().cloned(),
            )?))
        }
        _ => retype(array, target, from_file_array),
    }
}

/// `array` as `target` where they differ only inside lists and maps (names, nested
/// times); anything else is cast.
fn retype(
    array: &ArrayRef,
    target: &DataType,
    inner: fn(&ArrayRef, &DataType) -> Result<ArrayRef, ArrowError>,
) -> Result<ArrayRef, ArrowError> {
    match target {
        DataType::List(item) => {
            let list = array.as_list::<i32>();
            Ok(Arc::new(ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                inner(list.values(), item.data_type())?,
                list.nulls().cloned(),
            )?))
        }
        DataType::Map(entries, sorted) => {
            let map = array.as_map();
            let DataType::Struct(fields) = entries.data_type() else {
                return cast(array, target);
            };
            let kv = map.entries();
            let children = kv
                .columns()
                .iter()
                .zip(fields.iter())
                .map(|(c, f)| inner(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                map.offsets().clone(),
                StructArray::try_new(fields.clone(), children, kv.nulls().cloned())?,
                map.nulls().cloned(),
                *sorted,
            )?))
        }
        _ => cast(array, target),
    }
}

/// `from_file(column)`: a column of a data file as the `spans` schema has it; used only
/// inside a scan's rewritten expressions.
fn from_file_udf(file: &DataType, table: &DataType) -> Arc<ScalarUDF> {
    let target = table.clone();
    Arc::new(create_udf(
        "spanlake_from_file",
        vec![file.clone()],
        table.clone(),
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            Ok(ColumnarValue::Array(from_file_array(&arrays[0], &target)?))
        }),
    ))
}

/// A data file to scan: its store (`file://` or `s3://bucket`), its path in it, its size.
#[derive(Debug, Clone)]
pub struct ScanFile {
    /// The object store's URL.
    pub store: String,
    /// The path within the store.
    pub path: object_store::path::Path,
    /// Bytes.
    pub size: u64,
}

impl ScanFile {
    /// The file at `url`.
    pub fn at(url: &url::Url, size: u64) -> Result<Self> {
        let path = object_store::path::Path::from_url_path(url.path())
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(Self {
            store: format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
            path,
            size,
        })
    }
}

/// A scan of data files as rows of the `spans` schema (`projection` of it), in `groups`
/// partitions (files spread round robin), or one partition per file in the order given
/// when `ordering` is set (each file is sorted by it).
pub async fn scan(
    state: &dyn Session,
    files: &[ScanFile],
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    groups: usize,
    ordering: Option<LexOrdering>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(first) = files.first() else {
        return datafusion::common::internal_err!("a scan of no files");
    };
    let store = ObjectStoreUrl::parse(&first.store)?;
    let file = |f: &ScanFile| {
        PartitionedFile::new_from_meta(object_store::ObjectMeta {
            location: f.path.clone(),
            last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            size: f.size,
            e_tag: None,
            version: None,
        })
        .with_arrow_schema(file_schema())
    };
    let groups: Vec<FileGroup> = if ordering.is_some() {
        files
            .iter()
            .map(|f| FileGroup::new(vec![file(f)]))
            .collect()
    } else {
        let n = groups.clamp(1, files.len());
        (0..n)
            .map(|g| FileGroup::new(files.iter().skip(g).step_by(n).map(file).collect()))
            .collect()
    };
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let source = format.file_source(TableSchema::from(crate::schema::spans_schema()));
    let config = FileScanConfigBuilder::new(store, source)
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .with_output_ordering(ordering.into_iter().collect())
        .with_expr_adapter(Some(Arc::new(FileColumns)))
        .build();
    format.create_physical_plan(state, config).await
}

/// Reads the `spans` table's columns out of a data file (see the module docs).
#[derive(Debug)]
pub struct FileColumns;

impl PhysicalExprAdapterFactory for FileColumns {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(FileColumnsAdapter {
            default: DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, physical_file_schema.clone())?,
            physical: physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct FileColumnsAdapter {
    default: Arc<dyn PhysicalExprAdapter>,
    physical: SchemaRef,
}

impl FileColumnsAdapter {
    /// How to read a column of the `spans` schema from this file, if not as it is: a time
    /// from its exact integer, a list or map through [`from_file_array`].
    fn exact(&self, column: &Column) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(table) = spans_schema()
            .field_with_name(column.name())
            .ok()
            .map(|f| f.data_type().clone())
        else {
            return Ok(None);
        };
        if let DataType::Timestamp(TimeUnit::Nanosecond, _) = table {
            let exact_name = unix_nano_name(column.name());
            let Ok(i) = self.physical.index_of(&exact_name) else {
                return Ok(None);
            };
            let exact = Arc::new(Column::new(&exact_name, i));
            let target = Arc::new(Field::new(column.name(), table, true));
            return Ok(Some(Arc::new(CastExpr::new_with_target_field(
                exact, target, None,
            ))));
        }
        let Ok(i) = self.physical.index_of(column.name()) else {
            return Ok(None);
        };
        let file = self.physical.field(i).data_type();
        if !matches!(table, DataType::List(_) | DataType::Map(..)) || file == &table {
            return Ok(None);
        }
        let args = vec![Arc::new(Column::new(column.name(), i)) as Arc<dyn PhysicalExpr>];
        let call = ScalarFunctionExpr::try_new(
            from_file_udf(file, &table),
            args,
            &self.physical,
            Arc::new(ConfigOptions::default()),
        )?;
        Ok(Some(Arc::new(call)))
    }
}

impl PhysicalExprAdapter for FileColumnsAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        expr.transform(|e| {
            let Some(column) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            match self.exact(column)? {
                Some(exact) => Ok(Transformed::yes(exact)),
                None => Ok(Transformed::yes(self.default.rewrite(e)?)),
            }
        })
        .map(|t| t.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::col;

    #[test]
    fn times_survive_the_file_layout_to_the_nanosecond() {
        let bytes =
            prost::Message::encode_to_vec(&crate::fake::request(4, 1, 1_763_000_000_123_456_789));
        let chunk = crate::normalize::normalize(&crate::decode::decode_protobuf(&bytes).unwrap())
            .unwrap()
            .chunk;
        let batch = chunk.expand(None).next().unwrap().unwrap();
        let file = to_file(&batch).unwrap();
        assert_eq!(file.schema(), file_schema());
        let spans = spans_schema();
        let exact = file
            .column_by_name(col::START_TIME_UNIX_NANO)
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let original = batch
            .column_by_name(col::START_TIME)
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(exact.values(), original.values());
        let micros = file
            .column_by_name(col::START_TIME)
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(micros.value(0), original.value(0) / 1_000);
        for name in [
            col::EVENTS,
            col::LINKS,
            col::ATTRIBUTES,
            col::RESOURCE_ATTRIBUTES,
        ] {
            let target = spans.field_with_name(name).unwrap().data_type();
            let back = from_file_array(file.column_by_name(name).unwrap(), target).unwrap();
            assert_eq!(&back, batch.column_by_name(name).unwrap(), "{name}");
        }
    }
}
