//! The monolith binary as a child process on free ports, driven over its
//! HTTP API by one signed-up user: what the tests that kill it, fill its
//! disk or count its children share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use streamgate::rt;
use streamgate_testkit::process::Process;

/// The HTTP client.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// An answer of the API.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is none).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A running monolith.
pub struct Monolith {
    /// The process.
    pub process: Process,
    /// Its HTTP API.
    pub api: Api,
    /// Its admin listener (`/metrics`, `/health`, `/ready`).
    pub admin: Api,
}

impl std::ops::Deref for Monolith {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The HTTP API of a gateway.
pub struct Api {
    /// The gateway's address.
    pub gateway: SocketAddr,
    /// The client.
    pub http: Http,
}

/// Starts the monolith on `data` (its data dir), logging under `logs`, with
/// the signing secret `secret` (so tokens outlive a restart) and `extra`
/// options; waits until its API answers.
pub async fn start(logs: &Path, data: &Path, secret: &Path, extra: &[&str]) -> Monolith {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0", "--data-dir"])
        .arg(data)
        .arg("--auth-secret-file")
        .arg(secret)
        .args(extra)
        .env("RUST_LOG", "warn,streamgate=info");
    let mut process = Process::spawn("monolith", cmd, logs);
    let gateway = process.listening("api-gateway").await;
    // Every service prints its line once the kernel is up; the last one
    // means all are serving.
    for kind in streamgate::services::ServiceKind::ALL {
        process.listening(kind.name()).await;
    }
    let admin = process.admin().await;
    Monolith {
        process,
        api: Api::new(gateway),
        admin: Api::new(admin),
    }
}

impl Monolith {
    /// The value of the metric line starting `name` on the admin
    /// listener's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let reply = self
            .admin
            .send("GET", "/metrics", "", "text/plain", Bytes::new())
            .await;
        String::from_utf8_lossy(&reply.body)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A 32-byte signing secret in `dir`, for `--auth-secret-file`.
pub fn secret(dir: &Path) -> PathBuf {
    let path = dir.join("auth.secret");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef0123456789abcdef").expect("secret");
    path
}

impl Api {
    /// The API at `gateway`.
    pub fn new(gateway: SocketAddr) -> Self {
        Self {
            gateway,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; `None` when no answer came (the process died).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        ctype: &str,
        body: impl Into<Bytes>,
    ) -> Option<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway))
            .header("content-type", ctype);
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body.into())).expect("a request");
        let res = rt::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .ok()?
            .ok()?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply {
            status: parts.status.as_u16(),
            body,
        })
    }

    /// Sends a request that must be answered.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        ctype: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, path, token, ctype, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    /// Signs `email` up (or, when taken, logs in); the access token.
    pub async fn user(&self, email: &str) -> String {
        let creds = json!({"email": email, "password": "correct horse battery"}).to_string();
        let signed = self
            .send(
                "POST",
                "/v1/auth/signup",
                "",
                "application/json",
                creds.clone(),
            )
            .await;
        let reply = if signed.status == 409 {
            self.send("POST", "/v1/auth/login", "", "application/json", creds)
                .await
        } else {
            signed
        };
        assert!(
            matches!(reply.status, 200 | 201),
            "sign-up: {} {:?}",
            reply.status,
            reply.json()
        );
        reply.json()["access_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// Uploads `bytes` as a video; the answer (`None`: none came).
    pub async fn upload(&self, token: &str, bytes: Vec<u8>) -> Option<Reply> {
        self.try_send(
            "POST",
            "/v1/videos?name=clip.mp4&title=clip",
            token,
            "video/mp4",
            bytes,
        )
        .await
    }
}

/// A value of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}
