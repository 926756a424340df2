//! The SQL sandbox: what a query may not do.
//!
//! Input: a session (before any user SQL runs) and each planned query. Output: the session
//! without table functions, and a refusal for any plan that would write, change session
//! state, or call a function whose output size an argument sets. Invariants: the only
//! tables a query reads are the workspace's `spans`, the `traces` view and the
//! `information_schema`; every refusal names what was refused.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;

use super::QueryError;

/// Scalar functions whose output size is set by an argument rather than by their input
/// (`repeat('x', 2000000000)` would allocate 2 GB outside any memory accounting).
const UNBOUNDED_FUNCTIONS: [&str; 8] = [
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "array_resize",
    "range",
    "generate_series",
    "gen_series",
];

/// A refusal raised while planning, carried through DataFusion's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Stands in for every table function (`generate_series`, `range`, …): it refuses.
#[derive(Debug)]
struct NoTableFunction(String);

impl TableFunctionImpl for NoTableFunction {
    fn call_with_args(&self, _args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        Err(DataFusionError::External(Box::new(Refused(format!(
            "the table function {}() (its output is unbounded)",
            self.0
        )))))
    }
}

/// Replaces every table function of `ctx` by one that refuses.
pub fn remove_table_functions(ctx: &SessionContext) {
    let names: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    for name in names {
        ctx.register_udtf(&name, Arc::new(NoTableFunction(name.clone())));
    }
}

/// Refuses every plan that would change something, reach outside the session, or call an
/// unbounded function.
pub fn check(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        refused = match node {
            LogicalPlan::Ddl(ddl) => Some(format!("DDL ({})", ddl.name())),
            LogicalPlan::Dml(dml) => Some(format!("DML ({})", dml.op)),
            LogicalPlan::Copy(_) => Some("COPY".to_string()),
            LogicalPlan::Statement(stmt) => Some(format!("the statement {}", stmt.name())),
            _ => None,
        };
        if refused.is_none() {
            let _ = node.apply_expressions(|e| {
                e.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && UNBOUNDED_FUNCTIONS.contains(&f.name())
                    {
                        refused = Some(format!(
                            "the function {}() (an argument sets its output size)",
                            f.name()
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            });
        }
        Ok(if refused.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    match refused {
        Some(what) => Err(QueryError::NotAllowed(what)),
        None => Ok(()),
    }
}
