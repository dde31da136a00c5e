//! Signed playback URLs: a grant to play one video until a time, carried in
//! the URL's path so that players that cannot send an `Authorization`
//! header (Safari's native HLS, a `<video>` element, smart TVs) can play.
//!
//! `POST /v1/videos/{id}/playback` (the owner, with a bearer token) returns
//! URLs under `/v1/play/{grant}/`: the master playlist, the original and the
//! thumbnail. The grant lives in the path, not the query, because HLS
//! resolves a playlist's relative URIs against the playlist's URL without
//! its query: `/v1/play/{grant}/hls/master.m3u8` names `720p/index.m3u8`,
//! which resolves to `/v1/play/{grant}/hls/720p/index.m3u8`, and so on down
//! to every segment, each carrying the grant.
//!
//! A grant is `<scope>.<key id>.<video id>.<expiry, Unix ms>.<HMAC-SHA256,
//! base64url>` signed with a key derived from the cluster's service keys
//! ([`Keyring::derive`]): it rotates with them (the previous key still
//! verifies), every gateway of a cluster verifies what any of them issued,
//! and a service token never passes for a grant nor a grant for a service
//! token. It opens the one video it names: the handlers take the video id
//! from the verified grant, never from elsewhere in the path.
//!
//! Its scope (the first field, signed with the rest) says who made it:
//! `p1`, the video's owner: it plays whatever the visibility; `p1v`, a
//! viewer of an unlisted or public video: it plays only while the video is
//! not private, so that making a video private stops the URLs others made.

use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::bearer::AuthUser;
use super::error::ApiError;
use super::validators::visibility;
use super::{Api, IdPath, access, playback, video_id, videos};
use crate::middleware::auth::Keyring;
use crate::proto::{Video, Visibility};
use crate::rt;
use crate::services::media;

/// Where the grant routes live.
pub const PREFIX: &str = "/v1/play/";
/// How long a grant lasts unless the request asks otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(4 * 3600);
/// The longest a grant may last.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest grant accepted (a real one is about 130 bytes).
pub const MAX_GRANT_BYTES: usize = 256;
/// What the service keys are derived with for grants.
const PURPOSE: &str = "streamgate playback grant v1";

/// Who made a grant, which decides what it keeps opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The video's owner: it plays whatever the visibility.
    Owner,
    /// Someone the video was shared with (unlisted or public): it plays
    /// only while the video is not private.
    Viewer,
}

impl Scope {
    fn tag(self) -> &'static str {
        match self {
            Self::Owner => "p1",
            Self::Viewer => "p1v",
        }
    }

    fn of(tag: &str) -> Option<Self> {
        match tag {
            "p1" => Some(Self::Owner),
            "p1v" => Some(Self::Viewer),
            _ => None,
        }
    }
}

/// Why a grant was refused; each is answered 403 with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not of a grant's shape (truncated, padded, not base64, too long).
    #[error("playback grant: malformed")]
    Malformed,
    /// Signed with a key this gateway does not know (rotated out).
    #[error("playback grant: signed with an unknown key")]
    UnknownKey,
    /// The signature does not match (forged or altered).
    #[error("playback grant: invalid signature")]
    Forged,
    /// Past its expiry.
    #[error("playback grant: expired")]
    Expired,
    /// A viewer's grant of a video made private since.
    #[error("playback grant: the video is no longer shared")]
    Unshared,
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        Self::new(StatusCode::FORBIDDEN, e.to_string())
    }
}

/// Mints and verifies grants.
#[derive(Debug, Clone)]
pub struct Grants {
    keys: Keyring,
}

impl Grants {
    /// Grants signed with keys derived from the service keys `keys`.
    #[must_use]
    pub fn new(keys: &Keyring) -> Self {
        Self {
            keys: keys.derive(PURPOSE),
        }
    }

    /// A grant of `scope` to play `video_id` until `expires_ms` (Unix ms).
    ///
    /// # Panics
    /// If `video_id` is not a valid id (the caller checks it first).
    #[must_use]
    pub fn mint(&self, video_id: &str, scope: Scope, expires_ms: u64) -> String {
        assert!(media::is_id(video_id), "a checked video id: {video_id:?}");
        let key = &self.keys.current;
        let body = format!("{}.{}.{video_id}.{expires_ms}", scope.tag(), key.id);
        let sig = URL_SAFE_NO_PAD.encode(key.sign(body.as_bytes()));
        format!("{body}.{sig}")
    }

    /// The video `grant` opens at `now_ms`, and the grant's scope.
    ///
    /// # Errors
    /// Why it opens nothing.
    pub fn verify<'a>(&self, grant: &'a str, now_ms: u64) -> Result<(&'a str, Scope), GrantError> {
        if grant.len() > MAX_GRANT_BYTES {
            return Err(GrantError::Malformed);
        }
        let (body, sig) = grant.rsplit_once('.').ok_or(GrantError::Malformed)?;
        let mut parts = body.split('.');
        let (Some(scope), Some(kid), Some(video_id), Some(expires), None) = (
            parts.next().and_then(Scope::of),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(GrantError::Malformed);
        };
        if !media::is_id(video_id) || expires.is_empty() || expires.len() > 20 {
            return Err(GrantError::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| GrantError::Malformed)?;
        let mut tag = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) {
            Ok(32) => {}
            _ => return Err(GrantError::Malformed),
        }
        let key = self.keys.find(kid).ok_or(GrantError::UnknownKey)?;
        if !key.verifies(body.as_bytes(), &tag) {
            return Err(GrantError::Forged);
        }
        if now_ms >= expires {
            return Err(GrantError::Expired);
        }
        Ok((video_id, scope))
    }
}

/// The body of `POST /v1/videos/{id}/playback` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackRequest {
    /// How long the URLs work, in seconds: 1..=86400 (default 14400).
    #[serde(default, deserialize_with = "super::json::present")]
    ttl_secs: Option<u64>,
}

/// `POST /v1/videos/{id}/playback`: whoever may see the video (its owner;
/// anyone signed in for an unlisted or public one) gets URLs that play it
/// with no header until they expire: `{"video_id", "expires_at_ms",
/// "master", "original", "thumbnail"}`: paths on this host, or URLs on
/// the media host when one is set (`--media-url`).
pub async fn create(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    path: IdPath,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let video_id = video_id(path)?;
    // No body asks for the defaults.
    let request: PlaybackRequest = super::json::optional(body).await?;
    let ttl = match request.ttl_secs {
        None => DEFAULT_TTL,
        Some(s) if (1..=MAX_TTL.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "ttl_secs: expected 1..={}",
                MAX_TTL.as_secs()
            )));
        }
    };
    let Some(Extension(AuthUser(user))) = user else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    // From metadata, not the cache: a video just made private must not
    // be shared from a stale copy.
    let video = match videos::fresh(&api, &video_id).await {
        Ok(v) if access::may_view(&v, Some(&user)) => v,
        Ok(_) => return Err(access::hidden(&video_id, Some(&user))),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return Err(access::hidden(&video_id, Some(&user)));
        }
        Err(e) => return Err(e),
    };
    let scope = if access::is_owner(&video, &user) {
        Scope::Owner
    } else {
        Scope::Viewer
    };
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires_ms = rt::unix_ms().saturating_add(ttl_ms);
    let grant = api.grants.mint(&video_id, scope, expires_ms);
    let base = format!(
        "{}{PREFIX}{grant}",
        api.media_url.as_deref().unwrap_or_default()
    );
    let mut res = axum::Json(serde_json::json!({
        "video_id": video_id,
        "expires_at_ms": expires_ms,
        "master": format!("{base}/hls/master.m3u8"),
        "original": format!("{base}/original"),
        "thumbnail": format!("{base}/thumbnail.jpg"),
    }))
    .into_response();
    // The answer is a secret of this user's: no shared cache keeps it.
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, no-store"),
    );
    Ok(res)
}

/// The video a grant in a path opens now (its record as media requests
/// read it, [`access::recent`]).
async fn opened(api: &Api, grant: &str) -> Result<Video, ApiError> {
    let (video_id, scope) = api.grants.verify(grant, rt::unix_ms())?;
    let video = access::recent(api, video_id).await?;
    if scope == Scope::Viewer && visibility(&video) == Visibility::Private {
        return Err(GrantError::Unshared.into());
    }
    Ok(video)
}

fn path_error(e: &PathRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

/// `GET /v1/play/{grant}/original`
pub async fn original(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    method: http::Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(grant) = path.map_err(|e| path_error(&e))?;
    let video = opened(&api, &grant).await?;
    playback::original_of(&api, &video, &method, &headers).await
}

/// `GET /v1/play/{grant}/thumbnail.jpg`
pub async fn thumbnail(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(grant) = path.map_err(|e| path_error(&e))?;
    let video = opened(&api, &grant).await?;
    playback::thumbnail_of(&api, &video, &headers).await
}

/// `GET /v1/play/{grant}/hls/master.m3u8`
pub async fn master(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(grant) = path.map_err(|e| path_error(&e))?;
    let video = opened(&api, &grant).await?;
    playback::playlist_of(&api, &video, String::new(), &headers).await
}

/// `GET /v1/play/{grant}/hls/{rendition}/index.m3u8`
pub async fn media_playlist(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((grant, rendition)) = path.map_err(|e| path_error(&e))?;
    let video = opened(&api, &grant).await?;
    playback::playlist_of(&api, &video, rendition, &headers).await
}

/// `GET /v1/play/{grant}/hls/{rendition}/{segment}`
pub async fn segment(
    State(api): State<Api>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((grant, rendition, segment)) = path.map_err(|e| path_error(&e))?;
    let video = opened(&api, &grant).await?;
    playback::segment_of(&api, &video, rendition, segment, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::auth::Key;

    fn keys(id: &str, byte: u8) -> Keyring {
        Keyring::new(Key::new(id, &[byte; 32]).expect("key"))
    }

    #[test]
    fn a_grant_opens_its_video_until_it_expires() {
        let grants = Grants::new(&keys("k1", 1));
        let grant = grants.mint("video-1", Scope::Owner, 10_000);
        assert_eq!(grants.verify(&grant, 0), Ok(("video-1", Scope::Owner)));
        assert_eq!(grants.verify(&grant, 9_999), Ok(("video-1", Scope::Owner)));
        assert_eq!(grants.verify(&grant, 10_000), Err(GrantError::Expired));
        assert!(grant.len() < MAX_GRANT_BYTES);
        // Only URL-path-safe characters: it sits in a path segment.
        assert!(
            grant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{grant}"
        );
    }

    #[test]
    fn an_altered_or_truncated_grant_opens_nothing() {
        let grants = Grants::new(&keys("k1", 1));
        let grant = grants.mint("video-1", Scope::Owner, 10_000);
        // Another video's id, or a later expiry, under the same signature.
        let other = grant.replacen("video-1", "video-2", 1);
        assert_eq!(grants.verify(&other, 0), Err(GrantError::Forged));
        let later = grant.replacen(".10000.", ".99999.", 1);
        assert_eq!(grants.verify(&later, 0), Err(GrantError::Forged));
        for cut in 0..grant.len() {
            assert!(grants.verify(&grant[..cut], 0).is_err(), "cut at {cut}");
        }
        let padded = format!("{grant}A");
        assert_eq!(grants.verify(&padded, 0), Err(GrantError::Malformed));
        let long = format!("p1.k1.{}.1.x", "a".repeat(300));
        assert_eq!(grants.verify(&long, 0), Err(GrantError::Malformed));
        // The scope is signed: a viewer's grant does not become an owner's.
        let viewer = grants.mint("video-1", Scope::Viewer, 10_000);
        assert_eq!(grants.verify(&viewer, 0), Ok(("video-1", Scope::Viewer)));
        let promoted = viewer.replacen("p1v.", "p1.", 1);
        assert_eq!(grants.verify(&promoted, 0), Err(GrantError::Forged));
        for bad in ["", ".", "p1....", "p2.k1.v.1.sig", "p1.k1.../...1.sig"] {
            assert_eq!(grants.verify(bad, 0), Err(GrantError::Malformed), "{bad}");
        }
    }

    #[test]
    fn grants_rotate_with_the_service_keys_and_are_not_service_tokens() {
        let old = keys("k1", 1);
        let grant = Grants::new(&old).mint("video-1", Scope::Owner, 10_000);
        let rotated = Keyring {
            current: Key::new("k2", &[2; 32]).expect("key"),
            previous: Some(old.current.clone()),
        };
        assert_eq!(
            Grants::new(&rotated).verify(&grant, 0),
            Ok(("video-1", Scope::Owner))
        );
        assert_eq!(
            Grants::new(&keys("k2", 2)).verify(&grant, 0),
            Err(GrantError::UnknownKey)
        );
        // Same key id, another secret: forged.
        assert_eq!(
            Grants::new(&keys("k1", 3)).verify(&grant, 0),
            Err(GrantError::Forged)
        );
        // A service token signed with the same keys is not a grant.
        let token = crate::middleware::auth::mint(&old.current, "api-gateway", 10_000);
        assert!(Grants::new(&old).verify(&token, 0).is_err());
    }
}
