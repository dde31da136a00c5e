//! Rates of the public edge's costly actions, per client: sign-ups,
//! log-ins and refreshes per client address (the caller has no account
//! yet; an IPv6 client is its /64), upload starts (one-shot and tus
//! creations) and playback-grant minting per account. Past its rate an
//! action answers 429 with `Retry-After` and a JSON body saying when.
//!
//! GCRA through `governor`, keyed, on the runtime's clock (`rt::now`), so
//! that the simulator's time drives it like every other timer. The state
//! is this gateway instance's: with N instances behind a balancer a
//! client gets up to N times the rate (as with nginx's `limit_req`).
//! Each limiter holds at most [`MAX_KEYS`] clients; keys whose state is
//! back to fresh are dropped first, and a new client past that bound is
//! refused until some are (a flood from many addresses cannot grow the
//! gateway's memory).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderValue, Method, StatusCode, header};

use super::bearer::AuthUser;
use super::client_addr::{TrustedProxies, client_ip};
use super::error::ApiError;
use crate::rt;
use crate::rt::transport::{self, client_of};

/// Most clients one limiter keeps state for.
pub const MAX_KEYS: usize = 100_000;
/// Longest period a rate may be given over.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A rate: `count` actions per `period`, all of them at once at most (the
/// burst), then one each `period / count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Actions per period (the burst).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// `count` per `period`.
    #[must_use]
    pub const fn new(count: u32, period: Duration) -> Self {
        Self { count, period }
    }

    fn quota(self) -> Quota {
        let count = NonZeroU32::new(self.count).unwrap_or(NonZeroU32::MIN);
        let each = self.period / count.get();
        Quota::with_period(each.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(count)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.period.as_secs();
        match secs {
            3600 => write!(f, "{}/h", self.count),
            60 => write!(f, "{}/min", self.count),
            1 => write!(f, "{}/s", self.count),
            _ => write!(f, "{}/{secs}s", self.count),
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `N/s`, `N/min`, `N/h` or `N/<seconds>s`: 1..=1,000,000 actions per
    /// 1 s..=24 h.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: a rate is N/s, N/min, N/h or N/<seconds>s, e.g. 10/min");
        let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if !(1..=1_000_000).contains(&count) {
            return Err(format!("{s:?}: 1..=1000000 actions per period"));
        }
        let period = match per.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => {
                let secs: u64 = other
                    .strip_suffix('s')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?;
                Duration::from_secs(secs)
            }
        };
        if period.is_zero() || period > MAX_PERIOD {
            return Err(format!("{s:?}: a period of 1 s..=24 h"));
        }
        Ok(Self { count, period })
    }
}

/// The rates (`--http-*-rate` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Sign-ups per client address.
    pub signup: Rate,
    /// Log-ins per client address (the auth service also locks an
    /// (email, address) pair out after failures).
    pub login: Rate,
    /// Token refreshes per client address.
    pub refresh: Rate,
    /// Upload starts (`POST /v1/videos`, tus creations) per account.
    pub upload: Rate,
    /// Playback grants minted (`POST /v1/videos/{id}/playback`) per account.
    pub playback: Rate,
}

impl Rates {
    /// Default of [`Rates::signup`]: a household or an office behind one
    /// address signs up a few people, never hundreds.
    pub const SIGNUP: Rate = Rate::new(20, Duration::from_secs(3600));
    /// Default of [`Rates::login`]: many people behind one address, each
    /// logging in now and then.
    pub const LOGIN: Rate = Rate::new(60, Duration::from_secs(60));
    /// Default of [`Rates::refresh`]: every client refreshes about once
    /// per access-token lifetime.
    pub const REFRESH: Rate = Rate::new(120, Duration::from_secs(60));
    /// Default of [`Rates::upload`].
    pub const UPLOAD: Rate = Rate::new(120, Duration::from_secs(3600));
    /// Default of [`Rates::playback`]: a viewer browsing a catalogue.
    pub const PLAYBACK: Rate = Rate::new(600, Duration::from_secs(60));
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            signup: Self::SIGNUP,
            login: Self::LOGIN,
            refresh: Self::REFRESH,
            upload: Self::UPLOAD,
            playback: Self::PLAYBACK,
        }
    }
}

/// An action whose rate is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/auth/signup`.
    SignUp,
    /// `POST /v1/auth/login`.
    LogIn,
    /// `POST /v1/auth/refresh`.
    Refresh,
    /// `POST /v1/videos`, `POST /v1/uploads/`.
    Upload,
    /// `POST /v1/videos/{id}/playback`.
    Playback,
}

impl Action {
    fn what(self) -> &'static str {
        match self {
            Self::SignUp => "sign-ups from this address",
            Self::LogIn => "log-ins from this address",
            Self::Refresh => "token refreshes from this address",
            Self::Upload => "uploads started by this account",
            Self::Playback => "playback URLs made by this account",
        }
    }
}

/// Whose rate an action counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A client address ([`client_of`]: an IPv6 address's /64).
    Client(IpAddr),
    /// An account.
    Account(String),
}

impl Key {
    /// The client at `ip`.
    #[must_use]
    pub fn client(ip: IpAddr) -> Self {
        Self::Client(client_of(ip))
    }
}

/// The runtime's clock for `governor`: time since the limiter began.
#[derive(Debug, Clone)]
struct RtClock {
    start: rt::Instant,
}

impl Clock for RtClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        rt::now().saturating_duration_since(self.start)
    }
}

type Keyed = RateLimiter<
    Key,
    HashMapStateStore<Key, std::hash::RandomState>,
    RtClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// A refusal: 429, `Retry-After` (whole seconds, at least 1), and the
/// JSON body saying what and when.
#[derive(Debug)]
pub struct Limited {
    action: Action,
    wait: Duration,
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut res = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many {}: retry in {secs} s", self.action.what()),
        )
        .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

/// One limiter per action.
#[derive(Clone)]
pub struct Limiters {
    inner: Arc<Inner>,
}

struct Inner {
    limiters: [(Action, Keyed); 5],
    clock: RtClock,
    /// When a full limiter was last pruned: at most once per
    /// [`PRUNE_EVERY`], so a flood of new clients costs one pass over the
    /// keys per interval, not one per request.
    pruned: std::sync::Mutex<Option<rt::Instant>>,
}

/// Least time between two prunings of a full limiter.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

impl Limiters {
    /// Limiters at `rates`, every client fresh.
    #[must_use]
    pub fn new(rates: Rates) -> Self {
        let clock = RtClock { start: rt::now() };
        let keyed = |rate: Rate| {
            Keyed::hashmap_with_clock_and_hasher(
                rate.quota(),
                clock.clone(),
                std::hash::RandomState::new(),
            )
        };
        Self {
            inner: Arc::new(Inner {
                limiters: [
                    (Action::SignUp, keyed(rates.signup)),
                    (Action::LogIn, keyed(rates.login)),
                    (Action::Refresh, keyed(rates.refresh)),
                    (Action::Upload, keyed(rates.upload)),
                    (Action::Playback, keyed(rates.playback)),
                ],
                clock,
                pruned: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Counts one `action` of `key`.
    ///
    /// # Errors
    /// [`Limited`] past the action's rate (nothing counted), or when the
    /// limiter holds [`MAX_KEYS`] other clients that are not yet fresh.
    pub fn check(&self, action: Action, key: &Key) -> Result<(), Limited> {
        let inner = &*self.inner;
        let Some((_, limiter)) = inner.limiters.iter().find(|(a, _)| *a == action) else {
            return Ok(());
        };
        if limiter.len() >= MAX_KEYS {
            let now = rt::now();
            let due = {
                let mut last = inner
                    .pruned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
                if due {
                    *last = Some(now);
                }
                due
            };
            if due {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            if limiter.len() >= MAX_KEYS {
                tracing::warn!(?action, "rate limiter full: a new client is refused");
                return Err(Limited {
                    action,
                    wait: PRUNE_EVERY,
                });
            }
        }
        limiter.check_key(key).map_err(|not_until| Limited {
            action,
            wait: not_until.wait_time_from(inner.clock.now()),
        })
    }
}

/// The limited action a request is, by its method and route, with whose
/// rate it counts against: its client's address (`proxies` say whose
/// `X-Forwarded-For` names it) or the account the bearer check named.
fn action_of(req: &Request, proxies: &TrustedProxies) -> Option<(Action, Key)> {
    if req.method() != Method::POST {
        return None;
    }
    let route = req.extensions().get::<MatchedPath>()?.as_str();
    let by_client = |action| {
        let peer = transport::peer_addr(req.extensions()).map(|a| a.ip());
        client_ip(peer, req.headers(), &proxies.0).map(|ip| (action, Key::client(ip)))
    };
    let by_account = |action| {
        req.extensions()
            .get::<AuthUser>()
            .map(|AuthUser(user)| (action, Key::Account(user.clone())))
    };
    match route {
        "/v1/auth/signup" => by_client(Action::SignUp),
        "/v1/auth/login" => by_client(Action::LogIn),
        "/v1/auth/refresh" => by_client(Action::Refresh),
        "/v1/videos" | "/v1/uploads" | "/v1/uploads/" => by_account(Action::Upload),
        "/v1/videos/{id}/playback" => by_account(Action::Playback),
        _ => None,
    }
}

/// The middleware: counts a limited action ([`action_of`]) against its
/// client's rate before it runs; 429 past it.
pub async fn limit(
    State((limiters, proxies)): State<(Limiters, TrustedProxies)>,
    req: Request,
    next: Next,
) -> Response {
    if let Some((action, key)) = action_of(&req, &proxies)
        && let Err(limited) = limiters.check(action, &key)
    {
        return limited.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        for (text, count, secs) in [
            ("10/min", 10, 60),
            ("5/s", 5, 1),
            (" 20 / h ", 20, 3600),
            ("3/90s", 3, 90),
        ] {
            let r: Rate = text.parse().expect(text);
            assert_eq!((r.count, r.period), (count, Duration::from_secs(secs)));
            assert_eq!(r.to_string().parse::<Rate>(), Ok(r));
        }
        for bad in [
            "",
            "10",
            "0/min",
            "10/day",
            "10/0s",
            "10/86401s",
            "x/min",
            "2000000/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_client_past_its_rate_waits_while_others_go_on() {
        tokio::time::pause();
        let limiters = Limiters::new(Rates {
            signup: Rate::new(3, Duration::from_secs(60)),
            ..Rates::default()
        });
        let a = Key::client("10.0.0.1".parse().unwrap());
        let b = Key::client("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limiters.check(Action::SignUp, &a).is_ok());
        }
        let refused = limiters
            .check(Action::SignUp, &a)
            .expect_err("past the burst");
        assert!(refused.wait > Duration::from_secs(15) && refused.wait <= Duration::from_secs(20));
        // Another address, and another action of the same one, are not held.
        assert!(limiters.check(Action::SignUp, &b).is_ok());
        assert!(limiters.check(Action::LogIn, &a).is_ok());
        // One more after a third of the period (3 per minute: one each 20 s).
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(limiters.check(Action::SignUp, &a).is_ok());
        assert!(limiters.check(Action::SignUp, &a).is_err());
        // Addresses of one IPv6 /64 are one client.
        let v6 = |s: &str| Key::client(s.parse().unwrap());
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:2"));
    }

    #[tokio::test]
    async fn a_refusal_is_429_with_retry_after_and_a_json_body() {
        use http_body_util::BodyExt as _;
        let res = Limited {
            action: Action::SignUp,
            wait: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["error"],
            "too many sign-ups from this address: retry in 2 s"
        );
    }
}
