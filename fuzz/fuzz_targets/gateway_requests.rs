//! Fuzz target: see `streamgate_testkit::fuzz::gateway_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::gateway_requests(data));
