//! The I/O-free core of the NATS KV registry: key encoding, the stored record,
//! and the health view of one service's entries (who passes, when that changes).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::{ServiceInfo, validate};

/// Encodes a service name or instance id as one KV key token.
///
/// Registry ids allow `[A-Za-z0-9-_.:]`, KV keys `[-/_=.a-zA-Z0-9]`, and `.`
/// separates key tokens. `.` becomes `/` and `:` becomes `=` (neither occurs
/// in a valid id), so the mapping is a bijection and every key has exactly
/// two tokens: a subject filter `<name>.*` or `*.<id>` selects exactly.
#[must_use]
pub fn token(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' => '/',
            ':' => '=',
            c => c,
        })
        .collect()
}

/// The key of instance `id` of service `name`: `<name>.<id>`, both encoded.
#[must_use]
pub fn key(name: &str, id: &str) -> String {
    format!("{}.{}", token(name), token(id))
}

/// What is stored under an instance's key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The registration, as given.
    pub info: ServiceInfo,
    /// The writer's wall clock at the last register or heartbeat (for
    /// operators; expiry uses the server's timestamp of the write instead).
    pub heartbeat_unix_ms: u64,
}

impl Record {
    /// Parses the value stored under `key`; `None` (logged) if it is not a
    /// valid record of that very key.
    #[must_use]
    pub fn parse(key: &str, value: &[u8]) -> Option<Self> {
        let record: Self = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%key, error = %e, "malformed registry value skipped");
                return None;
            }
        };
        if let Err(e) = validate(&record.info) {
            tracing::warn!(%key, error = %e, "invalid registration in the bucket skipped");
            return None;
        }
        if self::key(&record.info.name, &record.info.id) != key {
            tracing::warn!(%key, id = %record.info.id, "registry value under the wrong key skipped");
            return None;
        }
        Some(record)
    }
}

/// The latest state of one key, as the server delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The KV revision (stream sequence) of the write.
    pub revision: u64,
    /// The server's timestamp of the write, in Unix milliseconds.
    pub written_unix_ms: u64,
    /// The registration; `None` for a delete or purge marker or a malformed value.
    pub record: Option<Record>,
}

impl Slot {
    fn ttl_expiry(&self) -> Option<Duration> {
        self.record.as_ref().map(|r| r.info.check.ttl_expiry())
    }

    /// When (Unix ms) the entry turns critical, if it holds a registration.
    fn critical_at(&self) -> Option<u64> {
        self.ttl_expiry()
            .map(|ttl| self.written_unix_ms.saturating_add(millis(ttl)))
    }

    /// When (Unix ms) a critical entry is to be removed.
    fn removal_at(&self) -> Option<u64> {
        let record = self.record.as_ref()?;
        let after = millis(record.info.check.deregister_critical_after);
        self.critical_at().map(|at| at.saturating_add(after))
    }

    /// Whether the registration is handed out at `now_ms`: written less than
    /// its TTL expiry ago (a write stamped in the future counts as fresh).
    #[must_use]
    pub fn passing(&self, now_ms: u64) -> Option<&ServiceInfo> {
        let at = self.critical_at()?;
        let record = self.record.as_ref()?;
        (now_ms < at).then_some(&record.info)
    }

    /// Whether the entry has been critical for `deregister_critical_after`.
    #[must_use]
    pub fn removal_due(&self, now_ms: u64) -> bool {
        self.removal_at().is_some_and(|at| now_ms >= at)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The entries of one service, keyed by KV key.
#[derive(Debug, Clone, Default)]
pub struct View {
    slots: BTreeMap<String, Slot>,
    latest: u64,
}

impl View {
    /// Records the latest write of `key` (older revisions are ignored).
    pub fn apply(&mut self, key: String, slot: Slot) {
        self.latest = self.latest.max(slot.revision);
        match self.slots.get(&key) {
            Some(old) if old.revision >= slot.revision => {}
            _ => {
                self.slots.insert(key, slot);
            }
        }
    }

    /// The latest revision seen among the service's keys, deletions included.
    #[must_use]
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The passing instances at `now_ms`, in key order.
    #[must_use]
    pub fn healthy(&self, now_ms: u64) -> Vec<ServiceInfo> {
        self.slots
            .values()
            .filter_map(|s| s.passing(now_ms).cloned())
            .collect()
    }

    /// The next instant (Unix ms) after `now_ms` at which an entry turns
    /// critical or is due for removal.
    #[must_use]
    pub fn next_event(&self, now_ms: u64) -> Option<u64> {
        self.slots
            .values()
            .flat_map(|s| [s.critical_at(), s.removal_at()])
            .flatten()
            .filter(|&at| at > now_ms)
            .min()
    }

    /// Keys (and the revision to delete them at) critical for longer than
    /// their `deregister_critical_after`.
    #[must_use]
    pub fn removable(&self, now_ms: u64) -> Vec<(String, u64)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.removal_due(now_ms))
            .map(|(k, s)| (k.clone(), s.revision))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::instance;

    fn slot(revision: u64, written: u64, record: Option<Record>) -> Slot {
        Slot {
            revision,
            written_unix_ms: written,
            record,
        }
    }

    fn record(port: u16) -> Record {
        Record {
            info: instance("svc", port, Duration::from_secs(1)),
            heartbeat_unix_ms: 0,
        }
    }

    #[test]
    fn tokens_are_single_and_distinct() {
        assert_eq!(key("svc", "a.b:c"), "svc.a/b=c");
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
    }

    #[test]
    fn parse_refuses_garbage_and_foreign_keys() {
        let r = record(7001);
        let bytes = serde_json::to_vec(&r).expect("serializes");
        assert_eq!(Record::parse("svc.svc-7001", &bytes), Some(r));
        assert_eq!(Record::parse("svc.other", &bytes), None);
        assert_eq!(Record::parse("svc.svc-7001", b"{not json"), None);
        assert_eq!(Record::parse("svc.svc-7001", b"{}"), None);
    }

    #[test]
    fn expiry_removal_and_next_event() {
        // TTL interval 1 s: critical 2 s after the write, removed 60 s later.
        let mut view = View::default();
        view.apply("svc.svc-7001".into(), slot(5, 10_000, Some(record(7001))));
        view.apply("svc.gone".into(), slot(7, 10_500, None));
        assert_eq!(view.latest(), 7);
        assert_eq!(view.healthy(11_999).len(), 1);
        assert!(view.healthy(12_000).is_empty());
        assert_eq!(view.next_event(11_000), Some(12_000));
        assert_eq!(view.next_event(12_000), Some(72_000));
        assert!(view.removable(71_999).is_empty());
        assert_eq!(view.removable(72_000), vec![("svc.svc-7001".into(), 5)]);
        // A write stamped ahead of the reader's clock counts as fresh.
        assert_eq!(view.healthy(0).len(), 1);
    }

    #[test]
    fn older_revisions_do_not_replace_newer() {
        let mut view = View::default();
        view.apply("svc.svc-7001".into(), slot(9, 10_000, None));
        view.apply("svc.svc-7001".into(), slot(4, 10_000, Some(record(7001))));
        assert!(view.healthy(10_000).is_empty());
        assert_eq!(view.latest(), 9);
    }
}
