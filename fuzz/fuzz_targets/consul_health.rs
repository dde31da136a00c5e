//! Fuzz target: see `streamgate_testkit::fuzz::consul_health`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::consul_health(data));
