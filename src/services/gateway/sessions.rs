//! Viewing sessions: a player says when it starts and stops watching, and
//! the streaming service counts it (StreamingStarted / StreamingStopped).
//! Sessions live in one streaming instance's memory, so both calls go to
//! the instance that owns the video by rendezvous hashing; a session whose
//! instance went away is gone (stopping it answers 404).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bearer::AuthUser;
use super::error::ApiError;
use super::json;
use super::{Api, IdPath, access, video_id};
use crate::middleware::retry::stamp;
use crate::proto::{StartSessionRequest, StopSessionRequest};
use crate::services::media;

/// Longest client description passed on (the proto's limit).
const MAX_CLIENT_INFO: usize = 256;

/// Body of a session start (all optional; an empty body is fine).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    /// The rendition playback starts with (e.g. "480p").
    #[serde(default, deserialize_with = "json::present")]
    rendition: Option<String>,
}

/// Body of a session stop (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stop {
    /// Bytes the player received.
    #[serde(default, deserialize_with = "json::present")]
    bytes_served: Option<u64>,
    /// Playback time watched, in ms.
    #[serde(default, deserialize_with = "json::present")]
    watched_ms: Option<u64>,
}

/// An optional JSON body (see [`json::bytes`]): empty means the defaults.
async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: Body,
) -> Result<T, ApiError> {
    let bytes = json::bytes(body).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    json::parse(&bytes)
}

/// The User-Agent, cut to [`MAX_CLIENT_INFO`] bytes on a character boundary.
fn client_info(headers: &HeaderMap) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    crate::text::prefix(ua, MAX_CLIENT_INFO).to_owned()
}

/// `POST /v1/videos/{id}/sessions` with `{"rendition"?}`: 201
/// `{"session_id", "started_at_ms"}`. Not retried: a retry could start a
/// second session.
pub async fn start(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let video_id = video_id(path)?;
    let start: Start = optional_body(body).await?;
    // Absent is "not said"; present (even empty), a rendition's name.
    if start
        .rendition
        .as_deref()
        .is_some_and(|r| !media::is_rendition(r))
    {
        return Err(ApiError::bad_request(
            "rendition: expected 1..=32 chars of [A-Za-z0-9_-]",
        ));
    }
    let rendition = start.rendition.unwrap_or_default();
    // Only on a video the user may watch (404 otherwise, as for reading it).
    access::viewable(&api, &video_id, access::user_of(user.as_ref())).await?;
    let res = api
        .runtime
        .pool
        .streaming_for_video(&video_id)
        .await?
        .start_session(StartSessionRequest {
            video_id,
            viewer_id: user.map(|Extension(AuthUser(u))| u).unwrap_or_default(),
            rendition,
            client_info: client_info(&headers),
        })
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session_id": res.session_id,
            "started_at_ms": res.started_at_ms,
        })),
    ))
}

/// `POST /v1/videos/{id}/sessions/{session_id}/stop` with
/// `{"bytes_served"?, "watched_ms"?}`: 200 `{"duration_ms",
/// "stopped_at_ms"}`. Idempotent (a repeat answers the first stop), so
/// retried.
pub async fn stop(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let Path((video_id, session_id)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    media::check_id("video id", &video_id).map_err(ApiError::bad_request)?;
    media::check_id("session id", &session_id).map_err(ApiError::bad_request)?;
    let stop: Stop = optional_body(body).await?;
    let (api, video_id, session_id) = (&api, &video_id, &session_id);
    let res = api
        .runtime
        .pool
        .retrier_for(crate::services::ServiceKind::Streaming.name())
        .call(true, |previous| async move {
            let mut req = tonic::Request::new(StopSessionRequest {
                session_id: session_id.clone(),
                bytes_served: stop.bytes_served.unwrap_or(0),
                watched_ms: stop.watched_ms.unwrap_or(0),
            });
            stamp(&mut req, previous);
            let mut client = api
                .runtime
                .pool
                .streaming_for_video(video_id)
                .await
                .map_err(tonic::Status::from)?;
            Ok(client.stop_session(req).await?.into_inner())
        })
        .await?;
    Ok(Json(json!({
        "duration_ms": res.duration_ms,
        "stopped_at_ms": res.stopped_at_ms,
    })))
}
