//! CORS for web players on other origins (`--http-cors-origins`): the
//! field's layer (tower-http's `CorsLayer`) answers preflights and marks
//! responses; with no origins configured (the default) there is no layer
//! and a browser keeps other origins' pages from reading the API.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Most origins in the list.
pub const MAX_ORIGINS: usize = 64;
/// How long a browser may keep a preflight's answer.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// The origins whose pages may call the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origins {
    /// None (no CORS headers at all).
    #[default]
    None,
    /// Any origin (`*`): the API takes bearer tokens, never cookies, so a
    /// page on another origin can only use a token it was given.
    Any,
    /// These, each `scheme://host[:port]` as browsers send it.
    List(Vec<HeaderValue>),
}

/// Parses `--http-cors-origins`: empty for none, `*` for any, or a
/// comma-separated list of `http(s)://host[:port]`.
///
/// # Errors
/// The entry that is not an origin, or too many.
pub fn parse(s: &str) -> Result<Origins, String> {
    let entries: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    match entries.as_slice() {
        [] => return Ok(Origins::None),
        ["*"] => return Ok(Origins::Any),
        _ => {}
    }
    if entries.len() > MAX_ORIGINS {
        return Err(format!("at most {MAX_ORIGINS} origins"));
    }
    entries
        .iter()
        .map(|e| {
            origin(e).ok_or_else(|| {
                format!(
                    "{e:?} is not an origin like https://example.com[:port] (or give \"*\" alone)"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Origins::List)
}

/// `e` as the `Origin` header a browser sends for it, if it is an origin.
fn origin(e: &str) -> Option<HeaderValue> {
    let uri: http::Uri = e.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    let no_user = !authority.as_str().contains('@');
    if !matches!(scheme, "http" | "https") || !bare || !no_user || e.ends_with('/') {
        return None;
    }
    HeaderValue::from_str(&format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
    .ok()
}

/// The layer for `origins`, or `None` for no CORS.
#[must_use]
pub fn layer(origins: &Origins) -> Option<CorsLayer> {
    let allow = match origins {
        Origins::None => return None,
        Origins::Any => AllowOrigin::any(),
        Origins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::RANGE,
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_RANGE,
                // tus (resumable uploads)
                HeaderName::from_static("tus-resumable"),
                HeaderName::from_static("upload-length"),
                HeaderName::from_static("upload-offset"),
                HeaderName::from_static("upload-metadata"),
                HeaderName::from_static("upload-checksum"),
                HeaderName::from_static("upload-defer-length"),
                HeaderName::from_static("upload-concat"),
            ])
            .expose_headers([
                header::CONTENT_RANGE,
                header::CONTENT_LENGTH,
                header::ACCEPT_RANGES,
                header::RETRY_AFTER,
                header::ETAG,
                HeaderName::from_static("x-request-id"),
                header::LOCATION,
                HeaderName::from_static("tus-resumable"),
                HeaderName::from_static("tus-version"),
                HeaderName::from_static("tus-extension"),
                HeaderName::from_static("tus-max-size"),
                HeaderName::from_static("tus-checksum-algorithm"),
                HeaderName::from_static("upload-offset"),
                HeaderName::from_static("upload-length"),
                HeaderName::from_static("upload-metadata"),
                HeaderName::from_static("upload-expires"),
                HeaderName::from_static("streamgate-video-id"),
            ])
            .max_age(MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_as_browsers_send_them() {
        assert_eq!(parse(""), Ok(Origins::None));
        assert_eq!(parse(" * "), Ok(Origins::Any));
        assert_eq!(
            parse("https://Player.example.com, http://localhost:8080"),
            Ok(Origins::List(vec![
                HeaderValue::from_static("https://player.example.com"),
                HeaderValue::from_static("http://localhost:8080"),
            ]))
        );
        for bad in [
            "player.example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://example.com?x",
            "ftp://example.com",
            "https://user@example.com",
            "*,https://example.com",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("is not an origin"), "{bad}: {e}");
        }
        let many = vec!["https://a.example"; MAX_ORIGINS + 1].join(",");
        assert!(parse(&many).is_err());
    }
}
