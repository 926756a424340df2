//! Synthetic OTLP requests for benchmarks and load generation: realistic shapes (HTTP
//! server spans and LLM client spans, ~10 attributes each), deterministic per seed.

use crate::proto::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status, any_value::Value, span,
};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// A small, fast PRNG (SplitMix64) so generated data is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One request of `spans` spans in traces of 8 spans, starting at `start_ns`.
pub fn request(spans: usize, seed: u64, start_ns: u64) -> ExportTraceServiceRequest {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(spans);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    for i in 0..spans {
        if i % 8 == 0 {
            trace_id[..8].copy_from_slice(&rng.next().to_be_bytes());
            trace_id[8..].copy_from_slice(&rng.next().to_be_bytes());
        }
        let span_id = rng.next().max(1).to_be_bytes();
        if i % 8 == 0 {
            root = span_id;
        }
        let start = start_ns + (i as u64) * 1_000_000;
        let llm = i % 4 == 1;
        let attributes = if llm {
            vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.provider.name", s("openai")),
                kv("gen_ai.request.model", s("gpt-4o")),
                kv("gen_ai.response.model", s("gpt-4o-2024-08-06")),
                kv(
                    "gen_ai.usage.input_tokens",
                    Value::IntValue((rng.next() % 4000) as i64),
                ),
                kv(
                    "gen_ai.usage.output_tokens",
                    Value::IntValue((rng.next() % 800) as i64),
                ),
                kv(
                    "gen_ai.conversation.id",
                    s(format!("conv-{}", rng.next() % 1000)),
                ),
                kv("gen_ai.request.temperature", Value::DoubleValue(0.7)),
                kv("user.id", s(format!("user-{}", rng.next() % 500))),
                kv("server.address", s("api.openai.com")),
            ]
        } else {
            vec![
                kv("http.request.method", s("GET")),
                kv(
                    "url.full",
                    s(format!(
                        "https://api.example.com/v1/items/{}",
                        rng.next() % 100_000
                    )),
                ),
                kv("http.response.status_code", Value::IntValue(200)),
                kv("server.address", s("api.example.com")),
                kv("server.port", Value::IntValue(443)),
                kv("network.protocol.version", s("1.1")),
                kv("client.address", s("10.0.3.17")),
                kv("user_agent.original", s("Mozilla/5.0 (X11; Linux x86_64)")),
                kv("http.route", s("/v1/items/{id}")),
                kv("thread.name", s("worker-3")),
            ]
        };
        out.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: if i % 8 == 0 {
                Vec::new()
            } else {
                root.to_vec()
            },
            name: if llm {
                "chat gpt-4o".into()
            } else {
                "GET /v1/items/{id}".into()
            },
            kind: if llm {
                span::SpanKind::Client
            } else {
                span::SpanKind::Server
            } as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000_000 + rng.next() % 50_000_000,
            attributes,
            events: if i % 16 == 0 {
                vec![span::Event {
                    time_unix_nano: start + 500,
                    name: "cache miss".into(),
                    attributes: vec![kv("cache.key", s("items"))],
                    dropped_attributes_count: 0,
                }]
            } else {
                Vec::new()
            },
            status: Some(Status {
                code: if rng.next().is_multiple_of(50) { 2 } else { 0 },
                message: String::new(),
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("service.version", s("2.4.1")),
                    kv("deployment.environment.name", s("production")),
                    kv("host.name", s("ip-10-0-3-17")),
                    kv("telemetry.sdk.language", s("python")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.fastapi".into(),
                    version: "0.48b0".into(),
                    ..Default::default()
                }),
                spans: out,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
