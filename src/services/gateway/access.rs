//! Who may see a video, by its visibility:
//! - private (the default; also a row from before visibility existed):
//!   its owner only;
//! - unlisted: anyone signed in who has its id, and anyone with a signed
//!   playback URL; listed to its owner only;
//! - public: listed to everyone signed in; its media play without any
//!   credential.
//!
//! To anyone else a video is not there: 404 with metadata's own message,
//! so that a private video's existence does not leak (without a token, 401
//! whether or not it exists). A video recorded without an owner is
//! everyone's who is signed in (as it always was).
//!
//! Media requests come many per second per player (a segment every few
//! seconds, ranges of an original), so the record they check is kept in
//! this gateway for [`RECENT_TTL`] ([`Recent`]) on top of the shared video
//! cache: one cache call per video per second at most, instead of one per
//! request. A change made through this gateway drops its copy at once.

use std::sync::Mutex;
use std::time::Duration;

use axum::Extension;
use http::StatusCode;

use super::bearer::AuthUser;
use super::error::ApiError;
use super::validators::visibility;
use super::{Api, video_cache};
use crate::HashMap;
use crate::proto::{Video, Visibility};
use crate::rt::{self, Instant};

/// How long a media request may reuse a video record another one read.
pub const RECENT_TTL: Duration = Duration::from_secs(1);
/// Most records kept (past it the memo starts over).
pub const RECENT_MAX: usize = 4096;

/// Video records media requests read in the last [`RECENT_TTL`].
#[derive(Debug, Default)]
pub struct Recent {
    videos: Mutex<HashMap<String, (Video, Instant)>>,
}

impl Recent {
    fn get(&self, id: &str, now: Instant) -> Option<Video> {
        let videos = self
            .videos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match videos.get(id) {
            Some((v, at)) if now.saturating_duration_since(*at) < RECENT_TTL => Some(v.clone()),
            _ => None,
        }
    }

    fn put(&self, v: &Video, now: Instant) {
        let mut videos = self
            .videos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if videos.len() >= RECENT_MAX {
            videos.retain(|_, (_, at)| now.saturating_duration_since(*at) < RECENT_TTL);
            if videos.len() >= RECENT_MAX {
                videos.clear();
            }
        }
        videos.insert(v.id.clone(), (v.clone(), now));
    }

    /// Drops the copy of `id` (changed or deleted through this gateway).
    pub fn forget(&self, id: &str) {
        self.videos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// The user of a request, if it named one.
#[must_use]
pub fn user_of(user: Option<&Extension<AuthUser>>) -> Option<&str> {
    user.map(|Extension(AuthUser(id))| id.as_str())
}

/// Whether `user` owns `v` (anyone signed in owns a video without owner).
#[must_use]
pub fn is_owner(v: &Video, user: &str) -> bool {
    v.owner_id.is_empty() || v.owner_id == user
}

/// Whether `user` (`None`: no credential) may see `v` and its media.
#[must_use]
pub fn may_view(v: &Video, user: Option<&str>) -> bool {
    match (visibility(v), user) {
        (Visibility::Public, _) => true,
        (_, None) => false,
        (Visibility::Unlisted, Some(_)) => true,
        (_, Some(user)) => is_owner(v, user),
    }
}

/// The answer for a video `user` may not see: the not-found metadata gives
/// for an unknown id, or, with no credential, the bearer check's 401.
#[must_use]
pub fn hidden(video_id: &str, user: Option<&str>) -> ApiError {
    match user {
        Some(_) => ApiError::new(StatusCode::NOT_FOUND, format!("no video {video_id}")),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <access token> \
             (only public videos play without one)",
        ),
    }
}

/// The video `video_id` (read through the cache) if `user` may see it.
///
/// # Errors
/// [`hidden`] for an unknown video or one `user` may not see; metadata's
/// other failures.
pub async fn viewable(api: &Api, video_id: &str, user: Option<&str>) -> Result<Video, ApiError> {
    check(
        video_id,
        user,
        video_cache::video(&api.runtime, video_id.to_owned()).await,
    )
}

/// [`viewable`] for a media request: the record may be one another media
/// request of this gateway read less than [`RECENT_TTL`] ago.
///
/// # Errors
/// As [`viewable`].
pub async fn playable(api: &Api, video_id: &str, user: Option<&str>) -> Result<Video, ApiError> {
    check(video_id, user, recent(api, video_id).await)
}

/// The record of `video_id` for a media request (a signed URL's too): one
/// another media request read less than [`RECENT_TTL`] ago, else through
/// the cache.
///
/// # Errors
/// Metadata's, as for an uncached read.
pub async fn recent(api: &Api, video_id: &str) -> Result<Video, ApiError> {
    let now = rt::now();
    if let Some(v) = api.recent.get(video_id, now) {
        return Ok(v);
    }
    let found = video_cache::video(&api.runtime, video_id.to_owned()).await?;
    api.recent.put(&found, now);
    Ok(found)
}

/// The video `found` as `user` may see it.
fn check(
    video_id: &str,
    user: Option<&str>,
    found: Result<Video, ApiError>,
) -> Result<Video, ApiError> {
    match found {
        Ok(v) if may_view(&v, user) => Ok(v),
        Ok(_) => Err(hidden(video_id, user)),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(hidden(video_id, user)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(owner: &str, vis: Visibility) -> Video {
        Video {
            id: "v".into(),
            owner_id: owner.into(),
            visibility: vis as i32,
            ..Video::default()
        }
    }

    #[test]
    fn each_visibility_admits_whom_it_says() {
        use Visibility::{Private, Public, Unlisted, Unspecified};
        let cases = [
            // (visibility, the owner, another user, no credential)
            (Private, true, false, false),
            (Unspecified, true, false, false),
            (Unlisted, true, true, false),
            (Public, true, true, true),
        ];
        for (vis, owner, other, anonymous) in cases {
            let v = video("u1", vis);
            assert_eq!(may_view(&v, Some("u1")), owner, "{vis:?} owner");
            assert_eq!(may_view(&v, Some("u2")), other, "{vis:?} other");
            assert_eq!(may_view(&v, None), anonymous, "{vis:?} anonymous");
        }
        let odd = Video {
            visibility: 77,
            ..video("u1", Public)
        };
        assert!(!may_view(&odd, Some("u2")));
        assert!(may_view(&video("", Private), Some("anyone")));
        assert!(!may_view(&video("", Private), None));
        assert_eq!(hidden("v", Some("u")).status, StatusCode::NOT_FOUND);
        assert_eq!(hidden("v", None).status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn recent_records_expire_and_are_forgotten() {
        let recent = Recent::default();
        let t0 = rt::now();
        let v = video("u1", Visibility::Public);
        assert!(recent.get("v", t0).is_none());
        recent.put(&v, t0);
        assert_eq!(recent.get("v", t0 + RECENT_TTL / 2), Some(v.clone()));
        assert!(recent.get("v", t0 + RECENT_TTL).is_none());
        recent.put(&v, t0);
        recent.forget("v");
        assert!(recent.get("v", t0).is_none());
        // Bounded: past the most, it starts over.
        for i in 0..=RECENT_MAX {
            let mut other = v.clone();
            other.id = format!("v{i}");
            recent.put(&other, t0);
        }
        let len = recent.videos.lock().expect("lock").len();
        assert!(len <= RECENT_MAX, "{len}");
    }
}
