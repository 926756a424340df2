//! Output guards: functions whose answer can outgrow their arguments.
//!
//! Input: each query's logical plan before it is optimized. Output: the same plan where
//! every function whose output can be larger than its arguments (`replace`, `regexp_replace`, `array_to_string`, `concat`, the `||`
//! operator, `upper`, …) first computes an upper bound of the bytes it is about to produce
//! and reserves them in the query memory pool for the length of the call; when they do not
//! fit, the query fails with the pool's memory error instead of allocating them. A call on
//! constants alone may produce at most [`CONSTANT_LIMIT`] bytes.
//! Invariants: a guarded function answers exactly what the function it wraps answers; the
//! bound is never below the output, so nesting (`replace(replace(…))`) or a chain of `||`
//! through subqueries cannot build a value larger than the pool's free memory — neither
//! while the optimizer folds constants nor while the query runs.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::kernels::concat_elements::concat_elements_dyn;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::udf_eq::UdfEq;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use regex::Regex;

/// Bytes one call may produce from constant arguments only. The optimizer folds such calls
/// into literals that every later planning step copies and names, so a constant much larger
/// than any SQL text would cost far more time than memory.
const CONSTANT_LIMIT: usize = 1 << 20;

/// How a function's output relates to its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// At most this many times the bytes of all arguments together.
    Times(usize),
    /// `concat_ws`: the separator (first argument) once between every two others.
    Separated,
    /// `replace(s, from, to)`: `to` once for every `from` found in `s`.
    Replace,
    /// `regexp_replace(s, pattern, replacement[, flags])`: the replacement for every match.
    RegexpReplace,
    /// `array_to_string(list, delimiter[, null])`: a delimiter (or the null text) per element.
    Join,
}

/// The guarded functions (aliases follow their function).
const GUARDED: [(&str, Growth); 17] = [
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_to_string", Growth::Join),
    ("concat_ws", Growth::Separated),
    ("concat", Growth::Times(1)),
    // A negative `FOR` writes the string around the replacement twice.
    ("overlay", Growth::Times(2)),
    ("array_concat", Growth::Times(1)),
    ("array_append", Growth::Times(1)),
    ("array_prepend", Growth::Times(1)),
    ("make_array", Growth::Times(1)),
    ("to_hex", Growth::Times(2)),
    ("encode", Growth::Times(2)),
    ("upper", Growth::Times(3)),
    ("lower", Growth::Times(3)),
    ("initcap", Growth::Times(3)),
    ("translate", Growth::Times(4)),
    // Every character of the string may become a list element with its own offset.
    ("string_to_array", Growth::Times(9)),
];

/// The guarded `||` operator.
fn concat_operator(pool: &Arc<dyn MemoryPool>) -> Arc<ScalarUDF> {
    Arc::new(guarded(
        Arc::new(ConcatOperator::default()),
        Growth::Times(1),
        pool,
    ))
}

fn guarded(inner: Arc<dyn ScalarUDFImpl>, growth: Growth, pool: &Arc<dyn MemoryPool>) -> ScalarUDF {
    ScalarUDF::new_from_shared_impl(Arc::new(Guarded {
        inner: inner.into(),
        growth,
        pool: pool.clone(),
    }))
}

/// Guards every growing function of `plan` (before it is optimized, so constant folding
/// runs guarded too): each call of a function of [`GUARDED`] — however it got into the
/// plan: by name, by an alias, or written by the planner for `[a, b]`, `list || list` or
/// `OVERLAY(…)` — calls its guarded self, and `a || b` calls the guarded operator (the
/// operator itself is evaluated by a kernel no function guard sees).
pub fn guard_plan(plan: LogicalPlan, pool: &Arc<dyn MemoryPool>) -> Result<LogicalPlan> {
    let concat = concat_operator(pool);
    plan.transform_up_with_subqueries(|node| {
        let node = node.map_expressions(|e| e.transform_up(|e| guard_expr(e, &concat, pool)))?;
        if node.transformed {
            node.map_data(|p| p.recompute_schema())
        } else {
            Ok(node)
        }
    })
    .map(|t| t.data)
}

fn guard_expr(
    e: Expr,
    concat: &Arc<ScalarUDF>,
    pool: &Arc<dyn MemoryPool>,
) -> Result<Transformed<Expr>> {
    Ok(match e {
        Expr::BinaryExpr(b) if b.op == Operator::StringConcat => {
            Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                concat.clone(),
                vec![*b.left, *b.right],
            )))
        }
        Expr::ScalarFunction(f) => {
            let inner = f.func.inner();
            let already = (inner.as_ref() as &dyn Any).is::<Guarded>();
            match GUARDED.iter().find(|(name, _)| *name == f.func.name()) {
                Some(&(_, growth)) if !already => {
                    let udf = Arc::new(guarded(inner.clone(), growth, pool));
                    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(udf, f.args)))
                }
                _ => Transformed::no(Expr::ScalarFunction(f)),
            }
        }
        e => Transformed::no(e),
    })
}

/// A function that reserves its output's upper bound in the pool while it runs.
#[derive(Debug)]
struct Guarded {
    inner: UdfEq<Arc<dyn ScalarUDFImpl>>,
    growth: Growth,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.growth == other.growth
    }
}

impl Eq for Guarded {}

impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bound = output_bound(self.growth, &args.args, args.number_rows);
        if bound > CONSTANT_LIMIT && constants_only(&args.args) {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would build a constant of up to {bound} bytes; one constant may hold \
                 {CONSTANT_LIMIT} bytes",
                self.inner.name()
            )));
        }
        let reservation =
            MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool);
        reservation.try_grow(bound)?;
        self.inner.invoke_with_args(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    // `simplify` is not passed on: a simplified call names the unguarded function.
}

/// Whether a call has constant arguments only (its answer is one scalar, whatever the
/// batch's length).
fn constants_only(args: &[ColumnarValue]) -> bool {
    args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)))
}

/// The upper bound of the bytes a `growth` function produces from `args`.
fn output_bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> usize {
    let rows = if constants_only(args) { 1 } else { rows };
    let all: usize = args
        .iter()
        .map(|a| bytes(a, rows))
        .fold(0, usize::saturating_add);
    // Offsets and validity of the answer.
    let per_row = rows.saturating_mul(16);
    let body = match growth {
        Growth::Times(k) => all.saturating_mul(k),
        Growth::Separated => args.first().map_or(all, |sep| {
            all.saturating_add(bytes(sep, rows).saturating_mul(args.len().saturating_sub(2)))
        }),
        Growth::Replace => replace_bound(args, rows),
        Growth::RegexpReplace => regexp_replace_bound(args, rows),
        Growth::Join => {
            let per_leaf = args
                .iter()
                .skip(1)
                .map(|a| longest(a, rows))
                .fold(PRINTED_WIDTH, usize::saturating_add);
            let (leaves, text) = args.first().map_or((0, 0), |a| list_leaves(a, rows));
            text.saturating_add(leaves.saturating_mul(per_leaf))
        }
    };
    body.saturating_add(per_row)
}

fn replace_bound(args: &[ColumnarValue], rows: usize) -> usize {
    let [s, from, to] = args else {
        return 0;
    };
    let mut total = 0usize;
    for i in 0..rows {
        let (Some(s), Some(from), Some(to)) = (text(s, i), text(from, i), text(to, i)) else {
            continue;
        };
        let extra = to.len().saturating_sub(from.len());
        let found = if extra == 0 {
            0
        } else if from.is_empty() {
            s.chars().count() + 1
        } else {
            s.matches(from).count()
        };
        total = total
            .saturating_add(s.len())
            .saturating_add(found.saturating_mul(extra));
    }
    total
}

fn regexp_replace_bound(args: &[ColumnarValue], rows: usize) -> usize {
    let (Some(s), Some(pattern), Some(replacement)) = (args.first(), args.get(1), args.get(2))
    else {
        return 0;
    };
    let flags = args.get(3);
    let mut compiled: Option<(String, Option<Regex>)> = None;
    let mut total = 0usize;
    for i in 0..rows {
        let (Some(s), Some(p), Some(r)) = (text(s, i), text(pattern, i), text(replacement, i))
        else {
            continue;
        };
        let flags = flags.and_then(|f| text(f, i)).unwrap_or("");
        let global = flags.contains('g');
        let others = flags.replace('g', "");
        let source = if others.is_empty() {
            p.to_string()
        } else {
            format!("(?{others}){p}")
        };
        if compiled.as_ref().is_none_or(|(c, _)| *c != source) {
            let re = Regex::new(&source).ok();
            compiled = Some((source, re));
        }
        let matches = match compiled.as_ref().and_then(|(_, re)| re.as_ref()) {
            Some(re) if global => re.find_iter(s).count(),
            Some(re) => usize::from(re.is_match(s)),
            // The function itself will refuse the pattern; bound as if it matched everywhere.
            None => s.len() + 1,
        };
        // Each `$n`/`\n` reference inserts at most a match, and matches do not overlap.
        let references = r.matches(['$', '\\']).count();
        let inserted = matches.saturating_mul(r.len().saturating_add(references.saturating_mul(3)));
        let copied = if matches > 0 {
            references.saturating_mul(s.len())
        } else {
            0
        };
        total = total
            .saturating_add(s.len())
            .saturating_add(inserted)
            .saturating_add(copied);
    }
    total
}

/// The string at row `i` of a string argument (`None` for null or another type).
fn text(v: &ColumnarValue, i: usize) -> Option<&str> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => s.as_deref(),
        ColumnarValue::Scalar(_) => None,
        ColumnarValue::Array(a) if a.is_null(i) => None,
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => Some(a.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i)),
            DataType::Utf8View => Some(a.as_string_view().value(i)),
            _ => None,
        },
    }
}

/// Bytes of an argument over `rows` rows (a scalar counts once per row).
fn bytes(v: &ColumnarValue, rows: usize) -> usize {
    match v {
        ColumnarValue::Scalar(s) => scalar_bytes(s).saturating_mul(rows),
        ColumnarValue::Array(a) => array_bytes(a.as_ref()),
    }
}

fn scalar_bytes(s: &ScalarValue) -> usize {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            v.as_ref().map_or(0, String::len)
        }
        other => other.size(),
    }
}

fn array_bytes(a: &dyn Array) -> usize {
    match a.data_type() {
        DataType::Utf8 => {
            let o = a.as_string::<i32>().value_offsets();
            (o[o.len() - 1] - o[0]) as usize
        }
        DataType::LargeUtf8 => {
            let o = a.as_string::<i64>().value_offsets();
            (o[o.len() - 1] - o[0]) as usize
        }
        // A view's length is its low 32 bits.
        DataType::Utf8View => a
            .as_string_view()
            .views()
            .iter()
            .map(|v| *v as u32 as usize)
            .sum(),
        _ => a.get_array_memory_size(),
    }
}

/// The longest string of an argument.
fn longest(v: &ColumnarValue, rows: usize) -> usize {
    (0..rows)
        .map(|i| text(v, i).map_or(0, str::len))
        .max()
        .unwrap_or(0)
}

/// The most characters a number, date or other non-text value prints as.
const PRINTED_WIDTH: usize = 80;

/// Leaf elements of a list argument over `rows` rows (a scalar list counts once per row),
/// and the bytes of those that are text.
fn list_leaves(v: &ColumnarValue, rows: usize) -> (usize, usize) {
    match v {
        ColumnarValue::Array(a) => leaves(a.as_ref()),
        ColumnarValue::Scalar(s) => s.to_array().map_or((0, 0), |a| {
            let (n, text) = leaves(a.as_ref());
            (n.saturating_mul(rows), text.saturating_mul(rows))
        }),
    }
}

/// Leaf values under a (possibly nested) list array, and the bytes of those that are text.
fn leaves(a: &dyn Array) -> (usize, usize) {
    match a.data_type() {
        DataType::List(_) => leaves(a.as_list::<i32>().values().as_ref()),
        DataType::LargeList(_) => leaves(a.as_list::<i64>().values().as_ref()),
        DataType::FixedSizeList(_, _) => leaves(a.as_fixed_size_list().values().as_ref()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (a.len(), array_bytes(a)),
        _ => (a.len(), 0),
    }
}

/// `a || b` on strings or binaries as a function: null when either side is, else the two
/// joined.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOperator {
    signature: Signature,
}

impl Default for ConcatOperator {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The type both sides of `||` become: binary when both are, else a string type.
fn concat_type(types: &[DataType]) -> DataType {
    let binary = |t: &DataType| {
        matches!(
            t,
            DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
                | DataType::Null
        )
    };
    if types.iter().all(binary) && types.iter().any(|t| *t != DataType::Null) {
        if types.contains(&DataType::BinaryView) {
            DataType::BinaryView
        } else if types.contains(&DataType::LargeBinary) {
            DataType::LargeBinary
        } else {
            DataType::Binary
        }
    } else if types.contains(&DataType::Utf8View) {
        DataType::Utf8View
    } else if types.contains(&DataType::LargeUtf8) {
        DataType::LargeUtf8
    } else {
        DataType::Utf8
    }
}

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        "||"
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" || "))
    }

    /// The name the operator gives its column, so a rewritten query keeps its names.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args
            .iter()
            .map(|a| a.schema_name().to_string())
            .collect::<Vec<_>>()
            .join(" || "))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(vec![concat_type(arg_types); arg_types.len()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(concat_type(arg_types))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = constants_only(&args.args);
        let rows = if scalar { 1 } else { args.number_rows };
        let [left, right] = args.args.as_slice() else {
            return Err(DataFusionError::Internal("|| takes two arguments".into()));
        };
        let joined = concat_elements_dyn(&left.to_array(rows)?, &right.to_array(rows)?)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&joined, 0)?)
        } else {
            ColumnarValue::Array(joined)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_bound_counts_every_occurrence_times_the_growth() {
        let s = ColumnarValue::Scalar(ScalarValue::Utf8(Some("abcabc".into())));
        let from = ColumnarValue::Scalar(ScalarValue::Utf8(Some("b".into())));
        let to = ColumnarValue::Scalar(ScalarValue::Utf8(Some("xyz".into())));
        assert_eq!(replace_bound(&[s, from, to], 1), 6 + 2 * 2);
    }

    #[test]
    fn regexp_replace_bound_counts_matches_and_references() {
        let arg = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let once = regexp_replace_bound(&[arg("aaaa"), arg("a"), arg("bb")], 1);
        assert_eq!(once, 4 + 2);
        let all = regexp_replace_bound(&[arg("aaaa"), arg("a"), arg("bb"), arg("g")], 1);
        assert_eq!(all, 4 + 4 * 2);
        let referenced = regexp_replace_bound(&[arg("aaaa"), arg("(a)"), arg("$1$1"), arg("g")], 1);
        assert!(referenced >= "aaaaaaaa".len());
    }

    #[test]
    fn a_scalar_list_joined_counts_once_per_row_and_every_nested_leaf() {
        use arrow::array::{ListArray, StringArray};
        use arrow::datatypes::{Field, Int32Type};
        let inner = ListArray::from_iter_primitive::<Int32Type, _, _>([Some(vec![Some(1); 10])]);
        let nested = ListArray::new(
            Arc::new(Field::new_list_field(inner.data_type().clone(), true)),
            arrow::buffer::OffsetBuffer::from_lengths([1]),
            Arc::new(inner),
            None,
        );
        let list = ColumnarValue::Scalar(ScalarValue::List(Arc::new(nested)));
        let delimiter = ColumnarValue::Array(Arc::new(StringArray::from(vec!["abc"; 100])));
        let bound = output_bound(Growth::Join, &[list, delimiter], 100);
        assert!(bound >= 100 * 10 * (PRINTED_WIDTH + 3), "{bound}");
    }
}
