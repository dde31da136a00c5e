//! NATS with TLS and user credentials, for real: a private nats-server that
//! requires TLS with a client certificate (`verify: true`) and an nkey user,
//! and the service binaries connecting to it with `--nats-ca`,
//! `--nats-cert`, `--nats-key` and `--nats-nkey-file`: the bus, the NATS KV
//! registry and the worker's JetStream job store all go through it. Missing
//! credentials, a missing client certificate or plaintext are refused by
//! the server, and the service says so and exits with code 2.
#![cfg(not(madsim))]
// The server's readiness is probed on tokio's own sockets.
#![allow(clippy::disallowed_methods)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use streamgate::nats_auth::NatsAuth;
use streamgate::registry::Registry;
use streamgate::registry::nats_kv::{NatsKvRegistry, Options};
use streamgate::rt;
use streamgate::services::ServiceKind;
use streamgate_testkit::process::Process;
use streamgate_testkit::scratch::Scratch;

#[path = "cluster/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

/// Writes a CA, a server certificate for 127.0.0.1 and a client
/// certificate into `dir`.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    for (name, sans) in [
        (
            "server",
            vec![SanType::IpAddress("127.0.0.1".parse().expect("ip"))],
        ),
        (
            "client",
            vec![SanType::DnsName("client".try_into().expect("name"))],
        ),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
    }
}

/// A nats-server requiring TLS with a client certificate and the nkey
/// user `user`, on a free port; killed on drop.
struct SecureNats {
    port: u16,
    _process: Process,
}

impl SecureNats {
    async fn start(dir: &Path, user: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 tls {{ cert_file: {cert:?}, key_file: {key:?}, ca_file: {ca:?}, verify: true, timeout: 2 }}\n\
                 authorization {{ users = [ {{ nkey: {user} }} ] }}\n",
                store = dir.join("store"),
                cert = dir.join("server.pem"),
                key = dir.join("server-key.pem"),
                ca = dir.join("ca.pem"),
            ),
        )
        .expect("conf");
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&conf);
        let mut process = Process::spawn("nats-server", cmd, dir);
        let started = rt::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(exit) = process.try_exit() {
                panic!("nats-server exited ({exit})\n{}", process.tail(20));
            }
            assert!(
                rt::now() - started < Duration::from_secs(10),
                "nats-server did not come up\n{}",
                process.tail(20)
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            _process: process,
        }
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }
}

fn flags(dir: &Path, with: &[&str]) -> Vec<String> {
    let path = |f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    let mut args = Vec::new();
    for option in with {
        let (flag, file) = match *option {
            "ca" => ("--nats-ca", "ca.pem"),
            "cert" => ("--nats-cert", "client.pem"),
            "key" => ("--nats-key", "client-key.pem"),
            "nkey" => ("--nats-nkey-file", "user.nk"),
            other => panic!("{other}"),
        };
        args.push(flag.to_owned());
        args.push(path(file));
    }
    args
}

fn service(kind: ServiceKind, dir: &Path, url: &str, bucket: &str, nats: &[String]) -> Command {
    let mut cmd = Command::new(support::binary(kind));
    cmd.args([
        "--port",
        "0",
        "--nats-url",
        url,
        "--registry-bucket",
        bucket,
    ])
    .args([
        "--jobs-name",
        &format!("{bucket}_jobs"),
        "--startup-timeout",
        "3s",
    ])
    .arg("--allow-plaintext")
    .arg("--service-key-file")
    .arg(dir.join("service.keys"))
    .arg("--data-dir")
    .arg(dir.join(format!("data-{}", kind.name())))
    .args(nats)
    .env("RUST_LOG", "info");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_nats_over_tls_with_an_nkey_and_are_refused_without() {
    let scratch = Scratch::new("nats-tls");
    let dir = scratch.path();
    certificates(dir);
    let user = nkeys::KeyPair::new_user();
    std::fs::write(dir.join("user.nk"), user.seed().expect("seed")).expect("seed file");
    std::fs::write(
        dir.join("service.keys"),
        format!("k1 {}\n", rt::random_hex128().repeat(2)),
    )
    .expect("keys");
    let nats = SecureNats::start(dir, &user.public_key()).await;
    let bucket = format!("sgtest_natstls_{}", &rt::random_hex128()[..10]);
    let all = flags(dir, &["ca", "cert", "key", "nkey"]);

    // With everything: the cache (bus and registry) and the worker (its
    // job store in JetStream too) start, register, and are found.
    let mut procs = Vec::new();
    for kind in [ServiceKind::Cache, ServiceKind::Worker] {
        let mut p = Process::spawn(
            kind.name(),
            service(kind, dir, &nats.url(), &bucket, &all),
            dir,
        );
        let _ = p.listening(kind.name()).await;
        procs.push(p);
    }
    let mut options = Options::new(nats.url());
    options.bucket.clone_from(&bucket);
    options.auth = NatsAuth {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("client.pem")),
        key: Some(dir.join("client-key.pem")),
        creds: None,
        nkey: Some(dir.join("user.nk")),
    };
    let registry: Arc<dyn Registry> = Arc::new(
        NatsKvRegistry::connect(options.clone())
            .await
            .expect("the test reaches the secured server"),
    );
    for kind in [ServiceKind::Cache, ServiceKind::Worker] {
        let found = registry.discover(kind.name()).await.expect("discover");
        assert_eq!(found.len(), 1, "{kind} registered over TLS: {found:?}");
    }

    // Without the nkey, without the client certificate, or plaintext: the
    // server refuses; the service names NATS and exits with code 2.
    for (missing, nats_flags, url) in [
        ("the nkey", flags(dir, &["ca", "cert", "key"]), nats.url()),
        (
            "the client certificate",
            flags(dir, &["ca", "nkey"]),
            nats.url(),
        ),
        (
            "TLS",
            flags(dir, &["nkey"]),
            format!("nats://127.0.0.1:{}", nats.port),
        ),
    ] {
        let mut p = Process::spawn(
            "cache-refused",
            service(ServiceKind::Cache, dir, &url, &bucket, &nats_flags),
            dir,
        );
        let status = p.exited(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(2), "without {missing}: {}", p.log());
        assert!(
            p.log().contains("NATS"),
            "without {missing}, the log names NATS: {}",
            p.log()
        );
    }
    // A missing credentials file is refused at once, named, before any wait.
    let mut bad = flags(dir, &["ca", "cert", "key"]);
    bad.extend([
        "--nats-nkey-file".to_owned(),
        "/nonexistent/user.nk".to_owned(),
    ]);
    let mut p = Process::spawn(
        "cache-no-file",
        service(ServiceKind::Cache, dir, &nats.url(), &bucket, &bad),
        dir,
    );
    let status = p.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{}", p.log());
    assert!(p.log().contains("/nonexistent/user.nk"), "{}", p.log());
    assert!(
        !p.log().contains(&user.seed().expect("seed")),
        "the seed is never logged"
    );
    drop(procs);
}
