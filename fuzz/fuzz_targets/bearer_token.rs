//! Fuzz target: see `streamgate_testkit::fuzz::bearer_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::bearer_token(data));
