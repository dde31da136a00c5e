//! The ffmpeg pipeline against the real ffmpeg (these tests fail, never
//! skip, when it is missing) and the probe parser.

use std::sync::{Arc, Mutex};

use rand::RngCore as _;

use super::*;
use crate::blob::BlobStore;
use crate::blob::fs::FsBlobStore;
use crate::blob::memory::MemoryBlobStore;

#[derive(Default)]
struct Seen {
    started: Mutex<Vec<Vec<Rendition>>>,
    progress: Mutex<Vec<u32>>,
}

#[async_trait::async_trait]
impl Reporter for Seen {
    async fn started(&self, renditions: &[Rendition]) {
        self.started.lock().unwrap().push(renditions.to_vec());
    }
    fn progress(&self, percent: u32) {
        self.progress.lock().unwrap().push(percent);
    }
}

/// A fresh directory under the system temp dir, removed on drop.
fn engine(ffmpeg: &str) -> Engine {
    Engine::Ffmpeg {
        ffmpeg: ffmpeg.into(),
        ffprobe: "ffprobe".into(),
        timeout: Duration::from_secs(120),
    }
}

/// A 2 s 320x240 clip with sound, made by the real ffmpeg.
async fn clip(dir: &Path) -> Vec<u8> {
    let path = dir.join("clip.mp4");
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=25",
        ])
        .args(["-f", "lavfi", "-i", "sine=duration=2"])
        .args(["-shortest", "-c:v", "libx264", "-c:a", "aac"])
        .arg(&path)
        .output()
        .await
        .expect("these tests need ffmpeg on the PATH");
    assert!(out.status.success(), "ffmpeg made no clip: {out:?}");
    std::fs::read(&path).unwrap()
}

fn job(video_id: &str) -> Job {
    Job {
        video_id: video_id.into(),
        source_key: media::original_key(video_id),
        profiles: None,
    }
}

async fn text(store: &dyn BlobStore, key: &str) -> String {
    let bytes = store.read(key, 0, 1 << 20).await.expect(key);
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn left_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

#[tokio::test]
async fn a_real_clip_becomes_hls_with_a_thumbnail_and_the_master_last() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let store = Arc::new(FsBlobStore::open(scratch.path().join("store")).unwrap());
    let bytes = clip(scratch.path()).await;
    store
        .put(&media::original_key("v1"), bytes.into())
        .await
        .unwrap();
    // What a transcode killed midway left: a rendition this one will not
    // make, and a segment past the end of one it will.
    let stale = ["hls/v1/720p/seg_00003.ts", "hls/v1/240p/seg_00099.ts"];
    for key in stale {
        store.put(key, Bytes::from_static(b"stale")).await.unwrap();
    }
    let ctx = Context {
        blobs: store.clone(),
        work_root: scratch.path().join("work"),
    };
    let seen = Seen::default();
    let out = run(&engine("ffmpeg"), &ctx, &job("v1"), &seen)
        .await
        .expect("transcodes");
    for key in stale {
        assert!(store.size(key).await.is_err(), "{key} was replaced");
    }

    assert_eq!(out.renditions.len(), 1, "a 240-line source fits 240p only");
    let r = out.renditions[0];
    assert_eq!((r.profile.name, r.width, r.height), ("240p", 320, 240));
    assert!(
        (1900..=2100).contains(&out.duration_ms),
        "{}",
        out.duration_ms
    );
    assert_eq!(out.thumbnail_key, Some(media::thumbnail_key("v1")));
    assert!(store.size(&media::thumbnail_key("v1")).await.unwrap() > 0);

    let master = text(store.as_ref(), &media::master_key("v1")).await;
    assert!(
        master.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n"),
        "{master}"
    );
    assert!(master.contains("BANDWIDTH=464000,RESOLUTION=320x240\n240p/index.m3u8\n"));
    let playlist = text(store.as_ref(), &media::playlist_key("v1", "240p")).await;
    let secs = hls::total_seconds(&playlist);
    assert!((secs - 2.0).abs() < 0.25, "EXTINF sum {secs} in {playlist}");
    let segments = hls::segment_names(&playlist);
    assert!(!segments.is_empty());
    for s in segments {
        let key = media::segment_key("v1", "240p", s);
        assert!(store.size(&key).await.unwrap() > 0, "{key}");
    }

    assert_eq!(seen.started.lock().unwrap().as_slice(), &[vec![r]]);
    let progress = seen.progress.lock().unwrap().clone();
    assert_eq!(progress.last(), Some(&100));
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(left_in(&ctx.work_root), 0, "the work dir is removed");
}

#[tokio::test]
async fn random_bytes_fail_as_corrupt_input() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let store = Arc::new(FsBlobStore::open(scratch.path().join("store")).unwrap());
    // Fixed bytes: some random draws probe as an audio format, which fails
    // differently ("no video stream"); this one is invalid data.
    let mut junk = vec![0u8; 64 << 10];
    <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7).fill_bytes(&mut junk);
    store
        .put(&media::original_key("v2"), junk.into())
        .await
        .unwrap();
    let ctx = Context {
        blobs: store.clone(),
        work_root: scratch.path().join("work"),
    };
    let seen = Seen::default();
    let err = run(&engine("ffmpeg"), &ctx, &job("v2"), &seen)
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::NotAVideo, "{err}");
    // The detail, for the log.
    assert!(
        err.detail.starts_with("corrupt or unsupported input: "),
        "{err}"
    );
    assert!(err.detail.len() <= 1024);
    assert!(
        err.detail.contains("originals/v2: Invalid data")
            && !err.detail.contains(&*scratch.path().to_string_lossy()),
        "names the blob, not the local path: {err}"
    );
    assert!(seen.started.lock().unwrap().is_empty());
    assert!(store.size(&media::master_key("v2")).await.is_err());
    assert_eq!(left_in(&ctx.work_root), 0, "the work dir is removed");
}

#[tokio::test]
async fn a_missing_ffmpeg_is_named_and_a_store_without_files_is_copied() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let store = Arc::new(MemoryBlobStore::new());
    let bytes = clip(scratch.path()).await;
    store
        .put(&media::original_key("v3"), bytes.into())
        .await
        .unwrap();
    let ctx = Context {
        blobs: store.clone(),
        work_root: scratch.path().join("work"),
    };
    let err = run(
        &engine("/nonexistent/bin/ffmpeg"),
        &ctx,
        &job("v3"),
        &Seen::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::Failed, "{err}");
    assert!(err.detail.starts_with("ffmpeg not found: "), "{err}");
    assert_eq!(left_in(&ctx.work_root), 0);

    let missing = run(&engine("ffmpeg"), &ctx, &job("nope"), &Seen::default())
        .await
        .unwrap_err();
    assert_eq!(missing.reason, Reason::SourceUnavailable, "{missing}");
    assert!(
        missing.detail.starts_with("source unavailable"),
        "{missing}"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_fails_and_cleans_up() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let store = Arc::new(FsBlobStore::open(scratch.path().join("store")).unwrap());
    let bytes = clip(scratch.path()).await;
    store
        .put(&media::original_key("v4"), bytes.into())
        .await
        .unwrap();
    let ctx = Context {
        blobs: store,
        work_root: scratch.path().join("work"),
    };
    let engine = Engine::Ffmpeg {
        ffmpeg: "ffmpeg".into(),
        ffprobe: "ffprobe".into(),
        timeout: Duration::from_millis(1),
    };
    let err = run(&engine, &ctx, &job("v4"), &Seen::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::TimedOut, "{err}");
    assert!(err.detail.starts_with("timed out after"), "{err}");
    assert_eq!(left_in(&ctx.work_root), 0);
}

#[test]
fn probe_answers_are_parsed_or_refused() {
    let ok =
        br#"{"streams":[{"codec_type":"audio"},{"codec_type":"video","width":320,"height":240}],
        "format":{"duration":"2.005000"}}"#;
    assert_eq!(
        parse_probe(ok).unwrap(),
        Probe {
            width: 320,
            height: 240,
            duration_ms: 2005
        }
    );
    let audio_only = br#"{"streams":[{"codec_type":"audio"}],"format":{}}"#;
    assert_eq!(parse_probe(audio_only).unwrap_err(), "no video stream");
    let no_size = br#"{"streams":[{"codec_type":"video","width":0}]}"#;
    assert!(parse_probe(no_size).is_err());
    assert!(parse_probe(b"not json").is_err());
    let no_duration = br#"{"streams":[{"codec_type":"video","width":2,"height":2}]}"#;
    assert_eq!(parse_probe(no_duration).unwrap().duration_ms, 0);
}
