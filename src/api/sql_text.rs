//! Building the SQL of the API routes from validated parameters. Every user value enters
//! as an escaped string literal or a number, never as SQL text.

use super::params::Filter;

/// A SQL string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `Timestamp(ns, UTC)` literal for `ns` nanoseconds since the epoch.
pub fn ts(ns: i64) -> String {
    format!("arrow_cast({ns}, 'Timestamp(Nanosecond, Some(\"UTC\"))')")
}

/// `column IN ('a', 'b')` or `column = 'a'`.
pub fn in_list(column: &str, values: &[String]) -> String {
    match values {
        [one] => format!("{column} = {}", lit(one)),
        _ => format!(
            "{column} IN ({})",
            values.iter().map(|v| lit(v)).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The `start_time` bounds of a filter as SQL conditions.
pub fn time_conditions(filter: &Filter, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ns) = filter.started_gte {
        out.push(format!("{column} >= {}", ts(ns)));
    }
    if let Some(ns) = filter.started_lte {
        out.push(format!("{column} <= {}", ts(ns)));
    }
    out
}

/// Every condition of a filter; `column_of` maps a filter field to its column.
pub fn conditions(filter: &Filter, column_of: impl Fn(&str) -> &str) -> Vec<String> {
    let mut out: Vec<String> = filter
        .strings
        .iter()
        .map(|(field, values)| in_list(column_of(field), values))
        .collect();
    out.extend(time_conditions(filter, "start_time"));
    out
}

/// `WHERE a AND b`, or nothing.
pub fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(lit("a'b"), "'a''b'");
        assert_eq!(
            in_list("x", &["1".into(), "o'k".into()]),
            "x IN ('1', 'o''k')"
        );
    }
}
