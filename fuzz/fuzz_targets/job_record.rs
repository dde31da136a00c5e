//! Fuzz target: see `streamgate_testkit::fuzz::job_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamgate_testkit::fuzz::job_record(data));
