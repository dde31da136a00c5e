//! The field's own tus clients against the monolith binary: tuspy (PyPI)
//! and tus-js-client (npm, under Node) upload through `/v1/uploads/`, are
//! cut off mid-way (the client goes away half-way through a PATCH; the
//! monolith is SIGKILLed and restarted), resume from the offset the server
//! reports, and the video stored is the file, byte for byte (sha256). They
//! fail, never skip, when a client is missing: run ci/deps. A raw socket
//! cut half-way through a PATCH body shows none of it is kept.
#![cfg(not(madsim))]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

const DEPS: &str = "run ci/deps (it installs tuspy in the Python venv and tus-js-client with npm)";

/// The Python of the venv `ci/deps` makes (or `STREAMGATE_PYTHON`).
fn python() -> PathBuf {
    std::env::var_os("STREAMGATE_PYTHON").map_or_else(
        || PathBuf::from("/var/cache/streamgate/pyenv/bin/python"),
        PathBuf::from,
    )
}

/// The node_modules `ci/deps` installs into (or `STREAMGATE_NODE_MODULES`).
fn node_modules() -> PathBuf {
    std::env::var_os("STREAMGATE_NODE_MODULES").map_or_else(
        || PathBuf::from("/var/cache/streamgate/node/node_modules"),
        PathBuf::from,
    )
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ci/tus")
        .join(name)
}

/// Runs `cmd`, which must succeed and print one JSON line last.
fn run_json(cmd: &mut Command) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {DEPS}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: not JSON: {stdout}"))
}

fn file_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u64::from(seed) + 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    streamgate::services::media::hex(&Sha256::digest(bytes))
}

/// The path of an upload URL (`/v1/uploads/<id>`).
fn path_of(url: &str) -> &str {
    let at = url.find("/v1/uploads/").expect("an upload URL");
    &url[at..]
}

/// The video `id` is the file: its record's hash and its original's bytes.
async fn assert_stored(api: &monolith::Api, token: &str, id: &str, file: &[u8]) {
    let record = api
        .send("GET", &format!("/v1/videos/{id}"), token, "", "")
        .await;
    assert_eq!(record.status, 200, "{:?}", record.json());
    assert_eq!(
        record.json()["sha256_hex"].as_str(),
        Some(sha256_hex(file).as_str())
    );
    assert_eq!(
        record.json()["size_bytes"].as_u64(),
        Some(file.len() as u64)
    );
    let original = api
        .send("GET", &format!("/v1/videos/{id}/original"), token, "", "")
        .await;
    assert_eq!(original.status, 200);
    assert_eq!(sha256_hex(&original.body), sha256_hex(file), "byte-exact");
    let list = api.send("GET", "/v1/videos?owner=me", token, "", "").await;
    let videos = list.json()["videos"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(videos.len(), 1, "one video, nothing partial: {videos:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_resumes_after_the_monolith_is_killed_mid_upload() {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import tusclient, requests"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import tusclient (tuspy): {DEPS}",
        py.display()
    );

    let scratch = Scratch::new("tuspy");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let file = file_bytes(1, 3 << 20);
    let path = scratch.path().join("clip.bin");
    std::fs::write(&path, &file).expect("file");
    let chunk = 256 << 10;
    let mut node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let token = node.user("tuspy@example.com").await;
    let endpoint = |gateway| format!("http://{gateway}/v1/uploads/");
    let tuspy = |endpoint: &str, extra: &[&str]| {
        let mut cmd = Command::new(&py);
        cmd.arg(script("tuspy_upload.py"))
            .args(["--endpoint", endpoint, "--token", &token, "--file"])
            .arg(&path)
            .args(["--chunk-size", &chunk.to_string()])
            .args(extra);
        run_json(&mut cmd)
    };

    // Four chunks, then the client stops.
    let first = tuspy(&endpoint(node.gateway), &["--chunks", "4"]);
    let acked = first["offset"].as_u64().expect("offset");
    assert_eq!(acked, 4 * chunk);
    assert_eq!(first["head_offset"].as_u64(), Some(acked));
    assert!(first["video_id"].is_null(), "{first}");

    // The monolith dies and comes back (new ports, same data).
    node.process.kill();
    drop(node);
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let url = format!(
        "http://{}{}",
        node.gateway,
        path_of(first["url"].as_str().expect("url"))
    );
    let second = tuspy(&endpoint(node.gateway), &["--url", &url]);
    assert_eq!(
        second["start"].as_u64(),
        Some(acked),
        "the offset after the restart is what was acknowledged before it"
    );
    assert_eq!(second["head_offset"].as_u64(), Some(file.len() as u64));
    let video = second["video_id"].as_str().expect("a video id");
    assert_stored(&node, &token, video, &file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_after_a_cut_mid_patch() {
    let modules = node_modules();
    let ok = Command::new("node")
        .args(["-e", "require('tus-js-client')"])
        .env("NODE_PATH", &modules)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "node cannot load tus-js-client from {}: {DEPS}, or point \
         STREAMGATE_NODE_MODULES at a node_modules that has it",
        modules.display()
    );

    let scratch = Scratch::new("tus-js");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let file = file_bytes(2, 8 << 20);
    let path = scratch.path().join("clip.bin");
    std::fs::write(&path, &file).expect("file");
    let chunk: u64 = 512 << 10;
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let token = node.user("tus-js@example.com").await;
    let endpoint = format!("http://{}/v1/uploads/", node.gateway);
    let tus_js = |abort_after: u32, url: Option<&str>| {
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", &modules)
            .arg(script("tus_js_upload.cjs"))
            .args([&endpoint, &token])
            .arg(&path)
            .args([chunk.to_string(), abort_after.to_string()])
            .args(url);
        run_json(&mut cmd)
    };

    // Three chunks, then the connection is cut half-way through the fourth.
    let first = tus_js(3, None);
    eprintln!("tus-js-client, cut: {first}");
    assert_eq!(first["aborted"], true, "{first}");
    let acked = first["accepted"].as_u64().expect("accepted");
    // (Node's progress events are coarse: the cut may fall in a later chunk.)
    assert!(
        acked >= 3 * chunk && acked < file.len() as u64 && acked % chunk == 0,
        "{first}"
    );
    let offset = first["head_offset"].as_u64().expect("offset");
    // The cut chunk is stored whole or not at all (it may have reached the
    // server before the abort did); never a part of it.
    assert!(offset == acked || offset == acked + chunk, "{first}");
    assert!(first["video_id"].is_null(), "{first}");

    let url = first["url"].as_str().expect("url").to_owned();
    let second = tus_js(0, Some(&url));
    assert_eq!(second["start"].as_u64(), Some(offset), "{second}");
    assert_eq!(second["aborted"], false);
    assert_eq!(second["head_offset"].as_u64(), Some(file.len() as u64));
    let video = second["video_id"].as_str().expect("a video id");
    assert_stored(&node, &token, video, &file).await;
}

/// Half a PATCH body, then the connection closes: none of it is stored,
/// and the upload goes on from the offset before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_patch_stores_none_of_it() {
    use tokio::io::AsyncWriteExt as _;
    let scratch = Scratch::new("tus-cut");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let token = node.user("cut@example.com").await;
    let file = file_bytes(3, 1 << 20);
    let meta = "filename Y3V0Lm1wNA==,filetype dmlkZW8vbXA0";
    let tus = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", node.gateway))
            .header("tus-resumable", "1.0.0")
            .header("authorization", format!("Bearer {token}"))
    };
    let send = |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
        let http = node.http.clone();
        async move { http.request(req).await.expect("an answer") }
    };
    let created = send(
        tus("POST", "/v1/uploads/")
            .header("upload-length", file.len())
            .header("upload-metadata", meta)
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(created.status(), 201);
    let path = created.headers()["location"].to_str().unwrap().to_owned();
    let offset = |res: &http::Response<hyper::body::Incoming>| -> u64 {
        res.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let half = file.len() / 2;
    let first = send(
        tus("PATCH", &path)
            .header("upload-offset", 0)
            .header("content-type", "application/offset+octet-stream")
            .body(bytes::Bytes::copy_from_slice(&file[..half]).into())
            .unwrap(),
    )
    .await;
    assert_eq!(first.status(), 204);
    assert_eq!(offset(&first), half as u64);

    // By hand: the head says the rest, half of it comes, the socket closes.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let mut raw = socket.connect(node.gateway).await.expect("connect");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: x\r\ntus-resumable: 1.0.0\r\n\
         authorization: Bearer {token}\r\nupload-offset: {half}\r\n\
         content-type: application/offset+octet-stream\r\ncontent-length: {}\r\n\r\n",
        file.len() - half
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&file[half..half + half / 2]).await.unwrap();
    raw.flush().await.unwrap();
    streamgate::rt::sleep(std::time::Duration::from_millis(300)).await;
    drop(raw);
    streamgate::rt::sleep(std::time::Duration::from_millis(300)).await;

    let now = send(tus("HEAD", &path).body(Default::default()).unwrap()).await;
    assert_eq!(now.status(), 200);
    assert_eq!(offset(&now), half as u64, "none of the cut body");
    let rest = send(
        tus("PATCH", &path)
            .header("upload-offset", half)
            .header("content-type", "application/offset+octet-stream")
            .body(bytes::Bytes::copy_from_slice(&file[half..]).into())
            .unwrap(),
    )
    .await;
    assert_eq!(rest.status(), 204);
    let video = rest.headers()["streamgate-video-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_stored(&node, &token, &video, &file).await;
}
