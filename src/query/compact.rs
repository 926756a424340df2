//! Compacting dictionaries read from Parquet.
//!
//! Input: the batches of a Parquet scan of the `spans` table. Output: the same rows, where
//! each dictionary-encoded column (at the top level or inside `resource_attributes`) holds
//! only the values its batch refers to, unless its dictionary is small (64 KiB).
//!
//! Invariants: values are unchanged. The Parquet reader gives every batch of a row group
//! the row group's whole dictionary; operators that hold batches (sorts, windows, the
//! coalescing after a filter) count and keep each batch's arrays, so a dictionary shared by
//! many batches would be counted once per batch and kept whole for one row. After this
//! step a batch holds at most one copy of each value it uses, as a plain column would (and
//! a value shared by all its rows, once).

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, MapArray, RecordBatch, RecordBatchOptions, StructArray,
};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow_select::dictionary::garbage_collect_any_dictionary;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
    Statistics,
};
use futures::StreamExt;

/// Passes its input's batches on with compacted dictionaries.
#[derive(Debug)]
pub struct CompactDictionaries {
    input: Arc<dyn ExecutionPlan>,
}

impl CompactDictionaries {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for CompactDictionaries {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CompactDictionaries")
    }
}

impl ExecutionPlan for CompactDictionaries {
    fn name(&self) -> &str {
        "CompactDictionaries"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input))),
            _ => datafusion::common::internal_err!("CompactDictionaries has one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let batches = input.map(|batch| Ok(compact_batch(&batch?)?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// Rows, bounds and null counts are the input's.
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats.first() {
            Some(stats) => Ok(stats.clone()),
            None => datafusion::common::internal_err!("CompactDictionaries has one child"),
        }
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// `batch` with every dictionary compacted.
pub fn compact_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(compact)
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// A dictionary whose values take at most this many bytes is passed on whole: a batch
/// holding all of it costs little.
const SMALL_DICTIONARY_BYTES: usize = 64 << 10;

fn compact(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match column.data_type() {
        DataType::Dictionary(..)
            if column.as_any_dictionary().values().get_buffer_memory_size()
                <= SMALL_DICTIONARY_BYTES =>
        {
            Ok(column.clone())
        }
        DataType::Dictionary(..) => garbage_collect_any_dictionary(column.as_any_dictionary()),
        DataType::Map(field, sorted) => {
            let map = column.as_map();
            let entries = map.entries();
            let compacted = entries
                .columns()
                .iter()
                .map(compact)
                .collect::<Result<Vec<_>, _>>()?;
            let DataType::Struct(fields) = field.data_type() else {
                return Ok(column.clone());
            };
            let entries =
                StructArray::try_new(fields.clone(), compacted, entries.nulls().cloned())?;
            Ok(Arc::new(MapArray::try_new(
                field.clone(),
                map.offsets().clone(),
                entries,
                map.nulls().cloned(),
                *sorted,
            )?))
        }
        _ => Ok(column.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::{Field, Int32Type, Schema};

    #[test]
    fn a_batch_keeps_only_the_values_it_uses() {
        let values = Arc::new(StringArray::from(vec!["a".repeat(100_000), "b".into()]));
        let column =
            DictionaryArray::<Int32Type>::try_new(Int32Array::from(vec![1, 1]), values).unwrap();
        let schema = Schema::new(vec![Field::new("c", column.data_type().clone(), false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(column)]).unwrap();
        let compacted = compact_batch(&batch).unwrap();
        assert_eq!(compacted, batch, "same values");
        let dictionary = compacted.column(0).as_any_dictionary();
        assert_eq!(dictionary.values().len(), 1);
        // A small dictionary is passed on whole.
        let small = Arc::new(StringArray::from(vec!["a".repeat(1000), "b".into()]));
        let column =
            DictionaryArray::<Int32Type>::try_new(Int32Array::from(vec![1, 1]), small).unwrap();
        let kept = compact(&(Arc::new(column) as ArrayRef)).unwrap();
        assert_eq!(kept.as_any_dictionary().values().len(), 2);
        // A scan for `count(*)` has rows and no columns.
        let rows_only = batch.project(&[]).unwrap();
        assert_eq!(compact_batch(&rows_only).unwrap().num_rows(), 2);
    }
}
