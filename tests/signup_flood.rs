//! A flood of sign-ups against the monolith binary (issue #22, item 4):
//! one address past its rate gets 429 while another still signs up; and a
//! flood from hundreds of addresses at once (each within its own rate)
//! leaves the process's peak memory bounded, because the auth service runs
//! only a few 19 MiB password hashes at a time and refuses past a bounded
//! queue. Without that bound each sign-up would hash at once on the
//! blocking pool: 256 in flight are about 5 GiB.
#![cfg(not(madsim))]
// Reports the flood's outcome and memory (run with --nocapture).
#![allow(clippy::print_stdout)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::json;
use streamgate::rt;
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

/// How much the peak resident memory may grow under the flood. Four
/// hashes at a time are 76 MiB; the rest is requests and buffers.
const MAX_GROWTH_KIB: u64 = 320 * 1024;

/// `POST /v1/auth/signup` for a fresh email as the client `client` (the
/// monolith trusts 127.0.0.1 as a proxy, so `X-Forwarded-For` names it);
/// the status and the body.
async fn sign_up(api: &monolith::Api, client: &str) -> (u16, serde_json::Value) {
    let body = json!({
        "email": format!("{}@example.com", rt::random_hex128()),
        "password": "correct horse battery",
    })
    .to_string();
    let req = http::Request::post(format!("http://{}/v1/auth/signup", api.gateway))
        .header("content-type", "application/json")
        .header("x-forwarded-for", client)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let res = rt::timeout(Duration::from_secs(120), api.http.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_flood_is_throttled_per_address_and_memory_stays_bounded() {
    let dir = Scratch::new("signup-flood");
    let m = monolith::start(
        dir.path(),
        &dir.path().join("data"),
        &monolith::secret(dir.path()),
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--http-signup-rate",
            "5/h",
            // Every connection's TCP peer is this test (the "proxy"): its
            // connections are counted as one client's.
            "--http-max-connections-per-client",
            "1024",
        ],
    )
    .await;
    let pid = m.process.id();

    // One address: five, then 429 with Retry-After's wait in the body.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(sign_up(&m.api, "198.51.100.7").await);
    }
    let created = statuses.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 5, "{statuses:?}");
    for (status, body) in &statuses[5..] {
        assert_eq!(*status, 429, "{body}");
        let error = body["error"].as_str().expect("an error");
        assert!(
            error.starts_with("too many sign-ups from this address"),
            "{error}"
        );
    }
    // Another address is not held.
    assert_eq!(sign_up(&m.api, "198.51.100.8").await.0, 201);

    // Hundreds of addresses at once, each within its rate.
    let before = monolith::status_kib(pid, "VmHWM:");
    let api = std::sync::Arc::new(monolith::Api::new(m.api.gateway));
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let api = api.clone();
            rt::spawn(
                async move { sign_up(&api, &format!("203.0.{}.{}", i / 200, i % 200 + 1)).await },
            )
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for call in flood {
        let (status, body) = call.await.expect("joined");
        assert!(matches!(status, 201 | 429 | 503), "{status}: {body}");
        assert!(body["error"].is_string() || status == 201, "{body}");
        *by_status.entry(status).or_default() += 1;
    }
    let after = monolith::status_kib(pid, "VmHWM:");
    println!("flood of 300 sign-ups: {by_status:?}; peak RSS {before} KiB -> {after} KiB");
    assert!(
        by_status.get(&201).copied().unwrap_or(0) >= 4,
        "some signed up: {by_status:?}"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KIB,
        "peak RSS grew {} KiB (limit {MAX_GROWTH_KIB}): {by_status:?}",
        after - before
    );
    // The process is still well and serving.
    assert_eq!(sign_up(&m.api, "198.51.100.9").await.0, 201);
}
