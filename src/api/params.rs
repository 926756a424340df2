//! Query parameters of the listing routes, validated like FastAPI: `page`, `page_size`,
//! `sort`, `mode`, and `filter` both in bracket form (`filter[status]=error`,
//! `filter[started_at][$gte]=…`, `filter[id][$in]=a,b`) and as a JSON object
//! (`filter={"status":"error"}`). Every problem becomes one `ValidationError`.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// One FastAPI-style validation problem.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationError {
    /// Where: `["query", "page"]`, `["path", "workspace"]`, `["body", …]`.
    pub loc: Vec<Value>,
    /// What is wrong.
    pub msg: String,
    /// A machine-readable kind (`int_parsing`, `greater_than_equal`, `enum`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending input, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

impl ValidationError {
    /// A problem at `loc`.
    pub fn new(loc: &[&str], msg: impl Into<String>, kind: &str, input: Option<Value>) -> Self {
        Self {
            loc: loc.iter().map(|s| Value::String(s.to_string())).collect(),
            msg: msg.into(),
            kind: kind.to_string(),
            input,
        }
    }
}

/// How much of each trace a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Root-span fields only.
    Summary,
    /// Rollups, and the root's input/output cut to 300 characters.
    Preview,
    /// Rollups.
    Detailed,
}

/// The span statuses.
pub const STATUSES: [&str; 4] = ["success", "error", "cancelled", "unknown"];

/// A validated filter.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Equality (one value) or membership (`$in`) per string field.
    pub strings: Vec<(String, Vec<String>)>,
    /// `started_at >= …` in ns.
    pub started_gte: Option<i64>,
    /// `started_at <= …` in ns.
    pub started_lte: Option<i64>,
    /// The filter as received, for the response's `filter` echo.
    pub echo: Map<String, Value>,
}

/// Validated listing parameters.
#[derive(Debug, Clone)]
pub struct ListParams {
    /// 1-based page.
    pub page: usize,
    /// Rows per page (1–1000).
    pub page_size: usize,
    /// `started_at` or `-started_at`.
    pub sort: String,
    /// Detail level.
    pub mode: Mode,
    /// The filter.
    pub filter: Filter,
}

impl ListParams {
    /// Newest first?
    pub fn descending(&self) -> bool {
        self.sort.starts_with('-')
    }

    /// Rows to skip.
    pub fn offset(&self) -> usize {
        (self.page - 1) * self.page_size
    }
}

/// Which filter fields a route takes.
pub struct FilterSpec {
    /// Plain string fields (equality).
    pub strings: &'static [&'static str],
    /// Fields that also take `$in`.
    pub in_fields: &'static [&'static str],
}

/// The filters of the trace listing.
pub const TRACE_FILTERS: FilterSpec = FilterSpec {
    strings: &[
        "id",
        "session_id",
        "status",
        "experiment_id",
        "test_case_id",
    ],
    in_fields: &["id"],
};

/// The filters of the span listing.
pub const SPAN_FILTERS: FilterSpec = FilterSpec {
    strings: &["trace_id", "session_id", "name", "status"],
    in_fields: &["trace_id"],
};

fn int_param(
    errors: &mut Vec<ValidationError>,
    name: &str,
    raw: Option<&str>,
    default: usize,
    max: Option<usize>,
) -> usize {
    let Some(raw) = raw else { return default };
    let Ok(v) = raw.trim().parse::<i64>() else {
        errors.push(ValidationError::new(
            &["query", name],
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
            Some(json!(raw)),
        ));
        return default;
    };
    if v < 1 {
        errors.push(ValidationError::new(
            &["query", name],
            "Input should be greater than or equal to 1",
            "greater_than_equal",
            Some(json!(raw)),
        ));
        return default;
    }
    if let Some(max) = max.filter(|m| v as usize > *m) {
        errors.push(ValidationError::new(
            &["query", name],
            format!("Input should be less than or equal to {max}"),
            "less_than_equal",
            Some(json!(raw)),
        ));
        return default;
    }
    v as usize
}

/// The highest page number: far beyond any listing, and `page × page_size` stays a
/// valid row offset.
pub const MAX_PAGE: usize = 1_000_000_000;

/// Parses and validates a raw query string.
pub fn parse(query: &str, spec: &FilterSpec) -> Result<ListParams, Vec<ValidationError>> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut errors = Vec::new();
    let page = int_param(&mut errors, "page", get("page"), 1, Some(MAX_PAGE));
    let page_size = int_param(&mut errors, "page_size", get("page_size"), 10, Some(1000));
    let sort = get("sort").unwrap_or("-started_at").to_string();
    if sort != "started_at" && sort != "-started_at" {
        errors.push(ValidationError::new(
            &["query", "sort"],
            "Input should be 'started_at' or '-started_at'",
            "enum",
            Some(json!(sort)),
        ));
    }
    let mode = match get("mode").unwrap_or("detailed") {
        "summary" => Mode::Summary,
        "preview" => Mode::Preview,
        "detailed" => Mode::Detailed,
        other => {
            errors.push(ValidationError::new(
                &["query", "mode"],
                "Input should be 'summary', 'preview' or 'detailed'",
                "enum",
                Some(json!(other)),
            ));
            Mode::Detailed
        }
    };
    let filter = parse_filter(&pairs, spec, &mut errors);
    if errors.is_empty() {
        Ok(ListParams {
            page,
            page_size,
            sort,
            mode,
            filter,
        })
    } else {
        Err(errors)
    }
}

/// Gathers `filter=…` (JSON) and `filter[…]…=…` (brackets) into one object.
fn gather(pairs: &[(String, String)], errors: &mut Vec<ValidationError>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in pairs {
        if key == "filter" {
            match serde_json::from_str::<Value>(value) {
                Ok(Value::Object(obj)) => out.extend(obj),
                _ => errors.push(ValidationError::new(
                    &["query", "filter"],
                    "Input should be a valid JSON object",
                    "json_invalid",
                    Some(json!(value)),
                )),
            }
        } else if let Some(rest) = key.strip_prefix("filter[") {
            let parts: Vec<&str> = rest.trim_end_matches(']').split("][").collect();
            match parts.as_slice() {
                [field] => {
                    out.insert(field.to_string(), json!(value));
                }
                [field, op] => {
                    let entry = out.entry(field.to_string()).or_insert_with(|| json!({}));
                    if let Value::Object(obj) = entry {
                        obj.insert(op.to_string(), json!(value));
                    } else {
                        *entry = json!({ *op: value });
                    }
                }
                _ => errors.push(ValidationError::new(
                    &["query", key],
                    "Unrecognized filter syntax",
                    "value_error",
                    Some(json!(value)),
                )),
            }
        }
    }
    out
}

fn parse_filter(
    pairs: &[(String, String)],
    spec: &FilterSpec,
    errors: &mut Vec<ValidationError>,
) -> Filter {
    let raw = gather(pairs, errors);
    let mut filter = Filter {
        echo: raw.clone(),
        ..Default::default()
    };
    for (field, value) in raw {
        let loc = ["query", "filter", field.as_str()];
        if field == "started_at" {
            let Value::Object(ops) = &value else {
                errors.push(ValidationError::new(
                    &loc,
                    "Input should be an object with $gte and/or $lte",
                    "model_type",
                    Some(value.clone()),
                ));
                continue;
            };
            for (op, v) in ops {
                let ns = v.as_str().and_then(crate::time::parse_datetime);
                let Some(ns) = ns else {
                    errors.push(ValidationError::new(
                        &["query", "filter", "started_at", op],
                        "Input should be a valid datetime",
                        "datetime_parsing",
                        Some(v.clone()),
                    ));
                    continue;
                };
                match op.as_str() {
                    "$gte" => filter.started_gte = Some(ns),
                    "$lte" => filter.started_lte = Some(ns),
                    _ => errors.push(ValidationError::new(
                        &["query", "filter", "started_at", op],
                        "Extra inputs are not permitted",
                        "extra_forbidden",
                        Some(v.clone()),
                    )),
                }
            }
            continue;
        }
        if !spec.strings.contains(&field.as_str()) {
            errors.push(ValidationError::new(
                &loc,
                "Extra inputs are not permitted",
                "extra_forbidden",
                Some(value),
            ));
            continue;
        }
        let values: Option<Vec<String>> = match &value {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Object(ops) if spec.in_fields.contains(&field.as_str()) => {
                let mut vals = None;
                for (op, v) in ops {
                    match (op.as_str(), v) {
                        ("$in", Value::String(s)) => {
                            vals = Some(
                                s.split(',')
                                    .map(|x| x.trim().to_string())
                                    .filter(|x| !x.is_empty())
                                    .collect(),
                            )
                        }
                        ("$in", Value::Array(items)) => {
                            vals = items
                                .iter()
                                .map(|i| i.as_str().map(str::to_string))
                                .collect()
                        }
                        ("$eq", Value::String(s)) => vals = Some(vec![s.clone()]),
                        _ => {
                            vals = None;
                            break;
                        }
                    }
                }
                vals
            }
            _ => None,
        };
        let Some(values) = values else {
            let msg = if spec.in_fields.contains(&field.as_str()) {
                "Input should be a string or an object with $in"
            } else {
                "Input should be a valid string"
            };
            errors.push(ValidationError::new(&loc, msg, "string_type", Some(value)));
            continue;
        };
        let bad_status = values.iter().find(|v| !STATUSES.contains(&v.as_str()));
        if let (true, Some(bad)) = (field == "status", bad_status) {
            errors.push(ValidationError::new(
                &loc,
                "Input should be 'success', 'error', 'cancelled' or 'unknown'",
                "enum",
                Some(json!(bad)),
            ));
            continue;
        }
        filter.strings.push((field, values));
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let p = parse("", &TRACE_FILTERS).unwrap();
        assert_eq!(
            (p.page, p.page_size, p.sort.as_str(), p.mode),
            (1, 10, "-started_at", Mode::Detailed)
        );
        let e = parse("page=0&page_size=1001&sort=name&mode=full", &TRACE_FILTERS).unwrap_err();
        let kinds: Vec<_> = e.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["greater_than_equal", "less_than_equal", "enum", "enum"]
        );
        assert!(parse("page=x", &TRACE_FILTERS).is_err());
        for page in ["9223372036854775807", "1000000001", "99999999999999999999"] {
            let e = parse(&format!("page={page}"), &TRACE_FILTERS).unwrap_err();
            assert_eq!(e[0].loc, [json!("query"), json!("page")], "{page}");
        }
    }

    #[test]
    fn brackets_and_json_filters() {
        let p = parse(
            "filter[status]=error&filter[started_at][$gte]=2024-01-15T09:30:00Z&filter[id][$in]=a,b",
            &TRACE_FILTERS,
        )
        .unwrap();
        assert_eq!(p.filter.started_gte, Some(1_705_311_000_000_000_000));
        assert!(
            p.filter
                .strings
                .contains(&("status".into(), vec!["error".into()]))
        );
        assert!(
            p.filter
                .strings
                .contains(&("id".into(), vec!["a".into(), "b".into()]))
        );
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "filter",
                r#"{"session_id":"s1","started_at":{"$lte":"2024-01-16"}}"#,
            )
            .finish();
        let p = parse(&q, &TRACE_FILTERS).unwrap();
        assert_eq!(
            p.filter.strings,
            vec![("session_id".into(), vec!["s1".into()])]
        );
        assert_eq!(p.filter.started_lte, Some(1_705_363_200_000_000_000));
        let e = parse("filter[colour]=red", &TRACE_FILTERS).unwrap_err();
        assert_eq!(
            e[0].loc,
            vec![json!("query"), json!("filter"), json!("colour")]
        );
        assert!(parse("filter[status]=broken", &TRACE_FILTERS).is_err());
        assert!(parse("filter[started_at][$gte]=yesterday", &TRACE_FILTERS).is_err());
    }
}
