//! `spanlake loadgen` against a real server over each protocol: every span it counts as
//! acknowledged is stored once, and a seed gives the same bytes every run.

use prost::Message;
use spanlake::fake::Shape;
use spanlake::loadgen::{FIXED_START_NS, LoadProtocol, LoadgenArgs, decode_cost, request, run};

use crate::common::{TestServer, span_counts};

fn args(endpoint: String, protocol: LoadProtocol, seed: u64) -> LoadgenArgs {
    LoadgenArgs {
        endpoint,
        protocol,
        workspace: Some("load".into()),
        spans: Some(1000),
        duration: None,
        batch: 100,
        concurrency: 3,
        rate: None,
        shape: Shape::LlmAgent,
        seed,
        api_key: None,
        acked_log: None,
        now: false,
        json: false,
        quiet: true,
        decode_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_delivers_what_it_counts() {
    let server = TestServer::start().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let runs = [
        (server.grpc_url(), LoadProtocol::Grpc),
        (server.url(""), LoadProtocol::HttpProtobuf),
        (server.url(""), LoadProtocol::HttpJson),
    ];
    for (seed, (endpoint, protocol)) in runs.into_iter().enumerate() {
        let mut a = args(endpoint, protocol, seed as u64 + 1);
        a.acked_log = Some(log.path().to_path_buf());
        let summary = run(a.clone()).await.unwrap();
        assert_eq!(summary.acked_spans, 1000, "{protocol:?}: {summary:?}");
        // `--decode-only` decodes exactly the requests the run sent.
        let cost = decode_cost(&a).unwrap();
        assert_eq!((cost.requests, cost.spans), (10, 1000), "{cost:?}");
        if protocol != LoadProtocol::HttpJson {
            assert_eq!(cost.bytes, summary.acked_bytes, "{protocol:?}");
        }
        assert_eq!(summary.requests, 10);
        assert!(summary.errors.is_empty(), "{summary:?}");
        assert!(summary.p99_ms >= summary.p50_ms);
    }
    assert_eq!(span_counts(server.http, "load").await, (3000, 3000));
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(logged.lines().count(), 3000);
    assert!(logged.lines().all(|l| l.len() == 16));
}

#[test]
fn a_seed_gives_the_same_bytes_and_each_request_its_own_ids() {
    let a = args(String::new(), LoadProtocol::Grpc, 7);
    let one = request(&a, 3, FIXED_START_NS).encode_to_vec();
    assert_eq!(one, request(&a, 3, FIXED_START_NS).encode_to_vec());
    assert_ne!(one, request(&a, 4, FIXED_START_NS).encode_to_vec());
    let ids = |k| {
        request(&a, k, FIXED_START_NS).resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.span_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(ids(3).is_disjoint(&ids(4)));
}
