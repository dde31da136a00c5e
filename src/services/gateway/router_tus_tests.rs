//! tus 1.0.0 at `/v1/uploads/` through the router, against real auth,
//! metadata and upload services: offsets, checksums, termination, limits,
//! expiry, a restart in the middle, and the hand-over to the pipeline
//! exactly once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use sha2::Digest as _;

use super::router_tests::{Fixture, error_of, file_fixture, media_fixture, send, start_service};
use super::tus::{self, Limits};
use crate::proto::SignUpRequest;
use crate::services::ServiceKind;

const MAX: u64 = 1 << 20;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The fixture's router with these tus limits and a 1 MiB maximum.
fn with_limits(f: &mut Fixture, limits: Limits) {
    f.app = super::router_with(
        f.runtime.clone(),
        &super::Config {
            max_upload_bytes: MAX,
            tus: limits,
            ..super::Config::default()
        },
    );
}

/// A fixture with metadata and upload services and default tus limits.
async fn fixture() -> Fixture {
    let mut f = media_fixture().await;
    let upload = start_service(&f, ServiceKind::Upload).await;
    f.kept.push(upload);
    with_limits(&mut f, Limits::default());
    f
}

fn metadata(name: &str) -> String {
    format!(
        "filename {},filetype {},title {}",
        b64(name.as_bytes()),
        b64(b"video/mp4"),
        b64(b"My clip")
    )
}

fn post(length: u64) -> http::request::Builder {
    post_with(length, &metadata("clip.mp4"))
}

fn post_with(length: u64, upload_metadata: &str) -> http::request::Builder {
    Request::post("/v1/uploads/")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length)
        .header("upload-metadata", upload_metadata)
}

/// Creates an upload of `length` bytes; its path.
async fn create(f: &Fixture, length: u64) -> String {
    let (status, h, body) = send(f, post(length).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert!(h.contains_key("upload-expires"));
    let location = h[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/v1/uploads/"), "{location}");
    location
}

fn patch(path: &str, offset: u64) -> http::request::Builder {
    Request::patch(path)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset)
        .header(header::CONTENT_TYPE, "application/offset+octet-stream")
}

async fn send_patch(
    f: &Fixture,
    path: &str,
    offset: u64,
    data: &[u8],
) -> (StatusCode, HeaderMap, Bytes) {
    let req = patch(path, offset).body(Body::from(data.to_vec())).unwrap();
    send(f, req).await
}

async fn head(f: &Fixture, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::head(path)
        .header("tus-resumable", "1.0.0")
        .body(Body::empty())
        .unwrap();
    send(f, req).await
}

fn offset_of(h: &HeaderMap) -> u64 {
    h["upload-offset"].to_str().unwrap().parse().unwrap()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// Blobs under `tus/`.
async fn tus_blobs(f: &Fixture) -> Vec<String> {
    f.blobs
        .list(tus::PREFIX, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// A second user's token.
async fn other_user(f: &Fixture) -> String {
    let signed_up = f
        .runtime
        .pool
        .auth()
        .await
        .unwrap()
        .sign_up(SignUpRequest {
            email: format!("{}@example.com", crate::rt::random_hex128()),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    signed_up.tokens.unwrap().access_token
}

/// The video's record (as the API serves it) and its original's bytes.
async fn video(f: &Fixture, id: &str) -> (serde_json::Value, Bytes) {
    let (status, _, body) = send(
        f,
        Request::get(format!("/v1/videos/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let original = f
        .blobs
        .read(&crate::services::media::original_key(id), 0, 16 << 20)
        .await
        .unwrap();
    (serde_json::from_slice(&body).unwrap(), original)
}

#[tokio::test]
async fn options_says_what_is_spoken_without_a_token() {
    let f = fixture().await;
    let req = Request::options("/v1/uploads/")
        .header(header::AUTHORIZATION, "Bearer not-a-token")
        .body(Body::empty())
        .unwrap();
    // Not even a bad token is looked at.
    let res = tower::ServiceExt::oneshot(f.app.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(
        h["tus-extension"],
        "creation,creation-with-upload,termination,expiration,checksum"
    );
    assert_eq!(h["tus-max-size"], MAX.to_string().as_str());
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256");
    // Every other method wants a token.
    let req = post(10)
        .header(header::AUTHORIZATION, "Bearer not-a-token")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&f, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn creation_checks_version_length_and_metadata() {
    let f = fixture().await;
    let cases: Vec<(http::request::Builder, StatusCode, &str)> = vec![
        (
            Request::post("/v1/uploads/").header("upload-length", 10),
            StatusCode::PRECONDITION_FAILED,
            "Tus-Resumable",
        ),
        (
            Request::post("/v1/uploads/")
                .header("tus-resumable", "0.2.2")
                .header("upload-length", 10)
                .header("upload-metadata", metadata("a.mp4")),
            StatusCode::PRECONDITION_FAILED,
            "1.0.0",
        ),
        (
            Request::post("/v1/uploads/")
                .header("tus-resumable", "1.0.0")
                .header("upload-metadata", metadata("a.mp4")),
            StatusCode::BAD_REQUEST,
            "Upload-Length",
        ),
        (
            post(10).header("upload-defer-length", "1"),
            StatusCode::BAD_REQUEST,
            "Defer",
        ),
        (post(MAX + 1), StatusCode::PAYLOAD_TOO_LARGE, "exceeds"),
        (post(0), StatusCode::BAD_REQUEST, "at least"),
        (
            post_with(10, &format!("filetype {}", b64(b"video/mp4"))),
            StatusCode::BAD_REQUEST,
            "filename",
        ),
        (
            post_with(
                10,
                &format!("filename {},filetype {}", b64(b"a.png"), b64(b"image/png")),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "video/",
        ),
        (
            post_with(10, "filename %%%"),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
    ];
    for (req, want, says) in cases {
        let req = req.body(Body::empty()).unwrap();
        let (status, h, body) = send(&f, req).await;
        assert_eq!(status, want, "{body:?}");
        assert!(error_of(&body).contains(says), "{body:?} lacks {says}");
        assert_eq!(h["tus-resumable"], "1.0.0");
        if want == StatusCode::PRECONDITION_FAILED {
            assert_eq!(h["tus-version"], "1.0.0");
        }
    }
    assert!(tus_blobs(&f).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn offsets_checksums_and_the_pipeline_exactly_once() {
    let f = fixture().await;
    let file = data(300_000);
    let path = create(&f, file.len() as u64).await;
    let (status, h, _) = head(&f, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(offset_of(&h), 0);
    assert_eq!(h["upload-length"], "300000");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(h["upload-metadata"].to_str().unwrap().contains("filename "));

    // A body that is not an offset stream; a wrong offset.
    let req = Request::patch(&path)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", 0)
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from(file[..10].to_vec()))
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, h, body) = send_patch(&f, &path, 5, &file[..10]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:?}");
    assert!(error_of(&body).contains("Upload-Offset"));
    assert_eq!(offset_of(&h), 0);

    // A checksum that does not match stores nothing: 460.
    let chunk = &file[..100_000];
    let wrong = b64(&sha1::Sha1::digest(&file[1..100_001]));
    let req = patch(&path, 0)
        .header("upload-checksum", format!("sha1 {wrong}"))
        .body(Body::from(chunk.to_vec()))
        .unwrap();
    let (status, _, body) = send(&f, req).await;
    assert_eq!(status.as_u16(), 460, "{body:?}");
    assert!(error_of(&body).contains("Upload-Checksum"));
    assert_eq!(offset_of(&head(&f, &path).await.1), 0);
    let req = patch(&path, 0)
        .header("upload-checksum", "crc32 AAAAAA==")
        .body(Body::from(chunk.to_vec()))
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::BAD_REQUEST);

    // The right sha1, then sha256.
    let req = patch(&path, 0)
        .header(
            "upload-checksum",
            format!("sha1 {}", b64(&sha1::Sha1::digest(chunk))),
        )
        .body(Body::from(chunk.to_vec()))
        .unwrap();
    let (status, h, body) = send(&f, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
    assert_eq!(offset_of(&h), 100_000);
    assert!(h.contains_key("upload-expires"));
    assert!(!h.contains_key(&tus::VIDEO_ID));
    let chunk = &file[100_000..200_000];
    let req = patch(&path, 100_000)
        .header(
            "upload-checksum",
            format!("sha256 {}", b64(&sha2::Sha256::digest(chunk))),
        )
        .body(Body::from(chunk.to_vec()))
        .unwrap();
    let (status, h, _) = send(&f, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&h), 200_000);

    // A body cut mid-way stores none of it.
    let frames: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(&file[200_000..250_000])),
        Err(std::io::Error::other("connection reset")),
    ];
    let req = patch(&path, 200_000)
        .body(Body::from_stream(futures::stream::iter(frames)))
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(offset_of(&head(&f, &path).await.1), 200_000);

    // More than the length: 413, nothing stored.
    let (status, _, _) = send_patch(&f, &path, 200_000, &data(100_001)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Another user does not see it.
    let other = other_user(&f).await;
    let req = Request::head(&path)
        .header("tus-resumable", "1.0.0")
        .header(header::AUTHORIZATION, format!("Bearer {other}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::NOT_FOUND);
    let req = patch(&path, 200_000)
        .header(header::AUTHORIZATION, format!("Bearer {other}"))
        .body(Body::from(file[200_000..].to_vec()))
        .unwrap();
    let (status, _, body) = send(&f, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("no such upload"));
    let (status, _, _) = head(&f, "/v1/uploads/0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No video yet: nothing partial is one.
    let (_, _, list) = send(&f, Request::get("/v1/videos").body(Body::empty()).unwrap()).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["videos"].as_array().map(Vec::len), Some(0), "{list}");

    // The last bytes: the upload becomes a video, once.
    let (status, h, body) = send_patch(&f, &path, 200_000, &file[200_000..]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
    assert_eq!(offset_of(&h), 300_000);
    let video_id = h[&tus::VIDEO_ID].to_str().unwrap().to_owned();
    let (record, original) = video(&f, &video_id).await;
    assert_eq!(original.as_ref(), file.as_slice());
    assert_eq!(record["title"], "My clip");
    assert_eq!(
        record["sha256_hex"].as_str(),
        Some(crate::services::media::hex(&sha2::Sha256::digest(&file)).as_str()),
        "{record}"
    );
    let (status, h, _) = head(&f, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(offset_of(&h), 300_000);
    assert_eq!(h[&tus::VIDEO_ID], video_id.as_str());
    let (status, _, _) = send_patch(&f, &path, 300_000, b"x").await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Only the record and the marker remain; one video.
    let left = tus_blobs(&f).await;
    assert!(
        left.iter()
            .all(|k| k.ends_with("/info") || k.ends_with("/done")),
        "{left:?}"
    );
    let (_, _, list) = send(&f, Request::get("/v1/videos").body(Body::empty()).unwrap()).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["videos"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn creation_with_upload_and_termination() {
    let f = fixture().await;
    let file = data(5000);
    let req = post(file.len() as u64)
        .header(header::CONTENT_TYPE, "application/offset+octet-stream")
        .body(Body::from(file[..2000].to_vec()))
        .unwrap();
    let (status, h, body) = send(&f, req).await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    assert_eq!(offset_of(&h), 2000);
    let path = h[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(offset_of(&head(&f, &path).await.1), 2000);
    // A creation whose first bytes fail their checksum leaves nothing.
    let before = tus_blobs(&f).await;
    let req = post(file.len() as u64)
        .header(header::CONTENT_TYPE, "application/offset+octet-stream")
        .header("upload-checksum", format!("sha1 {}", b64(&[0u8; 20])))
        .body(Body::from(file[..2000].to_vec()))
        .unwrap();
    let (status, h, _) = send(&f, req).await;
    assert_eq!(status.as_u16(), 460);
    assert!(!h.contains_key(header::LOCATION));
    assert_eq!(tus_blobs(&f).await, before);

    let req = Request::delete(&path)
        .header("tus-resumable", "1.0.0")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = send(&f, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert_eq!(head(&f, &path).await.0, StatusCode::NOT_FOUND);
    let (status, _, body) = send_patch(&f, &path, 2000, &file[2000..]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("no such upload"));
    assert!(tus_blobs(&f).await.is_empty(), "its bytes are gone");

    // A whole file in the creation request is a video at once.
    let req = post(file.len() as u64)
        .header(header::CONTENT_TYPE, "application/offset+octet-stream")
        .body(Body::from(file.clone()))
        .unwrap();
    let (status, h, _) = send(&f, req).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, original) = video(&f, h[&tus::VIDEO_ID].to_str().unwrap()).await;
    assert_eq!(original.as_ref(), file.as_slice());
}

#[tokio::test]
async fn unfinished_uploads_per_user_are_limited() {
    let mut f = fixture().await;
    with_limits(
        &mut f,
        Limits {
            max_open_per_user: 2,
            ..Limits::default()
        },
    );
    let first = create(&f, 10).await;
    create(&f, 10).await;
    let (status, _, body) = send(&f, post(10).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(error_of(&body).contains("at most 2"));
    // Another user has a share of their own.
    let other = other_user(&f).await;
    let req = post(10)
        .header(header::AUTHORIZATION, format!("Bearer {other}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::CREATED);
    // A finished upload no longer counts.
    let (status, _, _) = send_patch(&f, &first, 0, &data(10)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    create(&f, 10).await;
}

#[tokio::test]
async fn idle_uploads_expire_and_the_sweep_removes_their_bytes() {
    let mut f = fixture().await;
    let expiry = Duration::from_secs(1);
    with_limits(
        &mut f,
        Limits {
            expiry,
            ..Limits::default()
        },
    );
    let path = create(&f, 10).await;
    let (status, h, _) = send_patch(&f, &path, 0, &data(4)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let expires = httpdate::parse_http_date(h["upload-expires"].to_str().unwrap()).unwrap();
    assert!(expires > crate::rt::system_now() - Duration::from_secs(2));
    // Not yet swept: too young.
    assert_eq!(tus::sweep(f.blobs.as_ref(), expiry).await.unwrap(), 0);
    crate::rt::sleep(expiry * 2).await;
    assert_eq!(head(&f, &path).await.0, StatusCode::GONE);
    let (status, _, body) = send_patch(&f, &path, 4, &data(6)).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(error_of(&body).contains("expired"));
    assert_eq!(tus::sweep(f.blobs.as_ref(), expiry).await.unwrap(), 1);
    assert!(tus_blobs(&f).await.is_empty());
    assert_eq!(head(&f, &path).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_restart_loses_nothing_acknowledged() {
    let (mut f, dir) = file_fixture().await;
    let upload = start_service(&f, ServiceKind::Upload).await;
    f.kept.push(upload);
    with_limits(&mut f, Limits::default());
    let file = data(700_000);
    let path = create(&f, file.len() as u64).await;
    let (status, h, _) = send_patch(&f, &path, 0, &file[..250_000]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&h), 250_000);

    // A new gateway over the same files (its store opened afresh).
    let store = crate::blob::fs::FsBlobStore::open(dir.path()).expect("store");
    let mut runtime = f.runtime.clone();
    runtime.blobs = Arc::new(store);
    f.app = super::router_with(
        runtime,
        &super::Config {
            max_upload_bytes: MAX,
            ..super::Config::default()
        },
    );
    let (status, h, _) = head(&f, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(offset_of(&h), 250_000, "the acknowledged bytes");
    let (status, h, _) = send_patch(&f, &path, 250_000, &file[250_000..]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, original) = video(&f, h[&tus::VIDEO_ID].to_str().unwrap()).await;
    assert_eq!(original.as_ref(), file.as_slice());
}

#[tokio::test]
async fn a_failed_hand_over_is_retried_and_makes_one_video() {
    // No upload service yet: the last PATCH cannot hand the upload over.
    let mut f = media_fixture().await;
    with_limits(&mut f, Limits::default());
    let file = data(2000);
    let path = create(&f, 2000).await;
    let (status, _, body) = send_patch(&f, &path, 0, &file).await;
    assert!(status.is_server_error(), "{status} {body:?}");
    assert!(!error_of(&body).is_empty());
    let (status, _, _) = head(&f, &path).await;
    assert!(status.is_server_error(), "{status}");
    let (_, _, list) = send(&f, Request::get("/v1/videos").body(Body::empty()).unwrap()).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["videos"].as_array().map(Vec::len), Some(0), "{list}");

    let upload = start_service(&f, ServiceKind::Upload).await;
    f.kept.push(upload);
    // A client retries (the pool finds the new service within moments).
    let deadline = crate::rt::now() + Duration::from_secs(30);
    let h = loop {
        let (status, h, _) = head(&f, &path).await;
        if status == StatusCode::OK {
            break h;
        }
        assert!(status.is_server_error(), "{status}");
        assert!(crate::rt::now() < deadline, "never handed over");
        crate::rt::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(offset_of(&h), 2000);
    let video_id = h[&tus::VIDEO_ID].to_str().unwrap().to_owned();
    // The parts are gone; the record and its video's marker stay.
    let left = tus_blobs(&f).await;
    assert_eq!(left.len(), 2, "{left:?}");
    let (status, h, _) = head(&f, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[&tus::VIDEO_ID], video_id.as_str());
    let (_, original) = video(&f, &video_id).await;
    assert_eq!(original.as_ref(), file.as_slice());
    let (_, _, list) = send(&f, Request::get("/v1/videos").body(Body::empty()).unwrap()).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["videos"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn a_patch_slower_than_the_body_deadline_is_an_upload_not_cut() {
    let mut f = fixture().await;
    let body_timeout = Duration::from_millis(200);
    f.app = super::router_with(
        f.runtime.clone(),
        &super::Config {
            max_upload_bytes: MAX,
            limits: super::limit::RequestLimits {
                body_timeout,
                ..super::limit::RequestLimits::default()
            },
            ..super::Config::default()
        },
    );
    let path = create(&f, 30).await;
    // Three frames, 150 ms apart: 450 ms in all, over the JSON deadline.
    let slow = futures::stream::unfold(0u8, |n| async move {
        if n == 3 {
            return None;
        }
        crate::rt::sleep(Duration::from_millis(150)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(vec![n; 10])), n + 1))
    });
    let req = patch(&path, 0).body(Body::from_stream(slow)).unwrap();
    let (status, h, body) = send(&f, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
    assert_eq!(offset_of(&h), 30);
    assert!(h.contains_key(&tus::VIDEO_ID));
}

#[tokio::test]
async fn an_upload_continues_through_another_gateway_on_object_storage() {
    // Two gateways, each with its own S3 store client over one bucket; the
    // upload service's store is another one, so the hand-over cannot be
    // an AdoptParts (FAILED_PRECONDITION) and streams the parts instead.
    let mut f = fixture().await;
    let bucket: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let gateway = |f: &Fixture| {
        let mut runtime = f.runtime.clone();
        runtime.blobs = Arc::new(crate::blob::s3::S3BlobStore::over(bucket.clone(), "sg"));
        super::router_with(
            runtime,
            &super::Config {
                max_upload_bytes: MAX,
                ..super::Config::default()
            },
        )
    };
    let (a, b) = (gateway(&f), gateway(&f));
    let file = data(400_000);
    f.app = a;
    let path = create(&f, file.len() as u64).await;
    let (status, h, _) = send_patch(&f, &path, 0, &file[..150_000]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&h), 150_000);

    f.app = b;
    let (status, h, _) = head(&f, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(offset_of(&h), 150_000);
    let (status, _, _) = send_patch(&f, &path, 0, &file[..10]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, h, body) = send_patch(&f, &path, 150_000, &file[150_000..]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
    let (_, original) = video(&f, h[&tus::VIDEO_ID].to_str().unwrap()).await;
    assert_eq!(original.as_ref(), file.as_slice());
    // Terminating a finished one through the other gateway removes its record.
    f.app = gateway(&f);
    let req = Request::delete(&path)
        .header("tus-resumable", "1.0.0")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f, req).await.0, StatusCode::NO_CONTENT);
    assert_eq!(head(&f, &path).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_upload_takes_a_bounded_number_of_patches() {
    let mut f = fixture().await;
    with_limits(
        &mut f,
        Limits {
            max_parts: 3,
            ..Limits::default()
        },
    );
    let file = data(100);
    let path = create(&f, 100).await;
    for at in [0, 10] {
        let (status, _, _) = send_patch(&f, &path, at, &file[at as usize..at as usize + 10]).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    // The last PATCH allowed must carry the rest.
    let (status, _, body) = send_patch(&f, &path, 20, &file[20..30]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("remaining 80 bytes"), "{body:?}");
    let (status, h, _) = send_patch(&f, &path, 20, &file[20..]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, original) = video(&f, h[&tus::VIDEO_ID].to_str().unwrap()).await;
    assert_eq!(original.as_ref(), file.as_slice());
}

#[tokio::test]
async fn adopt_parts_takes_only_the_callers_parts_from_its_own_store() {
    use crate::proto::{AdoptPartsRequest, BlobPart, UploadMetadata};
    use crate::services::upload::server::USER_ID_HEADER;
    let f = fixture().await;
    let dir = format!("tus/{}/{}", f.user_id, crate::rt::random_hex128());
    let file = data(3_000_000);
    let (a, b) = file.split_at(2_000_000);
    for (i, part) in [a, b].iter().enumerate() {
        f.blobs
            .put(&format!("{dir}/p{i}"), Bytes::copy_from_slice(part))
            .await
            .unwrap();
    }
    let part = |key: &str, size: usize| BlobPart {
        key: key.to_owned(),
        size_bytes: size as u64,
    };
    let parts = vec![
        part(&format!("{dir}/p0"), a.len()),
        part(&format!("{dir}/p1"), b.len()),
    ];
    let meta = UploadMetadata {
        file_name: "clip.mp4".into(),
        content_type: "video/mp4".into(),
        size_bytes: file.len() as u64,
        idempotency_key: "adopt-once".into(),
        ..UploadMetadata::default()
    };
    let call = |user: Option<&str>, meta: &UploadMetadata, parts: Vec<BlobPart>| {
        let mut req = tonic::Request::new(AdoptPartsRequest {
            metadata: Some(meta.clone()),
            parts,
        });
        if let Some(user) = user {
            req.metadata_mut()
                .insert(USER_ID_HEADER, user.parse().unwrap());
        }
        let pool = f.runtime.pool.clone();
        async move { pool.upload().await.unwrap().adopt_parts(req).await }
    };
    let user = Some(f.user_id.as_str());
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.map(|_| ()).unwrap_err().code();

    // Someone else's parts, no user, a size that is not the store's, a
    // total that is not size_bytes, nothing: refused, nothing made.
    let theirs = vec![part(&format!("tus/someone/{}/p0", "x"), file.len())];
    assert_eq!(
        code(call(user, &meta, theirs).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(call(None, &meta, parts.clone()).await),
        tonic::Code::InvalidArgument
    );
    let wrong = vec![part(&format!("{dir}/p0"), a.len() + 1), parts[1].clone()];
    let wrong_meta = UploadMetadata {
        size_bytes: file.len() as u64 + 1,
        ..meta.clone()
    };
    assert_eq!(
        code(call(user, &wrong_meta, wrong).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(call(user, &wrong_meta, parts.clone()).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(call(user, &meta, vec![]).await),
        tonic::Code::InvalidArgument
    );
    // A part this store does not hold: FAILED_PRECONDITION (the gateway
    // streams the bytes instead), naming no internals beyond the key.
    let absent = vec![parts[0].clone(), part(&format!("{dir}/p9"), b.len())];
    let status = call(user, &meta, absent).await.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("p9"), "{status:?}");
    let (_, _, list) = send(&f, Request::get("/v1/videos").body(Body::empty()).unwrap()).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["videos"].as_array().map(Vec::len), Some(0), "{list}");
    // Nor any original (a part whose size is not the stored one fails the
    // hash while the join, run beside it, may have finished: it is removed).
    let originals = f.blobs.list("originals", None, 10).await.unwrap();
    assert!(originals.is_empty(), "{originals:?}");

    // The caller's parts: one video, the bytes and hash of the whole, the
    // parts kept (the gateway removes them); the same key again: the same
    // answer, deduplicated.
    let made = call(user, &meta, parts.clone()).await.unwrap().into_inner();
    assert!(!made.deduplicated);
    assert_eq!(made.size_bytes, file.len() as u64);
    assert_eq!(
        made.sha256_hex,
        crate::services::media::hex(&sha2::Sha256::digest(&file))
    );
    let (record, original) = video(&f, &made.video_id).await;
    assert_eq!(original.as_ref(), file.as_slice());
    assert_eq!(
        record["sha256_hex"].as_str(),
        Some(made.sha256_hex.as_str())
    );
    assert_eq!(f.blobs.size(&parts[0].key).await.unwrap(), a.len() as u64);
    let again = call(user, &meta, parts).await.unwrap().into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.video_id, made.video_id);
}
