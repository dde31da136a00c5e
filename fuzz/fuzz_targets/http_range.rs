//! Fuzz target: see `streamgate_testkit::fuzz::http_range`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::http_range(data));
