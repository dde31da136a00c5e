//! Fuzz body for the gateway's HTTP inputs: arbitrary requests (method,
//! path, query, `Range`, content type, body) through the real router, with
//! no service behind it, so everything up to the first downstream call is
//! exercised: path and query parsing, ranges, upload checks, JSON bodies.
//! Every answer must be a non-5xx status other than the 503 of the missing
//! services, and every error must carry a JSON body naming it.
//!
//! The auth service runs in-process (loopback socket) so the bearer check
//! is real: most inputs carry a valid access token, minted with the
//! service's secret, and reach the handlers; the top selector values send
//! no token or a garbage one and must get a JSON 401.
//!
//! Cheap per input: router, auth service, runtime (current-thread) and the
//! token are made once and reused; a request goes through the router with
//! `oneshot` (no socket); the valid token is checked once and then found in
//! the gateway's token cache, so only garbage tokens reach auth's socket.

use std::sync::{Arc, Mutex, OnceLock};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use streamgate::blob::memory::MemoryBlobStore;
use streamgate::bus::memory::MemoryBus;
use streamgate::client::{ClientPool, PoolConfig};
use streamgate::kernel::Runtime;
use streamgate::middleware::auth::Keyring;
use streamgate::registry::Registry as _;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::services::auth::Secret;
use streamgate::services::auth::token::{ACCESS_TTL, Kind, Tokens};
use streamgate::services::{self, Common, ServiceKind, gateway};

struct Harness {
    executor: tokio::runtime::Runtime,
    router: axum::Router,
    _auth: services::RunningService,
    tokens: Tokens,
    /// The current access token and its expiry (Unix ms).
    token: Mutex<(String, u64)>,
}

impl Harness {
    /// A valid access token, minted again a minute before it expires (so
    /// long runs keep passing the check; one token means cache hits).
    fn token(&self) -> String {
        let now = streamgate::rt::unix_ms();
        let mut t = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now + 60_000 >= t.1 {
            let issued = self
                .tokens
                .issue("fuzz-user", Kind::Access, vec![], ACCESS_TTL, now)
                .expect("a token");
            *t = (issued.token, issued.claims.expires_at_ms());
        }
        t.0.clone()
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let registry = Arc::new(MemoryRegistry::new());
        let keys = Keyring::generate("fuzz");
        let runtime = Runtime {
            registry: registry.clone(),
            bus: Arc::new(MemoryBus::new()),
            blobs: Arc::new(MemoryBlobStore::new()),
            pool: ClientPool::new(registry.clone(), pool_config(keys.clone())),
            keys,
            metrics: streamgate::middleware::metrics::Metrics::default(),
            ready: Default::default(),
        };
        let secret = Secret::random();
        let common = Common {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Common::new(ServiceKind::Auth, [127, 0, 0, 1].into())
        };
        let config = services::auth::Config {
            secret: Some(secret.clone()),
            ..Default::default()
        };
        let (router, auth) = executor.block_on(async {
            let auth = services::start(&config.into(), &common, &runtime)
                .await
                .expect("auth starts");
            registry.register(auth.info()).await.expect("register");
            // As served (see services::start): unknown paths get the JSON 404.
            (
                gateway::router(runtime, 1 << 20).fallback(gateway::not_found),
                auth,
            )
        });
        Harness {
            executor,
            router,
            _auth: auth,
            tokens: Tokens::new(&secret),
            token: Mutex::new((String::new(), 0)),
        }
    })
}

/// The pool's settings: the defaults, but retries without a backoff. With
/// no service behind the router every call to one fails UNAVAILABLE and is
/// retried; the default backoff (100 ms and up) made the harness spend most
/// of its time asleep (about 20 ms an input on average). The retry path
/// runs all the same, and the budget still bounds it.
fn pool_config(keys: Keyring) -> PoolConfig {
    let mut config = PoolConfig::new(keys, "fuzz");
    config.retry.backoff = streamgate::resilience::backoff::Backoff {
        initial: std::time::Duration::ZERO,
        max: std::time::Duration::ZERO,
        multiplier: 1.0,
    };
    config
}

const PATHS: [&str; 8] = [
    "/v1/videos",
    "/v1/videos/",
    "/v1/videos//original",
    "/v1/videos//hls/master.m3u8",
    "/v1/videos//hls//index.m3u8",
    "/v1/videos//hls//",
    "/v1/jobs/",
    "/v1/videos//job",
];

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::PUT,
];

/// Selector values from here on send no valid token: odd ones none, even
/// ones garbage.
const NO_TOKEN: u8 = 0xE0;

/// The request `data` describes: a selector byte, then fields separated
/// by 0xFF: path fill, query, `Range`, content type, body. `token` is the
/// valid access token.
fn request(data: &[u8], token: &str) -> Option<Request<axum::body::Body>> {
    let (&selector, rest) = data.split_first()?;
    let mut fields = rest.splitn(5, |&b| b == 0xFF);
    let mut field = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (fill, query, range, ctype) = (field(), field(), field(), field());
    let body = fields.next().unwrap_or_default().to_vec();
    let template = PATHS[usize::from(selector) % PATHS.len()];
    // Each empty segment of the template takes the fill.
    let path = template
        .replace("//", &format!("/{fill}/"))
        .replace("/v1/jobs/", &format!("/v1/jobs/{fill}"));
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut req = Request::builder()
        .method(METHODS[usize::from(selector / 8) % METHODS.len()].clone())
        .uri(uri);
    if !range.is_empty() {
        req = req.header("range", range);
    }
    if !ctype.is_empty() {
        req = req.header("content-type", ctype);
    }
    if selector < NO_TOKEN {
        req = req.header("authorization", format!("Bearer {token}"));
    } else if selector % 2 == 0 {
        let garbage: String = fill
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        req = req.header("authorization", format!("Bearer x{garbage}"));
    }
    req.body(axum::body::Body::from(body)).ok()
}

/// Sends one request described by `data` and judges the answer.
pub fn gateway_requests(data: &[u8]) {
    let _ = answer(data);
}

/// Sends one request described by `data`, judges the answer and returns
/// its status (`None` if `data` describes no request).
fn answer(data: &[u8]) -> Option<StatusCode> {
    let h = harness();
    let req = request(data, &h.token())?;
    let authorized = data.first().is_some_and(|&s| s < NO_TOKEN);
    let shown = format!("{} {}", req.method(), req.uri());
    h.executor.block_on(async {
        let res = h.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{shown}: {status}"
        );
        assert!(
            authorized || !status.is_success(),
            "{shown}: {status} without a valid token"
        );
        if status.is_client_error() || status.is_server_error() {
            let body = res.into_body().collect().await.expect("body").to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{shown}: {status} without a JSON body ({e})"));
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{shown}: {status} without an error message"
            );
        }
        Some(status)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_with_a_token_get_past_the_check() {
        // GET /v1/videos: with the token, the missing metadata service (503).
        assert_eq!(answer(&[0]), Some(StatusCode::SERVICE_UNAVAILABLE));
        // GET with a garbage token (even selector), GET without one (odd): 401.
        assert_eq!(answer(&[240]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(answer(b"\xF7v1"), Some(StatusCode::UNAUTHORIZED));
        // A media route takes no token for a public video: without one it
        // must ask metadata, missing here (503), never serve.
        assert_eq!(answer(b"\xF3v1"), Some(StatusCode::SERVICE_UNAVAILABLE));
        // A handler's own check, past the token: a bad video id.
        assert_eq!(answer(b"\x02a%20b"), Some(StatusCode::BAD_REQUEST));
    }
}
