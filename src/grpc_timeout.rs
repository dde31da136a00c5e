//! The `grpc-timeout` header (gRPC over HTTP/2): at most 8 ASCII digits and
//! a unit (`H` hours, `M` minutes, `S` seconds, `m` millis, `u` micros, `n`
//! nanos). Parsing is strict: anything else is treated as absent.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header's name.
pub const HEADER: &str = "grpc-timeout";
/// The same, made once: a lookup by `&str` parses the name on every call.
pub const NAME: HeaderName = HeaderName::from_static(HEADER);

/// Parses one header value.
#[must_use]
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    // The feature `inject-decoder-bug` (never on in a real build) forgets
    // the 8-digit limit, so `n * 3600` can overflow: the fuzzing demo's bug.
    let max_digits = if cfg!(feature = "inject-decoder-bug") {
        20
    } else {
        8
    };
    if digits.is_empty() || digits.len() > max_digits || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Digits checked above; checked arithmetic as `str::parse` would.
    let n = digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The timeout a request carries, if any and well-formed.
#[must_use]
pub fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    headers.get(&NAME).and_then(|v| parse(v.as_bytes()))
}

/// Encodes `timeout` in the coarsest unit that keeps it within 8 digits,
/// rounding down (never promising more time than is left).
#[must_use]
pub fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (value, unit) = [
        (nanos, 'n'),
        (nanos / 1_000, 'u'),
        (nanos / 1_000_000, 'm'),
        (nanos / 1_000_000_000, 'S'),
        (nanos / 60_000_000_000, 'M'),
        (nanos / 3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .find(|(v, _)| *v <= MAX)
    .unwrap_or((MAX, 'H'));
    HeaderValue::try_from(format!("{value}{unit}")).expect("digits and a unit are a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse(b"150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10x",
            b"-1S",
            b"123456789S",
            b"1 S",
            b"\xffS",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn encode_rounds_down_and_parses_back(nanos in 0u64..u64::MAX / 2) {
            let t = Duration::from_nanos(nanos);
            let back = parse(encode(t).as_bytes()).expect("encode output parses");
            prop_assert!(back <= t);
            // A coarser unit is chosen only past 1e8 of the finer one, and units
            // grow at most 1000x, so rounding loses under 1e-5 of the value.
            prop_assert!((t - back).as_nanos() * 100_000 <= t.as_nanos());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse(&bytes);
        }
    }
}
