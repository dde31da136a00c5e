//! `docs/openapi.json` describes the router exactly: every path the router
//! has is in it, with exactly the methods the router answers on it, and it
//! names nothing else (but `/health` and `/ready`, which every service's
//! host serves beside the API: `tests/openapi.rs` probes those on the
//! monolith). The router's paths come from the router itself, so a route
//! added to it fails here until the description has it too; its methods
//! are what the router answers (405 is "not this method").

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use super::router_tests::{error_of, fixture};

/// Paths in the description that the host serves, not the API's router.
const HOST_PATHS: [&str; 2] = ["/health", "/ready"];

/// Every method a route could have (`HEAD` is implied by `GET`, as axum
/// answers it so; it is probed only where there is no `GET`).
const METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

fn spec() -> Value {
    serde_json::from_str(super::OPENAPI_JSON).expect("docs/openapi.json is JSON")
}

/// The description's paths, each with its methods (upper case).
fn described() -> BTreeMap<String, BTreeSet<String>> {
    let spec = spec();
    let paths = spec["paths"].as_object().expect("paths");
    paths
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("a path item")
                .keys()
                .filter(|k| METHODS.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The path templates the router has. axum offers no list of them, but its
/// `Debug` prints each as `RouteId(n): "/path"` in its `path_router`;
/// should that ever change, this finds none and the test fails (it never
/// passes on nothing).
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let dump = format!("{router:?}");
    // The routes are in `path_router`; `fallback_router` holds axum's own
    // catch-alls (`/` and `/{*...}`), which are no routes.
    let routes = dump
        .split_once("fallback_router:")
        .map_or(dump.as_str(), |(routes, _)| routes);
    let mut out = BTreeSet::new();
    let mut rest = routes;
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        let Some(close) = rest.find(')') else { break };
        let after = &rest[close + 1..];
        if let Some(quoted) = after.strip_prefix(": \"")
            && let Some(end) = quoted.find('"')
        {
            out.insert(quoted[..end].to_owned());
        }
    }
    out
}

/// A concrete path for `template`: each `{param}` a value of its form.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{rendition}" => "480p",
            "{segment}" => "seg_1.ts",
            "{grant}" => "p1.k.v1.1.sig",
            // The web app's files are its route's only names (any other
            // answers the unknown route's 404).
            "{file}" => "app.js",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_description_names_every_route_and_nothing_else() {
    let f = fixture().await;
    let routed = router_paths(&f.app);
    assert!(
        routed.len() >= 20 && routed.contains("/v1/videos/{id}"),
        "the router's paths could not be read from its Debug output: {routed:?}"
    );
    let described = described();
    let described_paths: BTreeSet<String> = described
        .keys()
        .filter(|p| !HOST_PATHS.contains(&p.as_str()))
        .cloned()
        .collect();
    let missing: Vec<_> = routed.difference(&described_paths).collect();
    let extra: Vec<_> = described_paths.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routed but not in docs/openapi.json: {missing:?}; described but not routed: {extra:?}"
    );

    for (template, methods) in &described {
        if HOST_PATHS.contains(&template.as_str()) {
            continue;
        }
        let path = concrete(template);
        let mut served = BTreeSet::new();
        for method in &METHODS {
            if *method == Method::HEAD && served.contains("GET") {
                continue;
            }
            let req = Request::builder()
                .method(method.clone())
                .uri(&path)
                .body(Body::empty())
                .expect("request");
            let res = f.app.clone().oneshot(req).await.expect("infallible");
            let status = res.status();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert_ne!(
                status,
                StatusCode::NOT_FOUND,
                "{method} {path}: the path of {template} is unknown to the router"
            );
            if status == StatusCode::METHOD_NOT_ALLOWED {
                // (A HEAD answer has no body.)
                if *method != Method::HEAD {
                    assert_eq!(error_of(&body), "method not allowed on this path");
                }
            } else {
                served.insert(method.as_str().to_owned());
            }
        }
        assert_eq!(
            &served, methods,
            "{template}: the methods the router answers, and those described"
        );
    }
}

#[tokio::test]
async fn the_description_is_served_open_and_is_openapi_3_1() {
    let f = fixture().await;
    let req = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK, "no token needed");
    assert_eq!(
        res.headers()[http::header::CONTENT_TYPE],
        "application/json"
    );
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    let served: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(served, spec());
    assert_eq!(served["openapi"], "3.1.0");
    // Every reference points at something that is there.
    let text = super::OPENAPI_JSON;
    let mut rest = text;
    let mut refs = 0;
    while let Some(at) = rest.find("\"$ref\": \"#/") {
        rest = &rest[at + "\"$ref\": \"#/".len()..];
        let end = rest.find('"').expect("a closing quote");
        let pointer = format!("/{}", &rest[..end]);
        assert!(
            served.pointer(&pointer).is_some(),
            "$ref #{pointer} names nothing"
        );
        refs += 1;
    }
    assert!(refs > 50, "{refs} references");
    // Each operation has a unique id, and a `default` (error) answer.
    let mut ids = BTreeSet::new();
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "{id} twice");
            assert!(
                op["responses"].get("default").is_some(),
                "{method} {path}: no default (error) response"
            );
        }
    }
}

/// What schemathesis (`tests/openapi.rs`) found, kept: `null` for an
/// optional field is refused (it was read as absent), an empty rendition
/// is refused (it was read as none), so are an empty `page_size` and a
/// body of whitespace (both read as absent), and a request with no token gets 401 before its query's length
/// is judged (it got 414).
#[tokio::test]
async fn what_schemathesis_found_stays_fixed() {
    use super::router_tests::send;
    let f = fixture().await;
    let json_req = |method: Method, uri: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request")
    };
    for (method, uri, body, field) in [
        (
            Method::PATCH,
            "/v1/videos/v1",
            r#"{"visibility":null}"#,
            "visibility",
        ),
        (
            Method::PATCH,
            "/v1/videos/v1",
            r#"{"title":"t","description":null}"#,
            "description",
        ),
        (
            Method::POST,
            "/v1/videos/v1/playback",
            r#"{"ttl_secs":null}"#,
            "ttl_secs",
        ),
        (
            Method::POST,
            "/v1/videos/v1/sessions",
            r#"{"rendition":null}"#,
            "rendition",
        ),
        (
            Method::POST,
            "/v1/videos/v1/sessions/s1/stop",
            r#"{"watched_ms":null}"#,
            "watched_ms",
        ),
        (
            Method::POST,
            "/v1/auth/logout",
            r#"{"refresh_token":null}"#,
            "refresh_token",
        ),
    ] {
        let (status, _, answer) = send(&f, json_req(method.clone(), uri, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri} {body}");
        let message = error_of(&answer);
        assert!(message.contains(field), "{method} {uri}: {message}");
    }
    let (status, _, answer) = send(
        &f,
        json_req(
            Method::POST,
            "/v1/videos/v1/sessions",
            r#"{"rendition":""}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&answer).starts_with("rendition:"));
    // A body that is only whitespace is no JSON (it was read as none).
    for uri in ["/v1/videos/v1/playback", "/v1/auth/logout"] {
        let (status, _, answer) = send(&f, json_req(Method::POST, uri, "\n")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(error_of(&answer).starts_with("body"), "{uri}");
    }

    let (status, _, answer) = send(
        &f,
        Request::get("/v1/videos?page_size=")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&answer), "page_size: expected a number");

    let long = format!("/v1/videos?name=a&title={}", "x".repeat(3000));
    let unsigned = Request::post(&long)
        .header(http::header::AUTHORIZATION, "")
        .header(http::header::CONTENT_TYPE, "video/mp4")
        .body(Body::from("x"))
        .expect("request");
    let (status, headers, _) = send(&f, unsigned).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token: 401 first");
    assert!(headers.contains_key(http::header::WWW_AUTHENTICATE));
    let (status, _, answer) = send(
        &f,
        Request::get(&long).body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "with a token: 414");
    assert!(error_of(&answer).starts_with("query: exceeds"));
    // Open routes judge it too.
    let (status, _, _) = send(
        &f,
        Request::get(format!("/openapi.json?{}", "x".repeat(3000)))
            .header(http::header::AUTHORIZATION, "")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
}
