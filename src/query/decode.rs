//! Decode guard: casts out of a dictionary.
//!
//! Input: each query's logical plan after type coercion (this is an analyzer rule, run after
//! DataFusion's own). Output: the same plan where every cast from a type holding
//! dictionary-encoded values to one holding fewer (written in the SQL, `arrow_cast`, or
//! added by coercion, as in `substr(service_name, 2)`) first reserves the bytes it is about to produce
//! in the query memory pool, for the length of the cast; when they do not fit, the query
//! fails with the pool's memory error instead of allocating them.
//!
//! Invariants: a guarded cast answers exactly what the cast answers; the reservation is
//! never below the bytes of text the decoded values hold. A value shared by many spans is
//! held once in a dictionary-encoded column; a cast is the common step that copies it once
//! per row. (Operators that encode rows, for grouping or merging by such a column, copy
//! it too, and count the copy only afterwards: see the known limits in the operations
//! docs.)

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, format::DEFAULT_CAST_OPTIONS};
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The analyzer rule guarding every cast out of a dictionary.
#[derive(Debug)]
pub struct GuardDecodes {
    pool: Arc<dyn MemoryPool>,
}

impl GuardDecodes {
    pub fn new(pool: Arc<dyn MemoryPool>) -> Self {
        Self { pool }
    }

    fn guard(&self, e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let (arg, safe) = match &e {
            Expr::Cast(c) => (c.expr.as_ref(), false),
            Expr::TryCast(c) => (c.expr.as_ref(), true),
            Expr::ScalarFunction(f) if f.func.name() == "arrow_cast" && !f.args.is_empty() => {
                (&f.args[0], false)
            }
            _ => return Ok(Transformed::no(e)),
        };
        let from = arg.get_type(schema).ok();
        let to = e.get_type(schema).ok();
        match (from, to) {
            (Some(from), Some(to)) if dictionaries(&from) > dictionaries(&to) => {
                let udf = ScalarUDF::new_from_impl(Decode {
                    schema_name: e.schema_name().to_string(),
                    to,
                    safe,
                    pool: self.pool.clone(),
                    signature: Signature::any(1, Volatility::Immutable),
                });
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(Arc::new(udf), vec![arg.clone()]),
                )))
            }
            _ => Ok(Transformed::no(e)),
        }
    }
}

impl AnalyzerRule for GuardDecodes {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = input_schema(&node);
            let node = node.map_expressions(|e| e.transform_up(|e| self.guard(e, &schema)))?;
            if node.transformed {
                node.map_data(|p| p.recompute_schema())
            } else {
                Ok(node)
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spanlake_guard_decodes"
    }
}

/// The schema a node's expressions are written against: its inputs' (its own for a scan).
fn input_schema(node: &LogicalPlan) -> DFSchema {
    let inputs = node.inputs();
    let Some((first, rest)) = inputs.split_first() else {
        return node.schema().as_ref().clone();
    };
    let mut schema = first.schema().as_ref().clone();
    for input in rest {
        schema.merge(input.schema());
    }
    schema
}

/// How many dictionary-encoded parts `data_type` has (itself, or inside maps, lists and
/// structs): a cast to fewer decodes some.
fn dictionaries(data_type: &DataType) -> usize {
    match data_type {
        DataType::Dictionary(..) => 1,
        DataType::Map(f, _)
        | DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _) => dictionaries(f.data_type()),
        DataType::Struct(fields) => fields.iter().map(|f| dictionaries(f.data_type())).sum(),
        _ => 0,
    }
}

/// A cast that reserves the decoded size of its argument while it runs.
#[derive(Debug)]
struct Decode {
    /// The name of the cast it replaces, which later nodes of the plan refer to.
    schema_name: String,
    to: DataType,
    safe: bool,
    pool: Arc<dyn MemoryPool>,
    signature: Signature,
}

impl PartialEq for Decode {
    fn eq(&self, other: &Self) -> bool {
        self.schema_name == other.schema_name && self.to == other.to && self.safe == other.safe
    }
}

impl Eq for Decode {}

impl Hash for Decode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.schema_name.hash(state);
        self.to.hash(state);
        self.safe.hash(state);
    }
}

impl ScalarUDFImpl for Decode {
    fn name(&self) -> &str {
        if self.safe { "try_cast" } else { "cast" }
    }

    fn schema_name(&self, _args: &[Expr]) -> Result<String> {
        Ok(self.schema_name.clone())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.to.clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = self.safe || args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(self.name(), self.to.clone(), nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let options = CastOptions {
            safe: self.safe,
            ..DEFAULT_CAST_OPTIONS
        };
        match args.args.into_iter().next() {
            Some(ColumnarValue::Array(a)) => {
                let reservation = MemoryConsumer::new("decoding a dictionary").register(&self.pool);
                reservation.try_grow(decoded_bytes(a.as_ref()))?;
                Ok(ColumnarValue::Array(cast_with_options(
                    &a, &self.to, &options,
                )?))
            }
            Some(ColumnarValue::Scalar(s)) => Ok(ColumnarValue::Scalar(
                s.cast_to_with_options(&self.to, &options)?,
            )),
            None => datafusion::common::exec_err!("a cast needs one argument"),
        }
    }
}

/// About how many bytes `a` takes with its dictionaries decoded: at least the bytes of text
/// every row's values hold.
fn decoded_bytes(a: &dyn Array) -> usize {
    match a.data_type() {
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let sizes = value_sizes(d.values().as_ref());
            let keys = d.normalized_keys();
            let valid = |i: &usize| d.keys().is_valid(*i);
            (0..keys.len())
                .filter(valid)
                .map(|i| sizes.get(keys[i]).copied().unwrap_or(0))
                .fold(a.len().saturating_mul(16), usize::saturating_add)
        }
        DataType::Map(..) => decoded_bytes(a.as_map().entries()),
        DataType::List(_) => decoded_bytes(a.as_list::<i32>().values().as_ref()),
        DataType::LargeList(_) => decoded_bytes(a.as_list::<i64>().values().as_ref()),
        DataType::FixedSizeList(..) => decoded_bytes(a.as_fixed_size_list().values().as_ref()),
        DataType::Struct(_) => a
            .as_struct()
            .columns()
            .iter()
            .map(|c| decoded_bytes(c.as_ref()))
            .fold(0, usize::saturating_add),
        _ => a.get_array_memory_size(),
    }
}

/// The bytes of each value of a dictionary's values (text exactly, others on average).
fn value_sizes(values: &dyn Array) -> Vec<usize> {
    let offsets = |o: &[i64]| o.windows(2).map(|w| (w[1] - w[0]) as usize).collect();
    match values.data_type() {
        DataType::Utf8 => offsets(
            &values
                .as_string::<i32>()
                .value_offsets()
                .iter()
                .map(|&o| o as i64)
                .collect::<Vec<_>>(),
        ),
        DataType::LargeUtf8 => offsets(values.as_string::<i64>().value_offsets()),
        _ => {
            let each = decoded_bytes(values) / values.len().max(1);
            vec![each; values.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, RecordBatch, StringArray};
    use arrow::datatypes::{Int32Type, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// 1,000 rows sharing one 64 KiB value: 64 KiB encoded, 64 MB decoded, in a 16 MiB pool.
    async fn run(sql: &str) -> Result<Vec<RecordBatch>> {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(16 << 20));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        ctx.add_analyzer_rule(Arc::new(GuardDecodes::new(pool)));
        let keys = Int32Array::from(vec![0; 1000]);
        let values = Arc::new(StringArray::from(vec!["x".repeat(64 << 10)]));
        let column = DictionaryArray::<Int32Type>::try_new(keys, values)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            column.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(column)])?;
        let table = MemTable::try_new(schema, vec![vec![batch]])?;
        ctx.register_table("t", Arc::new(table))?;
        ctx.sql(sql).await?.collect().await
    }

    #[tokio::test]
    async fn decoding_a_shared_value_per_row_reserves_what_it_builds() {
        let rows = |r: Result<Vec<RecordBatch>>| r.unwrap().iter().map(|b| b.num_rows()).sum();
        let n: usize = rows(run("SELECT s FROM t WHERE s LIKE 'x%'").await);
        assert_eq!(n, 1000, "reading and comparing keeps the dictionary");
        let n: usize = rows(run("SELECT length(s) FROM t LIMIT 3").await);
        assert_eq!(n, 3);
        for sql in [
            "SELECT substr(s, 2) FROM t",
            "SELECT s || 'a' FROM t",
            "SELECT string_agg(s, ',') FROM t",
            "SELECT CAST(s AS VARCHAR) AS v FROM t",
            "SELECT TRY_CAST(s AS VARCHAR) FROM t",
            "SELECT * FROM (SELECT arrow_cast(s, 'Utf8') AS v FROM t) WHERE v <> ''",
            "SELECT * FROM (SELECT arrow_cast(s, 'Utf8') FROM t) ORDER BY 1",
        ] {
            let err = run(sql).await.unwrap_err().to_string();
            assert!(err.contains("decoding a dictionary"), "{sql}: {err}");
        }
    }
}
