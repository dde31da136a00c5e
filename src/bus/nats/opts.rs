//! Configuration of the NATS event bus: connection, bounded reconnects,
//! buffers, timeouts and the optional JetStream (durable) mode, validated on load.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::valid_name;

/// A NATS bus option is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NATS bus option `{field}`: {reason}")]
pub struct InvalidOpts {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidOpts {
    InvalidOpts {
        field,
        reason: reason.into(),
    }
}

/// How the bus connects to NATS and how much it buffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOpts {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Client name the server shows in its monitoring.
    pub client_name: String,
    /// Keep trying (in the background) when the first connect fails, instead
    /// of failing `connect`.
    pub retry_on_initial_connect: bool,
    /// Timeout of one connection attempt.
    pub connect_timeout_ms: u64,
    /// Reconnect attempts after a loss before the bus gives up and closes.
    pub reconnect_attempts_max: usize,
    /// Wait between reconnect attempts.
    pub reconnect_wait_ms: u64,
    /// Random extra wait per attempt, up to this much (spreads reconnect storms).
    pub reconnect_jitter_ms: u64,
    /// Commands (publishes) async-nats buffers while the connection is busy or down.
    pub publish_buffer_capacity: usize,
    /// Messages buffered per subscription; beyond it async-nats drops (SlowConsumer).
    pub subscription_capacity: usize,
    /// How long a publish may wait for buffer space (or a PubAck) before it fails.
    pub publish_timeout_ms: u64,
    /// Timeout of request/reply calls (JetStream API included).
    pub request_timeout_ms: u64,
    /// Timeout of a flush (on close, and per publish with `confirm_publish`).
    pub flush_timeout_ms: u64,
    /// Core mode: flush after every publish, so `Ok` means the server has it
    /// (slower; without it a publish is fire-and-forget into the buffer).
    pub confirm_publish: bool,
    /// Namespace prepended to every subject on the wire (e.g. per tenant or test run).
    pub subject_prefix: Option<String>,
    /// Durable mode for the subjects it lists; `None`: core NATS only.
    pub jetstream: Option<JetStreamOpts>,
    /// TLS and credentials.
    pub auth: crate::nats_auth::NatsAuth,
}

impl Default for NatsOpts {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            client_name: "streamgate".to_owned(),
            retry_on_initial_connect: false,
            connect_timeout_ms: 5_000,
            reconnect_attempts_max: 10,
            reconnect_wait_ms: 2_000,
            reconnect_jitter_ms: 500,
            publish_buffer_capacity: 2_048,
            subscription_capacity: 65_536,
            publish_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            flush_timeout_ms: 5_000,
            confirm_publish: false,
            subject_prefix: None,
            jetstream: None,
            auth: crate::nats_auth::NatsAuth::default(),
        }
    }
}

/// JetStream settings: one stream over `subjects`, durable pull consumers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamOpts {
    /// Stream name (created if missing).
    pub stream: String,
    /// Subject patterns (before the prefix) that go through JetStream; others stay core.
    pub subjects: Vec<String>,
    /// Server-side dedup window for `Nats-Msg-Id` (the event id).
    pub duplicate_window_ms: u64,
    /// How long the stream keeps events.
    pub max_age_secs: u64,
    /// Time the server waits for an ack before redelivering.
    pub ack_wait_ms: u64,
    /// Deliveries per event, the first included, before the server gives up.
    pub max_deliver: i64,
    /// First redelivery delay after a handler failure (doubles per attempt).
    pub nak_delay_ms: u64,
    /// Largest redelivery delay.
    pub nak_delay_max_ms: u64,
    /// Unacked events in flight per consumer.
    pub max_ack_pending: i64,
    /// Event ids each subscription remembers to skip redelivered duplicates.
    pub dedup_capacity: usize,
    /// A non-group subscriber's consumer is deleted by the server after this idle time.
    pub inactive_threshold_secs: u64,
}

impl Default for JetStreamOpts {
    fn default() -> Self {
        Self {
            stream: "STREAMGATE".to_owned(),
            subjects: vec!["streamgate.v1.>".to_owned()],
            duplicate_window_ms: 120_000,
            max_age_secs: 7 * 24 * 3600,
            ack_wait_ms: 30_000,
            max_deliver: 5,
            nak_delay_ms: 1_000,
            nak_delay_max_ms: 30_000,
            max_ack_pending: 1_000,
            dedup_capacity: 10_000,
            inactive_threshold_secs: 300,
        }
    }
}

/// Whether `pattern` is a subject with optional `*` tokens and a final `>`.
fn valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    !pattern.is_empty()
        && pattern.len() <= 256
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| (*t == ">" && i + 1 == tokens.len()) || *t == "*" || valid_name(t))
}

/// Whether the literal `subject` matches `pattern` (`*` one token, `>` the rest).
#[must_use]
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

impl NatsOpts {
    /// Checks every field.
    ///
    /// # Errors
    /// [`InvalidOpts`] naming the first bad field.
    pub fn validate(&self) -> Result<(), InvalidOpts> {
        if self.url.trim().is_empty() {
            return Err(invalid("url", "empty"));
        }
        if self.client_name.is_empty() || self.client_name.len() > 128 {
            return Err(invalid("client_name", "must be 1..=128 bytes"));
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_wait_ms", self.reconnect_wait_ms),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("flush_timeout_ms", self.flush_timeout_ms),
        ] {
            if value == 0 || value > 3_600_000 {
                return Err(invalid(field, "must be 1..=3600000 ms"));
            }
        }
        if self.reconnect_jitter_ms > 60_000 {
            return Err(invalid("reconnect_jitter_ms", "at most 60000"));
        }
        if !(1..=1_000_000).contains(&self.reconnect_attempts_max) {
            return Err(invalid("reconnect_attempts_max", "must be 1..=1000000"));
        }
        for (field, value) in [
            ("publish_buffer_capacity", self.publish_buffer_capacity),
            ("subscription_capacity", self.subscription_capacity),
        ] {
            if !(1..=10_000_000).contains(&value) {
                return Err(invalid(field, "must be 1..=10000000"));
            }
        }
        if let Some(prefix) = self.subject_prefix.as_deref().filter(|p| !valid_name(p)) {
            return Err(invalid(
                "subject_prefix",
                format!("{prefix:?} is not a subject"),
            ));
        }
        self.jetstream
            .as_ref()
            .map_or(Ok(()), JetStreamOpts::validate)
    }

    pub(crate) fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

impl JetStreamOpts {
    /// Checks every field.
    ///
    /// # Errors
    /// [`InvalidOpts`] naming the first bad field.
    pub fn validate(&self) -> Result<(), InvalidOpts> {
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !name_ok {
            return Err(invalid("jetstream.stream", "1..=64 of [A-Za-z0-9_-]"));
        }
        if self.subjects.is_empty() || self.subjects.len() > 64 {
            return Err(invalid("jetstream.subjects", "1..=64 patterns"));
        }
        if let Some(bad) = self.subjects.iter().find(|s| !valid_pattern(s)) {
            return Err(invalid("jetstream.subjects", format!("{bad:?}")));
        }
        for (field, value) in [
            ("jetstream.duplicate_window_ms", self.duplicate_window_ms),
            ("jetstream.max_age_secs", self.max_age_secs),
            ("jetstream.ack_wait_ms", self.ack_wait_ms),
            ("jetstream.nak_delay_ms", self.nak_delay_ms),
            ("jetstream.nak_delay_max_ms", self.nak_delay_max_ms),
            (
                "jetstream.inactive_threshold_secs",
                self.inactive_threshold_secs,
            ),
        ] {
            if value == 0 || value > 365 * 24 * 3_600_000 {
                return Err(invalid(field, "must be positive and at most a year"));
            }
        }
        if !(1..=1_000).contains(&self.max_deliver) {
            return Err(invalid("jetstream.max_deliver", "must be 1..=1000"));
        }
        if !(1..=1_000_000).contains(&self.max_ack_pending) {
            return Err(invalid("jetstream.max_ack_pending", "must be 1..=1000000"));
        }
        if !(1..=10_000_000).contains(&self.dedup_capacity) {
            return Err(invalid("jetstream.dedup_capacity", "must be 1..=10000000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let mut opts = NatsOpts {
            jetstream: Some(JetStreamOpts::default()),
            ..NatsOpts::default()
        };
        assert_eq!(opts.validate(), Ok(()));
        opts.publish_buffer_capacity = 0;
        assert_eq!(
            opts.validate().map_err(|e| e.field),
            Err("publish_buffer_capacity")
        );
        opts.publish_buffer_capacity = 1;
        opts.jetstream = Some(JetStreamOpts {
            subjects: vec!["a.>.b".to_owned()],
            ..JetStreamOpts::default()
        });
        assert_eq!(
            opts.validate().map_err(|e| e.field),
            Err("jetstream.subjects")
        );
    }

    #[test]
    fn patterns_match_like_nats() {
        assert!(subject_matches(
            "streamgate.v1.>",
            "streamgate.v1.job.submitted"
        ));
        assert!(!subject_matches("streamgate.v1.>", "streamgate.v1"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.c.d"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
    }
}
