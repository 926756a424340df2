//! The front end's errors as PostgreSQL reports them.
//!
//! Input: a failure of a query, a login or a client message. Output: a `PgWireError`
//! carrying PostgreSQL's SQLSTATE for it and a message saying what was wrong. Invariants:
//! every refusal has the code a PostgreSQL client acts on (`28P01` for a bad password,
//! `25006` for a write, `42501` for another key's workspace, `57014` for a cancel or
//! timeout, …); only a failed login is FATAL.

use pgwire::error::{ErrorInfo, PgWireError};

use crate::query::QueryError;

/// An error of SQLSTATE `code`.
pub fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// A query failure as PostgreSQL's error class for it.
pub fn query_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::NotAllowed(_) => "25006",
        QueryError::Sql(m) if m.contains("ParserError") => "42601",
        QueryError::Sql(m) if m.contains("not found") => "42P01",
        QueryError::Sql(m) if m.contains("No field named") => "42703",
        QueryError::Sql(_) => "42000",
        QueryError::Memory { .. } => "53200",
        QueryError::Timeout(_) => "57014",
        QueryError::Workspace(_) => "42501",
        QueryError::Starting => "57P03",
        QueryError::Internal(_) => "XX000",
    };
    error(code, e.to_string())
}

/// A failed login, worded as PostgreSQL words it (clients and people look for this text).
pub fn bad_password(user: Option<&str>) -> PgWireError {
    fatal(
        "28P01",
        format!(
            "password authentication failed for user \"{}\": the password must be an API key \
             with the read scope",
            user.unwrap_or_default()
        ),
    )
}

/// An error that ends the connection.
pub fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message.into(),
    )))
}

/// A statement ended by a cancel request.
pub fn canceled() -> PgWireError {
    error("57014", "canceling statement due to user request")
}

/// A statement ended because its client closed the connection.
pub fn gone() -> PgWireError {
    error("08006", "the client closed the connection")
}
