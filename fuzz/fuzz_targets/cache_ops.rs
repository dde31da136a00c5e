//! Fuzz target: see `streamgate::testkit::fuzz::cache_ops`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate::testkit::fuzz::cache_ops(data));
