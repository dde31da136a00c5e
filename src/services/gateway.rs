//! api-gateway (9090): the public HTTP/JSON API; it reaches the other
//! services only through the client pool and maps their statuses to HTTP.

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::routing::{get, head, options, post};

use crate::kernel::{KernelError, Runtime};
use crate::rt::transport::EdgeLimits;
use crate::services::{Common, Domain, media};

pub mod access;
mod accounts;
pub mod bearer;
pub mod client_addr;
pub mod cors;
pub mod deadline;
pub mod error;
pub mod events;
pub mod grant;
mod jobs;
mod json;
pub mod limit;
pub mod local;
mod playback;
pub mod query;
pub mod range;
pub mod rate;
mod sessions;
pub mod status;
pub mod token_cache;
pub mod tus;
mod upload;
pub mod validators;
pub mod video_cache;
mod videos;
pub mod web;

pub use error::ApiError;

/// The gateway's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies);
    /// empty: the header is ignored ([`client_addr`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Requests in flight and body deadlines (the router's limits).
    pub limits: limit::RequestLimits,
    /// Connections and their timeouts (the edge server's limits).
    pub edge: EdgeLimits,
    /// TLS on the public port (`--http-tls-cert`, `--http-tls-key`).
    pub tls: Option<crate::rt::transport::EdgeTls>,
    /// Origins whose pages may call the API (CORS).
    pub cors: cors::Origins,
    /// Resumable uploads' limits (`/v1/uploads/`).
    pub tus: tus::Limits,
    /// Rates of sign-ups, log-ins, refreshes, upload starts and playback
    /// grants per client ([`rate`]).
    pub rates: rate::Rates,
    /// Event streams open at once (`/v1/events`).
    pub events: events::Limits,
    /// Where players fetch media by signed URL (`--media-url`): the
    /// streaming service's media port as players reach it, e.g.
    /// `https://media.example.com`; `None`: this gateway's own paths.
    pub media_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: crate::services::MAX_UPLOAD_BYTES,
            trusted_proxies: Vec::new(),
            limits: limit::RequestLimits::default(),
            edge: EdgeLimits::default(),
            tls: None,
            cors: cors::Origins::None,
            tus: tus::Limits::default(),
            rates: rate::Rates::default(),
            events: events::Limits::default(),
            media_url: None,
        }
    }
}

/// What every handler gets: cheap to clone (one reference count; axum
/// clones the state for every request, some routes more than once).
#[derive(Clone)]
pub struct Api(std::sync::Arc<ApiState>);

impl std::ops::Deref for Api {
    type Target = ApiState;

    fn deref(&self) -> &ApiState {
        &self.0
    }
}

/// What [`Api`] holds.
pub struct ApiState {
    runtime: Runtime,
    max_upload_bytes: u64,
    /// Where originals lie, for those sent from this host's files.
    located: std::sync::Arc<local::Located>,
    /// Whose `X-Forwarded-For` to believe.
    trusted_proxies: client_addr::TrustedProxies,
    /// Signs and checks playback URLs.
    grants: grant::Grants,
    /// Checks bearer tokens (and forgets those logged out).
    verifier: bearer::Verifier,
    /// Video records media requests read lately.
    recent: std::sync::Arc<access::Recent>,
    /// Resumable uploads: their limits, those being written here.
    tus: std::sync::Arc<tus::Tus>,
    /// Server-sent event streams open (`/v1/events`).
    streams: std::sync::Arc<events::Streams>,
    /// Where signed playback URLs point (see [`Config::media_url`]).
    media_url: Option<std::sync::Arc<str>>,
    /// Whether these routes are streaming's media port, its store this
    /// process's own: files are located here, not through a call.
    here: bool,
}

impl axum::extract::FromRef<Api> for client_addr::TrustedProxies {
    fn from_ref(api: &Api) -> Self {
        api.trusted_proxies.clone()
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("max_upload_bytes", &self.max_upload_bytes)
            .finish_non_exhaustive()
    }
}

/// A `{id}` path parameter, or why it is missing.
pub(crate) type IdPath = Result<Path<String>, PathRejection>;

/// The video id of a path, checked.
fn video_id(path: IdPath) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    media::check_id("video id", &id).map_err(ApiError::bad_request)?;
    Ok(id)
}

/// The OpenAPI 3.1 description of these routes (`docs/openapi.json`),
/// served at `/openapi.json`. Written by hand; `router_openapi_tests`
/// checks that it names every route the router serves and nothing else,
/// and `tests/openapi.rs` runs schemathesis with it against the monolith.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// `GET /openapi.json`: [`OPENAPI_JSON`].
async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
}

/// The API's routes over `runtime`'s client pool with the default limits:
/// the account routes open, every other `/v1/` route behind the
/// bearer-token check; no trusted proxies.
pub fn router(runtime: Runtime, max_upload_bytes: u64) -> Router {
    router_with(
        runtime,
        &Config {
            max_upload_bytes,
            ..Config::default()
        },
    )
}

/// [`router`] with every setting of `config`.
pub fn router_with(runtime: Runtime, config: &Config) -> Router {
    routes(
        runtime,
        config,
        limit::Limits::behind(config.limits, &config.trusted_proxies),
    )
}

/// The API's routes (see [`router`]) with `config`'s settings, within
/// `limits` (shared with the readiness check).
pub fn routes(runtime: Runtime, config: &Config, limits: limit::Limits) -> Router {
    let api = api(runtime, config, false);
    let verifier = api.verifier.clone();
    // Sign-ups, log-ins and refreshes per client address, upload starts
    // and playback grants per account (after the bearer check below).
    let rates = (
        rate::Limiters::new(config.rates),
        api.trusted_proxies.clone(),
    );
    // Open to all: the account routes and the API's description.
    let open = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/signup", post(accounts::signup))
        .route("/v1/auth/login", post(accounts::login))
        .route("/v1/auth/refresh", post(accounts::refresh))
        .route_layer(axum::middleware::from_fn_with_state(
            rates.clone(),
            rate::limit,
        ));
    let granted = granted();
    // Media: a public video's plays with no credential (the handlers
    // decide, `access`); a token, when sent, is checked as everywhere.
    let media = Router::new()
        .route("/v1/videos/{id}/original", get(playback::original))
        .route("/v1/videos/{id}/hls/master.m3u8", get(playback::master))
        .route("/v1/videos/{id}/thumbnail.jpg", get(playback::thumbnail))
        .route(
            "/v1/videos/{id}/hls/{rendition}/index.m3u8",
            get(playback::media_playlist),
        )
        .route(
            "/v1/videos/{id}/hls/{rendition}/{segment}",
            get(playback::segment),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            limit::per_account,
        ))
        .route_layer(axum::middleware::from_fn(limit::query_length))
        .route_layer(axum::middleware::from_fn_with_state(
            verifier.clone(),
            bearer::optional,
        ));
    let router = Router::new()
        .route("/v1/videos", get(videos::list).post(upload::create))
        .route(
            "/v1/videos/{id}",
            get(videos::get).patch(videos::patch).delete(videos::delete),
        )
        .route("/v1/videos/{id}/playback", post(grant::create))
        .route("/v1/auth/logout", post(accounts::logout))
        .route("/v1/videos/{id}/sessions", post(sessions::start))
        .route(
            "/v1/videos/{id}/sessions/{session_id}/stop",
            post(sessions::stop),
        )
        .route("/v1/videos/{id}/job", get(jobs::of_video))
        .route("/v1/jobs/{job_id}", get(jobs::get))
        // Resumable uploads (tus 1.0.0); their OPTIONS is open (below).
        .route("/v1/uploads", post(tus::create))
        .route("/v1/uploads/", post(tus::create))
        .route(
            "/v1/uploads/{id}",
            head(tus::head).patch(tus::patch).delete(tus::delete),
        )
        .route("/v1/status", get(status::status))
        .route("/v1/alerts", get(status::alerts))
        // Server-sent events of videos' states (the web app's library).
        .route("/v1/events", get(events::events))
        // Layers added later run first: the bearer check names the account
        // whose share the request then takes, and whose rates it counts; a
        // request with no token gets 401 before anything else is said of it.
        .route_layer(axum::middleware::from_fn_with_state(rates, rate::limit))
        .route_layer(axum::middleware::from_fn_with_state(
            limits.clone(),
            limit::per_account,
        ))
        .route_layer(axum::middleware::from_fn(limit::query_length))
        .route_layer(axum::middleware::from_fn_with_state(
            verifier,
            bearer::require,
        ))
        // The web app (open: the page signs in through the account routes).
        .route("/", get(web::index))
        .route("/app/{file}", get(web::file))
        .merge(media)
        .merge(
            open.merge(granted)
                .route("/v1/uploads", options(tus::options))
                .route("/v1/uploads/", options(tus::options))
                .route("/v1/uploads/{id}", options(tus::options))
                .route_layer(axum::middleware::from_fn(limit::query_length)),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(limits, limit::limit));
    with_cors(router, config)
}

/// Outermost: a preflight is answered before any limit or route, and every
/// answer (a 429 too) carries the CORS headers a page needs to read it.
fn with_cors(router: Router, config: &Config) -> Router {
    match cors::layer(&config.cors) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// What the handlers share, over `runtime`, with `config`'s settings;
/// `here`: for streaming's media port ([`media_routes`]).
fn api(runtime: Runtime, config: &Config, here: bool) -> Api {
    Api(std::sync::Arc::new(ApiState {
        grants: grant::Grants::new(&runtime.keys),
        verifier: bearer::Verifier::new(runtime.pool.clone()),
        recent: std::sync::Arc::default(),
        tus: std::sync::Arc::new(tus::Tus::new(config.tus)),
        streams: std::sync::Arc::new(events::Streams::new(config.events)),
        runtime,
        max_upload_bytes: config.max_upload_bytes,
        located: std::sync::Arc::default(),
        trusted_proxies: client_addr::TrustedProxies(config.trusted_proxies.clone().into()),
        media_url: config.media_url.as_deref().map(Into::into),
        here,
    }))
}

/// Signed playback URLs: the grant in the path is the credential.
fn granted() -> Router<Api> {
    Router::new()
        .route("/v1/play/{grant}/original", get(grant::original))
        .route("/v1/play/{grant}/thumbnail.jpg", get(grant::thumbnail))
        .route("/v1/play/{grant}/hls/master.m3u8", get(grant::master))
        .route(
            "/v1/play/{grant}/hls/{rendition}/index.m3u8",
            get(grant::media_playlist),
        )
        .route(
            "/v1/play/{grant}/hls/{rendition}/{segment}",
            get(grant::segment),
        )
}

/// The signed playback URLs' routes alone (`/v1/play/{grant}/...`), for the
/// streaming service's media port: the same handlers, caching headers,
/// CORS and request limits as the gateway's, over streaming's own store
/// (its files sent by `sendfile(2)`; see
/// [`crate::rt::transport::serve_edge`]). Video records come from the
/// cache and metadata, playlists and thumbnails from streaming, as on a
/// gateway.
pub fn media_routes(runtime: Runtime, config: &Config) -> Router {
    let limits = limit::Limits::behind(config.limits, &config.trusted_proxies);
    let router = granted()
        .route_layer(axum::middleware::from_fn(limit::query_length))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api(runtime, config, true))
        .layer(axum::middleware::from_fn_with_state(limits, limit::limit));
    with_cors(router, config)
}

/// The answer to a path the API does not have (a JSON 404, like every
/// other error).
pub async fn not_found() -> ApiError {
    ApiError::new(http::StatusCode::NOT_FOUND, "no such route")
}

/// The answer to a method a path does not take (a JSON 405).
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// The service's public HTTP routes with the edge's limits and a readiness
/// check (not ready while a budget of requests in flight is nearly used
/// up), and the consumers that invalidate cached videos on Metadata*
/// events.
///
/// # Errors
/// The bus refused a subscription.
pub async fn domain(
    config: &Config,
    _common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let subscriptions = video_cache::subscribe(runtime)
        .await
        .map_err(|e| KernelError::start("api-gateway", "the event bus", e))?;
    let limits = limit::Limits::behind(config.limits, &config.trusted_proxies);
    let saturated = limits.clone();
    Ok(Domain {
        http: Some(routes(runtime.clone(), config, limits)),
        edge: config.edge,
        tls: config.tls.clone(),
        ready: Some(std::sync::Arc::new(move || saturated.saturated())),
        background: crate::services::Background {
            subscriptions,
            // Expired resumable uploads' bytes (every instance sweeps;
            // removing twice is harmless).
            tasks: vec![crate::rt::spawn(tus::sweep_loop(
                runtime.blobs.clone(),
                config.tus,
            ))],
            ..crate::services::Background::default()
        },
        ..Domain::default()
    })
}

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_tests.rs"]
mod router_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_auth_tests.rs"]
mod router_auth_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_cache_tests.rs"]
mod router_cache_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_limit_tests.rs"]
mod router_limit_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_visibility_tests.rs"]
mod router_visibility_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_tus_tests.rs"]
mod router_tus_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_openapi_tests.rs"]
mod router_openapi_tests;

#[cfg(all(test, not(madsim)))]
#[path = "gateway/router_web_tests.rs"]
mod router_web_tests;
