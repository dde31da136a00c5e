//! The web app's routes and the event stream through the router: the page
//! and its files with their types, tags and policy (and 304s), JSON 404s
//! for what is not there, `/v1/events` sending a video's states to its end,
//! its refusals, and its bound on open streams per account.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use super::router_tests::{Fixture, error_of, get, media_fixture, put_video, send};
use crate::proto::{CreateVideoRequest, UpdateVideoRequest, VideoState, Visibility};
use crate::rt;

/// Sends `req` without any credential.
async fn open(f: &Fixture, req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_types_tags_and_a_policy() {
    let f = media_fixture().await;
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/app/app.js", "text/javascript; charset=utf-8"),
        ("/app/api.js", "text/javascript; charset=utf-8"),
        ("/app/app.css", "text/css; charset=utf-8"),
        ("/app/icon.svg", "image/svg+xml"),
    ] {
        let (status, h, body) = open(&f, get(path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(h[header::CONTENT_TYPE], ctype, "{path}");
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            super::web::CSP,
            "{path}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert!(!body.is_empty());
        // The same tag: 304, still with the policy and the tag.
        let etag = h[header::ETAG].clone();
        let again = Request::get(path)
            .header(header::IF_NONE_MATCH, etag.clone())
            .body(Body::empty())
            .unwrap();
        let (status, h, body) = open(&f, again).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(h[header::ETAG], etag);
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], super::web::CSP);
        assert!(body.is_empty());
        let other = Request::get(path)
            .header(header::IF_NONE_MATCH, "\"something-else\"")
            .body(Body::empty())
            .unwrap();
        assert_eq!(open(&f, other).await.0, StatusCode::OK, "{path}");
    }
    let csp = super::web::CSP;
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let head = Request::head("/app/app.js").body(Body::empty()).unwrap();
    let (status, h, body) = open(&f, head).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    let post = Request::post("/").body(Body::empty()).unwrap();
    let (status, _, body) = open(&f, post).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!error_of(&body).is_empty());
}

/// What is not there is the API's JSON 404, under `/app/` and `/v1/` alike
/// (with the host's fallback, as `host::serve` adds it).
#[tokio::test]
async fn unknown_paths_are_json_404s() {
    let mut f = media_fixture().await;
    f.app = f.app.clone().fallback(super::not_found);
    for path in [
        "/app/nope.js",
        "/app/index.html",
        "/app/..%2FCargo.toml",
        "/app/",
        "/v1/nope",
        "/v1/videos/x/nope",
        "/index.html",
    ] {
        let (status, h, body) = open(&f, get(path, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        assert!(!error_of(&body).is_empty(), "{path}");
        assert!(!h.contains_key(header::CONTENT_SECURITY_POLICY), "{path}");
    }
}

/// Records a video of the fixture's user in state UPLOADED.
async fn uploaded_video(f: &Fixture, id: &str) {
    f.runtime
        .pool
        .metadata()
        .await
        .expect("metadata")
        .create_video(CreateVideoRequest {
            video_id: id.into(),
            owner_id: f.user_id.clone(),
            title: format!("video {id}"),
            content_type: "video/mp4".into(),
            size_bytes: 10,
            sha256_hex: "0".repeat(64),
            ..CreateVideoRequest::default()
        })
        .await
        .expect("created");
}

async fn set_state(f: &Fixture, id: &str, state: VideoState) {
    f.runtime
        .pool
        .metadata()
        .await
        .expect("metadata")
        .update_video(UpdateVideoRequest {
            video_id: id.into(),
            update_fields: vec!["state".into()],
            state: state as i32,
            ..UpdateVideoRequest::default()
        })
        .await
        .expect("updated");
}

/// An open event stream's body and what of it is unread.
struct Stream {
    body: Body,
    text: String,
}

impl Stream {
    async fn open(f: &Fixture, query: &str) -> Result<Self, (StatusCode, String)> {
        let req = Request::get(format!("/v1/events?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
            .body(Body::empty())
            .unwrap();
        let res = f.app.clone().oneshot(req).await.expect("infallible");
        if res.status() != StatusCode::OK {
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            return Err((status, error_of(&body)));
        }
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        Ok(Self {
            body: res.into_body(),
            text: String::new(),
        })
    }

    /// The next event (name and JSON data; comments skipped), `None` at
    /// the end of the stream.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(at) = self.text.find("\n\n") {
                let block: String = self.text.drain(..at + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("JSON data"));
                    }
                }
                match (name, data) {
                    (Some(n), Some(d)) => return Some((n, d)),
                    _ => continue, // a comment
                }
            }
            let frame = rt::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")?
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.text
                    .push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }
}

#[tokio::test]
async fn a_ready_video_sends_its_record_then_the_end() {
    let f = media_fixture().await;
    put_video(&f, "v1", &f.user_id, Visibility::Private).await;
    let mut s = Stream::open(&f, "videos=v1").await.expect("open");
    let (name, video) = s.next().await.expect("an event");
    assert_eq!((name.as_str(), &video["id"]), ("video", &"v1".into()));
    assert_eq!(video["state"], "ready");
    let (name, end) = s.next().await.expect("the end");
    assert_eq!((name.as_str(), &end["reason"]), ("end", &"settled".into()));
    assert!(s.next().await.is_none(), "closed");
}

/// A video that is not settled is followed until it is (no worker runs
/// here: the stream reads the record again after each failed watch).
#[tokio::test]
async fn a_video_is_followed_until_it_is_ready() {
    let f = media_fixture().await;
    uploaded_video(&f, "v2").await;
    put_video(&f, "v3", &f.user_id, Visibility::Private).await;
    let mut s = Stream::open(&f, "videos=v2,v3").await.expect("open");
    let mut first = [s.next().await.expect("one"), s.next().await.expect("two")];
    first.sort_by_key(|(_, v)| v["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(first[0].1["state"], "uploaded");
    assert_eq!(first[1].1["state"], "ready");
    set_state(&f, "v2", VideoState::Transcoding).await;
    set_state(&f, "v2", VideoState::Ready).await;
    let mut states = Vec::new();
    while let Some((name, data)) = s.next().await {
        if name == "end" {
            assert_eq!(data["reason"], "settled");
            break;
        }
        assert_eq!((name.as_str(), &data["id"]), ("video", &"v2".into()));
        states.push(data["state"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("ready"),
        "{states:?}"
    );
}

#[tokio::test]
async fn streams_are_refused_what_they_may_not_see_and_past_the_share() {
    let f = media_fixture().await;
    put_video(&f, "mine", &f.user_id, Visibility::Private).await;
    put_video(&f, "theirs", "someone-else", Visibility::Private).await;
    uploaded_video(&f, "busy").await;
    for (query, status) in [
        ("", StatusCode::BAD_REQUEST),
        ("videos=a/b", StatusCode::BAD_REQUEST),
        ("videos=1,2,3,4,5,6,7,8,9", StatusCode::BAD_REQUEST),
        ("videos=mine,theirs", StatusCode::NOT_FOUND),
        ("videos=nobody", StatusCode::NOT_FOUND),
    ] {
        let e = Stream::open(&f, query).await.err().expect(query);
        assert_eq!(e.0, status, "{query}: {}", e.1);
    }
    let (status, h, _) = open(&f, get("/v1/events?videos=mine", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");

    // The account's share of open streams: a fifth is refused until one
    // closes.
    let per_account = super::events::Limits::default().per_account;
    let mut held = Vec::new();
    for _ in 0..per_account {
        held.push(Stream::open(&f, "videos=busy").await.expect("room"));
    }
    let (status, message) = Stream::open(&f, "videos=busy").await.err().expect("full");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{message}");
    assert!(message.contains("event streams"), "{message}");
    // Other routes still answer.
    let (status, _, _) = send(&f, get("/v1/videos/mine", None)).await;
    assert_eq!(status, StatusCode::OK);
    drop(held.pop());
    let mut again = Stream::open(&f, "videos=busy")
        .await
        .expect("a place again");
    let (name, _) = again.next().await.expect("an event");
    assert_eq!(name, "video");
}
