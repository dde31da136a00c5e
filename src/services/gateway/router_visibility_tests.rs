//! Visibility through the router, against real metadata, streaming and
//! auth services: a private video is its owner's alone (404 to anyone
//! else, 401 without a token), an unlisted one any signed-in user's who has
//! its id, a public one listed to everyone and played without a token;
//! listings follow, page by page; a viewer's signed URL stops when the
//! video is made private. And the caching headers of each (RFC 9110,
//! 9111): `Last-Modified`, `If-Modified-Since`, `Cache-Control`.

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode, header};

use super::router_tests::{Fixture, error_of, get, media_fixture, put_video, send};
use crate::proto::{SignUpRequest, Visibility};
use crate::services::media;

/// A second user's access token and id.
async fn other_user(f: &Fixture) -> (String, String) {
    let res = f
        .runtime
        .pool
        .auth()
        .await
        .expect("auth")
        .sign_up(SignUpRequest {
            email: format!("{}@example.com", crate::rt::random_hex128()),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .expect("sign-up")
        .into_inner();
    (res.tokens.expect("tokens").access_token, res.user_id)
}

fn as_user(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    // Without one, `send` adds the fixture user's token, and `anonymous`
    // sends none.
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    req.body(Body::from(body.to_owned())).expect("request")
}

/// Sends `req` with no credential at all.
async fn anonymous(f: &Fixture, req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    assert!(!req.headers().contains_key(header::AUTHORIZATION));
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Stores the media of `id`: original, master, one rendition, one
/// segment, a thumbnail.
async fn put_media(f: &Fixture, id: &str) {
    for (key, data) in [
        (media::original_key(id), &b"the original"[..]),
        (media::master_key(id), b"#EXTM3U\n480p/index.m3u8\n"),
        (media::playlist_key(id, "480p"), b"#EXTM3U\nseg_1.ts\n"),
        (media::segment_key(id, "480p", "seg_1.ts"), b"TS"),
        (media::thumbnail_key(id), b"\xff\xd8\xff jpeg"),
    ] {
        f.blobs
            .put(&key, Bytes::copy_from_slice(data))
            .await
            .expect("put");
    }
}

fn media_urls(id: &str) -> [String; 5] {
    [
        format!("/v1/videos/{id}/original"),
        format!("/v1/videos/{id}/hls/master.m3u8"),
        format!("/v1/videos/{id}/hls/480p/index.m3u8"),
        format!("/v1/videos/{id}/hls/480p/seg_1.ts"),
        format!("/v1/videos/{id}/thumbnail.jpg"),
    ]
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON")
}

#[tokio::test]
async fn a_private_video_is_its_owners_alone_and_hidden_from_others() {
    let f = media_fixture().await;
    let (other, _) = other_user(&f).await;
    put_video(&f, "mine", &f.user_id, Visibility::Private).await;
    put_media(&f, "mine").await;
    // A video from before visibility (unspecified) is private too.
    put_video(&f, "old", &f.user_id, Visibility::Unspecified).await;
    put_media(&f, "old").await;

    for id in ["mine", "old"] {
        // The owner: everything.
        let (status, _, body) = send(&f, get(&format!("/v1/videos/{id}"), None)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["visibility"], "private");
        for url in media_urls(id) {
            assert_eq!(send(&f, get(&url, None)).await.0, StatusCode::OK, "{url}");
        }
        // Another user: exactly what an id nobody has gets.
        let (status, _, nobody) =
            send(&f, as_user("GET", "/v1/videos/nobody", Some(&other), "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error_of(&nobody), "no video nobody");
        let hidden = format!("no video {id}");
        let mut refused = media_urls(id).to_vec();
        refused.extend([format!("/v1/videos/{id}"), format!("/v1/videos/{id}/job")]);
        for url in &refused {
            let (status, _, body) = send(&f, as_user("GET", url, Some(&other), "")).await;
            assert_eq!(
                (status, error_of(&body)),
                (StatusCode::NOT_FOUND, hidden.clone()),
                "{url}"
            );
        }
        for (method, url, body) in [
            ("POST", format!("/v1/videos/{id}/playback"), ""),
            ("POST", format!("/v1/videos/{id}/sessions"), ""),
            ("PATCH", format!("/v1/videos/{id}"), r#"{"title":"x"}"#),
            ("DELETE", format!("/v1/videos/{id}"), ""),
        ] {
            let (status, _, answer) = send(&f, as_user(method, &url, Some(&other), body)).await;
            assert_eq!(
                (status, error_of(&answer)),
                (StatusCode::NOT_FOUND, hidden.clone()),
                "{method} {url}"
            );
        }
        // No credential: 401, as for any video that is not public.
        for url in media_urls(id) {
            let (status, h, body) = anonymous(&f, as_user("GET", &url, None, "")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{url}");
            assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
            assert!(error_of(&body).contains("public"), "{}", error_of(&body));
        }
        let (status, _, _) =
            anonymous(&f, as_user("GET", "/v1/videos/nobody/original", None, "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The owner's signed URLs play a private video.
    let (status, _, body) = send(&f, as_user("POST", "/v1/videos/mine/playback", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    let master = json(&body)["master"].as_str().expect("master").to_owned();
    let (status, _, _) = anonymous(&f, as_user("GET", &master, None, "")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_public_video_plays_without_a_token_until_it_is_made_private() {
    let f = media_fixture().await;
    let (other, _) = other_user(&f).await;
    put_video(&f, "v1", &f.user_id, Visibility::Private).await;
    put_media(&f, "v1").await;
    let make = |vis: &str| {
        as_user(
            "PATCH",
            "/v1/videos/v1",
            None,
            &format!(r#"{{"visibility":"{vis}"}}"#),
        )
    };
    // Only the owner, only a known visibility.
    let (status, _, body) = send(&f, make("everyone")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("visibility"));
    let (status, _, body) = send(&f, make("public")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["visibility"], "public");

    // No token: every media route plays it, cacheable by anyone.
    for url in media_urls("v1") {
        let (status, h, _) = anonymous(&f, as_user("GET", &url, None, "")).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        let rule = h[header::CACHE_CONTROL].to_str().expect("ascii");
        if url.ends_with(".m3u8") {
            assert_eq!(rule, "public, max-age=60", "{url}");
        } else {
            assert_eq!(rule, "public, max-age=31536000, immutable", "{url}");
        }
    }
    // A bad token is still refused, never taken for none.
    let (status, _, _) = send(
        &f,
        as_user("GET", "/v1/videos/v1/original", Some("garbage"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another user may read it and get signed URLs (a viewer's), not change it.
    let (status, _, _) = send(&f, as_user("GET", "/v1/videos/v1", Some(&other), "")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &f,
        as_user(
            "PATCH",
            "/v1/videos/v1",
            Some(&other),
            r#"{"visibility":"private"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let urls = |token: Option<&str>| {
        let f = &f;
        let req = as_user("POST", "/v1/videos/v1/playback", token, "");
        async move {
            let (status, _, body) = send(f, req).await;
            assert_eq!(status, StatusCode::OK, "{body:?}");
            json(&body)["master"].as_str().expect("master").to_owned()
        }
    };
    let viewers = urls(Some(&other)).await;
    let owners = urls(None).await;
    assert_eq!(
        anonymous(&f, as_user("GET", &viewers, None, "")).await.0,
        StatusCode::OK
    );

    // Made private: no token, the other user and the viewer's URLs are
    // refused; the owner's URLs still play.
    let (status, _, _) = send(&f, make("private")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = anonymous(&f, as_user("GET", "/v1/videos/v1/original", None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(
        &f,
        as_user("GET", "/v1/videos/v1/original", Some(&other), ""),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = anonymous(&f, as_user("GET", &viewers, None, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        error_of(&body).contains("no longer shared"),
        "{}",
        error_of(&body)
    );
    let (status, h, _) = anonymous(&f, as_user("GET", &owners, None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CACHE_CONTROL], "private, max-age=60");
}

#[tokio::test]
async fn an_unlisted_video_is_for_whoever_has_its_id_but_not_listed() {
    let f = media_fixture().await;
    let (other, _) = other_user(&f).await;
    put_video(&f, "u1", &f.user_id, Visibility::Unlisted).await;
    put_media(&f, "u1").await;
    let (status, _, body) = send(&f, as_user("GET", "/v1/videos/u1", Some(&other), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["visibility"], "unlisted");
    for url in media_urls("u1") {
        let (status, h, _) = send(&f, as_user("GET", &url, Some(&other), "")).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert!(
            h[header::CACHE_CONTROL]
                .to_str()
                .expect("ascii")
                .starts_with("private"),
            "{url}"
        );
        let (status, _, _) = anonymous(&f, as_user("GET", &url, None, "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{url}");
    }
    let (status, _, body) = send(&f, as_user("GET", "/v1/videos", Some(&other), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["videos"].as_array().expect("videos").len(), 0);
    let (status, _, body) = send(&f, get("/v1/videos", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["videos"][0]["id"], "u1");
}

/// Every page of `GET uri` (with `&page_token=`) as `token`: the ids.
async fn list_all(f: &Fixture, uri: &str, token: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = String::new();
    for _ in 0..50 {
        let url = format!("{uri}&page_token={next}");
        let (status, _, body) = send(f, as_user("GET", &url, Some(token), "")).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body:?}");
        let page = json(&body);
        ids.extend(
            page["videos"]
                .as_array()
                .expect("videos")
                .iter()
                .map(|v| v["id"].as_str().expect("id").to_owned()),
        );
        next = page["next_page_token"].as_str().expect("token").to_owned();
        if next.is_empty() {
            return ids;
        }
    }
    panic!("more than 50 pages");
}

#[tokio::test]
async fn a_listing_shows_ones_own_videos_and_public_ones_page_by_page() {
    let f = media_fixture().await;
    let (other, other_id) = other_user(&f).await;
    // Created in this order (newest last).
    let made = [
        ("a-priv", &f.user_id, Visibility::Private),
        ("b-pub", &other_id, Visibility::Public),
        ("a-unl", &f.user_id, Visibility::Unlisted),
        ("b-priv", &other_id, Visibility::Private),
        ("a-pub", &f.user_id, Visibility::Public),
        ("b-unl", &other_id, Visibility::Unlisted),
        ("b-pub2", &other_id, Visibility::Public),
    ];
    for (id, owner, vis) in made {
        put_video(&f, id, owner, vis).await;
        // Distinct creation times, so the order is the creation order.
        crate::rt::sleep(std::time::Duration::from_millis(3)).await;
    }
    let mine = f.token.clone();
    for size in [1, 2, 100] {
        let all = list_all(&f, &format!("/v1/videos?page_size={size}"), &mine).await;
        assert_eq!(
            all,
            ["b-pub2", "a-pub", "a-unl", "b-pub", "a-priv"],
            "{size}"
        );
        let own = list_all(&f, &format!("/v1/videos?owner=me&page_size={size}"), &mine).await;
        assert_eq!(own, ["a-pub", "a-unl", "a-priv"], "{size}");
        let theirs = list_all(
            &f,
            &format!("/v1/videos?owner={other_id}&page_size={size}"),
            &mine,
        )
        .await;
        assert_eq!(theirs, ["b-pub2", "b-pub"], "{size}");
        let seen_by_other = list_all(&f, &format!("/v1/videos?page_size={size}"), &other).await;
        assert_eq!(
            seen_by_other,
            ["b-pub2", "b-unl", "a-pub", "b-priv", "b-pub"],
            "{size}"
        );
    }
    let (status, _, body) = send(&f, get("/v1/videos?owner=a%20b", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("owner"), "{}", error_of(&body));
}

/// A player's burst of media requests reads the video's record once: the
/// gateway keeps it for a second (`access::Recent`).
#[tokio::test]
async fn a_burst_of_media_requests_reads_the_record_once() {
    let f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, Visibility::Public).await;
    put_media(&f, "v1").await;
    let reads = || {
        super::router_tests::calls(
            &f.runtime.metrics.render(),
            "MetadataService",
            "GetVideo",
            "Ok",
        )
    };
    let before = reads();
    for _ in 0..5 {
        for url in media_urls("v1") {
            assert_eq!(
                anonymous(&f, as_user("GET", &url, None, "")).await.0,
                StatusCode::OK
            );
        }
    }
    // One read; two if the burst straddled the second.
    let during = reads() - before;
    assert!((1..=2).contains(&during), "{during} reads for 25 requests");
    // A change through this gateway is seen at once.
    let (status, _, _) = send(
        &f,
        as_user(
            "PATCH",
            "/v1/videos/v1",
            None,
            r#"{"visibility":"unlisted"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = anonymous(&f, as_user("GET", "/v1/videos/v1/original", None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn media_carries_last_modified_and_answers_if_modified_since() {
    let f = media_fixture().await;
    let video = put_video(&f, "v1", &f.user_id, Visibility::Public).await;
    put_media(&f, "v1").await;
    let date = |ms: i64| super::validators::http_date(u64::try_from(ms / 1000).expect("positive"));
    let with = |url: &str, headers: &[(&str, &str)]| {
        let mut req = Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).expect("request")
    };
    let cases = [
        ("/v1/videos/v1/original", video.created_at_ms),
        ("/v1/videos/v1/hls/480p/seg_1.ts", video.ready_at_ms),
        ("/v1/videos/v1/thumbnail.jpg", video.ready_at_ms),
    ];
    assert!(video.ready_at_ms >= video.created_at_ms && video.created_at_ms > 0);
    for (url, at) in cases {
        let (status, h, _) = anonymous(&f, with(url, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::LAST_MODIFIED], date(at).as_str(), "{url}");
        let tag = h[header::ETAG].to_str().expect("ascii").to_owned();
        // At or after the modification: 304, with the caching headers.
        for since in [date(at), date(at + 60_000)] {
            let (status, h, body) =
                anonymous(&f, with(url, &[("if-modified-since", &since)])).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{url} {since}");
            assert!(body.is_empty());
            assert_eq!(h[header::ETAG], tag.as_str());
            assert_eq!(
                h[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
        }
        // Before it, or not a date: 200.
        for since in [date(at - 1_000), "last week".to_owned()] {
            let (status, _, _) = anonymous(&f, with(url, &[("if-modified-since", &since)])).await;
            assert_eq!(status, StatusCode::OK, "{url} {since}");
        }
        // If-None-Match takes precedence: another tag with a date that
        // would give 304 is a 200.
        let (status, _, _) = anonymous(
            &f,
            with(
                url,
                &[
                    ("if-none-match", "\"other\""),
                    ("if-modified-since", &date(at)),
                ],
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{url}");
    }
    // HEAD of the original through streaming, conditional on the date too.
    let head = Request::head("/v1/videos/v1/original")
        .header("if-modified-since", date(video.created_at_ms))
        .body(Body::empty())
        .expect("request");
    assert_eq!(anonymous(&f, head).await.0, StatusCode::NOT_MODIFIED);
    // If-Range with our Last-Modified (strong: over a second old) keeps
    // the range; another date sends the whole.
    crate::rt::sleep(std::time::Duration::from_millis(1100)).await;
    let ranged = |if_range: String| {
        with(
            "/v1/videos/v1/original",
            &[("range", "bytes=0-2"), ("if-range", &if_range)],
        )
    };
    let (status, _, body) = anonymous(&f, ranged(date(video.created_at_ms))).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"the"[..])
    );
    let (status, _, body) = anonymous(&f, ranged(date(video.created_at_ms - 5_000))).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"the original"[..]));
}

#[tokio::test]
async fn a_job_is_seen_only_by_those_who_see_its_video() {
    use crate::proto::SubmitJobRequest;
    let mut f = media_fixture().await;
    let worker = super::router_tests::start_service(&f, crate::services::ServiceKind::Worker).await;
    f.kept.push(worker);
    let (other, _) = other_user(&f).await;
    let mut jobs = Vec::new();
    for (id, visibility) in [
        ("mine", Visibility::Private),
        ("shared", Visibility::Unlisted),
    ] {
        put_video(&f, id, &f.user_id, visibility).await;
        let job = f
            .runtime
            .pool
            .worker()
            .await
            .expect("worker")
            .submit_job(SubmitJobRequest {
                kind: media::TRANSCODE_JOB.into(),
                payload_json: crate::services::worker::transcode::payload_json(
                    id,
                    &media::original_key(id),
                ),
                idempotency_key: media::transcode_job_id(id),
                ..SubmitJobRequest::default()
            })
            .await
            .expect("submitted")
            .into_inner()
            .job
            .expect("a job");
        jobs.push(job.id);
    }
    let (private_job, unlisted_job) = (&jobs[0], &jobs[1]);
    // The owner sees both; another user the unlisted one's only, and the
    // private one's exactly as an id nobody has; no token: 401.
    for job in &jobs {
        let (status, _, body) = send(&f, get(&format!("/v1/jobs/{job}"), None)).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(json(&body)["id"], job.as_str());
    }
    let url = format!("/v1/jobs/{unlisted_job}");
    let (status, _, _) = send(&f, as_user("GET", &url, Some(&other), "")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, nobody) = send(&f, as_user("GET", "/v1/jobs/nobody", Some(&other), "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&nobody), r#"no job "nobody""#);
    let url = format!("/v1/jobs/{private_job}");
    let (status, _, body) = send(&f, as_user("GET", &url, Some(&other), "")).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::NOT_FOUND, format!("no job {private_job:?}"))
    );
    let (status, _, _) = anonymous(&f, as_user("GET", &url, None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
