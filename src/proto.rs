//! Protobuf types: the OTLP messages (from `opentelemetry-proto`) and the project's own
//! protos compiled by `build.rs` from `proto/`.

/// `google.rpc.Status`, the error body of OTLP/HTTP responses.
pub mod google_rpc {
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}

/// `spanlake.query.v1`: the gRPC query service.
pub mod query {
    include!(concat!(env!("OUT_DIR"), "/spanlake.query.v1.rs"));
}

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
