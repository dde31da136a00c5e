//! Service-to-service authentication: every call carries a signed, expiring
//! service identity in `x-service-token`; the server layer rejects missing,
//! expired or forged ones with UNAUTHENTICATED and hands the verified caller
//! to the handler (and to the rate limiter) as [`Caller`].
//!
//! Token: `v1.<key id>.<service>.<expires unix ms>.<base64url HMAC-SHA256>`
//! over everything before the signature. Keys carry ids so they can rotate:
//! the verifier accepts the current and the previous key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderValue, Request, Response};
use sha2::Sha256;
use tower::{Layer, Service};

use super::policy::CallPolicy;
use crate::rt::transport::valid_service;
use crate::rt::{self, transport};

/// The header carrying the token.
pub const HEADER: &str = "x-service-token";
/// The same, made once: a lookup by `&str` parses the name on every call.
const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 512;
/// Lifetime of minted tokens.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Clock skew tolerated between services.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Paths served without a token (stock health and readiness probes carry
/// none, nor do reflection clients such as `grpcurl`, which only learn the
/// schema; metrics are on the admin listener, see
/// `services::host::serve_admin`).
pub const EXEMPT_PREFIXES: [&str; 5] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/health",
    "/ready",
];

/// A signing key with its id.
#[derive(Clone)]
pub struct Key {
    /// Short id, `[A-Za-z0-9_-]{1,16}`, named in each token.
    pub id: String,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Key {
    /// A key; the secret must be at least 32 bytes.
    ///
    /// # Errors
    /// [`AuthError::BadKey`] for a short secret or a malformed id.
    pub fn new(id: &str, secret: &[u8]) -> Result<Self, AuthError> {
        let id_ok = !id.is_empty()
            && id.len() <= 16
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !id_ok || secret.len() < 32 {
            return Err(AuthError::BadKey);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.into(),
        })
    }

    /// A key of the same id for another `purpose` (HMAC-SHA256 of the
    /// purpose under this key): tokens of one kind, signed with it, never
    /// verify as tokens of another, and it rotates with this key.
    #[must_use]
    pub fn derive(&self, purpose: &str) -> Self {
        let secret = self.mac(purpose.as_bytes()).finalize().into_bytes();
        Self {
            id: self.id.clone(),
            secret: secret.as_slice().into(),
        }
    }

    /// The HMAC-SHA256 of `message` under this key.
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        self.mac(message).finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC-SHA256 of `message` under this key
    /// (compared in constant time).
    #[must_use]
    pub fn verifies(&self, message: &[u8], tag: &[u8]) -> bool {
        self.mac(message).verify_slice(tag).is_ok()
    }

    fn mac(&self, message: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(message);
        mac
    }
}

/// The keys a node signs and verifies with.
#[derive(Debug, Clone)]
pub struct Keyring {
    /// Signs new tokens; also verifies.
    pub current: Key,
    /// Still verifies (during a rotation).
    pub previous: Option<Key>,
}

impl Keyring {
    /// A keyring with one key.
    #[must_use]
    pub fn new(current: Key) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// The keyring of [`Key::derive`]d keys for `purpose`.
    #[must_use]
    pub fn derive(&self, purpose: &str) -> Self {
        Self {
            current: self.current.derive(purpose),
            previous: self.previous.as_ref().map(|k| k.derive(purpose)),
        }
    }

    /// The key named `id`, current or previous.
    #[must_use]
    pub fn find(&self, id: &str) -> Option<&Key> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
    }

    /// A keyring with a fresh random 256-bit key (one process, e.g. the
    /// monolith, where every service shares it in memory).
    #[must_use]
    pub fn generate(id: &str) -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rt::rng(), &mut secret);
        Self::new(Key::new(id, &secret).expect("a generated key is well-formed"))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token on the call.
    #[error("missing service token ({HEADER})")]
    Missing,
    /// Not of the token's shape.
    #[error("malformed service token")]
    Malformed,
    /// Signed by a key this node does not know.
    #[error("service token signed with unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("service token signature is invalid")]
    Forged,
    /// Past its expiry.
    #[error("service token expired")]
    Expired,
    /// A key that is too short or badly named.
    #[error("signing keys need an id of [A-Za-z0-9_-]{{1,16}} and at least 32 secret bytes")]
    BadKey,
}

/// Mints a token for `service`, valid until `expires_ms` (Unix ms).
///
/// # Panics
/// If `service` is not `[A-Za-z0-9-]{1,64}` (a configuration bug).
#[must_use]
pub fn mint(key: &Key, service: &str, expires_ms: u64) -> String {
    assert!(
        valid_service(service),
        "service names are [A-Za-z0-9-]{{1,64}}: {service:?}"
    );
    let body = format!("v1.{}.{service}.{expires_ms}", key.id);
    let sig = URL_SAFE_NO_PAD.encode(key.mac(body.as_bytes()).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Verifies `token` at `now_ms`; returns the calling service.
///
/// # Errors
/// Why the token is refused.
pub fn verify(keys: &Keyring, token: &[u8], now_ms: u64) -> Result<Arc<str>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
    let (body, sig) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let mut parts = body.split('.');
    let (Some("v1"), Some(kid), Some(service), Some(expires), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| AuthError::Malformed)?;
    if !valid_service(service) {
        return Err(AuthError::Malformed);
    }
    let key = [Some(&keys.current), keys.previous.as_ref()]
        .into_iter()
        .flatten()
        .find(|k| k.id == kid)
        .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(16).collect()))?;
    // Decoded on the stack: an HMAC-SHA256 tag is 32 bytes; room for more
    // only so that a longer one is refused as forged, not as malformed.
    let mut tag = [0u8; 64];
    let len = URL_SAFE_NO_PAD
        .decode_slice(sig, &mut tag)
        .map_err(|_| AuthError::Malformed)?;
    key.mac(body.as_bytes())
        .verify_slice(&tag[..len])
        .map_err(|_| AuthError::Forged)?;
    let skew = u64::try_from(MAX_SKEW.as_millis()).unwrap_or(u64::MAX);
    if now_ms > expires.saturating_add(skew) {
        return Err(AuthError::Expired);
    }
    Ok(service.into())
}

/// The verified calling service, as a request extension (shared with the
/// connection's certificate identity under mutual TLS: no copy per call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

/// Server side: establishes the caller of every call (health and
/// readiness exempt) and checks it against the call policy, if there is
/// one. The caller is the service its certificate names when the call came
/// over mutual TLS ([`transport::MtlsPeer`]; no token is needed then), else
/// the one its service token names.
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    keys: Arc<Keyring>,
    policy: Option<Arc<CallPolicy>>,
}

impl VerifyLayer {
    /// Verifies against `keys`, with no call policy (every verified caller
    /// may call every method).
    #[must_use]
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys: Arc::new(keys),
            policy: None,
        }
    }

    /// Also refuses, with PERMISSION_DENIED, every call `policy` does not
    /// allow.
    #[must_use]
    pub fn with_policy(mut self, policy: Option<Arc<CallPolicy>>) -> Self {
        self.policy = policy;
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = Verify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Verify {
            inner,
            keys: self.keys.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// See [`VerifyLayer`].
#[derive(Debug, Clone)]
pub struct Verify<S> {
    inner: S,
    keys: Arc<Keyring>,
    policy: Option<Arc<CallPolicy>>,
}

fn refusal<ResBody: Default>(status: tonic::Status) -> Response<ResBody> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    Response::from_parts(parts, ResBody::default())
}

impl<S, B, ResBody> Service<Request<B>> for Verify<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = VerifyFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if EXEMPT_PREFIXES
            .iter()
            .any(|p| req.uri().path().starts_with(p))
        {
            return VerifyFuture::Inner {
                inner: self.inner.call(req),
            };
        }
        // The certificate's identity when there is one: no header lookup.
        let verdict = match req.extensions().get::<transport::MtlsPeer>() {
            Some(peer) => Ok(peer.service.clone()),
            None => match req.headers().get(&NAME) {
                None => Err(AuthError::Missing),
                Some(token) => verify(&self.keys, token.as_bytes(), rt::unix_ms()),
            },
        };
        let service = match verdict {
            Ok(service) => service,
            Err(e) => {
                tracing::debug!(path = req.uri().path(), error = %e, "refused a call");
                return VerifyFuture::Refused {
                    response: Some(refusal(tonic::Status::unauthenticated(e.to_string()))),
                };
            }
        };
        if let Some(policy) = &self.policy
            && !policy.allows(&service, req.uri().path())
            && !rt::faults::injected(rt::faults::Bug::PolicySkipped)
        {
            // The path is logged as sent, bounded: the caller is verified,
            // but may be compromised.
            let path: String = req.uri().path().chars().take(160).collect();
            tracing::warn!(caller = &*service, path, "call refused by the call policy");
            return VerifyFuture::Refused {
                response: Some(refusal(tonic::Status::permission_denied(format!(
                    "the call policy does not allow {service} to call {path}"
                )))),
            };
        }
        req.extensions_mut().insert(Caller(service));
        VerifyFuture::Inner {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, or the refusal.
    #[project = VerifyProj]
    pub enum VerifyFuture<F, ResBody> {
        /// Verified: the inner service's future.
        Inner { #[pin] inner: F },
        /// Refused: a ready UNAUTHENTICATED or PERMISSION_DENIED response.
        Refused { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody, E> Future for VerifyFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            VerifyProj::Inner { inner } => inner.poll(cx),
            VerifyProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

/// Client side: attaches a token for this service, minted from `keys` and
/// renewed when it has less than a fifth of its lifetime left.
#[derive(Debug, Clone)]
pub struct AttachLayer {
    state: Arc<AttachState>,
}

#[derive(Debug)]
struct AttachState {
    key: Key,
    service: String,
    on: bool,
    cached: std::sync::Mutex<Option<(HeaderValue, u64)>>,
}

impl AttachLayer {
    /// Attaches tokens naming `service`, signed with `keys.current`.
    ///
    /// # Panics
    /// If `service` is not `[A-Za-z0-9-]{1,64}`.
    #[must_use]
    pub fn new(keys: &Keyring, service: &str) -> Self {
        assert!(
            valid_service(service),
            "service names are [A-Za-z0-9-]{{1,64}}: {service:?}"
        );
        let state = AttachState {
            key: keys.current.clone(),
            service: service.to_owned(),
            on: true,
            cached: Default::default(),
        };
        Self {
            state: Arc::new(state),
        }
    }

    /// The same, attaching nothing when `on` is false (calls over mutual
    /// TLS, where the certificate names the caller).
    #[must_use]
    pub fn enabled(self, on: bool) -> Self {
        Self {
            state: Arc::new(AttachState {
                key: self.state.key.clone(),
                service: self.state.service.clone(),
                on,
                cached: Default::default(),
            }),
        }
    }

    fn token(&self) -> HeaderValue {
        let now = rt::unix_ms();
        let ttl = u64::try_from(TOKEN_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut cached = self
            .state
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((token, expires)) if now + ttl / 5 < *expires => token.clone(),
            _ => {
                let expires = now + ttl;
                let token =
                    HeaderValue::try_from(mint(&self.state.key, &self.state.service, expires))
                        .expect("tokens are ASCII");
                *cached = Some((token.clone(), expires));
                token
            }
        }
    }
}

impl<S> Layer<S> for AttachLayer {
    type Service = Attach<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Attach {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AttachLayer`].
#[derive(Debug, Clone)]
pub struct Attach<S> {
    inner: S,
    layer: AttachLayer,
}

impl<S, B> Service<Request<B>> for Attach<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.layer.state.on {
            req.headers_mut().insert(NAME, self.layer.token());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests;
