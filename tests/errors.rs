//! The error discipline end to end, on all nine services in one process
//! over real sockets: an internal failure reaches a client as `internal
//! error (request id X)`, X the id its response's `x-request-id` carries,
//! over gRPC and HTTP alike, and never the store's own text; a JSON body
//! refusal names the field or the problem, never a Rust type; a failed
//! transcode tells users a short reason, not ffprobe's stderr or the blob
//! key (issue #23, item 6).
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngCore as _;
use serde_json::{Value, json};
use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{Kernel, Plugin};
use streamgate::proto::ListVideosRequest;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use streamgate_testkit::scratch::Scratch;

type Http = Client<HttpConnector, Full<Bytes>>;

struct Node {
    kernel: Kernel,
    data: Scratch,
    gateway: SocketAddr,
    http: Http,
    /// A signed-up user's access token.
    token: String,
}

struct Reply {
    status: u16,
    request_id: String,
    json: Value,
}

/// All nine services on a data dir of their own (SQLite files, the ffmpeg
/// transcoder), and a user signed up through the API.
async fn start() -> Node {
    let data = Scratch::new("errors");
    let plugins = ServiceKind::ALL
        .iter()
        .map(|&kind| {
            let common = Common {
                data_dir: Some(data.path().to_owned()),
                ..Common::ephemeral()
            };
            Box::new(ServicePlugin::new(common, ServiceConfig::new(kind))) as Box<dyn Plugin>
        })
        .collect();
    let kernel = Kernel::start(
        Arc::new(MemoryBus::new()),
        Arc::new(MemoryRegistry::new()),
        plugins,
    )
    .await
    .expect("kernel starts");
    let info = kernel
        .registrations()
        .iter()
        .find(|i| i.name == ServiceKind::ApiGateway.name())
        .expect("the gateway is registered");
    let gateway = SocketAddr::new(info.address.parse().expect("an address"), info.port);
    let mut node = Node {
        kernel,
        data,
        gateway,
        http: Client::builder(TokioExecutor::new()).build_http(),
        token: String::new(),
    };
    let creds = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let signed = node
        .send(
            "POST",
            "/v1/auth/signup",
            "application/json",
            creds.to_string(),
        )
        .await;
    assert_eq!(signed.status, 201, "{}", signed.json);
    node.token = signed.json["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    node
}

impl Node {
    async fn send(&self, method: &str, path: &str, ctype: &str, body: impl Into<Bytes>) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway))
            .header("content-type", ctype);
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let req = req.body(Full::new(body.into())).expect("a request");
        let res = self.http.request(req).await.expect("the gateway answers");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("a body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            json: serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&body))),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, "application/json", Bytes::new())
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_failure_shows_only_its_request_id() {
    let node = start().await;
    assert_eq!(node.get("/v1/videos").await.status, 200);
    // The catalog's table goes away underneath the metadata service: every
    // read fails inside SQLite ("no such table: videos").
    let db = rusqlite::Connection::open(node.data.path().join("metadata.sqlite"))
        .expect("the catalog file");
    db.execute_batch("DROP TABLE videos").expect("dropped");

    // gRPC, straight to metadata.
    let mut metadata = node.kernel.pool().metadata().await.expect("a client");
    let status = metadata
        .list_videos(ListVideosRequest::default())
        .await
        .expect_err("the store fails");
    let id = status
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the response names its request id")
        .to_owned();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(
        status.message(),
        format!("internal error (request id {id})"),
        "the id the response carries, and nothing of SQLite"
    );

    // HTTP, through the gateway.
    let reply = node.get("/v1/videos").await;
    assert_eq!(reply.status, 500, "{}", reply.json);
    assert!(!reply.request_id.is_empty(), "x-request-id on the response");
    assert_eq!(
        reply.json,
        json!({"error": format!("internal error (request id {})", reply.request_id)})
    );
    assert!(!reply.json.to_string().contains("no such table"));
    node.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_refusals_name_the_problem_not_a_rust_type() {
    let node = start().await;
    let cases = [
        (
            r#"["ada@example.com","pw","Ada"]"#,
            "body: expected a JSON object",
        ),
        ("{\"email\": ", "body: invalid JSON at line 1 column 10"),
        (
            r#"{"email":"b@example.com"}"#,
            "body: missing field `password`",
        ),
        (
            r#"{"email":"b@example.com","password":7}"#,
            "body: password: expected a string, got an integer",
        ),
    ];
    for (body, want) in cases {
        for path in ["/v1/auth/signup", "/v1/auth/login"] {
            let reply = node.send("POST", path, "application/json", body).await;
            assert_eq!(reply.status, 400, "{path} {body}: {}", reply.json);
            let message = reply.json["error"].as_str().expect("an error message");
            assert_eq!(message, want, "{path} {body}");
            assert!(!message.contains("struct"), "{message}");
        }
    }
    let reply = node
        .send("PATCH", "/v1/videos/v1", "application/json", "[1]")
        .await;
    assert_eq!(
        (reply.status, &reply.json["error"]),
        (400, &json!("body: expected a JSON object"))
    );
    node.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transcode_says_why_in_short() {
    let node = start().await;
    // Fixed bytes that no demuxer reads (as in the ffmpeg engine's tests).
    let mut junk = vec![0u8; 64 << 10];
    <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7).fill_bytes(&mut junk);
    let uploaded = node
        .send("POST", "/v1/videos?name=junk.mp4", "video/mp4", junk)
        .await;
    assert_eq!(uploaded.status, 201, "{}", uploaded.json);
    let id = uploaded.json["video_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let said = "the file is not a video ffprobe can read";

    let mut video = Value::Null;
    for _ in 0..600 {
        video = node.get(&format!("/v1/videos/{id}")).await.json;
        if video["state"] == "failed" {
            break;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(video["state"], "failed", "{video}");
    assert_eq!(video["failure_reason"], said, "{video}");

    let mut job = Value::Null;
    for _ in 0..100 {
        job = node.get(&format!("/v1/videos/{id}/job")).await.json;
        if job["last_error"] != "" {
            break;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["last_error"], said, "{job}");
    // Neither names the blob nor quotes ffprobe (both go to the log).
    for reason in [&video["failure_reason"], &job["last_error"]] {
        let reason = reason.as_str().expect("a reason");
        assert!(
            !reason.contains("originals/") && !reason.contains("Invalid data"),
            "{reason}"
        );
    }
    node.kernel.shutdown().await;
}
