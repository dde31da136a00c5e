//! Fuzz bodies for the parsers that take outside bytes at the edges added
//! since the first campaign: the HTTP `Range` header, the `Authorization:
//! Bearer` header and the access token in it, the health-check record the
//! Consul backend keeps in a service's Meta, and the worker's job record as
//! stored in the JetStream KV bucket. Each asserts what must hold for any
//! input (no panic, and the property named at each body).

use http::{HeaderMap, HeaderValue, header};

use streamgate::registry::consul::{decode_check, encode_check};
use streamgate::services::auth::Secret;
use streamgate::services::auth::token::{MAX_TOKEN_BYTES, Tokens};
use streamgate::services::gateway::bearer;
use streamgate::services::gateway::range::{self, MAX_HEADER_BYTES, MAX_RANGES, Parsed, Spec};
use streamgate::services::worker::queue::{Job, JobState};
use streamgate::services::worker::store::jetstream::{decode_record, encode_record};

/// A `Range` header against a file size: the first 8 bytes (big endian,
/// zero-padded) are the size, the rest the header. A parsed range set has
/// 1..=[`MAX_RANGES`] ranges, each resolves to bytes inside the file, and
/// formatting it back parses to the same ranges; "too large" only for a
/// header over the limits.
pub fn http_range(data: &[u8]) {
    let (size, header) = data.split_at(data.len().min(8));
    let mut be = [0u8; 8];
    be[..size.len()].copy_from_slice(size);
    // Sizes near u64::MAX and small ones alike: the top byte picks which.
    let size = u64::from_be_bytes(be);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match range::parse(header) {
        Parsed::Ignore => {}
        Parsed::TooLarge => assert!(
            header.len() > MAX_HEADER_BYTES || header.matches('-').count() > MAX_RANGES,
            "{header:?}: refused as too large"
        ),
        Parsed::Ranges(ranges) => {
            assert!(
                (1..=MAX_RANGES).contains(&ranges.len()),
                "{header:?}: {} ranges",
                ranges.len()
            );
            for r in &ranges {
                if let Some((first, last)) = r.resolve(size) {
                    assert!(
                        first <= last && last < size,
                        "{header:?}: {r:?} resolves to {first}..={last} in {size} bytes"
                    );
                    if let Some(start) = r.start() {
                        assert_eq!(start, first, "{header:?}: {r:?} starts where it says");
                    }
                }
            }
            let formatted: Vec<String> = ranges
                .iter()
                .map(|r| match *r {
                    Spec::FromTo(a, b) => format!("{a}-{b}"),
                    Spec::From(a) => format!("{a}-"),
                    Spec::Suffix(n) => format!("-{n}"),
                })
                .collect();
            let again = format!("bytes={}", formatted.join(","));
            assert_eq!(
                range::parse(&again),
                Parsed::Ranges(ranges),
                "{header:?}: round trip through {again:?}"
            );
        }
    }
}

/// The secret of the fuzz targets' access tokens (the seed corpus holds
/// tokens it signed).
pub const TOKEN_SECRET: [u8; 32] = [7; 32];

fn tokens() -> &'static Tokens {
    static TOKENS: std::sync::OnceLock<Tokens> = std::sync::OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(&Secret::new(TOKEN_SECRET.to_vec())))
}

/// An `Authorization` header value, as the gateway reads it, and the access
/// token in it, as auth decodes it. A token the header yields is non-empty,
/// within [`MAX_TOKEN_BYTES`], printable ASCII and part of the header; a
/// token that decodes is exactly what its claims sign to (no second
/// spelling of a token verifies), and its claims are shaped as issued.
pub fn bearer_token(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    let Ok(token) = bearer_token_of(&headers) else {
        return;
    };
    assert!(
        !token.is_empty()
            && token.len() <= MAX_TOKEN_BYTES
            && token.bytes().all(|b| b.is_ascii_graphic()),
        "{token:?}: a malformed token got through"
    );
    assert!(
        data.windows(token.len()).any(|w| w == token.as_bytes()),
        "{token:?}: not in the header"
    );
    if let Ok(claims) = tokens().decode_any_age(&token) {
        assert!(
            claims.iat <= claims.exp,
            "{token:?}: issued after it expires"
        );
        assert_eq!(
            tokens().sign(&claims).expect("signs"),
            token,
            "only the token its claims sign to verifies"
        );
    }
}

fn bearer_token_of(headers: &HeaderMap) -> Result<String, ()> {
    bearer::bearer_token(headers)
        .map(str::to_owned)
        .map_err(|e| {
            assert_eq!(e.status, http::StatusCode::UNAUTHORIZED, "refused with 401");
        })
}

/// The health check a Consul registration keeps in its Meta
/// (`streamgate_check`, written by this backend, read back by every
/// instance that discovers it): what decodes encodes back to a record that
/// decodes equal.
pub fn consul_check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(check) = decode_check(text)
        && let Ok(again) = encode_check(&check)
    {
        assert_eq!(
            decode_check(&again).as_ref(),
            Some(&check),
            "{text:?}: round trip through {again:?}"
        );
    }
}

/// A job record as stored in the JetStream KV bucket: the key up to the
/// first NUL, the value after it. A record that decodes is a consistent
/// job, encodes back to one that decodes equal, and stays consistent
/// through every transition the worker may take on it.
pub fn job_record(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let key = String::from_utf8_lossy(key);
    if let Some(state) = JobState::parse(&key) {
        assert_eq!(JobState::parse(state.as_str()), Some(state), "state names");
    }
    let Ok((seq, job)) = decode_record(&key, value) else {
        return;
    };
    assert_eq!(job.consistency(), Ok(()), "decoded jobs are consistent");
    let bytes = encode_record(seq, &job).expect("a decoded record encodes");
    let (seq2, job2) = decode_record(&key, &bytes).expect("an encoded record decodes");
    assert_eq!((seq2, &job2), (seq, &job), "record round trip");
    let _ = streamgate::services::worker::transcode::parse(&job.payload_json);
    // Times around the ones the record holds, so leases and delays matter.
    let times = [
        0,
        job.not_before_ms,
        job.lease_until_ms,
        job.lease_until_ms.saturating_add(1),
        u64::MAX,
    ];
    for now in times {
        let step = |name: &str, job: &Job| {
            assert_eq!(
                job.consistency(),
                Ok(()),
                "consistent after {name} at {now}"
            );
        };
        let mut j = job.clone();
        if j.expire(now) {
            step("expire", &j);
        }
        let mut j = job.clone();
        if j.recover(now) {
            step("recover", &j);
        }
        let mut j = job.clone();
        if j.cancel(now, "fuzz").is_ok() {
            step("cancel", &j);
        }
        let mut j = job.clone();
        if let Ok(attempt) = j.lease(now, 30_000) {
            step("lease", &j);
            let mut r = j.clone();
            if r.renew(attempt, now, 30_000, attempt).is_ok() {
                step("renew", &r);
            }
            let mut s = j.clone();
            if s.succeed(attempt, now).is_ok() {
                step("succeed", &s);
            }
            for permanent in [false, true] {
                let mut f = j.clone();
                if f.fail(attempt, now, &job.last_error, 1000, permanent)
                    .is_ok()
                {
                    step("fail", &f);
                }
            }
        }
        // A lease of an attempt that is not the current one is refused.
        let mut j = job.clone();
        let stale = j.attempts.wrapping_add(1);
        assert!(
            j.succeed(stale, now).is_err(),
            "a stale attempt cannot finish the job"
        );
    }
}
