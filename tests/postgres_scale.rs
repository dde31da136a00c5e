//! Scale-out on a shared PostgreSQL, for real: two `streamgate service
//! metadata` processes, each with a data dir of its own, on one database
//! (`--database-url`, a fresh schema of the PostgreSQL that ci/postgres
//! starts), the real NATS server as bus and registry. What one instance
//! writes the other reads and changes; the database URL's password never
//! reaches a log; a database whose schema is newer than the binary stops
//! the process with exit code 2 and the cause named.
#![cfg(not(madsim))]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use streamgate::client::{ClientPool, PoolConfig};
use streamgate::node::read_keyring;
use streamgate::proto::{
    CreateVideoRequest, DeleteVideoRequest, GetVideoRequest, ListVideosRequest, UpdateVideoRequest,
};
use streamgate::registry::Registry;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::registry::nats_kv::{NatsKvRegistry, Options};
use streamgate::rt;
use streamgate_testkit::nats_url;
use streamgate_testkit::pg::Schema;
use streamgate_testkit::process::Process;
use streamgate_testkit::scratch::Scratch;

/// The password in the test's database URL (trust auth ignores it): it
/// must never appear in what the processes print.
const PASSWORD: &str = "pw-never-logged-7f3a";

/// A fresh schema on the test database; the URL whose connections use it
/// (with [`PASSWORD`] in it).
async fn schema() -> (Schema, String) {
    let schema = Schema::create("sg_scale", Some(PASSWORD)).await;
    let url = schema.url.clone();
    (schema, url)
}

fn metadata(name: &str, dir: &Path, bucket: &str, url: &str) -> Process {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("data dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metadata"));
    cmd.args(["--port", "0", "--nats-url", &nats_url()])
        .args(["--registry", "nats-kv", "--registry-bucket", bucket])
        .arg("--data-dir")
        .arg(&data)
        .arg("--allow-plaintext")
        .arg("--service-key-file")
        .arg(dir.join("service.keys"))
        .env("STREAMGATE_DATABASE_URL", url)
        .env("RUST_LOG", "info");
    Process::spawn(name, cmd, dir)
}

#[tokio::test]
async fn two_metadata_processes_share_one_catalog_on_postgres() {
    let scratch = Scratch::new("postgres-scale");
    let dir = scratch.path();
    let key_file = dir.join("service.keys");
    std::fs::write(&key_file, format!("k1 {}\n", "cd".repeat(32))).expect("keys");
    let bucket = format!("sgtest_pg_{:08x}", rt::random_u64() as u32);
    let (schema, url) = schema().await;

    let mut first = metadata("metadata-1", dir, &bucket, &url);
    let mut second = metadata("metadata-2", dir, &bucket, &url);
    let a = first.listening("metadata").await;
    let b = second.listening("metadata").await;
    assert_ne!(a, b);

    // Find both in the registry, then call each one on its own.
    let mut options = Options::new(nats_url());
    options.bucket.clone_from(&bucket);
    let registry = NatsKvRegistry::connect(options)
        .await
        .unwrap_or_else(|e| panic!("NATS at {} (ci/nats-server): {e}", nats_url()));
    let started = rt::now();
    let instances = loop {
        let found = registry.discover("metadata").await.expect("discover");
        if found.len() == 2 {
            break found;
        }
        assert!(
            rt::now() - started < Duration::from_secs(10),
            "both registered within 10 s"
        );
        rt::sleep(Duration::from_millis(100)).await;
    };
    let keys = read_keyring(&key_file).expect("keyring");
    let mut pools = Vec::new();
    for port in [a.port(), b.port()] {
        let info = instances
            .iter()
            .find(|i| i.port == port)
            .expect("registered")
            .clone();
        let only = Arc::new(MemoryRegistry::new());
        only.register(&info).await.expect("register");
        pools.push(ClientPool::new(
            only,
            PoolConfig::new(keys.clone(), "e2e-test"),
        ));
    }
    let mut via_a = pools[0].metadata().await.expect("client a");
    let mut via_b = pools[1].metadata().await.expect("client b");

    let created = via_a
        .create_video(CreateVideoRequest {
            video_id: "shared1".into(),
            owner_id: "u1".into(),
            title: "made on a".into(),
            content_type: "video/mp4".into(),
            size_bytes: 1000,
            sha256_hex: "ab".repeat(32),
            ..Default::default()
        })
        .await
        .expect("create through a")
        .into_inner()
        .video
        .expect("video");
    let seen = via_b
        .get_video(GetVideoRequest {
            video_id: "shared1".into(),
        })
        .await
        .expect("read through b")
        .into_inner()
        .video
        .expect("video");
    assert_eq!(seen, created);
    // The same id through the other instance: taken.
    let taken = via_b
        .create_video(CreateVideoRequest {
            video_id: "shared1".into(),
            owner_id: "u2".into(),
            title: "again".into(),
            content_type: "video/mp4".into(),
            size_bytes: 1,
            sha256_hex: "ab".repeat(32),
            ..Default::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    via_b
        .update_video(UpdateVideoRequest {
            video_id: "shared1".into(),
            update_fields: vec!["title".into()],
            title: "renamed on b".into(),
            ..Default::default()
        })
        .await
        .expect("update through b");
    let listed = via_a
        .list_videos(ListVideosRequest {
            owner_id: "u1".into(),
            ..Default::default()
        })
        .await
        .expect("list through a")
        .into_inner()
        .videos;
    assert_eq!(
        listed.iter().map(|v| v.title.as_str()).collect::<Vec<_>>(),
        ["renamed on b"]
    );
    via_a
        .delete_video(DeleteVideoRequest {
            video_id: "shared1".into(),
        })
        .await
        .expect("delete through a");
    let gone = via_b
        .get_video(GetVideoRequest {
            video_id: "shared1".into(),
        })
        .await
        .expect_err("gone for b too");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // Neither process kept a catalog file in its data dir.
    for name in ["metadata-1", "metadata-2"] {
        assert!(!dir.join(name).join("metadata.sqlite").exists(), "{name}");
    }
    drop((first, second));
    for file in [
        "metadata-1.log",
        "metadata-1.stdout",
        "metadata-2.log",
        "metadata-2.stdout",
    ] {
        let said = std::fs::read_to_string(dir.join(file)).expect("the process's output");
        assert!(
            !said.contains(PASSWORD),
            "{file} holds the password:\n{said}"
        );
    }
    schema.drop().await;
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(bucket.as_str())
        .await;
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_stops_metadata_with_exit_code_2() {
    let scratch = Scratch::new("postgres-newer");
    let dir = scratch.path();
    std::fs::write(
        dir.join("service.keys"),
        format!("k1 {}\n", "cd".repeat(32)),
    )
    .expect("keys");
    let (schema, url) = schema().await;
    let base = streamgate_testkit::pg::base_url();
    streamgate::pg::pool(&base)
        .expect("url")
        .get()
        .await
        .expect("conn")
        .batch_execute(&format!(
            "CREATE TABLE {name}.streamgate_schema (component TEXT PRIMARY KEY, \
             version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO {name}.streamgate_schema (component, version) VALUES ('metadata', 99);",
            name = schema.name
        ))
        .await
        .expect("a newer schema");
    let bucket = format!("sgtest_pg_{:08x}", rt::random_u64() as u32);
    let mut proc = metadata("metadata-newer", dir, &bucket, &url);
    let exit = proc.exited(Duration::from_secs(30)).await;
    let said = proc.log();
    assert_eq!(exit.code(), Some(2), "{exit}: {said}");
    assert!(
        said.contains("schema version 99, newer than this binary's"),
        "the cause is named: {said}"
    );
    assert!(
        !said.contains(PASSWORD),
        "the password is never logged: {said}"
    );

    // --print-config shows the URL without its password.
    let out = Command::new(env!("CARGO_BIN_EXE_metadata"))
        .args(["--print-config", "--service-key-file", "keys"])
        .env("STREAMGATE_DATABASE_URL", &url)
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("database-url = \"postgres://postgres:***@"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD), "{printed}");
    schema.drop().await;
}

/// A TCP relay to PostgreSQL that the test can cut (every connection
/// closed, new ones refused) and restore: the database going away as the
/// service sees it.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: rt::JoinHandle<()>,
}

impl Relay {
    // A test's own TCP relay on loopback, outside the runtime seam (which
    // serves the project's protocols, not raw streams).
    #[allow(clippy::disallowed_methods)]
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (flag, set) = (up.clone(), connections.clone());
        let accept = rt::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                set.lock().expect("lock").spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            up,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.connections.lock().expect("lock").abort_all();
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `GET path` on the admin listener: the status and the body (a request
/// written by hand, as a load balancer's probe sends it).
#[allow(clippy::disallowed_methods)]
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin answers");
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// The gRPC health status of the whole server at `addr` (1 = SERVING,
/// 2 = NOT_SERVING).
async fn grpc_health(addr: std::net::SocketAddr) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(rt::transport::channel(addr))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the health service answers")
        .into_inner()
        .status
}

/// Polls until `/ready` answers `status` (a probe every 5 s, two failed in
/// a row to turn not ready: well within 30 s); its body.
async fn await_ready(admin: std::net::SocketAddr, status: u16, proc: &mut Process) -> String {
    let started = rt::now();
    loop {
        let (now, body) = admin_get(admin, "/ready").await;
        if now == status {
            return body;
        }
        if let Some(exit) = proc.try_exit() {
            panic!("metadata exited: {exit}\n{}", proc.tail(30));
        }
        assert!(
            rt::now() - started < Duration::from_secs(30),
            "/ready still {now} {body} after 30 s, expected {status}"
        );
        rt::sleep(Duration::from_millis(200)).await;
    }
}

/// The `host:port` of a `postgres://user[:password]@host:port/...` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once('@').map_or(url, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

#[tokio::test]
async fn readiness_and_grpc_health_follow_the_database() {
    let scratch = Scratch::new("postgres-ready");
    let dir = scratch.path();
    std::fs::write(
        dir.join("service.keys"),
        format!("k1 {}\n", "ef".repeat(32)),
    )
    .expect("keys");
    let bucket = format!("sgtest_pg_{:08x}", rt::random_u64() as u32);
    let (schema, url) = schema().await;
    let upstream = tokio::net::lookup_host(authority(&url))
        .await
        .expect("the database host resolves")
        .next()
        .expect("an address");
    let relay = Relay::to(upstream).await;
    let relayed = url.replacen(authority(&url), &relay.addr.to_string(), 1);
    assert_ne!(relayed, url, "the URL goes through the relay");

    let mut proc = metadata("metadata-ready", dir, &bucket, &relayed);
    let addr = proc.listening("metadata").await;
    let admin = proc.admin().await;
    // Up from the start: the database was probed before it said it serves.
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    assert_eq!(grpc_health(addr).await, 1);

    relay.cut();
    let why = await_ready(admin, 503, &mut proc).await;
    assert!(
        why.contains("not ready: metadata database failed 2 probes in a row"),
        "names the dependency: {why}"
    );
    assert!(!why.contains(PASSWORD), "{why}");
    assert_eq!(grpc_health(addr).await, 2, "NOT_SERVING while it is gone");
    assert_eq!(
        admin_get(admin, "/health").await.0,
        200,
        "/health stays liveness"
    );

    relay.restore();
    await_ready(admin, 200, &mut proc).await;
    assert_eq!(grpc_health(addr).await, 1, "SERVING again");
    drop(proc);
    schema.drop().await;
}
