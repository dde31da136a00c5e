//! TLS on the public port (optional, `--http-tls-cert` and `--http-tls-key`):
//! rustls (the aws-lc-rs provider, TLS 1.2 and 1.3) with the certificate
//! chain and key read from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! The files are looked at again on a handshake at most once a second; when
//! either has changed (size or modification time), both are read again and
//! the next handshakes present the new certificate, without a restart (a
//! renewed certificate, rotated by whatever renews it). A pair that does not
//! load (half written, a key that does not match) is logged and the last
//! good one kept; connections already open keep theirs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_rustls::TlsAcceptor;

use crate::rt::transport::{EdgeTls, TlsError};
use crate::rt::{self, Instant};

/// How often the files may be looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// What the files were when last read: size and modification time of each.
type Stamp = [(u64, Option<SystemTime>); 2];

fn stamp(files: &EdgeTls) -> Result<Stamp, TlsError> {
    let of = |path: &Path| {
        let meta = std::fs::metadata(path)
            .map_err(|e| TlsError(format!("TLS file {}: {e}", path.display())))?;
        Ok::<_, TlsError>((meta.len(), meta.modified().ok()))
    };
    Ok([of(&files.cert)?, of(&files.key)?])
}

/// Reads the pair: the chain (leaf first) and its key, which must match.
fn load(files: &EdgeTls, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = crate::rt::mtls::read_certs("certificate file", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("key file {}: {e}", files.key.display())))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| crate::rt::mtls::pair_error(&files.cert, &files.key, e))?;
    Ok(Arc::new(certified))
}

/// The pair in use and when the files were last looked at.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// Presents the certificate of the files, read again when they change.
#[derive(Debug)]
struct Reloading {
    files: EdgeTls,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

impl Reloading {
    fn key(&self) -> Arc<CertifiedKey> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = rt::now();
        if now.duration_since(current.checked) >= RECHECK {
            current.checked = now;
            match stamp(&self.files) {
                Ok(stamp) if stamp != current.stamp => match load(&self.files, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        current.key = key;
                        current.stamp = stamp;
                    }
                    // Half written, say: the next look tries again.
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the last one stays")
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files unreadable; the last certificate stays");
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

/// The acceptor for `files`: read once now, so that a pair that does not
/// load stops the start with a clear error.
///
/// # Errors
/// [`TlsError`] naming the file and what is wrong with it.
pub fn acceptor(files: &EdgeTls) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let stamp = stamp(files)?;
    let key = load(files, &provider)?;
    let resolver = Arc::new(Reloading {
        files: files.clone(),
        provider: provider.clone(),
        current: Mutex::new(Current {
            key,
            stamp,
            checked: rt::now(),
        }),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS configuration: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
