//! The web app: plain HTML, CSS and ES modules (`web/` in the repository),
//! embedded in the binary and served at `/` (the page) and `/app/{file}`
//! (its modules, style sheet and icon). Each answer carries its
//! `Content-Type`, a strong `ETag` (a hash of its bytes: `If-None-Match`
//! answers 304), `Cache-Control: no-cache` (the browser keeps a copy and
//! asks whether it is current, so a new binary's files are seen at once),
//! and a strict `Content-Security-Policy`: scripts, styles and connections
//! from this origin only, nothing inline, no frames. Anything else under
//! `/app/` is the API's JSON 404.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use sha2::{Digest as _, Sha256};

use super::error::ApiError;
use super::validators;

/// The page's Content-Security-Policy: only this origin's scripts, styles,
/// images (and thumbnails fetched into `blob:` URLs), media and
/// connections; nothing inline, no plugins, no frames, no `<base>`.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; \
     manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the browser keeps the files: a copy it revalidates (ETag) each use.
pub const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/app/` (`index.html` is served at `/`).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ctype:literal) => {
        Asset {
            name: $name,
            content_type: $ctype,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $name)),
        }
    };
}

/// Every file of the app.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("tus.js", "text/javascript; charset=utf-8"),
    asset!("events.js", "text/javascript; charset=utf-8"),
    asset!("views.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The strong tag of each asset, in [`ASSETS`]' order.
static TAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            let hex = crate::services::media::hex(&digest[..12]);
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex digits and quotes")
        })
        .collect()
});

/// The headers every answer of the app carries (the 304s too).
fn mark(headers: &mut HeaderMap, etag: HeaderValue) {
    validators::mark(headers, etag, CACHE_CONTROL);
    let fixed: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Signed playback URLs sit in paths: never send them along.
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The answer for `name`, or the API's JSON 404.
fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(at) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response();
    };
    let (asset, etag) = (&ASSETS[at], TAGS[at].clone());
    if validators::not_modified(request, &etag) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        mark(res.headers_mut(), etag);
        return res;
    }
    let mut res = asset.bytes.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    mark(res.headers_mut(), etag);
    res
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /app/{file}`: a module, the style sheet, the icon.
pub async fn file(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    match path {
        Ok(Path(name)) if name != "index.html" => serve(&name, &headers),
        _ => ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_named_once_with_a_type_and_a_tag() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert_eq!(TAGS.len(), ASSETS.len());
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{}", a.name);
            let ext = a.name.rsplit('.').next().unwrap_or_default();
            let want = match ext {
                "html" => "text/html",
                "css" => "text/css",
                "js" => "text/javascript",
                "svg" => "image/svg+xml",
                other => panic!("an asset of unknown kind: {other}"),
            };
            assert!(a.content_type.starts_with(want), "{}", a.name);
        }
    }

    /// Every module the page or another module imports is served, and no
    /// file has inline script or style (the policy would block it).
    #[test]
    fn imports_resolve_and_nothing_is_inline() {
        let text = |name: &str| {
            let a = ASSETS.iter().find(|a| a.name == name).expect(name);
            std::str::from_utf8(a.bytes).expect("UTF-8")
        };
        let html = text("index.html");
        assert!(html.contains(r#"<script type="module" src="/app/app.js"></script>"#));
        assert!(!html.contains("style="), "no inline styles");
        assert!(!html.contains("<style"), "no inline style sheets");
        assert_eq!(
            html.matches("<script").count(),
            1,
            "one script, no inline ones"
        );
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let js = text(a.name);
            for line in js.lines() {
                let Some(from) = line.split(" from '").nth(1) else {
                    continue;
                };
                let target = from.split('\'').next().unwrap_or_default();
                let name = target.strip_prefix("./").unwrap_or(target);
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {target}, which is not served",
                    a.name
                );
            }
            assert!(!js.contains("eval("), "{}: no eval", a.name);
            assert!(!js.contains("innerHTML"), "{}: no innerHTML", a.name);
        }
    }
}
