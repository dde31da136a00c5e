//! The transcode job: asks the transcoder to transcode a video (keyed by the
//! job id), then follows its progress until it ends, renewing the lease.

use serde::{Deserialize, Serialize};
use tonic::{Code, Request};

use super::jobs::{Jobs, Stop};
use super::queue::Job;
use crate::client::ClientPool;
use crate::proto::{
    CancelTranscodeRequest, GetTranscodeStatusRequest, TranscodeRequest, TranscodeState,
};
use crate::rt;
use crate::services::media;
use crate::services::transcoder::engine::Reason;

/// Status polls in a row that may fail before the attempt gives up.
pub const MAX_POLL_ERRORS: u32 = 20;

/// Why an attempt failed, as users read it (the job's `last_error`, and
/// the video's `failure_reason` once the job gives up); the detail goes to
/// the log. A failed transcode reads as the transcoder's reason
/// ([`Reason`]).
pub mod reason {
    /// No transcoder answered.
    pub const TRANSCODER_UNAVAILABLE: &str = "the transcoder is unavailable";
    /// The transcoder refused the job's request.
    pub const REFUSED: &str = "the transcoder refused the job";
    /// The transcoder lost the run (it restarted).
    pub const LOST: &str = "the transcoder restarted";
    /// The run was cancelled on the transcoder.
    pub const CANCELLED: &str = "the transcode was cancelled";
    /// The attempt ran past its time.
    pub const TIMED_OUT: &str = "timed out";
    /// Transcoded, but the catalog could not be told.
    pub const CATALOG_UNAVAILABLE: &str = "the catalog is unavailable";
    /// The job's payload is not a transcode payload.
    pub const BAD_PAYLOAD: &str = "invalid job payload";
}

/// The payload of a transcode job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The video.
    pub video_id: String,
    /// Blob key of its original.
    pub blob_key: String,
}

/// Parses and checks a transcode payload.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse(json: &str) -> Result<Payload, String> {
    let p: Payload =
        serde_json::from_str(json).map_err(|e| format!("not a transcode payload: {e}"))?;
    media::check_id("video_id", &p.video_id)?;
    crate::blob::check_key(&p.blob_key).map_err(|e| format!("blob_key: {e}"))?;
    Ok(p)
}

/// The payload JSON of the transcode job of `video_id`.
#[must_use]
pub fn payload_json(video_id: &str, blob_key: &str) -> String {
    let p = Payload {
        video_id: video_id.to_owned(),
        blob_key: blob_key.to_owned(),
    };
    serde_json::to_string(&p).unwrap_or_default()
}

/// Runs one attempt of the transcode `job`, bounded by the attempt timeout.
///
/// # Errors
/// How the attempt stopped.
pub async fn run(jobs: &Jobs, pool: &ClientPool, job: &Job) -> Result<(), Stop> {
    let p = parse(&job.payload_json).map_err(|e| Stop::permanent(reason::BAD_PAYLOAD, e))?;
    let limit = jobs.config.attempt_timeout;
    rt::timeout(limit, drive(jobs, pool, job, &p))
        .await
        .unwrap_or_else(|_| {
            Err(Stop::failed(
                reason::TIMED_OUT,
                format!("attempt timed out after {} s", limit.as_secs()),
            ))
        })
}

/// What users read of a transcode's `error`: the transcoder's reason when
/// it is one of its own ([`Reason`]), else that transcoding failed (an
/// older or foreign transcoder's text may name files or quote tools).
#[must_use]
pub fn public_reason(transcoder_error: &str) -> &'static str {
    Reason::of_message(transcoder_error)
        .unwrap_or(Reason::Failed)
        .message()
}

fn call<T>(message: T, jobs: &Jobs) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(jobs.config.call_timeout);
    req
}

async fn drive(jobs: &Jobs, pool: &ClientPool, job: &Job, p: &Payload) -> Result<(), Stop> {
    let attempt = job.attempts;
    let mut client = pool
        .transcoder()
        .await
        .map_err(|e| Stop::failed(reason::TRANSCODER_UNAVAILABLE, e))?;
    let req = TranscodeRequest {
        video_id: p.video_id.clone(),
        source_blob_key: p.blob_key.clone(),
        profile_names: Vec::new(),
        idempotency_key: job.id.clone(),
    };
    let transcode_id = match client.transcode(call(req, jobs)).await {
        Ok(res) => res.into_inner().transcode_id,
        Err(s) if s.code() == Code::InvalidArgument => {
            return Err(Stop::permanent(
                reason::REFUSED,
                format!("the transcoder refused the job: {}", s.message()),
            ));
        }
        Err(s) => {
            return Err(Stop::failed(
                reason::TRANSCODER_UNAVAILABLE,
                format!("transcode call failed: {:?}: {}", s.code(), s.message()),
            ));
        }
    };
    let mut errors = 0;
    let mut progress = 0;
    loop {
        rt::sleep(jobs.config.progress_poll).await;
        let req = GetTranscodeStatusRequest {
            transcode_id: transcode_id.clone(),
        };
        match client.get_transcode_status(call(req, jobs)).await {
            Ok(res) => {
                errors = 0;
                let status = res.into_inner().status.unwrap_or_default();
                match TranscodeState::try_from(status.state) {
                    Ok(TranscodeState::Succeeded) => {
                        // The job succeeds once the catalog says ready, not
                        // when an event (which may be lost) was sent.
                        let renditions = status.completed_renditions;
                        return super::catalog::ready(pool, &p.video_id, renditions)
                            .await
                            .map_err(|s| {
                                Stop::failed(
                                    reason::CATALOG_UNAVAILABLE,
                                    format!(
                                        "transcoded, but the catalog was not updated: {:?}: {}",
                                        s.code(),
                                        s.message()
                                    ),
                                )
                            });
                    }
                    Ok(TranscodeState::Failed) => {
                        return Err(Stop::failed(
                            public_reason(&status.error),
                            format!("transcode {transcode_id} failed: {:?}", status.error),
                        ));
                    }
                    Ok(TranscodeState::Cancelled) => {
                        return Err(Stop::failed(
                            reason::CANCELLED,
                            format!("the transcode was cancelled: {}", status.error),
                        ));
                    }
                    _ => progress = status.progress_percent.min(100),
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                return Err(Stop::failed(
                    reason::LOST,
                    format!("transcode {transcode_id} was lost (the transcoder restarted)"),
                ));
            }
            Err(s) => {
                errors += 1;
                if errors >= MAX_POLL_ERRORS {
                    return Err(Stop::failed(
                        reason::TRANSCODER_UNAVAILABLE,
                        format!("transcoder unreachable: {:?}: {}", s.code(), s.message()),
                    ));
                }
            }
        }
        if let Err(e) = jobs.renew(&job.id, attempt, progress).await {
            if Jobs::is_cancelled(&e) {
                let req = CancelTranscodeRequest {
                    transcode_id: transcode_id.clone(),
                    reason: "job cancelled".to_owned(),
                };
                if let Err(s) = client.cancel_transcode(call(req, jobs)).await {
                    tracing::warn!(job_id = %job.id, error = %s, "transcode not cancelled");
                }
            }
            if Jobs::is_gone(&e) {
                return Err(Stop::Abandoned);
            }
            tracing::warn!(job_id = %job.id, error = %e, "lease not renewed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked() {
        let json = payload_json("v1", &media::original_key("v1"));
        assert_eq!(
            parse(&json).unwrap(),
            Payload {
                video_id: "v1".into(),
                blob_key: "originals/v1".into()
            }
        );
        assert!(parse(r#"{"video_id":"a/b","blob_key":"x"}"#).is_err());
        assert!(parse(r#"{"video_id":"a","blob_key":"../x"}"#).is_err());
        assert!(parse(r#"{"video_id":"a"}"#).is_err());
    }

    #[test]
    fn only_the_transcoders_own_reasons_reach_users() {
        for r in Reason::ALL {
            assert_eq!(public_reason(r.message()), r.message());
        }
        for foreign in [
            "",
            "corrupt or unsupported input: ffprobe exit status: 1: originals/v1: Invalid data",
            "cancelled: changed my mind",
        ] {
            assert_eq!(public_reason(foreign), "transcoding failed", "{foreign}");
        }
    }
}
