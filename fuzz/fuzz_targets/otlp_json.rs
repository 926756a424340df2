//! OTLP JSON bytes (the lenient decoder) → normalize → WAL form → back → spans rows.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = spanlake::decode::decode_json(data) {
        spanlake::fuzzing::check_request(decoded);
    }
});
