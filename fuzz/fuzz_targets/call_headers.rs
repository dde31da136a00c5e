//! Fuzz target: see `streamgate::testkit::fuzz::call_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate::testkit::fuzz::call_headers(data));
