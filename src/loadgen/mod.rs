//! Loadgen: an OTLP load generator (`spanlake loadgen`).
//!
//! Input: [`LoadgenArgs`]. Output: requests of synthetic spans ([`crate::fake::shaped`])
//! sent over OTLP/gRPC, OTLP/HTTP protobuf or OTLP/HTTP JSON, and a [`Summary`] (spans/s,
//! MB/s, p50/p99 latency, errors by code). Invariants: request `k` of a run holds the same
//! bytes for the same `--seed` on every run, and its span ids are its own (a failed
//! request is never resent, so a server that stores a span twice is the server's fault);
//! with `--acked-log`, the span ids of every acknowledged request are appended, and only
//! those.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

use crate::fake::{Shape, shaped};
use crate::proto::ExportTraceServiceRequest;

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadProtocol {
    /// OTLP/gRPC `TraceService/Export`.
    Grpc,
    /// OTLP/HTTP, `application/x-protobuf`.
    HttpProtobuf,
    /// OTLP/HTTP, `application/json`.
    HttpJson,
}

/// Settings of `spanlake loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The server: `http://127.0.0.1:4317` for gRPC, `http://127.0.0.1:4318` for HTTP.
    #[arg(long, env = "SPANLAKE_LOADGEN_ENDPOINT")]
    pub endpoint: String,
    /// The OTLP transport.
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: LoadProtocol,
    /// The workspace (`x-workspace`); the server's default when absent.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Spans to send in all (rounded up to whole batches); without it, `--duration`.
    #[arg(long)]
    pub spans: Option<u64>,
    /// How long to send (e.g. `60s`, `10m`); the default when neither is given is 10s.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Spans per second at most (no limit without it).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The traffic.
    #[arg(long, value_enum, default_value = "mixed")]
    pub shape: Shape,
    /// Seed of the generated data: the same seed sends the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// API key, sent as `Authorization: Bearer …`.
    #[arg(long, env = "SPANLAKE_API_KEY")]
    pub api_key: Option<String>,
    /// Appends the span ids (hex, one per line) of every acknowledged request to this file.
    #[arg(long)]
    pub acked_log: Option<PathBuf>,
    /// Stamp spans from the current time instead of from 2026-01-01T00:00:00Z (which keeps
    /// the bytes of a seed the same on every run).
    #[arg(long)]
    pub now: bool,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Send nothing: time the bare protobuf decode of the requests a run with these
    /// settings (`--spans`) would send, for comparison with a server's cost.
    #[arg(long)]
    pub decode_only: bool,
}

/// What decoding a run's requests costs, without a server.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DecodeCost {
    /// Requests decoded.
    pub requests: u64,
    /// Spans in them.
    pub spans: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Seconds spent in `prost` decoding them (one thread).
    pub seconds: f64,
}

/// Times the protobuf decode of the requests a run of `args` (`--spans`) sends.
pub fn decode_cost(args: &LoadgenArgs) -> anyhow::Result<DecodeCost> {
    use prost::Message as _;
    let spans = args
        .spans
        .context("--decode-only needs --spans (the run's requests)")?;
    let requests = spans.div_ceil(args.batch as u64);
    let mut cost = DecodeCost::default();
    for k in 0..requests {
        let bytes = request(args, k, FIXED_START_NS).encode_to_vec();
        let started = Instant::now();
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice())
            .context("decoding a generated request")?;
        cost.seconds += started.elapsed().as_secs_f64();
        cost.requests += 1;
        cost.bytes += bytes.len() as u64;
        cost.spans += decoded
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
    }
    Ok(cost)
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// Spans acknowledged (sent in requests answered OK, less any rejected in them).
    pub acked_spans: u64,
    /// Bytes of the acknowledged requests, as encoded on the wire (before compression).
    pub acked_bytes: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Acknowledged spans per second.
    pub spans_per_second: f64,
    /// Acknowledged megabytes (10^6) per second.
    pub mb_per_second: f64,
    /// Median request latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile request latency, milliseconds.
    pub p99_ms: f64,
    /// Failed requests by answer (`grpc:UNAVAILABLE`, `http:503`, `connect`, …).
    pub errors: BTreeMap<String, u64>,
}

/// 2026-01-01T00:00:00Z: where spans start without `--now`.
pub const FIXED_START_NS: u64 = 1_767_225_600 * 1_000_000_000;

/// Request `k` of a run, its spans starting `k` ms after `start_ns`.
pub fn request(args: &LoadgenArgs, k: u64, start_ns: u64) -> ExportTraceServiceRequest {
    let seed = crate::fake::mix(crate::fake::mix(args.seed) ^ k);
    shaped(args.shape, args.batch, seed, start_ns + k * 1_000_000)
}

enum Sender {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>),
}

/// One request's outcome: spans acknowledged, or the error's code.
type Outcome = Result<u64, String>;

struct Run {
    args: LoadgenArgs,
    start_ns: u64,
    next: AtomicU64,
    stop_at: Option<Instant>,
    total_requests: Option<u64>,
    started: Instant,
    acked: AtomicU64,
    bytes: AtomicU64,
    log: Option<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>,
}

/// Runs the load; returns what it did.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.batch > 0 && args.concurrency > 0,
        "--batch and --concurrency must be positive"
    );
    let log = match &args.acked_log {
        Some(path) => Some(std::sync::Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ))),
        None => None,
    };
    let total_requests = args.spans.map(|n| n.div_ceil(args.batch as u64));
    let duration = match (args.spans, args.duration) {
        (_, Some(d)) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (Some(_), None) => None,
    };
    let started = Instant::now();
    let now_ns = if args.now {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    } else {
        FIXED_START_NS
    };
    let run = Arc::new(Run {
        start_ns: now_ns,
        next: AtomicU64::new(0),
        stop_at: duration.map(|d| started + d),
        total_requests,
        started,
        acked: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        log,
        args,
    });
    let bar = progress_bar(&run);
    let mut workers = Vec::new();
    for _ in 0..run.args.concurrency {
        let sender = connect(&run.args).await?;
        workers.push(tokio::spawn(worker(run.clone(), sender, bar.clone())));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let (l, e) = w.await.context("a loadgen worker panicked")?;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    bar.finish_and_clear();
    if let Some(log) = &run.log {
        log.lock()
            .map_err(|_| anyhow::anyhow!("acked log lock poisoned"))?
            .flush()?;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    let seconds = run.started.elapsed().as_secs_f64();
    let acked = run.acked.load(Ordering::Relaxed);
    let bytes = run.bytes.load(Ordering::Relaxed);
    Ok(Summary {
        requests: latencies.len() as u64 + errors.values().sum::<u64>(),
        acked_spans: acked,
        acked_bytes: bytes,
        seconds,
        spans_per_second: acked as f64 / seconds.max(1e-9),
        mb_per_second: bytes as f64 / 1e6 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    })
}

fn progress_bar(run: &Run) -> indicatif::ProgressBar {
    if run.args.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let (len, unit) = match (run.total_requests, run.stop_at) {
        (Some(n), _) => (n * run.args.batch as u64, "spans"),
        (None, Some(at)) => ((at - run.started).as_secs().max(1), "s"),
        (None, None) => (0, "spans"),
    };
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit}  {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

async fn connect(args: &LoadgenArgs) -> anyhow::Result<Sender> {
    Ok(match args.protocol {
        LoadProtocol::Grpc => {
            let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())
                .context("the --endpoint URL")?
                .connect_lazy();
            Sender::Grpc(TraceServiceClient::new(channel).max_decoding_message_size(64 << 20))
        }
        _ => Sender::Http(Client::builder(TokioExecutor::new()).build_http()),
    })
}

async fn worker(
    run: Arc<Run>,
    mut sender: Sender,
    bar: indicatif::ProgressBar,
) -> (Vec<u32>, BTreeMap<String, u64>) {
    let (mut latencies, mut errors) = (Vec::new(), BTreeMap::<String, u64>::new());
    let batch = run.args.batch as u64;
    loop {
        let k = run.next.fetch_add(1, Ordering::Relaxed);
        if run.total_requests.is_some_and(|n| k >= n)
            || run.stop_at.is_some_and(|t| Instant::now() >= t)
        {
            break;
        }
        if let Some(rate) = run.args.rate {
            let due = run.started + Duration::from_secs_f64((k * batch) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let req = request(&run.args, k, run.start_ns);
        let ids = run.log.as_ref().map(|_| span_ids(&req));
        let sent = Instant::now();
        let (outcome, size) = send(&run.args, &mut sender, req).await;
        match outcome {
            Ok(acked) => {
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                run.acked.fetch_add(acked, Ordering::Relaxed);
                run.bytes.fetch_add(size, Ordering::Relaxed);
                if let (Some(log), Some(ids)) = (&run.log, ids)
                    && acked == batch
                    && let Ok(mut log) = log.lock()
                {
                    let _ = log.write_all(ids.as_bytes());
                }
            }
            Err(code) => *errors.entry(code).or_default() += 1,
        }
        match run.total_requests {
            Some(_) => bar.inc(batch),
            None => bar.set_position(run.started.elapsed().as_secs()),
        }
        bar.set_message(format!("{} acked", run.acked.load(Ordering::Relaxed)));
    }
    (latencies, errors)
}

/// The span ids of a request, hex, one per line.
fn span_ids(req: &ExportTraceServiceRequest) -> String {
    let mut out = String::new();
    for span in req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        for b in &span.span_id {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

/// Sends one request; the spans acknowledged (or the error's code) and the bytes sent.
async fn send(
    args: &LoadgenArgs,
    sender: &mut Sender,
    req: ExportTraceServiceRequest,
) -> (Outcome, u64) {
    let spans: u64 = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum();
    match sender {
        Sender::Grpc(client) => {
            let size = req.encoded_len() as u64;
            let mut request = tonic::Request::new(req);
            add_metadata(args, request.metadata_mut());
            let outcome = match client.export(request).await {
                Ok(answer) => {
                    let rejected = answer
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans.max(0) as u64);
                    Ok(spans.saturating_sub(rejected))
                }
                Err(status) => Err(format!("grpc:{:?}", status.code()).to_uppercase()),
            };
            (outcome, size)
        }
        Sender::Http(client) => {
            let (body, content_type) = match args.protocol {
                LoadProtocol::HttpJson => (
                    serde_json::to_vec(&req).unwrap_or_default(),
                    "application/json",
                ),
                _ => (req.encode_to_vec(), "application/x-protobuf"),
            };
            let size = body.len() as u64;
            let url = format!("{}/v1/traces", args.endpoint.trim_end_matches('/'));
            let mut builder =
                http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
            if let Some(ws) = &args.workspace {
                builder = builder.header("x-workspace", ws);
            }
            if let Some(key) = &args.api_key {
                builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let outcome = match builder.body(Full::new(Bytes::from(body))) {
                Err(e) => Err(format!("request:{e}")),
                Ok(request) => match client.request(request).await {
                    Err(_) => Err("connect".to_string()),
                    Ok(answer) if answer.status().is_success() => {
                        let json = content_type == "application/json";
                        let body = answer.into_body().collect().await.map(|b| b.to_bytes());
                        let rejected = body.ok().map_or(0, |b| rejected_in(&b, json));
                        Ok(spans.saturating_sub(rejected))
                    }
                    Ok(answer) => Err(format!("http:{}", answer.status().as_u16())),
                },
            };
            (outcome, size)
        }
    }
}

/// `partial_success.rejected_spans` of an OTLP/HTTP answer body.
fn rejected_in(body: &[u8], json: bool) -> u64 {
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let r = &v["partialSuccess"]["rejectedSpans"];
        r.as_u64()
            .or_else(|| r.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    } else {
        crate::proto::ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_spans.max(0) as u64)
    }
}

fn add_metadata(args: &LoadgenArgs, meta: &mut tonic::metadata::MetadataMap) {
    if let Some(ws) = args.workspace.as_deref().and_then(|w| w.parse().ok()) {
        meta.insert("x-workspace", ws);
    }
    if let Some(key) = args
        .api_key
        .as_deref()
        .and_then(|k| format!("Bearer {k}").parse().ok())
    {
        meta.insert("authorization", key);
    }
}

impl Summary {
    /// The summary as text, one figure per line.
    pub fn text(&self) -> String {
        let mut out = format!(
            "requests      {}\nacked spans   {}\nspans/s       {:.0}\nMB/s          {:.2}\np50 latency   {:.2} ms\np99 latency   {:.2} ms\n",
            self.requests,
            self.acked_spans,
            self.spans_per_second,
            self.mb_per_second,
            self.p50_ms,
            self.p99_ms
        );
        if self.errors.is_empty() {
            out.push_str("errors        none\n");
        }
        for (code, n) in &self.errors {
            out.push_str(&format!("errors        {code}: {n}\n"));
        }
        out
    }
}
