//! The ffmpeg pipeline: probe the original, encode each rendition to HLS in
//! a temporary work dir, make a thumbnail, upload everything (master last).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::Engine;
use super::engine::{Context, Failure, Job, Output, Reason, Reporter};
use super::hls::{self, Rendition};
use super::process;
use crate::rt;
use crate::rt::process::Command;
use crate::services::media;

/// Largest original copied out of a store without local files.
pub const MAX_SOURCE_BYTES: u64 = 8 << 30;
/// Largest segment uploaded.
pub const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// Largest playlist uploaded (or ffprobe answer read).
pub const MAX_PLAYLIST_BYTES: u64 = 1 << 20;
/// Largest thumbnail uploaded.
pub const MAX_THUMBNAIL_BYTES: u64 = 4 << 20;
/// Most segments in one rendition (a day of 4 s segments).
pub const MAX_SEGMENTS: usize = 21_600;
/// Copy step when the store has no local file.
const COPY_CHUNK: usize = 1 << 20;
/// Share of the progress bar for encoding; the rest is thumbnail and upload.
const ENCODE_SHARE: u32 = 90;

/// What ffprobe says about the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Width of the first video stream.
    pub width: u32,
    /// Height of the first video stream.
    pub height: u32,
    /// Duration of the file, 0 when unknown.
    pub duration_ms: u64,
}

/// Parses ffprobe's JSON (`-show_format -show_streams`).
///
/// # Errors
/// A reason when it is not JSON or has no video stream with a size.
pub fn parse_probe(json: &[u8]) -> Result<Probe, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("unreadable ffprobe answer: {e}"))?;
    let video = v["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
        .ok_or("no video stream")?;
    let dim = |field: &str| {
        video[field]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=16_384).contains(n))
    };
    let (Some(width), Some(height)) = (dim("width"), dim("height")) else {
        return Err("the video stream has no frame size".into());
    };
    let secs = |d: &serde_json::Value| d.as_str().and_then(|s| s.parse::<f64>().ok());
    let duration = secs(&v["format"]["duration"])
        .or_else(|| secs(&video["duration"]))
        .filter(|d| d.is_finite() && *d >= 0.0)
        .unwrap_or(0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let duration_ms = (duration * 1000.0).round().min(u64::MAX as f64) as u64;
    Ok(Probe {
        width,
        height,
        duration_ms,
    })
}

/// Removes the work dir if the run is dropped midway (timeout, cancel).
struct WorkDir {
    path: PathBuf,
    armed: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `job` with the ffmpeg engine, bounded by its timeout; the work dir
/// is removed afterwards whatever happened.
///
/// # Errors
/// A [`Failure`] naming the cause (corrupt input, timeout, missing binary).
pub async fn run(
    engine: &Engine,
    ctx: &Context,
    job: &Job,
    report: &dyn Reporter,
) -> Result<Output, Failure> {
    let Engine::Ffmpeg {
        ffmpeg,
        ffprobe,
        timeout,
    } = engine
    else {
        return Err(Failure::new(Reason::Failed, "not the ffmpeg engine"));
    };
    let path = ctx.work_root.join(rt::random_hex128());
    let create = path.clone();
    rt::blocking(move || std::fs::create_dir_all(create))
        .await
        .map_err(|e| Failure::new(Reason::Failed, e.to_string()))?
        .map_err(|e| Failure::new(Reason::Failed, format!("cannot create a work dir: {e}")))?;
    let mut work = WorkDir { path, armed: true };
    let tools = Tools { ffmpeg, ffprobe };
    let result = match rt::timeout(*timeout, tools.pipeline(ctx, &work.path, job, report)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::new(
            Reason::TimedOut,
            format!("timed out after {}", seconds(*timeout)),
        )),
    };
    let remove = work.path.clone();
    if let Ok(Ok(())) = rt::blocking(move || std::fs::remove_dir_all(remove)).await {
        work.armed = false;
    }
    result
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

struct Tools<'a> {
    ffmpeg: &'a Path,
    ffprobe: &'a Path,
}

/// `out`'s quoted stderr line with the local source path shown as its
/// blob key (reasons travel in events; local paths stay local).
fn quoted(out: &process::Finished, src: &Path, key: &str) -> String {
    let path = src.display().to_string();
    out.quoted_error().replace(&path, key)
}

impl Tools<'_> {
    async fn pipeline(
        &self,
        ctx: &Context,
        work: &Path,
        job: &Job,
        report: &dyn Reporter,
    ) -> Result<Output, Failure> {
        let src = source(ctx, work, &job.source_key).await?;
        let probe = self.probe(&src, &job.source_key).await?;
        let profiles = job
            .profiles
            .clone()
            .unwrap_or_else(|| media::profiles_for(probe.height));
        let renditions: Vec<Rendition> = profiles
            .into_iter()
            .map(|p| Rendition::scaled(p, probe.width, probe.height))
            .collect();
        report.started(&renditions).await;
        let count = u32::try_from(renditions.len()).unwrap_or(u32::MAX).max(1);
        for (i, r) in (0u32..).zip(&renditions) {
            let on_progress = |pct: u32| {
                report.progress((i * 100 + pct) * ENCODE_SHARE / (count * 100));
            };
            let dir = work.join(r.profile.name);
            self.encode(&src, &job.source_key, &dir, r, probe, on_progress)
                .await?;
        }
        let thumb = work.join("thumbnail.jpg");
        let thumbnail = match self.thumbnail(&src, &thumb, probe).await {
            Ok(()) => Some(read_file(&thumb, MAX_THUMBNAIL_BYTES).await?),
            Err(e) => {
                tracing::warn!(video_id = %job.video_id, error = %e, "no thumbnail");
                None
            }
        };
        report.progress(ENCODE_SHARE + 2);
        let mut written = std::collections::BTreeSet::new();
        for r in &renditions {
            let dir = work.join(r.profile.name);
            written.extend(upload_rendition(ctx, &job.video_id, &dir, r).await?);
        }
        let thumbnail_key = match thumbnail {
            Some(bytes) => {
                let key = media::thumbnail_key(&job.video_id);
                put(ctx, &key, bytes).await?;
                Some(key)
            }
            None => None,
        };
        super::engine::prune_stale(ctx, &job.video_id, &written).await?;
        // The master goes last: its presence means the video is ready.
        let master = hls::master_playlist(&renditions);
        put(ctx, &media::master_key(&job.video_id), master.into()).await?;
        report.progress(100);
        Ok(Output {
            renditions,
            duration_ms: probe.duration_ms,
            thumbnail_key,
        })
    }

    async fn probe(&self, src: &Path, key: &str) -> Result<Probe, Failure> {
        let mut cmd = Command::new(self.ffprobe);
        cmd.args(["-v", "error", "-print_format", "json"])
            .args(["-show_format", "-show_streams"])
            .arg(src);
        let keep = usize::try_from(MAX_PLAYLIST_BYTES).unwrap_or(usize::MAX);
        let out = process::run(&cmd, "ffprobe", keep, |_| {}).await?;
        if !out.status.success() {
            return Err(Failure::new(
                Reason::NotAVideo,
                format!(
                    "corrupt or unsupported input: ffprobe {}{}",
                    out.status,
                    quoted(&out, src, key)
                ),
            ));
        }
        parse_probe(&out.stdout).map_err(|e| {
            Failure::new(
                Reason::NotAVideo,
                format!("corrupt or unsupported input: {e}"),
            )
        })
    }

    async fn encode(
        &self,
        src: &Path,
        key: &str,
        dir: &Path,
        r: &Rendition,
        probe: Probe,
        on_progress: impl Fn(u32) + Send + Sync,
    ) -> Result<(), Failure> {
        let create = dir.to_owned();
        rt::blocking(move || std::fs::create_dir_all(create))
            .await
            .map_err(|e| Failure::new(Reason::Failed, e.to_string()))?
            .map_err(|e| Failure::new(Reason::Failed, format!("cannot create a work dir: {e}")))?;
        let p = r.profile;
        let kbps = |k: u32| format!("{k}k");
        let mut cmd = Command::new(self.ffmpeg);
        cmd.args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(src)
            .args(["-map", "0:v:0", "-map", "0:a:0?"])
            .args(["-vf", &format!("scale=-2:{}", r.height)])
            .args(["-c:v", "libx264", "-preset", "veryfast"])
            .args(["-b:v", &kbps(p.video_kbps)])
            .args(["-maxrate", &kbps(p.video_kbps * 107 / 100)])
            .args(["-bufsize", &kbps(p.video_kbps * 3 / 2)])
            // Key frames on the segment grid: segments of every rendition align.
            .args(["-force_key_frames", "expr:gte(t,n_forced*4)"])
            .args(["-c:a", "aac", "-b:a", &kbps(p.audio_kbps)])
            .args(["-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod"])
            .arg("-hls_segment_filename")
            .arg(dir.join("seg_%05d.ts"))
            .arg(dir.join("index.m3u8"))
            .args(["-progress", "pipe:1"]);
        let out = process::run(&cmd, "ffmpeg", 0, |line| {
            if let Some(us) = hls::progress_us(line) {
                on_progress(hls::percent(us, probe.duration_ms));
            }
        })
        .await?;
        if !out.status.success() {
            return Err(Failure::new(
                Reason::Failed,
                format!(
                    "ffmpeg failed on {} ({}){}",
                    p.name,
                    out.status,
                    quoted(&out, src, key)
                ),
            ));
        }
        on_progress(100);
        Ok(())
    }

    async fn thumbnail(&self, src: &Path, dest: &Path, probe: Probe) -> Result<(), Failure> {
        let at_ms = (probe.duration_ms / 2).min(1000);
        let mut cmd = Command::new(self.ffmpeg);
        cmd.args(["-nostdin", "-v", "error", "-y"])
            .args(["-ss", &format!("{}.{:03}", at_ms / 1000, at_ms % 1000)])
            .arg("-i")
            .arg(src)
            .args(["-frames:v", "1", "-vf", "scale=320:-2"])
            .args(["-f", "image2", "-c:v", "mjpeg", "-q:v", "4"])
            .arg(dest);
        let out = process::run(&cmd, "ffmpeg", 0, |_| {}).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Failure::new(
                Reason::Failed,
                format!("thumbnail failed ({}){}", out.status, out.quoted_error()),
            ))
        }
    }
}

/// A local file with the original: the store's own, or a copy in `work`.
async fn source(ctx: &Context, work: &Path, key: &str) -> Result<PathBuf, Failure> {
    let size = ctx.blobs.size(key).await.map_err(|e| {
        Failure::new(
            Reason::SourceUnavailable,
            format!("source unavailable: {e}"),
        )
    })?;
    if let Some(path) = ctx.blobs.local_path(key) {
        return Ok(path);
    }
    if size > MAX_SOURCE_BYTES {
        return Err(Failure::new(
            Reason::SourceTooLarge,
            format!("source of {size} bytes exceeds {MAX_SOURCE_BYTES}"),
        ));
    }
    let path = work.join("source");
    let io = |e: std::io::Error| {
        Failure::new(
            Reason::SourceUnavailable,
            format!("copying the source: {e}"),
        )
    };
    let join = |e: rt::JoinError| Failure::new(Reason::Failed, e.to_string());
    let create = path.clone();
    let mut file = rt::blocking(move || std::fs::File::create(create))
        .await
        .map_err(join)?
        .map_err(io)?;
    let mut offset = 0u64;
    while offset < size {
        let chunk = ctx.blobs.read(key, offset, COPY_CHUNK).await.map_err(|e| {
            Failure::new(
                Reason::SourceUnavailable,
                format!("reading the source: {e}"),
            )
        })?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        file = rt::blocking(move || {
            use std::io::Write as _;
            file.write_all(&chunk).map(|()| file)
        })
        .await
        .map_err(join)?
        .map_err(io)?;
    }
    Ok(path)
}

/// The bytes of `path`, refused above `max`.
async fn read_file(path: &Path, max: u64) -> Result<Bytes, Failure> {
    let p = path.to_owned();
    let read = rt::blocking(move || {
        let len = std::fs::metadata(&p)?.len();
        if len > max {
            return Err(std::io::Error::other(format!(
                "{len} bytes exceed the limit of {max}"
            )));
        }
        std::fs::read(&p)
    })
    .await
    .map_err(|e| Failure::new(Reason::Failed, e.to_string()))?;
    read.map(Bytes::from)
        .map_err(|e| Failure::new(Reason::Failed, format!("output {}: {e}", path.display())))
}

async fn put(ctx: &Context, key: &str, data: Bytes) -> Result<(), Failure> {
    ctx.blobs
        .put(key, data)
        .await
        .map_err(|e| Failure::new(Reason::StoreFailed, format!("uploading {key}: {e}")))
}

/// Uploads the segments a rendition's playlist names, then the playlist;
/// the keys written.
async fn upload_rendition(
    ctx: &Context,
    video_id: &str,
    dir: &Path,
    r: &Rendition,
) -> Result<Vec<String>, Failure> {
    let name = r.profile.name;
    let playlist = read_file(&dir.join("index.m3u8"), MAX_PLAYLIST_BYTES).await?;
    let text = std::str::from_utf8(&playlist)
        .map_err(|_| Failure::new(Reason::Failed, format!("{name}: playlist is not UTF-8")))?;
    let segments = hls::segment_names(text);
    if segments.len() > MAX_SEGMENTS {
        return Err(Failure::new(
            Reason::Failed,
            format!("{name}: {} segments exceed {MAX_SEGMENTS}", segments.len()),
        ));
    }
    let mut written = Vec::with_capacity(segments.len() + 1);
    for segment in segments {
        if !media::is_segment_name(segment) {
            return Err(Failure::new(
                Reason::Failed,
                format!(
                    "{name}: unexpected segment name {:?}",
                    segment.chars().take(64).collect::<String>()
                ),
            ));
        }
        let bytes = read_file(&dir.join(segment), MAX_SEGMENT_BYTES).await?;
        let key = media::segment_key(video_id, name, segment);
        put(ctx, &key, bytes).await?;
        written.push(key);
    }
    let key = media::playlist_key(video_id, name);
    put(ctx, &key, playlist).await?;
    written.push(key);
    Ok(written)
}

#[cfg(test)]
mod tests;
