//! Fuzz target: see `streamgate_testkit::fuzz::event_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::event_envelope(data));
