//! The web app in a real browser against the monolith binary: Debian's
//! chromium driven by playwright-core (npm) runs `ci/web/web_app.cjs`,
//! which signs up, uploads a clip ffmpeg makes here through the page (tus,
//! the progress bar moving), waits for the video to be ready (live states
//! over server-sent events), plays it (the `<video>`'s `currentTime`
//! advances), renames and deletes it, and reads the status page. It fails,
//! never skips, when chromium, Node, playwright-core or ffmpeg is missing:
//! run ci/deps. On failure a screenshot and the page's HTML are saved in
//! `$STREAMGATE_ARTIFACTS` (default `<target>/tmp/artifacts/web_app`),
//! whose path is printed.
#![cfg(not(madsim))]

use std::path::{Path, PathBuf};
use std::process::Command;

use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

const DEPS: &str =
    "run ci/deps (it installs Debian's chromium and ffmpeg, and playwright-core with npm)";

/// The node_modules `ci/deps` installs into (or `STREAMGATE_NODE_MODULES`).
fn node_modules() -> PathBuf {
    std::env::var_os("STREAMGATE_NODE_MODULES").map_or_else(
        || PathBuf::from("/var/cache/streamgate/node/node_modules"),
        PathBuf::from,
    )
}

/// The browser (or `STREAMGATE_CHROMIUM`).
fn chromium() -> PathBuf {
    std::env::var_os("STREAMGATE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Where a failure's screenshot goes (CI keeps `$STREAMGATE_ARTIFACTS`).
fn artifacts() -> PathBuf {
    std::env::var_os("STREAMGATE_ARTIFACTS")
        .map_or_else(
            || Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts"),
            PathBuf::from,
        )
        .join("web_app")
}

/// A 3 s H.264 clip of about 3 MB (noise keeps it from compressing), so
/// the page sends it in several chunks and the bar has steps to show.
fn clip(dir: &Path) -> PathBuf {
    let path = dir.join("browser-clip.mp4");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=640x360:rate=25", "-t", "3"])
        .args(["-vf", "noise=alls=30:allf=t", "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p"])
        .args(["-b:v", "8M", "-maxrate", "8M", "-bufsize", "4M"])
        .args(["-movflags", "+faststart"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg: {e}: {DEPS}"));
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let len = std::fs::metadata(&path).expect("the clip").len();
    assert!(len > 2 << 20, "the clip is over 2 MiB (3 chunks): {len}");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_uploads_plays_renames_and_deletes_in_chromium() {
    let browser = chromium();
    let version = Command::new(&browser).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{} does not run ({:?}): {DEPS}, or point STREAMGATE_CHROMIUM at a chromium",
        browser.display(),
        version.map(|o| o.status)
    );
    let modules = node_modules();
    let ok = Command::new("node")
        .args(["-e", "require('playwright-core')"])
        .env("NODE_PATH", &modules)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "node cannot load playwright-core from {}: {DEPS}, or point \
         STREAMGATE_NODE_MODULES at a node_modules that has it",
        modules.display()
    );

    let scratch = Scratch::new("web-app");
    let clip = clip(scratch.path());
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let artifacts = artifacts();
    let started = streamgate::rt::now();
    let out = Command::new("node")
        .env("NODE_PATH", &modules)
        .env("STREAMGATE_CHROMIUM", &browser)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/web/web_app.cjs"))
        .arg(format!("http://{}", node.gateway))
        .arg(&clip)
        .arg(&artifacts)
        .output()
        .unwrap_or_else(|e| panic!("node: {e}: {DEPS}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}); screenshot and HTML in {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status,
        artifacts.display()
    );
    let last = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: not JSON: {stdout}"));
    eprintln!("web app in chromium, {:?}: {seen}", started.elapsed());
    assert_eq!(seen["ok"], true, "{seen}");
    assert!(
        seen["currentTime"].as_f64().is_some_and(|t| t > 0.5),
        "{seen}"
    );
}
