//! The video pipeline end to end, as a user meets it: the `streamgate
//! monolith` binary on loopback, a small video made with ffmpeg uploaded
//! through the gateway, transcoded, then read back as a byte range of the
//! original and as HLS. Bad uploads get 4xx with a body and store nothing;
//! a crash in the middle of an upload leaves no blob behind. Every `/v1/`
//! route but the account routes wants a bearer token: the tests sign up
//! first; missing, garbage, forged or expired tokens get a JSON 401, and no
//! password reaches the process's log.
#![cfg(not(madsim))]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use streamgate::rt;
use streamgate_testkit::process::Process;
use streamgate_testkit::scratch::Scratch;

struct Monolith {
    proc: Process,
    gateway: SocketAddr,
    /// Its admin listener.
    admin: SocketAddr,
    /// The bearer token sent with every request, once signed up.
    token: Option<String>,
}

const MAX_UPLOAD: u64 = 8 << 20;
const PASSWORD: &str = "pipeline-pa55word";

async fn start(data: &Path) -> Monolith {
    start_with(data, "warn", &[]).await
}

/// The monolith on free ports (`--port 0`) with `RUST_LOG=log` and `extra`
/// arguments, once its gateway serves; its output goes to files beside
/// `data` (appended to when it restarts), printed if the test fails.
async fn start_with(data: &Path, log: &str, extra: &[&std::ffi::OsStr]) -> Monolith {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0"])
        .arg("--data-dir")
        .arg(data)
        .args(["--max-upload-bytes", &MAX_UPLOAD.to_string()])
        .args(extra)
        .env("RUST_LOG", log);
    let dir = data.parent().expect("data lives in the test's dir");
    let mut proc = Process::spawn("monolith", cmd, dir);
    let gateway = proc.listening("api-gateway").await;
    let admin = proc.admin().await;
    Monolith {
        proc,
        gateway,
        admin,
        token: None,
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

/// `req` with the monolith's bearer token, if it has one.
fn authorized(m: &Monolith, req: http::request::Builder) -> http::request::Builder {
    match &m.token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    }
}

async fn get(http: &Http, m: &Monolith, path: &str, range: Option<&str>) -> Reply {
    let mut req = authorized(m, http::Request::get(format!("http://{}{path}", m.gateway)));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    call(http, req.body(Full::default()).expect("request")).await
}

async fn post_video(http: &Http, m: &Monolith, query: &str, ctype: &str, body: Vec<u8>) -> Reply {
    let req = authorized(
        m,
        http::Request::post(format!("http://{}/v1/videos?{query}", m.gateway)),
    )
    .header("content-type", ctype)
    .body(Full::new(Bytes::from(body)))
    .expect("request");
    call(http, req).await
}

async fn post_json(http: &Http, m: &Monolith, path: &str, body: &Value) -> Reply {
    let req = http::Request::post(format!("http://{}{path}", m.gateway))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    call(http, req).await
}

/// Signs up `email` and logs in; the monolith's requests then carry the
/// access token. Returns the user id.
async fn sign_in(http: &Http, m: &mut Monolith, email: &str) -> String {
    let creds = serde_json::json!({"email": email, "password": PASSWORD});
    let signed = post_json(http, m, "/v1/auth/signup", &creds).await;
    assert_eq!(signed.status, 201, "{:?}", signed.body);
    let logged = post_json(http, m, "/v1/auth/login", &creds).await;
    assert_eq!(logged.status, 200, "{:?}", logged.body);
    let v = logged.json();
    assert_eq!(v["user_id"], signed.json()["user_id"]);
    m.token = Some(v["access_token"].as_str().expect("access_token").to_owned());
    v["user_id"].as_str().expect("user_id").to_owned()
}

#[path = "shared/clip.rs"]
mod clip;

/// A `seconds` long 640x480 H.264/AAC clip made by ffmpeg (which the test
/// needs: CI installs it).
fn test_video(dir: &Path, seconds: u32) -> Vec<u8> {
    clip::make(dir, seconds, 640, 480)
}

fn originals(data: &Path) -> usize {
    std::fs::read_dir(data.join("blobs/originals")).map_or(0, Iterator::count)
}

fn temp_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("tmp")).map_or(0, Iterator::count)
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
    let scratch = Scratch::new("pipeline");
    let dir = scratch.path();
    let clip = test_video(dir, 4);
    let mut m = start(&dir.join("data")).await;
    let http = client();
    let user = sign_in(&http, &mut m, "viewer@example.com").await;

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
    assert_eq!(video["owner_id"], user.as_str(), "the uploader owns it");
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

    // The thumbnail ffmpeg made: a JPEG (starts with the SOI marker).
    let thumb = get(&http, &m, &format!("/v1/videos/{id}/thumbnail.jpg"), None).await;
    assert_eq!(thumb.status, 200, "{:?}", thumb.body);
    assert_eq!(thumb.body.get(..2), Some(&[0xff, 0xd8][..]), "a JPEG");

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_with_a_body_and_store_nothing() {
    let scratch = Scratch::new("pipeline-bad");
    let data = scratch.path().join("data");
    let mut m = start(&data).await;
    let http = client();
    let token = {
        sign_in(&http, &mut m, "bad@example.com").await;
        m.token.clone().expect("token")
    };
    let small = vec![7u8; 1000];
    // Too large by its Content-Length: refused before the body is read (a
    // raw socket, since an HTTP client writing the body sees the close).
    let mut raw = std::net::TcpStream::connect(m.gateway).expect("connect");
    write!(
        raw,
        "POST /v1/videos?name=big.mp4 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: video/mp4\r\ncontent-length: {}\r\n\r\n",
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
        "POST /v1/videos?name=cut.mp4 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: video/mp4\r\ncontent-length: 100000\r\n\r\n"
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_upload_leaves_no_partial_blob() {
    let scratch = Scratch::new("pipeline-crash");
    let data = scratch.path().join("data");
    let mut m = start(&data).await;
    let http = client();
    sign_in(&http, &mut m, "crash@example.com").await;
    let token = m.token.clone().expect("token");
    let mut raw = std::net::TcpStream::connect(m.gateway).expect("connect");
    write!(
        raw,
        "POST /v1/videos?name=big.mp4 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: video/mp4\r\ncontent-length: 4000000\r\n\r\n"
    )
    .expect("head");
    raw.write_all(&vec![1; 3 << 20]).expect("most of it");
    rt::sleep(Duration::from_millis(500)).await;
    assert!(temp_files(&data) > 0, "the upload is being written");
    m.proc.kill();
    assert_eq!(originals(&data), 0, "nothing visible after the crash");

    let mut m = start(&data).await;
    // The monolith draws a fresh signing secret at start: the old token is
    // void, but the account is kept.
    assert_eq!(get(&http, &m, "/v1/videos", None).await.status, 401);
    m.token = Some(token);
    assert_eq!(get(&http, &m, "/v1/videos", None).await.status, 401);
    let creds = serde_json::json!({"email": "crash@example.com", "password": PASSWORD});
    let again = post_json(&http, &m, "/v1/auth/login", &creds).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    m.token = Some(
        again.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned(),
    );
    assert_eq!(
        temp_files(&data),
        0,
        "the partial file is gone after the restart"
    );
    let list = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(list.json()["videos"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_the_bearer_rule() {
    use streamgate::services::auth::Secret;
    use streamgate::services::auth::token::{ACCESS_TTL, Kind, Tokens};

    let scratch = Scratch::new("pipeline-auth");
    let dir = scratch.path();
    let data = dir.join("data");
    let secret = format!("{}{}", rt::random_hex128(), rt::random_hex128());
    let secret_file = dir.join("auth.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("secret file");
    let mut m = start_with(
        &data,
        "info,streamgate=debug",
        &["--auth-secret-file".as_ref(), secret_file.as_os_str()],
    )
    .await;
    let http = client();

    // Open routes stay open.
    assert_eq!(get(&http, &m, "/health", None).await.status, 200);
    // Metrics are on the admin listener only, not on the public port.
    assert_eq!(get(&http, &m, "/metrics", None).await.status, 404);
    let admin = |path: &str| {
        let req = http::Request::get(format!("http://{}{path}", m.admin));
        call(&http, req.body(Full::default()).expect("request"))
    };
    let metrics = admin("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("# TYPE http_server_request_duration_seconds histogram"),
        "{:?}",
        metrics.body
    );
    assert_eq!(admin("/health").await.status, 200);
    assert_eq!(admin("/ready").await.status, 200);

    // No token, garbage, forged, expired, a refresh token: JSON 401s.
    let unauthorized = |r: &Reply, what: &str| {
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{what}");
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}"
        );
    };
    unauthorized(&get(&http, &m, "/v1/videos", None).await, "no token");
    let user = sign_in(&http, &mut m, "owner@example.com").await;
    let good = m.token.clone().expect("token");
    let ours = Tokens::new(&Secret::new(secret.as_bytes().to_vec()));
    let now = rt::unix_ms();
    let expired = ours
        .issue(&user, Kind::Access, vec![], ACCESS_TTL, now - 3_600_000)
        .expect("mint")
        .token;
    let forged = Tokens::new(&Secret::new(vec![3u8; 32]))
        .issue(&user, Kind::Access, vec![], ACCESS_TTL, now)
        .expect("mint")
        .token;
    let minted = ours
        .issue(&user, Kind::Access, vec![], ACCESS_TTL, now)
        .expect("mint")
        .token;
    for (token, what) in [
        ("garbage".to_owned(), "garbage"),
        (expired, "expired"),
        (forged, "forged"),
    ] {
        m.token = Some(token);
        unauthorized(&get(&http, &m, "/v1/videos", None).await, what);
        let r = post_video(&http, &m, "name=a.mp4", "video/mp4", vec![1; 100]).await;
        unauthorized(&r, what);
    }
    // The secret from --auth-secret-file signs the service's tokens.
    m.token = Some(minted);
    assert_eq!(get(&http, &m, "/v1/videos", None).await.status, 200);
    m.token = Some(good);
    let listed = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);

    // A taken email (any case): 409. Bad passwords: 401, same words as an
    // unknown email.
    let taken = serde_json::json!({"email": "OWNER@example.com", "password": "another-pa55word"});
    let r = post_json(&http, &m, "/v1/auth/signup", &taken).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.json()["error"].is_string());
    let wrong = serde_json::json!({"email": "owner@example.com", "password": "wrong-pa55word"});
    let unknown = serde_json::json!({"email": "nobody@example.com", "password": PASSWORD});
    let r1 = post_json(&http, &m, "/v1/auth/login", &wrong).await;
    let r2 = post_json(&http, &m, "/v1/auth/login", &unknown).await;
    unauthorized(&r1, "wrong password");
    assert_eq!(r1.json(), r2.json(), "which part was wrong is never said");

    // Logging out revokes the access token at once and, when sent, the
    // session's refresh token; another user's refresh token is refused.
    let creds = serde_json::json!({"email": "owner@example.com", "password": PASSWORD});
    let session = post_json(&http, &m, "/v1/auth/login", &creds).await.json();
    let session_token = session["access_token"].as_str().expect("access").to_owned();
    let logout = |token: &str, body: serde_json::Value| {
        http::Request::post(format!("http://{}/v1/auth/logout", m.gateway))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    };
    let saved = m.token.replace(session_token.clone());
    assert_eq!(
        get(&http, &m, "/v1/videos", None).await.status,
        200,
        "cached as valid"
    );
    let foreign = serde_json::json!({"refresh_token": "not-a-token"});
    let r = call(&http, logout(&session_token, foreign)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let body = serde_json::json!({"refresh_token": session["refresh_token"]});
    let r = call(&http, logout(&session_token, body)).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    unauthorized(&get(&http, &m, "/v1/videos", None).await, "logged out");
    let spent = serde_json::json!({"refresh_token": session["refresh_token"]});
    unauthorized(
        &post_json(&http, &m, "/v1/auth/refresh", &spent).await,
        "the logged-out session's refresh token",
    );
    unauthorized(
        &call(&http, logout(&session_token, serde_json::json!({}))).await,
        "logging out twice",
    );
    m.token = saved;
    assert_eq!(
        get(&http, &m, "/v1/videos", None).await.status,
        200,
        "other sessions stay"
    );

    // Refresh rotates; the spent refresh token is refused.
    let creds = serde_json::json!({"email": "owner@example.com", "password": PASSWORD});
    let pair = post_json(&http, &m, "/v1/auth/login", &creds).await.json();
    let spend = serde_json::json!({"refresh_token": pair["refresh_token"]});
    let r = post_json(&http, &m, "/v1/auth/refresh", &spend).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.json()["access_token"].is_string());
    unauthorized(
        &post_json(&http, &m, "/v1/auth/refresh", &spend).await,
        "reuse",
    );

    // The uploader owns the upload.
    let created = post_video(
        &http,
        &m,
        "name=a.mp4&title=mine",
        "video/mp4",
        vec![9; 2000],
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["video_id"].as_str().expect("id").to_owned();
    let video = get(&http, &m, &format!("/v1/videos/{id}"), None).await;
    assert_eq!(video.json()["owner_id"], user.as_str());

    // The lock-out follows the connection's address (the transport hands
    // the peer to the gateway): from 127.0.0.2, forging the owner's address
    // in X-Forwarded-For, 5 wrong passwords and then 429; the owner, from
    // 127.0.0.1, still gets in.
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some([127, 0, 0, 2].into()));
    let attacker = Client::builder(TokioExecutor::new()).build(connector);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let req = http::Request::post(format!("http://{}/v1/auth/login", m.gateway))
            .header("content-type", "application/json")
            .header("x-forwarded-for", "127.0.0.1")
            .body(Full::new(Bytes::from(wrong.to_string())))
            .expect("request");
        statuses.push(call(&attacker, req).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let r = post_json(&http, &m, "/v1/auth/login", &creds).await;
    assert_eq!(r.status, 200, "the owner is not locked out: {:?}", r.body);

    // Neither the password nor a token reaches the log.
    m.proc.kill();
    let log = m.proc.log();
    assert!(log.contains("signed up"), "the log is on: {log}");
    for secret_text in [PASSWORD, "wrong-pa55word", "another-pa55word", &secret] {
        assert!(!log.contains(secret_text), "{secret_text} in the log");
    }
}

/// `GET path` with no `Authorization` header at all.
async fn anonymous_get(http: &Http, m: &Monolith, path: &str, range: Option<&str>) -> Reply {
    let mut req = http::Request::get(format!("http://{}{path}", m.gateway));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    call(http, req.body(Full::default()).expect("request")).await
}

/// `method path` with `headers` and no `Authorization`.
async fn anonymous_with(
    http: &Http,
    m: &Monolith,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", m.gateway));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    call(http, req.body(Full::default()).expect("request")).await
}

/// `POST /v1/videos/{id}/playback` as the monolith's user with `body`.
async fn playback_urls(http: &Http, m: &Monolith, id: &str, body: &str) -> Reply {
    let req = authorized(
        m,
        http::Request::post(format!("http://{}/v1/videos/{id}/playback", m.gateway)),
    )
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_owned())))
    .expect("request");
    call(http, req).await
}

/// The URI lines of a playlist resolved against its own path `base` (as
/// a player resolves them: relative to the playlist, query dropped).
fn resolved(base: &str, playlist: &str) -> Vec<String> {
    let dir = &base[..=base.rfind('/').expect("an absolute path")];
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{dir}{l}"))
        .collect()
}

fn assert_refused_403(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains(what), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_plays_through_signed_urls_with_no_header() {
    let scratch = Scratch::new("signed");
    let dir = scratch.path();
    let clip = test_video(dir, 4);
    let mut m = start(&dir.join("data")).await;
    let http = client();
    sign_in(&http, &mut m, "owner@example.com").await;
    let created = post_video(&http, &m, "name=clip.mp4", "video/mp4", clip.clone()).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["video_id"].as_str().expect("id").to_owned();
    wait_ready(&http, &m, &id).await;

    let granted = playback_urls(&http, &m, &id, "").await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    assert_eq!(granted.headers["cache-control"], "private, no-store");
    let urls = granted.json();
    let (master_url, original_url, thumb_url) = (
        urls["master"].as_str().expect("master").to_owned(),
        urls["original"].as_str().expect("original").to_owned(),
        urls["thumbnail"].as_str().expect("thumbnail").to_owned(),
    );
    let expires = urls["expires_at_ms"].as_u64().expect("expiry");
    let now = rt::unix_ms();
    assert!(
        (now + 3 * 3600 * 1000..=now + 5 * 3600 * 1000).contains(&expires),
        "a few hours by default: {expires} vs now {now}"
    );

    // Everything a player derives from the master plays with no header.
    let master = anonymous_get(&http, &m, &master_url, None).await;
    assert_eq!(master.status, 200, "{:?}", master.body);
    let master_text = String::from_utf8(master.body.to_vec()).expect("utf-8");
    let playlists = resolved(&master_url, &master_text);
    assert_eq!(playlists.len(), 2, "{master_text}");
    let mut segments = 0;
    for playlist_url in &playlists {
        let playlist = anonymous_get(&http, &m, playlist_url, None).await;
        assert_eq!(playlist.status, 200, "{playlist_url}: {:?}", playlist.body);
        let text = String::from_utf8(playlist.body.to_vec()).expect("utf-8");
        for segment_url in resolved(playlist_url, &text) {
            let segment = anonymous_get(&http, &m, &segment_url, None).await;
            assert_eq!(segment.status, 200, "{segment_url}: {:?}", segment.body);
            assert_eq!(segment.body.first(), Some(&0x47), "MPEG-TS: {segment_url}");
            segments += 1;
        }
    }
    assert!(segments >= 2, "{segments} segments");
    let part = anonymous_get(&http, &m, &original_url, Some("bytes=100-1099")).await;
    assert_eq!(part.status, 206, "{:?}", part.body);
    assert_eq!(&part.body[..], &clip[100..1100]);
    let whole = anonymous_get(&http, &m, &original_url, None).await;
    assert_eq!(&whole.body[..], &clip[..]);
    let thumb = anonymous_get(&http, &m, &thumb_url, None).await;
    assert_eq!(thumb.body.get(..2), Some(&[0xff, 0xd8][..]), "a JPEG");

    // HTTP caching (RFC 9110, 9111) on the shared-disk path: validators,
    // 304, If-Range, HEAD, the cache rules of each kind.
    assert_eq!(master.headers["cache-control"], "private, max-age=60");
    let first_playlist = anonymous_get(&http, &m, &playlists[0], None).await;
    let first_playlist = std::str::from_utf8(&first_playlist.body).expect("utf-8");
    let segment_url = resolved(&playlists[0], first_playlist).remove(0);
    for url in [&segment_url, &original_url, &thumb_url] {
        let first = anonymous_get(&http, &m, url, None).await;
        assert_eq!(
            first.headers["cache-control"], "private, max-age=31536000, immutable",
            "{url}"
        );
        let tag = first.headers["etag"].to_str().expect("ascii").to_owned();
        let again = anonymous_with(&http, &m, "GET", url, &[("if-none-match", &tag)]).await;
        assert_eq!(again.status, 304, "{url}");
        assert!(again.body.is_empty());
        assert_eq!(again.headers["etag"], tag.as_str());
        let head = anonymous_with(&http, &m, "HEAD", url, &[]).await;
        assert_eq!(head.status, 200, "{url}");
        assert!(head.body.is_empty());
        assert_eq!(
            head.headers["content-length"],
            first.body.len().to_string().as_str()
        );
    }
    let tag = whole.headers["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    let kept = anonymous_with(
        &http,
        &m,
        "GET",
        &original_url,
        &[("range", "bytes=0-9"), ("if-range", &tag)],
    )
    .await;
    assert_eq!((kept.status, &kept.body[..]), (206, &clip[..10]));
    let stale = anonymous_with(
        &http,
        &m,
        "GET",
        &original_url,
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(stale.status, 200, "a stale If-Range gets the whole file");
    assert_eq!(stale.body.len(), clip.len());

    // ffmpeg, as an HLS client, resolves the same URLs itself.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(format!("http://{}{master_url}", m.gateway))
        .args(["-map", "0", "-c", "copy", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg could not play the signed master: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The grant opens its own video only: another id under it is forged.
    let grant = master_url
        .strip_prefix("/v1/play/")
        .and_then(|g| g.split('/').next())
        .expect("a grant in the path");
    let other = grant.replacen(&format!(".{id}."), ".another-video.", 1);
    assert_ne!(other, grant);
    let forged = anonymous_get(&http, &m, &format!("/v1/play/{other}/original"), None).await;
    assert_refused_403(&forged, "invalid signature");
    let cut = &grant[..grant.len() - 3];
    let truncated = anonymous_get(&http, &m, &format!("/v1/play/{cut}/thumbnail.jpg"), None).await;
    assert_refused_403(&truncated, "malformed");
    let trick = anonymous_get(&http, &m, "/v1/play/..%2F..%2Fetc/original", None).await;
    assert_refused_403(&trick, "malformed");
    // The bearer routes still want a token.
    let bare = anonymous_get(&http, &m, &format!("/v1/videos/{id}/original"), None).await;
    assert_eq!(bare.status, 401);

    // Bounded lifetimes; a short grant stops working when it expires.
    for bad in [r#"{"ttl_secs":0}"#, r#"{"ttl_secs":86401}"#, r#"{"ttl":5}"#] {
        let refused = playback_urls(&http, &m, &id, bad).await;
        assert_eq!(refused.status, 400, "{bad}: {:?}", refused.body);
    }
    let short = playback_urls(&http, &m, &id, r#"{"ttl_secs":1}"#).await;
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_thumb = short.json()["thumbnail"].as_str().expect("url").to_owned();
    assert_eq!(
        anonymous_get(&http, &m, &short_thumb, None).await.status,
        200
    );
    rt::sleep(Duration::from_millis(1200)).await;
    let expired = anonymous_get(&http, &m, &short_thumb, None).await;
    assert_refused_403(&expired, "expired");

    // A private video (the default) is not there for another user: no
    // URLs, no media, not listed; the answer is an unknown id's.
    let owner = m.token.clone();
    sign_in(&http, &mut m, "someone-else@example.com").await;
    let not_owner = playback_urls(&http, &m, &id, "").await;
    assert_eq!(not_owner.status, 404, "{:?}", not_owner.body);
    assert_eq!(not_owner.json()["error"], format!("no video {id}"));
    let missing = playback_urls(&http, &m, "no-such-video", "").await;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    let theirs = get(&http, &m, &format!("/v1/videos/{id}/original"), None).await;
    assert_eq!(theirs.status, 404);
    let listed = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(listed.json()["videos"], serde_json::json!([]));

    // Uploaded public, a video plays with no credential at all, its media
    // cacheable by anyone, and is listed to every signed-in user.
    let someone = std::mem::replace(&mut m.token, owner);
    let public = post_video(
        &http,
        &m,
        "name=open.mp4&visibility=public",
        "video/mp4",
        clip.clone(),
    )
    .await;
    assert_eq!(public.status, 201, "{:?}", public.body);
    let open = public.json()["video_id"].as_str().expect("id").to_owned();
    let ready = wait_ready(&http, &m, &open).await;
    assert_eq!(ready["visibility"], "public");
    let master = anonymous_get(
        &http,
        &m,
        &format!("/v1/videos/{open}/hls/master.m3u8"),
        None,
    )
    .await;
    assert_eq!(master.status, 200, "{:?}", master.body);
    assert_eq!(master.headers["cache-control"], "public, max-age=60");
    let original = anonymous_get(&http, &m, &format!("/v1/videos/{open}/original"), None).await;
    assert_eq!((original.status, original.body.len()), (200, clip.len()));
    assert_eq!(
        original.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let modified = original.headers["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let again = anonymous_with(
        &http,
        &m,
        "GET",
        &format!("/v1/videos/{open}/original"),
        &[("if-modified-since", &modified)],
    )
    .await;
    assert_eq!(again.status, 304);
    m.token = someone;
    let listed = get(&http, &m, "/v1/videos", None).await;
    assert_eq!(listed.json()["videos"][0]["id"], open.as_str());
    assert_eq!(listed.json()["videos"].as_array().map(Vec::len), Some(1));
}

/// `method url` (absolute) with `headers` and no `Authorization`.
async fn fetch(http: &Http, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    call(http, req.body(Full::default()).expect("request")).await
}

/// A free port on loopback (bound, then let go: the media port's address
/// must be known before the start, for `--media-url`).
fn free_port() -> u16 {
    #[allow(clippy::disallowed_methods)] // a test picking a port, not service code
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Issue #19 item 5: with `--media-listen` and `--media-url`, signed
/// playback URLs point at the streaming service's media port, which sends
/// originals and segments from its own files (sendfile) with no gateway in
/// the byte path; everything a player derives from the master plays there
/// with no header, with the same caching, CORS and refusals as on the
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_play_from_the_streaming_media_port() {
    let scratch = Scratch::new("media-port");
    let dir = scratch.path();
    let clip = test_video(dir, 4);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let extra: Vec<std::ffi::OsString> = [
        "--media-listen",
        &listen,
        "--media-url",
        &base,
        "--http-cors-origins",
        "https://player.example",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsString::as_os_str).collect();
    let mut m = start_with(&dir.join("data"), "warn", &extra).await;
    let http = client();
    sign_in(&http, &mut m, "media@example.com").await;
    let created = post_video(&http, &m, "name=clip.mp4", "video/mp4", clip.clone()).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["video_id"].as_str().expect("id").to_owned();
    wait_ready(&http, &m, &id).await;

    let urls = playback_urls(&http, &m, &id, "").await.json();
    let url = |name: &str| urls[name].as_str().expect(name).to_owned();
    let (master_url, original_url, thumb_url) = (url("master"), url("original"), url("thumbnail"));
    for u in [&master_url, &original_url, &thumb_url] {
        assert!(u.starts_with(&format!("{base}/v1/play/")), "{u}");
    }

    // Everything a player derives from the master, from the media port.
    let master = fetch(&http, "GET", &master_url, &[]).await;
    assert_eq!(master.status, 200, "{:?}", master.body);
    assert_eq!(master.headers["cache-control"], "private, max-age=60");
    let master_text = String::from_utf8(master.body.to_vec()).expect("utf-8");
    let playlists = resolved(&master_url, &master_text);
    assert_eq!(playlists.len(), 2, "{master_text}");
    let mut segment_urls = Vec::new();
    for playlist_url in &playlists {
        let playlist = fetch(&http, "GET", playlist_url, &[]).await;
        assert_eq!(playlist.status, 200, "{playlist_url}: {:?}", playlist.body);
        let text = String::from_utf8(playlist.body.to_vec()).expect("utf-8");
        segment_urls.extend(resolved(playlist_url, &text));
    }
    assert!(segment_urls.len() >= 2, "{segment_urls:?}");
    for segment_url in &segment_urls {
        let segment = fetch(&http, "GET", segment_url, &[]).await;
        assert_eq!(segment.status, 200, "{segment_url}: {:?}", segment.body);
        assert_eq!(segment.body.first(), Some(&0x47), "MPEG-TS: {segment_url}");
        assert_eq!(
            segment.headers["content-length"],
            segment.body.len().to_string().as_str()
        );
        // The same bytes as the gateway sends for the same grant.
        let path = segment_url.strip_prefix(&base).expect("on the media port");
        let via_gateway = anonymous_get(&http, &m, path, None).await;
        assert_eq!(via_gateway.body, segment.body, "{segment_url}");
    }
    let part = fetch(&http, "GET", &original_url, &[("range", "bytes=100-1099")]).await;
    assert_eq!(part.status, 206, "{:?}", part.body);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-1099/{}", clip.len()).as_str()
    );
    assert_eq!(&part.body[..], &clip[100..1100]);
    let tail = fetch(&http, "GET", &original_url, &[("range", "bytes=-10")]).await;
    assert_eq!(
        (tail.status, &tail.body[..]),
        (206, &clip[clip.len() - 10..])
    );
    let whole = fetch(&http, "GET", &original_url, &[]).await;
    assert_eq!((whole.status, &whole.body[..]), (200, &clip[..]));
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    let beyond = format!("bytes={}-", clip.len() + 5);
    let unsatisfiable = fetch(&http, "GET", &original_url, &[("range", &beyond)]).await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.headers["content-range"],
        format!("bytes */{}", clip.len()).as_str()
    );
    let thumb = fetch(&http, "GET", &thumb_url, &[]).await;
    assert_eq!(thumb.body.get(..2), Some(&[0xff, 0xd8][..]), "a JPEG");

    // HTTP caching (RFC 9110, 9111): validators, 304, HEAD, If-Range.
    for u in [&segment_urls[0], &original_url, &thumb_url] {
        let first = fetch(&http, "GET", u, &[]).await;
        assert_eq!(
            first.headers["cache-control"], "private, max-age=31536000, immutable",
            "{u}"
        );
        let tag = first.headers["etag"].to_str().expect("ascii").to_owned();
        let again = fetch(&http, "GET", u, &[("if-none-match", &tag)]).await;
        assert_eq!((again.status, again.body.len()), (304, 0), "{u}");
        let head = fetch(&http, "HEAD", u, &[]).await;
        assert_eq!((head.status, head.body.len()), (200, 0), "{u}");
        assert_eq!(
            head.headers["content-length"],
            first.body.len().to_string().as_str()
        );
    }
    let tag = whole.headers["etag"].to_str().expect("ascii").to_owned();
    let kept = fetch(
        &http,
        "GET",
        &original_url,
        &[("range", "bytes=0-9"), ("if-range", &tag)],
    )
    .await;
    assert_eq!((kept.status, &kept.body[..]), (206, &clip[..10]));
    let stale = fetch(
        &http,
        "GET",
        &original_url,
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!((stale.status, stale.body.len()), (200, clip.len()));

    // CORS for web players: the preflight and the answer's headers.
    let preflight = fetch(
        &http,
        "OPTIONS",
        &master_url,
        &[
            ("origin", "https://player.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ],
    )
    .await;
    assert!(preflight.status < 300, "{}", preflight.status);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://player.example"
    );
    let cors = fetch(
        &http,
        "GET",
        &thumb_url,
        &[("origin", "https://player.example")],
    )
    .await;
    assert_eq!(
        cors.headers["access-control-allow-origin"],
        "https://player.example"
    );
    let other = fetch(
        &http,
        "GET",
        &thumb_url,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(!other.headers.contains_key("access-control-allow-origin"));

    // ffmpeg, as an HLS client, plays the master from the media port.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", &master_url])
        .args(["-map", "0", "-c", "copy", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg could not play from the media port: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refusals: a forged or truncated grant, another route, a bad request.
    let grant = master_url
        .strip_prefix(&format!("{base}/v1/play/"))
        .and_then(|g| g.split('/').next())
        .expect("a grant in the path")
        .to_owned();
    let other_grant = grant.replacen(&format!(".{id}."), ".another-video.", 1);
    let forged = fetch(
        &http,
        "GET",
        &format!("{base}/v1/play/{other_grant}/original"),
        &[],
    )
    .await;
    assert_refused_403(&forged, "invalid signature");
    let cut = &grant[..grant.len() - 3];
    let truncated = fetch(&http, "GET", &format!("{base}/v1/play/{cut}/original"), &[]).await;
    assert_refused_403(&truncated, "malformed");
    let api = fetch(
        &http,
        "GET",
        &format!("{base}/v1/videos/{id}/original"),
        &[],
    )
    .await;
    assert_eq!(api.status, 404, "only signed URLs are served there");
    assert!(api.json()["error"].is_string());
    let posted = fetch(&http, "POST", &original_url, &[]).await;
    assert_eq!(posted.status, 405);
    assert!(posted.json()["error"].is_string());
    let mut raw = std::net::TcpStream::connect(&listen).expect("connect");
    let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(64 << 10));
    let _ = raw.write_all(huge.as_bytes());
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");

    // A grant that expires stops working on the media port too.
    let short = playback_urls(&http, &m, &id, r#"{"ttl_secs":1}"#)
        .await
        .json();
    let short_thumb = short["thumbnail"].as_str().expect("url").to_owned();
    assert_eq!(fetch(&http, "GET", &short_thumb, &[]).await.status, 200);
    rt::sleep(Duration::from_millis(1200)).await;
    assert_refused_403(&fetch(&http, "GET", &short_thumb, &[]).await, "expired");
}
