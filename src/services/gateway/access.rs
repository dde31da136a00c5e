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

use axum::Extension;
use http::StatusCode;

use super::bearer::AuthUser;
use super::error::ApiError;
use super::validators::visibility;
use super::{Api, video_cache};
use crate::proto::{Video, Visibility};

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
    match video_cache::video(&api.runtime, video_id.to_owned()).await {
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
}
