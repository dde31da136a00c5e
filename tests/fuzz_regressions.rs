//! Replays every fuzz input kept in the repository (the seed corpora in
//! `fuzz/corpus/<target>/`, and each crash found, saved in
//! `fuzz/regressions/<target>/`) through the target's body under plain
//! `cargo test` on the stable toolchain.
#![cfg(not(madsim))]

use std::path::Path;

use streamgate_testkit::fuzz;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            body(&std::fs::read(&path).expect("corpus file"));
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "{target}: no corpus found under {}",
        root.display()
    );
}

#[test]
fn event_envelope() {
    replay("event_envelope", fuzz::event_envelope);
}

#[test]
fn call_headers() {
    replay("call_headers", fuzz::call_headers);
}

#[test]
fn consul_health() {
    replay("consul_health", fuzz::consul_health);
}

#[test]
fn nats_kv_record() {
    replay("nats_kv_record", fuzz::nats_kv_record);
}

#[test]
fn cache_ops() {
    replay("cache_ops", fuzz::cache_ops);
}

#[test]
fn grpc_requests() {
    replay("grpc_requests", fuzz::grpc_requests);
}

#[test]
fn gateway_requests() {
    replay("gateway_requests", fuzz::gateway_requests);
}

#[test]
fn http_range() {
    replay("http_range", fuzz::http_range);
}

#[test]
fn bearer_token() {
    replay("bearer_token", fuzz::bearer_token);
}

#[test]
fn consul_check() {
    replay("consul_check", fuzz::consul_check);
}

#[test]
fn job_record() {
    replay("job_record", fuzz::job_record);
}
