//! The playback routes: the original with byte ranges (streamed chunk by
//! chunk from ReadRange), the HLS playlists and segments, and the
//! thumbnail. When the gateway shares streaming's file store, originals
//! and segments are sent from their files instead (see [`super::local`]).
//! Who may play what: [`super::access`] (a public video's media needs no
//! credential); the caching headers: [`super::validators`].

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tonic::Code;

use super::access;
use super::bearer::AuthUser;
use super::error::ApiError;
use super::local::{self, Original};
use super::range::{self, Parsed, Spec};
use super::validators::{Kind, Validators};
use super::{Api, IdPath, video_id};
use crate::middleware::retry::stamp;
use crate::proto::{
    DataChunk, GetPlaylistRequest, GetSegmentRequest, GetThumbnailRequest, LocateOriginalRequest,
    LocatedFile, ReadRangeRequest, Video,
};
use crate::services::media;
use crate::services::streaming::MAX_MESSAGE_BYTES;
use crate::services::streaming::server::segment_type;

type Chunks = tonic::Streaming<DataChunk>;

/// What to send of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// All of it (200): no Range, an invalid one, or several ranges (we
    /// answer a multi-range request with the whole file).
    Full,
    /// One range (206, or 416 if unsatisfiable).
    One(Spec),
}

fn wanted(headers: &HeaderMap) -> Result<Wanted, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(Wanted::Full);
    };
    if value.len() > range::MAX_HEADER_BYTES {
        return Err(ApiError::bad_request("Range: header too long"));
    }
    let Ok(text) = value.to_str() else {
        return Ok(Wanted::Full);
    };
    match range::parse(text) {
        Parsed::Ignore => Ok(Wanted::Full),
        Parsed::TooLarge => Err(ApiError::bad_request("Range: too many ranges")),
        Parsed::Ranges(r) if r.len() == 1 => Ok(Wanted::One(r[0])),
        Parsed::Ranges(_) => Ok(Wanted::Full),
    }
}

type StreamingClient =
    crate::proto::streaming_service_client::StreamingServiceClient<crate::client::PoolChannel>;

async fn streaming(api: &Api) -> Result<StreamingClient, ApiError> {
    Ok(api
        .runtime
        .pool
        .streaming()
        .await?
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// One idempotent read from streaming (`msg` sent through `method`),
/// retried by the pool's policy: nothing has reached the client yet.
async fn retried<M, R, F, Fut>(api: &Api, msg: M, method: F) -> Result<R, ApiError>
where
    M: Clone,
    F: Fn(StreamingClient, tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let (msg, method) = (&msg, &method);
    let res = api
        .runtime
        .pool
        .retrier_for(crate::services::ServiceKind::Streaming.name())
        .call(true, |previous| async move {
            let mut req = tonic::Request::new(msg.clone());
            stamp(&mut req, previous);
            let client = streaming(api)
                .await
                .map_err(|e| tonic::Status::unavailable(e.message))?;
            Ok(method(client, req).await?.into_inner())
        })
        .await?;
    Ok(res)
}

/// Opens ReadRange and waits for its first chunk (which carries the size).
async fn read_range(
    api: &Api,
    video_id: &str,
    offset: u64,
    length: u64,
) -> Result<(DataChunk, Chunks), tonic::Status> {
    // Opening the stream is idempotent and nothing has reached the client
    // yet, so it is retried; a failure mid-body is not.
    api.runtime
        .pool
        .retrier_for(crate::services::ServiceKind::Streaming.name())
        .call(true, |previous| async move {
            let mut req = tonic::Request::new(ReadRangeRequest {
                video_id: video_id.to_owned(),
                offset,
                length,
            });
            stamp(&mut req, previous);
            let mut client = streaming(api)
                .await
                .map_err(|e| tonic::Status::unavailable(e.message))?;
            let mut chunks = client.read_range(req).await?.into_inner();
            match chunks.message().await? {
                Some(first) => Ok((first, chunks)),
                None => Err(tonic::Status::internal("streaming sent no chunk")),
            }
        })
        .await
}

fn unsatisfiable(size: u64) -> Response {
    let mut res =
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    res
}

/// The bytes `[from, end)` of the original as a checked body: chunks must
/// arrive in order and end exactly at `end`, else the body fails (the
/// client sees a truncated response, never wrong bytes). At the last chunk
/// a task reads the call to its end (its trailers), so that it closes
/// cleanly: a call dropped before its trailers is reset, and h2 ends a
/// connection that has reset too many streams (GOAWAY ENHANCE_YOUR_CALM),
/// failing every call on it. (It can't wait for the body's next poll: the
/// HTTP server stops polling once Content-Length bytes are out.)
fn body(
    first: DataChunk,
    rest: Chunks,
    from: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, tonic::Status>> {
    let state = (Some((first, rest)), from, end);
    futures::stream::unfold(state, |(source, at, end)| async move {
        let (chunk, mut rest) = source?;
        if chunk.offset != at || at.saturating_add(chunk.data.len() as u64) > end {
            return Some((
                Err(tonic::Status::internal(
                    "streaming sent a chunk out of place",
                )),
                (None, at, end),
            ));
        }
        let next_at = at + chunk.data.len() as u64;
        let data = chunk.data;
        if chunk.last || next_at == end {
            if next_at != end {
                return Some((
                    Err(tonic::Status::internal("streaming ended early")),
                    (None, at, end),
                ));
            }
            finish(rest);
            return Some((Ok(data), (None, next_at, end)));
        }
        match rest.message().await {
            Ok(Some(next)) => Some((Ok(data), (Some((next, rest)), next_at, end))),
            Ok(None) => Some((
                Err(tonic::Status::internal("streaming ended early")),
                (None, at, end),
            )),
            Err(e) => Some((Err(e), (None, at, end))),
        }
    })
    .filter(|item| std::future::ready(!matches!(item, Ok(b) if b.is_empty())))
}

/// How long a finished ReadRange may take to send its trailers before the
/// gateway drops it anyway (the client already has every byte).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads a ReadRange call whose last chunk has arrived to its end, from a
/// task of its own (see [`body`]).
fn finish(mut rest: Chunks) {
    crate::rt::spawn(async move {
        match crate::rt::timeout(DRAIN_TIMEOUT, rest.message()).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(_))) => tracing::warn!("streaming sent a chunk after the last one"),
            Ok(Err(status)) => tracing::warn!(%status, "streaming failed after the last chunk"),
            Err(crate::rt::Elapsed) => tracing::debug!("streaming's trailers did not come in time"),
        }
    });
}

/// A 200 or 206 answer streaming `[from, end)` of the original `key` of
/// `video` from ReadRange.
fn respond(
    video: &Video,
    key: &str,
    status: StatusCode,
    first: DataChunk,
    rest: Chunks,
    from: u64,
    end: u64,
) -> Response {
    let size = first.total_size_bytes;
    let body = Body::from_stream(body(first, rest, from, end));
    answer(video, key, status, body, size, from, end)
}

/// A 200 or 206 answer sending `body`, the bytes `[from, end)` of the
/// original `key` of `video`, of `size` bytes.
fn answer(
    video: &Video,
    key: &str,
    status: StatusCode,
    body: Body,
    size: u64,
    from: u64,
    end: u64,
) -> Response {
    let length = end - from;
    let last = end.saturating_sub(1);
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    Validators::of(video, Kind::Original, key, size).mark(h);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{last}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    res
}

/// The original's size, from a one-byte read.
async fn size(api: &Api, video_id: &str) -> Result<u64, ApiError> {
    let (first, rest) = read_range(api, video_id, 0, 1).await?;
    finish(rest);
    Ok(first.total_size_bytes)
}

/// The video of a media route's `path`, if the request's user (or, with
/// none, anyone) may play it.
async fn playable(
    api: &Api,
    path: IdPath,
    user: Option<&Extension<AuthUser>>,
) -> Result<Video, ApiError> {
    let id = video_id(path)?;
    access::playable(api, &id, access::user_of(user)).await
}

/// `GET /v1/videos/{id}/original`, honouring a single-range `Range` header.
pub async fn original(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let video = playable(&api, path, user.as_ref()).await?;
    original_of(&api, &video, &method, &headers).await
}

/// The original of `video` (one the caller may play), as `headers` ask for
/// it.
pub(super) async fn original_of(
    api: &Api,
    video: &Video,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mut wanted = wanted(headers)?;
    let video_id = video.id.clone();
    let key = media::original_key(&video_id);
    let msg = LocateOriginalRequest {
        video_id: video_id.clone(),
    };
    if let Some(original) = open_local(api, &key, msg, |mut c, req| async move {
        c.locate_original(req).await
    })
    .await
    {
        let v = Validators::of(video, Kind::Original, &key, original.size());
        if v.not_modified(method, headers) {
            return Ok(v.not_modified_response());
        }
        if !v.range_allowed(headers, crate::rt::unix_ms()) {
            wanted = Wanted::Full;
        }
        return Ok(send_local(video, &key, original, wanted));
    }
    // A conditional request, or a HEAD, needs the size (so the tag) first:
    // a one-byte read, closed cleanly, rather than a stream dropped midway.
    let conditional = [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|h| headers.contains_key(h));
    if conditional || method == Method::HEAD {
        let size = size(api, &video_id).await?;
        let v = Validators::of(video, Kind::Original, &key, size);
        if v.not_modified(method, headers) {
            return Ok(v.not_modified_response());
        }
        if !v.range_allowed(headers, crate::rt::unix_ms()) {
            wanted = Wanted::Full;
        }
        if method == Method::HEAD {
            return Ok(head(video, &key, size, wanted));
        }
    }
    let spec = match wanted {
        Wanted::Full => {
            let (first, rest) = read_range(api, &video_id, 0, 0).await?;
            let size = first.total_size_bytes;
            return Ok(respond(video, &key, StatusCode::OK, first, rest, 0, size));
        }
        Wanted::One(spec) => spec,
    };
    // A range with a known start is read at once (one call); the size
    // arrives with the first chunk. A suffix needs the size first.
    let (start, length) = match spec.start() {
        Some(start) => {
            let length = match spec {
                Spec::FromTo(a, b) => b.saturating_sub(a).saturating_add(1),
                _ => 0,
            };
            (start, length)
        }
        None => {
            let size = size(api, &video_id).await?;
            let Some((first, last)) = spec.resolve(size) else {
                return Ok(unsatisfiable(size));
            };
            (first, last - first + 1)
        }
    };
    match read_range(api, &video_id, start, length).await {
        Ok((first, rest)) => match spec.resolve(first.total_size_bytes) {
            Some((from, to)) => Ok(respond(
                video,
                &key,
                StatusCode::PARTIAL_CONTENT,
                first,
                rest,
                from,
                to + 1,
            )),
            None => Ok(unsatisfiable(first.total_size_bytes)),
        },
        Err(e) if e.code() == Code::OutOfRange => Ok(unsatisfiable(size(api, &video_id).await?)),
        Err(e) => Err(e.into()),
    }
}

/// The blob under `key` opened from the gateway's own store, when it is the
/// file streaming locates with `method` (see [`super::local`]); `None`:
/// read it through streaming.
async fn open_local<M, F, Fut>(api: &Api, key: &str, msg: M, method: F) -> Option<Original>
where
    M: Clone,
    F: Fn(StreamingClient, tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<LocatedFile>, tonic::Status>>,
{
    let path = api.runtime.blobs.local_path(key)?;
    let locate = || async {
        if api.here {
            // Streaming's own media port: its store is this one.
            return crate::services::streaming::server::locate_here(&api.runtime.blobs, key).await;
        }
        retried(api, msg, method)
            .await
            .inspect_err(|e| {
                tracing::debug!(key, error = %e.message, "locating failed: reading through streaming");
            })
            .ok()
    };
    local::open(&api.located, key, path.into(), locate).await
}

/// The status and the bytes `[from, end)` to send for `wanted` of `size`
/// bytes; `None`: the range cannot be satisfied (416).
fn resolve(wanted: Wanted, size: u64) -> Option<(StatusCode, u64, u64)> {
    match wanted {
        Wanted::Full => Some((StatusCode::OK, 0, size)),
        Wanted::One(spec) => spec
            .resolve(size)
            .map(|(first, last)| (StatusCode::PARTIAL_CONTENT, first, last + 1)),
    }
}

/// The answer for `wanted` of the original `key` of `video` opened from
/// the gateway's store.
fn send_local(video: &Video, key: &str, original: Original, wanted: Wanted) -> Response {
    let size = original.size();
    match resolve(wanted, size) {
        Some((status, from, end)) => {
            let mut res = answer(video, key, status, Body::empty(), size, from, end);
            local::send(&mut res, original, from, end);
            res
        }
        None => unsatisfiable(size),
    }
}

/// The answer to a HEAD for `wanted` of the original `key` of `size`
/// bytes: a GET's headers, no body.
fn head(video: &Video, key: &str, size: u64, wanted: Wanted) -> Response {
    match resolve(wanted, size) {
        Some((status, from, end)) => answer(video, key, status, Body::empty(), size, from, end),
        None => unsatisfiable(size),
    }
}

fn rendition(name: &str) -> Result<(), ApiError> {
    if media::is_rendition(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "rendition: expected 1..=32 chars of [A-Za-z0-9_-]",
        ))
    }
}

/// The blob `key` of `video`, `data`, of `kind`, as `content_type` with
/// its validators, or 304 when the request's preconditions say the client
/// has it. (Every media route answers GET and HEAD only, for which the
/// preconditions are the same.)
fn validated(
    video: &Video,
    kind: Kind,
    key: &str,
    headers: &HeaderMap,
    content_type: &str,
    data: impl Into<Bytes>,
) -> Response {
    let data = data.into();
    let v = Validators::of(video, kind, key, data.len() as u64);
    if v.not_modified(&Method::GET, headers) {
        return v.not_modified_response();
    }
    let mut res = typed(content_type, data);
    v.mark(res.headers_mut());
    res
}

fn typed(content_type: &str, body: impl Into<Body>) -> Response {
    let mut res = Response::new(body.into());
    let ty = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    res.headers_mut().insert(header::CONTENT_TYPE, ty);
    res
}

/// The master playlist of `video`, or with a `rendition` (checked here)
/// that rendition's playlist.
pub(super) async fn playlist_of(
    api: &Api,
    video: &Video,
    rendition: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !rendition.is_empty() {
        self::rendition(&rendition)?;
    }
    let msg = GetPlaylistRequest {
        video_id: video.id.clone(),
        rendition,
    };
    let key = if msg.rendition.is_empty() {
        media::master_key(&msg.video_id)
    } else {
        media::playlist_key(&msg.video_id, &msg.rendition)
    };
    let res = retried(
        api,
        msg,
        |mut c, req| async move { c.get_playlist(req).await },
    )
    .await?;
    Ok(validated(
        video,
        Kind::Playlist,
        &key,
        headers,
        &res.content_type,
        res.content,
    ))
}

/// `GET /v1/videos/{id}/hls/master.m3u8`
pub async fn master(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let video = playable(&api, path, user.as_ref()).await?;
    playlist_of(&api, &video, String::new(), &headers).await
}

/// `GET /v1/videos/{id}/hls/{rendition}/index.m3u8`
pub async fn media_playlist(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((id, name)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    media::check_id("video id", &id).map_err(ApiError::bad_request)?;
    rendition(&name)?;
    let video = access::playable(&api, &id, access::user_of(user.as_ref())).await?;
    playlist_of(&api, &video, name, &headers).await
}

/// `GET /v1/videos/{id}/hls/{rendition}/{segment}`
pub async fn segment(
    State(api): State<Api>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((video_id, name, segment_name)) =
        path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    media::check_id("video id", &video_id).map_err(ApiError::bad_request)?;
    let video = access::playable(&api, &video_id, access::user_of(user.as_ref())).await?;
    segment_of(&api, &video, name, segment_name, &headers).await
}

/// The segment `segment_name` (checked here) of `video` in `name` (checked
/// here).
pub(super) async fn segment_of(
    api: &Api,
    video: &Video,
    name: String,
    segment_name: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    rendition(&name)?;
    if !media::is_segment_name(&segment_name) {
        return Err(ApiError::bad_request(
            "segment: expected 1..=255 chars of [A-Za-z0-9_.-], not '.' or '..'",
        ));
    }
    let msg = GetSegmentRequest {
        video_id: video.id.clone(),
        rendition: name,
        segment_name,
    };
    let key = media::segment_key(&msg.video_id, &msg.rendition, &msg.segment_name);
    let locate = |mut c: StreamingClient, req| async move { c.locate_segment(req).await };
    if let Some(file) = open_local(api, &key, msg.clone(), locate).await {
        let size = file.size();
        let v = Validators::of(video, Kind::Segment, &key, size);
        if v.not_modified(&Method::GET, headers) {
            return Ok(v.not_modified_response());
        }
        let mut res = typed(segment_type(&msg.segment_name), Body::empty());
        local::send(&mut res, file, 0, size);
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        v.mark(res.headers_mut());
        return Ok(res);
    }
    let res = retried(
        api,
        msg,
        |mut c, req| async move { c.get_segment(req).await },
    )
    .await?;
    Ok(validated(
        video,
        Kind::Segment,
        &key,
        headers,
        &res.content_type,
        res.data,
    ))
}

/// `GET /v1/videos/{id}/thumbnail.jpg`
pub async fn thumbnail(
    State(api): State<Api>,
    path: IdPath,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let video = playable(&api, path, user.as_ref()).await?;
    thumbnail_of(&api, &video, &headers).await
}

/// The thumbnail of `video`.
pub(super) async fn thumbnail_of(
    api: &Api,
    video: &Video,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = media::thumbnail_key(&video.id);
    let msg = GetThumbnailRequest {
        video_id: video.id.clone(),
    };
    let res = retried(
        api,
        msg,
        |mut c, req| async move { c.get_thumbnail(req).await },
    )
    .await?;
    Ok(validated(
        video,
        Kind::Thumbnail,
        &key,
        headers,
        &res.content_type,
        res.data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers_pick_what_to_send() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).expect("value"));
            m
        };
        assert_eq!(wanted(&HeaderMap::new()), Ok(Wanted::Full));
        assert_eq!(wanted(&h("bytes=0-9")), Ok(Wanted::One(Spec::FromTo(0, 9))));
        assert_eq!(wanted(&h("bytes=9-0")), Ok(Wanted::Full));
        assert_eq!(wanted(&h("bytes=0-1,5-6")), Ok(Wanted::Full));
        let many = format!("bytes={}", vec!["1-2"; 17].join(","));
        assert_eq!(
            wanted(&h(&many)).map_err(|e| e.status),
            Err(StatusCode::BAD_REQUEST)
        );
        let long = format!("bytes=0-{}", "9".repeat(300));
        assert_eq!(
            wanted(&h(&long)).map_err(|e| e.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }
}
