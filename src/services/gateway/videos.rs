//! The catalog routes: list, get, patch and delete videos through the
//! metadata service, with videos rendered as JSON. One video is read
//! through the cache ([`video_cache`]); patch and delete invalidate it.

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
use super::{Api, IdPath, video_cache, video_id};
use crate::proto::{
    DeleteVideoRequest, GetVideoRequest, ListVideosRequest, UpdateVideoRequest, Video, VideoState,
};

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
    json!({
        "id": v.id,
        "owner_id": v.owner_id,
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

/// `GET /v1/videos?page_size=&page_token=`
pub async fn list(State(api): State<Api>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let query = Query::parse(uri.query())?;
    let req = ListVideosRequest {
        page_size: query.number("page_size")?.unwrap_or(0),
        page_token: query.get("page_token").unwrap_or_default().to_owned(),
        ..ListVideosRequest::default()
    };
    let res = api.runtime.pool.metadata().await?.list_videos(req).await?;
    let res = res.into_inner();
    let videos: Vec<Value> = res.videos.iter().map(video_json).collect();
    Ok(Json(
        json!({ "videos": videos, "next_page_token": res.next_page_token }),
    ))
}

/// `GET /v1/videos/{id}`, read through the cache.
pub async fn get(State(api): State<Api>, path: IdPath) -> Result<Json<Value>, ApiError> {
    let video_id = video_id(path)?;
    let video = video_cache::video(&api.runtime, video_id).await?;
    Ok(Json(video_json(&video)))
}

/// The body of a PATCH: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    title: Option<String>,
    description: Option<String>,
}

/// Only a video's owner may change or delete it, or get its playback URLs
/// (one recorded without an owner, anyone signed in); `to` says what. The record is read from metadata, not the
/// cache: the owner never changes, but a cached copy may be of a deleted
/// video.
pub(super) async fn check_owner(
    api: &Api,
    user: Option<&Extension<AuthUser>>,
    video_id: &str,
    to: &str,
) -> Result<(), ApiError> {
    let Some(Extension(AuthUser(user))) = user else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let req = GetVideoRequest {
        video_id: video_id.to_owned(),
    };
    let video = api.runtime.pool.metadata().await?.get_video(req).await?;
    match video.into_inner().video {
        Some(v) if !v.owner_id.is_empty() && v.owner_id != *user => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("only the video's owner may {to}"),
        )),
        _ => Ok(()),
    }
}

/// `PATCH /v1/videos/{id}` with `{"title"?, "description"?}`; the owner only.
pub async fn patch(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let video_id = video_id(path)?;
    let patch: Patch = json::body(body).await?;
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
    if req.update_fields.is_empty() {
        return Err(ApiError::bad_request(
            "body: name at least one of title, description",
        ));
    }
    let res = api.runtime.pool.metadata().await?.update_video(req).await?;
    // Before answering, so this client's next read sees its change (the
    // MetadataUpdated event invalidates too, but later). A failure is
    // logged; the entry then lives out its TTL.
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
