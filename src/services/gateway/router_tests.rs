//! The gateway's router against the real streaming and auth services, over
//! real sockets and the client pool (no metadata, upload or worker service
//! runs). Requests carry a signed-up user's bearer token unless they set
//! their own `Authorization`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::router;
use crate::blob::BlobStore;
use crate::blob::memory::MemoryBlobStore;
use crate::bus::memory::MemoryBus;
use crate::client::{ClientPool, PoolConfig};
use crate::kernel::Runtime;
use crate::middleware::auth::Keyring;
use crate::proto::SignUpRequest;
use crate::registry::Registry as _;
use crate::registry::memory::MemoryRegistry;
use crate::services::ServiceKind;
use crate::services::auth::Secret;
use crate::services::{self, Common, ServiceConfig, media};

pub(super) struct Fixture {
    pub(super) app: axum::Router,
    pub(super) runtime: Runtime,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) token: String,
    /// The user the token is for.
    pub(super) user_id: String,
    /// Services started for this test, stopped with it.
    pub(super) kept: Vec<services::RunningService>,
    _streaming: services::RunningService,
    _auth: services::RunningService,
}

/// The auth service's signing secret in these tests.
pub(super) fn auth_secret() -> Secret {
    Secret::new(vec![42u8; 32])
}

pub(super) async fn fixture() -> Fixture {
    fixture_with(Arc::new(MemoryBlobStore::new())).await
}

/// The fixture with a metadata service too (media routes read the video's
/// record: who may play it, its caching headers).
pub(super) async fn media_fixture() -> Fixture {
    let mut f = fixture().await;
    with_metadata(&mut f).await;
    f
}

/// The fixture (with metadata) over a file blob store in a scratch
/// directory (kept while the directory is).
pub(super) async fn file_fixture() -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = crate::blob::fs::FsBlobStore::open(dir.path()).expect("store");
    let mut f = fixture_with(Arc::new(store)).await;
    with_metadata(&mut f).await;
    (f, dir)
}

/// Starts a `kind` service on `f`'s runtime and registers it.
pub(super) async fn start_service(f: &Fixture, kind: ServiceKind) -> services::RunningService {
    let common = Common {
        check_interval: Duration::from_secs(3600),
        ..Common::ephemeral()
    };
    let service = services::start(&ServiceConfig::new(kind), &common, &f.runtime)
        .await
        .expect("starts");
    f.runtime
        .registry
        .register(service.info())
        .await
        .expect("register");
    service
}

/// Starts a metadata service (its catalog in memory) for `f`.
pub(super) async fn with_metadata(f: &mut Fixture) {
    let metadata = start_service(f, ServiceKind::Metadata).await;
    f.kept.push(metadata);
}

/// Records a READY video `id` of `owner` with `visibility` in metadata.
pub(super) async fn put_video(
    f: &Fixture,
    id: &str,
    owner: &str,
    visibility: crate::proto::Visibility,
) -> crate::proto::Video {
    use crate::proto::{CreateVideoRequest, UpdateVideoRequest, VideoState};
    let mut metadata = f.runtime.pool.metadata().await.expect("metadata");
    metadata
        .create_video(CreateVideoRequest {
            video_id: id.into(),
            owner_id: owner.into(),
            title: format!("video {id}"),
            content_type: "video/mp4".into(),
            size_bytes: 10,
            sha256_hex: "0".repeat(64),
            visibility: visibility as i32,
            ..CreateVideoRequest::default()
        })
        .await
        .expect("created");
    let mut last = None;
    for state in [VideoState::Transcoding, VideoState::Ready] {
        let res = metadata
            .update_video(UpdateVideoRequest {
                video_id: id.into(),
                update_fields: vec!["state".into()],
                state: state as i32,
                ..UpdateVideoRequest::default()
            })
            .await
            .expect("updated");
        last = res.into_inner().video;
    }
    last.expect("a video")
}

/// The fixture over `blobs`.
async fn fixture_with(blobs: Arc<dyn BlobStore>) -> Fixture {
    let registry = Arc::new(MemoryRegistry::new());
    let keys = Keyring::generate("test");
    let metrics = crate::middleware::metrics::Metrics::default();
    let runtime = Runtime {
        registry: registry.clone(),
        bus: Arc::new(MemoryBus::new()),
        blobs: blobs.clone(),
        pool: ClientPool::new(
            registry.clone(),
            PoolConfig {
                metrics: Some(metrics.clone()),
                ..PoolConfig::new(keys.clone(), "api-gateway")
            },
        ),
        keys,
        metrics,
        ready: Default::default(),
    };
    let common = Common {
        check_interval: Duration::from_secs(3600),
        ..Common::ephemeral()
    };
    let config = ServiceConfig::new(ServiceKind::Streaming);
    let streaming = services::start(&config, &common, &runtime)
        .await
        .expect("streaming starts");
    registry.register(streaming.info()).await.expect("register");
    let config = services::auth::Config {
        secret: Some(auth_secret()),
        ..Default::default()
    };
    let auth = services::start(&config.into(), &common, &runtime)
        .await
        .expect("auth starts");
    registry.register(auth.info()).await.expect("register");
    let signed_up = runtime
        .pool
        .auth()
        .await
        .expect("auth client")
        .sign_up(SignUpRequest {
            email: format!("{}@example.com", crate::rt::random_hex128()),
            password: "correct horse battery".into(),
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .expect("sign-up")
        .into_inner();
    let user_id = signed_up.user_id;
    let token = signed_up.tokens.expect("tokens").access_token;
    Fixture {
        app: router(runtime.clone(), 1000),
        runtime,
        blobs,
        token,
        user_id,
        kept: Vec::new(),
        _streaming: streaming,
        _auth: auth,
    }
}

/// Sends `req` with the fixture's token unless it has an `Authorization`.
pub(super) async fn send(
    f: &Fixture,
    mut req: Request<Body>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    if !req.headers().contains_key(header::AUTHORIZATION) {
        let bearer = format!("Bearer {}", f.token);
        req.headers_mut()
            .insert(header::AUTHORIZATION, bearer.parse().expect("header"));
    }
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub(super) fn get(uri: &str, range: Option<&str>) -> Request<Body> {
    let mut req = Request::get(uri);
    if let Some(r) = range {
        req = req.header(header::RANGE, r);
    }
    req.body(Body::empty()).expect("request")
}

pub(super) fn error_of(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    json["error"].as_str().expect("an error message").to_owned()
}

/// Many concurrent range reads over the one pooled connection to streaming
/// each get exactly their bytes. (The reset flood this once caused, see
/// `playback::body`, needs real files and HTTP clients to show: the
/// `streaming_range` bench at 64 connections reproduced it, this does not.)
#[tokio::test]
async fn many_concurrent_range_reads_get_their_bytes() {
    use futures::StreamExt as _;
    let mut f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    // One account makes every read: a load test, so its share is the
    // whole media budget.
    let limits = super::limit::RequestLimits::default();
    f.app = super::router_with(
        f.runtime.clone(),
        &super::Config {
            max_upload_bytes: 1000,
            limits: super::limit::RequestLimits {
                account_media_in_flight: limits.media_in_flight,
                ..limits
            },
            ..super::Config::default()
        },
    );
    const RANGE: usize = 256 << 10;
    let file: Bytes = (0..4 * RANGE)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    f.blobs
        .put("originals/v1", file.clone())
        .await
        .expect("put");
    let reads = (0..1_500usize).map(|i| {
        let (f, file) = (&f, &file);
        async move {
            let from = (i % 4) * RANGE;
            let range = format!("bytes={from}-{}", from + RANGE - 1);
            let (status, _, body) = send(f, get("/v1/videos/v1/original", Some(&range))).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "read {i}: {body:?}");
            assert!(
                body == file.slice(from..from + RANGE),
                "read {i}: wrong bytes"
            );
        }
    });
    futures::stream::iter(reads)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

/// Through ReadRange (a memory store has no files).
#[tokio::test]
async fn originals_are_served_whole_and_by_range() {
    originals_whole_and_by_range(&media_fixture().await).await;
}

/// From the file itself: the gateway shares streaming's file system here,
/// and must answer exactly as through ReadRange; a deleted original is then
/// a 404, and a replaced one is served afresh.
#[tokio::test]
async fn local_originals_are_served_whole_and_by_range() {
    let (f, _dir) = file_fixture().await;
    originals_whole_and_by_range(&f).await;
    let url = "/v1/videos/v1/original";
    let (status, _, body) = send(&f, get(url, Some("bytes=0-2"))).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &[0u8, 1, 2][..])
    );
    f.blobs
        .put("originals/v1", Bytes::from_static(b"replaced"))
        .await
        .expect("put");
    let (status, _, body) = send(&f, get(url, Some("bytes=0-2"))).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"rep"[..])
    );
    f.blobs.delete("originals/v1").await.expect("delete");
    let (status, _, body) = send(&f, get(url, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("v1"));
    // Every byte came from the file: ReadRange ran only for the 404s.
    let metrics = f.runtime.metrics.render();
    let calls = |method: &str, code: &str| streaming_calls(&metrics, method, code);
    assert_eq!(calls("ReadRange", "Ok"), 0, "{metrics}");
    assert_eq!(calls("LocateOriginal", "Ok"), 3, "v1, empty, v1 replaced");
}

/// StreamingService calls of `method` that ended with `code`, as the
/// metrics rendered in `metrics` count them.
pub(super) fn streaming_calls(metrics: &str, method: &str, code: &str) -> u64 {
    calls(metrics, "StreamingService", method, code)
}

/// Calls of `service`'s `method` that ended with `code`, as the metrics
/// rendered in `metrics` count them.
pub(super) fn calls(metrics: &str, service: &str, method: &str, code: &str) -> u64 {
    let series = format!(
        "streamgate_requests_total{{service=\"streamgate.v1.{service}\",method=\"{method}\",code=\"{code}\"}}"
    );
    metrics
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn originals_whole_and_by_range(f: &Fixture) {
    for id in ["v1", "empty"] {
        put_video(f, id, &f.user_id, crate::proto::Visibility::Private).await;
    }
    let file: Bytes = (0..(3 << 20) + 7)
        .map(|i: u32| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let size = file.len();
    f.blobs
        .put("originals/v1", file.clone())
        .await
        .expect("put");
    let url = "/v1/videos/v1/original";

    let (status, h, body) = send(f, get(url, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(h[header::CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(body, file);

    let (status, h, body) = send(f, get(url, Some("bytes=10-19"))).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        h[header::CONTENT_RANGE],
        format!("bytes 10-19/{size}").as_str()
    );
    assert_eq!(body, file.slice(10..20));

    let (status, h, body) = send(f, get(url, Some("bytes=-5"))).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        h[header::CONTENT_RANGE],
        format!("bytes {}-{}/{size}", size - 5, size - 1).as_str()
    );
    assert_eq!(body, file.slice(size - 5..));

    let (status, _, body) = send(f, get(url, Some("bytes=1048570-"))).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, file.slice(1_048_570..));

    for unsatisfiable in [format!("bytes={size}-"), "bytes=-0".to_owned()] {
        let (status, h, body) = send(f, get(url, Some(&unsatisfiable))).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{unsatisfiable}");
        assert_eq!(h[header::CONTENT_RANGE], format!("bytes */{size}").as_str());
        assert!(!error_of(&body).is_empty());
    }

    // Several ranges, or an invalid header: the whole file.
    for whole in ["bytes=0-1,5-6", "bytes=5-1", "pages=1-2"] {
        let (status, _, body) = send(f, get(url, Some(whole))).await;
        assert_eq!((status, body.len()), (StatusCode::OK, size), "{whole}");
    }
    let many = format!("bytes={}", vec!["0-0"; 17].join(","));
    assert_eq!(
        send(f, get(url, Some(&many))).await.0,
        StatusCode::BAD_REQUEST
    );

    f.blobs
        .put("originals/empty", Bytes::new())
        .await
        .expect("put");
    let (status, h, body) = send(f, get("/v1/videos/empty/original", None)).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(h[header::CONTENT_LENGTH], "0");
    let (status, h, _) = send(f, get("/v1/videos/empty/original", Some("bytes=0-"))).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h[header::CONTENT_RANGE], "bytes */0");

    let (status, _, body) = send(f, get("/v1/videos/nope/original", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("nope"));
    let (status, _, body) = send(f, get("/v1/videos/a%20b/original", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("video id"));
}

#[tokio::test]
async fn hls_needs_a_ready_video() {
    hls_after_ready(&media_fixture().await).await;
}

/// As [`hls_needs_a_ready_video`], with segments sent from their files.
#[tokio::test]
async fn local_hls_needs_a_ready_video() {
    let (f, _dir) = file_fixture().await;
    hls_after_ready(&f).await;
    let metrics = f.runtime.metrics.render();
    assert_eq!(
        streaming_calls(&metrics, "GetSegment", "Ok"),
        0,
        "{metrics}"
    );
    assert_eq!(streaming_calls(&metrics, "LocateSegment", "Ok"), 1);
    assert_eq!(streaming_calls(&metrics, "LocateSegment", "NotFound"), 1);
}

async fn hls_after_ready(f: &Fixture) {
    put_video(f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    f.blobs
        .put("originals/v1", Bytes::from_static(b"mp4"))
        .await
        .expect("put");
    let (status, _, body) = send(f, get("/v1/videos/v1/hls/master.m3u8", None)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("not ready"));

    f.blobs
        .put(
            &media::master_key("v1"),
            Bytes::from_static(b"#EXTM3U\n480p/index.m3u8\n"),
        )
        .await
        .expect("put");
    f.blobs
        .put(
            &media::playlist_key("v1", "480p"),
            Bytes::from_static(b"#EXTM3U\nseg_1.ts\n"),
        )
        .await
        .expect("put");
    f.blobs
        .put(
            &media::segment_key("v1", "480p", "seg_1.ts"),
            Bytes::from_static(b"TS"),
        )
        .await
        .expect("put");
    let (status, h, body) = send(f, get("/v1/videos/v1/hls/master.m3u8", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
    assert!(body.starts_with(b"#EXTM3U"));
    let (status, _, body) = send(f, get("/v1/videos/v1/hls/480p/index.m3u8", None)).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"#EXTM3U\nseg_1.ts\n"[..])
    );
    let (status, h, body) = send(f, get("/v1/videos/v1/hls/480p/seg_1.ts", None)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"TS"[..]));
    assert_eq!(h[header::CONTENT_TYPE], "video/mp2t");
    assert_eq!(
        send(f, get("/v1/videos/v1/hls/480p/seg_9.ts", None))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(f, get("/v1/videos/v1/hls/4%2F0p/seg_1.ts", None))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn requests_are_checked_before_any_call() {
    let f = fixture().await;
    let post = |uri: &str, ty: &str, len: Option<u64>| {
        let mut req = Request::post(uri).header(header::CONTENT_TYPE, ty);
        if let Some(n) = len {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        req.body(Body::from("x")).expect("request")
    };
    let cases = [
        (
            post("/v1/videos?name=a.mp4", "text/plain", None),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post("/v1/videos", "video/mp4", None),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("/v1/videos?name=..", "video/mp4", None),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("/v1/videos?name=a%2Fb", "video/mp4", None),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("/v1/videos?name=a.mp4&visibility=secret", "video/mp4", None),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("/v1/videos?name=a.mp4", "video/mp4", Some(1001)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            get(&format!("/v1/videos?page_token={}", "x".repeat(2100)), None),
            StatusCode::URI_TOO_LONG,
        ),
        (
            get("/v1/videos?page_size=ten", None),
            StatusCode::BAD_REQUEST,
        ),
        (get("/v1/jobs/a%20b", None), StatusCode::BAD_REQUEST),
    ];
    for (req, want) in cases {
        let uri = req.uri().to_string();
        let (status, _, body) = send(&f, req).await;
        assert_eq!(status, want, "{uri}");
        assert!(!error_of(&body).is_empty());
    }
}

#[tokio::test]
async fn a_missing_service_is_unavailable() {
    let f = fixture().await;
    let (status, _, body) = send(&f, get("/v1/videos/v1", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&body).contains("metadata"), "{}", error_of(&body));
}

fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

#[tokio::test]
async fn viewing_sessions_start_and_stop_once_with_their_events() {
    use crate::bus::events::{Payload as _, StreamingStarted, StreamingStopped};
    use crate::bus::{EventType, handler};

    let f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for kind in [EventType::StreamingStarted, EventType::StreamingStopped] {
        let tx = tx.clone();
        let h = handler(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
                Ok(())
            }
        });
        subs.push(
            f.runtime
                .bus
                .subscribe(kind.subject(), None, h)
                .await
                .expect("subscribe"),
        );
    }
    f.blobs
        .put(&media::original_key("v1"), Bytes::from_static(b"video"))
        .await
        .expect("put");

    let (status, _, body) = send(
        &f,
        post_json("/v1/videos/v1/sessions", r#"{"rendition":"480p"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let started: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let session = started["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    assert!(started["started_at_ms"].as_i64().expect("started_at_ms") > 0);
    let e = events.recv().await.expect("StreamingStarted");
    let p = StreamingStarted::from_event(&e).expect("payload");
    assert_eq!(
        (
            p.video_id.as_str(),
            p.session_id.as_str(),
            p.rendition.as_str()
        ),
        ("v1", session.as_str(), "480p")
    );

    let stop = format!("/v1/videos/v1/sessions/{session}/stop");
    let (status, _, body) = send(
        &f,
        post_json(&stop, r#"{"bytes_served":1234,"watched_ms":5000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let first: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let e = events.recv().await.expect("StreamingStopped");
    let p = StreamingStopped::from_event(&e).expect("payload");
    assert_eq!(
        (p.session_id.as_str(), p.bytes_served),
        (session.as_str(), 1234)
    );
    // A repeat (an empty body is fine) answers the first stop, and says nothing on the bus.
    let (status, _, body) = send(&f, post_json(&stop, "")).await;
    assert_eq!(status, StatusCode::OK);
    let again: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(again["stopped_at_ms"], first["stopped_at_ms"]);
    assert!(
        crate::rt::timeout(Duration::from_millis(200), events.recv())
            .await
            .is_err()
    );

    // Bad input: 4xx with a message, nothing started.
    for (req, want) in [
        (
            post_json("/v1/videos/nope/sessions", ""),
            StatusCode::NOT_FOUND,
        ),
        (
            post_json("/v1/videos/v1/sessions", r#"{"rendition":"../x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json("/v1/videos/v1/sessions", r#"{"speed":2}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json("/v1/videos/v1/sessions", "not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json("/v1/videos/v1/sessions/unknown/stop", ""),
            StatusCode::NOT_FOUND,
        ),
        (
            post_json("/v1/videos/v1/sessions/a.b/stop", ""),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json("/v1/videos/v1/sessions", &"x".repeat(70_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let uri = req.uri().to_string();
        let (status, _, body) = send(&f, req).await;
        assert_eq!(status, want, "{uri}: {body:?}");
        assert!(!error_of(&body).is_empty());
    }
    assert!(events.try_recv().is_err(), "no event for a refused request");
    drop(subs);
}

#[tokio::test]
async fn thumbnails_are_served_as_jpeg() {
    let f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    let jpeg = Bytes::from_static(b"\xff\xd8\xff\xe0 a jpeg");
    for (key, data) in [
        (media::original_key("v1"), Bytes::from_static(b"video")),
        (media::master_key("v1"), Bytes::from_static(b"#EXTM3U\n")),
        (media::thumbnail_key("v1"), jpeg.clone()),
    ] {
        f.blobs.put(&key, data).await.expect("put");
    }
    let (status, h, body) = send(&f, get("/v1/videos/v1/thumbnail.jpg", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(body, jpeg);
    for (uri, want) in [
        ("/v1/videos/nope/thumbnail.jpg", StatusCode::NOT_FOUND),
        ("/v1/videos/a.b/thumbnail.jpg", StatusCode::BAD_REQUEST),
    ] {
        let (status, _, body) = send(&f, get(uri, None)).await;
        assert_eq!(status, want, "{uri}");
        assert!(!error_of(&body).is_empty());
    }
}

/// The fixture's gateway with CORS for `origins`.
async fn cors_fixture(origins: &str) -> Fixture {
    let mut f = fixture().await;
    f.app = super::router_with(
        f.runtime.clone(),
        &super::Config {
            max_upload_bytes: 1000,
            cors: super::cors::parse(origins).expect("origins"),
            ..super::Config::default()
        },
    );
    f
}

fn preflight(origin: &str, method: &str, headers: &str) -> Request<Body> {
    Request::options("/v1/videos/v1/original")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn cors_preflights_are_answered_for_the_configured_origins_only() {
    let f = cors_fixture("https://player.example.com").await;
    let ok = f
        .app
        .clone()
        .oneshot(preflight(
            "https://player.example.com",
            "GET",
            "authorization,range",
        ))
        .await
        .expect("infallible");
    assert_eq!(ok.status(), StatusCode::OK);
    let h = ok.headers();
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://player.example.com"
    );
    let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .expect("ascii");
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );
    let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("range"),
        "{allowed}"
    );
    assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    // Another origin's preflight gets no grant: the browser stops there.
    let other = f
        .app
        .clone()
        .oneshot(preflight("https://evil.example", "GET", "authorization"))
        .await
        .expect("infallible");
    assert!(
        other
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    // An actual request from the allowed origin is marked, and says the
    // answer varies by origin (caches keep one per origin).
    let req = Request::get("/v1/videos/v1/original")
        .header(header::ORIGIN, "https://player.example.com")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(
        res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://player.example.com"
    );
    let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
    assert!(
        vary.iter().any(|v| v
            .to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("origin"))),
        "{vary:?}"
    );
    let exposed = res.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(exposed.contains("content-range"), "{exposed}");
}

#[tokio::test]
async fn without_configured_origins_there_is_no_cors() {
    let f = fixture().await;
    let res = f
        .app
        .clone()
        .oneshot(preflight(
            "https://player.example.com",
            "GET",
            "authorization",
        ))
        .await
        .expect("infallible");
    assert!(
        res.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "a JSON 405");
    // `*`: any origin, still without credentials.
    let any = cors_fixture("*").await;
    let res = any
        .app
        .clone()
        .oneshot(preflight("https://anyone.example", "POST", "content-type"))
        .await
        .expect("infallible");
    assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

/// A request `method uri` with the fixture's token and `headers`.
fn conditional(f: &Fixture, method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", f.token));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::empty()).expect("request")
}

/// Through streaming (no shared disk): validators, 304, If-Range, HEAD.
#[tokio::test]
async fn originals_read_through_streaming_answer_conditional_requests() {
    let f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    let file: Bytes = (0..5000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    f.blobs
        .put("originals/v1", file.clone())
        .await
        .expect("put");
    let uri = "/v1/videos/v1/original";
    let (status, h, body) = send(&f, conditional(&f, "GET", uri, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, file);
    let tag = h[header::ETAG].to_str().expect("ascii").to_owned();
    assert!(tag.starts_with('"'), "a strong tag: {tag}");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(
        h[header::CACHE_CONTROL],
        "private, max-age=31536000, immutable"
    );

    let (status, h, body) = send(&f, conditional(&f, "GET", uri, &[("if-none-match", &tag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h[header::ETAG], tag.as_str());
    let (status, _, _) = send(
        &f,
        conditional(&f, "GET", uri, &[("if-none-match", "\"x\"")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // If-Range: our tag keeps the range; another tag or a date, the whole.
    let ranged = |if_range: &'static str| [("range", "bytes=10-19"), ("if-range", if_range)];
    let (status, _, body) = send(
        &f,
        conditional(
            &f,
            "GET",
            uri,
            &[("range", "bytes=10-19"), ("if-range", &tag)],
        ),
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &file[10..20])
    );
    for other in ["\"stale\"", "Sat, 05 Dec 2026 00:00:00 GMT"] {
        let (status, _, body) = send(&f, conditional(&f, "GET", uri, &ranged(other))).await;
        assert_eq!(status, StatusCode::OK, "{other}");
        assert_eq!(body, file);
    }

    // HEAD: a GET's headers, no body.
    let (status, h, body) = send(&f, conditional(&f, "HEAD", uri, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(h[header::CONTENT_LENGTH], "5000");
    assert_eq!(h[header::ETAG], tag.as_str());
    let (status, h, _) = send(&f, conditional(&f, "HEAD", uri, &[("range", "bytes=-100")])).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h[header::CONTENT_RANGE], "bytes 4900-4999/5000");
    assert_eq!(h[header::CONTENT_LENGTH], "100");
}
