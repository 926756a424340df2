//! The one place where errors become protocol answers: gRPC codes, HTTP statuses and
//! OTLP/HTTP error bodies (`google.rpc.Status` in the request's encoding). Each error is
//! logged here, once, at the boundary.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use prost::Message;
use tracing::{debug, error, warn};

use crate::auth::AuthError;
use crate::decode::{DecodeError, Encoding};
use crate::normalize::NormalizeError;
use crate::proto::google_rpc;
use crate::receive::admission::AdmissionError;
use crate::wal::WalError;
use crate::workspace::InvalidWorkspace;

/// Seconds a client is asked to wait after an overload answer.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Every failure a request can meet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not a valid request.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The workspace name is invalid.
    #[error(transparent)]
    Workspace(#[from] InvalidWorkspace),
    /// No or an unknown API key, or one not allowed here.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body (after decompression) is over the cap.
    #[error("request body exceeds the limit of {limit} bytes (checked after decompression)")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// Neither `application/x-protobuf` nor `application/json`.
    #[error("unsupported media type {0:?}, supported: [application/json, application/x-protobuf]")]
    UnsupportedMediaType(String),
    /// Not `POST`.
    #[error("method not allowed, supported: [POST]")]
    MethodNotAllowed,
    /// A `Content-Encoding` we do not decode.
    #[error("unsupported Content-Encoding: {0}")]
    UnsupportedEncoding(String),
    /// A compressed body that does not decompress.
    #[error("corrupt {encoding} body: {message}")]
    Decompress {
        /// The content encoding.
        encoding: &'static str,
        /// What the decompressor said.
        message: String,
    },
    /// The body could not be read from the connection.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The WAL is still being replayed.
    #[error("not ready: the write-ahead log is still being replayed; retry shortly")]
    NotReady,
    /// The in-memory buffer is over its bound.
    #[error("the ingest buffer is full ({bytes} bytes buffered); retry later")]
    BufferFull {
        /// Bytes buffered.
        bytes: u64,
    },
    /// The WAL refused or failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A bug while building the batch.
    #[error(transparent)]
    Normalize(NormalizeError),
    /// Not taken on: too many requests or bytes in flight.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
}

impl From<NormalizeError> for Error {
    fn from(e: NormalizeError) -> Self {
        match e {
            NormalizeError::Decode(d) => Error::Decode(d),
            e => Error::Normalize(e),
        }
    }
}

impl Error {
    /// Whether the client should retry later: overload, or a WAL that could not store the
    /// request now (nothing of it was acknowledged). Answered UNAVAILABLE / 503 with
    /// `Retry-After`, which OTLP exporters retry.
    pub fn is_overload(&self) -> bool {
        match self {
            Error::NotReady | Error::BufferFull { .. } => true,
            Error::Admission(e) => e.is_retryable(),
            Error::Wal(e) => !matches!(e, WalError::Encode(_) | WalError::RecordTooLarge { .. }),
            _ => false,
        }
    }

    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            _ if self.is_overload() => tonic::Code::Unavailable,
            Error::Decode(_)
            | Error::Workspace(_)
            | Error::UnsupportedMediaType(_)
            | Error::UnsupportedEncoding(_)
            | Error::Decompress { .. } => tonic::Code::InvalidArgument,
            Error::TooLarge { .. }
            | Error::Wal(WalError::RecordTooLarge { .. })
            | Error::Admission(AdmissionError::DecodesTooLarge { .. }) => {
                tonic::Code::ResourceExhausted
            }
            Error::Auth(e) if e.is_unauthenticated() => tonic::Code::Unauthenticated,
            Error::Auth(_) => tonic::Code::PermissionDenied,
            Error::MethodNotAllowed => tonic::Code::Unimplemented,
            Error::Body(_) => tonic::Code::Cancelled,
            Error::NotReady
            | Error::BufferFull { .. }
            | Error::Admission(_)
            | Error::Wal(_)
            | Error::Normalize(_) => tonic::Code::Internal,
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            _ if self.is_overload() => StatusCode::SERVICE_UNAVAILABLE,
            Error::Decode(_)
            | Error::Workspace(_)
            | Error::UnsupportedEncoding(_)
            | Error::Decompress { .. }
            | Error::Body(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. }
            | Error::Wal(WalError::RecordTooLarge { .. })
            | Error::Admission(AdmissionError::DecodesTooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Auth(e) if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            Error::Auth(_) => StatusCode::FORBIDDEN,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotReady
            | Error::BufferFull { .. }
            | Error::Admission(_)
            | Error::Wal(_)
            | Error::Normalize(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        if self.is_overload() {
            warn!(error = %self, "Refused a request: overloaded.");
        } else if self.http_status().is_server_error() {
            error!(error = %self, "Request failed.");
        } else {
            debug!(error = %self, "Refused a request.");
        }
    }

    /// The gRPC status answering this error.
    pub fn to_grpc_status(&self) -> tonic::Status {
        self.log();
        tonic::Status::new(self.grpc_code(), self.to_string())
    }

    /// The OTLP/HTTP answer: a `google.rpc.Status` in the request's encoding (plain text
    /// when the request's media type is not one we speak).
    pub fn to_http_response(&self, encoding: Option<Encoding>) -> Response {
        self.log();
        let status = self.http_status();
        let message = self.to_string();
        let mut response = match encoding {
            Some(Encoding::Protobuf) => {
                let body = google_rpc::Status {
                    code: self.grpc_code() as i32,
                    message,
                    details: Vec::new(),
                }
                .encode_to_vec();
                (
                    status,
                    [(header::CONTENT_TYPE, Encoding::Protobuf.content_type())],
                    body,
                )
                    .into_response()
            }
            Some(Encoding::Json) => {
                let body = serde_json::json!({
                    "code": self.grpc_code() as i32,
                    "message": message,
                    "details": [],
                })
                .to_string();
                (
                    status,
                    [(header::CONTENT_TYPE, Encoding::Json.content_type())],
                    body,
                )
                    .into_response()
            }
            None => (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response(),
        };
        if self.is_overload() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl Error {
    /// The answer on the NeMo and span-log routes (FastAPI shapes): a body that cannot be
    /// parsed is a 422 with `{"detail": [{"loc", "msg", "type"}]}`, anything else
    /// `{"detail": "…"}` with the status of [`Error::http_status`].
    pub fn to_fastapi_response(&self) -> Response {
        self.log();
        let (status, body) = match self {
            Error::Decode(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"detail": [{"loc": ["body"], "msg": e.to_string(), "type": "json_invalid"}]}),
            ),
            Error::Workspace(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"detail": [{"loc": ["path", "workspace"], "msg": e.to_string(), "type": "string_pattern_mismatch"}]}),
            ),
            other => (
                other.http_status(),
                serde_json::json!({"detail": other.to_string()}),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if self.is_overload() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Failures of the query routes (NeMo-style bodies: `{"detail": …}`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid parameters: 422 with every problem.
    #[error("invalid request parameters")]
    Validation(Vec<crate::api::params::ValidationError>),
    /// Nothing there: 404.
    #[error("{0}")]
    NotFound(String),
    /// No or an unknown API key (401), or one not allowed here (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The query failed.
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    /// An answer larger than the JSON cap: 400 (`RESOURCE_EXHAUSTED` over gRPC), saying how
    /// to ask for less.
    #[error("{0}")]
    TooLarge(String),
    /// A bug or an I/O failure: 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        use crate::query::QueryError;
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Auth(e) if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            ApiError::Auth(_) | ApiError::Query(QueryError::Workspace(_)) => StatusCode::FORBIDDEN,
            ApiError::Query(
                QueryError::NotAllowed(_) | QueryError::Sql(_) | QueryError::Memory { .. },
            )
            | ApiError::TooLarge(_) => StatusCode::BAD_REQUEST,
            ApiError::Query(QueryError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Query(QueryError::Starting) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Query(QueryError::Internal(_)) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl ApiError {
    /// The gRPC status answering this error (for the query service).
    pub fn to_grpc_status(&self) -> tonic::Status {
        use crate::query::QueryError;
        let code = match self {
            ApiError::Validation(_) => tonic::Code::InvalidArgument,
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::Auth(e) if e.is_unauthenticated() => tonic::Code::Unauthenticated,
            ApiError::Auth(_) | ApiError::Query(QueryError::Workspace(_)) => {
                tonic::Code::PermissionDenied
            }
            ApiError::Query(QueryError::NotAllowed(_) | QueryError::Sql(_)) => {
                tonic::Code::InvalidArgument
            }
            ApiError::Query(QueryError::Memory { .. }) | ApiError::TooLarge(_) => {
                tonic::Code::ResourceExhausted
            }
            ApiError::Query(QueryError::Timeout(_)) => tonic::Code::DeadlineExceeded,
            ApiError::Query(QueryError::Starting) => tonic::Code::Unavailable,
            ApiError::Query(QueryError::Internal(_)) | ApiError::Internal(_) => {
                tonic::Code::Internal
            }
        };
        let message = match self {
            ApiError::Validation(errors) => serde_json::json!({ "detail": errors }).to_string(),
            other => other.to_string(),
        };
        tonic::Status::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            error!(error = %self, "Query request failed.");
        } else {
            debug!(error = %self, "Refused a query request.");
        }
        let body = match self {
            ApiError::Validation(errors) => serde_json::json!({ "detail": errors }),
            other => serde_json::json!({ "detail": other.to_string() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}
