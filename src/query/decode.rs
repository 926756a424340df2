//! Decode guard: the steps that copy a dictionary-encoded value into every row.
//!
//! Input: each query's logical plan after type coercion ([`GuardDecodes`], an analyzer rule
//! run after DataFusion's own), and its physical plan ([`GuardJoinKeys`], run before the
//! physical optimizer's rules). Output: the same plans where every such step first reserves
//! the bytes it is about to produce in the query memory pool, for the length of the step,
//! and fails with the pool's memory error when they do not fit:
//! - a cast from a type holding dictionaries to one holding fewer (written, `arrow_cast`,
//!   or added by coercion, as in `substr(service_name, 2)`);
//! - the columns that grouping keys (grouping sets too), `DISTINCT`, `DISTINCT ON` and the
//!   arguments of DISTINCT aggregates read, decoded in a projection below the node (the
//!   grouping encodes rows one by one);
//! - sort keys and window partition and order keys, decoded in place;
//! - hash-join keys, decoded beside the join's columns.
//!
//! A decoded grouping changes its output from a dictionary to `Utf8`, so types are
//! coerced again above it before casts are guarded.
//!
//! Invariants: answers are those of the plan without the guard (types of decoded groupings
//! aside); the reservation is never below the bytes of text the decoded values hold. A
//! value shared by many spans is held once in a dictionary-encoded column: these are the
//! steps that copy it once per row. (An aggregate that keeps a copy per group, and groupings
//! the optimizer builds from correlated subqueries, are not covered: see the known limits
//! in the operations docs.)

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::Column;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, format::DEFAULT_CAST_OPTIONS};
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr::Sort as SortExpr;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Distinct, DistinctOn, Expr, ExprSchemable, LogicalPlan, Projection,
    ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Sort, Volatility,
    Window,
};

use crate::schema::plain_type;
use datafusion::optimizer::AnalyzerRule;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;

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
                let name = e.schema_name().to_string();
                Ok(Transformed::yes(self.decode(arg.clone(), name, to, safe)))
            }
            _ => Ok(Transformed::no(e)),
        }
    }

    /// `arg` cast to `to`, reserving its decoded size, named `schema_name`.
    fn decode(&self, arg: Expr, schema_name: String, to: DataType, safe: bool) -> Expr {
        let udf = decode_udf(&self.pool, schema_name, to, safe);
        Expr::ScalarFunction(ScalarFunction::new_udf(udf, vec![arg]))
    }

    /// A key that an operator encodes row by row (sorting, window partitions): decoded
    /// first, under a reservation, when it holds dictionaries.
    fn key(&self, e: Expr, schema: &DFSchema) -> Transformed<Expr> {
        match e.get_type(schema) {
            Ok(from) if dictionaries(&from) > 0 => {
                let name = e.schema_name().to_string();
                Transformed::yes(self.decode(e, name, plain_type(&from), false))
            }
            _ => Transformed::no(e),
        }
    }

    /// Decodes the keys of grouping, sorting and `DISTINCT` nodes.
    fn keys(&self, node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        Ok(match node {
            LogicalPlan::Aggregate(a) => {
                // Grouping keys (grouping sets too) and the arguments of DISTINCT
                // aggregates, which the optimizer turns into grouping keys
                // (`count(DISTINCT x)` groups by `x`), read decoded columns.
                let mut used = Vec::new();
                for e in &a.group_expr {
                    used.extend(e.column_refs().into_iter().cloned());
                }
                for e in &a.aggr_expr {
                    distinct_argument_columns(e, &mut used);
                }
                match self.decode_columns(&a.input, &used)? {
                    Some(input) => Transformed::yes(LogicalPlan::Aggregate(Aggregate::try_new(
                        input,
                        a.group_expr,
                        a.aggr_expr,
                    )?)),
                    None => Transformed::no(LogicalPlan::Aggregate(a)),
                }
            }
            LogicalPlan::Distinct(Distinct::On(on)) => {
                let mut used = Vec::new();
                for e in &on.on_expr {
                    used.extend(e.column_refs().into_iter().cloned());
                }
                match self.decode_columns(&on.input, &used)? {
                    Some(input) => Transformed::yes(LogicalPlan::Distinct(Distinct::On(
                        DistinctOn::try_new(on.on_expr, on.select_expr, on.sort_expr, input)?,
                    ))),
                    None => Transformed::no(LogicalPlan::Distinct(Distinct::On(on))),
                }
            }
            LogicalPlan::Sort(s) => {
                let schema = s.input.schema().clone();
                let mut changed = false;
                let expr = s
                    .expr
                    .into_iter()
                    .map(|sort| {
                        let key = self.key(sort.expr, &schema);
                        changed |= key.transformed;
                        SortExpr {
                            expr: key.data,
                            ..sort
                        }
                    })
                    .collect();
                let sort = LogicalPlan::Sort(Sort {
                    expr,
                    input: s.input,
                    fetch: s.fetch,
                });
                match changed {
                    true => Transformed::yes(sort),
                    false => Transformed::no(sort),
                }
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let used: Vec<Column> = input.schema().columns();
                match self.decode_columns(&input, &used)? {
                    Some(input) => Transformed::yes(LogicalPlan::Distinct(Distinct::All(input))),
                    None => Transformed::no(LogicalPlan::Distinct(Distinct::All(input))),
                }
            }
            LogicalPlan::Window(w) => {
                let schema = w.input.schema().clone();
                let mut changed = false;
                let mut exprs = Vec::with_capacity(w.window_expr.len());
                for e in w.window_expr {
                    let (inner, alias) = match e {
                        Expr::Alias(a) => (*a.expr, Some((a.relation, a.name))),
                        e => (e, None),
                    };
                    let name = inner.schema_name().to_string();
                    let keyed = self.window_keys(inner, &schema)?;
                    changed |= keyed.transformed;
                    // The window's output keeps the name later nodes refer to.
                    exprs.push(match (alias, keyed.transformed) {
                        (Some((relation, name)), _) => keyed.data.alias_qualified(relation, name),
                        (None, true) => keyed.data.alias(name),
                        (None, false) => keyed.data,
                    });
                }
                let window = LogicalPlan::Window(Window::try_new(exprs, w.input)?);
                match changed {
                    true => Transformed::yes(window),
                    false => Transformed::no(window),
                }
            }
            other => Transformed::no(other),
        })
    }

    /// `input` under a projection that decodes, under a reservation, those of `used` that
    /// hold dictionaries, keeping their qualified names; `None` when none does.
    fn decode_columns(
        &self,
        input: &Arc<LogicalPlan>,
        used: &[Column],
    ) -> Result<Option<Arc<LogicalPlan>>> {
        let schema = input.schema().clone();
        let mut changed = false;
        let columns = schema
            .iter()
            .map(|(q, f)| {
                let column = Column::from((q, f));
                if !used.contains(&column) || dictionaries(f.data_type()) == 0 {
                    return Expr::Column(column);
                }
                changed = true;
                let name = Expr::Column(column.clone()).schema_name().to_string();
                self.decode(Expr::Column(column), name, plain_type(f.data_type()), false)
                    .alias_qualified(q.cloned(), f.name())
            })
            .collect();
        if !changed {
            return Ok(None);
        }
        let projection = Projection::try_new(columns, input.clone())?;
        Ok(Some(Arc::new(LogicalPlan::Projection(projection))))
    }

    /// Decodes the partition and order keys of a window function.
    fn window_keys(&self, e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let Expr::WindowFunction(mut w) = e else {
            return Ok(Transformed::no(e));
        };
        let mut changed = false;
        let params = &mut w.params;
        for p in params.partition_by.iter_mut() {
            let key = self.key(p.clone(), schema);
            changed |= key.transformed;
            *p = key.data;
        }
        for sort in params.order_by.iter_mut() {
            let key = self.key(sort.expr.clone(), schema);
            changed |= key.transformed;
            sort.expr = key.data;
        }
        let e = Expr::WindowFunction(w);
        Ok(match changed {
            true => Transformed::yes(e),
            false => Transformed::no(e),
        })
    }
}

impl AnalyzerRule for GuardDecodes {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let keyed = plan
            .transform_up_with_subqueries(|node| {
                self.keys(node)?.map_data(|p| p.recompute_schema())
            })?
            .data;
        // A decoded key changes its node's output type (`Utf8` for a dictionary): types are
        // coerced again above it (unions, `CASE`), then every cast out of a dictionary,
        // written or coerced, is guarded.
        let coerced = TypeCoercion::new().analyze(keyed, config)?;
        coerced
            .transform_up_with_subqueries(|node| {
                let schema = input_schema(&node);
                node.map_expressions(|e| e.transform_up(|e| self.guard(e, &schema)))
            })
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spanlake_guard_decodes"
    }
}

/// The physical rule guarding the keys of hash joins (written joins, and those the
/// optimizer makes of `IN`/`EXISTS` subqueries): a dictionary-encoded key is decoded under
/// a reservation before the join hashes and compares it, so a join on a value shared by
/// many rows is refused when its decoded keys do not fit, instead of comparing megabytes
/// per pair of rows for hours in one uninterruptible step. The join's output is unchanged
/// (keys are computed beside its columns).
#[derive(Debug)]
pub struct GuardJoinKeys {
    pool: Arc<dyn MemoryPool>,
}

impl GuardJoinKeys {
    /// DataFusion's physical optimizer rules, this one first: the rules that partition a
    /// join's inputs must hash the keys the join compares.
    pub fn first_of(
        pool: Arc<dyn MemoryPool>,
    ) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> =
            vec![Arc::new(Self { pool })];
        rules.extend(PhysicalOptimizer::new().rules);
        rules
    }

    fn key(
        &self,
        key: &Arc<dyn PhysicalExpr>,
        schema: &Schema,
        config: &Arc<ConfigOptions>,
    ) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let from = key.data_type(schema)?;
        if dictionaries(&from) == 0 {
            return Ok(None);
        }
        let udf = decode_udf(&self.pool, String::new(), plain_type(&from), false);
        let decoded = ScalarFunctionExpr::try_new(udf, vec![key.clone()], schema, config.clone())?;
        Ok(Some(Arc::new(decoded)))
    }
}

impl PhysicalOptimizerRule for GuardJoinKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let config = Arc::new(config.clone());
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let (left, right) = (join.left().schema(), join.right().schema());
            let mut changed = false;
            let mut on = Vec::with_capacity(join.on().len());
            for (l, r) in join.on() {
                let l2 = self.key(l, &left, &config)?;
                let r2 = self.key(r, &right, &config)?;
                changed |= l2.is_some() || r2.is_some();
                on.push((
                    l2.unwrap_or_else(|| l.clone()),
                    r2.unwrap_or_else(|| r.clone()),
                ));
            }
            if !changed {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(join.builder().with_on(on).build_exec()?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spanlake_guard_join_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Adds the columns the arguments of a DISTINCT aggregate in `e` read to `used`.
fn distinct_argument_columns(e: &Expr, used: &mut Vec<Column>) {
    match e {
        Expr::Alias(a) => distinct_argument_columns(&a.expr, used),
        Expr::AggregateFunction(f) if f.params.distinct => {
            for arg in &f.params.args {
                used.extend(arg.column_refs().into_iter().cloned());
            }
        }
        _ => {}
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

/// The [`Decode`] function casting to `to` (`safe`: as `TRY_CAST`), named `schema_name`.
fn decode_udf(
    pool: &Arc<dyn MemoryPool>,
    schema_name: String,
    to: DataType,
    safe: bool,
) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(Decode {
        schema_name,
        to,
        safe,
        pool: pool.clone(),
        signature: Signature::any(1, Volatility::Immutable),
    }))
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

/// Dictionary values up to this size are counted as if every row held the largest.
const SMALL_VALUE_BYTES: usize = 256;

/// About how many bytes `a` takes with its dictionaries decoded: at least the bytes of text
/// every row's values hold.
fn decoded_bytes(a: &dyn Array) -> usize {
    match a.data_type() {
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let sizes = value_sizes(d.values().as_ref());
            // Small values (a service name): every row at the largest is a close enough
            // bound, without reading the keys.
            let largest = sizes.iter().copied().max().unwrap_or(0);
            if largest <= SMALL_VALUE_BYTES {
                return a.len().saturating_mul(16 + largest);
            }
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
    match values.data_type() {
        DataType::Utf8 => {
            let o = values.as_string::<i32>().value_offsets();
            o.windows(2).map(|w| (w[1] - w[0]) as usize).collect()
        }
        DataType::LargeUtf8 => {
            let o = values.as_string::<i64>().value_offsets();
            o.windows(2).map(|w| (w[1] - w[0]) as usize).collect()
        }
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
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Table `t`: 1,000 rows sharing one 64 KiB value (64 KiB encoded, 64 MB decoded);
    /// table `small`: the same rows sharing `x`; in a 16 MiB pool.
    async fn run(sql: &str) -> Result<Vec<RecordBatch>> {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(16 << 20));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rules(GuardJoinKeys::first_of(pool.clone()))
            .with_config(SessionConfig::new().with_target_partitions(2))
            .build();
        let ctx = SessionContext::new_with_state(state);
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
        let small = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![0; 1000]),
            Arc::new(StringArray::from(vec!["x"])),
        )?;
        let small = RecordBatch::try_new(schema.clone(), vec![Arc::new(small)])?;
        ctx.register_table(
            "small",
            Arc::new(MemTable::try_new(schema.clone(), vec![vec![small]])?),
        )?;
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
            // Keys that grouping, sorting and windows encode row by row.
            "SELECT s, count(*) FROM t GROUP BY s",
            "SELECT DISTINCT s FROM t",
            "SELECT s FROM t ORDER BY s LIMIT 2",
            "SELECT row_number() OVER (PARTITION BY s) FROM t",
            "SELECT count(*) FROM (SELECT s FROM t UNION SELECT s FROM t)",
            "SELECT count(DISTINCT s) FROM t",
            "SELECT count(*) FROM t GROUP BY ROLLUP (s)",
            "SELECT DISTINCT ON (s) s FROM t",
            "SELECT count(*) FROM t a JOIN t b ON a.s = b.s",
            "SELECT count(*) FROM t WHERE s IN (SELECT s FROM t)",
        ] {
            let err = run(sql).await.unwrap_err().to_string();
            assert!(err.contains("decoding a dictionary"), "{sql}: {err}");
        }
        // Small values decode within the pool and answer as before.
        for (sql, expected) in [
            (
                "SELECT small.s, count(*) AS n FROM small GROUP BY small.s",
                "x 1000",
            ),
            (
                "SELECT s AS v, count(*) AS n FROM small GROUP BY v HAVING count(*) > 1",
                "x 1000",
            ),
            ("SELECT DISTINCT s, 1000 FROM small", "x 1000"),
            (
                "SELECT CASE WHEN count(*) > 1 THEN s ELSE 'other' END, count(*) FROM small GROUP BY s",
                "x 1000",
            ),
            (
                "SELECT s, count(*) FROM (SELECT DISTINCT s FROM small UNION ALL SELECT s FROM small) GROUP BY s",
                "x 1001",
            ),
            (
                "SELECT array_to_string(array_agg(DISTINCT s ORDER BY s), ''), 1000 FROM small",
                "x 1000",
            ),
            (
                "SELECT s, count(*) FROM small GROUP BY ROLLUP (s) ORDER BY s NULLS LAST",
                "x 1000",
            ),
            (
                "SELECT a.s, count(*) / 1000 FROM small a JOIN small b ON a.s = b.s GROUP BY 1",
                "x 1000",
            ),
            (
                "SELECT max(s) AS m, count(DISTINCT s) * 1000 AS n FROM small",
                "x 1000",
            ),
            (
                "SELECT s, count(*) FROM small GROUP BY 1 ORDER BY 1 LIMIT 1",
                "x 1000",
            ),
            (
                "SELECT s, max(r) FROM (SELECT s, row_number() OVER (PARTITION BY s ORDER BY s) AS r FROM small) GROUP BY s",
                "x 1000",
            ),
        ] {
            let batches = run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            let text = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            let row: Vec<&str> = text
                .lines()
                .nth(3)
                .unwrap()
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(row.join(" "), expected, "{sql}\n{text}");
        }
    }
}
