//! `streamgate certs`: a development CA and per-service certificates for
//! mutual TLS between services (rcgen).
//!
//! `init` makes the CA (`ca.pem`, `ca-key.pem`) in a directory; `issue`
//! makes, for each service named, `<service>.pem` and `<service>-key.pem`
//! signed by it, naming the service by the URI SAN
//! `spiffe://streamgate/<service>` (what a server reads off its client) and
//! the DNS SAN `<service>` (what a client checks its server against). Files
//! are written whole and then renamed into place, so a running service that
//! rereads them (`rt/mtls.rs`) never sees half of one: `issue` again is a
//! rotation. Keys are written readable by their owner only.
//!
//! For production, any CA that issues such certificates will do (SPIRE,
//! cert-manager, Vault PKI).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::rt::mtls::SPIFFE_PREFIX;
use crate::services::ServiceKind;

/// Default lifetime of the CA.
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of a service certificate.
pub const CERT_DAYS: u32 = 90;
/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca-key.pem";

/// What `streamgate certs` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new CA in DIR (`ca.pem`, `ca-key.pem`); refuses to replace one.
    Init {
        /// Where the files go (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a certificate and key for each service named (all nine when
    /// none is), signed by DIR's CA: `<service>.pem`, `<service>-key.pem`.
    /// Issuing again replaces them (a rotation; running services reread them).
    Issue {
        /// Where the CA is and the files go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days each certificate is valid.
        #[arg(long, default_value_t = CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// The services (`api-gateway`, `upload`, ...).
        #[arg(value_enum)]
        services: Vec<ServiceKind>,
    },
}

/// Why a certificate could not be made (names the file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertsError(String);

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::from(crate::rt::system_now());
    // An hour back, for clocks a little behind this one.
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
}

/// Writes `bytes` to `path` whole: a temporary file beside it, renamed.
fn write_whole(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: std::io::Error| CertsError(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> CertsError + '_ {
    move |e| CertsError(format!("{what}: {e}"))
}

/// Makes a CA in `dir`.
///
/// # Errors
/// A CA is there already, or a file could not be written.
pub fn init(dir: &Path, days: u32) -> Result<Vec<PathBuf>, CertsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert_path.exists() || key_path.exists() {
        return Err(CertsError(format!(
            "{}: a CA is there already (remove it to make a new one)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| CertsError(format!("{}: {e}", dir.display())))?;
    let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "StreamGate cluster CA");
    params.distinguished_name = name;
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(rcgen_err("CA"))?;
    write_whole(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_whole(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(vec![cert_path, key_path])
}

/// Issues a certificate for each of `services` with `dir`'s CA.
///
/// # Errors
/// No CA in `dir`, or a file could not be written.
pub fn issue(dir: &Path, days: u32, services: &[ServiceKind]) -> Result<Vec<PathBuf>, CertsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| {
            CertsError(format!(
                "{}: {e} (`streamgate certs init --dir {}` makes the CA)",
                path.display(),
                dir.display()
            ))
        })
    };
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(rcgen_err(CA_KEY))?;
    let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT)?, ca_key).map_err(rcgen_err(CA_CERT))?;
    let services = if services.is_empty() {
        ServiceKind::ALL.to_vec()
    } else {
        services.to_vec()
    };
    let mut written = Vec::new();
    for kind in services {
        let service = kind.name();
        let key = KeyPair::generate().map_err(rcgen_err("key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, service);
        params.distinguished_name = name;
        params.subject_alt_names = vec![
            SanType::URI(
                format!("{SPIFFE_PREFIX}{service}")
                    .try_into()
                    .map_err(rcgen_err(service))?,
            ),
            SanType::DnsName(service.try_into().map_err(rcgen_err(service))?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_err(service))?;
        let (cert_path, key_path) = (
            dir.join(format!("{service}.pem")),
            dir.join(format!("{service}-key.pem")),
        );
        // The key first: a service rereading between the two renames sees
        // a new key with the old certificate, refuses the pair and keeps
        // its last one until the certificate lands a moment later.
        write_whole(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_whole(&cert_path, cert.pem().as_bytes(), false)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Runs `command`, printing the files written.
///
/// # Errors
/// As [`init`] and [`issue`].
pub fn run(command: &CertsCommand) -> Result<Vec<PathBuf>, CertsError> {
    match command {
        CertsCommand::Init { dir, days } => init(dir, *days),
        CertsCommand::Issue {
            dir,
            days,
            services,
        } => issue(dir, *days, services),
    }
}
