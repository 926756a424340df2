//! NeMo intake JSON (OTLP JSON or the simplified form) → normalize → WAL form → rows.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = spanlake::decode::vendor::decode_nemo_json(data) {
        spanlake::fuzzing::check_request(decoded);
    }
});
