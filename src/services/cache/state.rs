//! The cache's pure state: a byte-bounded TTL map. Time comes in as `now`;
//! when full, the entries closest to expiry are evicted first.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;

pub use super::error::CacheError;
use crate::rt::Instant;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Longest time to live.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Limits of one cache instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total key + value bytes held.
    pub capacity_bytes: u64,
    /// TTL when a request says 0.
    pub default_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            capacity_bytes: 64 << 20,
            default_ttl: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// Checks the limits.
    ///
    /// # Errors
    /// A capacity of zero, or a default TTL of zero or over [`MAX_TTL`].
    pub fn validate(&self) -> Result<(), String> {
        if self.capacity_bytes == 0 {
            return Err("cache capacity must be positive".to_owned());
        }
        if self.default_ttl.is_zero() || self.default_ttl > MAX_TTL {
            return Err(format!(
                "cache default TTL must be in 1 ms..={} s",
                MAX_TTL.as_secs()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    expires: Instant,
}

/// Counters, as `Stats` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries removed to make room.
    pub evictions: u64,
    /// Entries removed because their TTL ran out.
    pub expirations: u64,
}

/// The cache.
#[derive(Debug, Default)]
pub struct CacheState {
    limits: Limits,
    entries: HashMap<String, Entry>,
    by_expiry: BTreeSet<(Instant, String)>,
    used_bytes: u64,
    counters: Counters,
}

fn size_of(key: &str, value: &Bytes) -> u64 {
    (key.len() + value.len()) as u64
}

/// Validates a key (also used for prefixes).
///
/// # Errors
/// [`CacheError::BadKey`].
pub fn check_key(key: &str) -> Result<(), CacheError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(CacheError::BadKey);
    }
    Ok(())
}

impl CacheState {
    /// An empty cache with `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires, key.to_owned()));
        self.used_bytes -= size_of(key, &entry.value);
        Some(entry)
    }

    /// Drops every entry expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.by_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&key);
            self.counters.expirations += 1;
        }
    }

    /// The live value of `key` and its remaining time to live.
    ///
    /// # Errors
    /// [`CacheError::BadKey`].
    pub fn get(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Result<Option<(Bytes, Duration)>, CacheError> {
        check_key(key)?;
        self.expire(now);
        let found = self
            .entries
            .get(key)
            .map(|e| (e.value.clone(), e.expires - now));
        if found.is_some() {
            self.counters.hits += 1;
        } else {
            self.counters.misses += 1;
        }
        Ok(found)
    }

    /// Stores `value` under `key` for `ttl` (zero: the default), evicting the
    /// entries closest to expiry if needed. Returns the expiry and how many
    /// entries were evicted.
    ///
    /// # Errors
    /// Bad key, value too large, TTL too long, or an entry larger than the cache.
    pub fn set(
        &mut self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        now: Instant,
    ) -> Result<(Instant, u32), CacheError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(CacheError::ValueTooLarge(value.len()));
        }
        if ttl > MAX_TTL {
            return Err(CacheError::TtlTooLong(ttl));
        }
        let size = size_of(key, &value);
        if size > self.limits.capacity_bytes {
            return Err(CacheError::NoRoom(size));
        }
        self.expire(now);
        self.remove(key);
        let mut evicted = 0;
        while self.used_bytes + size > self.limits.capacity_bytes {
            let (_, victim) = self
                .by_expiry
                .first()
                .cloned()
                .expect("used bytes imply entries");
            self.remove(&victim);
            self.counters.evictions += 1;
            evicted += 1;
        }
        let ttl = if ttl.is_zero() {
            self.limits.default_ttl
        } else {
            ttl
        };
        let expires = now + ttl;
        self.by_expiry.insert((expires, key.to_owned()));
        self.entries
            .insert(key.to_owned(), Entry { value, expires });
        self.used_bytes += size;
        Ok((expires, evicted))
    }

    /// Removes `key`; whether it was there.
    ///
    /// # Errors
    /// [`CacheError::BadKey`].
    pub fn delete(&mut self, key: &str, now: Instant) -> Result<bool, CacheError> {
        check_key(key)?;
        self.expire(now);
        Ok(self.remove(key).is_some())
    }

    /// Removes every key starting with `prefix`; how many.
    ///
    /// # Errors
    /// [`CacheError::BadKey`] (an empty prefix is refused: no accidental flush).
    pub fn invalidate(&mut self, prefix: &str, now: Instant) -> Result<u64, CacheError> {
        check_key(prefix)?;
        self.expire(now);
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in &keys {
            self.remove(key);
        }
        Ok(keys.len() as u64)
    }

    /// Entry count, bytes used, capacity and counters.
    #[must_use]
    pub fn stats(&self) -> (u64, u64, u64, Counters) {
        (
            self.entries.len() as u64,
            self.used_bytes,
            self.limits.capacity_bytes,
            self.counters,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        crate::rt::now()
    }

    #[test]
    fn expires_after_ttl() {
        let now = t0();
        let mut c = CacheState::new(Limits::default());
        c.set("k", Bytes::from_static(b"v"), Duration::from_secs(5), now)
            .unwrap();
        assert_eq!(
            c.get("k", now + Duration::from_secs(4))
                .unwrap()
                .map(|v| v.0),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(c.get("k", now + Duration::from_secs(5)).unwrap(), None);
        assert_eq!(c.stats().3.expirations, 1);
    }

    #[test]
    fn refuses_bad_input() {
        let now = t0();
        let mut c = CacheState::new(Limits {
            capacity_bytes: 10,
            default_ttl: Duration::from_secs(1),
        });
        assert_eq!(c.get("", now), Err(CacheError::BadKey));
        assert_eq!(c.get("a\0b", now), Err(CacheError::BadKey));
        assert_eq!(c.get(&"k".repeat(257), now), Err(CacheError::BadKey));
        assert_eq!(c.invalidate("", now), Err(CacheError::BadKey));
        assert!(matches!(
            c.set("k", Bytes::from(vec![0; 11]), Duration::ZERO, now),
            Err(CacheError::NoRoom(12))
        ));
        assert!(matches!(
            c.set("k", Bytes::new(), MAX_TTL + Duration::from_millis(1), now),
            Err(CacheError::TtlTooLong(_))
        ));
    }

    proptest! {
        /// Against a model: bytes used never exceed capacity, match the live
        /// entries, and a key set and not displaced reads back its value.
        #[test]
        fn stays_within_capacity(ops in proptest::collection::vec((0u8..4, 0u8..8, 0usize..40, 0u64..50), 1..200)) {
            let start = t0();
            let mut c = CacheState::new(Limits { capacity_bytes: 100, default_ttl: Duration::from_secs(10) });
            let mut clock = Duration::ZERO;
            for (op, key, len, dt) in ops {
                clock += Duration::from_millis(dt * 100);
                let now = start + clock;
                let key = format!("k{key}");
                match op {
                    0 => {
                        let value = Bytes::from(vec![key.len() as u8; len]);
                        c.set(&key, value.clone(), Duration::from_secs(3), now).unwrap();
                        prop_assert_eq!(c.get(&key, now).unwrap().map(|v| v.0), Some(value));
                    }
                    1 => { c.get(&key, now).unwrap(); }
                    2 => { c.delete(&key, now).unwrap(); prop_assert_eq!(c.get(&key, now).unwrap(), None); }
                    _ => { c.invalidate("k", now).unwrap(); prop_assert_eq!(c.stats().0, 0); }
                }
                let (entries, used, cap, _) = c.stats();
                prop_assert!(used <= cap);
                let live: u64 = c.entries.iter().map(|(k, e)| size_of(k, &e.value)).sum();
                prop_assert_eq!(used, live);
                prop_assert_eq!(entries as usize, c.by_expiry.len());
            }
        }
    }
}
