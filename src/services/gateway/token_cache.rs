//! A small bounded cache of positive token checks, so a busy client costs
//! the auth service one ValidateToken per token and [`MAX_AGE`], not one
//! per request. Keys are SHA-256 digests (no token is kept); entries never
//! outlive their token, nor [`MAX_AGE`], which bounds how long a revoked
//! token is still let in.

use std::sync::Mutex;
use std::time::Duration;

use crate::HashMap;
use sha2::{Digest, Sha256};

/// Longest time a positive answer is reused.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// Most tokens remembered.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    user_id: String,
    until_ms: u64,
}

/// Token digest -> user id, until a deadline.
#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    max_entries: usize,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(MAX_ENTRIES)
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// A cache of at most `max_entries` (at least 1).
    #[must_use]
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::default()),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The user of `token` if a fresh positive answer is cached at `now_ms`.
    #[must_use]
    pub fn get(&self, token: &str, now_ms: u64) -> Option<String> {
        let k = key(token);
        let mut entries = self.lock();
        match entries.get(&k) {
            Some(e) if now_ms < e.until_ms => Some(e.user_id.clone()),
            Some(_) => {
                entries.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers that `token` belongs to `user_id` until the earlier of
    /// its expiry and [`MAX_AGE`] from `now_ms`.
    pub fn insert(&self, token: &str, user_id: &str, expires_at_ms: u64, now_ms: u64) {
        let max_age = u64::try_from(MAX_AGE.as_millis()).unwrap_or(u64::MAX);
        let until_ms = expires_at_ms.min(now_ms.saturating_add(max_age));
        if until_ms <= now_ms {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.max_entries {
            entries.retain(|_, e| now_ms < e.until_ms);
            if entries.len() >= self.max_entries {
                // All fresh: start over rather than track recency; a miss
                // costs one ValidateToken.
                entries.clear();
            }
        }
        entries.insert(
            key(token),
            Entry {
                user_id: user_id.to_owned(),
                until_ms,
            },
        );
    }

    /// Forgets `token` (revoked here: no cached answer may outlive it).
    pub fn remove(&self, token: &str) {
        self.lock().remove(&key(token));
    }

    /// Entries held (fresh or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_never_outlive_the_token_or_max_age() {
        let c = TokenCache::default();
        c.insert("t1", "u1", 5_000, 1_000);
        assert_eq!(c.get("t1", 4_999).as_deref(), Some("u1"));
        assert_eq!(c.get("t1", 5_000), None, "expired with the token");
        c.insert("t2", "u2", u64::MAX, 1_000);
        assert_eq!(c.get("t2", 10_999).as_deref(), Some("u2"));
        assert_eq!(c.get("t2", 11_000), None, "at most MAX_AGE");
        c.insert("t3", "u3", 10, 20);
        assert_eq!(c.get("t3", 20), None, "an expired token is not cached");
        assert_eq!(c.get("other", 0), None);
    }

    #[test]
    fn it_stays_bounded() {
        let c = TokenCache::new(8);
        for i in 0..100u64 {
            c.insert(&format!("t{i}"), "u", 1_000_000, i);
            assert!(c.len() <= 8);
        }
        assert_eq!(c.get("t99", 100).as_deref(), Some("u"));
    }
}
