//! `streamgate-cli` (the binary) against the monolith binary, as a user
//! at a shell would run it, but with stdout and stderr not terminals:
//! sign up and log in (the token kept in a 0600 config file), upload a
//! clip made with ffmpeg, killed mid-way and `--resume`d from the server's
//! offset, `videos --json` lists it, `watch` follows it to ready, and
//! `play --json` prints signed URLs whose original is the file, byte for
//! byte; `status --json` names the nine services. No progress bar is
//! drawn off a terminal.
#![cfg(not(madsim))]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use http_body_util::BodyExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use streamgate::rt;
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

#[path = "shared/clip.rs"]
mod clip;

const PASSWORD: &str = "correct horse battery";

/// The CLI with its config file in `config`, talking to `server`.
fn cli(config: &Path, server: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate-cli"));
    cmd.env("STREAMGATE_CLI_CONFIG", config)
        .env("STREAMGATE_URL", server)
        .env_remove("STREAMGATE_TOKEN")
        .env_remove("STREAMGATE_PASSWORD")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, which must succeed; its output.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Off a terminal: no bar, no cursor movement.
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains(&b'\r') && !stream.contains(&0x1b),
            "{cmd:?} drew on a non-terminal: {:?}",
            String::from_utf8_lossy(stream)
        );
    }
    out
}

/// Runs `cmd` with `--json`; the document it printed.
fn json(cmd: &mut Command) -> Value {
    let out = ok(cmd.arg("--json"));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?}: {e}: not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    streamgate::services::media::hex(&Sha256::digest(bytes))
}

fn stored(config: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(config).expect("the config file")).expect("JSON")
}

/// The upload offset the server has at `url`.
async fn head_offset(node: &monolith::Monolith, url: &str, token: &str) -> u64 {
    let req = http::Request::head(url)
        .header("tus-resumable", "1.0.0")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::default())
        .expect("request");
    let res = node.http.request(req).await.expect("an answer");
    assert_eq!(res.status(), 200, "HEAD {url}");
    res.headers()["upload-offset"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number")
}

/// GET `url` with no header at all: the body.
async fn fetch(node: &monolith::Monolith, url: &str) -> (u16, Vec<u8>) {
    let req = http::Request::get(url)
        .body(http_body_util::Full::default())
        .expect("request");
    let res = node.http.request(req).await.expect("an answer");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_in_uploads_resumes_watches_and_plays() {
    let scratch = Scratch::new("cli");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let server = format!("http://{}", node.gateway);
    let config: PathBuf = scratch.path().join("home/streamgate/cli.json");
    let clip_bytes = clip::make(scratch.path(), 6, 1280, 720);
    let clip = scratch.path().join("clip.mp4");
    // Three 64 KiB requests at least (the upload is killed after the first).
    assert!(clip_bytes.len() > 2 * 65536, "{} bytes", clip_bytes.len());

    // Sign up (the password on stdin), then log in again.
    let mut signup = cli(&config, &server);
    signup
        .args(["signup", "--email", "cli@example.com", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = signup.spawn().expect("spawn");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        format!("{PASSWORD}\n").as_bytes(),
    )
    .expect("password");
    let out = child.wait_with_output().expect("signup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("logged in to "), "a sentence: {said}");
    let login = json(
        cli(&config, &server)
            .args(["login", "--email", "cli@example.com"])
            .env("STREAMGATE_PASSWORD", PASSWORD),
    );
    assert_eq!(login["email"], "cli@example.com");
    let mode = std::fs::metadata(&config)
        .expect("the config file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is the user's alone");
    let saved = stored(&config);
    let token = saved["session"]["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(saved["server"], server.as_str());
    assert!(
        !String::from_utf8_lossy(&ok(cli(&config, &server).arg("status")).stdout).contains(&token),
        "tokens are never printed"
    );

    // A slow upload (32 KiB a second in 64 KiB requests: one each 2 s),
    // killed once the server has some of it.
    let mut slow = cli(&config, &server);
    slow.args(["upload", "--chunk-size", "64K", "--limit-rate", "32K"])
        .arg(&clip)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = slow.spawn().expect("spawn");
    let mut url = None;
    let mut acked = 0;
    for _ in 0..400 {
        if let Some(u) = stored(&config)["uploads"]
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|p| p["url"].as_str())
        {
            url = Some(u.to_owned());
            acked = head_offset(&node, u, &token).await;
            if acked > 0 {
                break;
            }
        }
        rt::sleep(Duration::from_millis(25)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let url = url.expect("the upload's URL was saved");
    assert!(
        acked > 0 && acked < clip_bytes.len() as u64,
        "killed mid-way: {acked} of {}",
        clip_bytes.len()
    );
    let before_resume = head_offset(&node, &url, &token).await;

    let done = json(
        cli(&config, &server)
            .args(["upload", "--resume"])
            .arg(&clip),
    );
    // From the server's offset (which the killed client's last chunk may
    // still have moved on by one, if it had been sent whole).
    let from = done["resumed_from"].as_u64().expect("resumed_from");
    assert!(
        from == before_resume || from == before_resume + 65536,
        "went on from the server's offset {before_resume}: {done}"
    );
    assert_eq!(done["upload_url"], url.as_str());
    assert_eq!(done["bytes"].as_u64(), Some(clip_bytes.len() as u64));
    let id = done["video_id"].as_str().expect("a video id").to_owned();
    assert!(
        stored(&config)["uploads"]
            .as_object()
            .is_some_and(serde_json::Map::is_empty),
        "a finished upload is forgotten"
    );

    // Listed, with the token from the environment this time.
    let listed = json(
        cli(&config, "http://127.0.0.1:1")
            .args(["--server", &server, "videos"])
            .env("STREAMGATE_TOKEN", &token),
    );
    let videos = listed["videos"].as_array().expect("videos");
    assert_eq!(videos.len(), 1, "{listed}");
    assert_eq!(videos[0]["id"], id.as_str());
    assert_eq!(videos[0]["title"], "clip");
    assert_eq!(
        videos[0]["sha256_hex"].as_str(),
        Some(sha256_hex(&clip_bytes).as_str())
    );
    let table =
        String::from_utf8_lossy(&ok(cli(&config, &server).arg("videos")).stdout).into_owned();
    assert!(
        table.starts_with("ID") && table.contains(&id),
        "a table: {table}"
    );

    let ready = json(cli(&config, &server).args(["watch", &id, "--timeout", "180"]));
    assert_eq!(ready["state"], "ready", "{ready}");
    assert!(
        !ready["renditions"]
            .as_array()
            .expect("renditions")
            .is_empty()
    );

    let play = json(cli(&config, &server).args(["play", &id]));
    let original = play["original"].as_str().expect("original");
    assert!(
        original.starts_with(&format!("{server}/v1/play/")),
        "{play}"
    );
    let (status, body) = fetch(&node, original).await;
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), sha256_hex(&clip_bytes), "byte-exact");
    let (status, playlist) = fetch(&node, play["master"].as_str().expect("master")).await;
    assert_eq!(status, 200);
    assert!(playlist.starts_with(b"#EXTM3U"));

    let health = json(cli(&config, &server).arg("status"));
    assert_eq!(
        health["services"].as_array().map(Vec::len),
        Some(9),
        "{health}"
    );

    // Errors are messages and a failing status, not panics.
    let missing = cli(&config, &server)
        .args(["watch", "no-such-video"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("404"),
        "{stderr}"
    );
    let no_resume = cli(&config, &server)
        .args(["upload", "--resume"])
        .arg(&clip)
        .output()
        .expect("runs");
    assert_eq!(no_resume.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_resume.stderr).contains("without --resume"));

    // Logged out: the token is revoked and forgotten.
    ok(cli(&config, &server).arg("logout"));
    assert!(stored(&config)["session"].is_null());
    let after = node.send("GET", "/v1/videos", &token, "", "").await;
    assert_eq!(after.status, 401);
    let out = cli(&config, &server).arg("videos").output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
}
