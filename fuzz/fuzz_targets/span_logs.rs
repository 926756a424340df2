//! Respan / Keywords AI span logs → chunk → WAL form → rows.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spanlake::fuzzing::check_span_logs(data);
});
