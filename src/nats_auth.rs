//! How a process secures its NATS connections (`--nats-ca`, `--nats-cert`,
//! `--nats-key`, `--nats-creds`, `--nats-nkey-file`): TLS with the server
//! verified against a CA, optionally a client certificate (for a server
//! with `verify: true`), and user credentials, a `.creds` file (JWT and
//! seed, for a server in operator mode) or an nkey seed file. The bus, the
//! NATS KV registry and the worker's JetStream store all connect through
//! [`NatsAuth::apply`]. Only file names are kept here, so nothing secret is
//! ever printed or logged.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest nkey seed file read.
const MAX_SEED_BYTES: u64 = 4 << 10;

/// NATS TLS and credentials, as files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuth {
    /// CA certificates (PEM) the server's certificate must chain to; when
    /// set, TLS is required.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present.
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
    /// A NATS credentials file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding a user's nkey seed (`SU...`).
    pub nkey: Option<PathBuf>,
}

impl NatsAuth {
    /// Whether nothing is set (plain, anonymous connections).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `opts` with these settings applied.
    ///
    /// # Errors
    /// A file that cannot be read, or settings that do not go together,
    /// named (never the secret).
    pub async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        // async-nats makes its TLS configuration with rustls's process-wide
        // provider, which rustls cannot choose when the build carries two
        // (aws-lc-rs, ring): name the one the rest of StreamGate uses. A
        // provider installed already stays.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if let Some(ca) = &self.ca {
            std::fs::metadata(ca).map_err(|e| format!("NATS CA {}: {e}", ca.display()))?;
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => return Err("--nats-cert and --nats-key go together".to_owned()),
        }
        match (&self.creds, &self.nkey) {
            (Some(_), Some(_)) => {
                return Err("--nats-creds and --nats-nkey-file: give one".to_owned());
            }
            (Some(creds), None) => {
                opts = opts
                    .credentials_file(creds)
                    .await
                    .map_err(|e| format!("NATS credentials {}: {e}", creds.display()))?;
            }
            (None, Some(path)) => {
                let named =
                    |e: &dyn std::fmt::Display| format!("NATS nkey {}: {e}", path.display());
                let meta = std::fs::metadata(path).map_err(|e| named(&e))?;
                if meta.len() > MAX_SEED_BYTES {
                    return Err(named(&"larger than 4 KiB"));
                }
                let seed = std::fs::read_to_string(path).map_err(|e| named(&e))?;
                let seed = seed.trim();
                if !seed.starts_with("SU") {
                    return Err(named(&"not a user's nkey seed (SU...)"));
                }
                opts = opts.nkey(seed.to_owned());
            }
            (None, None) => {}
        }
        Ok(opts)
    }
}
