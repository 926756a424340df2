//! Restore: the span attributes stored once, in their lifted columns, put back into
//! `attributes`.
//!
//! Input: the rows of the stored `spans` table (data files and buffer), where an attribute
//! whose value a lifted column holds (`input.value` in `input`, `gen_ai.usage.input_tokens`
//! in `input_tokens`) keeps its key in `attributes` with a null value (see
//! [`crate::normalize::stored_column`]). Output: the `spans` table SQL sees, a view whose
//! `attributes` hold every span attribute as sent, as text. Invariants: a map without null
//! values is passed through untouched (no copy); a null value is replaced by the text of
//! its column in the same row, the text the attribute had (a dictionary value is looked up
//! per row, never decoded for the whole column); projection and filter pushdown reach the
//! stored table through the view unchanged, and a query that does not read `attributes`
//! never runs this step (one that does also reads the lifted columns).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, MapArray, StringArray, StringBuilder, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, SchemaRef};
use arrow::error::ArrowError;
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::datasource::provider_as_source;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TableProviderFilterPushDown, TableType, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;

use crate::normalize::{column_text_f64, column_text_i64, lifted_columns, stored_column};
use crate::schema::{col, spans_schema};

/// The `spans` table over `stored`: every column as stored, `attributes` restored. A view
/// inlined into each query's plan, shown as the base table it stands for.
pub fn spans_view(stored: Arc<dyn TableProvider>) -> Result<SpansView> {
    let column = |name: &str| Expr::Column(Column::from_name(name));
    let restore = Arc::new(ScalarUDF::new_from_impl(Restore::new()));
    let schema = spans_schema();
    let projection = schema.fields().iter().map(|f| {
        if f.name() == col::ATTRIBUTES {
            let mut args = vec![column(col::ATTRIBUTES)];
            args.extend(lifted_columns().iter().map(|c| column(c)));
            restore.call(args).alias(col::ATTRIBUTES)
        } else {
            column(f.name())
        }
    });
    let plan = LogicalPlanBuilder::scan("spans", provider_as_source(stored), None)?
        .project(projection)?
        .build()?;
    Ok(SpansView(ViewTable::new(plan, None)))
}

/// A [`ViewTable`] listed as a base table (`information_schema`, catalog listings).
#[derive(Debug)]
pub struct SpansView(ViewTable);

#[async_trait]
impl TableProvider for SpansView {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

/// `restore_attributes(attributes, <lifted columns…>)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Restore {
    signature: Signature,
}

impl Restore {
    fn new() -> Self {
        Self {
            signature: Signature::any(1 + lifted_columns().len(), Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Restore {
    fn name(&self) -> &str {
        "restore_attributes"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let map = arrays[0].as_map_opt().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("attributes is not a map".into())
        })?;
        Ok(ColumnarValue::Array(Arc::new(restore(map, &arrays[1..])?)))
    }
}

/// `map` with each null value replaced by the text of its key's column in the same row.
pub fn restore(map: &MapArray, columns: &[ArrayRef]) -> Result<MapArray, ArrowError> {
    if map.values().null_count() == 0 {
        return Ok(map.clone());
    }
    let keys = cast(map.keys(), &DataType::Utf8)?;
    let keys = keys.as_string::<i32>();
    let values = cast(map.values(), &DataType::Utf8)?;
    let values = values.as_string::<i32>();
    let mut texts = Texts::new(columns);
    let mut out = StringBuilder::with_capacity(values.len(), values.value_data().len());
    let offsets = map.value_offsets();
    let copy = |out: &mut StringBuilder, i: usize| {
        out.append_option(values.is_valid(i).then(|| values.value(i)));
    };
    let (first, last) = (offsets[0] as usize, offsets[map.len()] as usize);
    (0..first).for_each(|i| copy(&mut out, i));
    for row in 0..map.len() {
        for i in offsets[row] as usize..offsets[row + 1] as usize {
            if values.is_valid(i) {
                out.append_value(values.value(i));
            } else {
                let text = match stored_column(keys.value(i)) {
                    Some(c) => texts.get(c, row)?,
                    None => None,
                };
                out.append_option(text);
            }
        }
    }
    (last..values.len()).for_each(|i| copy(&mut out, i));
    let entries = map.entries();
    let restored: StringArray = out.finish();
    let entries = StructArray::try_new(
        entries.fields().clone(),
        vec![entries.column(0).clone(), Arc::new(restored)],
        entries.nulls().cloned(),
    )?;
    let DataType::Map(field, ordered) = map.data_type() else {
        unreachable!("a MapArray has a map type")
    };
    let field = Arc::new(
        field
            .as_ref()
            .clone()
            .with_data_type(entries.data_type().clone()),
    );
    MapArray::try_new(
        field,
        map.offsets().clone(),
        entries,
        map.nulls().cloned(),
        *ordered,
    )
}

/// The lifted columns of a batch, read row by row (a dictionary's value is looked up, never
/// the column decoded).
struct Texts<'a> {
    columns: &'a [ArrayRef],
}

impl<'a> Texts<'a> {
    fn new(columns: &'a [ArrayRef]) -> Self {
        Self { columns }
    }

    /// The text of column `c` in `row`, as the attribute it came from held it.
    fn get(&mut self, c: usize, row: usize) -> Result<Option<String>, ArrowError> {
        let Some(column) = self.columns.get(c) else {
            return Ok(None);
        };
        if column.is_null(row) {
            return Ok(None);
        }
        Ok(Some(match column.data_type() {
            DataType::Int64 => column_text_i64(column.as_primitive::<Int64Type>().value(row)),
            DataType::Float64 => column_text_f64(column.as_primitive::<Float64Type>().value(row)),
            DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
            DataType::Dictionary(key, value)
                if **key == DataType::Int32 && **value == DataType::Utf8 =>
            {
                let dictionary = column.as_dictionary::<Int32Type>();
                let at = dictionary.keys().value(row) as usize;
                dictionary.values().as_string::<i32>().value(at).to_string()
            }
            // Any other text type: its one value, read through a one-row slice.
            _ => {
                let one = cast(&column.slice(row, 1), &DataType::Utf8)?;
                one.as_string::<i32>().value(0).to_string()
            }
        }))
    }
}
