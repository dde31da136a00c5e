//! Mutual TLS between services (`--tls-ca`, `--tls-cert`, `--tls-key`):
//! rustls (the aws-lc-rs provider, TLS 1.3 and 1.2) under tonic, both ends
//! presenting a certificate of the cluster CA that names its service.
//!
//! A certificate names its service twice: the URI SAN
//! `spiffe://streamgate/<service>` (the workload identity a server reads
//! off its client, as SPIFFE does) and the DNS SAN `<service>` (which a
//! client checks against the service it meant to call, so a stock client
//! such as grpcio verifies a server with `ssl_target_name_override`).
//! `streamgate certs` issues such certificates.
//!
//! The three files are looked at again at most once a second, on a new
//! connection; when any has changed (size or modification time) all three
//! are read again and the next connections use them, both ways, without a
//! restart (a rotated certificate, key or CA). A set that does not load, or
//! a certificate naming another service, is logged and the last good set
//! kept; connections already open keep theirs.
//!
//! Why not tonic's own `ServerTlsConfig`: it reads its files once and
//! cannot rotate them. tonic takes any accepted stream instead
//! (`serve_with_incoming`) and any connector, so the handshake here is
//! tokio-rustls's, and the verified peer rides on the connection into
//! every request as [`MtlsPeer`] (tonic's `Connected`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;

use super::transport::{
    CONNECT_TIMEOUT, MAX_FRAME_BYTES, MtlsPeer, ServiceTls, TlsError, valid_service,
};
use crate::rt::{self, Instant};

/// How often the files may be looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);
/// Longest a server waits for a client to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes a server runs at once; past it, accepting waits.
const MAX_HANDSHAKES: usize = 256;
/// Accepted and handshaken connections tonic has not yet taken.
const READY_QUEUE: usize = 64;

/// The trust domain of the URI SAN.
pub const SPIFFE_PREFIX: &str = "spiffe://streamgate/";

/// What the files were when last read: size and modification time of each.
type Stamp = [(u64, Option<SystemTime>); 3];

fn stamp(files: &ServiceTls) -> Result<Stamp, TlsError> {
    let of = |path: &Path| {
        let meta = std::fs::metadata(path)
            .map_err(|e| TlsError(format!("TLS file {}: {e}", path.display())))?;
        Ok::<_, TlsError>((meta.len(), meta.modified().ok()))
    };
    Ok([of(&files.ca)?, of(&files.cert)?, of(&files.key)?])
}

/// The service a certificate names by its URI SAN
/// `spiffe://streamgate/<service>`; `None` for a certificate that names
/// none, names two, or does not parse.
#[must_use]
pub fn service_of(cert: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut named = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(SPIFFE_PREFIX),
        _ => None,
    });
    match (named.next(), named.next()) {
        (Some(service), None) if valid_service(service) => Some(service.to_owned()),
        _ => None,
    }
}

/// The PEM certificates in `path` (at least one); the error names `what`
/// and the file. Shared by the public port's TLS (`edge/tls.rs`) and the
/// Consul client's.
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate.
pub fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError(format!("{what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(certs)
}

/// Why a certificate and its key did not load together, naming both files.
#[must_use]
pub fn pair_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    let why = match e {
        rustls::Error::InconsistentKeys(_) => "the key does not match the certificate".to_owned(),
        other => other.to_string(),
    };
    TlsError(format!("{} with {}: {why}", cert.display(), key.display()))
}

/// Both ends' configuration, from one reading of the files.
#[derive(Debug)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    service: String,
}

/// Reads the three files: the CA (one or more certificates, all trusted:
/// during a CA rotation, the old and the new), this instance's chain (leaf
/// first, naming its service) and its key.
fn load(files: &ServiceTls, provider: &Arc<CryptoProvider>) -> Result<Configs, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs("CA file", &files.ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError(format!("CA file {}: {e}", files.ca.display())))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs("certificate file", &files.cert)?;
    let service = chain.first().and_then(|leaf| service_of(leaf)).ok_or_else(|| {
        TlsError(format!(
            "certificate file {}: the certificate names no service (a URI SAN {SPIFFE_PREFIX}<service>)",
            files.cert.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("key file {}: {e}", files.key.display())))?;
    let mismatch = |e| pair_error(&files.cert, &files.key, e);
    let config_err = |e: &dyn std::fmt::Display| TlsError(format!("TLS configuration: {e}"));

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config_err(&e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| config_err(&e))?;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(&e))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(mismatch)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
        service,
    })
}

#[derive(Debug)]
struct Current {
    configs: Configs,
    stamp: Stamp,
    checked: Instant,
}

/// This instance's identity: its configurations, read again when the files
/// change.
#[derive(Debug)]
pub struct Reloader {
    files: ServiceTls,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

impl Reloader {
    /// Reads the files once now, so that a set that does not load stops
    /// the start with a clear error.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(files: &ServiceTls) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamp = stamp(files)?;
        let configs = load(files, &provider)?;
        Ok(Self {
            files: files.clone(),
            provider,
            current: Mutex::new(Current {
                configs,
                stamp,
                checked: rt::now(),
            }),
        })
    }

    /// The service the certificate names.
    #[must_use]
    pub fn service(&self) -> String {
        self.lock().configs.service.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refreshed(&self) -> std::sync::MutexGuard<'_, Current> {
        let mut current = self.lock();
        let now = rt::now();
        if now.duration_since(current.checked) < RECHECK {
            return current;
        }
        current.checked = now;
        match stamp(&self.files) {
            Ok(stamp) if stamp != current.stamp => match load(&self.files, &self.provider) {
                Ok(configs) if configs.service == current.configs.service => {
                    tracing::info!(cert = %self.files.cert.display(), "service TLS files reloaded");
                    current.configs = configs;
                    current.stamp = stamp;
                }
                Ok(configs) => tracing::warn!(
                    cert = %self.files.cert.display(),
                    names = configs.service,
                    serving_as = current.configs.service,
                    "service certificate not reloaded: it names another service; the last one stays"
                ),
                // Half written, say: the next look tries again.
                Err(e) => {
                    tracing::warn!(error = %e, "service TLS files not reloaded; the last ones stay");
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "service TLS files unreadable; the last ones stay")
            }
        }
        current
    }

    fn server(&self) -> Arc<ServerConfig> {
        self.refreshed().configs.server.clone()
    }

    fn client(&self) -> Arc<ClientConfig> {
        self.refreshed().configs.client.clone()
    }
}

/// A served connection, handshaken, with its verified peer.
pub struct MtlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: MtlsPeer,
}

impl Connected for MtlsConn {
    type ConnectInfo = MtlsPeer;

    fn connect_info(&self) -> MtlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for MtlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` and runs each handshake in a task of its own (a
/// slow client holds up no other), handing tonic the connections whose
/// client presented a certificate of the CA naming a service. The accept
/// loop ends when tonic drops the stream (shutdown).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloader>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<MtlsConn>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    drop(rt::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: the next try may succeed.
                    tracing::warn!(error = %e, "accepting a service connection failed");
                    rt::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
            let tx = tx.clone();
            drop(rt::spawn(async move {
                let _permit = permit;
                let stream = match rt::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "service TLS handshake refused");
                        return;
                    }
                    Err(rt::Elapsed) => {
                        tracing::info!(peer = %addr, "service TLS handshake timed out");
                        return;
                    }
                };
                let named = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| service_of(leaf));
                let Some(service) = named else {
                    tracing::info!(peer = %addr, "service connection refused: its certificate names no service");
                    return;
                };
                let peer = MtlsPeer {
                    addr,
                    service: service.into(),
                };
                let _ = tx.send(Ok(MtlsConn { stream, peer })).await;
            }));
        }
    }));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A channel to `service` at `addr` over mutual TLS: it presents this
/// instance's certificate and accepts only a server whose certificate, of
/// the CA, names `service`.
#[must_use]
pub fn channel(addr: SocketAddr, tls: Arc<Reloader>, service: &str) -> tonic::transport::Channel {
    let name = ServerName::try_from(service.to_owned()).map_err(|e| e.to_string());
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = tls.client();
        let name = name.clone();
        async move {
            let name = name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address always forms a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .max_frame_size(MAX_FRAME_BYTES)
        .connect_with_connector_lazy(connector)
}
