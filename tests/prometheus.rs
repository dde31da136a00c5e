//! A real Prometheus scrapes StreamGate: the monolith binary on free ports
//! (`--port 0`, its admin listener on a free port too, read from its
//! `admin <address>` line), Debian's `prometheus` scraping that admin
//! listener every second with a generated configuration, one upload and a
//! few 404s through the API; then Prometheus's HTTP API must show the
//! series with the right values: the HTTP duration histogram by route
//! template and status code (a 201 and two kinds of 404, the raw paths
//! nowhere), the uploaded bytes (the clip's exact size), the upload and
//! transcode durations, the process's resident memory. `promtool check
//! metrics` validates the exposition too.
//!
//! Needs `prometheus` and `promtool` (`ci/deps` installs Debian's package;
//! `PROMETHEUS_BIN` and `PROMTOOL_BIN` pick others) and ffmpeg; fails,
//! never skips, without them.
#![cfg(not(madsim))]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use streamgate::rt;
use streamgate_testkit::process::Process;

#[path = "shared/clip.rs"]
mod clip;
#[path = "shared/monolith.rs"]
mod monolith;

/// How long the series may take to show up in Prometheus (a scrape a
/// second; the transcode of a one-second clip takes a few).
const SERIES_TIMEOUT: Duration = Duration::from_secs(90);

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A port no one listens on now (Prometheus prints no address it bound, so
/// it cannot be given port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `promtool check metrics` on `text`: its verdict and output.
fn promtool_check(text: &str) -> (bool, String) {
    let promtool = tool("PROMTOOL_BIN", "promtool");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{promtool}: {e} (run ci/deps, which installs Debian's prometheus package)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the exposition");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Prometheus's answer to the instant query `query`: its result vector.
async fn query(prometheus: &monolith::Api, query: &str) -> Vec<Value> {
    let path = format!(
        "/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish()
    );
    let Some(reply) = prometheus
        .try_send("GET", &path, "", "", Bytes::new())
        .await
    else {
        return Vec::new();
    };
    let body = reply.json();
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `query` has a sample whose value passes `ok`; returns the
/// result. Panics with the last result and Prometheus's log past
/// [`SERIES_TIMEOUT`].
async fn wait_for(
    prometheus: &monolith::Api,
    server: &Process,
    query_text: &str,
    ok: impl Fn(f64) -> bool,
) -> Vec<Value> {
    let deadline = rt::now() + SERIES_TIMEOUT;
    loop {
        let result = query(prometheus, query_text).await;
        let values: Vec<f64> = result
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        if values.iter().any(|&v| ok(v)) {
            return result;
        }
        assert!(
            rt::now() < deadline,
            "no sample of {query_text} as expected within {SERIES_TIMEOUT:?}; last: {result:?}\n\
             prometheus:\n{}",
            server.tail(30)
        );
        rt::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let secret = monolith::secret(dir.path());
    let node = monolith::start(dir.path(), &data, &secret, &[]).await;
    let admin: SocketAddr = node.admin.gateway;
    assert!(
        admin.ip().is_loopback(),
        "the admin listener is on loopback by default"
    );

    // Prometheus, scraping the admin listener every second.
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: streamgate\n    scrape_interval: 1s\n    \
             scrape_timeout: 1s\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("the configuration");
    let mut cmd = Command::new(tool("PROMETHEUS_BIN", "prometheus"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"));
    // Spawning fails (and the test with it) when the binary is missing.
    let server = Process::spawn("prometheus", cmd, dir.path());
    let prometheus = monolith::Api::new(web);

    // Traffic: a 201 (the upload), a 404 on a route (no such video) and
    // on no route at all.
    let token = node.user("ada@example.com").await;
    let bytes = clip::make(dir.path(), 1, 160, 120);
    let size = bytes.len();
    let uploaded = node.upload(&token, bytes).await.expect("an answer");
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.json());
    let missing = format!("/v1/videos/{}", "0".repeat(32));
    assert_eq!(
        node.send("GET", &missing, &token, "", Bytes::new())
            .await
            .status,
        404
    );
    assert_eq!(
        node.send("GET", "/no/such/route/7f3a", &token, "", Bytes::new())
            .await
            .status,
        404
    );

    // The exposition is valid as promtool reads it.
    let text = node
        .admin
        .send("GET", "/metrics", "", "", Bytes::new())
        .await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8(text.body.to_vec()).expect("UTF-8");
    let (valid, said) = promtool_check(&text);
    assert!(valid, "promtool check metrics: {said}\n{text}");

    let duration = "http_server_request_duration_seconds_count";
    wait_for(&prometheus, &server, r#"up{job="streamgate"}"#, |v| {
        v == 1.0
    })
    .await;
    wait_for(
        &prometheus,
        &server,
        &format!(
            r#"{duration}{{http_request_method="POST",http_route="/v1/videos",http_response_status_code="201"}}"#
        ),
        |v| v >= 1.0,
    )
    .await;
    wait_for(
        &prometheus,
        &server,
        &format!(
            r#"{duration}{{http_request_method="GET",http_route="/v1/videos/{{id}}",http_response_status_code="404"}}"#
        ),
        |v| v >= 1.0,
    )
    .await;
    wait_for(
        &prometheus,
        &server,
        &format!(r#"{duration}{{http_route="unmatched",http_response_status_code="404"}}"#),
        |v| v >= 1.0,
    )
    .await;
    // No series names a raw path.
    let raw = query(
        &prometheus,
        r#"{__name__=~"http_server.*",http_route=~".*(0000|7f3a).*"}"#,
    )
    .await;
    assert!(raw.is_empty(), "raw paths became labels: {raw:?}");

    #[expect(clippy::cast_precision_loss, reason = "a small clip")]
    let size = size as f64;
    wait_for(&prometheus, &server, "streamgate_upload_bytes_total", |v| {
        v == size
    })
    .await;
    wait_for(
        &prometheus,
        &server,
        r#"streamgate_upload_duration_seconds_count{outcome="ok"}"#,
        |v| v >= 1.0,
    )
    .await;
    wait_for(
        &prometheus,
        &server,
        "streamgate_transcode_duration_seconds_count",
        |v| v >= 1.0,
    )
    .await;
    wait_for(
        &prometheus,
        &server,
        r#"process_resident_memory_bytes{job="streamgate"}"#,
        |v| v > 0.0,
    )
    .await;
    wait_for(&prometheus, &server, "process_open_fds", |v| v > 0.0).await;
    wait_for(
        &prometheus,
        &server,
        r#"streamgate_requests_total{service="streamgate.v1.UploadService",method="Upload",code="Ok"}"#,
        |v| v >= 1.0,
    )
    .await;
}
