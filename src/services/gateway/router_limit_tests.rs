//! The router's limits against the real streaming and auth services: a
//! JSON body that stalls is answered 408 at its deadline; a client address
//! or an account over its share of requests in flight gets 429 (JSON,
//! `Retry-After`) while others are served; the budget in all gives 503.
//! (Connections and send timeouts belong to the edge server: `tests/edge.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::limit::RequestLimits;
use super::router_tests::{Fixture, error_of, fixture, get};
use super::{Config, router_with};
use crate::proto::SignUpRequest;
use crate::rt::{self, transport::PeerAddr};

/// The fixture's gateway with `limits` instead of the defaults.
async fn limited(limits: RequestLimits) -> Fixture {
    let mut f = fixture().await;
    super::router_tests::with_metadata(&mut f).await;
    // Public: the second user of the account test reads it too.
    super::router_tests::put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Public).await;
    f.app = router_with(
        f.runtime.clone(),
        &Config {
            max_upload_bytes: 1000,
            limits,
            ..Config::default()
        },
    );
    f.blobs
        .put("originals/v1", Bytes::from(vec![7u8; 1 << 20]))
        .await
        .expect("put");
    f
}

fn small() -> RequestLimits {
    RequestLimits {
        api_in_flight: 8,
        media_in_flight: 8,
        client_api_in_flight: 2,
        client_media_in_flight: 3,
        account_api_in_flight: 4,
        account_media_in_flight: 2,
        body_timeout: Duration::from_secs(5),
    }
}

/// A request from `peer` (as the edge server marks it), with `token`.
fn from(mut req: Request<Body>, peer: [u8; 4], token: &str) -> Request<Body> {
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from((peer, 40_000))));
    if !token.is_empty() {
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    req
}

/// A login whose body sends its first bytes and then nothing.
fn stalled_login() -> Request<Body> {
    let first: Result<Bytes, std::io::Error> = Ok(Bytes::from_static(b"{\"email\":\"a@b.c\","));
    let body = Body::from_stream(futures::stream::iter([first]).chain(futures::stream::pending()));
    Request::post("/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "200")
        .body(body)
        .expect("request")
}

async fn call(f: &Fixture, req: Request<Body>) -> Response {
    f.app.clone().oneshot(req).await.expect("infallible")
}

async fn answer(res: Response) -> (StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Asserts a refusal: `status`, `Retry-After: 1`, a JSON error naming `what`.
fn assert_refused(got: &(StatusCode, http::HeaderMap, Bytes), status: StatusCode, what: &str) {
    assert_eq!(got.0, status, "{:?}", got.2);
    assert_eq!(got.1[header::RETRY_AFTER], "1");
    let error = error_of(&got.2);
    assert!(error.contains(what), "{error}");
}

async fn second_user(f: &Fixture) -> String {
    f.runtime
        .pool
        .auth()
        .await
        .expect("auth")
        .sign_up(SignUpRequest {
            email: format!("{}@example.com", rt::random_hex128()),
            password: "correct horse battery".into(),
            display_name: String::new(),
            client_address: String::new(),
        })
        .await
        .expect("sign-up")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token
}

#[tokio::test]
async fn a_json_body_that_stalls_is_answered_408_at_its_deadline() {
    let body_timeout = Duration::from_millis(300);
    let f = limited(RequestLimits {
        body_timeout,
        ..small()
    })
    .await;
    let started = rt::now();
    let got = answer(call(&f, stalled_login()).await).await;
    let took = rt::now() - started;
    assert_eq!(got.0, StatusCode::REQUEST_TIMEOUT, "{:?}", got.2);
    assert_eq!(error_of(&got.2), "body: not received whole within 300 ms");
    assert!(
        took >= body_timeout && took < body_timeout * 5,
        "answered after {took:?}"
    );
    // A body that arrives in time is read as before.
    let ok = Request::post("/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"email":"nobody@example.com","password":"wrong horse 1"}"#,
        ))
        .expect("request");
    assert_eq!(answer(call(&f, ok).await).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_address_over_its_share_gets_429_while_another_is_served() {
    let f = limited(small()).await;
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    // Two stalled logins from `a` hold its API share (2).
    let held: Vec<_> = (0..2)
        .map(|_| {
            let app = f.app.clone();
            rt::spawn(app.oneshot(from(stalled_login(), a, "")))
        })
        .collect();
    rt::sleep(Duration::from_millis(100)).await;
    let refused = answer(call(&f, from(get("/v1/videos/v1", None), a, &f.token)).await).await;
    assert_refused(
        &refused,
        StatusCode::TOO_MANY_REQUESTS,
        "too many API requests in flight from this client address",
    );
    // Media is a budget of its own, and `b` has its own share.
    let media = answer(
        call(
            &f,
            from(get("/v1/videos/v1/thumbnail.jpg", None), a, &f.token),
        )
        .await,
    )
    .await;
    assert_ne!(media.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", media.2);
    let other =
        answer(call(&f, from(get("/v1/videos/v1/original", None), b, &f.token)).await).await;
    assert_eq!(other.0, StatusCode::OK);
    for task in held {
        let res = task.await.expect("task").expect("infallible");
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    }
    // Cut, they gave their places back.
    let again =
        answer(call(&f, from(get("/v1/videos/v1/original", None), a, &f.token)).await).await;
    assert_eq!(again.0, StatusCode::OK);
}

#[tokio::test]
async fn an_account_over_its_share_gets_429_while_another_is_served() {
    let f = limited(small()).await;
    let other = second_user(&f).await;
    let peer = |i: u8| [10, 0, 1, i];
    // Downloads nobody reads hold the account's media share (2), from any
    // address.
    let mut unread = Vec::new();
    for i in 0..2 {
        let res = call(
            &f,
            from(get("/v1/videos/v1/original", None), peer(i), &f.token),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        unread.push(res);
    }
    let refused = answer(
        call(
            &f,
            from(get("/v1/videos/v1/original", None), peer(3), &f.token),
        )
        .await,
    )
    .await;
    assert_refused(
        &refused,
        StatusCode::TOO_MANY_REQUESTS,
        "too many media requests in flight for this account",
    );
    let served = answer(
        call(
            &f,
            from(get("/v1/videos/v1/original", None), peer(4), &other),
        )
        .await,
    )
    .await;
    assert_eq!((served.0, served.2.len()), (StatusCode::OK, 1 << 20));
    // The API is a share of its own.
    let api = answer(call(&f, from(get("/v1/videos/v1/job", None), peer(5), &f.token)).await).await;
    assert_ne!(api.0, StatusCode::TOO_MANY_REQUESTS);
    // A body read (or dropped) gives its place back.
    let first = unread.pop().expect("one");
    assert_eq!(answer(first).await.2.len(), 1 << 20);
    let after = answer(
        call(
            &f,
            from(get("/v1/videos/v1/original", None), peer(6), &f.token),
        )
        .await,
    )
    .await;
    assert_eq!(after.0, StatusCode::OK);
}

#[tokio::test]
async fn past_the_budget_in_all_the_answer_is_503() {
    let f = limited(RequestLimits {
        api_in_flight: 2,
        ..small()
    })
    .await;
    // Without a peer address (a request from inside) only the budget counts.
    let held: Vec<_> = (0..2)
        .map(|_| rt::spawn(f.app.clone().oneshot(stalled_login())))
        .collect();
    rt::sleep(Duration::from_millis(100)).await;
    let refused = answer(call(&f, get("/v1/videos/v1", None)).await).await;
    assert_refused(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "too many API requests in flight: try again shortly",
    );
    for task in held {
        task.abort();
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_share() {
    let mut f = limited(small()).await;
    f.app = router_with(
        f.runtime.clone(),
        &Config {
            max_upload_bytes: 1000,
            limits: small(),
            trusted_proxies: vec!["10.9.9.9/32".parse().expect("net")],
            ..Config::default()
        },
    );
    let proxy = [10, 9, 9, 9];
    let forwarded = |req: Request<Body>, client: &str| {
        let mut req = from(req, proxy, "");
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().expect("header"));
        req
    };
    // Client 203.0.113.1 fills its share (2) through the proxy.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let app = f.app.clone();
            rt::spawn(app.oneshot(forwarded(stalled_login(), "203.0.113.1")))
        })
        .collect();
    rt::sleep(Duration::from_millis(100)).await;
    let refused = answer(call(&f, forwarded(stalled_login(), "203.0.113.1")).await).await;
    assert_refused(
        &refused,
        StatusCode::TOO_MANY_REQUESTS,
        "too many API requests in flight from this client address",
    );
    // Another client behind the same proxy is not counted with it.
    let login = Request::post("/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"email":"nobody@example.com","password":"wrong horse 1"}"#,
        ))
        .expect("request");
    let other = answer(call(&f, forwarded(login, "203.0.113.2")).await).await;
    assert_eq!(other.0, StatusCode::UNAUTHORIZED, "{:?}", other.2);
    // A peer that is not a trusted proxy cannot pick its share by header.
    let mut spoofed = from(stalled_login(), [10, 0, 0, 7], "");
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.3".parse().expect("header"));
    let mut spoofed2 = from(stalled_login(), [10, 0, 0, 7], "");
    spoofed2
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.4".parse().expect("header"));
    let s1 = rt::spawn(f.app.clone().oneshot(spoofed));
    let s2 = rt::spawn(f.app.clone().oneshot(spoofed2));
    rt::sleep(Duration::from_millis(100)).await;
    let third = answer(call(&f, from(stalled_login(), [10, 0, 0, 7], "")).await).await;
    assert_eq!(third.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", third.2);
    for task in held.into_iter().chain([s1, s2]) {
        let res = task.await.expect("task").expect("infallible");
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    }
}

/// The fixture's gateway with `rates` instead of the defaults.
async fn rated(rates: super::rate::Rates) -> Fixture {
    let mut f = fixture().await;
    super::router_tests::with_metadata(&mut f).await;
    super::router_tests::put_video(&f, "v1", &f.user_id, crate::proto::Visibility::Private).await;
    f.app = router_with(
        f.runtime.clone(),
        &Config {
            max_upload_bytes: 1000,
            rates,
            ..Config::default()
        },
    );
    f
}

fn signup(email: &str) -> Request<Body> {
    Request::post("/v1/auth/signup")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"email":"{email}","password":"correct horse battery"}}"#
        )))
        .expect("request")
}

#[tokio::test]
async fn a_flood_of_sign_ups_from_one_address_is_throttled_while_another_signs_up() {
    use super::rate::{Rate, Rates};
    let f = rated(Rates {
        signup: Rate::new(3, Duration::from_secs(3600)),
        ..Rates::default()
    })
    .await;
    let email = || format!("{}@example.com", rt::random_hex128());
    for _ in 0..3 {
        let got = answer(call(&f, from(signup(&email()), [198, 51, 100, 1], "")).await).await;
        assert_eq!(got.0, StatusCode::CREATED, "{:?}", got.2);
    }
    // The fourth from that address: 429, Retry-After of the wait (one each
    // 20 min), a JSON body; nothing signed up (the email stays free).
    let fourth = email();
    let got = answer(call(&f, from(signup(&fourth), [198, 51, 100, 1], "")).await).await;
    assert_eq!(got.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", got.2);
    let wait: u64 = got.1[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1100..=1200).contains(&wait), "{wait}");
    assert!(
        error_of(&got.2).contains("sign-ups from this address"),
        "{:?}",
        got.2
    );
    // Another address signs up, with that very email.
    let got = answer(call(&f, from(signup(&fourth), [198, 51, 100, 2], "")).await).await;
    assert_eq!(got.0, StatusCode::CREATED, "{:?}", got.2);
    // Log-ins from the throttled address have their own rate.
    let login = Request::post("/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"email":"{fourth}","password":"correct horse battery"}}"#
        )))
        .expect("request");
    let got = answer(call(&f, from(login, [198, 51, 100, 1], "")).await).await;
    assert_eq!(got.0, StatusCode::OK, "{:?}", got.2);
}

#[tokio::test]
async fn playback_grants_and_upload_starts_are_counted_per_account() {
    use super::rate::{Rate, Rates};
    let f = rated(Rates {
        playback: Rate::new(2, Duration::from_secs(60)),
        upload: Rate::new(1, Duration::from_secs(3600)),
        ..Rates::default()
    })
    .await;
    let grant = || {
        Request::post("/v1/videos/v1/playback")
            .body(Body::empty())
            .expect("request")
    };
    for peer in [[10, 0, 0, 1], [10, 0, 0, 2]] {
        let got = answer(call(&f, from(grant(), peer, &f.token)).await).await;
        assert_eq!(got.0, StatusCode::OK, "{:?}", got.2);
    }
    // A third from yet another address: the account's rate, not the address's.
    let got = answer(call(&f, from(grant(), [10, 0, 0, 3], &f.token)).await).await;
    assert_eq!(got.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", got.2);
    assert!(error_of(&got.2).contains("playback URLs made by this account"));
    // An upload start counts once: the second (one-shot or tus) is refused
    // before its body is read.
    let one_shot = Request::post("/v1/videos?name=a.mp4")
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from(vec![1u8; 100]))
        .expect("request");
    let got = answer(call(&f, from(one_shot, [10, 0, 0, 1], &f.token)).await).await;
    assert_ne!(got.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", got.2);
    let tus = Request::post("/v1/uploads/")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .body(Body::empty())
        .expect("request");
    let got = answer(call(&f, from(tus, [10, 0, 0, 1], &f.token)).await).await;
    assert_eq!(got.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", got.2);
    assert!(error_of(&got.2).contains("uploads started by this account"));
    // Another account is not held by it.
    let other = second_user(&f).await;
    let got = answer(call(&f, from(grant(), [10, 0, 0, 3], &other)).await).await;
    assert_eq!(
        got.0,
        StatusCode::NOT_FOUND,
        "another's private video: {:?}",
        got.2
    );
}
