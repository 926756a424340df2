//! OTLP protobuf bytes → decode → normalize → WAL form → back → spans rows; and the walk
//! straight into Arrow agrees with prost on every input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = spanlake::decode::decode_protobuf(data) {
        spanlake::fuzzing::check_request(decoded);
    }
    spanlake::fuzzing::check_protobuf(data);
});
