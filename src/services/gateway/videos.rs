//! The catalog routes: list, get, patch and delete videos through the
//! metadata service, with videos rendered as JSON. One video is read
//! through the cache ([`video_cache`]); patch and delete invalidate it.
//! Who sees what: [`access`].

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bearer::AuthUser;
use super::error::ApiError;
use super::json;
use super::query::Query;
use super::{Api, IdPath, access, video_cache, video_id};
use crate::proto::{
    DeleteVideoRequest, GetVideoRequest, ListVideosRequest, UpdateVideoRequest, Video, VideoState,
    Visibility,
};
use crate::services::media;

/// The lower-case name of a proto enum value (`VIDEO_STATE_READY` -> `ready`).
pub(super) fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// A video as the API shows it.
#[must_use]
pub fn video_json(v: &Video) -> Value {
    let state = VideoState::try_from(v.state).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "VIDEO_STATE_")
    });
    let renditions: Vec<Value> = v
        .renditions
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "width": r.width,
                "height": r.height,
                "bitrate_kbps": r.bitrate_kbps,
            })
        })
        .collect();
    let visibility = enum_name(
        super::validators::visibility(v).as_str_name(),
        "VISIBILITY_",
    );
    json!({
        "id": v.id,
        "owner_id": v.owner_id,
        "visibility": visibility,
        "title": v.title,
        "description": v.description,
        "content_type": v.content_type,
        "size_bytes": v.size_bytes,
        "sha256_hex": v.sha256_hex,
        "state": state,
        "failure_reason": v.failure_reason,
        "renditions": renditions,
        "created_at_ms": v.created_at_ms,
        "updated_at_ms": v.updated_at_ms,
        "duration_ms": v.duration_ms,
    })
}

fn video_response(video: Option<Video>) -> Result<Json<Value>, ApiError> {
    video
        .map(|v| Json(video_json(&v)))
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "metadata returned no video"))
}

/// A visibility as the API names it.
pub(super) fn parse_visibility(name: &str) -> Result<Visibility, ApiError> {
    match name {
        "private" => Ok(Visibility::Private),
        "unlisted" => Ok(Visibility::Unlisted),
        "public" => Ok(Visibility::Public),
        _ => Err(ApiError::bad_request(
            "visibility: expected private, unlisted or public",
        )),
    }
}

/// The `visibility` of an upload's query, if given.
///
/// # Errors
/// 400 for a name that is not a visibility.
pub(super) fn upload_visibility(query: &Query) -> Result<Visibility, ApiError> {
    query
        .get("visibility")
        .map_or(Ok(Visibility::Unspecified), parse_visibility)
}

/// `GET /v1/videos?page_size=&page_token=&owner=`: the caller's own videos
/// and everyone's public ones, newest first; `owner=me` (or the caller's
/// id): only the caller's; `owner=<user id>`: that user's public ones.
pub async fn list(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let Some(Extension(AuthUser(user))) = user else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let query = Query::parse(uri.query())?;
    let owner_id = match query.get("owner") {
        None => String::new(),
        Some("me") => user.clone(),
        Some(id) => {
            media::check_id("owner", id)
                .map_err(|e| ApiError::bad_request(format!("{e} (or \"me\": your own videos)")))?;
            id.to_owned()
        }
    };
    let req = ListVideosRequest {
        page_size: query.number("page_size")?.unwrap_or(0),
        page_token: query.get("page_token").unwrap_or_default().to_owned(),
        owner_id,
        viewer_id: user,
        ..ListVideosRequest::default()
    };
    let res = api.runtime.pool.metadata().await?.list_videos(req).await?;
    let res = res.into_inner();
    let videos: Vec<Value> = res.videos.iter().map(video_json).collect();
    Ok(Json(
        json!({ "videos": videos, "next_page_token": res.next_page_token }),
    ))
}

/// `GET /v1/videos/{id}`, read through the cache: 404 to a user who may
/// not see it.
pub async fn get(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
) -> Result<Json<Value>, ApiError> {
    let video_id = video_id(path)?;
    let Some(user) = access::user_of(user.as_ref()) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let video = access::viewable(&api, &video_id, Some(user)).await?;
    Ok(Json(video_json(&video)))
}

/// The body of a PATCH: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    #[serde(default, deserialize_with = "json::present")]
    title: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    description: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    visibility: Option<String>,
}

/// The video `video_id` from metadata, not the cache (a cached copy may be
/// of a deleted video, or of one whose visibility just changed).
pub(super) async fn fresh(api: &Api, video_id: &str) -> Result<Video, ApiError> {
    let req = GetVideoRequest {
        video_id: video_id.to_owned(),
    };
    let video = api.runtime.pool.metadata().await?.get_video(req).await?;
    video
        .into_inner()
        .video
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "metadata returned no video"))
}

/// Only a video's owner may change or delete it (one recorded without an
/// owner, anyone signed in); `to` says what. Another user who may see it
/// gets 403; one who may not, 404 (as if it did not exist). The record is
/// read from metadata ([`fresh`]).
pub(super) async fn check_owner(
    api: &Api,
    user: Option<&Extension<AuthUser>>,
    video_id: &str,
    to: &str,
) -> Result<(), ApiError> {
    let Some(Extension(AuthUser(user))) = user else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let v = fresh(api, video_id).await?;
    if access::is_owner(&v, user) {
        Ok(())
    } else if access::may_view(&v, Some(user)) {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("only the video's owner may {to}"),
        ))
    } else {
        Err(access::hidden(video_id, Some(user)))
    }
}

/// `PATCH /v1/videos/{id}` with `{"title"?, "description"?,
/// "visibility"?}`; the owner only.
pub async fn patch(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let video_id = video_id(path)?;
    let patch: Patch = json::body(body).await?;
    if let Some(v) = &patch.visibility {
        parse_visibility(v)?;
    }
    check_owner(&api, user.as_ref(), &video_id, "change or delete it").await?;
    let mut req = UpdateVideoRequest {
        video_id: video_id.clone(),
        ..UpdateVideoRequest::default()
    };
    if let Some(title) = patch.title {
        req.update_fields.push("title".to_owned());
        req.title = title;
    }
    if let Some(description) = patch.description {
        req.update_fields.push("description".to_owned());
        req.description = description;
    }
    if let Some(visibility) = patch.visibility {
        req.update_fields.push("visibility".to_owned());
        req.visibility = parse_visibility(&visibility)? as i32;
    }
    if req.update_fields.is_empty() {
        return Err(ApiError::bad_request(
            "body: name at least one of title, description, visibility",
        ));
    }
    let res = api.runtime.pool.metadata().await?.update_video(req).await?;
    // Before answering, so this client's next read sees its change (the
    // MetadataUpdated event invalidates too, but later). A failure is
    // logged; the entry then lives out its TTL.
    api.recent.forget(&video_id);
    let _ = video_cache::forget(&api.runtime, &video_id).await;
    video_response(res.into_inner().video)
}

/// `DELETE /v1/videos/{id}`; the owner only.
pub async fn delete(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
) -> Result<Response, ApiError> {
    let video_id = video_id(path)?;
    check_owner(&api, user.as_ref(), &video_id, "change or delete it").await?;
    api.runtime
        .pool
        .metadata()
        .await?
        .delete_video(DeleteVideoRequest {
            video_id: video_id.clone(),
        })
        .await?;
    // As in `patch`: the client's next read must not find it in the cache.
    api.recent.forget(&video_id);
    let _ = video_cache::forget(&api.runtime, &video_id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Rendition;

    #[test]
    fn a_video_renders_with_lower_case_state() {
        let v = Video {
            id: "v1".into(),
            state: VideoState::Ready as i32,
            renditions: vec![Rendition {
                name: "480p".into(),
                width: 854,
                height: 480,
                bitrate_kbps: 1200,
                playlist_key: "hls/v1/480p/index.m3u8".into(),
            }],
            ..Video::default()
        };
        let j = video_json(&v);
        assert_eq!(j["state"], "ready");
        // Unset (a video from before visibility): private.
        assert_eq!(j["visibility"], "private");
        let public = Video {
            visibility: Visibility::Public as i32,
            ..v.clone()
        };
        assert_eq!(video_json(&public)["visibility"], "public");
        assert_eq!(j["renditions"][0]["height"], 480);
        assert!(j["renditions"][0].get("playlist_key").is_none());
        let odd = Video {
            state: 99,
            ..Video::default()
        };
        assert_eq!(video_json(&odd)["state"], "unspecified");
    }

    #[tokio::test]
    async fn patch_bodies_are_bounded_and_strict() {
        let ok: Patch = json::body(Body::from(r#"{"title":"t"}"#))
            .await
            .expect("ok");
        assert_eq!((ok.title.as_deref(), ok.description), (Some("t"), None));
        let vis: Patch = json::body(Body::from(r#"{"visibility":"public"}"#))
            .await
            .expect("ok");
        assert_eq!(vis.visibility.as_deref(), Some("public"));
        assert_eq!(
            parse_visibility("PUBLIC").expect_err("case matters").status,
            StatusCode::BAD_REQUEST
        );
        for (name, v) in [
            ("private", Visibility::Private),
            ("unlisted", Visibility::Unlisted),
            ("public", Visibility::Public),
        ] {
            assert_eq!(parse_visibility(name).ok(), Some(v));
        }
        let unknown = json::body::<Patch>(Body::from(r#"{"state":"ready"}"#)).await;
        assert_eq!(
            unknown.expect_err("unknown field").status,
            StatusCode::BAD_REQUEST
        );
        let big = format!(r#"{{"title":"{}"}}"#, "x".repeat(json::MAX_JSON_BYTES));
        let big = json::body::<Patch>(Body::from(big)).await;
        assert_eq!(
            big.expect_err("too big").status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
