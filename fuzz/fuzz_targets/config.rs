//! See poolplane::fuzzing::config (src/fuzzing.rs) for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| poolplane::fuzzing::config(data));
