//! HTTP caching for media (RFC 9110 section 13, RFC 9111): a strong `ETag`
//! per blob and a `Last-Modified` per video, `If-None-Match` and
//! `If-Modified-Since` answered 304, `If-Range` honoured, and the
//! `Cache-Control` of each kind of answer.
//!
//! A blob is written once under a name that is never reused (video ids are
//! random; a retried transcode replaces its outputs before the video is
//! ready, and media is served only once it is), so its name and size
//! identify its bytes: the validator is a hash of the name with the size,
//! the same on every gateway and whichever path (a local file or the
//! streaming service) sends the bytes. Its modification time comes from
//! the catalog for the same reason (a file's time would differ between
//! hosts and stores): an original's is the video's creation, a segment's
//! or a thumbnail's the time the video became ready (none is sent for a
//! video with no ready time on record).

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::proto::{Video, Visibility};

/// Media that never changes once ready (originals, segments, thumbnails)
/// of a video that is not public: the bytes are the owner's, or a signed
/// URL holder's, so no shared cache keeps them.
pub const IMMUTABLE: &str = "private, max-age=31536000, immutable";
/// The same media of a public video: any cache may keep it for a year.
pub const IMMUTABLE_PUBLIC: &str = "public, max-age=31536000, immutable";
/// Playlists: a short time, as players re-read them.
pub const PLAYLIST: &str = "private, max-age=60";
/// A public video's playlists.
pub const PLAYLIST_PUBLIC: &str = "public, max-age=60";

/// What kind of media an answer carries, for its caching rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The original upload.
    Original,
    /// An HLS segment.
    Segment,
    /// The thumbnail.
    Thumbnail,
    /// A master or media playlist.
    Playlist,
}

/// A video's visibility, an unset or unknown one read as private.
#[must_use]
pub fn visibility(v: &Video) -> Visibility {
    match Visibility::try_from(v.visibility) {
        Ok(Visibility::Unspecified) | Err(_) => Visibility::Private,
        Ok(known) => known,
    }
}

/// The validators and caching rules of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The strong entity tag.
    pub etag: HeaderValue,
    /// When the bytes last changed (Unix seconds: an HTTP-date's
    /// precision), if known.
    pub last_modified: Option<u64>,
    /// The `Cache-Control` of a 200, 206 or 304.
    pub cache_control: &'static str,
}

/// A Unix-ms time in whole Unix seconds (an HTTP-date's precision);
/// `None` for 0 (unknown) or negative.
fn whole_seconds(ms: i64) -> Option<u64> {
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0)?;
    Some(ms / 1000)
}

/// Unix seconds as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
#[must_use]
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// An HTTP-date in any of its three forms (RFC 9110 5.6.7) as Unix
/// seconds; `None` if it is not one (or is before 1970).
#[must_use]
pub fn parse_http_date(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

impl Validators {
    /// The validators of the blob `key` of `size` bytes, of `kind`, of
    /// video `v`.
    #[must_use]
    pub fn of(v: &Video, kind: Kind, key: &str, size: u64) -> Self {
        let public = visibility(v) == Visibility::Public;
        let (cache_control, last_modified) = match kind {
            Kind::Original => (immutable(public), whole_seconds(v.created_at_ms)),
            Kind::Segment | Kind::Thumbnail => (immutable(public), whole_seconds(v.ready_at_ms)),
            Kind::Playlist => (if public { PLAYLIST_PUBLIC } else { PLAYLIST }, None),
        };
        Self {
            etag: etag(key, size),
            last_modified,
            cache_control,
        }
    }

    /// Whether a GET or HEAD with `headers` is answered 304 (RFC 9110
    /// 13.2.2): `If-None-Match` when there is one (it takes precedence),
    /// else `If-Modified-Since`.
    #[must_use]
    pub fn not_modified(&self, method: &Method, headers: &HeaderMap) -> bool {
        if method != Method::GET && method != Method::HEAD {
            return false;
        }
        if headers.contains_key(header::IF_NONE_MATCH) {
            return not_modified(headers, &self.etag);
        }
        match (self.last_modified, if_modified_since(headers)) {
            (Some(ours), Some(since)) => ours <= since,
            _ => false,
        }
    }

    /// Whether a `Range` may be honoured given `If-Range` (RFC 9110
    /// 13.1.5), at `now_ms`: with no `If-Range`, yes; with an entity tag,
    /// only ours exactly; with a date, only our `Last-Modified` exactly and
    /// only if it is strong (8.8.2.2: at least a second before now, so
    /// nothing can have changed within that same second).
    #[must_use]
    pub fn range_allowed(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        let Some(value) = headers.get(header::IF_RANGE) else {
            return true;
        };
        if value.as_bytes().starts_with(b"\"") || value.as_bytes().starts_with(b"W/") {
            return value.as_bytes() == self.etag.as_bytes();
        }
        let (Some(ours), Ok(text)) = (self.last_modified, value.to_str()) else {
            return false;
        };
        let Some(date) = parse_http_date(text) else {
            return false;
        };
        let strong = ours.saturating_add(1) <= now_ms / 1000;
        strong && date == ours
    }

    /// Marks `headers` of a 200 or 206 with the validators and the
    /// caching rule.
    pub fn mark(&self, headers: &mut HeaderMap) {
        mark(headers, self.etag.clone(), self.cache_control);
        if let Some(t) = self.last_modified
            && let Ok(v) = HeaderValue::from_str(&http_date(t))
        {
            headers.insert(header::LAST_MODIFIED, v);
        }
    }

    /// The 304: the tag and the caching rule a 200 would carry (RFC 9110
    /// 15.4.5; no `Last-Modified`, as the tag is there).
    #[must_use]
    pub fn not_modified_response(&self) -> axum::response::Response {
        not_modified_response(self.etag.clone(), self.cache_control)
    }
}

fn immutable(public: bool) -> &'static str {
    if public { IMMUTABLE_PUBLIC } else { IMMUTABLE }
}

/// The date of a request's one `If-Modified-Since`; `None` (the field is
/// ignored, RFC 9110 13.1.3) when there is none, several, or it is not a
/// valid HTTP-date.
fn if_modified_since(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    parse_http_date(value.to_str().ok()?)
}

/// The strong entity tag of the blob `key` of `size` bytes.
#[must_use]
pub fn etag(key: &str, size: u64) -> HeaderValue {
    use std::fmt::Write as _;
    let digest = Sha256::digest(key.as_bytes());
    // One buffer, no string a byte (every media answer makes a tag).
    let mut tag = String::with_capacity(44);
    tag.push('"');
    for b in &digest[..12] {
        let _ = write!(tag, "{b:02x}");
    }
    let _ = write!(tag, "-{size:x}\"");
    HeaderValue::from_str(&tag).expect("hex digits and a quote")
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
        // The first 96 bits of the key's SHA-256 and the size, both hex:
        // the same tag as every earlier release gave (caches keep it).
        assert_eq!(a, "\"370a1269ad14d438ad1ee33f-a\"");
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
    }

    const CREATED_MS: i64 = 1_700_000_000_250;
    const READY_MS: i64 = 1_700_000_100_900;

    fn video(visibility: Visibility) -> Video {
        Video {
            id: "v1".into(),
            created_at_ms: CREATED_MS,
            ready_at_ms: READY_MS,
            updated_at_ms: READY_MS + 5_000,
            visibility: visibility as i32,
            ..Video::default()
        }
    }

    fn date(ms: i64) -> String {
        http_date(whole_seconds(ms).expect("time"))
    }

    fn request(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, v) in pairs {
            h.append(name.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn last_modified_is_the_creation_for_originals_and_readiness_for_the_rest() {
        let v = video(Visibility::Private);
        let at = |kind| {
            let mut h = HeaderMap::new();
            Validators::of(&v, kind, "k", 1).mark(&mut h);
            h.get(header::LAST_MODIFIED)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(at(Kind::Original), Some(date(CREATED_MS)));
        assert_eq!(at(Kind::Segment), Some(date(READY_MS)));
        assert_eq!(at(Kind::Thumbnail), Some(date(READY_MS)));
        assert_eq!(at(Kind::Playlist), None);
        // IMF-fixdate, GMT (RFC 9110 5.6.7).
        assert_eq!(date(CREATED_MS), "Tue, 14 Nov 2023 22:13:20 GMT");
        // No ready time on record: no Last-Modified rather than a guess.
        let unknown = Video {
            ready_at_ms: 0,
            ..video(Visibility::Public)
        };
        assert_eq!(
            Validators::of(&unknown, Kind::Segment, "k", 1).last_modified,
            None
        );
    }

    #[test]
    fn public_media_is_cacheable_by_anyone_the_rest_privately() {
        let rule = |vis, kind| Validators::of(&video(vis), kind, "k", 1).cache_control;
        for kind in [Kind::Original, Kind::Segment, Kind::Thumbnail] {
            assert_eq!(rule(Visibility::Public, kind), IMMUTABLE_PUBLIC);
            for other in [
                Visibility::Private,
                Visibility::Unlisted,
                Visibility::Unspecified,
            ] {
                assert_eq!(rule(other, kind), IMMUTABLE);
            }
        }
        assert_eq!(rule(Visibility::Public, Kind::Playlist), PLAYLIST_PUBLIC);
        assert_eq!(rule(Visibility::Unlisted, Kind::Playlist), PLAYLIST);
        let odd = Video {
            visibility: 42,
            ..video(Visibility::Public)
        };
        assert_eq!(visibility(&odd), Visibility::Private);
    }

    #[test]
    fn if_modified_since_follows_rfc_9110() {
        let v = Validators::of(&video(Visibility::Public), Kind::Segment, "k", 1);
        let get = Method::GET;
        let ims = |d: &str| request(&[(header::IF_MODIFIED_SINCE, d)]);
        // Modified at or before the date: 304; after it: 200.
        assert!(v.not_modified(&get, &ims(&date(READY_MS))));
        assert!(v.not_modified(&get, &ims(&date(READY_MS + 1_000))));
        assert!(!v.not_modified(&get, &ims(&date(READY_MS - 1_000))));
        // The two obsolete formats a recipient must accept (5.6.7).
        assert!(v.not_modified(&get, &ims("Sunday, 06-Nov-44 08:49:37 GMT")));
        assert!(v.not_modified(&get, &ims("Sun Nov  6 08:49:37 2044")));
        assert!(!v.not_modified(&get, &ims("Sun Nov  6 08:49:37 1994")));
        assert!(v.not_modified(&Method::HEAD, &ims(&date(READY_MS))));
        // Ignored: another method, an invalid date, two fields.
        assert!(!v.not_modified(&Method::POST, &ims(&date(READY_MS))));
        assert!(!v.not_modified(&get, &ims("yesterday")));
        assert!(!v.not_modified(&get, &ims("1700000100")));
        let two = request(&[
            (header::IF_MODIFIED_SINCE, &date(READY_MS)),
            (header::IF_MODIFIED_SINCE, &date(READY_MS)),
        ]);
        assert!(!v.not_modified(&get, &two));
        // If-None-Match takes precedence (13.2.2): a mismatching tag means
        // 200 even with a date that would give 304; a matching tag 304
        // even with a date that would give 200.
        let tag = v.etag.to_str().expect("ascii").to_owned();
        let both = |inm: &str, d: &str| {
            request(&[(header::IF_NONE_MATCH, inm), (header::IF_MODIFIED_SINCE, d)])
        };
        assert!(!v.not_modified(&get, &both("\"other\"", &date(READY_MS + 60_000))));
        assert!(v.not_modified(&get, &both(&tag, &date(READY_MS - 60_000))));
        // No Last-Modified known: a date never matches.
        let unknown = Validators::of(
            &Video {
                ready_at_ms: 0,
                ..video(Visibility::Private)
            },
            Kind::Segment,
            "k",
            1,
        );
        assert!(!unknown.not_modified(&get, &ims(&date(READY_MS + 1_000))));
    }

    #[test]
    fn if_range_takes_our_strong_tag_or_our_exact_strong_date() {
        let v = Validators::of(&video(Visibility::Private), Kind::Original, "k", 1);
        let tag = v.etag.to_str().expect("ascii").to_owned();
        let later = u64::try_from(CREATED_MS + 10_000).expect("positive");
        let ir = |x: &str| request(&[(header::IF_RANGE, x)]);
        assert!(v.range_allowed(&HeaderMap::new(), later));
        assert!(v.range_allowed(&ir(&tag), later));
        // A weak tag never matches in If-Range (strong comparison).
        assert!(!v.range_allowed(&ir(&format!("W/{tag}")), later));
        assert!(!v.range_allowed(&ir("\"other\""), later));
        assert!(v.range_allowed(&ir(&date(CREATED_MS)), later));
        assert!(!v.range_allowed(&ir(&date(CREATED_MS + 1_000)), later));
        assert!(!v.range_allowed(&ir(&date(CREATED_MS - 1_000)), later));
        assert!(!v.range_allowed(&ir("not a date"), later));
        // Within the second of the modification the date is weak: no.
        let same_second = u64::try_from(CREATED_MS + 100).expect("positive");
        assert!(!v.range_allowed(&ir(&date(CREATED_MS)), same_second));
    }
}
