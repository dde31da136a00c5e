//! The README's quick start stays true: the `streamgate monolith` binary on
//! loopback, `ci/demo` run against it (sign up, make a clip with ffmpeg,
//! upload, wait until ready), and the `ffplay` line it prints, run with
//! ffmpeg instead, decodes the whole clip. Needs curl, ffmpeg and python3
//! (`ci/deps`); fails, never skips, without them.
#![cfg(not(madsim))]

use std::path::Path;
use std::process::Command;

use streamgate_testkit::process::Process;

/// The header and URL of the printed `ffplay -headers '<header>' '<url>'` line.
fn ffplay_line(out: &str) -> (String, String) {
    let line = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("ffplay -headers '"))
        .unwrap_or_else(|| panic!("no ffplay line in:\n{out}"));
    let (header, rest) = line.split_once("' '").expect("'<header>' '<url>'");
    let url = rest.strip_suffix('\'').expect("the URL is quoted");
    (header.to_owned(), url.to_owned())
}

#[tokio::test]
async fn ci_demo_uploads_a_clip_that_then_plays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn");
    demo(cmd, dir.path()).await;
}

/// The same with every blob in S3-compatible object storage: Garage, the
/// server ci/garage starts (its settings in `$STREAMGATE_TEST_S3_ENV`,
/// default `/var/cache/streamgate/garage/s3.env`). The upload streams into
/// the bucket, the transcoder copies the original out of it and writes the
/// renditions back, and playback reads ranges of them; nothing but SQLite
/// is left in the data dir.
#[tokio::test]
async fn ci_demo_plays_with_blobs_in_garage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("demo{:016x}", streamgate::rt::random_u64());
    let s3 = streamgate_testkit::s3::garage(&prefix);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--blob-store", &format!("s3://{}/{prefix}", s3.bucket)])
        .args(["--s3-endpoint", s3.endpoint.as_deref().unwrap_or_default()])
        .args(["--s3-region", &s3.region])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .env("RUST_LOG", "warn");
    demo(cmd, dir.path()).await;
    // No blob went to the data dir (the file store would keep them under
    // `blobs/`).
    assert!(
        !dir.path().join("data").join("blobs").exists(),
        "blobs in the data dir"
    );
}

/// Starts the monolith `cmd`, runs ci/demo against it and plays what it
/// printed.
async fn demo(cmd: Command, dir: &Path) {
    let mut monolith = Process::spawn("monolith", cmd, dir);
    let gateway = monolith.listening("api-gateway").await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/demo");
    let demo = Command::new(&script)
        .env("STREAMGATE_URL", format!("http://{gateway}"))
        .env("DEMO_TIMEOUT_SECONDS", "240")
        .output()
        .expect("ci/demo runs");
    let out = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "ci/demo failed: {}\n{out}\n{}",
        demo.status,
        String::from_utf8_lossy(&demo.stderr),
    );

    // Play what it printed: the ffplay line's header and URL, through
    // ffmpeg, one checksum line per decoded frame.
    let (header, url) = ffplay_line(&out);
    assert!(header.starts_with("Authorization: Bearer "), "{header}");
    assert!(url.ends_with("/hls/master.m3u8"), "{url}");
    let play = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-headers", &header, "-i", &url])
        .args(["-map", "0:v:0", "-f", "framecrc", "-"])
        .output()
        .expect("ffmpeg runs (ci/deps installs it)");
    let frames = String::from_utf8_lossy(&play.stdout)
        .lines()
        .filter(|l| l.starts_with("0,"))
        .count();
    assert!(
        play.status.success(),
        "ffmpeg could not play {url}: {}",
        String::from_utf8_lossy(&play.stderr)
    );
    // 4 s at 25 frames per second.
    assert!((95..=105).contains(&frames), "{frames} frames decoded");

    // Without the token the playlist is refused: the header mattered.
    let refused = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", &url, "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(!refused.status.success(), "played without a token");

    drop(monolith);
}
