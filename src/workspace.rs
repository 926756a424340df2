//! The `Workspace` newtype: a validated workspace name, safe to use as a path piece.

use std::fmt;
use std::sync::Arc;

/// A workspace name matching `^[a-z0-9][a-z0-9_-]{0,62}$`.
///
/// Validation happens once, at construction, so a `Workspace` can be put in a path
/// (`workspace=<name>`) without further checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workspace(Arc<str>);

/// The workspace used when a request names none.
pub const DEFAULT_WORKSPACE: &str = "default";

/// A name that is not a valid workspace.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid workspace name {name:?}: it must match ^[a-z0-9][a-z0-9_-]{{0,62}}$ (lower-case letters, digits, '_' and '-', at most 63 characters)"
)]
pub struct InvalidWorkspace {
    /// The rejected name, as received.
    pub name: String,
}

impl Workspace {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, InvalidWorkspace> {
        if is_valid(name) {
            Ok(Self(Arc::from(name)))
        } else {
            Err(InvalidWorkspace {
                name: name.chars().take(100).collect(),
            })
        }
    }

    /// The `default` workspace.
    pub fn default_workspace() -> Self {
        Self(Arc::from(DEFAULT_WORKSPACE))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(name: &str) -> bool {
    let b = name.as_bytes();
    let Some((&first, rest)) = b.split_first() else {
        return false;
    };
    b.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

impl fmt::Display for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Workspace({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        for ok in ["default", "a", "0", "team-a_1", &"a".repeat(63)] {
            assert!(Workspace::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "A",
            "-a",
            "_a",
            "a/b",
            "a.b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(Workspace::new(bad).is_err(), "{bad}");
        }
    }
}
