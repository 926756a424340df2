//! Receive: sockets, size limits, decompression and workspace resolution.
//!
//! Input: connections on the gRPC and HTTP listeners. Output: decompressed, size-checked
//! bodies handed to `decode`, then to the [`Ingester`](crate::ingest::Ingester), and the
//! protocol answer built from its outcome (errors through `crate::error` only).
//! Invariants: the size cap applies after decompression and is enforced while reading, so
//! no body larger than the cap is ever held in memory; an invalid workspace is refused
//! before anything touches the disk; no parsing of span data happens here.

pub mod body;
pub mod grpc;
pub mod http;

use crate::error::Error;
use crate::workspace::Workspace;

/// The header (HTTP) and metadata key (gRPC) naming the workspace.
pub const WORKSPACE_HEADER: &str = "x-workspace";

/// The workspace named by an `x-workspace` value, else `default`.
pub fn workspace_from(value: Option<&[u8]>) -> Result<Workspace, Error> {
    match value {
        None => Ok(Workspace::default_workspace()),
        Some(v) => {
            let name = String::from_utf8_lossy(v);
            Ok(Workspace::new(name.trim())?)
        }
    }
}
