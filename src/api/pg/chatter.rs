//! What PostgreSQL clients send besides queries, answered without the engine: session
//! settings, transactions, `SHOW` of server parameters, and the system-catalog queries of
//! `psql`'s `\d`, `\dt`, `\dv`, `\dn` and `\l` and of tools that list tables on connect.
//!
//! Input: one SQL statement, the workspaces the connection may read and their tables'
//! schemas. Output: a [`Native`] answer, or `None` when the engine should plan the
//! statement. Invariants: nothing here reads spans or changes what a later query sees
//! (`SET` is accepted and ignored: every session is read-only and in UTC); a catalog query
//! is answered from the relations the connection may read — each workspace a schema with
//! the table `spans` and the view `traces` — with one row per relation, namespace or
//! column as its main `pg_catalog` table has, each column valued by what its select item
//! reads, and no rows from catalog tables this server has nothing in (indexes, policies,
//! types, …).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pgwire::api::Type;
use regex::Regex;

use datafusion::sql::sqlparser::tokenizer::Token;

use super::types::pg_type;
use crate::query::placeholders;
use crate::workspace::Workspace;

/// The owner every relation is listed with.
const OWNER: &str = "spanlake";

/// The PostgreSQL version clients are told (what they may send is that version's SQL).
pub const SERVER_VERSION: &str = "16.6";

/// A statement answered without the engine.
#[derive(Debug, Clone)]
pub enum Native {
    /// A statement that changes nothing here; answered with its command tag.
    Command(String),
    /// `BEGIN` / `START TRANSACTION` (every statement only reads, so transactions are
    /// trivially serializable).
    Begin,
    /// `COMMIT`, `END`, `ROLLBACK` or `ABORT`, with the tag to answer.
    End(&'static str),
    /// Rows (all `text`, as `psql` reads them).
    Rows(RecordBatch),
    /// A statement refused before planning, as the sandbox refuses it (what it is).
    NotAllowed(String),
    /// A statement refused before planning for another reason: its SQLSTATE and why.
    Invalid(&'static str, String),
    /// `DECLARE name … CURSOR [WITH HOLD] FOR query`: a server-side cursor over `query`'s
    /// answer.
    Declare {
        /// The cursor's name.
        name: String,
        /// The query, as sent.
        query: String,
        /// Whether it outlives the transaction (`WITH HOLD`).
        hold: bool,
    },
    /// `FETCH [FORWARD] [n | ALL | NEXT] [FROM | IN] name`: the cursor's next `count` rows
    /// (`None`: all that are left).
    Fetch {
        /// The cursor's name.
        name: String,
        /// How many rows.
        count: Option<usize>,
    },
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close(Option<String>),
}

/// A relation the connection may read.
pub struct Relation {
    /// Its OID in this connection's catalog answers.
    pub oid: i64,
    /// Its workspace (schema).
    pub schema: String,
    /// `spans` or `traces`.
    pub name: &'static str,
    /// Whether it is a view (`traces`) rather than a table.
    pub view: bool,
    /// Its columns.
    pub columns: SchemaRef,
}

/// The relations of `workspaces`, `spans` and `traces` in each, numbered in order.
pub fn relations(workspaces: &[Workspace], spans: &SchemaRef, traces: &SchemaRef) -> Vec<Relation> {
    workspaces
        .iter()
        .enumerate()
        .flat_map(|(i, ws)| {
            [("spans", false, spans), ("traces", true, traces)]
                .into_iter()
                .enumerate()
                .map(move |(j, (name, view, columns))| Relation {
                    oid: 16384 + 2 * i as i64 + j as i64,
                    schema: ws.as_str().to_string(),
                    name,
                    view,
                    columns: columns.clone(),
                })
        })
        .collect()
}

/// Whether `sql` reads the system catalog (its answer needs the relations).
pub fn reads_catalog(sql: &str) -> bool {
    is_catalog_query(&normalize(sql).to_ascii_lowercase())
}

/// Whether `sql` ends a transaction (`COMMIT`, `END`, `ROLLBACK`, `ABORT`): what a
/// transaction a statement failed in still runs.
pub fn ends_transaction(sql: &str) -> bool {
    let lower = normalize(sql).to_ascii_lowercase();
    end_tag(&first_words(&lower)).is_some()
}

/// The first two words of normalized text.
fn first_words(lower: &str) -> Vec<&str> {
    lower.split(' ').take(2).collect()
}

/// The tag answering a statement that ends a transaction, from its first two words;
/// `None` for any other (`ROLLBACK TO` a savepoint and `COMMIT PREPARED` end none).
fn end_tag(words: &[&str]) -> Option<&'static str> {
    match words {
        ["commit" | "end" | "rollback" | "abort", "prepared" | "to"] => None,
        ["commit" | "end", ..] => Some("COMMIT"),
        ["rollback" | "abort", ..] => Some("ROLLBACK"),
        _ => None,
    }
}

/// [`reads_catalog`] of normalized, lowercased text: a catalog table or function named
/// outside string literals (`pg_prod.spans`, a workspace's table, is not one).
fn is_catalog_query(lower: &str) -> bool {
    let shape = blank_literals(lower);
    shape.starts_with("select ")
        && PG_CATALOG
            .captures_iter(&shape)
            .any(|c| c.get(1).is_none_or(|dot| dot.is_empty()))
}

/// `text` with the inside of its string literals blanked (same length).
fn blank_literals(text: &str) -> String {
    let mut quoted = false;
    text.chars()
        .map(|c| match c {
            '\'' => {
                quoted = !quoted;
                c
            }
            _ if quoted => ' ',
            _ => c,
        })
        .collect()
}

/// What a connection's catalog holds.
pub struct Scope<'a> {
    /// The workspaces it may read.
    pub workspaces: &'a [Workspace],
    /// The one unqualified names resolve in: the search path.
    pub home: &'a Workspace,
    /// The relations of `workspaces` (needed only when [`reads_catalog`]).
    pub relations: &'a [Relation],
    /// The user name the client logged in with.
    pub user: &'a str,
}

/// The native answer to `sql`, if it is not for the engine.
pub fn answer(sql: &str, scope: &Scope) -> Option<Native> {
    let text = normalize(sql);
    let lower = text.to_ascii_lowercase();
    let words = first_words(&lower);
    if let Some(tag) = end_tag(&words) {
        return Some(Native::End(tag));
    }
    match words.as_slice() {
        [
            "set" | "reset" | "discard" | "deallocate" | "unlisten" | "listen",
            ..,
        ] => {
            return Some(Native::Command(words[0].to_ascii_uppercase()));
        }
        ["begin", ..] | ["start", "transaction"] => return Some(Native::Begin),
        // `COPY … TO STDOUT` does not even parse in DataFusion: refuse it for what it is.
        ["copy", ..] => return Some(Native::NotAllowed("COPY".into())),
        ["declare", ..] => return Some(declare(sql)),
        ["fetch", ..] => return Some(fetch(sql)),
        ["close", ..] => return Some(close(sql)),
        // Every statement only reads: there is nothing a savepoint or a prepared
        // transaction could keep.
        ["savepoint" | "release", ..] | ["rollback" | "abort", "to"] => {
            return Some(Native::Invalid(
                "0A000",
                "savepoints are not supported (every statement only reads)".into(),
            ));
        }
        ["prepare", "transaction"] | ["commit" | "end" | "rollback" | "abort", "prepared"] => {
            return Some(Native::Invalid(
                "0A000",
                "prepared transactions are not supported (every statement only reads)".into(),
            ));
        }
        ["show", _] if lower == "show transaction isolation level" => {
            return show("transaction_isolation", scope).map(Native::Rows);
        }
        ["show", name] => return show(name, scope).map(Native::Rows),
        _ => {}
    }
    if !is_catalog_query(&lower) {
        return None;
    }
    Some(Native::Rows(catalog(&text, &lower, scope)))
}

/// Tables of `pg_catalog` (named with or without their schema; group 1 is a `.` after
/// the name, which makes it a workspace rather than a table), its functions, and the
/// session functions of PostgreSQL that DataFusion lacks.
static PG_CATALOG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(?:from|join) (?:pg_catalog\.)?pg_[a-z_]+\b(\.?)|\bpg_catalog\.[a-z_]+\(|\b(?:current_database|current_schema|pg_backend_pid)\(",
    )
    .unwrap()
});

/// A double-quoted identifier that needs no quotes (`"pg_catalog"`, `"c"`).
static QUOTED_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""([a-z_][a-z0-9_]*)""#).unwrap());

/// `sql` on one line: runs of whitespace as one space, plain names unquoted, no trailing
/// `;`.
fn normalize(sql: &str) -> String {
    let mut out = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    while out.ends_with(';') {
        out.pop();
        out.truncate(out.trim_end().len());
    }
    QUOTED_NAME.replace_all(&out, "$1").into_owned()
}

/// `DECLARE name [ASENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR
/// query`, read from the text as sent (the query is kept byte for byte).
fn declare(sql: &str) -> Native {
    let syntax = |m: &str| Native::Invalid("42601", format!("DECLARE: {m}"));
    let Some(tokens) = placeholders::tokens(sql) else {
        return syntax("the statement could not be read");
    };
    let Some(name) = tokens.get(1).and_then(|(t, _)| name_of(t)) else {
        return syntax("a cursor name must follow DECLARE");
    };
    let (mut cursor, mut hold) = (false, false);
    for (i, (token, _)) in tokens.iter().enumerate().skip(2) {
        let Token::Word(word) = token else {
            return syntax(&format!("unexpected {token}"));
        };
        match word.value.to_ascii_uppercase().as_str() {
            "BINARY" => {
                return Native::Invalid(
                    "0A000",
                    "binary cursors are not supported; ask for binary results with the \
                     extended protocol's result formats"
                        .into(),
                );
            }
            "ASENSITIVE" | "INSENSITIVE" | "NO" | "SCROLL" | "HOLD" => {}
            "CURSOR" => cursor = true,
            "WITH" => hold = true,
            "WITHOUT" => hold = false,
            "FOR" if cursor => {
                let Some((_, at)) = tokens.get(i + 1) else {
                    return syntax("a query must follow FOR");
                };
                let query = sql[*at..].trim().to_string();
                return Native::Declare { name, query, hold };
            }
            _ => return syntax(&format!("unexpected {}", word.value)),
        }
    }
    syntax("CURSOR … FOR a query must follow the name")
}

/// `FETCH [FORWARD | NEXT] [count | ALL] [FROM | IN] name` (one row without a count); a
/// cursor here reads forward only.
fn fetch(sql: &str) -> Native {
    let forward_only = || {
        Native::Invalid(
            "55000",
            "cursor can only scan forward: FETCH [FORWARD | NEXT] [count | ALL] [FROM | IN] \
             name"
                .into(),
        )
    };
    let Some(tokens) = placeholders::tokens(sql) else {
        return forward_only();
    };
    let Some(((last, _), rest)) = tokens.get(1..).and_then(<[_]>::split_last) else {
        return forward_only();
    };
    let Some(name) = name_of(last) else {
        return forward_only();
    };
    let mut rest: Vec<&Token> = rest.iter().map(|(t, _)| t).collect();
    if rest
        .last()
        .is_some_and(|t| keyword(t, "from") || keyword(t, "in"))
    {
        rest.pop();
    }
    if rest.first().is_some_and(|t| keyword(t, "forward")) {
        rest.remove(0);
    }
    let count = match rest.as_slice() {
        [] => Some(1),
        [t] if keyword(t, "next") => Some(1),
        [t] if keyword(t, "all") => None,
        [Token::Number(n, _)] => match n.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return forward_only(),
        },
        _ => return forward_only(),
    };
    Native::Fetch { name, count }
}

/// `CLOSE name` or `CLOSE ALL`.
fn close(sql: &str) -> Native {
    let tokens = placeholders::tokens(sql).unwrap_or_default();
    let name = match tokens.as_slice() {
        [_, (t, _)] if keyword(t, "all") => return Native::Close(None),
        [_, (t, _)] => name_of(t),
        _ => None,
    };
    match name {
        Some(name) => Native::Close(Some(name)),
        None => Native::Invalid("42601", "CLOSE: a cursor name, or ALL".into()),
    }
}

/// Whether `token` is the unquoted keyword `k`.
fn keyword(token: &Token, k: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k))
}

/// A cursor's name: a quoted name as written, an unquoted one folded to lower case (as
/// PostgreSQL folds names).
fn name_of(token: &Token) -> Option<String> {
    let Token::Word(word) = token else {
        return None;
    };
    let name = match word.quote_style {
        Some(_) => word.value.clone(),
        None => word.value.to_lowercase(),
    };
    (!name.is_empty()).then_some(name)
}

/// `SHOW name` of a server parameter clients ask for; other `SHOW`s go to the engine.
fn show(name: &str, scope: &Scope) -> Option<RecordBatch> {
    let name = name.trim_matches('"');
    let value = match name {
        "server_version" => SERVER_VERSION,
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "timezone" => "UTC",
        "datestyle" => "ISO, YMD",
        "intervalstyle" => "postgres",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "serializable",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "search_path" => scope.home.as_str(),
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" => "C",
        "statement_timeout" | "lock_timeout" => "0",
        "is_superuser" => "off",
        _ => return None,
    };
    Some(text_batch(
        &[name.to_string()],
        vec![vec![Some(value.to_string())]],
    ))
}

/// A catalog query's answer: the rows of its main `pg_catalog` table that its filters on
/// OID, name pattern and relation kind keep, each item of its select list valued.
fn catalog(text: &str, lower: &str, scope: &Scope) -> RecordBatch {
    let (items, main, mut empty) = select_list(text, lower);
    // `WHERE 1<>1`: a client asking for the columns only.
    empty |= lower.contains(" where 1<>1") || lower.contains(" where false");
    let names: Vec<String> = items.iter().map(|i| item_name(i)).collect();
    let lowered: Vec<String> = items.iter().map(|i| i.to_ascii_lowercase()).collect();
    let oid = OID_FILTER
        .captures(lower)
        .and_then(|c| c[1].parse::<i64>().ok());
    let schemas_in = NAMESPACES_IN.captures(lower).map(|c| {
        c[1].split(',')
            .map(|n| n.trim().trim_matches('\'').to_string())
            .collect::<Vec<_>>()
    });
    let schemas_like = pattern(text, "n.nspname");
    let schema_kept = |schema: &str| {
        schemas_in
            .as_ref()
            .is_none_or(|listed| listed.iter().any(|n| n == schema))
            && schemas_like.as_ref().is_none_or(|re| re.is_match(schema))
    };
    // Each item's value, else what a function it calls returns here.
    let row = |value: &dyn Fn(&str, &str) -> Option<String>| -> Vec<Option<String>> {
        items
            .iter()
            .zip(&lowered)
            .map(|(item, i)| value(item, i).or_else(|| function_value(i, scope)))
            .collect()
    };
    let rows: Vec<Vec<Option<String>>> = match main.as_str() {
        _ if empty => Vec::new(),
        "pg_class" => {
            let kinds = RELKINDS.captures(lower).map(|c| c[1].to_string());
            let names_like = pattern(text, "c.relname");
            // Without a schema pattern psql lists what the search path shows: the home.
            let visible_only = lower.contains("pg_table_is_visible(");
            scope
                .relations
                .iter()
                .filter(|r| !visible_only || r.schema == scope.home.as_str())
                .filter(|r| oid.is_none_or(|o| o == r.oid))
                .filter(|r| {
                    let kind = if r.view { "'v'" } else { "'r'" };
                    kinds.as_deref().is_none_or(|k| k.contains(kind))
                })
                .filter(|r| names_like.as_ref().is_none_or(|re| re.is_match(r.name)))
                .filter(|r| schema_kept(&r.schema))
                .map(|r| row(&|item, i| relation_value(item, i, r)))
                .collect()
        }
        "pg_attribute" => scope
            .relations
            .iter()
            .filter(|r| oid == Some(r.oid))
            .flat_map(|r| {
                r.columns
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(n, f)| row(&|_, i| column_value(i, f, n + 1)))
                    .collect::<Vec<_>>()
            })
            .collect(),
        "pg_namespace" => scope
            .workspaces
            .iter()
            .enumerate()
            .filter(|(_, ws)| schema_kept(ws.as_str()))
            .map(|(n, ws)| row(&|_, i| namespace_value(i, ws, 1_000_000 + n as i64)))
            .collect(),
        "pg_database" => vec![row(&|_, i| database_value(i))],
        // No FROM: catalog functions (`SELECT pg_catalog.pg_get_viewdef(…)`, …).
        "" => vec![row(&|_, _| None)],
        _ => Vec::new(),
    };
    text_batch(&names, rows)
}

/// `WHERE c.oid = '16384'` (psql's `\d` details) or `a.attrelid = '16384'`.
static OID_FILTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:c\.oid|a\.attrelid|oid) = '?(\d+)'?").unwrap());

/// `n.nspname IN ('alpha', 'beta')` (Metabase lists the schemas it synchronizes).
static NAMESPACES_IN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"n\.nspname in \(([^)]*)\)").unwrap());

/// `c.relkind IN ('r','p','')`.
static RELKINDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"c\.relkind in \(([^)]*)\)").unwrap());

/// The regular expression psql matches `column` against (`\d spans` sends
/// `c.relname OPERATOR(pg_catalog.~) '^(spans)$' COLLATE pg_catalog.default`).
fn pattern(text: &str, column: &str) -> Option<Regex> {
    let find = Regex::new(&format!(
        r"(?i){} (?:OPERATOR\(pg_catalog\.~\)|~) '((?:[^']|'')*)'",
        regex::escape(column)
    ))
    .ok()?;
    let captured = find.captures(text)?[1].replace("''", "'");
    Regex::new(&captured).ok()
}

/// The select list of a query (its top-level items, original case), its main table (the
/// first after the top-level `FROM`, without `pg_catalog.`) and whether its `FROM` clause
/// inner-joins a catalog table without rows here (then the answer has none either).
fn select_list(text: &str, lower: &str) -> (Vec<String>, String, bool) {
    let bytes = lower.as_bytes();
    let start = "select ".len();
    let (mut depth, mut quoted, mut item_start) = (0i32, false, start);
    let mut items = Vec::new();
    let (mut from, mut from_end) = (None, lower.len());
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            _ if quoted => {}
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 && from.is_none() => {
                items.push(text[item_start..i].trim().to_string());
                item_start = i + 1;
            }
            b' ' if depth == 0 => {
                let rest = &lower[i..];
                if from.is_none() && rest.starts_with(" from ") {
                    items.push(text[item_start..i].trim().to_string());
                    from = Some(i + " from ".len());
                } else if from.is_some()
                    && [" where ", " order by ", " group by ", " union ", " limit "]
                        .iter()
                        .any(|k| rest.starts_with(k))
                {
                    from_end = i;
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let Some(from) = from else {
        items.push(text[item_start..].trim().to_string());
        return (items, String::new(), false);
    };
    let clause = &lower[from..from_end.max(from)];
    let main = clause
        .split([' ', ','])
        .next()
        .unwrap_or_default()
        .trim_start_matches("pg_catalog.")
        .to_string();
    let empty = CATALOG_TABLE.captures_iter(clause).any(|c| {
        let at = c.get(0).map_or(0, |m| m.start());
        let outer = clause[..at].trim_end().ends_with("left join")
            || clause[..at].trim_end().ends_with("left outer join");
        !outer && !WITH_ROWS.contains(&&c[1])
    });
    (items, main, empty)
}

/// A catalog table named in a `FROM` clause.
static CATALOG_TABLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:pg_catalog\.)?(pg_[a-z_]+)\b").unwrap());

/// The catalog tables that have rows here.
const WITH_ROWS: [&str; 4] = ["pg_class", "pg_namespace", "pg_attribute", "pg_database"];

/// The column name of a select item: its alias, else its last name part.
fn item_name(item: &str) -> String {
    let lower = item.to_ascii_lowercase();
    let name = match lower.rfind(" as ") {
        Some(at) => &item[at + 4..],
        // A function call is named after the function, as PostgreSQL names it.
        None if item.ends_with(')') => {
            let function = item.split('(').next().unwrap_or(item);
            function.rsplit(['.', ' ']).next().unwrap_or(function)
        }
        None => item.rsplit(['.', ' ']).next().unwrap_or(item),
    };
    let name = name.trim().trim_matches('"');
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || " _?".contains(c))
    {
        "?column?".to_string()
    } else {
        name.to_string()
    }
}

fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

const FALSE: &str = "f";

/// What `item` (`original` as sent) reads of the `pg_class` row of `r`.
fn relation_value(original: &str, item: &str, r: &Relation) -> Option<String> {
    let kind = if r.view { "v" } else { "r" };
    if item.starts_with("case c.relkind") {
        // The client's own names for the kinds (`WHEN 'r' THEN 'TABLE'`), else psql's.
        let named = Regex::new(&format!(r"(?i)when '{kind}' then '([^']*)'"))
            .ok()
            .and_then(|re| re.captures(original).map(|c| c[1].to_string()));
        named.or_else(|| text(if r.view { "view" } else { "table" }))
    } else if item.contains("nspname") {
        text(&r.schema)
    } else if item.contains("relname") {
        text(r.name)
    } else if item.contains("relowner") {
        text(OWNER)
    } else if item == "c.oid" || item.starts_with("c.oid ") {
        text(r.oid.to_string())
    } else if item.contains("relchecks") || item.contains("reltablespace") {
        text("0")
    } else if item.contains("relkind") {
        text(kind)
    } else if item.contains("relhas")
        || item.contains("rowsecurity")
        || item.contains("relispartition")
    {
        text(FALSE)
    } else if item.contains("reloptions") || item.contains("reloftype") {
        text("")
    } else if item.contains("relpersistence") {
        text("p")
    } else if item.contains("relreplident") {
        text("d")
    } else {
        None
    }
}

/// What `item` reads of the `pg_attribute` row of column `number` (from 1) `field`.
fn column_value(item: &str, field: &Field, number: usize) -> Option<String> {
    if item.contains("pg_get_expr") || item.contains("collname") || item.contains("description") {
        None
    } else if item.contains("format_type") {
        text(type_name(&pg_type(field.data_type())))
    } else if item.contains("attname") {
        text(field.name())
    } else if item.contains("attnotnull") {
        text(if field.is_nullable() { FALSE } else { "t" })
    } else if item.contains("attidentity")
        || item.contains("attgenerated")
        || item.contains("attcompression")
    {
        text("")
    } else if item.contains("attstorage") {
        text(
            if matches!(field.data_type(), DataType::Boolean | DataType::Int64) {
                "p"
            } else {
                "x"
            },
        )
    } else if item.contains("attnum") {
        text(number.to_string())
    } else {
        None
    }
}

/// PostgreSQL's name of a type as `format_type` gives it.
fn type_name(t: &Type) -> &'static str {
    match *t {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::DATE => "date",
        Type::BYTEA => "bytea",
        Type::JSONB => "jsonb",
        _ => "text",
    }
}

/// What `item` reads of the `pg_namespace` row of `ws`.
fn namespace_value(item: &str, ws: &Workspace, oid: i64) -> Option<String> {
    if item.contains("nspname") {
        text(ws.as_str())
    } else if item.contains("nspowner") {
        text(OWNER)
    } else if item == "n.oid" || item.starts_with("n.oid ") {
        text(oid.to_string())
    } else {
        None
    }
}

/// What `item` reads of the one `pg_database` row.
fn database_value(item: &str) -> Option<String> {
    if item.contains("datname") {
        text("spanlake")
    } else if item.contains("datdba") {
        text(OWNER)
    } else if item.contains("encoding") {
        text("UTF8")
    } else if item.contains("datcollate") || item.contains("datctype") {
        text("C")
    } else {
        None
    }
}

/// What a catalog function returns here.
fn function_value(item: &str, scope: &Scope) -> Option<String> {
    if item.contains("version(") {
        text(format!(
            "PostgreSQL {SERVER_VERSION} (spanlake {})",
            env!("CARGO_PKG_VERSION")
        ))
    } else if item.contains("current_database(") {
        text("spanlake")
    } else if item.contains("current_schema(") {
        text(scope.home.as_str())
    } else if item.contains("current_user") || item.contains("session_user") {
        text(scope.user)
    } else if item.contains("pg_backend_pid(") {
        text("0")
    } else {
        None
    }
}

/// Rows of text columns named `names`.
fn text_batch(names: &[String], rows: Vec<Vec<Option<String>>>) -> RecordBatch {
    let fields: Vec<Field> = names
        .iter()
        .map(|n| Field::new(n, DataType::Utf8, true))
        .collect();
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|c| Arc::new(StringArray::from_iter(rows.iter().map(|r| r[c].clone()))) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .expect("columns of one length, as many as fields")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspaces() -> Vec<Workspace> {
        vec![
            Workspace::new("default").unwrap(),
            Workspace::new("shop").unwrap(),
        ]
    }

    fn rels() -> Vec<Relation> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("trace_id", DataType::Utf8, false),
            Field::new("duration_ns", DataType::Int64, true),
        ]));
        relations(&workspaces(), &schema, &schema)
    }

    fn answer(sql: &str, workspaces: &[Workspace], relations: &[Relation]) -> Option<Native> {
        let home = workspaces
            .first()
            .cloned()
            .unwrap_or_else(Workspace::default_workspace);
        let scope = Scope {
            workspaces,
            home: &home,
            relations,
            user: "analyst",
        };
        super::answer(sql, &scope)
    }

    fn rows(native: Option<Native>) -> Vec<Vec<String>> {
        let Some(Native::Rows(batch)) = native else {
            panic!("not rows: {native:?}");
        };
        (0..batch.num_rows())
            .map(|r| {
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
                        if c.is_valid(r) {
                            c.value(r).to_string()
                        } else {
                            "NULL".into()
                        }
                    })
                    .collect()
            })
            .collect()
    }

    use arrow::array::Array;

    #[test]
    fn transactions_end_with_commit_or_rollback_only() {
        for sql in [
            "COMMIT",
            "end;",
            "ROLLBACK WORK",
            "abort",
            "  commit\n transaction ;",
        ] {
            assert!(ends_transaction(sql), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT PREPARED 'x'",
            "SELECT 1",
            "BEGIN",
            "-- ROLLBACK",
        ] {
            assert!(!ends_transaction(sql), "{sql}");
        }
        let (ws, rels) = (workspaces(), rels());
        for sql in ["SAVEPOINT s", "RELEASE SAVEPOINT s", "ROLLBACK TO s"] {
            let native = answer(sql, &ws, &rels);
            assert!(
                matches!(&native, Some(Native::Invalid("0A000", m)) if m.contains("savepoints")),
                "{sql}: {native:?}"
            );
        }
        assert!(matches!(
            answer("ROLLBACK", &ws, &rels),
            Some(Native::End("ROLLBACK"))
        ));
    }

    #[test]
    fn psql_lists_tables_and_describes_one() {
        let dt = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;
        // The search path is the home workspace; `\dt *.*` lists every one.
        assert_eq!(
            rows(answer(dt, &workspaces(), &rels())),
            [["default", "spans", "table", "spanlake"]]
        );
        let everywhere = dt
            .replace("AND pg_catalog.pg_table_is_visible(c.oid)", "")
            .replace(
                "c.relkind IN",
                "n.nspname OPERATOR(pg_catalog.~) '^(.*)$' AND c.relkind IN",
            );
        assert_eq!(
            rows(answer(&everywhere, &workspaces(), &rels())),
            [
                ["default", "spans", "table", "spanlake"],
                ["shop", "spans", "table", "spanlake"]
            ]
        );
        let find = r#"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(traces)$' COLLATE pg_catalog.default
  AND n.nspname OPERATOR(pg_catalog.~) '^(shop)$' COLLATE pg_catalog.default
ORDER BY 2, 3;"#;
        assert_eq!(
            rows(answer(find, &workspaces(), &rels())),
            [["16387", "shop", "traces"]]
        );
        let columns = r#"SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '16387' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"#;
        assert_eq!(
            rows(answer(columns, &workspaces(), &rels())),
            [
                ["trace_id", "text", "NULL", "t", "NULL", "", ""],
                ["duration_ns", "bigint", "NULL", "f", "NULL", "", ""]
            ]
        );
        let policies = "SELECT pol.polname, pol.polpermissive FROM pg_catalog.pg_policy pol \
                        WHERE pol.polrelid = '16387' ORDER BY 1;";
        assert!(rows(answer(policies, &workspaces(), &rels())).is_empty());
        let inherits = "SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c, \
                        pg_catalog.pg_inherits i WHERE c.oid = i.inhparent AND i.inhrelid = '16387' \
                        AND c.relispartition ORDER BY inhseqno;";
        assert!(rows(answer(inherits, &workspaces(), &rels())).is_empty());
        let viewdef = "SELECT pg_catalog.pg_get_viewdef('16387'::pg_catalog.oid, true);";
        assert_eq!(rows(answer(viewdef, &workspaces(), &rels())), [["NULL"]]);
        // What JDBC tools send on connect (Metabase, DBeaver): quoted names, their own
        // kind names, a schema list, a column probe.
        let metabase = r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'v' THEN 'VIEW' ELSE NULL END AS "type", "d"."description" AS "description" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") WHERE ("n"."nspname" !~ '^pg_') AND c.relkind in ('r', 'p', 'v') AND ("n"."nspname" IN ('shop')) ORDER BY "type" ASC"#;
        assert_eq!(
            rows(answer(metabase, &workspaces(), &rels())),
            [
                ["shop", "spans", "TABLE", "NULL"],
                ["shop", "traces", "VIEW", "NULL"]
            ]
        );
        let schemas = r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace WHERE nspname <> 'pg_toast' ORDER BY "TABLE_SCHEM""#;
        assert_eq!(
            rows(answer(schemas, &workspaces(), &rels())),
            [["default", "spanlake"], ["shop", "spanlake"]]
        );
        let probe = "SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1";
        assert!(rows(answer(probe, &workspaces(), &rels())).is_empty());
        let who = "SELECT current_schema(),session_user";
        assert_eq!(
            rows(answer(who, &workspaces(), &rels())),
            [["default", "analyst"]]
        );
        let database = "select current_database()";
        let Some(Native::Rows(batch)) = answer(database, &workspaces(), &rels()) else {
            panic!("no rows");
        };
        assert_eq!(batch.schema().field(0).name(), "current_database");
        assert_eq!(
            rows(answer(database, &workspaces(), &rels())),
            [["spanlake"]]
        );
    }

    #[test]
    fn session_chatter_is_answered_and_queries_are_not() {
        assert!(
            matches!(answer("SET extra_float_digits = 3", &[], &[]), Some(Native::Command(t)) if t == "SET")
        );
        assert!(matches!(answer("begin", &[], &[]), Some(Native::Begin)));
        let declared = answer(
            "DECLARE \"Big\" NO SCROLL CURSOR WITH HOLD FOR SELECT name -- the names\n\
             FROM spans WHERE a = $1 AND b = 'x  y'",
            &[],
            &[],
        );
        assert!(
            matches!(&declared, Some(Native::Declare { name, query, hold: true })
                if name == "Big"
                    && query == "SELECT name -- the names\nFROM spans WHERE a = $1 AND b = 'x  y'"),
            "{declared:?}"
        );
        for (sql, want) in [
            ("FETCH FORWARD 100 FROM \"Big\"", Some(100)),
            ("fetch all in BIG", None),
            ("FETCH FORWARD ALL FROM big", None),
            ("FETCH NEXT FROM big -- a comment", Some(1)),
            ("FETCH big", Some(1)),
        ] {
            let got = answer(sql, &[], &[]);
            let want_name = if sql.contains('"') { "Big" } else { "big" };
            assert!(
                matches!(&got, Some(Native::Fetch { name, count }) if name == want_name && *count == want),
                "{sql}: {got:?}"
            );
        }
        for backward in [
            "FETCH BACKWARD 5 FROM c",
            "FETCH -1 FROM c",
            "FETCH ABSOLUTE 3 FROM c",
            "FETCH PRIOR FROM c",
        ] {
            assert!(
                matches!(
                    answer(backward, &[], &[]),
                    Some(Native::Invalid("55000", _))
                ),
                "{backward}"
            );
        }
        assert!(matches!(
            answer("DECLARE c BINARY CURSOR FOR SELECT 1", &[], &[]),
            Some(Native::Invalid("0A000", _))
        ));
        assert!(matches!(
            answer("CLOSE ALL", &[], &[]),
            Some(Native::Close(None))
        ));
        assert!(matches!(
            answer("ROLLBACK;", &[], &[]),
            Some(Native::End("ROLLBACK"))
        ));
        assert_eq!(rows(answer("show TimeZone", &[], &[])), [["UTC"]]);
        assert_eq!(
            rows(answer("SHOW TRANSACTION ISOLATION LEVEL", &[], &[])),
            [["serializable"]]
        );
        // A workspace named pg_… is not the catalog, nor is a literal that names it.
        assert!(answer("SELECT count(*) FROM pg_prod.spans", &[], &[]).is_none());
        assert!(
            answer(
                "SELECT 1 FROM spans WHERE name = 'x from pg_class'",
                &[],
                &[]
            )
            .is_none()
        );
        assert!(answer("SELECT count(*) FROM spans", &[], &[]).is_none());
        assert!(answer("SHOW TABLES", &[], &[]).is_none());
        assert!(matches!(
            answer("COPY spans TO STDOUT", &[], &[]),
            Some(Native::NotAllowed(_))
        ));
    }
}
