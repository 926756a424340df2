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

/// Columns holding span or trace ids: OTLP ids are stored as lower-case hex, vendor ids
/// exactly as sent, so a filter on them matches a value as given, and an OTLP id typed in
/// upper case also lower-cased.
const ID_COLUMNS: [&str; 3] = ["trace_id", "span_id", "parent_span_id"];

/// The stored forms an id given by a user may have: itself, and for an OTLP id (32 or 16
/// hex digits) with capitals its lower-case form. A vendor id matches only as given, so
/// `Trace-A` never finds a different trace `trace-a`.
pub fn id_variants(id: &str) -> Vec<String> {
    let otlp_hex = matches!(id.len(), 16 | 32) && id.bytes().all(|b| b.is_ascii_hexdigit());
    let lower = id.to_ascii_lowercase();
    if otlp_hex && lower != id {
        vec![id.to_string(), lower]
    } else {
        vec![id.to_string()]
    }
}

/// The `start_time` bounds of a filter as SQL conditions.
fn time_conditions(filter: &Filter, column: &str) -> Vec<String> {
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
        .map(|(field, values)| {
            let column = column_of(field);
            if ID_COLUMNS.contains(&column) {
                let variants: Vec<String> = values.iter().flat_map(|v| id_variants(v)).collect();
                in_list(column, &variants)
            } else {
                in_list(column, values)
            }
        })
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

    #[test]
    fn ids_match_as_given_or_lower_cased() {
        assert_eq!(id_variants("Trace-1"), ["Trace-1"]);
        assert_eq!(id_variants("abc"), ["abc"]);
        let upper = "0AF7651916CD43DD8448EB211C80319C";
        assert_eq!(id_variants(upper), [upper, &upper.to_ascii_lowercase()]);
    }
}
