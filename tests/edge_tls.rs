//! TLS on the public port (issue #22, item 4), against the monolith binary
//! with `--http-tls-cert` and `--http-tls-key`: HTTPS with HTTP/2 and
//! HTTP/1.1 offered by ALPN; plain HTTP to that port refused, not hung; a
//! renewed certificate written over the files presented from the next
//! handshake without a restart, while a connection already open keeps
//! working; a certificate and key that do not match stop the start with a
//! message naming the files.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamgate::rt;
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

/// A self-signed certificate for `localhost` and its key, as PEM.
fn certificate() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    (cert.pem(), signing_key.serialize_pem())
}

/// Writes `text` to `path` whole at once (a renewal tool renames too).
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// An HTTPS client for the gateway at `gateway` that trusts only `cert`,
/// reaching it as `localhost`.
fn client(gateway: SocketAddr, cert: &str, http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).expect("PEM")])
        .resolve("localhost", gateway)
        .tls_info(true)
        .timeout(Duration::from_secs(15));
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().expect("a client")
}

/// `GET /health` over HTTPS: the version spoken and the certificate the
/// server presented (DER).
async fn health(
    client: &reqwest::Client,
    gateway: SocketAddr,
) -> reqwest::Result<(reqwest::Version, Vec<u8>)> {
    let res = client
        .get(format!("https://localhost:{}/health", gateway.port()))
        .send()
        .await?
        .error_for_status()?;
    let presented = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
        .unwrap_or_default();
    let version = res.version();
    assert_eq!(res.text().await?, "ok\n");
    Ok((version, presented))
}

/// The DER of a PEM certificate.
fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_and_a_renewed_certificate_taken_without_a_restart() {
    let dir = Scratch::new("edge-tls");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first, first_key) = certificate();
    write(&cert_path, &first);
    write(&key_path, &first_key);
    let m = monolith::start(
        dir.path(),
        &dir.path().join("data"),
        &monolith::secret(dir.path()),
        &[
            "--http-tls-cert",
            cert_path.to_str().expect("utf-8"),
            "--http-tls-key",
            key_path.to_str().expect("utf-8"),
        ],
    )
    .await;
    let gateway = m.api.gateway;

    // HTTP/2 by ALPN, HTTP/1.1 for a client that offers only it.
    let h2 = client(gateway, &first, false);
    let (version, presented) = health(&h2, gateway).await.expect("HTTPS");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(presented, der(&first));
    let h1 = client(gateway, &first, true);
    assert_eq!(
        health(&h1, gateway).await.expect("HTTPS/1.1").0,
        reqwest::Version::HTTP_11
    );
    // The API behind it, a JSON answer.
    let signed = h2
        .post(format!(
            "https://localhost:{}/v1/auth/signup",
            gateway.port()
        ))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"email": "tls@example.com", "password": "correct horse battery"})
                .to_string(),
        )
        .send()
        .await
        .expect("sign-up");
    assert_eq!(signed.status(), 201);

    // Plain HTTP to the TLS port: refused (the handshake fails), not hung.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let started = rt::now();
    let err = plain
        .get(format!("http://{gateway}/health"))
        .send()
        .await
        .expect_err("plain HTTP on a TLS port");
    assert!(!err.is_timeout(), "{err}");
    assert!(rt::now() - started < Duration::from_secs(15), "{err}");

    // A renewed certificate over the same files: presented from the next
    // handshake, within a couple of seconds, with no restart.
    let (second, second_key) = certificate();
    write(&key_path, &second_key);
    write(&cert_path, &second);
    let renewed = rt::now();
    let presented = loop {
        match health(&client(gateway, &second, false), gateway).await {
            Ok((_, presented)) => break presented,
            Err(e) => assert!(
                rt::now() - renewed < Duration::from_secs(10),
                "the renewed certificate is not presented after 10 s: {e}"
            ),
        }
        rt::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(presented, der(&second));
    let err = health(&client(gateway, &first, false), gateway)
        .await
        .expect_err("a new connection trusting only the old certificate");
    assert!(err.is_connect(), "{err}");
    // The connection opened before the renewal keeps working.
    let (_, kept) = health(&h2, gateway).await.expect("the open connection");
    assert_eq!(kept, der(&first));

    // Half a renewal (a key that does not match the certificate): the last
    // good pair stays.
    let (_, stray_key) = certificate();
    write(&key_path, &stray_key);
    rt::sleep(Duration::from_millis(1500)).await;
    let (_, still) = health(&client(gateway, &second, false), gateway)
        .await
        .expect("the last good certificate");
    assert_eq!(still, der(&second));
}

/// Runs `streamgate monolith` with `args` and waits for it to exit; its
/// exit code and standard error.
async fn refused_start(data: &Path, args: &[&Path]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0", "--data-dir"])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (flag, path) in ["--http-tls-cert", "--http-tls-key"].iter().zip(args) {
        cmd.arg(flag).arg(path);
    }
    let mut child = cmd.spawn().expect("spawn");
    let started = rt::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (status.code(), String::from_utf8_lossy(&out.stderr).into());
        }
        if rt::now() - started > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("still running after 60 s: a bad TLS pair must stop the start");
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_certificate_and_key_that_do_not_match_stop_the_start() {
    let dir = Scratch::new("edge-tls-bad");
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    let cert_path: PathBuf = dir.path().join("cert.pem");
    let key_path: PathBuf = dir.path().join("key.pem");
    write(&cert_path, &cert);
    write(&key_path, &other_key);
    let (code, stderr) = refused_start(&dir.path().join("data"), &[&cert_path, &key_path]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("cert.pem")
            && stderr.contains("key.pem")
            && stderr.contains("the key does not match the certificate"),
        "the message names the files and the fault: {stderr}"
    );

    // A certificate without its key is a usage error.
    let (code, stderr) = refused_start(&dir.path().join("data"), &[&cert_path]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--http-tls-key"), "{stderr}");

    // A file that is not there.
    let missing = dir.path().join("missing.pem");
    let (code, stderr) = refused_start(&dir.path().join("data"), &[&cert_path, &missing]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");

    // A file that is not PEM.
    write(&cert_path, "not a certificate\n");
    let (code, stderr) = refused_start(&dir.path().join("data"), &[&cert_path, &key_path]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("cert.pem"), "{stderr}");
}
