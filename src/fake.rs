//! Synthetic OTLP requests for benchmarks and load generation: realistic shapes (HTTP
//! server spans and LLM client spans, ~10 attributes each; LLM agents whose model calls
//! carry prompts and completions of realistic length), deterministic per seed.

use crate::proto::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status, any_value::Value, span,
};

/// An attribute.
pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

/// A string value.
pub(crate) fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// A small, fast PRNG (SplitMix64) so generated data is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

/// SplitMix64's finalizer: derive seeds from seeds with it, since neighbouring raw seeds
/// give overlapping sequences (and so repeated span ids).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The kinds of traffic [`shaped`] generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// HTTP server spans, ~10 attributes each (~450 B per span as OTLP protobuf).
    Microservice,
    /// Agent runs: an agent span, then model calls (GenAI attributes, prompt and
    /// completion messages of 0.5–3 KB) and tool calls.
    LlmAgent,
    /// Mostly HTTP spans with one short model call in four.
    Mixed,
}

const WORDS: [&str; 24] = [
    "the",
    "order",
    "customer",
    "refund",
    "policy",
    "shipping",
    "address",
    "invoice",
    "status",
    "please",
    "check",
    "account",
    "payment",
    "delivered",
    "tracking",
    "number",
    "agent",
    "tool",
    "result",
    "summary",
    "question",
    "answer",
    "context",
    "retrieved",
];

/// About `bytes` of prose-like text.
fn text(rng: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 16);
    while out.len() < bytes {
        out.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out
}

/// One request of `spans` spans in traces of 8 spans, starting at `start_ns`.
pub fn request(spans: usize, seed: u64, start_ns: u64) -> ExportTraceServiceRequest {
    shaped(Shape::Mixed, spans, seed, start_ns)
}

/// One request of `spans` spans of `shape` in traces of 8 spans, starting at `start_ns`;
/// the same bytes for the same arguments.
pub fn shaped(shape: Shape, spans: usize, seed: u64, start_ns: u64) -> ExportTraceServiceRequest {
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
        let llm = match shape {
            Shape::Mixed => i % 4 == 1,
            Shape::Microservice => false,
            Shape::LlmAgent => i % 2 == 1,
        };
        if shape == Shape::LlmAgent {
            let (name, attributes) = agent_span(&mut rng, i);
            out.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: if i % 8 == 0 {
                    Vec::new()
                } else {
                    root.to_vec()
                },
                name,
                kind: if llm {
                    span::SpanKind::Client
                } else {
                    span::SpanKind::Internal
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 50_000_000 + rng.next() % 2_000_000_000,
                attributes,
                status: Some(Status {
                    code: if rng.next().is_multiple_of(40) { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            });
            continue;
        }
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
    let service = if shape == Shape::LlmAgent {
        "support-agent"
    } else {
        "checkout"
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
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

/// The name and attributes of span `i` of an agent run: the agent (every 8th), model
/// calls (odd) and tool calls (the others).
fn agent_span(rng: &mut Rng, i: usize) -> (String, Vec<KeyValue>) {
    if i.is_multiple_of(8) {
        let attributes = vec![
            kv("gen_ai.operation.name", s("invoke_agent")),
            kv("gen_ai.agent.name", s("support-agent")),
            kv(
                "gen_ai.conversation.id",
                s(format!("conv-{}", rng.next() % 10_000)),
            ),
            kv("user.id", s(format!("user-{}", rng.next() % 2_000))),
            kv("input.value", s(text(rng, 200))),
            kv("output.value", s(text(rng, 400))),
        ];
        return ("invoke_agent support-agent".into(), attributes);
    }
    if i % 2 == 1 {
        let prompt = 500 + (rng.next() % 2500) as usize;
        let completion = 200 + (rng.next() % 1200) as usize;
        let input_tokens = (prompt / 4) as i64;
        let output_tokens = (completion / 4) as i64;
        let attributes = vec![
            kv("gen_ai.operation.name", s("chat")),
            kv("gen_ai.provider.name", s("openai")),
            kv("gen_ai.request.model", s("gpt-4o")),
            kv("gen_ai.response.model", s("gpt-4o-2024-08-06")),
            kv("gen_ai.usage.input_tokens", Value::IntValue(input_tokens)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(output_tokens)),
            kv("gen_ai.request.temperature", Value::DoubleValue(0.2)),
            kv("gen_ai.response.finish_reasons", s("[\"stop\"]")),
            kv(
                "gen_ai.input.messages",
                s(format!(
                    "[{{\"role\":\"user\",\"parts\":[{{\"type\":\"text\",\"content\":\"{}\"}}]}}]",
                    text(rng, prompt)
                )),
            ),
            kv(
                "gen_ai.output.messages",
                s(format!(
                    "[{{\"role\":\"assistant\",\"parts\":[{{\"type\":\"text\",\"content\":\"{}\"}}]}}]",
                    text(rng, completion)
                )),
            ),
        ];
        return ("chat gpt-4o".into(), attributes);
    }
    let attributes = vec![
        kv("gen_ai.operation.name", s("execute_tool")),
        kv("gen_ai.tool.name", s("lookup_order")),
        kv(
            "gen_ai.tool.call.id",
            s(format!("call_{:016x}", rng.next())),
        ),
        kv(
            "input.value",
            s(format!("{{\"order_id\":\"{}\"}}", rng.next() % 1_000_000)),
        ),
        kv("output.value", s(text(rng, 300))),
    ];
    ("execute_tool lookup_order".into(), attributes)
}
