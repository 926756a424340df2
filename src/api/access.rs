//! Analyst access: which workspaces a key may read over the analyst protocols (Flight SQL,
//! the PostgreSQL wire protocol), and the session they query.
//!
//! Input: the key a connection or call presents (or none). Output: an [`Access`] — every
//! workspace the key may read, each a schema of the catalog `spanlake` — or the reason it
//! may read none. Invariants: with keys, a query naming a workspace outside the access is
//! refused as such; unqualified names resolve in one home workspace (the first one asked
//! for that is readable, else the key's only workspace, else `default` when readable, else the first);
//! `information_schema` is never a workspace schema.

use datafusion::prelude::SessionContext;

use crate::auth::{Auth, AuthError, Scope};
use crate::query::{QueryEngine, QueryError, is_schema_name};
use crate::workspace::Workspace;

/// What a key may read.
#[derive(Debug, Clone)]
pub struct Access {
    /// The workspaces, each a schema; never empty.
    pub workspaces: Vec<Workspace>,
    /// Whether keys restrict access (a query naming another workspace is then refused as
    /// such; with open access that workspace simply does not exist).
    pub restricted: bool,
}

impl Access {
    /// The workspaces `credential` may read (every workspace when access is open), or why
    /// it may read none.
    pub fn of(
        auth: &Auth,
        engine: &QueryEngine,
        credential: Option<&[u8]>,
    ) -> Result<Self, AuthError> {
        auth.authenticate(credential)?;
        let candidates = match auth.visible_workspaces(credential)? {
            Some(keys) => keys,
            None => {
                let mut all = engine.workspaces();
                let default = Workspace::default_workspace();
                if !all.contains(&default) {
                    all.insert(0, default);
                }
                all
            }
        };
        let mut refusal = None;
        let workspaces: Vec<Workspace> = candidates
            .into_iter()
            .filter(is_schema_name)
            .filter(
                |ws| match auth.authorize(credential, Some(ws.clone()), Scope::Read) {
                    Ok(_) => true,
                    Err(e) => {
                        refusal.get_or_insert(e);
                        false
                    }
                },
            )
            .collect();
        if workspaces.is_empty() {
            return Err(refusal.unwrap_or(AuthError::Scope("read")));
        }
        Ok(Self {
            workspaces,
            restricted: !auth.is_open(),
        })
    }

    /// The workspaces a query may name, when keys restrict them.
    pub fn checked(&self) -> Option<&[Workspace]> {
        self.restricted.then_some(&self.workspaces[..])
    }

    /// Where unqualified names resolve: the first of `wanted` that is readable, else the
    /// only workspace, else `default` when readable, else the first.
    pub fn home(&self, wanted: &[&str]) -> &Workspace {
        let named = |name: &str| self.workspaces.iter().find(|ws| ws.as_str() == name);
        wanted
            .iter()
            .find_map(|w| named(w))
            .or_else(|| {
                (self.workspaces.len() != 1)
                    .then(|| named("default"))
                    .flatten()
            })
            .unwrap_or(&self.workspaces[0])
    }

    /// A session over every workspace of the access, unqualified names resolving in
    /// [`Access::home`] of `wanted`.
    pub async fn session(
        &self,
        engine: &QueryEngine,
        wanted: &[&str],
    ) -> Result<SessionContext, QueryError> {
        engine.session_of(&self.workspaces, self.home(wanted)).await
    }
}
