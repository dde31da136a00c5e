//! Fuzz target: see `streamgate_testkit::fuzz::call_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::call_headers(data));
