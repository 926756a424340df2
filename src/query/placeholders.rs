//! SQL text as clients send it: the `?` placeholders that JDBC, ODBC and ADBC clients
//! write, numbered as the `$1`, `$2`, … that DataFusion binds; and several statements in
//! one text, as the PostgreSQL simple query protocol sends them; and tokens located in the
//! text, for statements answered without the engine.
//!
//! Input: SQL text. Output: the same text with each bare `?` placeholder replaced by the
//! next `$n`, or the text's statements, each cut where the tokenizer found its `;` (nothing
//! else changes: literals, comments and quoted names are kept byte for byte). Invariants:
//! text without a bare `?` is returned as it is; text mixing `?` with numbered placeholders
//! is refused, since their order would be ambiguous; a statement of only comments and
//! whitespace is no statement.

use std::borrow::Cow;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::QueryError;

/// `sql` with its `?` placeholders numbered `$1`, `$2`, … in order of appearance.
pub fn number(sql: &str) -> Result<Cow<'_, str>, QueryError> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| QueryError::Sql(e.to_string()))?;
    let bare = |t: &Token| matches!(t, Token::Placeholder(p) if p == "?");
    if !tokens.iter().any(|t| bare(&t.token)) {
        return Ok(Cow::Borrowed(sql));
    }
    if tokens
        .iter()
        .any(|t| matches!(&t.token, Token::Placeholder(p) if p != "?"))
    {
        return Err(QueryError::Sql(
            "the query mixes `?` with numbered placeholders ($1, ?1, …); use one kind".into(),
        ));
    }
    let mut offset = Offsets::of(sql);
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut copied, mut n) = (0, 0);
    for t in tokens.iter().filter(|t| bare(&t.token)) {
        let at = offset
            .at(t.span.start.line, t.span.start.column)
            .filter(|&at| sql.as_bytes().get(at) == Some(&b'?'))
            .ok_or_else(|| QueryError::Internal("locating a `?` placeholder failed".into()))?;
        n += 1;
        out.push_str(&sql[copied..at]);
        out.push('$');
        out.push_str(&n.to_string());
        copied = at + 1;
    }
    out.push_str(&sql[copied..]);
    Ok(Cow::Owned(out))
}

/// The statements of `sql`, split at its top-level `;` (none for text of only comments and
/// whitespace). Text the tokenizer cannot read is one statement, for the planner to refuse.
pub fn statements(sql: &str) -> Vec<&str> {
    use datafusion::sql::sqlparser::tokenizer::Whitespace;
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return vec![sql];
    };
    let mut offset = Offsets::of(sql);
    let (mut out, mut start, mut empty) = (Vec::new(), 0, true);
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                // A location that is not the `;` (the tokenizer re-reads some comments from
                // their start): the text is one statement, for the planner to judge.
                let Some(at) = offset
                    .at(t.span.start.line, t.span.start.column)
                    .filter(|&at| sql.as_bytes().get(at) == Some(&b';'))
                else {
                    return vec![sql];
                };
                if !empty {
                    out.push(sql[start..at].trim());
                }
                (start, empty) = (at + 1, true);
            }
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
            | Token::Whitespace(Whitespace::SingleLineComment { .. })
            | Token::Whitespace(Whitespace::MultiLineComment(_)) => {}
            _ => empty = false,
        }
    }
    if !empty {
        out.push(sql[start..].trim());
    }
    out
}

/// The words and symbols of `sql` (no whitespace or comments), each with the byte offset
/// where it starts; `None` if the tokenizer cannot read the text.
pub fn tokens(sql: &str) -> Option<Vec<(Token, usize)>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let mut offset = Offsets::of(sql);
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let at = offset.at(t.span.start.line, t.span.start.column)?;
        out.push((t.token, at));
    }
    Some(out)
}

/// Byte offsets of the tokenizer's locations (lines split at `\n`, columns in characters,
/// both from 1), asked in increasing order: each is found from the one before it, so a
/// long line of many statements is walked once, not once per statement.
struct Offsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
    /// The last location found: line, column, byte.
    last: (u64, u64, usize),
}

impl<'a> Offsets<'a> {
    fn of(sql: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            sql,
            line_starts,
            last: (0, 0, 0),
        }
    }

    fn at(&mut self, line: u64, column: u64) -> Option<usize> {
        let (last_line, last_column, last_byte) = self.last;
        let (from_column, from_byte) = if line == last_line && column >= last_column {
            (last_column, last_byte)
        } else {
            let index = usize::try_from(line).ok()?.checked_sub(1)?;
            (1, *self.line_starts.get(index)?)
        };
        let skip = usize::try_from(column.checked_sub(from_column)?).ok()?;
        let within = self.sql.get(from_byte..)?.char_indices().nth(skip)?.0;
        let at = from_byte + within;
        self.last = (line, column, at);
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbers_and_nothing_else_changes() {
        let sql = "SELECT name, 'a?b' AS \"q?\" -- why?\nFROM spans WHERE x = ? AND y IN (?, ?)";
        assert_eq!(
            number(sql).unwrap(),
            "SELECT name, 'a?b' AS \"q?\" -- why?\nFROM spans WHERE x = $1 AND y IN ($2, $3)"
        );
        // Escaped strings keep their text exactly (they are not re-rendered).
        let escaped = "SELECT E'\\\\' AS a, ? AS b,\n  E'it\\'s ?' AS c, 'é?' AS d, ?";
        assert_eq!(
            number(escaped).unwrap(),
            "SELECT E'\\\\' AS a, $1 AS b,\n  E'it\\'s ?' AS c, 'é?' AS d, $2"
        );
        let plain = "SELECT 'it''s ? here' FROM spans WHERE a = $1";
        assert!(matches!(number(plain).unwrap(), Cow::Borrowed(_)));
        assert!(number("SELECT ? + $1").is_err());
    }

    #[test]
    fn statements_split_at_top_level_semicolons() {
        let sql = "SELECT ';' AS a; -- only a comment;\n;SELECT 2 /* ; */ ;  ";
        assert_eq!(statements(sql), ["SELECT ';' AS a", "SELECT 2 /* ; */"]);
        assert!(statements("-- ping").is_empty());
        assert_eq!(statements("SELECT 1 /*!; x */"), ["SELECT 1 /*!; x */"]);
        assert_eq!(statements("SELECT 'unterminated"), ["SELECT 'unterminated"]);
        // Many statements on one line, and characters of several bytes before them.
        let line = "SELECT 'é';".repeat(20_000);
        let found = statements(&line);
        assert_eq!(found.len(), 20_000);
        assert!(found.iter().all(|s| *s == "SELECT 'é'"));
    }
}
