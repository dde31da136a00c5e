//! Fuzz target: see `streamgate_testkit::fuzz::nats_kv_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::nats_kv_record(data));
