//! HTTP caching for media (RFC 9110 section 13, RFC 9111): a strong `ETag`
//! per blob, `If-None-Match` answered 304, `If-Range` honoured, and the
//! `Cache-Control` of each kind of answer.
//!
//! A blob is written once under a name that is never reused (video ids are
//! random; a retried transcode replaces its outputs before the video is
//! ready, and media is served only once it is), so its name and size
//! identify its bytes: the validator is a hash of the name with the size,
//! the same on every gateway and whichever path (a local file or the
//! streaming service) sends the bytes.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest as _, Sha256};

/// Media that never changes once ready: originals, segments, thumbnails.
/// `private`: the bytes are the owner's, or a signed URL holder's.
pub const IMMUTABLE: &str = "private, max-age=31536000, immutable";
/// Playlists: a short time, as players re-read them.
pub const PLAYLIST: &str = "private, max-age=60";

/// The strong entity tag of the blob `key` of `size` bytes.
#[must_use]
pub fn etag(key: &str, size: u64) -> HeaderValue {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(40);
    for b in &digest[..12] {
        hex.push_str(&format!("{b:02x}"));
    }
    HeaderValue::from_str(&format!("\"{hex}-{size:x}\"")).expect("hex digits and a quote")
}

/// Whether `If-None-Match` matches `etag` (weak comparison, as RFC 9110
/// 13.1.2 asks): then a GET or HEAD is answered 304.
#[must_use]
pub fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .take(64)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// Whether a `Range` may be honoured given `If-Range` (RFC 9110 13.1.5):
/// with no `If-Range`, yes; with one, only if it is exactly our strong tag
/// (a date cannot match: no `Last-Modified` is sent).
#[must_use]
pub fn range_allowed(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes())
}

/// Marks `headers` of an answer with `etag` and `cache_control`.
pub fn mark(headers: &mut HeaderMap, etag: HeaderValue, cache_control: &'static str) {
    headers.insert(header::ETAG, etag);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
}

/// The 304 for `etag`.
#[must_use]
pub fn not_modified_response(
    etag: HeaderValue,
    cache_control: &'static str,
) -> axum::response::Response {
    let mut res = axum::response::Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    mark(res.headers_mut(), etag, cache_control);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn tags_name_the_blob_and_its_size() {
        let a = etag("originals/v1", 10);
        assert_eq!(a, etag("originals/v1", 10));
        assert_ne!(a, etag("originals/v1", 11));
        assert_ne!(a, etag("originals/v2", 10));
        let s = a.to_str().expect("ascii");
        assert!(
            s.starts_with('"') && s.ends_with('"') && !s.starts_with("W/"),
            "{s}"
        );
    }

    #[test]
    fn if_none_match_compares_weakly_and_if_range_strongly() {
        let tag = etag("k", 1);
        let t = tag.to_str().expect("ascii").to_owned();
        assert!(not_modified(&with(header::IF_NONE_MATCH, &t), &tag));
        assert!(not_modified(
            &with(header::IF_NONE_MATCH, &format!("W/{t}")),
            &tag
        ));
        assert!(not_modified(
            &with(header::IF_NONE_MATCH, &format!("\"x\", {t}")),
            &tag
        ));
        assert!(not_modified(&with(header::IF_NONE_MATCH, "*"), &tag));
        assert!(!not_modified(
            &with(header::IF_NONE_MATCH, "\"other\""),
            &tag
        ));
        assert!(!not_modified(&HeaderMap::new(), &tag));
        assert!(range_allowed(&HeaderMap::new(), &tag));
        assert!(range_allowed(&with(header::IF_RANGE, &t), &tag));
        assert!(!range_allowed(
            &with(header::IF_RANGE, &format!("W/{t}")),
            &tag
        ));
        assert!(!range_allowed(
            &with(header::IF_RANGE, "Sat, 05 Dec 2026 00:00:00 GMT"),
            &tag
        ));
    }
}
