//! Arbitrary bytes as a WAL segment (after the magic): replay must refuse or cut, never
//! panic, and every record it yields must expand into rows.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spanlake::fuzzing::check_wal_segment(data);
});
