//! Fuzz body for the gateway's HTTP inputs: arbitrary requests (method,
//! path, query, `Range`, content type, body) through the real router, with
//! no service behind it, so everything up to the first downstream call is
//! exercised: path and query parsing, ranges, upload checks, JSON bodies.
//! Every answer must be a non-5xx status other than the 503 of the missing
//! services, and every error must carry a JSON body naming it.

use std::sync::{Arc, OnceLock};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::blob::memory::MemoryBlobStore;
use crate::bus::memory::MemoryBus;
use crate::client::{ClientPool, PoolConfig};
use crate::kernel::Runtime;
use crate::middleware::auth::Keyring;
use crate::registry::memory::MemoryRegistry;
use crate::services::gateway;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let registry = Arc::new(MemoryRegistry::new());
        let rt = Runtime {
            registry: registry.clone(),
            bus: Arc::new(MemoryBus::new()),
            blobs: Arc::new(MemoryBlobStore::new()),
            pool: ClientPool::new(registry, PoolConfig::new(Keyring::generate("fuzz"), "fuzz")),
            keys: Keyring::generate("fuzz"),
            metrics: crate::middleware::metrics::Metrics::default(),
        };
        // As served (see services::start): unknown paths get the JSON 404.
        let router = runtime
            .block_on(async { gateway::router(rt, 1 << 20) })
            .fallback(gateway::not_found);
        Harness { runtime, router }
    })
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

/// The request `data` describes: a selector byte, then fields separated
/// by 0xFF: path fill, query, `Range`, content type, body.
fn request(data: &[u8]) -> Option<Request<axum::body::Body>> {
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
    req.body(axum::body::Body::from(body)).ok()
}

/// Sends one request described by `data` and judges the answer.
pub fn gateway_requests(data: &[u8]) {
    let Some(req) = request(data) else {
        return;
    };
    let h = harness();
    let shown = format!("{} {}", req.method(), req.uri());
    h.runtime.block_on(async {
        let res = h.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{shown}: {status}"
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
    });
}
