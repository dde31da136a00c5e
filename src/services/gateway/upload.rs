//! `POST /v1/videos`: checks the request up front, then streams the body into
//! UploadService.Upload as chunks of <= 1 MiB without ever holding it whole.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, BodyDataStream};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use serde_json::json;

use super::Api;
use super::bearer::AuthUser;
use super::error::ApiError;
use super::query::Query;
use crate::proto::upload_chunk::Payload;
use crate::proto::{UploadChunk, UploadMetadata};
use crate::rt;
use crate::services::upload::server::USER_ID_HEADER;
use crate::services::upload::{MAX_UPLOAD_CALL_TIMEOUT, UPLOAD_IDLE_TIMEOUT};

/// Largest data chunk sent to the upload service (the proto's limit).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Longest file name (the proto's limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Why the body stopped before its end.
#[derive(Debug)]
enum Cut {
    /// More than the largest upload.
    TooLarge(u64),
    /// The client's body failed (closed early, malformed chunking ...).
    Body(axum::Error),
    /// The client sent nothing for this long.
    Idle(std::time::Duration),
}

impl From<Cut> for ApiError {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::TooLarge(max) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body: exceeds {max} bytes"),
            ),
            Cut::Body(e) => {
                tracing::debug!(error = %e, "upload body failed");
                ApiError::bad_request("body: incomplete upload")
            }
            Cut::Idle(idle) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("body: nothing received for {} s", idle.as_secs()),
            ),
        }
    }
}

/// Checks a file name against UploadMetadata.file_name's rules.
pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name: 1..=255 bytes without '/', '\\\\' or NUL, not '.' or '..'",
        ))
    }
}

fn metadata_chunk(meta: UploadMetadata) -> UploadChunk {
    UploadChunk {
        payload: Some(Payload::Metadata(meta)),
    }
}

fn data_chunk(data: Vec<u8>) -> UploadChunk {
    UploadChunk {
        payload: Some(Payload::Data(data.into())),
    }
}

/// Re-chunks a body into data chunks of 1..=[`CHUNK_BYTES`].
struct Rechunk {
    body: BodyDataStream,
    out: Vec<u8>,
    pending: bytes::Bytes,
    received: u64,
    max: u64,
    cut: Arc<Mutex<Option<Cut>>>,
    done: bool,
    /// Longest wait for the client's next bytes.
    idle: std::time::Duration,
}

impl Rechunk {
    /// Records `cut` and yields the poison pill: a second metadata chunk,
    /// which the upload service must refuse (INVALID_ARGUMENT) before it
    /// could commit; the stream then ends. An early end of the request
    /// stream alone would look like a complete upload of unknown size.
    fn cut(mut self, cut: Cut) -> Option<(UploadChunk, Self)> {
        *self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cut);
        self.done = true;
        Some((metadata_chunk(UploadMetadata::default()), self))
    }

    async fn next(mut self) -> Option<(UploadChunk, Self)> {
        loop {
            if self.done {
                return None;
            }
            if !self.pending.is_empty() {
                let take = (CHUNK_BYTES - self.out.len()).min(self.pending.len());
                self.out.extend_from_slice(&self.pending.split_to(take));
            }
            if self.out.len() == CHUNK_BYTES {
                let full = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK_BYTES));
                return Some((data_chunk(full), self));
            }
            let Ok(next) = rt::timeout(self.idle, self.body.next()).await else {
                let idle = self.idle;
                return self.cut(Cut::Idle(idle));
            };
            match next {
                Some(Ok(frame)) => {
                    self.received = self.received.saturating_add(frame.len() as u64);
                    if self.received > self.max {
                        let max = self.max;
                        return self.cut(Cut::TooLarge(max));
                    }
                    self.pending = frame;
                }
                Some(Err(e)) => return self.cut(Cut::Body(e)),
                None => {
                    self.done = true;
                    if !self.out.is_empty() {
                        let rest = std::mem::take(&mut self.out);
                        return Some((data_chunk(rest), self));
                    }
                }
            }
        }
    }
}

/// The request stream: the metadata chunk, then the body's data chunks.
fn chunks(
    meta: UploadMetadata,
    body: Body,
    max: u64,
    cut: Arc<Mutex<Option<Cut>>>,
) -> impl Stream<Item = UploadChunk> + Send + 'static {
    let state = Rechunk {
        body: body.into_data_stream(),
        out: Vec::with_capacity(CHUNK_BYTES),
        pending: bytes::Bytes::new(),
        received: 0,
        max,
        cut,
        done: false,
        idle: UPLOAD_IDLE_TIMEOUT,
    };
    futures::stream::once(std::future::ready(metadata_chunk(meta)))
        .chain(futures::stream::unfold(state, Rechunk::next))
}

/// `POST /v1/videos?name=&title=&description=&visibility=` with the video
/// as the body (`visibility`: private, the default, unlisted or public).
pub async fn create(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("video/") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: expected video/*",
        ));
    }
    let query = Query::parse(uri.query())?;
    let name = query.get("name").unwrap_or_default();
    check_name(name)?;
    let length: Option<u64> = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length: not a number"))?,
        ),
    };
    if length.is_some_and(|n| n > api.max_upload_bytes) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: exceeds {} bytes", api.max_upload_bytes),
        ));
    }
    let meta = UploadMetadata {
        file_name: name.to_owned(),
        content_type: content_type.to_owned(),
        size_bytes: length.unwrap_or(0),
        title: query.get("title").unwrap_or_default().to_owned(),
        description: query.get("description").unwrap_or_default().to_owned(),
        visibility: super::videos::upload_visibility(&query)? as i32,
        ..UploadMetadata::default()
    };
    let mut client = api.runtime.pool.upload().await?;
    let cut = Arc::new(Mutex::new(None));
    let mut req = tonic::Request::new(chunks(meta, body, api.max_upload_bytes, cut.clone()));
    // The deadline covers the whole transfer, which may take hours on a
    // slow link; a stalled one is cut after UPLOAD_IDLE_TIMEOUT instead.
    req.set_timeout(MAX_UPLOAD_CALL_TIMEOUT);
    // The owner: the upload service trusts this header because only our
    // services can call it (service tokens).
    if let Some(Extension(AuthUser(id))) = &user
        && let Ok(v) = id.parse()
    {
        req.metadata_mut().insert(USER_ID_HEADER, v);
    }
    let result = client.upload(req).await;
    let cut = cut
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(cut) = cut {
        return Err(cut.into());
    }
    let res = result
        .map_err(|s| ApiError::from_status(&s, true))?
        .into_inner();
    let body = json!({
        "video_id": res.video_id,
        "upload_id": res.upload_id,
        "size_bytes": res.size_bytes,
        "sha256_hex": res.sha256_hex,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(items: Vec<UploadChunk>) -> Vec<Payload> {
        items.into_iter().filter_map(|c| c.payload).collect()
    }

    #[tokio::test]
    async fn bodies_are_rechunked_behind_the_metadata() {
        let frames: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(vec![1u8; 700 << 10].into()),
            Ok(vec![2u8; 700 << 10].into()),
            Ok(bytes::Bytes::new()),
            Ok(vec![3u8; 3 << 20].into()),
        ];
        let body = Body::from_stream(futures::stream::iter(frames));
        let cut = Arc::new(Mutex::new(None));
        let meta = UploadMetadata {
            file_name: "a.mp4".into(),
            ..UploadMetadata::default()
        };
        let out = payloads(chunks(meta, body, u64::MAX, cut.clone()).collect().await);
        assert!(matches!(&out[0], Payload::Metadata(m) if m.file_name == "a.mp4"));
        let sizes: Vec<usize> = out[1..]
            .iter()
            .map(|p| match p {
                Payload::Data(d) => d.len(),
                Payload::Metadata(_) => 0,
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), (1400 << 10) + (3 << 20));
        assert!(
            sizes.iter().all(|&n| n > 0 && n <= CHUNK_BYTES),
            "{sizes:?}"
        );
        assert_eq!(sizes.len(), 5);
        assert!(cut.lock().expect("lock").is_none());
    }

    #[tokio::test]
    async fn a_broken_or_oversized_body_ends_with_a_refusable_chunk() {
        let frames: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(vec![1u8; 10].into()),
            Err(std::io::Error::other("connection closed")),
        ];
        let cut = Arc::new(Mutex::new(None));
        let body = Body::from_stream(futures::stream::iter(frames));
        let out = payloads(
            chunks(UploadMetadata::default(), body, 100, cut.clone())
                .collect()
                .await,
        );
        assert_eq!(
            out.len(),
            2,
            "metadata, then the poison; the 10 bytes never sent"
        );
        assert!(matches!(out[1], Payload::Metadata(_)));
        assert!(matches!(&*cut.lock().expect("lock"), Some(Cut::Body(_))));

        let cut = Arc::new(Mutex::new(None));
        let body = Body::from(vec![0u8; 101]);
        let out = payloads(
            chunks(UploadMetadata::default(), body, 100, cut.clone())
                .collect()
                .await,
        );
        assert!(matches!(out.last(), Some(Payload::Metadata(_))));
        assert!(matches!(
            *cut.lock().expect("lock"),
            Some(Cut::TooLarge(100))
        ));
    }

    #[test]
    fn file_names_follow_the_proto() {
        for good in ["a.mp4", "my clip (1).mov", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_the_idle_timeout() {
        let first: Result<bytes::Bytes, std::io::Error> = Ok(vec![7u8; 10].into());
        let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
        let body = Body::from_stream(stalled);
        let cut = Arc::new(Mutex::new(None));
        let started = rt::now();
        let out = payloads(
            chunks(UploadMetadata::default(), body, u64::MAX, cut.clone())
                .collect()
                .await,
        );
        assert_eq!(rt::now() - started, UPLOAD_IDLE_TIMEOUT);
        // The metadata, then the poison pill: nothing of the body commits.
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| matches!(p, Payload::Metadata(_))));
        let cut = cut.lock().unwrap().take();
        assert!(matches!(cut, Some(Cut::Idle(idle)) if idle == UPLOAD_IDLE_TIMEOUT));
        let err = ApiError::from(cut.unwrap());
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
    }
}
