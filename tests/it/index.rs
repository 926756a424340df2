//! The trace index against a brute-force recomputation over the stored spans: random traces
//! (roots arriving last, missing roots, spans hours apart, several parentless spans, a
//! client's retry) split across random flushes; every listing (filters, modes, sorts,
//! pages), count and lookup equals what the trace rules give over all spans — with spans
//! still buffered, after the flushes, after a restart and after compaction.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prost::Message;
use serde_json::{Value, json};
use spanlake::proto::{Span, Status, any_value};

use crate::common::otlp::{kv, request, s};
use crate::common::{TestServer, index_files, metric, sql_rows, table_files, wait_until};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// 2024-03-01T00:00:00Z: hours long closed, so compaction takes them.
const BASE_NS: u64 = 1_709_251_200_000_000_000;
const HOUR_NS: u64 = 3_600_000_000_000;

fn random_traces(rng: &mut Rng, traces: usize) -> Vec<Span> {
    let mut spans = Vec::new();
    for t in 0..traces {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&rng.next().to_be_bytes());
        trace_id[8..].copy_from_slice(&(t as u64).to_be_bytes());
        let start = BASE_NS + rng.below(6) * HOUR_NS + rng.below(HOUR_NS);
        let n = 1 + rng.below(8) as usize;
        let has_root = rng.chance(80);
        let ids: Vec<Vec<u8>> = (0..n).map(|_| rng.next().to_be_bytes().to_vec()).collect();
        for i in 0..n {
            // Now and then a span hours after (or a little before) the trace's start.
            let offset = if rng.chance(10) {
                rng.below(3 * HOUR_NS)
            } else {
                rng.below(1_000_000_000)
            };
            let begin = if rng.chance(5) {
                start.saturating_sub(offset)
            } else {
                start + offset
            };
            let parentless = (i == 0 && has_root) || rng.chance(3);
            let parent = if parentless {
                Vec::new()
            } else if i > 0 && has_root {
                ids[rng.below(i as u64) as usize].clone()
            } else {
                rng.next().to_be_bytes().to_vec()
            };
            let mut status = Status::default();
            match rng.below(10) {
                0 | 1 => status.code = 2,
                2 => status.message = "request cancelled by the user".into(),
                _ => {}
            }
            let mut attributes = vec![kv("session.id", s(&format!("session-{}", rng.below(4))))];
            if rng.chance(30) {
                attributes.push(kv("nemo.experiment.id", s("exp-1")));
                attributes.push(kv("nemo.test_case.id", s(&format!("tc-{}", rng.below(3)))));
            }
            if rng.chance(40) {
                let tokens = rng.below(1000) as i64;
                attributes.push(kv(
                    "gen_ai.usage.input_tokens",
                    any_value::Value::IntValue(tokens),
                ));
            }
            if rng.chance(30) {
                let cost = rng.below(10_000) as f64 / 1e4;
                attributes.push(kv("gen_ai.usage.cost", any_value::Value::DoubleValue(cost)));
            }
            attributes.push(kv(
                "input.value",
                s(&format!("input of span {i} of trace {t}")),
            ));
            let end = if rng.chance(8) {
                0
            } else {
                begin + 1 + rng.below(2_000_000_000)
            };
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: ids[i].clone(),
                parent_span_id: parent,
                name: format!("op-{}", rng.below(5)),
                kind: 2,
                start_time_unix_nano: begin,
                end_time_unix_nano: end,
                attributes,
                status: Some(status),
                ..Default::default()
            });
        }
    }
    spans
}

async fn post(server: &TestServer, spans: Vec<Span>) {
    let answer = reqwest::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(spans).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
}

async fn get(server: &TestServer, path_and_query: &str) -> Value {
    let answer = reqwest::get(server.url(path_and_query)).await.unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert!(status.is_success(), "{path_and_query}: {status} {body}");
    body
}

/// A stored span, as `POST …/sql` gives it back.
#[derive(Debug, Clone)]
struct Stored {
    trace_id: String,
    span_id: String,
    parentless: bool,
    name: String,
    start: i64,
    end: Option<i64>,
    status: String,
    session_id: Option<String>,
    experiment_id: Option<String>,
    test_case_id: Option<String>,
    input: Option<String>,
    input_tokens: Option<i64>,
    cost_usd: Option<f64>,
}

async fn stored_spans(server: &TestServer) -> Vec<Stored> {
    let rows = sql_rows(
        server.http,
        "default",
        "SELECT trace_id, span_id, parent_span_id IS NULL AS parentless, \
            name, CAST(start_time AS BIGINT) AS start_ns, CAST(end_time AS BIGINT) AS end_ns, \
            status, session_id, experiment_id, test_case_id, input, input_tokens, cost_usd \
            FROM spans",
    )
    .await;
    let text = |r: &Value, k: &str| r[k].as_str().map(str::to_string);
    rows.iter()
        .map(|r| Stored {
            trace_id: text(r, "trace_id").unwrap(),
            span_id: text(r, "span_id").unwrap(),
            parentless: r["parentless"].as_bool().unwrap(),
            name: text(r, "name").unwrap(),
            start: r["start_ns"].as_i64().unwrap(),
            end: r["end_ns"].as_i64(),
            status: text(r, "status").unwrap(),
            session_id: text(r, "session_id"),
            experiment_id: text(r, "experiment_id"),
            test_case_id: text(r, "test_case_id"),
            input: text(r, "input"),
            input_tokens: r["input_tokens"].as_i64(),
            cost_usd: r["cost_usd"].as_f64(),
        })
        .collect()
}

/// A trace by the rules, recomputed from all its spans.
#[derive(Debug, Clone)]
struct Expected {
    root: Stored,
    ended: Option<i64>,
    status: &'static str,
    spans: usize,
    errors: usize,
    input_tokens: Option<i64>,
    cost_usd: Option<f64>,
}

fn brute_force(spans: &[Stored]) -> BTreeMap<String, Expected> {
    let mut by_trace: BTreeMap<String, Vec<&Stored>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s);
    }
    by_trace
        .into_iter()
        .map(|(id, spans)| {
            let root = spans
                .iter()
                .min_by(|a, b| {
                    (!a.parentless, a.start, &a.span_id).cmp(&(!b.parentless, b.start, &b.span_id))
                })
                .unwrap();
            let count = |st: &str| spans.iter().filter(|s| s.status == st).count();
            let status = if count("error") > 0 {
                "error"
            } else if count("cancelled") > 0 {
                "cancelled"
            } else if count("unknown") == spans.len() {
                "unknown"
            } else {
                "success"
            };
            let tokens: Vec<i64> = spans.iter().filter_map(|s| s.input_tokens).collect();
            let costs: Vec<f64> = spans.iter().filter_map(|s| s.cost_usd).collect();
            let expected = Expected {
                root: (*root).clone(),
                ended: spans.iter().filter_map(|s| s.end).max(),
                status,
                spans: spans.len(),
                errors: count("error"),
                input_tokens: (!tokens.is_empty()).then(|| tokens.iter().sum()),
                cost_usd: (!costs.is_empty()).then(|| costs.iter().sum()),
            };
            (id, expected)
        })
        .collect()
}

fn ns(v: &Value) -> Option<i64> {
    v.as_str().and_then(spanlake::time::parse_datetime)
}

/// One listing request and which traces (in order) and total it must give.
struct Case {
    query: String,
    keep: Box<dyn Fn(&Expected) -> bool>,
    descending: bool,
    page: usize,
    page_size: usize,
    mode: &'static str,
}

fn cases(expected: &BTreeMap<String, Expected>) -> Vec<Case> {
    let any = expected.values().next().expect("some traces");
    let (session, middle) = (
        any.root.session_id.clone().unwrap_or_default(),
        any.root.start,
    );
    let ids: Vec<String> = expected.keys().step_by(3).take(4).cloned().collect();
    let mut out = Vec::new();
    for mode in ["summary", "preview", "detailed"] {
        for (descending, page) in [(true, 1), (true, 2), (false, 1), (false, 3)] {
            out.push(Case {
                query: String::new(),
                keep: Box::new(|_| true),
                descending,
                page,
                page_size: 7,
                mode,
            });
        }
    }
    for status in ["error", "success", "cancelled", "unknown"] {
        out.push(Case {
            query: format!("filter[status]={status}"),
            keep: Box::new(move |e| e.root.status == status),
            descending: true,
            page: 1,
            page_size: 5,
            mode: "detailed",
        });
    }
    let s2 = session.clone();
    out.push(Case {
        query: format!("filter[session_id]={session}"),
        keep: Box::new(move |e| e.root.session_id.as_deref() == Some(s2.as_str())),
        descending: true,
        page: 1,
        page_size: 5,
        mode: "detailed",
    });
    out.push(Case {
        query: "filter[experiment_id]=exp-1&filter[test_case_id]=tc-1".into(),
        keep: Box::new(|e| {
            e.root.experiment_id.as_deref() == Some("exp-1")
                && e.root.test_case_id.as_deref() == Some("tc-1")
        }),
        descending: false,
        page: 1,
        page_size: 5,
        mode: "detailed",
    });
    let from = spanlake::api::json::timestamp_text(middle);
    out.push(Case {
        query: format!("filter[started_at][$gte]={from}"),
        keep: Box::new(move |e| e.root.start >= middle),
        descending: false,
        page: 1,
        page_size: 6,
        mode: "detailed",
    });
    out.push(Case {
        query: format!("filter[started_at][$lte]={from}&filter[status]=error"),
        keep: Box::new(move |e| e.root.start <= middle && e.root.status == "error"),
        descending: true,
        page: 1,
        page_size: 6,
        mode: "summary",
    });
    let wanted = ids.clone();
    out.push(Case {
        query: format!("filter[id][$in]={}", ids.join(",").to_uppercase()),
        keep: Box::new(move |e| wanted.contains(&e.root.trace_id)),
        descending: true,
        page: 1,
        page_size: 10,
        mode: "preview",
    });
    out
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (a, b) => a.is_none() && b.is_none(),
    }
}

async fn check(server: &TestServer, when: &str) {
    let spans = stored_spans(server).await;
    let expected = brute_force(&spans);
    for case in cases(&expected) {
        let sort = if case.descending {
            "-started_at"
        } else {
            "started_at"
        };
        let path = format!(
            "/apis/intake/v2/workspaces/default/traces?page={}&page_size={}&sort={sort}&mode={}&{}",
            case.page, case.page_size, case.mode, case.query
        );
        let answer = get(server, &path).await;
        let mut want: Vec<&Expected> = expected.values().filter(|e| (case.keep)(e)).collect();
        want.sort_by(|a, b| {
            (a.root.start, &a.root.trace_id).cmp(&(b.root.start, &b.root.trace_id))
        });
        if case.descending {
            want.reverse();
        }
        let total = want.len();
        let page: Vec<&Expected> = want
            .into_iter()
            .skip((case.page - 1) * case.page_size)
            .take(case.page_size)
            .collect();
        let what = format!("{when}: {path}");
        assert_eq!(
            answer["pagination"]["total_results"],
            json!(total),
            "{what}"
        );
        let data = answer["data"].as_array().unwrap();
        let got: Vec<&str> = data.iter().map(|t| t["id"].as_str().unwrap()).collect();
        let ids: Vec<&str> = page.iter().map(|e| e.root.trace_id.as_str()).collect();
        assert_eq!(got, ids, "{what}");
        for (t, e) in data.iter().zip(&page) {
            let what = format!("{what}: trace {}", e.root.trace_id);
            assert_eq!(t["root_span_id"], json!(e.root.span_id), "{what}");
            assert_eq!(t["name"], json!(e.root.name), "{what}");
            assert_eq!(t["session_id"], json!(e.root.session_id), "{what}");
            assert_eq!(ns(&t["started_at"]), Some(e.root.start), "{what}");
            if case.mode == "summary" {
                assert_eq!(ns(&t["ended_at"]), e.root.end, "{what}");
                assert_eq!(t["status"], json!(e.root.status), "{what}");
                continue;
            }
            assert_eq!(ns(&t["ended_at"]), e.ended, "{what}");
            assert_eq!(t["status"], json!(e.status), "{what}");
            assert_eq!(t["span_count"], json!(e.spans), "{what}");
            assert_eq!(t["error_count"], json!(e.errors), "{what}");
            assert_eq!(t["input_tokens"], json!(e.input_tokens), "{what}");
            assert!(close(t["cost_usd"].as_f64(), e.cost_usd), "{what}: {t}");
            if case.mode == "preview" {
                assert_eq!(t["input"], json!(e.root.input), "{what}");
            }
        }
    }
    // The `traces` table of SQL: the same traces.
    let rows = sql_rows(
        server.http,
        "default",
        "SELECT id, root_span_id, CAST(started_at AS BIGINT) AS started, \
            CAST(ended_at AS BIGINT) AS ended, status, span_count, error_count, input_tokens, \
            cost_usd, input FROM traces ORDER BY id",
    )
    .await;
    assert_eq!(rows.len(), expected.len(), "{when}: SQL traces");
    for (r, (id, e)) in rows.iter().zip(&expected) {
        let what = format!("{when}: SQL traces, {id}");
        assert_eq!(r["id"], json!(id), "{what}");
        assert_eq!(r["root_span_id"], json!(e.root.span_id), "{what}");
        assert_eq!(r["started"], json!(e.root.start), "{what}");
        assert_eq!(r["ended"].as_i64(), e.ended, "{what}");
        assert_eq!(r["status"], json!(e.status), "{what}");
        assert_eq!(r["span_count"], json!(e.spans), "{what}");
        assert_eq!(r["error_count"], json!(e.errors), "{what}");
        assert_eq!(r["input_tokens"], json!(e.input_tokens), "{what}");
        assert!(close(r["cost_usd"].as_f64(), e.cost_usd), "{what}: {r}");
        assert_eq!(r["input"], json!(e.root.input), "{what}");
    }
    // Lookups: the summary and every span once (a retried span shown once).
    let mut distinct: HashMap<&str, std::collections::HashSet<(&str, i64)>> = HashMap::new();
    for s in &spans {
        distinct
            .entry(s.trace_id.as_str())
            .or_default()
            .insert((s.span_id.as_str(), s.start));
    }
    for (id, e) in expected.iter().step_by(5) {
        let trace = get(
            server,
            &format!("/apis/intake/v2/workspaces/default/traces/{id}"),
        )
        .await;
        let what = format!("{when}: lookup {id}");
        assert_eq!(trace["root_span_id"], json!(e.root.span_id), "{what}");
        assert_eq!(trace["span_count"], json!(e.spans), "{what}");
        assert_eq!(trace["status"], json!(e.status), "{what}");
        let spans = trace["spans"].as_array().unwrap();
        assert_eq!(spans.len(), distinct[id.as_str()].len(), "{what}");
        let page = get(
            server,
            &format!(
                "/apis/intake/v2/workspaces/default/spans?filter[trace_id]={id}&page_size=100"
            ),
        )
        .await;
        assert_eq!(
            page["pagination"]["total_results"],
            json!(e.spans),
            "{what}: span page"
        );
    }
    let missing = reqwest::get(
        server.url("/apis/intake/v2/workspaces/default/traces/0123456789abcdef0123456789abcdef"),
    )
    .await
    .unwrap();
    assert_eq!(missing.status(), 404, "{when}");
}

async fn flushed(server: &TestServer) -> u64 {
    metric(server.http, "spanlake_flushed_rows_total")
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_index_answers_as_a_recomputation_over_all_spans() {
    for seed in [7u64, 1_234_567, 99] {
        let mut rng = Rng(seed);
        let mut spans = random_traces(&mut rng, 45);
        // Random order: a root often arrives after its children, in another flush.
        for i in (1..spans.len()).rev() {
            spans.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut server = TestServer::start_with(|c| {
            c.flush_interval = Duration::from_millis(20);
            c.maintenance_interval = Duration::from_secs(3600);
        })
        .await;
        let mut sent = 0;
        let mut rest = spans.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(40) as usize).min(rest.len());
            let (group, tail) = rest.split_at(n);
            rest = tail;
            post(&server, group.to_vec()).await;
            sent += group.len() as u64;
            if rng.chance(20) {
                // A client's retry of the same request, in a later flush.
                wait_until_flushed(&server, sent).await;
                post(&server, group.to_vec()).await;
                sent += group.len() as u64;
            }
            if rng.chance(70) {
                wait_until_flushed(&server, sent).await;
            } else {
                // Spans still buffered answer too.
                check(&server, &format!("seed {seed}, buffered")).await;
            }
        }
        wait_until_flushed(&server, sent).await;
        check(&server, &format!("seed {seed}, flushed")).await;
        server.restart().await;
        // Each data file has its index file (same path) in the index table.
        let relative = |files: Vec<std::path::PathBuf>, root: std::path::PathBuf| {
            let root = root.canonicalize().unwrap();
            files
                .iter()
                .map(|f| f.strip_prefix(&root).unwrap().to_path_buf())
                .collect::<Vec<_>>()
        };
        let spans_root = server.dir.path().join("spans");
        assert_eq!(
            relative(
                index_files(server.dir.path()),
                spans_root.join("_trace_index")
            ),
            relative(table_files(server.dir.path()), spans_root),
            "seed {seed}: the index table"
        );
        check(&server, &format!("seed {seed}, after a restart")).await;
        let files = table_files(server.dir.path()).len();
        server
            .restart_with(|c| c.maintenance_interval = Duration::from_millis(100))
            .await;
        let dir = server.dir.path().to_path_buf();
        let hours: std::collections::HashSet<i64> = stored_spans(&server)
            .await
            .iter()
            .map(|s| s.start.div_euclid(HOUR_NS as i64))
            .collect();
        assert!(
            files > hours.len(),
            "some hour has several files to compact"
        );
        wait_until("compaction", || table_files(&dir).len() == hours.len()).await;
        check(&server, &format!("seed {seed}, after compaction")).await;
        server.stop().await;
    }
}

async fn wait_until_flushed(server: &TestServer, rows: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while flushed(server).await < rows {
        assert!(std::time::Instant::now() < deadline, "no flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
