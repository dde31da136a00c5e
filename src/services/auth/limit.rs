//! The log-in throttle: lock-out that lands on the attacker, not the victim.
//!
//! Two limits, checked before the (costly) password check:
//! - per (email, client address): [`FREE_FAILURES`] failed attempts, then
//!   a wait that doubles with each further failure, from 1 s up to 15 min;
//!   a success clears it. One address guessing at an account locks out
//!   only itself: the owner, from another address, is not slowed at all.
//! - per email, across addresses: a token bucket of attempts
//!   ([`EMAIL_BURST`], then [`EMAIL_PER_SEC`]; a success gives its token
//!   back), looser, so that many addresses (a botnet) together are still
//!   slowed. While it is empty every address waits, the owner's too: the
//!   price of not letting a botnet guess freely.
//!
//! IPv6 clients are keyed by their /64 (one host usually has the whole
//! prefix); an unknown address is a key of its own. Behind
//! [`LoginThrottle`], the state is in memory, bounded, per auth instance
//! ([`MemoryThrottle`], with SQLite), or in PostgreSQL, shared by every
//! instance ([`PgThrottle`](super::pg_throttle::PgThrottle), with
//! `--database-url`), the same rules on both.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::error::AuthError;
use crate::HashMap;
use crate::resilience::backoff::Backoff;
use crate::resilience::rate::TokenBucket;
use crate::rt::{self, Instant};

/// Failed attempts per (email, address) before waits start.
pub const FREE_FAILURES: u32 = 5;
/// The waits after that: 1 s, doubling, at most 15 min.
pub const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(15 * 60),
    multiplier: 2.0,
};
/// Attempts per email across all addresses in a burst.
pub const EMAIL_BURST: u32 = 100;
/// Attempts per email per second afterwards (6 a minute).
pub const EMAIL_PER_SEC: f64 = 0.1;
/// Most (email, address) pairs, and most emails, tracked at once.
pub const MAX_TRACKED: usize = 50_000;

/// Who tried: the email's key and the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// [`super::email::key`] of the email.
    pub email: &'a str,
    /// The client's address as the gateway saw it; `None` if unknown.
    pub client: Option<IpAddr>,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Right password: the pair's failures are forgotten.
    Success,
    /// Anything else (wrong password, unknown email, an error).
    Failure,
}

/// Admits or delays log-in attempts: in memory, or in a shared store.
#[async_trait]
pub trait LoginThrottle: Send + Sync + 'static {
    /// Admits `attempt` now (it counts as failed until [`Self::settle`]
    /// says otherwise, so parallel guesses count too): `Ok(Err(wait))`
    /// until an attempt is allowed.
    ///
    /// # Errors
    /// The throttle's store failed (the attempt is not admitted).
    async fn admit(&self, attempt: Attempt<'_>) -> Result<Result<(), Duration>, AuthError>;
    /// Reports how an admitted attempt ended.
    ///
    /// # Errors
    /// The throttle's store failed.
    async fn settle(&self, attempt: Attempt<'_>, outcome: Outcome) -> Result<(), AuthError>;
}

/// The client part of a key: IPv4 as is, IPv6 by its /64, unknown as `None`.
#[must_use]
pub fn client_key(client: Option<IpAddr>) -> Option<IpAddr> {
    match client? {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Some(IpAddr::from(o))
            }
        },
        v4 => Some(v4),
    }
}

#[derive(Debug)]
struct PairState {
    /// Attempts since the last success (the one in flight included).
    failures: u32,
    /// No attempt before this.
    blocked_until: Instant,
    /// Last attempt, admitted or not (for eviction).
    last: Instant,
}

/// The throttle's state machine, timed by the caller (pure, for tests).
#[derive(Debug)]
pub struct Lockout {
    pairs: HashMap<(String, Option<IpAddr>), PairState>,
    emails: HashMap<String, (TokenBucket, Instant)>,
    max_tracked: usize,
}

impl Default for Lockout {
    fn default() -> Self {
        Self::new(MAX_TRACKED)
    }
}

/// After this long without attempts, a pair's state (block ended) or an
/// email's bucket (refilled) changes nothing if forgotten.
fn pair_idle() -> Duration {
    BACKOFF.max
}

fn email_refill() -> Duration {
    Duration::from_secs_f64(f64::from(EMAIL_BURST) / EMAIL_PER_SEC)
}

impl Lockout {
    /// Tracks at most `max_tracked` pairs and as many emails (at least 1).
    #[must_use]
    pub fn new(max_tracked: usize) -> Self {
        Self {
            pairs: HashMap::default(),
            emails: HashMap::default(),
            max_tracked: max_tracked.max(1),
        }
    }

    /// [`LoginThrottle::admit`] at `now`.
    ///
    /// # Errors
    /// The wait until an attempt is allowed.
    pub fn admit(&mut self, attempt: Attempt<'_>, now: Instant) -> Result<(), Duration> {
        let pair_key = (attempt.email.to_owned(), client_key(attempt.client));
        if let Some(p) = self.pairs.get_mut(&pair_key) {
            p.last = p.last.max(now);
            if now < p.blocked_until {
                return Err(p.blocked_until - now);
            }
        }
        if !self.emails.contains_key(attempt.email) && self.emails.len() >= self.max_tracked {
            evict(
                &mut self.emails,
                self.max_tracked,
                now,
                email_refill(),
                |(_, last)| *last,
            );
        }
        let (bucket, last) = self
            .emails
            .entry_ref(attempt.email)
            .or_insert_with(|| (TokenBucket::new(EMAIL_BURST, EMAIL_PER_SEC, now), now));
        *last = (*last).max(now);
        bucket.try_take(now)?;
        if !self.pairs.contains_key(&pair_key) && self.pairs.len() >= self.max_tracked {
            evict(&mut self.pairs, self.max_tracked, now, pair_idle(), |p| {
                p.blocked_until.max(p.last)
            });
        }
        let p = self.pairs.entry(pair_key).or_insert(PairState {
            failures: 0,
            blocked_until: now,
            last: now,
        });
        p.failures = p.failures.saturating_add(1);
        if p.failures >= FREE_FAILURES {
            p.blocked_until = now + BACKOFF.nominal(p.failures - FREE_FAILURES + 1);
        }
        Ok(())
    }

    /// [`LoginThrottle::settle`]: a success clears the pair and gives the
    /// email's token back.
    pub fn settle(&mut self, attempt: Attempt<'_>, outcome: Outcome) {
        if outcome == Outcome::Success {
            self.pairs
                .remove(&(attempt.email.to_owned(), client_key(attempt.client)));
            if let Some((bucket, _)) = self.emails.get_mut(attempt.email) {
                bucket.give_back();
            }
        }
    }

    /// The wait a new attempt of `attempt` would get now, without counting
    /// it (for tests and status).
    #[must_use]
    pub fn blocked_for(&self, attempt: Attempt<'_>, now: Instant) -> Duration {
        self.pairs
            .get(&(attempt.email.to_owned(), client_key(attempt.client)))
            .map_or(Duration::ZERO, |p| {
                p.blocked_until.saturating_duration_since(now)
            })
    }

    /// Pairs and emails tracked.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.pairs.len(), self.emails.len())
    }
}

/// Makes room in `map` (full at `max`): forgets entries idle past `idle`
/// (their state changes nothing any more), else the least recently used.
fn evict<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    now: Instant,
    idle: Duration,
    last: impl Fn(&V) -> Instant,
) {
    map.retain(|_, v| now.saturating_duration_since(last(v)) < idle);
    if map.len() >= max
        && let Some(k) = map
            .iter()
            .min_by_key(|(_, v)| last(v))
            .map(|(k, _)| k.clone())
    {
        map.remove(&k);
    }
}

/// The in-memory [`LoginThrottle`] of one auth instance, on the runtime's clock.
#[derive(Debug, Default)]
pub struct MemoryThrottle {
    state: Mutex<Lockout>,
}

impl MemoryThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lockout> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl LoginThrottle for MemoryThrottle {
    async fn admit(&self, attempt: Attempt<'_>) -> Result<Result<(), Duration>, AuthError> {
        Ok(self.lock().admit(attempt, rt::now()))
    }

    async fn settle(&self, attempt: Attempt<'_>, outcome: Outcome) -> Result<(), AuthError> {
        self.lock().settle(attempt, outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(email: &'a str, client: &str) -> Attempt<'a> {
        Attempt {
            email,
            client: Some(client.parse().expect("ip")),
        }
    }

    #[test]
    fn backoff_grows_per_pair_and_a_success_resets_it() {
        let t0 = rt::now();
        let mut l = Lockout::default();
        let a = at("v@x.io", "203.0.113.9");
        let mut now = t0;
        for n in 1..FREE_FAILURES {
            assert!(l.admit(a, now).is_ok(), "free attempt {n}");
            l.settle(a, Outcome::Failure);
            assert_eq!(l.blocked_for(a, now), Duration::ZERO);
        }
        // The 5th failure: 1 s; then 2 s, 4 s, 8 s ...
        let mut expected = Duration::from_secs(1);
        for _ in 0..6 {
            l.admit(a, now).expect("allowed once the wait is over");
            l.settle(a, Outcome::Failure);
            assert_eq!(l.blocked_for(a, now), expected);
            let early = l.admit(a, now + expected / 2).expect_err("still waiting");
            assert_eq!(early, expected / 2);
            now += expected;
            expected *= 2;
        }
        // Capped at 15 min.
        for _ in 0..20 {
            now += l.blocked_for(a, now);
            l.admit(a, now).expect("after the wait");
        }
        assert_eq!(l.blocked_for(a, now), BACKOFF.max);
        // A success (right password after the wait) clears the pair.
        now += BACKOFF.max;
        l.admit(a, now).expect("after the wait");
        l.settle(a, Outcome::Success);
        assert_eq!(l.blocked_for(a, now), Duration::ZERO);
        for _ in 1..FREE_FAILURES {
            l.admit(a, now).expect("free again");
        }
    }

    #[test]
    fn an_attacker_address_never_slows_the_owner() {
        let t0 = rt::now();
        let mut l = Lockout::default();
        let attacker = at("v@x.io", "198.51.100.7");
        let owner = at("v@x.io", "203.0.113.9");
        let (mut refused, mut owner_in) = (0, 0);
        // The probe: one wrong password a second for an hour, the owner
        // logging in every minute.
        for s in 0..3600u64 {
            let now = t0 + Duration::from_secs(s);
            match l.admit(attacker, now) {
                Ok(()) => l.settle(attacker, Outcome::Failure),
                Err(_) => refused += 1,
            }
            if s % 60 == 30 {
                l.admit(owner, now).expect("the owner is never delayed");
                l.settle(owner, Outcome::Success);
                owner_in += 1;
            }
        }
        assert_eq!(owner_in, 60);
        assert!(
            refused > 3500,
            "the attacker is the one waiting ({refused} refused)"
        );
    }

    #[test]
    fn many_addresses_hit_the_email_ceiling() {
        let t0 = rt::now();
        let mut l = Lockout::default();
        let mut admitted = 0;
        for i in 0..1000u32 {
            let bot = at("v@x.io", &format!("10.0.{}.{}", i / 256, i % 256));
            if l.admit(bot, t0).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, EMAIL_BURST, "the ceiling holds across addresses");
        let wait = l.admit(at("v@x.io", "203.0.113.9"), t0).expect_err("full");
        assert!(wait <= Duration::from_secs(10), "{wait:?}");
        // Another email is untouched.
        assert!(l.admit(at("w@x.io", "10.0.0.1"), t0).is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let t0 = rt::now();
        let mut l = Lockout::default();
        for i in 0..FREE_FAILURES {
            let a = at("v@x.io", &format!("2001:db8:1:2::{i:x}"));
            l.admit(a, t0).expect("free");
        }
        let same_64 = at("v@x.io", "2001:db8:1:2:ffff::1");
        assert!(l.blocked_for(same_64, t0) > Duration::ZERO);
        assert_eq!(
            l.blocked_for(at("v@x.io", "2001:db8:1:3::1"), t0),
            Duration::ZERO
        );
        assert_eq!(
            client_key(Some("::ffff:192.0.2.1".parse().expect("ip"))),
            Some("192.0.2.1".parse().expect("ip"))
        );
    }

    #[test]
    fn the_maps_stay_bounded() {
        let t0 = rt::now();
        let mut l = Lockout::new(3);
        for i in 0..100u64 {
            let email = format!("u{i}@x.io");
            let _ = l.admit(at(&email, "192.0.2.1"), t0 + Duration::from_millis(i));
            let (pairs, emails) = l.len();
            assert!(pairs <= 3 && emails <= 3, "{pairs} {emails}");
        }
    }
}
