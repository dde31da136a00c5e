//! The job routes: a job's state through the worker service, by job id or
//! as the transcode job of a video.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use serde_json::{Value, json};

use super::bearer::AuthUser;
use super::error::ApiError;
use super::videos::enum_name;
use super::{Api, IdPath, access, video_id};
use crate::middleware::retry::stamp;
use crate::proto::{GetJobRequest, Job, JobState};
use crate::services::media;
use crate::services::worker::transcode;

/// A job as the API shows it.
#[must_use]
pub fn job_json(job: &Job) -> Value {
    let state = JobState::try_from(job.state).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "JOB_STATE_")
    });
    json!({
        "id": job.id,
        "kind": job.kind,
        "state": state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "progress_percent": job.progress_percent,
    })
}

async fn job(api: &Api, job_id: String) -> Result<Job, ApiError> {
    let job_id = &job_id;
    let res = api
        .runtime
        .pool
        .retrier_for(crate::services::ServiceKind::Worker.name())
        .call(true, |previous| async move {
            let mut req = tonic::Request::new(GetJobRequest {
                job_id: job_id.clone(),
            });
            stamp(&mut req, previous);
            Ok(api
                .runtime
                .pool
                .worker()
                .await?
                .get_job(req)
                .await?
                .into_inner())
        })
        .await?;
    res.job
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "worker returned no job"))
}

/// `GET /v1/jobs/{job_id}`: the transcode job of a video the user may see;
/// any other job (another user's private video's, or one of no video)
/// answers exactly as an unknown id.
pub async fn get(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    user: Option<Extension<AuthUser>>,
) -> Result<Json<Value>, ApiError> {
    let Path(job_id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    media::check_id("job_id", &job_id).map_err(ApiError::bad_request)?;
    let Some(user) = access::user_of(user.as_ref()) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("no job {job_id:?}"));
    let found = job(&api, job_id.clone()).await?;
    let video = (found.kind == media::TRANSCODE_JOB)
        .then(|| transcode::parse(&found.payload_json).ok())
        .flatten()
        .ok_or_else(unknown)?;
    match access::viewable(&api, &video.video_id, Some(user)).await {
        Ok(_) => Ok(Json(job_json(&found))),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(unknown()),
        Err(e) => Err(e),
    }
}

/// `GET /v1/videos/{id}/job`: of a video the user may see (404
/// otherwise).
pub async fn of_video(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
) -> Result<Json<Value>, ApiError> {
    let video_id = video_id(path)?;
    let Some(user) = access::user_of(user.as_ref()) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    access::viewable(&api, &video_id, Some(user)).await?;
    Ok(Json(job_json(
        &job(&api, media::transcode_job_id(&video_id)).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_lower_case() {
        for (state, name) in [
            (JobState::Queued, "queued"),
            (JobState::Leased, "leased"),
            (JobState::Succeeded, "succeeded"),
            (JobState::Failed, "failed"),
            (JobState::DeadLetter, "dead_letter"),
            (JobState::Cancelled, "cancelled"),
        ] {
            let j = Job {
                state: state as i32,
                ..Job::default()
            };
            assert_eq!(job_json(&j)["state"], name);
        }
    }
}
