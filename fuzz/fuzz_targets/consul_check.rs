//! Fuzz target: see `streamgate_testkit::fuzz::consul_check`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::consul_check(data));
