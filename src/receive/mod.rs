//! Receive: sockets, size limits, decompression and workspace resolution.
//!
//! Input: connections on the gRPC and HTTP listeners. Output: decompressed, size-checked
//! bodies handed to `decode`, then to the [`Ingester`](crate::ingest::Ingester), and the
//! protocol answer built from its outcome (errors through `crate::error` only).
//! Invariants: the size cap applies after decompression and is enforced while reading, so
//! no body larger than the cap is ever held in memory; an invalid workspace is refused
//! before anything touches the disk; no parsing of span data happens here.

pub mod admission;
pub mod body;
pub mod grpc;
pub mod http;
pub mod vendor;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::auth::{Auth, Scope, credential};
use crate::error::Error;
use crate::workspace::Workspace;

/// The header (HTTP) and metadata key (gRPC) naming the workspace.
pub const WORKSPACE_HEADER: &str = "x-workspace";
/// The header (HTTP) and metadata key (gRPC) carrying a bearer API key.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The header (HTTP) and metadata key (gRPC) carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The workspace named by a header value, validated.
pub fn requested_workspace(value: Option<&[u8]>) -> Result<Option<Workspace>, Error> {
    value
        .map(|v| Ok(Workspace::new(String::from_utf8_lossy(v).trim())?))
        .transpose()
}

/// The workspace an ingest request acts on: the one it names (validated), checked against
/// its API key; without a name, the key's only workspace, else `default`.
pub fn ingest_workspace(
    auth: &Auth,
    named: Option<&[u8]>,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
) -> Result<Workspace, Error> {
    let requested = requested_workspace(named)?;
    Ok(auth.authorize(credential(authorization, api_key), requested, Scope::Ingest)?)
}

/// The router serving every HTTP ingest and operational route (OTLP and the vendors').
pub fn http_router(state: http::HttpState) -> Router {
    Router::new()
        .route(
            "/v1/traces",
            post(http::otlp_traces).fallback(http::method_not_allowed),
        )
        .route(
            "/apis/intake/v2/workspaces/{workspace}/ingest/otlp/v1/traces",
            post(vendor::nemo_ingest),
        )
        .route("/v0/otel/traces", post(vendor::avido_ingest))
        .route("/v1/traces/ingest", post(vendor::span_logs_ingest))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        // The cap is ours, applied while reading and again after decompression.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
