//! Positional parameters: the `?` that JDBC, ODBC and ADBC clients write, numbered as the
//! `$1`, `$2`, … that DataFusion binds.
//!
//! Input: SQL text. Output: the same text with each bare `?` placeholder replaced by the
//! next `$n`, spliced in where the tokenizer found it (nothing else changes: literals,
//! comments and quoted names are kept byte for byte). Invariants: text without a bare `?` is returned as it is; text mixing `?` with
//! numbered placeholders is refused, since their order would be ambiguous.

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
    // The tokenizer gives lines (split at `\n`) and columns (in characters), from 1.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        let within = sql[start..].char_indices().nth(skip)?.0;
        Some(start + within)
    };
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut copied, mut n) = (0, 0);
    for t in tokens.iter().filter(|t| bare(&t.token)) {
        let at = offset(t.span.start.line, t.span.start.column)
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
}
