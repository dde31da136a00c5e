//! Fuzz target: see `streamgate_testkit::fuzz::cache_ops`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::cache_ops(data));
