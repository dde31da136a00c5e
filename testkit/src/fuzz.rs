//! The bodies of the fuzz targets (`fuzz/`), kept here so that plain
//! `cargo test` replays the checked-in corpora and every crash found
//! (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes and asserts
//! what must hold for any input: no panic, and round trips where they apply.

use std::time::Duration;

#[cfg(not(madsim))]
pub mod gateway;
#[cfg(not(madsim))]
pub use gateway::gateway_requests;
#[cfg(not(madsim))]
pub mod grpc;
#[cfg(not(madsim))]
pub use grpc::grpc_requests;
#[cfg(not(madsim))]
pub mod parsers;
#[cfg(not(madsim))]
pub use parsers::{bearer_token, consul_check, http_range, job_record};

use streamgate::bus::{Event, events};
use streamgate::grpc_timeout;
use streamgate::middleware::auth::{Key, Keyring, mint, verify};
use streamgate::middleware::request_id;
use streamgate::middleware::trace::TraceContext;
use streamgate::services::cache::state::{CacheState, Limits};

/// The event envelope and its typed payload: decode, validate, and a
/// decoded event re-encodes to one that decodes equal.
pub fn event_envelope(data: &[u8]) {
    if let Ok(event) = Event::decode(data) {
        let _ = events::validate(&event);
        if let Ok(bytes) = event.encode() {
            assert_eq!(
                Event::decode(&bytes).as_ref(),
                Ok(&event),
                "envelope round trip"
            );
        }
    }
}

/// The middleware's header parsers: `grpc-timeout`, `traceparent`,
/// `x-request-id` and the service token.
pub fn call_headers(data: &[u8]) {
    if let Some(t) = grpc_timeout::parse(data) {
        let back = grpc_timeout::parse(grpc_timeout::encode(t).as_bytes())
            .expect("encoded timeouts parse");
        assert!(
            back <= t && t - back <= Duration::from_secs(3600),
            "timeout round trip"
        );
    }
    if let Some(ctx) = TraceContext::parse(data) {
        assert_eq!(
            TraceContext::parse(ctx.header().as_bytes()),
            Some(ctx),
            "traceparent round trip"
        );
    }
    let _ = request_id::is_valid(data);
    let keys = Keyring::new(Key::new("fuzz", &[3; 32]).expect("valid key"));
    if let Ok(service) = verify(&keys, data, 0) {
        // Only a token we could have minted verifies: re-minting it must
        // give the same bytes back.
        let text = std::str::from_utf8(data).expect("verified tokens are UTF-8");
        let expires = text
            .split('.')
            .nth(3)
            .and_then(|e| e.parse().ok())
            .expect("verified tokens carry an expiry");
        assert_eq!(
            mint(&keys.current, &service, expires),
            text,
            "only genuine tokens verify"
        );
    }
}

/// Consul's `/v1/health/service` answer.
#[cfg(not(madsim))]
pub fn consul_health(data: &[u8]) {
    if let Ok(instances) = streamgate::registry::consul::parse_health(data) {
        for info in instances {
            let _ = streamgate::registry::validate(&info);
        }
    }
}

/// A NATS KV registry entry: the key up to the first NUL, the value after it.
#[cfg(not(madsim))]
pub fn nats_kv_record(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(key) = std::str::from_utf8(key)
        && let Some(record) = streamgate::registry::nats_kv::view::Record::parse(key, value)
    {
        assert!(
            streamgate::registry::validate(&record.info).is_ok(),
            "parsed records are valid"
        );
    }
}

/// A sequence of cache operations against a model: every byte pair is an
/// operation (what, key, value length, time step).
pub fn cache_ops(data: &[u8]) {
    let start = streamgate::rt::now();
    let mut cache = CacheState::new(Limits {
        capacity_bytes: 256,
        default_ttl: Duration::from_secs(5),
    });
    let mut model: std::collections::HashMap<String, (Vec<u8>, streamgate::rt::Instant)> =
        Default::default();
    let mut now = start;
    for op in data.chunks_exact(3) {
        let (what, key, arg) = (op[0] % 4, format!("k{}", op[1] % 8), op[2]);
        now += Duration::from_millis(u64::from(arg) * 40);
        model.retain(|_, (_, expires)| *expires > now);
        match what {
            0 => {
                let value = vec![arg; usize::from(arg % 64)];
                cache
                    .set(&key, value.clone().into(), Duration::from_secs(2), now)
                    .expect("valid set");
                model.insert(key.clone(), (value, now + Duration::from_secs(2)));
            }
            1 => {
                let got = cache
                    .get(&key, now)
                    .expect("valid get")
                    .map(|(v, _)| v.to_vec());
                // The cache may have evicted (it is bounded); it never invents.
                if let Some(got) = got {
                    assert_eq!(
                        Some(&got),
                        model.get(&key).map(|(v, _)| v),
                        "cache returned what was set"
                    );
                }
            }
            2 => {
                cache.delete(&key, now).expect("valid delete");
                model.remove(&key);
            }
            _ => {
                let _ = cache.get(&String::from_utf8_lossy(&op[1..]), now);
            }
        }
        let (_, used, capacity, _) = cache.stats();
        assert!(used <= capacity, "within capacity");
    }
}
