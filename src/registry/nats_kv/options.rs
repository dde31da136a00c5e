//! Options of the NATS KV registry: where the server is, which bucket, and
//! the limits every request runs under. Data only; validated on connect.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::RegistryError;

/// How to reach and lay out the registry bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Bucket name (`[A-Za-z0-9_-]+`); the stream is `KV_<bucket>`.
    pub bucket: String,
    /// Revisions kept per key (1: only the latest matters).
    pub history: i64,
    /// Backstop expiry of every entry (and delete marker) nobody refreshed or
    /// reaped; must exceed every registration's TTL expiry.
    pub max_age: Duration,
    /// Longest wait for the initial connection.
    pub connect_timeout: Duration,
    /// Longest wait for one request (put, get, listing, bucket status).
    pub request_timeout: Duration,
    /// TLS and credentials.
    #[cfg(not(madsim))]
    #[serde(default)]
    pub auth: crate::nats_auth::NatsAuth,
}

/// The default bucket name.
pub const DEFAULT_BUCKET: &str = "streamgate_registry";

impl Options {
    /// Defaults for the server at `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            bucket: DEFAULT_BUCKET.to_owned(),
            history: 1,
            max_age: Duration::from_secs(10 * 60),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            #[cfg(not(madsim))]
            auth: crate::nats_auth::NatsAuth::default(),
        }
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] naming the offending option.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let invalid = |what: &str| Err(RegistryError::Invalid(format!("nats kv options: {what}")));
        if self.url.is_empty() {
            return invalid("empty url");
        }
        let bucket_ok = !self.bucket.is_empty()
            && self.bucket.len() <= 64
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !bucket_ok {
            return invalid("bucket must match [A-Za-z0-9_-]{1,64}");
        }
        if !(1..=64).contains(&self.history) {
            return invalid("history must be 1..=64");
        }
        if self.max_age < Duration::from_secs(1) {
            return invalid("max_age must be at least 1 s");
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(60) {
                return invalid(&format!("{what} must be in (0, 60 s]"));
            }
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new("nats://127.0.0.1:4222")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_refused() {
        assert_eq!(Options::default().validate(), Ok(()));
        let bad = [
            Options {
                bucket: "a.b".into(),
                ..Options::default()
            },
            Options {
                history: 0,
                ..Options::default()
            },
            Options {
                request_timeout: Duration::ZERO,
                ..Options::default()
            },
            Options {
                url: String::new(),
                ..Options::default()
            },
        ];
        for opts in bad {
            assert!(
                matches!(opts.validate(), Err(RegistryError::Invalid(_))),
                "{opts:?}"
            );
        }
    }
}
