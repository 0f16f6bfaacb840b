//! See poolplane::fuzzing::value_decode (src/fuzzing.rs) for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| poolplane::fuzzing::value_decode(data));
