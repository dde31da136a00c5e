//! What tests/cluster.rs runs on: the service processes with their logs,
//! an HTTP client for the gateway, and the tools from outside the project
//! (ffmpeg, the NATS server, the Python probes of `ci/probe/`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use streamgate::rt;
use streamgate::services::ServiceKind;
use streamgate_testkit::process::Process;

const DEPS: &str = "run ci/deps (it installs nats-server, ffmpeg and the Python venv)";

pub use streamgate_testkit::nats_url;

/// The Python of the venv `ci/deps` makes (or `STREAMGATE_PYTHON`).
pub fn python() -> PathBuf {
    std::env::var_os("STREAMGATE_PYTHON").map_or_else(
        || PathBuf::from("/var/cache/streamgate/pyenv/bin/python"),
        PathBuf::from,
    )
}

pub fn probe_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ci/probe")
        .join(name)
}

/// The NATS KV registry of the test's own `bucket` on the test server;
/// fails when NATS with JetStream does not answer.
pub async fn nats_registry(bucket: &str) -> std::sync::Arc<dyn streamgate::registry::Registry> {
    use streamgate::registry::nats_kv::{NatsKvRegistry, Options};
    let mut options = Options::new(nats_url());
    options.bucket = bucket.to_owned();
    let registry = NatsKvRegistry::connect(options).await.unwrap_or_else(|e| {
        panic!(
            "NATS with JetStream must answer at {} (run ci/deps): {e}",
            nats_url()
        )
    });
    std::sync::Arc::new(registry)
}

/// Fails (never skips) when a tool from outside is missing.
pub fn require_tools() {
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        ok(Command::new("ffmpeg").arg("-version")),
        "ffmpeg is missing: {DEPS}"
    );
    let py = python();
    assert!(
        ok(Command::new(&py).args(["-c", "import grpc, grpc_health.v1.health_pb2, nats"])),
        "{} cannot import grpcio, grpcio-health-checking and nats-py: {DEPS}, \
         or point STREAMGATE_PYTHON at a Python that has them",
        py.display()
    );
}

#[path = "../shared/clip.rs"]
mod clip;

/// A `seconds` long 320x240 H.264/AAC clip made by ffmpeg.
pub fn test_clip(dir: &Path, seconds: u32) -> Vec<u8> {
    clip::make(dir, seconds, 320, 240)
}

/// One service process, on a free port; killed when dropped (its log
/// printed if the test failed).
pub struct Proc {
    pub kind: ServiceKind,
    pub process: Process,
    /// Where it serves, as it said on stdout.
    pub addr: SocketAddr,
    /// Its admin listener (`/metrics`), as it said on stdout.
    pub admin: SocketAddr,
}

impl Proc {
    /// Starts instance `instance` of `kind`'s binary with `--port 0`, in
    /// `env`, its output in `dir`; returns once it serves.
    pub async fn start(kind: ServiceKind, instance: u32, env: &[(&str, &str)], dir: &Path) -> Self {
        let mut cmd = Command::new(binary(kind));
        cmd.args(["--port", "0"]).envs(env.iter().copied());
        let mut process = Process::spawn(&format!("{}-{instance}", kind.name()), cmd, dir);
        let addr = process.listening(kind.name()).await;
        let admin = process.admin().await;
        Self {
            kind,
            process,
            addr,
            admin,
        }
    }

    pub fn name(&self) -> String {
        format!("{}@{}", self.process.name(), self.addr)
    }
}

pub fn binary(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::ApiGateway => env!("CARGO_BIN_EXE_api-gateway"),
        ServiceKind::Upload => env!("CARGO_BIN_EXE_upload"),
        ServiceKind::Transcoder => env!("CARGO_BIN_EXE_transcoder"),
        ServiceKind::Streaming => env!("CARGO_BIN_EXE_streaming"),
        ServiceKind::Metadata => env!("CARGO_BIN_EXE_metadata"),
        ServiceKind::Cache => env!("CARGO_BIN_EXE_cache"),
        ServiceKind::Auth => env!("CARGO_BIN_EXE_auth"),
        ServiceKind::Worker => env!("CARGO_BIN_EXE_worker"),
        ServiceKind::Monitor => env!("CARGO_BIN_EXE_monitor"),
    }
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A gateway as a client sees it.
pub struct Gateway {
    pub http: Http,
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Gateway {
    /// `method path` with the token (if any), `headers` and `body`; `None`
    /// when the gateway could not be reached.
    pub async fn try_send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let res = rt::timeout(Duration::from_secs(20), self.http.request(req))
            .await
            .ok()?
            .ok()?;
        let (parts, body) = res.into_parts();
        Some(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.ok()?.to_bytes(),
        })
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_send(http::Method::GET, path, headers, Vec::new())
            .await
            .unwrap_or_else(|| panic!("the gateway {} answers GET {path}", self.addr))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.try_send(
            http::Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
        .unwrap_or_else(|| panic!("the gateway {} answers POST {path}", self.addr))
    }
}

/// Signs `creds` (`email`, `password`) up through `gw` (201).
pub async fn sign_up(gw: &Gateway, creds: &Value) {
    let signed = gw.post_json("/v1/auth/signup", creds).await;
    assert_eq!(signed.status, 201, "{}", signed.text());
}

/// Logs `creds` in through `gw` (200); the access token.
pub async fn log_in(gw: &Gateway, creds: &Value) -> String {
    let logged = gw.post_json("/v1/auth/login", creds).await;
    assert_eq!(logged.status, 200, "{}", logged.text());
    logged.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

pub async fn wait_ready(gw: &Gateway, id: &str) -> Value {
    for _ in 0..600 {
        let r = gw.get(&format!("/v1/videos/{id}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        match v["state"].as_str() {
            Some("ready") => return v,
            Some("failed") => panic!("transcoding failed: {v}"),
            _ => rt::sleep(Duration::from_millis(100)).await,
        }
    }
    let job = gw.get(&format!("/v1/videos/{id}/job"), &[]).await;
    panic!("not ready within 60 s; job: {}", job.text());
}

pub async fn wait_job_succeeded(gw: &Gateway, id: &str) -> Value {
    let mut job = Value::Null;
    for _ in 0..100 {
        let r = gw.get(&format!("/v1/videos/{id}/job"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        job = r.json();
        if job["state"] == "succeeded" {
            return job;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job did not succeed within 10 s: {job}");
}

/// The master playlist, the first media playlist and its first segment,
/// checked once.
pub async fn hls_paths(gw: &Gateway, id: &str) -> Vec<String> {
    let master_path = format!("/v1/videos/{id}/hls/master.m3u8");
    let master = gw.get(&master_path, &[]).await;
    assert_eq!(master.status, 200, "{}", master.text());
    let master = master.text();
    assert!(master.starts_with("#EXTM3U"), "{master}");
    let media = master
        .lines()
        .find(|l| l.ends_with("index.m3u8"))
        .unwrap_or_else(|| panic!("a media playlist in {master}"));
    let media_path = format!("/v1/videos/{id}/hls/{media}");
    let playlist = gw.get(&media_path, &[]).await;
    assert_eq!(playlist.status, 200, "{}", playlist.text());
    let playlist = playlist.text();
    let segment = playlist
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap_or_else(|| panic!("a segment in {playlist}"));
    let rendition = media.trim_end_matches("index.m3u8");
    let segment_path = format!("/v1/videos/{id}/hls/{rendition}{segment}");
    let seg = gw.get(&segment_path, &[]).await;
    assert_eq!(seg.status, 200, "{}", seg.text());
    assert_eq!(seg.body.first(), Some(&0x47), "an MPEG-TS segment");
    vec![master_path, media_path, segment_path]
}

/// GETs `path` until it answers 200 (at most 50 tries, 100 ms apart);
/// returns what the failed tries got (a status, or `no answer`).
pub async fn fetch_until_ok(gw: &Gateway, path: &str) -> Vec<String> {
    let mut failed = Vec::new();
    loop {
        match gw.try_send(http::Method::GET, path, &[], Vec::new()).await {
            Some(r) if r.status == 200 => return failed,
            other => {
                failed.push(other.map_or("no answer".to_owned(), |r| r.status.to_string()));
                assert!(
                    failed.len() < 50,
                    "{path} still failing after the SIGKILL: {failed:?}"
                );
                rt::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
