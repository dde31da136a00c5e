//! Microservices mode for real: two `streamgate service cache` processes on
//! loopback, each on a free port (`--port 0`), the real NATS server as bus
//! and registry (a fresh KV bucket), service tokens from a shared key file.
//! Both register and serve calls from a pool in this process; a SIGTERM
//! removes one from the registry before it exits; a missing or malformed key
//! file is a clear error.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use streamgate::client::{ClientPool, PoolConfig};
use streamgate::node::read_keyring;
use streamgate::proto::{CacheGetRequest, CacheSetRequest};
use streamgate::registry::Registry;
use streamgate::registry::nats_kv::{NatsKvRegistry, Options};
use streamgate::rt;
use streamgate_testkit::nats_url;
use streamgate_testkit::process::{Process, Signal};
use streamgate_testkit::scratch::Scratch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A cache process on a free port; returns it and its address.
async fn service(name: &str, bucket: &str, dir: &Path) -> (Process, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["service", "cache", "--port", "0"])
        .args([
            "--nats-url",
            &nats_url(),
            "--registry",
            "nats-kv",
            "--registry-bucket",
            bucket,
        ])
        .arg("--allow-plaintext")
        .arg("--service-key-file")
        .arg(dir.join("service.keys"))
        .env("RUST_LOG", "warn");
    let mut proc = Process::spawn(name, cmd, dir);
    let addr = proc.listening("cache").await;
    (proc, addr)
}

async fn serving(addr: SocketAddr, proc: &mut Process) {
    for _ in 0..100 {
        let mut client = HealthClient::new(rt::transport::channel(addr));
        if let Ok(res) = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            && res.into_inner().status == 1
        {
            return;
        }
        if let Some(exit) = proc.try_exit() {
            panic!("{} on {addr} exited early: {exit}", proc.name());
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    panic!("service on {addr} not SERVING within 10 s");
}

#[tokio::test]
async fn two_cache_processes_register_serve_and_leave_on_sigterm() {
    let scratch = Scratch::new("microservices");
    let dir = scratch.path();
    let key_file = dir.join("service.keys");
    std::fs::write(&key_file, format!("k1 {}\n", "ab".repeat(32))).unwrap();
    let bucket = format!("sgtest_ms_{:08x}", rt::random_u64() as u32);

    let mut options = Options::new(nats_url());
    options.bucket.clone_from(&bucket);
    let registry: Arc<dyn Registry> =
        Arc::new(NatsKvRegistry::connect(options).await.unwrap_or_else(|e| {
            panic!(
                "NATS with JetStream must be reachable at {} (ci/nats-server): {e}",
                nats_url()
            )
        }));

    let (mut first, first_addr) = service("cache-1", &bucket, dir).await;
    let (mut second, second_addr) = service("cache-2", &bucket, dir).await;
    assert_ne!(first_addr, second_addr);
    serving(first_addr, &mut first).await;
    serving(second_addr, &mut second).await;
    let started = rt::now();
    while registry.discover("cache").await.unwrap().len() < 2 {
        assert!(
            rt::now() - started < Duration::from_secs(5),
            "both registered within 5 s"
        );
        rt::sleep(Duration::from_millis(50)).await;
    }

    // Calls from another process, with the cluster's keys, reach both.
    let pool = ClientPool::new(
        registry.clone(),
        PoolConfig::new(read_keyring(&key_file).unwrap(), "e2e-test"),
    );
    let mut cache = pool.cache().await.unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        cache
            .set(CacheSetRequest {
                key,
                value: vec![1],
                ttl_ms: 0,
            })
            .await
            .expect("set across processes");
    }
    cache
        .get(CacheGetRequest { key: "k0".into() })
        .await
        .expect("get across processes");

    // A graceful stop deregisters before the process exits.
    first.signal(Signal::TERM);
    let exit = first.exited(Duration::from_secs(15)).await;
    assert!(exit.success(), "exits 0 on SIGTERM: {exit}");
    let left = registry.discover("cache").await.unwrap();
    assert_eq!(left.len(), 1, "gone from the registry at once: {left:?}");
    assert_eq!(left[0].port, second_addr.port());

    drop(second);
    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(bucket.as_str())
        .await;
}

#[test]
fn key_files_are_checked_with_clear_errors() {
    let dir = std::env::temp_dir().join(format!("streamgate-keys-{:016x}", rt::random_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("", "no key"),
        ("k1 abcd\n", "at least 32 secret bytes"),
        ("k1 zz\n", "expected `<key id> <hex secret>`"),
        ("onlyid\n", "expected `<key id> <hex secret>`"),
    ];
    for (content, expected) in cases {
        let path = dir.join("keys");
        std::fs::write(&path, content).unwrap();
        let err = read_keyring(&path).unwrap_err().to_string();
        assert!(err.contains(expected), "{content:?}: {err}");
        assert!(
            !err.contains("abcd"),
            "secrets never appear in errors: {err}"
        );
    }
    let path = dir.join("keys");
    std::fs::write(
        &path,
        format!("new {}\nold {}\n", "01".repeat(32), "02".repeat(40)),
    )
    .unwrap();
    let ring = read_keyring(&path).unwrap();
    assert_eq!(
        (ring.current.id.as_str(), ring.previous.map(|k| k.id)),
        ("new", Some("old".to_owned()))
    );
    assert!(read_keyring(&dir.join("missing")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
