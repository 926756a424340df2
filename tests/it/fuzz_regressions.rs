//! Every input under `tests/fixtures/fuzz/<target>/` (seeds and crashes the fuzz targets in
//! `fuzz/` found) goes through the same check as its target: no panic.

use std::path::Path;

use spanlake::decode::{decode_json, decode_protobuf, vendor::decode_nemo_json};
use spanlake::fuzzing::{
    check_footprint, check_protobuf, check_request, check_span_logs, check_wal_segment,
};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn fuzz_inputs_pass_their_checks() {
    let mut checked = 0;
    for (name, bytes) in inputs("otlp_protobuf") {
        eprintln!("otlp_protobuf {name}");
        if let Ok(d) = decode_protobuf(&bytes) {
            check_request(d);
        }
        check_protobuf(&bytes);
        checked += 1;
    }
    for (name, bytes) in inputs("otlp_json") {
        eprintln!("otlp_json {name}");
        if let Ok(d) = decode_json(&bytes) {
            check_request(d);
        }
        checked += 1;
    }
    for (name, bytes) in inputs("nemo_json") {
        eprintln!("nemo_json {name}");
        if let Ok(d) = decode_nemo_json(&bytes) {
            check_request(d);
        }
        checked += 1;
    }
    for (name, bytes) in inputs("span_logs") {
        eprintln!("span_logs {name}");
        check_span_logs(&bytes);
        checked += 1;
    }
    for (name, bytes) in inputs("wal_replay") {
        eprintln!("wal_replay {name}");
        check_wal_segment(&bytes);
        checked += 1;
    }
    // Admission's estimate sees every body before its route decodes it.
    for target in [
        "otlp_protobuf",
        "otlp_json",
        "nemo_json",
        "span_logs",
        "wal_replay",
        "footprint",
    ] {
        for (name, bytes) in inputs(target) {
            eprintln!("footprint {name}");
            check_footprint(&bytes);
            checked += 1;
        }
    }
    assert!(checked >= 4, "the seed inputs are there");
}
