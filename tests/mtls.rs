//! Mutual TLS between services, for real: the nine binaries as separate
//! processes, each presenting a certificate of a CA made by `streamgate
//! certs` and checking the call policy of `config/call-policy.toml`. A video
//! goes in and plays back through every service-to-service call of the
//! pipeline, so a call the policy forgot fails here. Then, from outside:
//! a stock grpcio health probe over mutual TLS; a caller with the
//! certificate of another service, with none, from another CA, or expired
//! is refused; a call outside the policy gets PERMISSION_DENIED (and is
//! counted); a client does not take one service for another; a certificate
//! rotated on disk is presented without a restart; a process refuses to
//! start plaintext, or with another service's certificate.
#![cfg(not(madsim))]
// The handshakes below are the test's own, on tokio's sockets.
#![allow(clippy::disallowed_methods)]

#[path = "cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::error::Error as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::proto::metadata_service_client::MetadataServiceClient;
use streamgate::proto::{CacheGetRequest, ListVideosRequest};
use streamgate::rt::{self, transport};
use streamgate::services::ServiceKind;
use streamgate_testkit::process::Process;
use streamgate_testkit::scratch::Scratch;
use support::{
    Gateway, Proc, fetch_until_ok, hls_paths, nats_url, probe_script, python, wait_ready,
};
use tonic::Code;

const PASSWORD: &str = "mtls-pa55word";

fn certs(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .arg("certs")
        .args(args)
        .output()
        .expect("streamgate runs");
    assert!(
        out.status.success(),
        "streamgate certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn identity(dir: &Path, ca: &str, service: &str) -> transport::Mtls {
    transport::ServiceTls {
        ca: dir.join(ca),
        cert: dir.join(format!("{service}.pem")),
        key: dir.join(format!("{service}-key.pem")),
    }
    .load()
    .unwrap_or_else(|e| panic!("{service}'s identity loads: {e}"))
}

fn get(
    addr: std::net::SocketAddr,
    tls: Option<&transport::Mtls>,
    service: &str,
) -> CacheServiceClient<transport::Channel> {
    CacheServiceClient::new(transport::channel_to(addr, tls, service))
}

async fn cache_get(
    client: &mut CacheServiceClient<transport::Channel>,
) -> Result<(), tonic::Status> {
    client
        .get(CacheGetRequest { key: "k".into() })
        .await
        .map(|_| ())
}

/// The DER of the certificate the server at `addr` presents to a client
/// presenting `cert` (of the CA in `ca`).
async fn presented(
    addr: std::net::SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
    name: &str,
) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .expect("ca")
        .map(|c| c.expect("pem"))
    {
        roots.add(c).expect("root");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.expect("pem"))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec())
}

/// A certificate of the CA in `certs_dir` naming `service` that expired an
/// hour ago, with its key, written to `dir` (`<service>.pem`,
/// `<service>-key.pem`): `streamgate certs` issues none such.
fn expired(certs_dir: &Path, dir: &Path, service: &str) {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let read = |name: &str| std::fs::read_to_string(certs_dir.join(name)).expect("CA file");
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(
            format!("spiffe://streamgate/{service}")
                .try_into()
                .expect("uri"),
        ),
        SanType::DnsName(service.try_into().expect("name")),
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(2 * 86_400);
    params.not_after = now - Duration::from_secs(3600);
    let cert = params.signed_by(&key, &issuer).expect("signed");
    std::fs::write(dir.join(format!("{service}.pem")), cert.pem()).expect("cert");
    std::fs::write(dir.join(format!("{service}-key.pem")), key.serialize_pem()).expect("key");
    std::fs::copy(certs_dir.join("ca.pem"), dir.join("ca.pem")).expect("ca");
}

/// A TLS client that trusts the CA but presents no certificate: the
/// server must refuse it (in TLS 1.3 the refusal comes on the first read).
async fn refused_without_a_certificate(addr: std::net::SocketAddr, ca: &Path) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .expect("ca")
        .map(|c| c.expect("pem"))
    {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("cache").expect("name"), tcp)
        .await
    else {
        return true;
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(
        rt::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether a call failed below gRPC (the connection refused or cut), as
/// tonic reports it: never an answer of the service.
fn failed_in_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && status.source().is_some()
}

async fn metrics_of(admin: std::net::SocketAddr) -> String {
    let reply = Gateway {
        http: support::http(),
        addr: admin,
        token: None,
    }
    .get("/metrics", &[])
    .await;
    assert_eq!(reply.status, 200);
    reply.text()
}

/// Starts `kind` with `args` and expects it to refuse to start: exit code
/// 2 with `said` on its output.
async fn refuses_to_start(
    kind: ServiceKind,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
    said: &str,
) {
    let mut cmd = Command::new(support::binary(kind));
    cmd.args(["--port", "0"])
        .args(args)
        .envs(env.iter().copied());
    let mut p = Process::spawn(&format!("{}-refused", kind.name()), cmd, dir);
    let status = p.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "{}", p.log());
    assert!(p.log().contains(said), "{said:?} in {}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_binaries_over_mutual_tls_with_a_call_policy() {
    support::require_tools();
    let run = &rt::random_hex128()[..10];
    let scratch = Scratch::new("mtls");
    let dir = scratch.path();
    let certs_dir = dir.join("certs");
    let other_dir = dir.join("other-ca");
    let c = |p: &Path| p.to_str().expect("utf-8").to_owned();
    certs(&["init", "--dir", &c(&certs_dir)]);
    certs(&["issue", "--dir", &c(&certs_dir)]);
    certs(&["init", "--dir", &c(&other_dir)]);
    certs(&["issue", "--dir", &c(&other_dir), "api-gateway"]);
    // Issuing again without a new CA would be refused: init keeps a CA.
    let again = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["certs", "init", "--dir", &c(&certs_dir)])
        .output()
        .expect("runs");
    assert!(!again.status.success(), "init refuses to replace a CA");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a CA is there already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(certs_dir.join("cache-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are readable by their owner only");
    }

    let bucket = format!("sgtest_mtls_{run}");
    let auth_secret = format!("{}{}", rt::random_hex128(), rt::random_hex128());
    let secret_file = dir.join("auth.secret");
    std::fs::write(&secret_file, &auth_secret).expect("secret");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/call-policy.toml");
    // Under mutual TLS the service keys only sign playback URLs, which the
    // gateway makes and streaming's media port checks: one file for both.
    let key_file = dir.join("service.keys");
    std::fs::write(&key_file, format!("k1 {}\n", rt::random_hex128().repeat(2))).expect("keys");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {data:?}\nnats-url = {url:?}\nregistry-bucket = {bucket:?}\n\
             jobs-name = \"{bucket}_jobs\"\nbus-subject-prefix = \"sgmtls{run}\"\n\
             auth-secret-file = {secret:?}\nlog-format = \"json\"\nlog-filter = \"info\"\n\
             tls-ca = {ca:?}\ncall-policy = {policy:?}\nservice-key-file = {keys:?}\n",
            data = dir.join("data"),
            url = nats_url(),
            secret = secret_file,
            ca = certs_dir.join("ca.pem"),
            keys = key_file,
        ),
    )
    .expect("config");
    let config_path = c(&config);

    // Streaming's media port (signed URLs with no gateway in the byte
    // path), which reads video records and playlists under the policy.
    #[allow(clippy::disallowed_methods)] // a test picking a free port
    let media = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let media_url = format!("http://{media}");
    let mut procs: Vec<Proc> = Vec::new();
    for kind in ServiceKind::ALL {
        let cert = c(&certs_dir.join(format!("{}.pem", kind.name())));
        let key = c(&certs_dir.join(format!("{}-key.pem", kind.name())));
        let media_listen = media.to_string();
        let env = [
            ("STREAMGATE_CONFIG", config_path.as_str()),
            ("STREAMGATE_TLS_CERT", cert.as_str()),
            ("STREAMGATE_TLS_KEY", key.as_str()),
            ("STREAMGATE_MAX_UPLOAD_BYTES", "8388608"),
            // Read by streaming and by the gateway; the others ignore them.
            ("STREAMGATE_MEDIA_LISTEN", media_listen.as_str()),
            ("STREAMGATE_MEDIA_URL", media_url.as_str()),
        ];
        procs.push(Proc::start(kind, 1, &env, dir).await);
    }
    let addr_of = |kind: ServiceKind| procs.iter().find(|p| p.kind == kind).expect("started").addr;
    let admin_of = |kind: ServiceKind| {
        procs
            .iter()
            .find(|p| p.kind == kind)
            .expect("started")
            .admin
    };

    // A stock grpcio health probe, presenting the monitor's certificate,
    // checking each server's against the CA and its service's name.
    let targets: Vec<String> = procs
        .iter()
        .filter(|p| p.kind != ServiceKind::ApiGateway)
        .map(|p| format!("{}={}", p.kind.name(), p.addr))
        .collect();
    let probe = Command::new(python())
        .arg(probe_script("health_probe.py"))
        .args(["--tls-ca", &c(&certs_dir.join("ca.pem"))])
        .args(["--tls-cert", &c(&certs_dir.join("monitor.pem"))])
        .args(["--tls-key", &c(&certs_dir.join("monitor-key.pem"))])
        .args(&targets)
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "health_probe.py over mTLS: {said}");
    assert_eq!(said.matches(" SERVING").count(), 8, "{said}");

    // The whole pipeline, every call of it over mutual TLS under the
    // policy: sign up, log in, upload, transcode, play.
    let mut gw = Gateway {
        http: support::http(),
        addr: addr_of(ServiceKind::ApiGateway),
        token: None,
    };
    let creds = serde_json::json!({"email": "mtls@example.com", "password": PASSWORD});
    support::sign_up(&gw, &creds).await;
    gw.token = Some(support::log_in(&gw, &creds).await);
    let clip = support::test_clip(dir, 2);
    let created = gw
        .try_send(
            http::Method::POST,
            "/v1/videos?name=clip.mp4&title=mTLS",
            &[("content-type", "video/mp4")],
            clip,
        )
        .await
        .expect("the gateway answers the upload");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["video_id"].as_str().expect("id").to_owned();
    let video = wait_ready(&gw, &id).await;
    assert_eq!(video["state"], "ready", "{video}");
    let paths = hls_paths(&gw, &id).await;
    assert!(!paths.is_empty(), "a playlist with segments");
    fetch_until_ok(&gw, &paths[0]).await;

    // Signed URLs play from streaming's media port: the master, a
    // rendition, a segment and a range of the original, with no header.
    let urls = gw
        .post_json(&format!("/v1/videos/{id}/playback"), &serde_json::json!({}))
        .await;
    assert_eq!(urls.status, 200, "{}", urls.text());
    let master_url = urls.json()["master"].as_str().expect("master").to_owned();
    assert!(master_url.starts_with(&media_url), "{master_url}");
    let plain = support::http();
    let fetch = async |url: &str, range: Option<&str>| {
        let mut req = http::Request::get(url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let res = plain
            .request(req.body(http_body_util::Full::default()).expect("request"))
            .await
            .expect("the media port answers");
        let status = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    };
    let (status, master) = fetch(&master_url, None).await;
    assert_eq!(status, 200, "{master:?}");
    let dir_of = |u: &str| u[..=u.rfind('/').expect("a path")].to_owned();
    let first_line = |text: &[u8]| {
        String::from_utf8_lossy(text)
            .lines()
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .expect("a URI line")
            .to_owned()
    };
    let playlist_url = format!("{}{}", dir_of(&master_url), first_line(&master));
    let (status, playlist) = fetch(&playlist_url, None).await;
    assert_eq!(status, 200, "{playlist:?}");
    let segment_url = format!("{}{}", dir_of(&playlist_url), first_line(&playlist));
    let (status, segment) = fetch(&segment_url, None).await;
    assert_eq!(
        (status, segment.first()),
        (200, Some(&0x47)),
        "{segment_url}"
    );
    let original_url = urls.json()["original"]
        .as_str()
        .expect("original")
        .to_owned();
    let (status, part) = fetch(&original_url, Some("bytes=0-99")).await;
    assert_eq!((status, part.len()), (206, 100));

    // From outside, with the project's own client: allowed, and refused.
    let cache = addr_of(ServiceKind::Cache);
    let metadata = addr_of(ServiceKind::Metadata);
    let gateway_id = identity(&certs_dir, "ca.pem", "api-gateway");
    let worker_id = identity(&certs_dir, "ca.pem", "worker");
    cache_get(&mut get(cache, Some(&gateway_id), "cache"))
        .await
        .expect("api-gateway may read the cache");
    let denied = cache_get(&mut get(cache, Some(&worker_id), "cache"))
        .await
        .expect_err("the worker may not read the cache");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("worker"), "{denied:?}");
    let mut listing = MetadataServiceClient::new(transport::channel_to(
        metadata,
        Some(&worker_id),
        "metadata",
    ));
    listing
        .list_videos(ListVideosRequest::default())
        .await
        .expect("the worker may list videos");
    let text = metrics_of(admin_of(ServiceKind::Cache)).await;
    assert!(
        text.lines()
            .any(|l| l.contains("PermissionDenied") && !l.starts_with('#')),
        "the refusal is counted: {text}"
    );
    let cache_log = procs
        .iter()
        .find(|p| p.kind == ServiceKind::Cache)
        .expect("cache")
        .process
        .log();
    assert!(
        cache_log.contains("call refused by the call policy"),
        "the refusal is logged"
    );

    // No certificate, plaintext or TLS: refused.
    let plain = cache_get(&mut get(cache, None, "cache"))
        .await
        .expect_err("plaintext is refused");
    // The server answers the HTTP/2 preface with a TLS alert, which the
    // client's HTTP/2 reads as a broken frame: a transport failure.
    assert!(failed_in_transport(&plain), "{plain:?}");
    assert!(
        refused_without_a_certificate(cache, &certs_dir.join("ca.pem")).await,
        "a TLS client with no certificate is refused"
    );
    // A certificate from another CA: refused by the server even when the
    // client trusts the cluster's CA too.
    let both = dir.join("both-cas.pem");
    std::fs::write(
        &both,
        [
            std::fs::read(certs_dir.join("ca.pem")).expect("ca"),
            std::fs::read(other_dir.join("ca.pem")).expect("other ca"),
        ]
        .concat(),
    )
    .expect("bundle");
    std::fs::copy(&both, other_dir.join("both.pem")).expect("copy");
    let stranger = identity(&other_dir, "both.pem", "api-gateway");
    let refused = cache_get(&mut get(cache, Some(&stranger), "cache"))
        .await
        .expect_err("a certificate of another CA is refused");
    // Under TLS 1.3 the client's side of the handshake is done before the
    // server has checked its certificate: the refusal reaches it as a
    // closed connection.
    assert!(failed_in_transport(&refused), "{refused:?}");
    // An expired certificate of the cluster's own CA: refused the same
    // way (the simulator's model refuses it too: `sim/mtls.rs`).
    let expired_dir = dir.join("expired");
    std::fs::create_dir_all(&expired_dir).expect("dir");
    expired(&certs_dir, &expired_dir, "api-gateway");
    let stale = identity(&expired_dir, "ca.pem", "api-gateway");
    let refused = cache_get(&mut get(cache, Some(&stale), "cache"))
        .await
        .expect_err("an expired certificate is refused");
    assert!(failed_in_transport(&refused), "{refused:?}");
    // A client that meant to call the cache does not talk to the metadata
    // service: its certificate names another service.
    let mistaken = cache_get(&mut get(metadata, Some(&gateway_id), "cache"))
        .await
        .expect_err("metadata's certificate does not name cache");
    assert_eq!(mistaken.code(), Code::Unavailable, "{mistaken:?}");
    let cache_log = procs
        .iter()
        .find(|p| p.kind == ServiceKind::Cache)
        .expect("cache")
        .process
        .log();
    assert!(
        cache_log.contains("service TLS handshake refused"),
        "the cache logged the handshakes it refused"
    );

    // Rotation: a new certificate for the cache, issued on disk, is what
    // new connections see, without a restart; calls keep working.
    let before = std::fs::read(certs_dir.join("cache.pem")).expect("cert");
    certs(&["issue", "--dir", &c(&certs_dir), "cache"]);
    let after = std::fs::read(certs_dir.join("cache.pem")).expect("cert");
    assert_ne!(before, after, "a new certificate");
    let new_der = CertificateDer::from_pem_slice(&after)
        .expect("pem")
        .to_vec();
    let started = rt::now();
    loop {
        let seen = presented(
            cache,
            &certs_dir.join("ca.pem"),
            &certs_dir.join("api-gateway.pem"),
            &certs_dir.join("api-gateway-key.pem"),
            "cache",
        )
        .await
        .expect("a handshake");
        if seen == new_der {
            break;
        }
        assert!(
            rt::now() - started < Duration::from_secs(10),
            "the rotated certificate is presented within 10 s"
        );
        rt::sleep(Duration::from_millis(200)).await;
    }
    cache_get(&mut get(cache, Some(&gateway_id), "cache"))
        .await
        .expect("calls work after the rotation");
    let again = gw.get(&format!("/v1/videos/{id}"), &[]).await;
    assert_eq!(again.status, 200, "{}", again.text());

    // A process will not start plaintext by accident, nor as another service.
    let no_tls = [("STREAMGATE_NATS_URL", "nats://127.0.0.1:1")];
    refuses_to_start(
        ServiceKind::Cache,
        &["--service-key-file", "unused"],
        &no_tls,
        dir,
        "--allow-plaintext",
    )
    .await;
    let metadata_cert = c(&certs_dir.join("metadata.pem"));
    let metadata_key = c(&certs_dir.join("metadata-key.pem"));
    refuses_to_start(
        ServiceKind::Cache,
        &[
            "--tls-ca",
            &c(&certs_dir.join("ca.pem")),
            "--tls-cert",
            &metadata_cert,
            "--tls-key",
            &metadata_key,
        ],
        &no_tls,
        dir,
        "the certificate names \"metadata\"",
    )
    .await;
    // A media port under mutual TLS checks playback URLs with the
    // gateways' keys: it will not start on a key of its own.
    refuses_to_start(
        ServiceKind::Streaming,
        &[
            "--tls-ca",
            &c(&certs_dir.join("ca.pem")),
            "--tls-cert",
            &c(&certs_dir.join("streaming.pem")),
            "--tls-key",
            &c(&certs_dir.join("streaming-key.pem")),
            "--media-listen",
            "127.0.0.1:0",
        ],
        &no_tls,
        dir,
        "--media-listen under mutual TLS needs --service-key-file",
    )
    .await;
}
