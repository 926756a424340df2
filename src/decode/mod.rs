//! Decode: request bytes (already decompressed and size-checked) → OTLP messages.
//!
//! Input: the body of an OTLP request as protobuf or OTLP JSON. Output: a
//! [`DecodedRequest`], the prost `ExportTraceServiceRequest` plus the spans the decoder
//! itself had to reject (an id that is not hex). Invariants: a body that cannot be parsed
//! at all is a [`DecodeError`] and nothing of it is stored; a span with a bad id never
//! fails the request, it is listed in [`DecodedRequest::rejected`] by its position in
//! the request (counting spans across resource and scope groups, from 0).

pub mod footprint;
mod json;
pub mod vendor;
pub mod view;
pub mod wire;

use prost::Message;

use crate::proto::ExportTraceServiceRequest;

pub use json::{decode_json, decode_json_value};

/// The wire encoding of an OTLP request or response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`
    Protobuf,
    /// `application/json`
    Json,
}

impl Encoding {
    /// The exact response `Content-Type` for this encoding (no parameters).
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// How a body in this encoding is decoded, for its footprint.
    pub fn shape(self) -> footprint::Shape {
        match self {
            Encoding::Protobuf => footprint::Shape::Protobuf,
            Encoding::Json => footprint::Shape::OtlpJson,
        }
    }

    /// Parses a `Content-Type` header as a MIME type: case-insensitive, parameters ignored.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// Which part of a span made it invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedField {
    /// The trace id (not hex, not 16 bytes, all zero).
    TraceId,
    /// The span id (not hex, not 8 bytes, all zero).
    SpanId,
    /// The parent span id (not hex, not 8 bytes).
    ParentSpanId,
    /// Anything else (a link id, a time out of range).
    Other,
}

/// A refused span, by its position in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRejection {
    /// Position of the span in the request, counting from 0 across all groups.
    pub index: usize,
    /// What was wrong.
    pub field: RejectedField,
    /// Why, in words a user can act on.
    pub reason: String,
}

/// A decoded OTLP request.
#[derive(Debug, Default)]
pub struct DecodedRequest {
    /// The request; rejected spans are still in it, with their ids cleared.
    pub request: ExportTraceServiceRequest,
    /// Spans rejected while decoding, sorted by index.
    pub rejected: Vec<SpanRejection>,
}

/// A body that is not a valid OTLP request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid protobuf `ExportTraceServiceRequest`.
    #[error("invalid OTLP protobuf: {0}")]
    Protobuf(#[source] prost::DecodeError),
    /// Not a valid protobuf `ExportTraceServiceRequest`, found walking its bytes.
    #[error("invalid OTLP protobuf: {0}")]
    Wire(#[from] wire::WireError),
    /// Not a valid OTLP JSON `ExportTraceServiceRequest`.
    #[error("invalid OTLP JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Not valid JSON, or not the shape a vendor route takes.
    #[error("invalid request body: {0}")]
    Body(String),
}

/// Decodes a protobuf `ExportTraceServiceRequest`.
pub fn decode_protobuf(bytes: &[u8]) -> Result<DecodedRequest, DecodeError> {
    let request = ExportTraceServiceRequest::decode(bytes).map_err(DecodeError::Protobuf)?;
    Ok(DecodedRequest {
        request,
        rejected: Vec::new(),
    })
}

/// Decodes a body in the given encoding.
pub fn decode(encoding: Encoding, bytes: &[u8]) -> Result<DecodedRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => decode_protobuf(bytes),
        Encoding::Json => decode_json(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_parsed_leniently() {
        assert_eq!(
            Encoding::from_content_type("Application/JSON; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(" application/x-protobuf "),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
        assert_eq!(Encoding::from_content_type("application/jsonx"), None);
    }
}
