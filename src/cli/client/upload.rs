//! `streamgate-cli upload FILE`: a tus 1.0.0 upload to `/v1/uploads/`, in
//! chunks (each a PATCH with its sha256 in `Upload-Checksum`), its URL kept
//! in the config file until it completes, so `--resume` goes on from the
//! offset the server reports after a cut connection or a killed client.
//! A chunk that fails for want of an answer is retried (a few times, from
//! the server's offset); the server's answer always wins over what the
//! client thinks it sent.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use indicatif::ProgressBar;
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use super::http::{Api, failure, read_limited};
use super::store::Pending;
use crate::rt;

/// The smallest chunk (`--chunk-size`).
pub const MIN_CHUNK: u64 = 64 << 10;
/// The largest chunk: each is held in memory while it is sent.
pub const MAX_CHUNK: u64 = 256 << 20;
/// The default chunk.
pub const DEFAULT_CHUNK: u64 = 8 << 20;
/// The most PATCHes one upload takes (the server allows 10,000).
const MAX_PARTS: u64 = 9_000;
/// Pieces a chunk is streamed in (the progress bar moves with each).
const PIECE: usize = 64 << 10;
/// Tries of one chunk that got no answer or a 5xx.
const TRIES: u32 = 5;
/// The tus version spoken.
const TUS: &str = "1.0.0";

/// What to upload, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// The file.
    pub file: PathBuf,
    /// The video's title (default: the file's name without extension).
    pub title: Option<String>,
    /// Its description.
    pub description: Option<String>,
    /// `private`, `unlisted` or `public`.
    pub visibility: Option<String>,
    /// Its media type (default: by the extension, `video/*`).
    pub content_type: Option<String>,
    /// Go on with the upload of this file begun before.
    pub resume: bool,
    /// Bytes per PATCH.
    pub chunk: u64,
    /// At most this many bytes a second (none: as fast as it goes).
    pub limit_rate: Option<u64>,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The video it became.
    pub video_id: String,
    /// The upload's URL.
    pub url: String,
    /// The file's size.
    pub bytes: u64,
    /// The offset it went on from (0: a new upload).
    pub resumed_from: u64,
}

/// The media type of `path` by its extension (the server wants `video/*`;
/// it reads the container itself).
#[must_use]
pub fn content_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("mov" | "qt") => "video/quicktime",
        Some("webm") => "video/webm",
        Some("mkv") => "video/x-matroska",
        Some("avi") => "video/x-msvideo",
        Some("ts" | "m2ts") => "video/mp2t",
        Some("mpg" | "mpeg") => "video/mpeg",
        Some("ogv") => "video/ogg",
        Some("3gp") => "video/3gpp",
        _ => "video/mp4",
    }
}

/// The chunk to use for a file of `size` bytes when `asked` was asked for:
/// within [`MIN_CHUNK`]..=[`MAX_CHUNK`], and large enough that the upload
/// takes at most [`MAX_PARTS`] PATCHes.
///
/// # Errors
/// The file is too large for any chunk.
pub fn chunk_for(size: u64, asked: u64) -> anyhow::Result<u64> {
    let least = size.div_ceil(MAX_PARTS);
    let chunk = asked.clamp(MIN_CHUNK, MAX_CHUNK).max(least);
    if chunk > MAX_CHUNK {
        bail!("the file is too large: {size} bytes in at most {MAX_PARTS} chunks of {MAX_CHUNK}");
    }
    Ok(chunk)
}

/// `Upload-Metadata` for these values: `key base64(value)` pairs.
#[must_use]
pub fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k} {}",
                base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn header_u64(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

fn header_str(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The file's absolute path, size and modification time.
fn identify(file: &Path) -> anyhow::Result<(String, u64, u128)> {
    let abs = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let meta = std::fs::metadata(&abs).with_context(|| format!("{}", abs.display()))?;
    if !meta.is_file() {
        bail!("{}: not a file", abs.display());
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((abs.to_string_lossy().into_owned(), meta.len(), modified))
}

/// Uploads `req.file`, showing progress on `bar`.
///
/// # Errors
/// The file cannot be read, the server refused, or the connection failed
/// more than [`TRIES`] times in a row (the upload can be resumed).
pub async fn upload(api: &mut Api, req: &Request, bar: &ProgressBar) -> anyhow::Result<Uploaded> {
    let (key, size, modified_ns) = identify(&req.file)?;
    if size == 0 {
        bail!("{key}: empty");
    }
    let chunk = chunk_for(size, req.chunk)?;
    let mut file = std::fs::File::open(&key).with_context(|| key.clone())?;
    bar.set_length(size);

    let (url, mut offset) = if req.resume {
        let pending = api.store.data.uploads.get(&key).cloned().ok_or_else(|| {
            anyhow!("no interrupted upload of {key} is saved: upload it without --resume")
        })?;
        if pending.size != size || pending.modified_ns != modified_ns {
            bail!("{key} changed since its upload began: upload it without --resume");
        }
        match offset_of(api, &pending.url).await? {
            Offset::At(o) => (pending.url, o),
            Offset::Done(video_id) => {
                forget(api, &key)?;
                return Ok(Uploaded {
                    video_id,
                    url: pending.url,
                    bytes: size,
                    resumed_from: size,
                });
            }
        }
    } else {
        let url = create(api, req, &key, size).await?;
        api.store.data.uploads.insert(
            key.clone(),
            Pending {
                url: url.clone(),
                size,
                modified_ns,
                started_ms: rt::unix_ms(),
            },
        );
        api.store.save()?;
        (url, 0)
    };
    let resumed_from = offset;
    bar.set_position(offset);
    bar.reset_eta();

    let started = rt::now();
    let mut sent_here = 0u64;
    let mut failures = 0;
    loop {
        if offset >= size {
            // Complete, but its answer was lost: the HEAD hands it over.
            match offset_of(api, &url).await? {
                Offset::Done(video_id) => {
                    forget(api, &key)?;
                    return Ok(Uploaded {
                        video_id,
                        url,
                        bytes: size,
                        resumed_from,
                    });
                }
                Offset::At(o) if o < size => offset = o,
                Offset::At(_) => bail!("{url}: complete, but no video came of it"),
            }
        }
        let len = chunk.min(size - offset);
        let data = read_at(&mut file, offset, len)?;
        let pace = req.limit_rate.map(|rate| (rate, started, sent_here));
        match patch(api, &url, offset, data, bar, pace).await {
            Ok(Patched::Next(o)) => {
                sent_here += o.saturating_sub(offset);
                offset = o;
                failures = 0;
            }
            Ok(Patched::Done(video_id)) => {
                bar.set_position(size);
                forget(api, &key)?;
                return Ok(Uploaded {
                    video_id,
                    url,
                    bytes: size,
                    resumed_from,
                });
            }
            Ok(Patched::Conflict(o)) => {
                offset = o;
            }
            Err(e) if failures + 1 < TRIES && is_transient(&e) => {
                failures += 1;
                bar.suspend(|| eprintln!("retrying a chunk at {offset}: {e:#}"));
                rt::sleep(Duration::from_millis(500 << failures)).await;
                match offset_of(api, &url).await {
                    Ok(Offset::At(o)) => offset = o,
                    Ok(Offset::Done(video_id)) => {
                        forget(api, &key)?;
                        return Ok(Uploaded {
                            video_id,
                            url,
                            bytes: size,
                            resumed_from,
                        });
                    }
                    Err(_) => {}
                }
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the upload stopped at {offset} of {size} bytes; `streamgate-cli upload --resume {}` goes on from there",
                    req.file.display()
                )));
            }
        }
        bar.set_position(offset);
    }
}

/// A failure worth trying again: no answer, or a 5xx, 408, 423 or 460.
fn is_transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<super::http::ApiFailure>() {
        Some(f) => f.status.is_server_error() || matches!(f.status.as_u16(), 408 | 423 | 429 | 460),
        None => {
            e.downcast_ref::<reqwest::Error>().is_some()
                || e.chain().any(|c| c.is::<reqwest::Error>())
        }
    }
}

fn forget(api: &mut Api, key: &str) -> anyhow::Result<()> {
    if api.store.data.uploads.remove(key).is_some() {
        api.store.save()?;
    }
    Ok(())
}

fn read_at(file: &mut std::fs::File, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = vec![0; usize::try_from(len)?];
    file.read_exact(&mut data)
        .context("the file grew shorter while uploading")?;
    Ok(data)
}

/// `POST /v1/uploads/`: the new upload's URL.
async fn create(api: &mut Api, req: &Request, key: &str, size: u64) -> anyhow::Result<String> {
    let path = Path::new(key);
    let name = path
        .file_name()
        .map_or_else(|| "video".into(), |n| n.to_string_lossy().into_owned());
    let title = req.title.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| name.clone(), |s| s.to_string_lossy().into_owned())
    });
    let ctype = req
        .content_type
        .clone()
        .unwrap_or_else(|| content_type_of(path).to_owned());
    let mut pairs = vec![
        ("filename", name.as_str()),
        ("filetype", ctype.as_str()),
        ("title", title.as_str()),
    ];
    if let Some(d) = &req.description {
        pairs.push(("description", d));
    }
    if let Some(v) = &req.visibility {
        pairs.push(("visibility", v));
    }
    let meta = metadata(&pairs);
    let url = api.url("/v1/uploads/");
    let res = api
        .send(|http| {
            http.post(&url)
                .timeout(Duration::from_secs(60))
                .header("tus-resumable", TUS)
                .header("upload-length", size)
                .header("upload-metadata", &meta)
        })
        .await?;
    let status = res.status();
    let location = header_str(&res, "location");
    let body = read_limited(res, 1 << 20).await?;
    if status != StatusCode::CREATED {
        return Err(failure(Method::POST, "/v1/uploads/", status, &body).into());
    }
    let location = location.context("the server made an upload without a Location")?;
    Ok(api.url(&location))
}

/// An upload's state, as HEAD tells it.
enum Offset {
    /// Bytes stored so far.
    At(u64),
    /// Complete: the video it became.
    Done(String),
}

async fn offset_of(api: &mut Api, url: &str) -> anyhow::Result<Offset> {
    let res = api
        .send(|http| {
            http.head(url)
                .timeout(Duration::from_secs(120))
                .header("tus-resumable", TUS)
        })
        .await?;
    let status = res.status();
    if let Some(video) = header_str(&res, "streamgate-video-id") {
        return Ok(Offset::Done(video));
    }
    let offset = header_u64(&res, "upload-offset");
    match (status, offset) {
        (StatusCode::OK, Some(o)) => Ok(Offset::At(o)),
        (StatusCode::NOT_FOUND | StatusCode::GONE, _) => bail!(
            "{url}: {}: the upload is gone (expired or deleted): upload the file again without --resume",
            status
        ),
        _ => Err(failure(Method::HEAD, url, status, b"").into()),
    }
}

/// What a PATCH did.
enum Patched {
    /// Stored: the new offset.
    Next(u64),
    /// The last byte: the video.
    Done(String),
    /// 409: the server's offset is another.
    Conflict(u64),
}

/// One PATCH of `data` at `offset`, streamed in pieces that move `bar`;
/// with `pace` = (bytes a second, since when, bytes sent since then), the
/// pieces are held back to keep to that rate.
async fn patch(
    api: &mut Api,
    url: &str,
    offset: u64,
    data: Vec<u8>,
    bar: &ProgressBar,
    pace: Option<(u64, std::time::Instant, u64)>,
) -> anyhow::Result<Patched> {
    let checksum = format!(
        "sha256 {}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data))
    );
    let data = bytes::Bytes::from(data);
    let len = data.len() as u64;
    let res = api
        .send(|http| {
            let data = data.clone();
            let bar = bar.clone();
            let pieces = futures::stream::unfold(0usize, move |at| {
                let data = data.clone();
                let bar = bar.clone();
                async move {
                    if at >= data.len() {
                        return None;
                    }
                    let end = (at + PIECE).min(data.len());
                    if let Some((rate, since, before)) = pace {
                        let due = Duration::from_secs_f64(
                            (before + at as u64) as f64 / rate.max(1) as f64,
                        );
                        let now = rt::now();
                        if since + due > now {
                            rt::sleep(since + due - now).await;
                        }
                    }
                    bar.set_position(offset + end as u64);
                    Some((Ok::<_, std::io::Error>(data.slice(at..end)), end))
                }
            });
            http.patch(url)
                .header("tus-resumable", TUS)
                .header("upload-offset", offset)
                .header("upload-checksum", &checksum)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/offset+octet-stream",
                )
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(pieces))
        })
        .await?;
    let status = res.status();
    let video = header_str(&res, "streamgate-video-id");
    let server_offset = header_u64(&res, "upload-offset");
    let body = read_limited(res, 1 << 20).await?;
    match (status, video, server_offset) {
        (StatusCode::NO_CONTENT, Some(v), _) => Ok(Patched::Done(v)),
        (StatusCode::NO_CONTENT, None, Some(o)) => Ok(Patched::Next(o)),
        (StatusCode::CONFLICT, _, Some(o)) => Ok(Patched::Conflict(o)),
        _ => Err(failure(Method::PATCH, url, status, &body).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_servers_part_limit() {
        assert_eq!(chunk_for(10, 1).expect("ok"), MIN_CHUNK);
        assert_eq!(chunk_for(10, u64::MAX).expect("ok"), MAX_CHUNK);
        assert_eq!(
            chunk_for(1 << 30, DEFAULT_CHUNK).expect("ok"),
            DEFAULT_CHUNK
        );
        // 2 TiB in 8 MiB chunks would be 262,144 PATCHes: larger ones.
        let big = 2u64 << 40;
        let c = chunk_for(big, DEFAULT_CHUNK).expect("ok");
        assert!(big.div_ceil(c) <= MAX_PARTS && c <= MAX_CHUNK, "{c}");
        assert!(chunk_for(u64::MAX, DEFAULT_CHUNK).is_err());
    }

    #[test]
    fn metadata_is_tus_pairs() {
        let m = metadata(&[("filename", "a b.mp4"), ("filetype", "video/mp4")]);
        assert_eq!(m, "filename YSBiLm1wNA==,filetype dmlkZW8vbXA0");
        assert_eq!(content_type_of(Path::new("x/Clip.MOV")), "video/quicktime");
        assert_eq!(content_type_of(Path::new("clip")), "video/mp4");
    }
}
