//! Fuzz target: see `streamgate::testkit::fuzz::event_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate::testkit::fuzz::event_envelope(data));
