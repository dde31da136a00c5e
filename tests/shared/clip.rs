//! A test clip made by ffmpeg, shared by the integration tests that play
//! a real video (CI installs ffmpeg with `ci/deps`).

use std::path::Path;
use std::process::Command;

/// A `seconds` long H.264/AAC MP4 of `width`x`height` test pattern and a
/// 440 Hz tone, written under `dir` and returned.
pub fn make(dir: &Path, seconds: u32, width: u32, height: u32) -> Vec<u8> {
    let out = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=duration={seconds}:size={width}x{height}:rate=25"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-shortest",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("ffmpeg: {e} (run ci/deps, which installs it)"));
    assert!(status.success(), "ffmpeg made the test clip");
    std::fs::read(out).expect("clip")
}
