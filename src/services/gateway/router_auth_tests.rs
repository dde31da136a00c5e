//! The gateway's account routes and bearer-token rule against the real
//! auth service: sign-up, log-in and refresh; every other `/v1/` route
//! answers 401 with a JSON body and `WWW-Authenticate: Bearer` to a
//! missing, garbage, forged, expired, revoked or refresh token; 503 when
//! the auth service is unreachable.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode, header};

use super::router;
use super::router_tests::{auth_secret, error_of, fixture, get, send};
use crate::blob::memory::MemoryBlobStore;
use crate::bus::memory::MemoryBus;
use crate::client::{ClientPool, PoolConfig};
use crate::kernel::Runtime;
use crate::middleware::auth::Keyring;
use crate::proto::RevokeTokenRequest;
use crate::registry::memory::MemoryRegistry;
use crate::services::auth::Secret;
use crate::services::auth::token::{ACCESS_TTL, Kind, Tokens};

fn post_json(uri: &str, body: &serde_json::Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "none")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn with_auth(uri: &str, authorization: Option<&str>) -> Request<Body> {
    let mut req = get(uri, None);
    // `send` adds the fixture's token only when no header is set: an empty
    // value stands for "no header" below and is removed in `bare`.
    req.headers_mut().insert(
        header::AUTHORIZATION,
        authorization.unwrap_or("").parse().expect("header"),
    );
    req
}

#[tokio::test]
async fn accounts_sign_up_log_in_and_refresh() {
    let f = fixture().await;
    let creds = serde_json::json!({"email": "Ada@Example.com", "password": "correct horse 1"});
    let (status, _, body) = send(&f, post_json("/v1/auth/signup", &creds)).await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let signed: serde_json::Value = serde_json::from_slice(&body).expect("json");
    for field in ["user_id", "access_token", "refresh_token"] {
        assert!(
            signed[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }
    assert!(signed["access_expires_at_ms"].as_i64() < signed["refresh_expires_at_ms"].as_i64());
    assert!(!String::from_utf8_lossy(&body).contains("correct horse"));

    let again = serde_json::json!({"email": "ada@example.com", "password": "another one 2"});
    let (status, _, body) = send(&f, post_json("/v1/auth/signup", &again)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", error_of(&body));

    let (status, _, body) = send(&f, post_json("/v1/auth/login", &creds)).await;
    assert_eq!(status, StatusCode::OK);
    let logged: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(logged["user_id"], signed["user_id"]);

    let wrong_pw = serde_json::json!({"email": "ada@example.com", "password": "wrong horse 1"});
    let unknown = serde_json::json!({"email": "bob@example.com", "password": "correct horse 1"});
    let (s1, h1, b1) = send(&f, post_json("/v1/auth/login", &wrong_pw)).await;
    let (s2, _, b2) = send(&f, post_json("/v1/auth/login", &unknown)).await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        error_of(&b1),
        error_of(&b2),
        "never says which part was wrong"
    );
    assert_eq!(h1[header::WWW_AUTHENTICATE], "Bearer");

    let refresh = serde_json::json!({"refresh_token": logged["refresh_token"]});
    let (status, _, body) = send(&f, post_json("/v1/auth/refresh", &refresh)).await;
    assert_eq!(status, StatusCode::OK);
    let rotated: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_ne!(rotated["refresh_token"], logged["refresh_token"]);
    let (status, _, _) = send(&f, post_json("/v1/auth/refresh", &refresh)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a spent refresh token");

    let bad = serde_json::json!({"email": "x@y.z", "password": "short"});
    let (status, _, _) = send(&f, post_json("/v1/auth/signup", &bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(
        &f,
        post_json("/v1/auth/login", &serde_json::json!({"email": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn protected_routes_refuse_bad_tokens_with_401() {
    // With metadata: a media route asks it whether the video is public.
    let f = super::router_tests::media_fixture().await;
    let now = crate::rt::unix_ms();
    let ours = Tokens::new(&auth_secret());
    let expired = ours
        .issue("u1", Kind::Access, vec![], ACCESS_TTL, now - 3_600_000)
        .expect("issue")
        .token;
    let forged = Tokens::new(&Secret::new(vec![1u8; 32]))
        .issue("u1", Kind::Access, vec![], ACCESS_TTL, now)
        .expect("issue")
        .token;
    let refresh = ours
        .issue("u1", Kind::Refresh, vec![], ACCESS_TTL, now)
        .expect("issue")
        .token;
    let revoked = ours
        .issue("u1", Kind::Access, vec![], ACCESS_TTL, now)
        .expect("issue")
        .token;
    f.runtime
        .pool
        .auth()
        .await
        .expect("client")
        .revoke_token(RevokeTokenRequest {
            token: revoked.clone(),
            token_id: String::new(),
        })
        .await
        .expect("revoke");
    let cases = [
        ("Basic dXNlcjpwYXNz".to_owned(), "Bearer"),
        ("Bearer".to_owned(), "malformed"),
        ("Bearer garbage".to_owned(), "malformed"),
        (format!("Bearer {expired}"), "expired"),
        (format!("Bearer {forged}"), "bad signature"),
        (format!("Bearer {refresh}"), "not an access token"),
        (format!("Bearer {revoked}"), "revoked"),
    ];
    for path in [
        "/v1/videos",
        "/v1/videos/v1",
        "/v1/jobs/j1",
        "/v1/videos/v1/hls/master.m3u8",
    ] {
        for (authorization, says) in &cases {
            let (status, h, body) = send(&f, with_auth(path, Some(authorization))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {authorization}");
            assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
            assert!(
                error_of(&body).contains(says),
                "{path}: {}",
                error_of(&body)
            );
        }
        let mut bare = with_auth(path, None);
        bare.headers_mut().remove(header::AUTHORIZATION);
        let res = tower::ServiceExt::oneshot(f.app.clone(), bare)
            .await
            .expect("infallible");
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a token"
        );
    }
    // An upload without a token is refused before its body is read.
    let upload = Request::post("/v1/videos?name=a.mp4")
        .header(header::CONTENT_TYPE, "video/mp4")
        .header(header::AUTHORIZATION, "Bearer x")
        .body(Body::from(vec![0u8; 10]))
        .expect("request");
    assert_eq!(send(&f, upload).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn auth_unreachable_is_503() {
    let registry = Arc::new(MemoryRegistry::new());
    let keys = Keyring::generate("test");
    let runtime = Runtime {
        registry: registry.clone(),
        bus: Arc::new(MemoryBus::new()),
        blobs: Arc::new(MemoryBlobStore::new()),
        pool: ClientPool::new(registry, PoolConfig::new(keys.clone(), "api-gateway")),
        keys,
        metrics: crate::middleware::metrics::Metrics::default(),
        ready: Default::default(),
    };
    let app = router(runtime, 1000);
    let req = Request::get("/v1/videos")
        .header(header::AUTHORIZATION, "Bearer abc.def.ghi")
        .body(Body::empty())
        .expect("request");
    let res = tower::ServiceExt::oneshot(app, req)
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A log-in from `peer` (the connection's address), with an
/// `X-Forwarded-For` if given; its status.
async fn log_in_from(
    app: &axum::Router,
    peer: &str,
    forwarded: Option<&str>,
    password: &str,
) -> StatusCode {
    use tower::ServiceExt as _;
    let body = serde_json::json!({"email": "vic@example.com", "password": password});
    let mut req = post_json("/v1/auth/login", &body);
    req.extensions_mut().insert(crate::rt::transport::PeerAddr(
        format!("{peer}:40000").parse().expect("addr"),
    ));
    if let Some(f) = forwarded {
        req.headers_mut()
            .insert("x-forwarded-for", f.parse().expect("header"));
    }
    app.clone().oneshot(req).await.expect("infallible").status()
}

#[tokio::test]
async fn log_in_lock_out_follows_the_client_address() {
    let f = fixture().await;
    let creds = serde_json::json!({"email": "vic@example.com", "password": "correct horse 1"});
    let (status, _, _) = send(&f, post_json("/v1/auth/signup", &creds)).await;
    assert_eq!(status, StatusCode::CREATED);
    let config = super::Config {
        trusted_proxies: super::client_addr::parse_trusted_proxies("10.0.0.1").expect("net"),
        ..super::Config::default()
    };
    let app = super::router_with(f.runtime.clone(), &config);
    let (attacker, victim, proxy) = ("198.51.100.7", "203.0.113.9", "10.0.0.1");
    // The attacker forges the victim's address in X-Forwarded-For: ignored,
    // its own address is the one locked out.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(log_in_from(&app, attacker, Some(victim), "wrong horse 1").await);
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    assert_eq!(
        log_in_from(&app, victim, None, "correct horse 1").await,
        StatusCode::OK,
        "the victim's address is not locked"
    );
    // Behind the trusted proxy, X-Forwarded-For names the client.
    assert_eq!(
        log_in_from(&app, proxy, Some(attacker), "correct horse 1").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the attacker is still locked out behind the proxy"
    );
    assert_eq!(
        log_in_from(
            &app,
            proxy,
            Some(&format!("{attacker}, {victim}")),
            "correct horse 1"
        )
        .await,
        StatusCode::OK,
        "the proxy's own entry names the victim"
    );
}
