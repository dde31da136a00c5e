//! The video pipeline end to end, as a user meets it: the `streamgate
//! monolith` binary on loopback, a small video made with ffmpeg uploaded
//! through the gateway, transcoded, then read back as a byte range of the
//! original and as HLS. Bad uploads get 4xx with a body and store nothing;
//! a crash in the middle of an upload leaves no blob behind.
#![cfg(not(madsim))]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use streamgate::rt;

/// Kills the process if the test ends before it is stopped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Monolith {
    proc: Proc,
    gateway: SocketAddr,
}

const MAX_UPLOAD: u64 = 8 << 20;

fn start(data: &Path, offset: u16) -> Monolith {
    let proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(["monolith", "--port-offset", &offset.to_string()])
            .arg("--data-dir")
            .arg(data)
            .args(["--max-upload-bytes", &MAX_UPLOAD.to_string()])
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the binary starts"),
    );
    Monolith {
        proc,
        gateway: SocketAddr::from(([127, 0, 0, 1], 9090 + offset)),
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn call(http: &Http, req: http::Request<Full<Bytes>>) -> Reply {
    let res = http.request(req).await.expect("the gateway answers");
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn get(http: &Http, m: &Monolith, path: &str, range: Option<&str>) -> Reply {
    let mut req = http::Request::get(format!("http://{}{path}", m.gateway));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    call(http, req.body(Full::default()).expect("request")).await
}

async fn post_video(http: &Http, m: &Monolith, query: &str, ctype: &str, body: Vec<u8>) -> Reply {
    let req = http::Request::post(format!("http://{}/v1/videos?{query}", m.gateway))
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    call(http, req).await
}

async fn up(http: &Http, m: &mut Monolith) {
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{}/health", m.gateway))
            .body(Full::default())
            .expect("request");
        if let Ok(res) = http.request(req).await
            && res.status() == 200
        {
            // Answered: by this process, unless it died on a port in use
            // and another one answers there.
            rt::sleep(Duration::from_millis(200)).await;
            if let Some(exit) = m.proc.0.try_wait().expect("wait") {
                panic!("the monolith exited: {exit}");
            }
            return;
        }
        if let Some(exit) = m.proc.0.try_wait().expect("wait") {
            panic!("the monolith exited early: {exit}");
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway did not answer within 20 s");
}

/// A `seconds` long 640x480 H.264/AAC clip made by ffmpeg (which the test
/// needs: CI installs it).
fn test_video(dir: &Path, seconds: u32) -> Vec<u8> {
    let out = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=duration={seconds}:size=640x480:rate=25"))
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
        .expect("ffmpeg is installed (ci/deps installs it)");
    assert!(status.success(), "ffmpeg made the test clip");
    std::fs::read(out).expect("clip")
}

fn originals(data: &Path) -> usize {
    std::fs::read_dir(data.join("blobs/originals")).map_or(0, Iterator::count)
}

fn temp_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("tmp")).map_or(0, Iterator::count)
}

/// A port offset for test number `test` (0..3): the tests of this file run
/// in parallel, so each draws from its own range (ports span 9005..=9093,
/// so offsets step by 100).
fn offset(test: u16) -> u16 {
    30_000 + test * 6_000 + u16::try_from(rt::random_u64() % 60).expect("small") * 100
}

async fn wait_ready(http: &Http, m: &Monolith, id: &str) -> Value {
    for _ in 0..1200 {
        let video = get(http, m, &format!("/v1/videos/{id}"), None).await;
        assert_eq!(video.status, 200, "{:?}", video.body);
        let v = video.json();
        match v["state"].as_str() {
            Some("ready") => return v,
            Some("failed") => panic!("transcoding failed: {v}"),
            _ => rt::sleep(Duration::from_millis(100)).await,
        }
    }
    let job = get(http, m, &format!("/v1/videos/{id}/job"), None).await;
    panic!(
        "not ready within 120 s; job: {:?}",
        String::from_utf8_lossy(&job.body)
    );
}

fn extinf_total(playlist: &str) -> f64 {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| {
            l.trim_end_matches(',')
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_goes_in_and_plays_back_as_ranges_and_hls() {
    let dir = std::env::temp_dir().join(format!("sg-pipeline-{}", rt::random_hex128()));
    std::fs::create_dir_all(&dir).expect("dir");
    let clip = test_video(&dir, 4);
    let mut m = start(&dir.join("data"), offset(0));
    let http = client();
    up(&http, &mut m).await;

    let created = post_video(
        &http,
        &m,
        "name=clip.mp4&title=Test%20clip",
        "video/mp4",
        clip.clone(),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["video_id"]
        .as_str()
        .expect("video_id")
        .to_owned();

    let video = wait_ready(&http, &m, &id).await;
    assert_eq!(video["title"], "Test clip");
    assert_eq!(video["size_bytes"].as_u64(), Some(clip.len() as u64));
    let duration = video["duration_ms"].as_u64().expect("duration");
    assert!((3500..=4600).contains(&duration), "duration {duration} ms");
    let names: Vec<&str> = video["renditions"]
        .as_array()
        .expect("renditions")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["240p", "480p"], "none above the 480p source");

    // The original, by byte ranges.
    let original = format!("/v1/videos/{id}/original");
    let part = get(&http, &m, &original, Some("bytes=100-1099")).await;
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &clip[100..1100]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-1099/{}", clip.len()).as_str()
    );
    let tail = get(&http, &m, &original, Some("bytes=-500")).await;
    assert_eq!(tail.status, 206);
    assert_eq!(&tail.body[..], &clip[clip.len() - 500..]);
    let whole = get(&http, &m, &original, None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(&whole.body[..], &clip[..]);
    let past = get(
        &http,
        &m,
        &original,
        Some(&format!("bytes={}-", clip.len())),
    )
    .await;
    assert_eq!(past.status, 416);
    assert_eq!(
        past.headers["content-range"],
        format!("bytes */{}", clip.len()).as_str()
    );

    // HLS: master, a media playlist whose segments add up to the clip, a segment.
    let master = get(&http, &m, &format!("/v1/videos/{id}/hls/master.m3u8"), None).await;
    assert_eq!(master.status, 200);
    let master = String::from_utf8(master.body.to_vec()).expect("utf-8");
    assert!(master.starts_with("#EXTM3U"), "{master}");
    assert!(
        master.contains("480p/index.m3u8") && master.contains("240p/index.m3u8"),
        "{master}"
    );
    let media = get(
        &http,
        &m,
        &format!("/v1/videos/{id}/hls/480p/index.m3u8"),
        None,
    )
    .await;
    assert_eq!(media.status, 200);
    let media = String::from_utf8(media.body.to_vec()).expect("utf-8");
    let total = extinf_total(&media);
    assert!(
        (3.5..=4.6).contains(&total),
        "segments add up to {total} s:\n{media}"
    );
    let first = media
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .expect("a segment");
    let seg = get(
        &http,
        &m,
        &format!("/v1/videos/{id}/hls/480p/{first}"),
        None,
    )
    .await;
    assert_eq!(seg.status, 200);
    assert_eq!(seg.body.first(), Some(&0x47), "an MPEG-TS segment");

    // The worker sees the transcode finish on its next progress poll.
    let mut job = Value::Null;
    for _ in 0..100 {
        let reply = get(&http, &m, &format!("/v1/videos/{id}/job"), None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        job = reply.json();
        if job["state"] == "succeeded" {
            break;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["state"], "succeeded", "{job}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_with_a_body_and_store_nothing() {
    let dir = std::env::temp_dir().join(format!("sg-bad-{}", rt::random_hex128()));
    let data = dir.join("data");
    let mut m = start(&data, offset(1));
    let http = client();
    up(&http, &mut m).await;
    let small = vec![7u8; 1000];
    // Too large by its Content-Length: refused before the body is read (a
    // raw socket, since an HTTP client writing the body sees the close).
    let mut raw = std::net::TcpStream::connect(m.gateway).expect("connect");
    write!(
        raw,
        "POST /v1/videos?name=big.mp4 HTTP/1.1\r\nhost: x\r\ncontent-type: video/mp4\r\ncontent-length: {}\r\n\r\n",
        MAX_UPLOAD + 1
    )
    .expect("head");
    raw.write_all(&[0; 4096]).expect("some body");
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    let cases: [(&str, &str, Vec<u8>, u16); 6] = [
        ("name=a.png", "image/png", small.clone(), 415),
        ("name=..%2Fa.mp4", "video/mp4", small.clone(), 400),
        ("name=%2Fetc%2Fpasswd", "video/mp4", small.clone(), 400),
        ("name=a%00.mp4", "video/mp4", small.clone(), 400),
        ("name=..", "video/mp4", small.clone(), 400),
        ("title=no-name", "video/mp4", small.clone(), 400),
    ];
    for (query, ctype, body, status) in cases {
        let r = post_video(&http, &m, query, ctype, body).await;
        assert_eq!(r.status, status, "{query} {ctype}: {:?}", r.body);
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{query}"
        );
    }
    for path in [
        "/v1/videos/nope",
        "/v1/videos/nope/original",
        "/v1/videos/nope/hls/master.m3u8",
        "/v1/jobs/nope",
    ] {
        let r = get(&http, &m, path, None).await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        assert!(r.json()["error"].is_string(), "{path}");
    }
    let r = get(&http, &m, "/v1/videos/a%2F..%2Fb", None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);

    // A body cut short: the client promises 100 000 bytes, sends 5 000, hangs up.
    let mut raw = std::net::TcpStream::connect(m.gateway).expect("connect");
    write!(
        raw,
        "POST /v1/videos?name=cut.mp4 HTTP/1.1\r\nhost: x\r\ncontent-type: video/mp4\r\ncontent-length: 100000\r\n\r\n"
    )
    .expect("head");
    raw.write_all(&[1; 5000]).expect("part");
    drop(raw);
    rt::sleep(Duration::from_millis(500)).await;

    let list = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["videos"].as_array().map(Vec::len), Some(0));
    assert_eq!(originals(&data), 0);
    assert_eq!(temp_files(&data), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_upload_leaves_no_partial_blob() {
    let dir = std::env::temp_dir().join(format!("sg-crash-{}", rt::random_hex128()));
    let data = dir.join("data");
    let port = offset(2);
    let mut m = start(&data, port);
    let http = client();
    up(&http, &mut m).await;
    let mut raw = std::net::TcpStream::connect(m.gateway).expect("connect");
    write!(
        raw,
        "POST /v1/videos?name=big.mp4 HTTP/1.1\r\nhost: x\r\ncontent-type: video/mp4\r\ncontent-length: 4000000\r\n\r\n"
    )
    .expect("head");
    raw.write_all(&vec![1; 3 << 20]).expect("most of it");
    rt::sleep(Duration::from_millis(500)).await;
    assert!(temp_files(&data) > 0, "the upload is being written");
    m.proc.0.kill().expect("kill -9");
    let _ = m.proc.0.wait();
    assert_eq!(originals(&data), 0, "nothing visible after the crash");

    let mut m = start(&data, port);
    up(&http, &mut m).await;
    assert_eq!(
        temp_files(&data),
        0,
        "the partial file is gone after the restart"
    );
    let list = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(list.json()["videos"].as_array().map(Vec::len), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}
