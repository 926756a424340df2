//! API keys: who may ingest into and read from which workspace.
//!
//! Input: a credential (`Authorization: Bearer K` or `x-api-key: K`, on HTTP or as gRPC
//! metadata), the workspace a request names (if any) and the scope it needs. Output: the
//! workspace the request acts on, or why it is refused. Invariants: without a keys file
//! everything is open (and the server binds loopback only); keys are compared in constant
//! time and never logged or echoed; a key with exactly one workspace needs no
//! `x-workspace`.

use std::path::Path;

use serde::Deserialize;

use crate::workspace::Workspace;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send spans.
    Ingest,
    /// Query.
    Read,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    workspaces: Vec<String>,
    scopes: Vec<Scope>,
}

struct Key {
    secret: Vec<u8>,
    workspaces: Vec<Workspace>,
    scopes: Vec<Scope>,
}

/// Why a request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credential: 401 / UNAUTHENTICATED.
    #[error("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Missing,
    /// The credential matches no key: 401 / UNAUTHENTICATED.
    #[error("unknown API key")]
    Unknown,
    /// The key may not use this workspace: 403 / PERMISSION_DENIED.
    #[error("this API key may not use workspace {0}")]
    Workspace(Workspace),
    /// The key lacks the scope: 403 / PERMISSION_DENIED.
    #[error("this API key lacks the {0} scope")]
    Scope(&'static str),
}

impl AuthError {
    /// Whether the caller is unknown (401) rather than known but not allowed (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, AuthError::Missing | AuthError::Unknown)
    }
}

/// A keys file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("API keys file {path}: {message}")]
pub struct KeysFileError {
    path: String,
    message: String,
}

/// The key store; `None` inside means open access.
pub struct Auth {
    keys: Option<Vec<Key>>,
}

impl Auth {
    /// No keys: every request is allowed.
    pub fn open() -> Self {
        Self { keys: None }
    }

    /// Loads a TOML keys file (`[[keys]]` with `key`, `workspaces`, `scopes`).
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let err = |message: String| KeysFileError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for (i, entry) in file.keys.into_iter().enumerate() {
            if entry.key.trim().is_empty() {
                return Err(err(format!("key {i} is empty")));
            }
            let workspaces = entry
                .workspaces
                .iter()
                .map(|w| Workspace::new(w).map_err(|e| err(format!("key {i}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            keys.push(Key {
                secret: entry.key.into_bytes(),
                workspaces,
                scopes: entry.scopes,
            });
        }
        Ok(Self { keys: Some(keys) })
    }

    /// The key `credential` is; `None` when access is open.
    fn key(&self, credential: Option<&[u8]>) -> Result<Option<&Key>, AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let credential = credential.ok_or(AuthError::Missing)?;
        // Compare against every key, each in constant time, so timing says nothing about
        // which key or how much of it matched.
        let mut found = None;
        for key in keys {
            if constant_time_eq(&key.secret, credential) {
                found = Some(key);
            }
        }
        found.map(Some).ok_or(AuthError::Unknown)
    }

    /// Checks only that `credential` is a known key (for routes of no workspace).
    pub fn authenticate(&self, credential: Option<&[u8]>) -> Result<(), AuthError> {
        self.key(credential).map(|_| ())
    }

    /// The workspaces `credential` may see; `None` means all of them (open access).
    pub fn visible_workspaces(
        &self,
        credential: Option<&[u8]>,
    ) -> Result<Option<Vec<Workspace>>, AuthError> {
        Ok(self.key(credential)?.map(|k| k.workspaces.clone()))
    }

    /// Whether requests need no key.
    pub fn is_open(&self) -> bool {
        self.keys.is_none()
    }

    /// The workspace a request acts on, if `credential` may use it with `scope`.
    /// `requested` is the workspace the request names; without one, a key's only
    /// workspace, else `default`.
    pub fn authorize(
        &self,
        credential: Option<&[u8]>,
        requested: Option<Workspace>,
        scope: Scope,
    ) -> Result<Workspace, AuthError> {
        let Some(key) = self.key(credential)? else {
            return Ok(requested.unwrap_or_else(Workspace::default_workspace));
        };
        let workspace = match requested {
            Some(ws) => ws,
            None if key.workspaces.len() == 1 => key.workspaces[0].clone(),
            None => Workspace::default_workspace(),
        };
        if !key.workspaces.contains(&workspace) {
            return Err(AuthError::Workspace(workspace));
        }
        if !key.scopes.contains(&scope) {
            return Err(AuthError::Scope(scope.as_str()));
        }
        Ok(workspace)
    }
}

/// Equality whose time depends on `a`'s length only, not on where the bytes differ. Any
/// length difference makes it false (the whole difference counts, not a part of it).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The credential of a request: `Authorization: Bearer K`, else `x-api-key: K`.
pub fn credential<'a>(
    authorization: Option<&'a [u8]>,
    api_key: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    let bearer = authorization.and_then(|v| {
        let (scheme, rest) = v.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| rest.trim_ascii())
    });
    bearer
        .or(api_key.map(<[u8]>::trim_ascii))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            r#"
[[keys]]
key = "k-alpha"
workspaces = ["alpha"]
scopes = ["ingest", "read"]

[[keys]]
key = "k-multi"
workspaces = ["alpha", "beta"]
scopes = ["read"]
"#,
        )
        .unwrap();
        Auth::load(&path).unwrap()
    }

    #[test]
    fn the_matrix() {
        let a = auth();
        let ws = |n: &str| Some(Workspace::new(n).unwrap());
        assert_eq!(
            a.authorize(Some(b"k-alpha"), None, Scope::Ingest)
                .unwrap()
                .as_str(),
            "alpha"
        );
        assert!(matches!(
            a.authorize(None, ws("alpha"), Scope::Read),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            a.authorize(Some(b"nope"), ws("alpha"), Scope::Read),
            Err(AuthError::Unknown)
        ));
        assert!(matches!(
            a.authorize(Some(b"k-alpha"), ws("beta"), Scope::Read),
            Err(AuthError::Workspace(_))
        ));
        assert!(matches!(
            a.authorize(Some(b"k-multi"), ws("beta"), Scope::Ingest),
            Err(AuthError::Scope(_))
        ));
        assert_eq!(
            a.authorize(Some(b"k-multi"), ws("beta"), Scope::Read)
                .unwrap()
                .as_str(),
            "beta"
        );
        assert!(matches!(
            a.authorize(Some(b"k-multi"), None, Scope::Read),
            Err(AuthError::Workspace(_))
        ));
        assert!(matches!(
            a.authorize(Some(b"k-alph"), None, Scope::Read),
            Err(AuthError::Unknown)
        ));
    }

    #[test]
    fn keys_of_other_lengths_never_match() {
        let key = b"k-alpha";
        for extra in [1usize, 256, 65_536, 1 << 20] {
            let mut longer = key.to_vec();
            longer.resize(key.len() + extra, 0);
            assert!(
                !constant_time_eq(&longer, key),
                "{extra} trailing zero bytes"
            );
            assert!(!constant_time_eq(key, &longer), "{extra} missing bytes");
        }
        assert!(constant_time_eq(key, key));
        assert!(!constant_time_eq(b"k-alphb", key));
    }

    #[test]
    fn credentials() {
        assert_eq!(credential(Some(b"Bearer abc"), None), Some(&b"abc"[..]));
        assert_eq!(
            credential(Some(b"bearer  abc "), Some(b"x")),
            Some(&b"abc"[..])
        );
        assert_eq!(credential(None, Some(b"k")), Some(&b"k"[..]));
        assert_eq!(credential(Some(b"Basic abc"), None), None);
    }
}
