//! TranscoderService over gRPC: validates requests, hands transcodes to the
//! executor, reports their status from the table.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::engine::Job;
use super::error::TranscoderError;
use super::run::Shared;
use super::state::{Phase, Transcode};
use crate::blob;
use crate::proto::transcoder_service_server::TranscoderService;
use crate::proto::{
    CancelTranscodeRequest, CancelTranscodeResponse, GetTranscodeStatusRequest,
    GetTranscodeStatusResponse, ListProfilesRequest, ListProfilesResponse, Rendition,
    TranscodeProfile, TranscodeRequest, TranscodeResponse, TranscodeState, TranscodeStatus,
};
use crate::services::media::{self, Profile};

/// Most profile names in one request.
pub const MAX_PROFILES: usize = 16;
/// Longest cancel reason, bytes.
pub const MAX_REASON: usize = 256;

/// The gRPC face of the transcoder.
#[derive(Debug, Clone)]
pub struct TranscoderServer {
    shared: Arc<Shared>,
}

impl TranscoderServer {
    /// A server over `shared`.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn invalid(msg: impl Into<String>) -> TranscoderError {
    TranscoderError::Invalid(msg.into())
}

/// The profiles named (ascending by height), `None` for "all that fit".
fn profiles(names: &[String]) -> Result<Option<Vec<Profile>>, TranscoderError> {
    if names.is_empty() {
        return Ok(None);
    }
    if names.len() > MAX_PROFILES {
        return Err(invalid(format!("profile_names: more than {MAX_PROFILES}")));
    }
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let p = media::profile(name).ok_or_else(|| {
            let shown: String = name.chars().take(32).collect();
            invalid(format!("profile_names: unknown profile {shown:?}"))
        })?;
        if !found.contains(&p) {
            found.push(p);
        }
    }
    found.sort_by_key(|p| p.height);
    Ok(Some(found))
}

fn state(phase: Phase) -> TranscodeState {
    match phase {
        Phase::Pending => TranscodeState::Pending,
        Phase::Running => TranscodeState::Running,
        Phase::Succeeded => TranscodeState::Succeeded,
        Phase::Failed => TranscodeState::Failed,
        Phase::Cancelled => TranscodeState::Cancelled,
    }
}

fn ms(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms).unwrap_or(i64::MAX)
}

fn status(t: &Transcode) -> TranscodeStatus {
    let completed = if t.phase == Phase::Succeeded {
        t.renditions
            .iter()
            .map(|r| Rendition {
                name: r.profile.name.to_owned(),
                width: r.width,
                height: r.height,
                bitrate_kbps: r.profile.video_kbps,
                playlist_key: media::playlist_key(&t.video_id, r.profile.name),
            })
            .collect()
    } else {
        Vec::new()
    };
    TranscodeStatus {
        transcode_id: t.id.clone(),
        video_id: t.video_id.clone(),
        state: state(t.phase).into(),
        progress_percent: t.progress,
        completed_renditions: completed,
        error: t.error.clone(),
        started_at_ms: ms(t.started_ms),
        updated_at_ms: ms(t.updated_ms),
        finished_at_ms: ms(t.finished_ms),
    }
}

#[tonic::async_trait]
impl TranscoderService for TranscoderServer {
    async fn transcode(
        &self,
        req: Request<TranscodeRequest>,
    ) -> Result<Response<TranscodeResponse>, Status> {
        let req = req.into_inner();
        media::check_id("video_id", &req.video_id).map_err(invalid)?;
        blob::check_key(&req.source_blob_key)
            .map_err(|e| invalid(format!("source_blob_key: {e}")))?;
        if !req.idempotency_key.is_empty() {
            media::check_id("idempotency_key", &req.idempotency_key).map_err(invalid)?;
        }
        let job = Job {
            video_id: req.video_id,
            source_key: req.source_blob_key,
            profiles: profiles(&req.profile_names)?,
        };
        let t = self.shared.submit(job, &req.idempotency_key)?;
        Ok(Response::new(TranscodeResponse {
            transcode_id: t.id,
            state: state(t.phase).into(),
        }))
    }

    async fn get_transcode_status(
        &self,
        req: Request<GetTranscodeStatusRequest>,
    ) -> Result<Response<GetTranscodeStatusResponse>, Status> {
        let id = req.into_inner().transcode_id;
        media::check_id("transcode_id", &id).map_err(invalid)?;
        let t = self.shared.get(&id).ok_or(TranscoderError::NotFound(id))?;
        Ok(Response::new(GetTranscodeStatusResponse {
            status: Some(status(&t)),
        }))
    }

    async fn cancel_transcode(
        &self,
        req: Request<CancelTranscodeRequest>,
    ) -> Result<Response<CancelTranscodeResponse>, Status> {
        let req = req.into_inner();
        media::check_id("transcode_id", &req.transcode_id).map_err(invalid)?;
        if req.reason.len() > MAX_REASON {
            return Err(invalid(format!("reason: exceeds {MAX_REASON} bytes")).into());
        }
        let t = self.shared.cancel(&req.transcode_id, &req.reason).await?;
        Ok(Response::new(CancelTranscodeResponse {
            state: state(t.phase).into(),
        }))
    }

    async fn list_profiles(
        &self,
        _req: Request<ListProfilesRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        let profiles = media::PROFILES
            .iter()
            .map(|p| TranscodeProfile {
                name: p.name.to_owned(),
                width: p.width,
                height: p.height,
                bitrate_kbps: p.video_kbps,
                audio_bitrate_kbps: p.audio_kbps,
                video_codec: "h264".to_owned(),
            })
            .collect();
        Ok(Response::new(ListProfilesResponse { profiles }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_checked_and_ordered() {
        assert_eq!(profiles(&[]).unwrap(), None);
        let got = profiles(&["720p".into(), "240p".into(), "720p".into()]).unwrap();
        let names: Vec<_> = got.unwrap().iter().map(|p| p.name).collect();
        assert_eq!(names, ["240p", "720p"]);
        assert!(matches!(
            profiles(&["4k".into()]),
            Err(TranscoderError::Invalid(m)) if m.contains("unknown profile")
        ));
        assert!(profiles(&vec!["240p".to_owned(); 17]).is_err());
    }
}
