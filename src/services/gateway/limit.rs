//! The router's own limits, so that no client can take the API from the
//! others: requests in flight (held until the response body is sent, so
//! streamed bodies count) in two budgets, media (originals, HLS,
//! thumbnails) and the rest of the API, each bounded in all (503 past it)
//! and per client address and per account (429 past a share); a deadline
//! for every request body but an upload's; the query's length.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body::{Frame, SizeHint};

use super::bearer::AuthUser;
use super::client_addr;
use super::deadline::Deadline;
use super::error::ApiError;
use super::query::MAX_QUERY_BYTES;
use crate::HashMap;
use crate::rt::transport::{self, PeerAddr};

/// Share of a budget in use past which the service reports not ready.
pub const NOT_READY_AT: f64 = 0.9;
/// What a refusal's `Retry-After` says, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The limits' settings (`--http-*` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// API requests in flight at once, in all.
    pub api_in_flight: usize,
    /// Media requests in flight at once, in all.
    pub media_in_flight: usize,
    /// API requests in flight from one client address.
    pub client_api_in_flight: usize,
    /// Media requests in flight from one client address.
    pub client_media_in_flight: usize,
    /// API requests in flight for one account.
    pub account_api_in_flight: usize,
    /// Media requests in flight for one account.
    pub account_media_in_flight: usize,
    /// How long a request body (but an upload's) may take to arrive whole.
    pub body_timeout: Duration,
}

impl RequestLimits {
    /// Default of [`RequestLimits::api_in_flight`].
    pub const API_IN_FLIGHT: usize = 256;
    /// Default of [`RequestLimits::media_in_flight`]: media requests last
    /// longer (a segment, an original) and are cheap for us.
    pub const MEDIA_IN_FLIGHT: usize = 512;
    /// Default of [`RequestLimits::client_api_in_flight`]: a quarter of the
    /// budget, so one address never takes it all, yet room for many users
    /// behind one NAT.
    pub const CLIENT_API_IN_FLIGHT: usize = 64;
    /// Default of [`RequestLimits::client_media_in_flight`]: an eighth of
    /// the budget; about ten players at full tilt behind one address.
    pub const CLIENT_MEDIA_IN_FLIGHT: usize = 64;
    /// Default of [`RequestLimits::account_api_in_flight`]: a browser keeps
    /// at most 6 requests per host in flight, so a user with two or three
    /// tabs or devices never meets it.
    pub const ACCOUNT_API_IN_FLIGHT: usize = 16;
    /// Default of [`RequestLimits::account_media_in_flight`]: a player
    /// fetches a segment or two and a playlist at a time.
    pub const ACCOUNT_MEDIA_IN_FLIGHT: usize = 16;
    /// Default of [`RequestLimits::body_timeout`]: 64 KiB of JSON at most,
    /// which takes well under a second on any link a player works on.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            api_in_flight: Self::API_IN_FLIGHT,
            media_in_flight: Self::MEDIA_IN_FLIGHT,
            client_api_in_flight: Self::CLIENT_API_IN_FLIGHT,
            client_media_in_flight: Self::CLIENT_MEDIA_IN_FLIGHT,
            account_api_in_flight: Self::ACCOUNT_API_IN_FLIGHT,
            account_media_in_flight: Self::ACCOUNT_MEDIA_IN_FLIGHT,
            body_timeout: Self::BODY_TIMEOUT,
        }
    }
}

/// Which budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Everything but media.
    Api,
    /// The original, HLS playlists and segments, the thumbnail.
    Media,
}

impl Class {
    /// The class of a request for `path`.
    #[must_use]
    pub fn of(path: &str) -> Self {
        let mut parts = path.split('/').skip(1);
        let media = parts.next() == Some("v1")
            && matches!(parts.next(), Some("videos" | "play"))
            && parts.next().is_some_and(|id| !id.is_empty())
            && matches!(parts.next(), Some("original" | "thumbnail.jpg" | "hls"));
        if media { Self::Media } else { Self::Api }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Api => "API",
            Self::Media => "media",
        }
    }
}

/// Who holds a share of a budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Client(IpAddr),
    Account(String),
}

#[derive(Debug)]
struct Counts {
    /// Requests in flight per class, in all.
    api: usize,
    media: usize,
    /// Requests in flight per class and holder; a holder with none has no
    /// entry, so the map is no larger than the requests in flight.
    held: HashMap<(Class, Holder), usize>,
}

#[derive(Debug)]
struct Inner {
    limits: RequestLimits,
    /// Whose `X-Forwarded-For` names the client ([`client_addr`]).
    proxies: Arc<[ipnet::IpNet]>,
    counts: Mutex<Counts>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The state of [`limit`] and [`per_account`]: what is in flight.
#[derive(Debug, Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

/// A request counted against a budget or a share; dropping it gives the
/// place back.
#[derive(Debug)]
struct Permit {
    inner: Arc<Inner>,
    class: Class,
    holder: Option<Holder>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.inner.lock();
        match self.holder.take() {
            None => match self.class {
                Class::Api => counts.api -= 1,
                Class::Media => counts.media -= 1,
            },
            Some(holder) => {
                let key = (self.class, holder);
                if let Some(n) = counts.held.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        counts.held.remove(&key);
                    }
                }
            }
        }
    }
}

impl Limits {
    /// Nothing in flight yet.
    #[must_use]
    pub fn new(limits: RequestLimits) -> Self {
        Self::behind(limits, &[])
    }

    /// [`Limits::new`] for a gateway behind the reverse proxies `proxies`
    /// (`--trusted-proxies`): a request through one of them takes the
    /// share of the client the proxies name, not the proxy's.
    #[must_use]
    pub fn behind(limits: RequestLimits, proxies: &[ipnet::IpNet]) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                proxies: proxies.into(),
                counts: Mutex::new(Counts {
                    api: 0,
                    media: 0,
                    held: HashMap::default(),
                }),
            }),
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> RequestLimits {
        self.inner.limits
    }

    fn budget(&self, class: Class) -> usize {
        match class {
            Class::Api => self.inner.limits.api_in_flight,
            Class::Media => self.inner.limits.media_in_flight,
        }
    }

    fn share(&self, class: Class, holder: &Holder) -> usize {
        let l = &self.inner.limits;
        match (holder, class) {
            (Holder::Client(_), Class::Api) => l.client_api_in_flight,
            (Holder::Client(_), Class::Media) => l.client_media_in_flight,
            (Holder::Account(_), Class::Api) => l.account_api_in_flight,
            (Holder::Account(_), Class::Media) => l.account_media_in_flight,
        }
    }

    /// A place in `class`'s budget, if one is free.
    fn take(&self, class: Class) -> Option<Permit> {
        let max = self.budget(class);
        let mut counts = self.inner.lock();
        let used = match class {
            Class::Api => &mut counts.api,
            Class::Media => &mut counts.media,
        };
        if *used >= max {
            return None;
        }
        *used += 1;
        Some(Permit {
            inner: self.inner.clone(),
            class,
            holder: None,
        })
    }

    /// A place in `holder`'s share of `class`, if it has one left.
    fn take_share(&self, class: Class, holder: Holder) -> Option<Permit> {
        let max = self.share(class, &holder);
        let mut counts = self.inner.lock();
        let held = counts.held.entry((class, holder.clone())).or_insert(0);
        if *held >= max {
            if *held == 0 {
                counts.held.remove(&(class, holder));
            }
            return None;
        }
        *held += 1;
        Some(Permit {
            inner: self.inner.clone(),
            class,
            holder: Some(holder),
        })
    }

    /// Requests of `class` in flight now, in all.
    #[must_use]
    pub fn in_flight(&self, class: Class) -> usize {
        let counts = self.inner.lock();
        match class {
            Class::Api => counts.api,
            Class::Media => counts.media,
        }
    }

    /// Why the service should get no more traffic now (a budget at least
    /// [`NOT_READY_AT`] used), or `None`.
    #[must_use]
    pub fn saturated(&self) -> Option<String> {
        [Class::Api, Class::Media].into_iter().find_map(|class| {
            let (used, max) = (self.in_flight(class), self.budget(class));
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let nearly = used as f64 >= max as f64 * NOT_READY_AT;
            nearly.then(|| format!("{} requests in flight: {used} of {max}", class.name()))
        })
    }
}

/// A 429 or 503 refusal with `Retry-After`.
fn busy(status: StatusCode, message: String) -> Response {
    let mut res = ApiError::new(status, message).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    res
}

/// Whether a request is an upload (its body has its own idle rule): the
/// one-shot `POST /v1/videos`, a tus creation (which may carry data) or a
/// tus `PATCH`.
fn is_upload(req: &Request) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::POST => matches!(path, "/v1/videos" | "/v1/uploads" | "/v1/uploads/"),
        Method::PATCH => path.starts_with("/v1/uploads/"),
        _ => false,
    }
}

/// The query's length (414), checked on every route inside the bearer
/// check where there is one: a request with no token gets 401 whatever
/// else is wrong with it.
pub async fn query_length(req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("query: exceeds {MAX_QUERY_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The outer limits of every API request: the class's budget (503), the
/// client address's share of it (429), and the body's deadline. The places
/// are held until the response body is done.
pub async fn limit(State(limits): State<Limits>, mut req: Request, next: Next) -> Response {
    let class = Class::of(req.uri().path());
    let Some(total) = limits.take(class) else {
        return busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many {} requests in flight: try again shortly",
                class.name()
            ),
        );
    };
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let client_ip = client_addr::client_ip(peer, req.headers(), &limits.inner.proxies);
    let client = match client_ip {
        Some(ip) => match limits.take_share(class, Holder::Client(transport::client_of(ip))) {
            Some(permit) => Some(permit),
            None => {
                return busy(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many {} requests in flight from this client address",
                        class.name()
                    ),
                );
            }
        },
        None => None,
    };
    if !is_upload(&req) && !http_body::Body::is_end_stream(req.body()) {
        let timeout = limits.inner.limits.body_timeout;
        let body = std::mem::take(req.body_mut());
        *req.body_mut() = Body::new(Deadline::new(body, timeout));
    }
    held(next.run(req).await, [Some(total), client])
}

/// The account's share, inside the bearer check (which names the account):
/// 429 past it, held until the response body is done.
pub async fn per_account(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let Some(AuthUser(user)) = req.extensions().get::<AuthUser>().cloned() else {
        return next.run(req).await;
    };
    let class = Class::of(req.uri().path());
    let Some(permit) = limits.take_share(class, Holder::Account(user)) else {
        return busy(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many {} requests in flight for this account",
                class.name()
            ),
        );
    };
    held(next.run(req).await, [Some(permit), None])
}

/// `res` with `permits` held until its body is done.
fn held(res: Response, permits: [Option<Permit>; 2]) -> Response {
    let (parts, body) = res.into_parts();
    Response::from_parts(
        parts,
        Body::new(Guarded {
            inner: body,
            _permits: permits,
        }),
    )
}

pin_project_lite::pin_project! {
    /// A body that holds permits until it is dropped.
    struct Guarded {
        #[pin]
        inner: Body,
        _permits: [Option<Permit>; 2],
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits::new(RequestLimits {
            api_in_flight: 4,
            media_in_flight: 10,
            client_api_in_flight: 2,
            client_media_in_flight: 3,
            account_api_in_flight: 1,
            account_media_in_flight: 2,
            body_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn media_paths_are_told_from_the_api() {
        for media in [
            "/v1/videos/abc/original",
            "/v1/videos/abc/thumbnail.jpg",
            "/v1/videos/abc/hls/master.m3u8",
            "/v1/videos/abc/hls/480p/index.m3u8",
            "/v1/videos/abc/hls/480p/seg_001.ts",
            "/v1/play/p1.k.abc.1.sig/original",
            "/v1/play/p1.k.abc.1.sig/hls/480p/seg_001.ts",
        ] {
            assert_eq!(Class::of(media), Class::Media, "{media}");
        }
        for api in [
            "/v1/videos",
            "/v1/videos/abc",
            "/v1/videos/abc/job",
            "/v1/videos/abc/sessions",
            "/v1/videos/abc/playback",
            "/v1/videos//original",
            "/v1/auth/login",
            "/v2/videos/abc/original",
            "/health",
            "/",
            "",
        ] {
            assert_eq!(Class::of(api), Class::Api, "{api}");
        }
    }

    #[test]
    fn budgets_and_shares_hold_and_give_back() {
        let limits = small();
        let (a, b) = (
            Holder::Client(IpAddr::from([10, 0, 0, 1])),
            Holder::Client(IpAddr::from([10, 0, 0, 2])),
        );
        let a1 = limits.take_share(Class::Api, a.clone()).expect("a 1");
        let a2 = limits.take_share(Class::Api, a.clone()).expect("a 2");
        assert!(
            limits.take_share(Class::Api, a.clone()).is_none(),
            "a's share"
        );
        assert!(
            limits.take_share(Class::Media, a.clone()).is_some(),
            "media is apart"
        );
        let _b1 = limits.take_share(Class::Api, b).expect("b has its own");
        drop(a1);
        let _a3 = limits
            .take_share(Class::Api, a.clone())
            .expect("given back");
        drop(a2);

        let user = Holder::Account("u1".into());
        let u = limits.take_share(Class::Api, user.clone()).expect("u 1");
        assert!(limits.take_share(Class::Api, user.clone()).is_none());
        drop(u);
        assert!(limits.take_share(Class::Api, user).is_some());

        let all: Vec<Permit> = (0..4)
            .map(|_| limits.take(Class::Api).expect("room"))
            .collect();
        assert!(limits.take(Class::Api).is_none(), "the budget");
        assert!(limits.take(Class::Media).is_some(), "media has its own");
        assert_eq!(limits.in_flight(Class::Api), 4);
        drop(all);
        assert_eq!(limits.in_flight(Class::Api), 0);
    }

    #[test]
    fn no_memory_is_kept_for_holders_with_nothing_in_flight() {
        let limits = small();
        for i in 0..100u8 {
            let holder = Holder::Client(IpAddr::from([10, 0, 1, i]));
            drop(limits.take_share(Class::Media, holder));
        }
        let account = Holder::Account("full".into());
        let _held = limits.take_share(Class::Api, account.clone()).expect("one");
        assert!(limits.take_share(Class::Api, account).is_none());
        assert_eq!(limits.inner.lock().held.len(), 1);
    }

    #[test]
    fn readiness_turns_at_ninety_percent_of_a_budget() {
        let limits = small();
        let media: Vec<Permit> = (0..8)
            .map(|_| limits.take(Class::Media).expect("room"))
            .collect();
        assert_eq!(limits.saturated(), None, "8 of 10");
        let ninth = limits.take(Class::Media).expect("room");
        assert_eq!(
            limits.saturated().as_deref(),
            Some("media requests in flight: 9 of 10")
        );
        drop((media, ninth));
        let api: Vec<Permit> = (0..4)
            .map(|_| limits.take(Class::Api).expect("room"))
            .collect();
        assert_eq!(
            limits.saturated().as_deref(),
            Some("API requests in flight: 4 of 4")
        );
        drop(api);
        assert_eq!(limits.saturated(), None);
    }
}
