//! The README's quick start stays true: the `streamgate monolith` binary on
//! loopback, `ci/demo` run against it (sign up, make a clip with ffmpeg,
//! upload, wait until ready), and the `ffplay` line it prints, run with
//! ffmpeg instead, decodes the whole clip. Needs curl, ffmpeg and python3
//! (`ci/deps`); fails, never skips, without them.
#![cfg(not(madsim))]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use streamgate::rt;
use streamgate::services::ServiceKind;

/// Kills the monolith if the test ends before it is stopped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port offset at which every service's port is free now. Drawn above
/// the kernel's ephemeral range (32768..=60999 here), where no outgoing
/// connection takes a port, and away from the offsets other tests use.
fn free_offset() -> u16 {
    for _ in 0..100 {
        let offset = 52_000 + u16::try_from(rt::random_u64() % 4_400).expect("small");
        let free = ServiceKind::ALL.iter().all(|kind| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, kind.default_port() + offset)).is_ok()
        });
        if free {
            return offset;
        }
    }
    panic!("no port offset with nine free ports in 100 draws");
}

/// Whether `GET /health` at `addr` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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
    let dir = std::env::temp_dir().join(format!("sg-demo-{}", rt::random_hex128()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log: PathBuf = dir.join("monolith.log");
    let offset = free_offset();
    let gateway = SocketAddr::from(([127, 0, 0, 1], 9090 + offset));
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut monolith = Proc(
        Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(["monolith", "--port-offset", &offset.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("the monolith starts"),
    );
    for _ in 0..300 {
        if let Some(exit) = monolith.0.try_wait().expect("wait") {
            panic!("the monolith exited: {exit}\n{}", log_of(&log));
        }
        if healthy(gateway) {
            break;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy(gateway), "no gateway within 30 s\n{}", log_of(&log));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/demo");
    let demo = Command::new(&script)
        .env("STREAMGATE_URL", format!("http://{gateway}"))
        .env("DEMO_TIMEOUT_SECONDS", "240")
        .output()
        .expect("ci/demo runs");
    let out = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "ci/demo failed: {}\n{out}\n{}\nmonolith log:\n{}",
        demo.status,
        String::from_utf8_lossy(&demo.stderr),
        log_of(&log)
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
    let _ = std::fs::remove_dir_all(&dir);
}
