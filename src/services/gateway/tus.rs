//! Resumable uploads over tus 1.0.0 at `/v1/uploads/`: the core protocol
//! and the creation, creation-with-upload, termination, expiration and
//! checksum extensions (<https://tus.io/protocols/resumable-upload>).
//!
//! Everything an upload is lives in the blob store, which every gateway
//! instance of a deployment shares, so that an upload survives a restart
//! and continues through any instance:
//!
//! - `tus/<owner>/<id>/info`: its record (length, file name, type, title,
//!   visibility), written once at creation;
//! - `tus/<owner>/<id>/p<offset>`: one blob per acknowledged PATCH, its
//!   first byte at `offset` (20 digits). Each is committed atomically
//!   before the PATCH is answered, so the offset (the chain of parts from
//!   0) is exactly the bytes durably stored; a PATCH cut short stores
//!   nothing and the client sends those bytes again;
//! - `tus/<owner>/<id>/done`: the id of the video once the last byte came
//!   and the upload entered the pipeline.
//!
//! The owner in the key is the bearer token's user: another user's upload
//! is simply not found. When the chain reaches the length, the parts are
//! streamed into UploadService.Upload, the one-shot upload's own path (the
//! video record, FileUploaded, the job), with the idempotency key
//! `tus-<id>`: a completion retried after a failure or a crash (by the
//! next PATCH or HEAD, on any instance) returns the same video, never a
//! second one. Nothing partial is ever handed over. An upload idle for
//! [`Limits::expiry`] is gone (410) and a sweep removes its blobs.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

use super::Api;
use super::bearer::AuthUser;
use super::error::ApiError;
use super::upload::CHUNK_BYTES;
use crate::blob::{BlobError, BlobMeta, BlobStore, MAX_LIST, MAX_READ};
use crate::client::PoolChannel;
use crate::proto::upload_chunk::Payload;
use crate::proto::upload_service_client::UploadServiceClient;
use crate::proto::{
    AdoptPartsRequest, BlobPart, UploadChunk, UploadMetadata, UploadResponse, Visibility,
};
use crate::rt;
use crate::services::media;
use crate::services::upload::server::USER_ID_HEADER;
use crate::services::upload::{
    MAX_ADOPT_CALL_TIMEOUT, MAX_UPLOAD_CALL_TIMEOUT, UPLOAD_IDLE_TIMEOUT,
};
use tonic::Code;

type UploadClient = UploadServiceClient<PoolChannel>;

/// The protocol version served.
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions served.
pub const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
/// The checksum algorithms of `Upload-Checksum`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// Where uploads are kept in the blob store.
pub const PREFIX: &str = "tus";
/// The media type of a PATCH body.
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Longest `Upload-Metadata`.
const MAX_METADATA_BYTES: usize = 4096;
/// Status of a failed checksum (tus' own).
const CHECKSUM_MISMATCH: u16 = 460;
/// Most blobs one upload's listing walks (parts, info, done).
const MAX_BLOBS_PER_UPLOAD: usize = 100_000;
/// Most blobs one sweep lists.
const MAX_SWEPT: usize = 1_000_000;

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
static UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
static UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
/// The video a completed upload became (ours, not tus').
pub static VIDEO_ID: HeaderName = HeaderName::from_static("streamgate-video-id");

/// The limits of resumable uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Unfinished uploads one user may have at a time.
    pub max_open_per_user: usize,
    /// Time without a byte after which an upload expires.
    pub expiry: Duration,
    /// Time between sweeps of expired uploads.
    pub sweep_interval: Duration,
    /// Most PATCHes (parts) one upload may take: each request lists them
    /// all, so a client sending tiny chunks is told to send larger ones.
    pub max_parts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_open_per_user: 10,
            expiry: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
            max_parts: 10_000,
        }
    }
}

/// What this gateway instance holds of resumable uploads: their limits and
/// the uploads a request of it is writing right now (one at a time each).
#[derive(Debug, Default)]
pub struct Tus {
    /// The limits.
    pub limits: Limits,
    busy: Mutex<HashSet<String>>,
}

impl Tus {
    /// With `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            busy: Mutex::default(),
        }
    }

    /// Marks `dir` busy until the guard drops; `None` if it already is.
    fn lock(self: &Arc<Self>, dir: &str) -> Option<Busy> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.insert(dir.to_owned()).then(|| Busy {
            tus: self.clone(),
            dir: dir.to_owned(),
        })
    }
}

/// An upload being written by this instance.
struct Busy {
    tus: Arc<Tus>,
    dir: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.tus
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.dir);
    }
}

/// An upload's record (`info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Info {
    length: u64,
    file_name: String,
    content_type: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    visibility: i32,
    /// `Upload-Metadata` as sent, for HEAD.
    #[serde(default)]
    metadata: String,
    created_ms: u64,
}

/// An upload as its blobs tell it.
#[derive(Debug)]
struct Upload {
    info: Info,
    /// The bytes durably stored: the chain of parts from 0.
    offset: u64,
    /// The parts of the chain, in order: (key, size).
    parts: Vec<(String, u64)>,
    /// When a byte last arrived (ms since the epoch).
    last_ms: u64,
    /// The video it became.
    video_id: Option<String>,
}

fn dir_of(owner: &str, id: &str) -> String {
    format!("{PREFIX}/{owner}/{id}")
}

fn part_key(dir: &str, offset: u64) -> String {
    format!("{dir}/p{offset:020}")
}

/// The error of a failed blob store call.
fn blob_error(e: &BlobError) -> ApiError {
    match e {
        BlobError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "no such upload"),
        BlobError::Io(_)
        | BlobError::Remote(_)
        | BlobError::BadKey(..)
        | BlobError::OutOfRange { .. } => {
            use crate::error::Classify as _;
            if e.kind() == crate::error::ErrorKind::StorageFull {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage full")
            } else {
                ApiError::internal(e)
            }
        }
    }
}

/// Every blob under `prefix` (at most `max`), in key order.
async fn list_all(
    blobs: &dyn BlobStore,
    prefix: &str,
    max: usize,
) -> Result<Vec<BlobMeta>, BlobError> {
    let mut all: Vec<BlobMeta> = Vec::new();
    loop {
        let after = all.last().map(|m| m.key.clone());
        let page = blobs.list(prefix, after.as_deref(), MAX_LIST).await?;
        let done = page.len() < MAX_LIST;
        all.extend(page);
        if done || all.len() >= max {
            return Ok(all);
        }
    }
}

/// Reads a small blob whole.
async fn read_small(blobs: &dyn BlobStore, key: &str) -> Result<Vec<u8>, BlobError> {
    Ok(blobs.read(key, 0, MAX_READ).await?.to_vec())
}

/// The upload in `dir`, or `None` when there is none.
async fn load(blobs: &dyn BlobStore, dir: &str) -> Result<Option<Upload>, ApiError> {
    let metas = list_all(blobs, dir, MAX_BLOBS_PER_UPLOAD)
        .await
        .map_err(|e| blob_error(&e))?;
    let info_key = format!("{dir}/info");
    let done_key = format!("{dir}/done");
    if !metas.iter().any(|m| m.key == info_key) {
        return Ok(None);
    }
    let info = match read_small(blobs, &info_key).await {
        Ok(bytes) => serde_json::from_slice::<Info>(&bytes).map_err(|e| ApiError::internal(&e))?,
        Err(BlobError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(blob_error(&e)),
    };
    let mut video_id = None;
    if metas.iter().any(|m| m.key == done_key) {
        match read_small(blobs, &done_key).await {
            Ok(bytes) => video_id = Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(BlobError::NotFound(_)) => {}
            Err(e) => return Err(blob_error(&e)),
        }
    }
    let part_prefix = format!("{dir}/p");
    let parts: BTreeMap<u64, (String, u64)> = metas
        .iter()
        .filter_map(|m| {
            let digits = m.key.strip_prefix(&part_prefix)?;
            let at = digits.parse().ok()?;
            Some((at, (m.key.clone(), m.size)))
        })
        .collect();
    let mut chain = Vec::new();
    let mut offset = 0;
    while let Some((key, size)) = parts.get(&offset) {
        if *size == 0 || offset + size > info.length {
            break;
        }
        chain.push((key.clone(), *size));
        offset += size;
    }
    let last_ms = metas
        .iter()
        .map(|m| m.last_modified_ms)
        .max()
        .unwrap_or(info.created_ms)
        .max(info.created_ms);
    if video_id.is_some() {
        offset = info.length;
    }
    Ok(Some(Upload {
        info,
        offset,
        parts: chain,
        last_ms,
        video_id,
    }))
}

/// The `Tus-Resumable` check of every request but OPTIONS.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(&TUS_RESUMABLE).map(HeaderValue::as_bytes) {
        Some(b"1.0.0") => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "Tus-Resumable: this server speaks 1.0.0",
        )),
        None => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "Tus-Resumable: missing (this server speaks 1.0.0)",
        )),
    }
}

/// A header's value as a number.
fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let n = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("{name}: not a non-negative integer")))?;
    Ok(Some(n))
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (a key
/// alone for an empty value).
fn parse_metadata(raw: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("Upload-Metadata: {why}"));
    if raw.len() > MAX_METADATA_BYTES {
        return Err(bad("longer than 4096 bytes"));
    }
    let mut out = BTreeMap::new();
    for pair in raw.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(bad("keys are ASCII without spaces or commas"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| bad("values are base64"))?;
        let value = String::from_utf8(bytes).map_err(|_| bad("values are UTF-8"))?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(bad("a key twice"));
        }
    }
    Ok(out)
}

/// The record of a new upload of `length` bytes with metadata `raw`.
fn info_of(raw: &str, length: u64) -> Result<Info, ApiError> {
    let m = parse_metadata(raw)?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| m.get(*k))
            .cloned()
            .unwrap_or_default()
    };
    let file_name = get(&["filename", "name"]);
    if file_name.is_empty() {
        return Err(ApiError::bad_request(
            "Upload-Metadata: filename is required",
        ));
    }
    super::upload::check_name(&file_name)?;
    let content_type = get(&["filetype", "content_type", "type"]);
    if !content_type.to_ascii_lowercase().starts_with("video/") || content_type.len() > 127 {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Upload-Metadata: filetype video/*, at most 127 bytes",
        ));
    }
    let title = get(&["title"]);
    if title.len() > 200 || title.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "Upload-Metadata: title at most 200 bytes, no control characters",
        ));
    }
    let description = get(&["description"]);
    if description.len() > 5000 {
        return Err(ApiError::bad_request(
            "Upload-Metadata: description at most 5000 bytes",
        ));
    }
    let visibility = match m.get("visibility") {
        None => Visibility::Unspecified,
        Some(v) => super::videos::parse_visibility(v)?,
    };
    Ok(Info {
        length,
        file_name,
        content_type,
        title,
        description,
        visibility: visibility as i32,
        metadata: raw.to_owned(),
        created_ms: rt::unix_ms(),
    })
}

/// The date an upload last written at `last_ms` expires.
fn expires_at(limits: &Limits, last_ms: u64) -> u64 {
    last_ms.saturating_add(u64::try_from(limits.expiry.as_millis()).unwrap_or(u64::MAX))
}

fn http_date(ms: u64) -> HeaderValue {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A response with the headers every tus answer carries.
fn tus_response(status: StatusCode, headers: Vec<(HeaderName, HeaderValue)>) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in headers {
        h.insert(name, value);
    }
    res
}

/// An error as a tus answer: its JSON body, `Tus-Resumable`, and on 412
/// the version served.
fn tus_error(e: ApiError) -> Response {
    let status = e.status;
    let mut res = e.into_response();
    let h = res.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    if status == StatusCode::PRECONDITION_FAILED {
        h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    res
}

fn num(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// The caller, or 401.
fn owner(user: Option<Extension<AuthUser>>) -> Result<String, ApiError> {
    match user {
        Some(Extension(AuthUser(id))) if media::is_id(&id) => Ok(id),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first")),
    }
}

/// Where `owner`'s upload `id` (of a path, checked: an id that is not one
/// is unknown) keeps its record and parts.
fn upload_dir(owner: &str, id: &str) -> Result<String, ApiError> {
    if media::is_id(id) {
        Ok(dir_of(owner, id))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such upload"))
    }
}

/// The caller's upload `id`, not expired.
async fn live(api: &Api, dir: &str) -> Result<Upload, ApiError> {
    let upload = load(api.runtime.blobs.as_ref(), dir)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such upload"))?;
    if upload.video_id.is_none() && rt::unix_ms() > expires_at(&api.tus.limits, upload.last_ms) {
        return Err(ApiError::new(StatusCode::GONE, "upload expired"));
    }
    Ok(upload)
}

/// `OPTIONS /v1/uploads/`: what this server speaks (no credential needed).
pub async fn options(State(api): State<Api>) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert("tus-max-size", num(api.max_upload_bytes));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    res
}

/// Counts `owner`'s unfinished, unexpired uploads.
async fn open_uploads(api: &Api, owner: &str) -> Result<usize, ApiError> {
    let metas = list_all(
        api.runtime.blobs.as_ref(),
        &format!("{PREFIX}/{owner}"),
        MAX_SWEPT,
    )
    .await
    .map_err(|e| blob_error(&e))?;
    let now = rt::unix_ms();
    let mut uploads: BTreeMap<&str, (bool, bool, u64)> = BTreeMap::new();
    for m in &metas {
        let mut segs = m.key.splitn(4, '/');
        let (Some(_), Some(_), Some(id), Some(name)) =
            (segs.next(), segs.next(), segs.next(), segs.next())
        else {
            continue;
        };
        let entry = uploads.entry(id).or_insert((false, false, 0));
        entry.0 |= name == "info";
        entry.1 |= name == "done";
        entry.2 = entry.2.max(m.last_modified_ms);
    }
    Ok(uploads
        .values()
        .filter(|(info, done, last)| *info && !*done && now <= expires_at(&api.tus.limits, *last))
        .count())
}

/// `POST /v1/uploads/`: creates an upload of `Upload-Length` bytes
/// described by `Upload-Metadata`; with a body
/// (`application/offset+octet-stream`), its first bytes too.
pub async fn create(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create_inner(api, user, headers, body)
        .await
        .unwrap_or_else(tus_error)
}

async fn create_inner(
    api: Api,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let owner = owner(user)?;
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(ApiError::bad_request(
            "Upload-Defer-Length: not supported; send Upload-Length",
        ));
    }
    let length = number(&headers, &UPLOAD_LENGTH)?
        .ok_or_else(|| ApiError::bad_request("Upload-Length: required"))?;
    if length == 0 {
        return Err(ApiError::bad_request("Upload-Length: at least 1 byte"));
    }
    if length > api.max_upload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Upload-Length: exceeds {} bytes", api.max_upload_bytes),
        ));
    }
    let raw = match headers.get(&UPLOAD_METADATA) {
        None => "",
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Upload-Metadata: not ASCII"))?,
    };
    let info = info_of(raw, length)?;
    let with_body = is_offset_stream(&headers);
    if !with_body && headers.contains_key(header::CONTENT_TYPE) && content_length(&headers)? > 0 {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/offset+octet-stream for a body",
        ));
    }
    let checksum = checksum_of(&headers)?;
    let max = api.tus.limits.max_open_per_user;
    if open_uploads(&api, &owner).await? >= max {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {max} unfinished uploads at a time: finish or delete one"),
        ));
    }
    let id = rt::random_hex128();
    let dir = dir_of(&owner, &id);
    let record = serde_json::to_vec(&info).map_err(|e| ApiError::internal(&e))?;
    api.runtime
        .blobs
        .put(&format!("{dir}/info"), record.into())
        .await
        .map_err(|e| blob_error(&e))?;
    let location = format!("/v1/uploads/{id}");
    let mut extra = vec![(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|e| ApiError::internal(&e))?,
    )];
    let mut last_ms = info.created_ms;
    if with_body {
        let busy = api.tus.lock(&dir);
        let upload = Upload {
            info,
            offset: 0,
            parts: Vec::new(),
            last_ms,
            video_id: None,
        };
        let written = match append(&api, &owner, &id, &dir, upload, body, checksum).await {
            Ok(written) => written,
            Err(e) => {
                // The client has no Location: nothing of it may stay
                // (nor count against its unfinished uploads).
                if let Err(gone) = api.runtime.blobs.delete(&dir).await {
                    tracing::warn!(upload = %id, error = %gone, "failed creation not removed");
                }
                return Err(e);
            }
        };
        drop(busy);
        last_ms = rt::unix_ms();
        extra.push((UPLOAD_OFFSET.clone(), num(written.offset)));
        if let Some(v) = &written.video_id {
            extra.extend(video_header(v));
        }
    }
    extra.push((
        UPLOAD_EXPIRES.clone(),
        http_date(expires_at(&api.tus.limits, last_ms)),
    ));
    tracing::info!(upload = %id, owner = %owner, length, "tus upload created");
    Ok(tus_response(StatusCode::CREATED, extra))
}

fn video_header(video_id: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(video_id)
        .ok()
        .map(|v| (VIDEO_ID.clone(), v))
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

fn content_length(headers: &HeaderMap) -> Result<u64, ApiError> {
    Ok(number(headers, &header::CONTENT_LENGTH)?.unwrap_or(0))
}

/// The hash `Upload-Checksum` asks of a PATCH body.
#[derive(Clone)]
enum Checksum {
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

fn checksum_of(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(v) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("Upload-Checksum: '<algorithm> <base64 digest>'");
    let text = v.to_str().map_err(|_| bad())?;
    let (alg, digest) = text.trim().split_once(' ').ok_or_else(bad)?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| bad())?;
    match alg.to_ascii_lowercase().as_str() {
        "sha1" if digest.len() == 20 => Ok(Some(Checksum::Sha1(digest))),
        "sha256" if digest.len() == 32 => Ok(Some(Checksum::Sha256(digest))),
        "sha1" | "sha256" => Err(bad()),
        _ => Err(ApiError::bad_request(format!(
            "Upload-Checksum: algorithms are {CHECKSUM_ALGORITHMS}"
        ))),
    }
}

/// A running hash of a PATCH body.
enum Hasher {
    None,
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn of(c: Option<&Checksum>) -> Self {
        match c {
            None => Self::None,
            Some(Checksum::Sha1(_)) => Self::Sha1(sha1::Sha1::new()),
            Some(Checksum::Sha256(_)) => Self::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::None => {}
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
        }
    }

    fn matches(self, c: Option<&Checksum>) -> bool {
        match (self, c) {
            (Self::Sha1(h), Some(Checksum::Sha1(want))) => h.finalize().as_slice() == want,
            (Self::Sha256(h), Some(Checksum::Sha256(want))) => h.finalize().as_slice() == want,
            (Self::None, None) => true,
            _ => false,
        }
    }
}

/// Whether the next part is the last `upload` may take (it must then
/// complete it).
fn last_part(api: &Api, upload: &Upload) -> bool {
    upload.parts.len() + 1 >= api.tus.limits.max_parts
}

fn too_many_parts(api: &Api, upload: &Upload) -> ApiError {
    ApiError::bad_request(format!(
        "at most {} PATCHes per upload: send the remaining {} bytes in one",
        api.tus.limits.max_parts,
        upload.info.length - upload.offset
    ))
}

/// Stores `body` as the part at `upload.offset` (committed before this
/// returns, so acknowledged bytes are durable) and, when that completes
/// the upload, hands it to the pipeline. Returns the upload after it.
async fn append(
    api: &Api,
    owner: &str,
    id: &str,
    dir: &str,
    mut upload: Upload,
    body: Body,
    checksum: Option<Checksum>,
) -> Result<Upload, ApiError> {
    let room = upload.info.length - upload.offset;
    let key = part_key(dir, upload.offset);
    let mut stream = body.into_data_stream();
    let mut writer: Option<Box<dyn crate::blob::BlobWriter>> = None;
    let mut hasher = Hasher::of(checksum.as_ref());
    let mut received: u64 = 0;
    // The body's frames (often a few KiB each) gathered into writes of
    // WRITE_BYTES: one hop to the store per MiB, not per frame.
    let mut pending = Vec::with_capacity(WRITE_BYTES);
    loop {
        let next = rt::timeout(UPLOAD_IDLE_TIMEOUT, stream.next())
            .await
            .map_err(|rt::Elapsed| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "body: nothing received for {} s",
                        UPLOAD_IDLE_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(upload = id, error = %e, "tus body cut; nothing of it kept");
                return Err(ApiError::bad_request("body: incomplete"));
            }
        };
        if frame.is_empty() {
            continue;
        }
        received += frame.len() as u64;
        if received > room {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body: {} bytes remain of Upload-Length {}",
                    room, upload.info.length
                ),
            ));
        }
        hasher.update(&frame);
        pending.extend_from_slice(&frame);
        if pending.len() >= WRITE_BYTES {
            write(api, &mut writer, &key, &pending).await?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        write(api, &mut writer, &key, &pending).await?;
    }
    if received > 0 && received < room && last_part(api, &upload) {
        return Err(too_many_parts(api, &upload));
    }
    if !hasher.matches(checksum.as_ref()) {
        return Err(ApiError::new(
            StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
            "Upload-Checksum: the body does not match; nothing stored",
        ));
    }
    if let Some(w) = writer {
        w.commit(&key).await.map_err(|e| blob_error(&e))?;
        upload.parts.push((key, received));
        upload.offset += received;
        upload.last_ms = rt::unix_ms();
    }
    if upload.offset == upload.info.length && upload.video_id.is_none() {
        upload.video_id = Some(finish(api, owner, id, dir, &upload).await?);
    }
    Ok(upload)
}

/// The size of the writes a PATCH body is gathered into.
const WRITE_BYTES: usize = 1 << 20;

/// Writes `data` to the part being written (to be committed under
/// `key`), starting it first if need be.
async fn write(
    api: &Api,
    writer: &mut Option<Box<dyn crate::blob::BlobWriter>>,
    key: &str,
    data: &[u8],
) -> Result<(), ApiError> {
    let w = match writer {
        Some(w) => w,
        None => writer.insert(
            api.runtime
                .blobs
                .create_for(key)
                .await
                .map_err(|e| blob_error(&e))?,
        ),
    };
    w.write(data).await.map_err(|e| blob_error(&e))
}

/// Hands a complete upload to the upload service (the one-shot upload's
/// path), records the video it became and removes the parts.
async fn finish(
    api: &Api,
    owner: &str,
    id: &str,
    dir: &str,
    upload: &Upload,
) -> Result<String, ApiError> {
    let info = &upload.info;
    let meta = UploadMetadata {
        file_name: info.file_name.clone(),
        content_type: info.content_type.clone(),
        size_bytes: info.length,
        title: info.title.clone(),
        description: info.description.clone(),
        visibility: info.visibility,
        idempotency_key: format!("tus-{id}"),
        ..UploadMetadata::default()
    };
    let mut client = api.runtime.pool.upload().await?;
    let res = match adopt(&mut client, owner, upload, meta.clone()).await {
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::Unimplemented) => {
            tracing::debug!(upload = id, status = %s, "parts not adopted; streaming them");
            relay(api, &mut client, owner, upload, meta).await?
        }
        adopted => adopted.map_err(|s| ApiError::from_status(&s, true))?,
    };
    let blobs = &api.runtime.blobs;
    blobs
        .put(&format!("{dir}/done"), res.video_id.clone().into())
        .await
        .map_err(|e| blob_error(&e))?;
    for (key, _) in &upload.parts {
        if let Err(e) = blobs.delete(key).await {
            tracing::warn!(upload = id, error = %e, "tus part not removed (the sweep will)");
        }
    }
    tracing::info!(upload = id, video = %res.video_id, bytes = info.length, "tus upload complete");
    Ok(res.video_id)
}

/// Asks the upload service to make the upload of the parts where they lie
/// (UploadService.AdoptParts): no byte passes through the call.
/// FAILED_PRECONDITION when its blob store is not this gateway's.
async fn adopt(
    client: &mut UploadClient,
    owner: &str,
    upload: &Upload,
    meta: UploadMetadata,
) -> Result<UploadResponse, tonic::Status> {
    let parts = upload
        .parts
        .iter()
        .map(|(key, size)| BlobPart {
            key: key.clone(),
            size_bytes: *size,
        })
        .collect();
    let mut req = tonic::Request::new(AdoptPartsRequest {
        metadata: Some(meta),
        parts,
    });
    req.set_timeout(MAX_ADOPT_CALL_TIMEOUT);
    if let Ok(v) = owner.parse() {
        req.metadata_mut().insert(USER_ID_HEADER, v);
    }
    Ok(client.adopt_parts(req).await?.into_inner())
}

/// Streams the parts' bytes to the upload service (the one-shot upload's
/// call), for an upload service whose blob store is not this gateway's.
async fn relay(
    api: &Api,
    client: &mut UploadClient,
    owner: &str,
    upload: &Upload,
    meta: UploadMetadata,
) -> Result<UploadResponse, ApiError> {
    let cut: Arc<Mutex<Option<BlobError>>> = Arc::default();
    let chunks = part_chunks(api.runtime.blobs.clone(), upload.parts.clone(), cut.clone());
    let first = UploadChunk {
        payload: Some(Payload::Metadata(meta)),
    };
    let stream = futures::stream::once(std::future::ready(first)).chain(chunks);
    let mut req = tonic::Request::new(stream);
    req.set_timeout(MAX_UPLOAD_CALL_TIMEOUT);
    if let Ok(v) = owner.parse() {
        req.metadata_mut().insert(USER_ID_HEADER, v);
    }
    let result = client.upload(req).await;
    if let Some(e) = cut.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(blob_error(&e));
    }
    Ok(result
        .map_err(|s| ApiError::from_status(&s, true))?
        .into_inner())
}

/// The parts' bytes as data chunks of at most [`CHUNK_BYTES`]; a read that
/// fails ends the stream with a second metadata chunk, which the upload
/// service refuses (so nothing partial commits), the error kept in `cut`.
fn part_chunks(
    blobs: Arc<dyn BlobStore>,
    parts: Vec<(String, u64)>,
    cut: Arc<Mutex<Option<BlobError>>>,
) -> impl futures::Stream<Item = UploadChunk> + Send + 'static {
    futures::stream::unfold((0usize, 0u64, false), move |(index, pos, stopped)| {
        let (blobs, parts, cut) = (blobs.clone(), parts.clone(), cut.clone());
        async move {
            if stopped {
                return None;
            }
            let (key, size) = parts.get(index)?;
            let len = usize::try_from(size - pos)
                .unwrap_or(CHUNK_BYTES)
                .min(CHUNK_BYTES);
            match blobs.read(key, pos, len).await {
                Ok(data) if !data.is_empty() => {
                    let next = pos + data.len() as u64;
                    let state = if next >= *size {
                        (index + 1, 0, false)
                    } else {
                        (index, next, false)
                    };
                    let chunk = UploadChunk {
                        payload: Some(Payload::Data(data)),
                    };
                    Some((chunk, state))
                }
                other => {
                    let e = match other {
                        Err(e) => e,
                        Ok(_) => BlobError::NotFound(key.clone()),
                    };
                    *cut.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    let poison = UploadChunk {
                        payload: Some(Payload::Metadata(UploadMetadata::default())),
                    };
                    Some((poison, (index, pos, true)))
                }
            }
        }
    })
}

/// `HEAD /v1/uploads/{id}`: the offset (and length, metadata, expiry).
pub async fn head(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    head_inner(api, user, id, headers)
        .await
        .unwrap_or_else(tus_error)
}

async fn head_inner(
    api: Api,
    user: Option<Extension<AuthUser>>,
    id: String,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let owner = owner(user)?;
    let dir = upload_dir(&owner, &id)?;
    let mut upload = live(&api, &dir).await?;
    // Complete but not yet handed over (the last PATCH's hand-over failed,
    // or its instance stopped): hand it over now, unless a request of
    // this instance is at it.
    if upload.offset == upload.info.length && upload.video_id.is_none() {
        // Never report a complete offset before the video exists: a client
        // would take the upload as done.
        let _busy = api.tus.lock(&dir).ok_or_else(|| {
            ApiError::new(
                StatusCode::LOCKED,
                "the upload is being handed over; try again",
            )
        })?;
        upload.video_id = Some(finish(&api, &owner, &id, &dir, &upload).await?);
    }
    let mut extra = vec![
        (UPLOAD_OFFSET.clone(), num(upload.offset)),
        (UPLOAD_LENGTH.clone(), num(upload.info.length)),
    ];
    if !upload.info.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&upload.info.metadata)
    {
        extra.push((UPLOAD_METADATA.clone(), v));
    }
    if let Some(v) = &upload.video_id {
        extra.extend(video_header(v));
    } else {
        extra.push((
            UPLOAD_EXPIRES.clone(),
            http_date(expires_at(&api.tus.limits, upload.last_ms)),
        ));
    }
    Ok(tus_response(StatusCode::OK, extra))
}

/// `PATCH /v1/uploads/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    patch_inner(api, user, id, headers, body)
        .await
        .unwrap_or_else(tus_error)
}

async fn patch_inner(
    api: Api,
    user: Option<Extension<AuthUser>>,
    id: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let owner = owner(user)?;
    let dir = upload_dir(&owner, &id)?;
    if !is_offset_stream(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/offset+octet-stream",
        ));
    }
    let offset = number(&headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| ApiError::bad_request("Upload-Offset: required"))?;
    let checksum = checksum_of(&headers)?;
    let _busy = api.tus.lock(&dir).ok_or_else(|| {
        ApiError::new(
            StatusCode::LOCKED,
            "another request is writing this upload; try again",
        )
    })?;
    let upload = live(&api, &dir).await?;
    if offset != upload.offset {
        let mut res = tus_error(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Upload-Offset: {offset}, but the upload is at {}",
                upload.offset
            ),
        ));
        res.headers_mut()
            .insert(UPLOAD_OFFSET.clone(), num(upload.offset));
        return Ok(res);
    }
    if upload.video_id.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the upload is complete",
        ));
    }
    let length = number(&headers, &header::CONTENT_LENGTH)?;
    if last_part(&api, &upload) && length.is_some_and(|n| n != upload.info.length - upload.offset) {
        return Err(too_many_parts(&api, &upload));
    }
    if let Some(n) = length
        && n > upload.info.length - upload.offset
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Content-Length: {} bytes remain of Upload-Length {}",
                upload.info.length - upload.offset,
                upload.info.length
            ),
        ));
    }
    let upload = append(&api, &owner, &id, &dir, upload, body, checksum).await?;
    let mut extra = vec![(UPLOAD_OFFSET.clone(), num(upload.offset))];
    match &upload.video_id {
        Some(v) => extra.extend(video_header(v)),
        None => extra.push((
            UPLOAD_EXPIRES.clone(),
            http_date(expires_at(&api.tus.limits, upload.last_ms)),
        )),
    }
    Ok(tus_response(StatusCode::NO_CONTENT, extra))
}

/// `DELETE /v1/uploads/{id}`: ends the upload and removes its bytes (a
/// video it already became stays; delete that at `/v1/videos/{id}`).
pub async fn delete(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    delete_inner(api, user, id, headers)
        .await
        .unwrap_or_else(tus_error)
}

async fn delete_inner(
    api: Api,
    user: Option<Extension<AuthUser>>,
    id: String,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let owner = owner(user)?;
    let dir = upload_dir(&owner, &id)?;
    live(&api, &dir).await?;
    api.runtime
        .blobs
        .delete(&dir)
        .await
        .map_err(|e| blob_error(&e))?;
    tracing::info!(upload = %id, "tus upload terminated");
    Ok(tus_response(StatusCode::NO_CONTENT, Vec::new()))
}

/// One sweep: removes every upload under [`PREFIX`] idle for longer than
/// `expiry` (finished ones too: their record has served). Returns how many.
///
/// # Errors
/// The blob store failed.
pub async fn sweep(blobs: &dyn BlobStore, expiry: Duration) -> Result<usize, BlobError> {
    let metas = list_all(blobs, PREFIX, MAX_SWEPT).await?;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for m in &metas {
        let mut segs = m.key.splitn(4, '/');
        let (Some(_), Some(owner), Some(id), Some(_)) =
            (segs.next(), segs.next(), segs.next(), segs.next())
        else {
            continue;
        };
        let e = last.entry(dir_of(owner, id)).or_insert(0);
        *e = (*e).max(m.last_modified_ms);
    }
    let now = rt::unix_ms();
    let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
    let mut removed = 0;
    for (dir, last_ms) in last {
        if now > last_ms.saturating_add(expiry_ms) {
            blobs.delete(&dir).await?;
            tracing::info!(upload = %dir, "expired tus upload removed");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sweeps expired uploads every `limits.sweep_interval`, for ever.
pub async fn sweep_loop(blobs: Arc<dyn BlobStore>, limits: Limits) {
    loop {
        match sweep(blobs.as_ref(), limits.expiry).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "tus sweep"),
            Err(e) => tracing::warn!(error = %e, "tus sweep failed"),
        }
        rt::sleep(limits.sweep_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn metadata_is_base64_pairs() {
        let raw = format!(
            "filename {},filetype {},empty",
            b64("a.mp4"),
            b64("video/mp4")
        );
        let m = parse_metadata(&raw).expect("parses");
        assert_eq!(m["filename"], "a.mp4");
        assert_eq!(m["filetype"], "video/mp4");
        assert_eq!(m["empty"], "");
        assert!(parse_metadata("filename !!!").is_err());
        assert!(parse_metadata(&format!("a {0},a {0}", b64("x"))).is_err());
        let info = info_of(&raw, 10).expect("info");
        assert_eq!(info.file_name, "a.mp4");
        let no_name = format!("filetype {}", b64("video/mp4"));
        assert_eq!(
            info_of(&no_name, 10).expect_err("name").status,
            StatusCode::BAD_REQUEST
        );
        let not_video = format!("filename {},filetype {}", b64("a.png"), b64("image/png"));
        assert_eq!(
            info_of(&not_video, 10).expect_err("type").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let bad_path = format!("filename {},filetype {}", b64("../a"), b64("video/mp4"));
        assert!(info_of(&bad_path, 10).is_err());
    }

    #[test]
    fn checksums_name_a_known_algorithm_and_a_digest_of_its_size() {
        let mut h = HeaderMap::new();
        let sha1 = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b"abc"));
        h.insert(&UPLOAD_CHECKSUM, format!("sha1 {sha1}").parse().unwrap());
        let c = checksum_of(&h).expect("ok");
        let mut hasher = Hasher::of(c.as_ref());
        hasher.update(b"abc");
        assert!(hasher.matches(c.as_ref()));
        let mut hasher = Hasher::of(c.as_ref());
        hasher.update(b"abd");
        assert!(!hasher.matches(c.as_ref()));
        h.insert(&UPLOAD_CHECKSUM, "md5 AAAA".parse().unwrap());
        assert!(checksum_of(&h).is_err());
        h.insert(&UPLOAD_CHECKSUM, "sha256 AAAA".parse().unwrap());
        assert!(checksum_of(&h).is_err());
    }
}
