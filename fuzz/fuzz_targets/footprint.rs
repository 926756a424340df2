//! Admission's footprint estimate over any body, in every shape.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spanlake::fuzzing::check_footprint(data);
});
