//! Property: the protobuf and the OTLP JSON encodings of the same request give identical
//! rows and identical rejections, and so do the two protobuf decoders: the walk straight
//! from the bytes into Arrow (what the server runs) and prost messages normalized (the
//! decoder it replaced, kept for OTLP JSON). The JSON is written by the
//! `opentelemetry-proto` crate's own serde serializer, an encoder independent of ours.

use proptest::prelude::*;
use prost::Message;
use spanlake::decode::{decode_json, decode_protobuf};
use spanlake::normalize::{normalize, normalize_protobuf};
use spanlake::proto::*;

fn any_value(depth: u32) -> BoxedStrategy<AnyValue> {
    let leaf = prop_oneof![
        "[a-z ]{0,8}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        (-1e12f64..1e12).prop_map(any_value::Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(any_value::Value::BytesValue),
    ];
    let value = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![
            4 => leaf,
            1 => prop::collection::vec(any_value(depth - 1), 0..3)
                .prop_map(|values| any_value::Value::ArrayValue(ArrayValue { values })),
            1 => prop::collection::vec(key_value(depth - 1), 0..3)
                .prop_map(|values| any_value::Value::KvlistValue(KeyValueList { values })),
        ]
        .boxed()
    };
    value.prop_map(|v| AnyValue { value: Some(v) }).boxed()
}

fn key_value(depth: u32) -> BoxedStrategy<KeyValue> {
    let key = prop_oneof![
        Just("gen_ai.usage.input_tokens".to_string()),
        Just("llm.token_count.completion".to_string()),
        Just("gen_ai.request.model".to_string()),
        Just("session.id".to_string()),
        Just("llm.cost.total".to_string()),
        Just("input.value".to_string()),
        Just("error.type".to_string()),
        "[a-z.]{1,10}",
    ];
    (key, any_value(depth))
        .prop_map(|(key, value)| KeyValue {
            key,
            value: Some(value),
            key_strindex: 0,
        })
        .boxed()
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    // Mostly valid lengths, sometimes wrong ones (which both paths must reject alike).
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), len),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        (id(16), id(8), prop_oneof![Just(Vec::new()), id(8)]),
        (
            "[a-zA-Z /]{0,12}",
            0i32..6,
            any::<u64>(),
            0u64..10_000_000_000,
        ),
        prop::collection::vec(key_value(2), 0..5),
        prop::collection::vec(
            (
                "[a-z]{0,5}",
                any::<u32>(),
                prop::collection::vec(key_value(0), 0..2),
            ),
            0..2,
        ),
        prop::collection::vec(
            (
                id(16),
                id(8),
                "[a-z=,]{0,6}",
                prop::collection::vec(key_value(0), 0..2),
            ),
            0..2,
        ),
        (0i32..3, "[a-z ]{0,10}"),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent),
                (name, kind, start, dur),
                attributes,
                events,
                links,
                (code, message),
            )| Span {
                trace_id,
                span_id,
                parent_span_id: parent,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start.saturating_add(dur),
                attributes,
                events: events
                    .into_iter()
                    .map(|(name, t, attributes)| span::Event {
                        time_unix_nano: t as u64 * 1000,
                        name,
                        attributes,
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                links: links
                    .into_iter()
                    .map(|(trace_id, span_id, trace_state, attributes)| span::Link {
                        trace_id,
                        span_id,
                        trace_state,
                        attributes,
                        dropped_attributes_count: 0,
                        flags: 0,
                    })
                    .collect(),
                status: Some(Status { message, code }),
                ..Default::default()
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = (
        "[a-z]{0,6}",
        "[0-9.]{0,4}",
        prop::collection::vec(span(), 0..4),
    );
    let resource = (
        prop::collection::vec(key_value(1), 0..3),
        prop::collection::vec(scope, 1..3),
    );
    prop::collection::vec(resource, 0..3).prop_map(|resources| ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|(attributes, scopes)| ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: scopes
                    .into_iter()
                    .map(|(name, version, spans)| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name,
                            version,
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn protobuf_and_json_give_identical_rows(req in request()) {
        let bytes = req.encode_to_vec();
        let pb = normalize(&decode_protobuf(&bytes).unwrap()).unwrap();
        let direct = normalize_protobuf(&bytes).unwrap();
        prop_assert_eq!(&direct.rejected, &pb.rejected);
        prop_assert_eq!(direct.chunk.to_batch().unwrap(), pb.chunk.to_batch().unwrap());
        let json = serde_json::to_vec(&req).unwrap();
        let js = normalize(&decode_json(&json).unwrap()).unwrap();
        let indices = |n: &spanlake::normalize::Normalized| n.rejected.iter().map(|r| r.index).collect::<Vec<_>>();
        prop_assert_eq!(indices(&pb), indices(&js));
        prop_assert_eq!(pb.chunk.to_batch().unwrap(), js.chunk.to_batch().unwrap());
    }
}
