//! One StreamGate process: options, and [`run`], which starts the kernel
//! with the chosen services and stops it when asked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::memory::MemoryBus;

use crate::kernel::{Kernel, KernelError, Mode, Plugin, Seams};
use crate::middleware::auth::{Key, Keyring};
use crate::registry::CheckStyle;
use crate::registry::memory::MemoryRegistry;
use crate::services::auth::{Secret, ServiceClient, ServiceClients};
use crate::services::host::{AdminServer, serve_admin};
use crate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};

mod http_opts;
pub use http_opts::HttpOpts;

/// Options of a process (validated by [`NodeOpts::service_opts`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NodeOpts {
    /// Address every service listens on.
    #[arg(long, env = "STREAMGATE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The address other services reach this process at, as registered
    /// (default: `--host`, or 127.0.0.1 when that is 0.0.0.0 or ::).
    #[arg(long, env = "STREAMGATE_ADVERTISE_HOST")]
    pub advertise_host: Option<IpAddr>,
    /// Added to every default port (e.g. 1000: the gateway on 10090), to run
    /// a second copy beside the first.
    #[arg(long, env = "STREAMGATE_PORT_OFFSET", default_value_t = 0)]
    pub port_offset: u16,
    /// The service's port, instead of its default port plus `--port-offset`;
    /// 0 binds a free one (the monolith takes only 0: each service on a free
    /// port). Once serving, the process prints one line per service on
    /// stdout, `listening <service> <address>`, the address it bound (and
    /// registered).
    #[arg(long, env = "STREAMGATE_PORT")]
    pub port: Option<u16>,
    /// The process's admin listener: `GET /metrics` (Prometheus), `/health`
    /// and `/ready` for all the services of the process, without a token
    /// (keep it on loopback or a private network). Port 0 binds a free one;
    /// once serving, the process prints `admin <address>` on stdout.
    #[arg(long, env = "STREAMGATE_ADMIN_LISTEN", default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Where blobs (originals, HLS renditions) and the SQLite databases live.
    #[arg(long, env = "STREAMGATE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "STREAMGATE_MAX_UPLOAD_BYTES", default_value_t = crate::services::MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// File holding the auth service's token signing secret (its bytes,
    /// surrounding whitespace trimmed; 32..=4096 bytes, e.g. `openssl rand
    /// -hex 32`). Without it a random secret is drawn at start and tokens
    /// end with the process.
    #[arg(long, env = "STREAMGATE_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
    /// File of the services the auth service issues service tokens to: one
    /// line `<service name> <client secret> [scope,scope...]` each.
    #[arg(long, env = "STREAMGATE_AUTH_CLIENTS_FILE")]
    pub auth_clients_file: Option<PathBuf>,
    /// Reverse proxies in front of the gateway whose `X-Forwarded-For`
    /// names the client (the log-in lock-out and the per-client shares of
    /// requests in flight are per client address):
    /// comma-separated IP addresses or CIDR networks, e.g.
    /// `10.0.0.0/8,::1`. Empty (the default): the header is ignored and the
    /// connection's peer is the client.
    #[arg(long, env = "STREAMGATE_TRUSTED_PROXIES", default_value = "", value_parser = parse_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// Where blobs (originals, renditions, thumbnails) are kept. Unset:
    /// files under `--data-dir` (upload, transcoder and streaming then need
    /// one shared data dir). `s3://<bucket>[/<prefix>]`: an S3-compatible
    /// object store that every instance on any host shares, reached at
    /// `--s3-endpoint` with the credentials in the environment variables
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (never an option, so
    /// never printed).
    #[arg(long, env = "STREAMGATE_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// The S3 endpoint of `--blob-store s3://...`, e.g.
    /// `http://127.0.0.1:3900` (Garage); unset: AWS S3 itself.
    #[arg(long, env = "STREAMGATE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The S3 region of `--blob-store s3://...` (Garage's default is
    /// `garage`).
    #[arg(long, env = "STREAMGATE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector, e.g.
    /// `http://127.0.0.1:4317`; unset: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) if set,
    /// else no export. `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn export off; `OTEL_SERVICE_NAME`,
    /// `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT` and `OTEL_BSP_*` are
    /// honoured.
    #[arg(long, env = "STREAMGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The ratio of new traces exported (0.0..=1.0; a trace follows its
    /// root, parent-based); unset: `OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`, else 1.
    #[arg(long, env = "STREAMGATE_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<crate::telemetry::Ratio>,
    /// The upload service's orphan sweep.
    #[command(flatten)]
    pub sweep: SweepOpts,
    /// The public HTTP edge's limits (the api-gateway's).
    #[command(flatten)]
    pub http: HttpOpts,
}

/// The value of `--trusted-proxies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

fn parse_proxies(s: &str) -> Result<TrustedProxies, String> {
    crate::services::gateway::client_addr::parse_trusted_proxies(s).map(TrustedProxies)
}

/// The upload service's orphan sweep: blobs no video record names (an
/// upload that crashed mid-commit, a deleted video's files whose deletion
/// event was lost) are removed once older than the grace period.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SweepOpts {
    /// Seconds between two orphan sweeps (the first runs at start).
    #[arg(
        long,
        env = "STREAMGATE_ORPHAN_SWEEP_INTERVAL_SECS",
        default_value_t = crate::services::upload::sweep::INTERVAL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub orphan_sweep_interval_secs: u64,
    /// Age in seconds a blob without a record must reach before the sweep
    /// removes it. With several upload instances on one blob store it must
    /// exceed an upload's commit (60 s); one instance is safe with any.
    #[arg(
        long,
        env = "STREAMGATE_ORPHAN_SWEEP_GRACE_SECS",
        default_value_t = crate::services::upload::sweep::GRACE.as_secs(),
        value_parser = clap::value_parser!(u64).range(0..=30 * 86_400)
    )]
    pub orphan_sweep_grace_secs: u64,
}

impl SweepOpts {
    /// The sweep's settings.
    #[must_use]
    pub fn config(&self) -> crate::services::upload::sweep::Config {
        crate::services::upload::sweep::Config {
            interval: Duration::from_secs(self.orphan_sweep_interval_secs),
            grace: Duration::from_secs(self.orphan_sweep_grace_secs),
        }
    }
}

impl Default for SweepOpts {
    fn default() -> Self {
        let config = crate::services::upload::sweep::Config::default();
        Self {
            orphan_sweep_interval_secs: config.interval.as_secs(),
            orphan_sweep_grace_secs: config.grace.as_secs(),
        }
    }
}

impl NodeOpts {
    /// The plugins of `kinds`: each service's instance settings and its
    /// own config from these options.
    ///
    /// # Errors
    /// [`KernelError::Config`] when an offset port would pass 65535, a
    /// nonzero `--port` is given for more than one service, or a file named
    /// by an option is missing or invalid.
    pub fn plugins(&self, kinds: &[ServiceKind]) -> Result<Vec<ServicePlugin>, KernelError> {
        if let Some(port) = self.port.filter(|&p| p != 0 && kinds.len() > 1) {
            return Err(config_error(format!(
                "--port {port}: {} services cannot share one port; give --port 0 \
                 (each on a free port) or --port-offset",
                kinds.len()
            )));
        }
        kinds
            .iter()
            .map(|&kind| {
                let common = Common {
                    listen: self.listen(kind)?,
                    advertise: self.advertise_host,
                    data_dir: Some(self.data_dir.clone()),
                    ..Common::new(kind, self.host)
                };
                let mut config = ServiceConfig::new(kind);
                match &mut config {
                    ServiceConfig::ApiGateway(c) => {
                        *c = self
                            .http
                            .gateway(self.max_upload_bytes, &self.trusted_proxies.0);
                    }
                    ServiceConfig::Streaming(c) => {
                        c.media = self.http.media_listen.map(|listen| {
                            crate::services::streaming::MediaPort {
                                listen,
                                http: self
                                    .http
                                    .gateway(self.max_upload_bytes, &self.trusted_proxies.0),
                            }
                        });
                    }
                    ServiceConfig::Upload(c) => {
                        c.max_upload_bytes = self.max_upload_bytes;
                        c.sweep = self.sweep.config();
                    }
                    ServiceConfig::Metadata(c) => c.max_upload_bytes = self.max_upload_bytes,
                    ServiceConfig::Auth(c) => {
                        if let Some(path) = &self.auth_secret_file {
                            c.secret = Some(read_auth_secret(path)?);
                        }
                        if let Some(path) = &self.auth_clients_file {
                            c.clients = read_auth_clients(path)?;
                        }
                    }
                    ServiceConfig::Transcoder(_)
                    | ServiceConfig::Cache(_)
                    | ServiceConfig::Worker(_)
                    | ServiceConfig::Monitor(_) => {}
                }
                Ok(ServicePlugin::new(common, config))
            })
            .collect()
    }

    /// Where `kind` listens: `--port`, else its default port plus `--port-offset`.
    fn listen(&self, kind: ServiceKind) -> Result<SocketAddr, KernelError> {
        let port = match self.port {
            Some(port) => port,
            None => kind
                .default_port()
                .checked_add(self.port_offset)
                .ok_or_else(|| KernelError::Config {
                    plugin: kind.name().to_owned(),
                    reason: format!(
                        "port {} + offset {} > 65535",
                        kind.default_port(),
                        self.port_offset
                    ),
                })?,
        };
        Ok(SocketAddr::new(self.host, port))
    }
}

/// Runs `kinds` in this process until `shutdown` resolves, then stops them
/// gracefully. The monolith runs all nine on an in-memory bus and registry.
///
/// # Errors
/// A service failed to start.
pub async fn run(
    mode: Mode,
    opts: &NodeOpts,
    kinds: &[ServiceKind],
    shutdown: impl Future<Output = ()>,
) -> Result<(), KernelError> {
    let traces = traces::start(opts, "streamgate")?;
    let result = run_kernel(mode, opts, kinds, shutdown).await;
    traces::stop(traces).await;
    result
}

/// [`run`], once spans are being exported (if asked).
async fn run_kernel(
    mode: Mode,
    opts: &NodeOpts,
    kinds: &[ServiceKind],
    shutdown: impl Future<Output = ()>,
) -> Result<(), KernelError> {
    let plugins: Vec<Box<dyn Plugin>> = opts
        .plugins(kinds)?
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Plugin>)
        .collect();
    let kernel = match mode {
        Mode::Monolith => {
            let seams = Seams {
                bus: Arc::new(MemoryBus::new()),
                registry: Arc::new(MemoryRegistry::new()),
                blobs: blob_store(opts)?,
            };
            let pool = crate::client::PoolConfig::new(Keyring::generate("local"), "monolith");
            Kernel::start_with(seams, pool, plugins).await?
        }
        Mode::Microservices => {
            return Err(KernelError::Config {
                plugin: "kernel".to_owned(),
                reason: "microservices mode needs the cluster options: use run_service".to_owned(),
            });
        }
    };
    let started = start_admin(opts, kernel).await?;
    tracing::info!(
        services = started.kernel.registrations().len(),
        "streamgate is up"
    );
    shutdown.await;
    tracing::info!("shutting down");
    started.shutdown().await;
    Ok(())
}

/// A started kernel and the process's admin listener.
struct Started {
    kernel: Kernel,
    admin: AdminServer,
}

impl Started {
    /// Stops the kernel (the admin listener's `/ready` says draining
    /// meanwhile), then the admin listener.
    async fn shutdown(self) {
        self.kernel.shutdown().await;
        self.admin.stop().await;
    }
}

/// Starts the admin listener of `kernel`'s process on `--admin-listen` and
/// prints the `listening` lines and the `admin` line; stops the kernel when
/// the listener cannot be bound.
async fn start_admin(opts: &NodeOpts, kernel: Kernel) -> Result<Started, KernelError> {
    let admin = match serve_admin(opts.admin_listen, kernel.runtime()).await {
        Ok(admin) => admin,
        Err(e) => {
            kernel.shutdown().await;
            return Err(e);
        }
    };
    announce(opts.host, kernel.registrations(), admin.local_addr());
    Ok(Started { kernel, admin })
}

/// What a `listening` line on stdout starts with (see [`NodeOpts::port`]).
pub const LISTENING: &str = "listening";

/// What the line naming the admin listener starts with (see
/// [`NodeOpts::admin_listen`]).
pub const ADMIN: &str = "admin";

/// Prints `listening <service> <host>:<port>` on stdout for each service
/// served, then `admin <address>`: how a caller that passed `--port 0`
/// learns the ports.
fn announce(host: IpAddr, served: &[crate::registry::ServiceInfo], admin: SocketAddr) {
    use std::io::Write as _;
    let mut lines: String = served
        .iter()
        .map(|info| {
            let addr = SocketAddr::new(host, info.port);
            format!("{LISTENING} {} {addr}\n", info.name)
        })
        .collect();
    lines.push_str(&format!("{ADMIN} {admin}\n"));
    let mut out = std::io::stdout().lock();
    // Nobody reading stdout is no reason to stop serving.
    let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
}

/// The blob store: S3 for `--blob-store s3://...`, else files under the
/// data dir (memory in the simulator).
fn blob_store(opts: &NodeOpts) -> Result<Arc<dyn crate::blob::BlobStore>, KernelError> {
    #[cfg(not(madsim))]
    {
        if let Some(url) = &opts.blob_store {
            let config = s3_config(url, opts, |k| std::env::var(k).ok()).map_err(config_error)?;
            let store = crate::blob::s3::S3BlobStore::new(&config)
                .map_err(|e| KernelError::start("kernel", &format!("the blob store {url}"), e))?;
            return Ok(Arc::new(store));
        }
        let data_dir = &opts.data_dir;
        let store = crate::blob::fs::FsBlobStore::open(data_dir).map_err(|e| {
            KernelError::start(
                "kernel",
                &format!("the blob store in {}", data_dir.display()),
                e,
            )
        })?;
        Ok(Arc::new(store))
    }
    #[cfg(madsim)]
    {
        let _ = opts;
        Ok(Arc::new(crate::blob::memory::MemoryBlobStore::new()))
    }
}

/// The S3 settings of `--blob-store <url>` (`s3://<bucket>[/<prefix>]`),
/// with the credentials from `env` (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`).
///
/// # Errors
/// What is wrong with the URL, or which credential is missing.
#[cfg(not(madsim))]
fn s3_config(
    url: &str,
    opts: &NodeOpts,
    env: impl Fn(&str) -> Option<String>,
) -> Result<crate::blob::s3::S3Config, String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("--blob-store {url:?}: expected s3://<bucket>[/<prefix>]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(format!(
            "--blob-store {url:?}: the bucket is 3..=63 of [a-z0-9.-]"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        crate::blob::check_key(prefix).map_err(|e| format!("--blob-store {url:?}: prefix: {e}"))?;
    }
    let credential = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("--blob-store {url:?} needs the environment variable {name}"))
    };
    Ok(crate::blob::s3::S3Config {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        endpoint: opts.s3_endpoint.clone(),
        region: opts.s3_region.clone(),
        access_key_id: credential("AWS_ACCESS_KEY_ID")?,
        secret_access_key: credential("AWS_SECRET_ACCESS_KEY")?,
    })
}

/// Exporting spans over OTLP ([`crate::telemetry`]) for the life of a
/// process. Not in the simulator, whose trace ids stay the seed's.
mod traces {
    use super::{KernelError, NodeOpts, config_error};

    #[cfg(not(madsim))]
    pub(super) type Running = Option<crate::telemetry::otlp::Exporter>;
    /// Nothing runs in the simulator.
    #[cfg(madsim)]
    pub(super) struct Running;

    /// Starts exporting when `--otlp-endpoint` or the standard variables
    /// ask for it, as `service_name`.
    #[cfg(not(madsim))]
    pub(super) fn start(opts: &NodeOpts, service_name: &str) -> Result<Running, KernelError> {
        use crate::telemetry::otlp;
        let settings = otlp::settings(
            opts.otlp_endpoint.as_deref(),
            opts.trace_sample_ratio.map(crate::telemetry::Ratio::get),
            service_name,
            |name| std::env::var(name).ok(),
        )
        .map_err(config_error)?;
        let Some(settings) = settings else {
            return Ok(None);
        };
        let exporter = otlp::Exporter::start(&settings).map_err(config_error)?;
        if let Err(e) = crate::telemetry::install(Box::new(exporter.clone()), settings.ratio) {
            // A second node in one process (tests): the first one's export
            // goes on.
            tracing::warn!(error = e, "OTLP export: not installed again");
            return Ok(None);
        }
        tracing::info!(
            endpoint = settings
                .endpoint
                .as_deref()
                .unwrap_or("from OTEL_EXPORTER_OTLP_*"),
            ratio = settings.ratio,
            "exporting traces over OTLP"
        );
        Ok(Some(exporter))
    }

    #[cfg(madsim)]
    #[allow(clippy::unnecessary_wraps)]
    pub(super) fn start(opts: &NodeOpts, service_name: &str) -> Result<Running, KernelError> {
        let _ = (opts, service_name, config_error);
        Ok(Running)
    }

    /// Sends the spans still queued (off the async workers: the batch
    /// processor's shutdown blocks).
    #[cfg(not(madsim))]
    pub(super) async fn stop(running: Running) {
        if let Some(exporter) = running {
            let _ = crate::rt::blocking(move || exporter.shutdown()).await;
        }
    }

    #[cfg(madsim)]
    pub(super) async fn stop(running: Running) {
        let Running = running;
    }
}

/// Which registry a microservice uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A JetStream key-value bucket on the NATS server (the default here).
    NatsKv,
    /// A Consul agent's HTTP API.
    Consul,
}

/// Where a microservice worker keeps its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobQueueKind {
    /// A JetStream work queue and key-value bucket on the NATS server:
    /// workers on any host share the jobs (the default).
    Jetstream,
    /// A SQLite file in the data dir: workers share the jobs only with
    /// those on the same data dir.
    Sqlite,
}

/// How a microservice reaches the rest of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Cluster: bus, registry, service tokens")]
pub struct ClusterOpts {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "STREAMGATE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// NATS over TLS: the CA certificates (PEM) the server's certificate
    /// must chain to; TLS is then required.
    #[arg(long, env = "STREAMGATE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to NATS (a server with
    /// `verify: true`); with `--nats-key`.
    #[arg(long, env = "STREAMGATE_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// The key of `--nats-cert` (PEM).
    #[arg(long, env = "STREAMGATE_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
    /// NATS user credentials: a `.creds` file (user JWT and nkey seed, for
    /// a server in operator mode).
    #[arg(long, env = "STREAMGATE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user credentials: a file holding the user's nkey seed (`SU...`).
    #[arg(long, env = "STREAMGATE_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// The service registry.
    #[arg(
        long,
        env = "STREAMGATE_REGISTRY",
        value_enum,
        default_value = "nats-kv"
    )]
    pub registry: RegistryKind,
    /// Namespace put in front of every event subject on the wire (e.g.
    /// `staging`: `staging.streamgate.v1.file.uploaded`), so clusters can
    /// share a NATS server; every process of a cluster needs the same one.
    #[arg(long, env = "STREAMGATE_BUS_SUBJECT_PREFIX")]
    pub bus_subject_prefix: Option<String>,
    /// The NATS KV bucket holding registrations.
    #[arg(
        long,
        env = "STREAMGATE_REGISTRY_BUCKET",
        default_value = "streamgate_registry"
    )]
    pub registry_bucket: String,
    /// Where the worker keeps its jobs.
    #[arg(
        long,
        env = "STREAMGATE_JOB_QUEUE",
        value_enum,
        default_value = "jetstream"
    )]
    pub job_queue: JobQueueKind,
    /// Names the worker's JetStream key-value bucket of job records
    /// (`<name>`), its work queue stream (`<name>_queue`) and the queue's
    /// subjects (`<name>.dispatch.<job id>`); every worker of a cluster needs
    /// the same one. 1..=64 characters of `[A-Za-z0-9_-]`.
    #[arg(long, env = "STREAMGATE_JOBS_NAME", default_value = "streamgate_jobs")]
    pub jobs_name: String,
    /// PostgreSQL shared by every metadata, upload and auth instance (a
    /// `postgres://` URL or a libpq `key=value` string; printed and logged
    /// without its password). It holds metadata's catalog, upload's
    /// records, and auth's accounts, token revocations, refresh-token
    /// rotations and log-in lock-outs, so every auth instance sees the
    /// same accounts and enforces the same revocations and lock-outs (auth
    /// instances sharing it must share `--auth-secret-file` too). Unset:
    /// each keeps a SQLite file in the data dir (auth's lock-outs in its
    /// memory), so only one
    /// instance of each may run per data dir.
    #[arg(long, env = "STREAMGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The Consul agent's HTTP address.
    #[arg(
        long,
        env = "STREAMGATE_CONSUL_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub consul_addr: String,
    /// File holding the Consul ACL token, if ACLs are on.
    #[arg(long, env = "STREAMGATE_CONSUL_TOKEN_FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// The CA certificates (PEM) an `https://` Consul address's
    /// certificate must chain to; unset: the system's.
    #[arg(long, env = "STREAMGATE_CONSUL_CA")]
    pub consul_ca: Option<PathBuf>,
    /// A client certificate (PEM) for a Consul agent with
    /// `verify_incoming`; with `--consul-key`.
    #[arg(long, env = "STREAMGATE_CONSUL_CERT")]
    pub consul_cert: Option<PathBuf>,
    /// The key of `--consul-cert` (PEM).
    #[arg(long, env = "STREAMGATE_CONSUL_KEY")]
    pub consul_key: Option<PathBuf>,
    /// The check a service registers in Consul with: `ttl` (it sends
    /// heartbeats), `grpc` (Consul asks its standard gRPC health service,
    /// plain text) or `http` (Consul GETs its `/health`); every 2 s, 1 s
    /// timeout, removed after 1 min critical. Consul only.
    #[arg(
        long,
        env = "STREAMGATE_CONSUL_CHECK",
        value_enum,
        default_value = "ttl"
    )]
    pub consul_check: CheckStyle,
    /// How long a starting service waits for the NATS server and the
    /// registry to answer (retrying with backoff, each failure logged)
    /// before it exits with code 2 naming what it waited for: `60s`,
    /// `500ms`, `2m`.
    #[arg(
        long,
        env = "STREAMGATE_STARTUP_TIMEOUT",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub startup_timeout: Duration,
    /// File holding the service-token keys shared by the cluster: one line
    /// `<key id> <secret as hex, >= 64 digits>` for the current key, and an
    /// optional second line for the previous key (during a rotation).
    /// Needed when services talk plaintext. Under mutual TLS (`--tls-cert`)
    /// the certificate names the caller and no token is sent; the keys then
    /// only sign playback URLs, so a cluster of several gateways (and the
    /// streaming instances with a media port, which check them) still
    /// gives them all the same file (unset: a random key per process;
    /// refused with `--media-listen` or `--media-url`).
    #[arg(long, env = "STREAMGATE_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// Mutual TLS between services: the PEM file of the cluster CA (one or
    /// more certificates, all trusted: during a CA rotation, the old and
    /// the new). With `--tls-cert` and `--tls-key`; all three are read
    /// again when they change.
    #[arg(long, env = "STREAMGATE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This instance's certificate chain (PEM, leaf first), of the cluster
    /// CA, naming its service by the URI SAN `spiffe://streamgate/<service>`
    /// and the DNS SAN `<service>` (`streamgate certs issue` makes one).
    #[arg(long, env = "STREAMGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STREAMGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Let services talk plaintext, with service tokens, when no
    /// `--tls-cert` is given (a trusted network, local development). Without
    /// it a microservice refuses to start with no mutual TLS.
    #[arg(long, env = "STREAMGATE_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// The call policy: a TOML file saying which service may call which
    /// gRPC method (`config/call-policy.toml` is StreamGate's own call
    /// graph); every other call is refused with PERMISSION_DENIED. Unset:
    /// every verified caller may call every method.
    #[arg(long, env = "STREAMGATE_CALL_POLICY")]
    pub call_policy: Option<PathBuf>,
}

impl ClusterOpts {
    /// How to secure NATS connections (the bus, the NATS KV registry, the
    /// worker's JetStream store).
    #[cfg(not(madsim))]
    #[must_use]
    pub fn nats_auth(&self) -> crate::nats_auth::NatsAuth {
        crate::nats_auth::NatsAuth {
            ca: self.nats_ca.clone(),
            cert: self.nats_cert.clone(),
            key: self.nats_key.clone(),
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey_file.clone(),
        }
    }

    /// The mutual TLS files, when all three are given.
    #[must_use]
    pub fn service_tls(&self) -> Option<crate::rt::transport::ServiceTls> {
        Some(crate::rt::transport::ServiceTls {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// This microservice's identity and call policy: mutual TLS with
/// `cluster`'s files (refused when absent, unless `--allow-plaintext`),
/// else the service-token keys; the policy file, if any.
///
/// # Errors
/// [`KernelError::Config`] naming the file and what is wrong.
pub fn identity(
    kind: ServiceKind,
    cluster: &ClusterOpts,
) -> Result<crate::client::PoolConfig, KernelError> {
    let policy = match &cluster.call_policy {
        Some(path) => {
            let policy =
                crate::middleware::policy::CallPolicy::from_file(path).map_err(config_error)?;
            if let Some(unknown) = policy
                .callers()
                .into_iter()
                .find(|c| !ServiceKind::ALL.iter().any(|k| k.name() == *c))
            {
                return Err(config_error(format!(
                    "call policy {}: {unknown:?} is no service",
                    path.display()
                )));
            }
            Some(Arc::new(policy))
        }
        None => None,
    };
    let given = [
        ("--tls-ca", cluster.tls_ca.is_some()),
        ("--tls-cert", cluster.tls_cert.is_some()),
        ("--tls-key", cluster.tls_key.is_some()),
    ];
    if given.iter().any(|g| g.1) && !given.iter().all(|g| g.1) {
        let missing: Vec<&str> = given.iter().filter(|g| !g.1).map(|g| g.0).collect();
        return Err(config_error(format!(
            "--tls-ca, --tls-cert and --tls-key go together: {} missing",
            missing.join(" and ")
        )));
    }
    let (keys, tls) = match cluster.service_tls() {
        Some(files) => {
            let tls = files.load().map_err(|e| config_error(e.to_string()))?;
            if tls.service() != kind.name() {
                return Err(config_error(format!(
                    "{}: the certificate names {:?}, but this is {}",
                    files.cert.display(),
                    tls.service(),
                    kind.name()
                )));
            }
            // No service token is sent, and none is needed on a call over
            // mutual TLS; the keys still sign playback URLs, which every
            // gateway of a cluster must accept: the shared file's, if given.
            let keys = match &cluster.service_key_file {
                Some(path) => read_keyring(path)?,
                None => Keyring::generate("local"),
            };
            (keys, Some(tls))
        }
        None if !cluster.allow_plaintext => {
            return Err(config_error(
                "services talk plaintext without mutual TLS: give --tls-ca, --tls-cert and --tls-key (`streamgate certs` makes them), or --allow-plaintext on a trusted network"
                    .to_owned(),
            ));
        }
        None => {
            let path = cluster.service_key_file.as_deref().ok_or_else(|| {
                config_error("--service-key-file is needed without mutual TLS".to_owned())
            })?;
            (read_keyring(path)?, None)
        }
    };
    let mut pool = crate::client::PoolConfig::new(keys, kind.name());
    pool.tls = tls;
    pool.policy = policy;
    Ok(pool)
}

/// Parses a duration option: a whole number with a unit, `ms`, `s` or `m`
/// (`500ms`, `60s`, `2m`), at least 1 ms and at most a day.
///
/// # Errors
/// What is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 60s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: between 1ms and 24h"));
    }
    Ok(d)
}

/// First wait after a failed attempt to reach a dependency at start-up;
/// it doubles up to [`STARTUP_MAX_BACKOFF`].
pub const STARTUP_FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts at start-up.
pub const STARTUP_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Tries `connect` until it succeeds or `deadline` passes, waiting with
/// exponential backoff between attempts ([`STARTUP_FIRST_BACKOFF`]
/// doubling to [`STARTUP_MAX_BACKOFF`]) and logging each failure: under an
/// orchestrator that starts everything at once, what a service needs may
/// come up after it. Each attempt is cut at the deadline.
///
/// # Errors
/// [`KernelError::Unreachable`] naming `what` and the last failure.
pub async fn wait_for<T, E, Fut>(
    what: &str,
    deadline: crate::rt::Instant,
    mut connect: impl FnMut() -> Fut,
) -> Result<T, KernelError>
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    use crate::resilience::backoff::Backoff;
    use crate::rt;
    let backoff = Backoff {
        initial: STARTUP_FIRST_BACKOFF,
        max: STARTUP_MAX_BACKOFF,
        multiplier: 2.0,
    };
    let started = rt::now();
    let mut attempt = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        attempt = attempt.saturating_add(1);
        let left = deadline.saturating_duration_since(rt::now());
        let error = match rt::timeout(left, connect()).await {
            Ok(Ok(v)) => {
                if attempt > 1 {
                    tracing::info!(what, attempts = attempt, waited = ?(rt::now() - started), "reachable");
                }
                return Ok(v);
            }
            Ok(Err(e)) => e.to_string(),
            // The last attempt, cut short by the deadline, says less than
            // the one before.
            Err(rt::Elapsed) => match last_error.take() {
                Some(before) if left < STARTUP_MAX_BACKOFF => before,
                _ => format!("no answer within {left:?}"),
            },
        };
        last_error = Some(error.clone());
        let left = deadline.saturating_duration_since(rt::now());
        if left.is_zero() {
            return Err(KernelError::Unreachable {
                what: what.to_owned(),
                waited: rt::now() - started,
                last_error: error,
            });
        }
        let delay = backoff.nominal(attempt).min(left);
        tracing::warn!(what, attempt, %error, retry_in = ?delay, "not reachable yet; waiting");
        rt::sleep(delay).await;
    }
}

fn config_error(reason: String) -> KernelError {
    KernelError::Config {
        plugin: "kernel".to_owned(),
        reason,
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 1024 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads a keyring file (see [`ClusterOpts::service_key_file`]).
///
/// # Errors
/// [`KernelError::Config`] naming the file and what is wrong (never the secret).
pub fn read_keyring(path: &Path) -> Result<Keyring, KernelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    if text.len() > 4096 {
        return Err(config_error(format!(
            "{}: larger than 4 KiB",
            path.display()
        )));
    }
    let mut keys = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let bad = || {
                config_error(format!(
                    "{} line {}: expected `<key id> <hex secret>`",
                    path.display(),
                    n + 1
                ))
            };
            let (id, hex) = line.trim().split_once(' ').ok_or_else(bad)?;
            let secret = decode_hex(hex.trim()).ok_or_else(bad)?;
            Key::new(id, &secret)
                .map_err(|e| config_error(format!("{} line {}: {e}", path.display(), n + 1)))
        });
    let current = keys
        .next()
        .ok_or_else(|| config_error(format!("{}: no key", path.display())))??;
    let previous = keys.next().transpose()?;
    if keys.next().is_some() {
        return Err(config_error(format!(
            "{}: at most two keys (current, previous)",
            path.display()
        )));
    }
    Ok(Keyring { current, previous })
}

/// Reads the auth secret file (see [`NodeOpts::auth_secret_file`]).
///
/// # Errors
/// [`KernelError::Config`] naming the file and what is wrong (never the secret).
pub fn read_auth_secret(path: &Path) -> Result<Secret, KernelError> {
    use crate::services::auth::secret::{MAX_SECRET_BYTES, MIN_SECRET_BYTES};
    let bytes =
        std::fs::read(path).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    let trimmed = bytes.trim_ascii();
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&trimmed.len()) {
        return Err(config_error(format!(
            "{}: the auth secret must be {MIN_SECRET_BYTES}..={MAX_SECRET_BYTES} bytes",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed.to_vec()))
}

/// Reads the auth clients file (see [`NodeOpts::auth_clients_file`]).
///
/// # Errors
/// [`KernelError::Config`] naming the file and line (never a secret).
pub fn read_auth_clients(path: &Path) -> Result<ServiceClients, KernelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    if text.len() > 64 << 10 {
        return Err(config_error(format!(
            "{}: larger than 64 KiB",
            path.display()
        )));
    }
    let clients = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, line)| {
            let bad =
                |what: &str| config_error(format!("{} line {}: {what}", path.display(), n + 1));
            let mut parts = line.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let secret = parts.next().unwrap_or_default();
            let scopes: Vec<String> = parts
                .next()
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if !crate::services::media::is_id(name) {
                return Err(bad("service name: 1..=64 chars of [A-Za-z0-9_-]"));
            }
            if !(16..=256).contains(&secret.len()) {
                return Err(bad("client secret: 16..=256 bytes"));
            }
            if scopes.len() > 32
                || !scopes
                    .iter()
                    .all(|s| crate::services::auth::token::is_scope(s))
            {
                return Err(bad("scopes: at most 32, comma-separated, of [a-z0-9_.:-]"));
            }
            if parts.next().is_some() {
                return Err(bad(
                    "expected `<service name> <client secret> [scope,scope...]`",
                ));
            }
            Ok(ServiceClient::new(name, secret.as_bytes(), scopes))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceClients::new(clients))
}

/// Runs one service as its own process (microservices mode): NATS bus, a
/// networked registry, keys from a file. Stops gracefully when `shutdown`
/// resolves: NOT_SERVING, deregister, drain.
///
/// # Errors
/// Bad options, an unreachable NATS server or registry, or a failed start.
#[cfg(not(madsim))]
pub async fn run_service(
    kind: ServiceKind,
    opts: &NodeOpts,
    cluster: &ClusterOpts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KernelError> {
    let traces = traces::start(opts, kind.name())?;
    let result = run_service_kernel(kind, opts, cluster, shutdown).await;
    traces::stop(traces).await;
    result
}

/// [`run_service`], once spans are being exported (if asked).
#[cfg(not(madsim))]
async fn run_service_kernel(
    kind: ServiceKind,
    opts: &NodeOpts,
    cluster: &ClusterOpts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KernelError> {
    use crate::bus::nats::{NatsBus, NatsOpts};
    use crate::registry::Registry;

    let identity = identity(kind, cluster)?;
    // Playback URLs are signed by a gateway and checked by the media port:
    // under mutual TLS, without the shared key file, each process would
    // draw a key of its own.
    let media_role = match kind {
        ServiceKind::Streaming if opts.http.media_listen.is_some() => Some("--media-listen"),
        ServiceKind::ApiGateway if opts.http.media_url.is_some() => Some("--media-url"),
        _ => None,
    };
    if let Some(option) = media_role
        && identity.tls.is_some()
        && cluster.service_key_file.is_none()
    {
        return Err(config_error(format!(
            "{option} under mutual TLS needs --service-key-file, the same file on every gateway \
             and every streaming instance with a media port: its keys sign and check the \
             playback URLs"
        )));
    }
    if cluster.consul_check != CheckStyle::Ttl && identity.tls.is_some() {
        return Err(config_error(
            "--consul-check grpc or http cannot reach a service under mutual TLS: use ttl"
                .to_owned(),
        ));
    }
    if cluster.consul_check != CheckStyle::Ttl && cluster.registry != RegistryKind::Consul {
        return Err(config_error(
            "--consul-check grpc or http needs --registry consul (the NATS KV registry has TTL checks only)"
                .to_owned(),
        ));
    }
    let nats_auth = cluster.nats_auth();
    // Files missing or not going together stop the start now, not after
    // the start-up timeout.
    nats_auth
        .apply(async_nats::ConnectOptions::new())
        .await
        .map_err(config_error)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let deadline = crate::rt::now() + cluster.startup_timeout;
    let dependencies = async {
        let bus_opts = NatsOpts {
            url: cluster.nats_url.clone(),
            client_name: format!("streamgate-{}", kind.name()),
            subject_prefix: cluster.bus_subject_prefix.clone(),
            auth: nats_auth.clone(),
            ..NatsOpts::default()
        };
        let bus = wait_for(&format!("NATS at {}", cluster.nats_url), deadline, || {
            NatsBus::connect(bus_opts.clone())
        })
        .await?;
        let registry: Arc<dyn Registry> = match cluster.registry {
            RegistryKind::NatsKv => {
                let mut kv = crate::registry::nats_kv::Options::new(cluster.nats_url.clone());
                kv.bucket.clone_from(&cluster.registry_bucket);
                kv.auth = nats_auth.clone();
                let what = format!("the NATS KV registry at {}", cluster.nats_url);
                Arc::new(
                    wait_for(&what, deadline, || {
                        crate::registry::nats_kv::NatsKvRegistry::connect(kv.clone())
                    })
                    .await?,
                )
            }
            RegistryKind::Consul => {
                let token = match &cluster.consul_token_file {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|e| config_error(format!("{}: {e}", path.display())))?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                };
                let config = crate::registry::consul::ConsulConfig {
                    address: cluster.consul_addr.clone(),
                    token,
                    tls: crate::registry::consul::ConsulTls {
                        ca: cluster.consul_ca.clone(),
                        cert: cluster.consul_cert.clone(),
                        key: cluster.consul_key.clone(),
                    },
                    ..Default::default()
                };
                let consul = crate::registry::consul::ConsulRegistry::connect(&config)
                    .map_err(|e| config_error(e.to_string()))?;
                let what = format!("the Consul agent at {}", cluster.consul_addr);
                wait_for(&what, deadline, || consul.health()).await?;
                Arc::new(consul)
            }
        };
        Ok::<_, KernelError>((bus, registry))
    };
    let (bus, registry) = tokio::select! {
        ready = dependencies => ready?,
        () = &mut shutdown => {
            tracing::info!(service = kind.name(), "stopped while waiting for its dependencies");
            return Ok(());
        }
    };
    let job_queue = match cluster.job_queue {
        JobQueueKind::Sqlite => crate::services::worker::JobQueue::Sqlite,
        JobQueueKind::Jetstream => {
            crate::services::media::check_id("jobs-name", &cluster.jobs_name)
                .map_err(config_error)?;
            crate::services::worker::JobQueue::JetStream {
                url: cluster.nats_url.clone(),
                name: cluster.jobs_name.clone(),
                auth: nats_auth.clone(),
            }
        }
    };
    let plugins: Vec<Box<dyn Plugin>> = opts
        .plugins(&[kind])?
        .into_iter()
        .map(|mut p| {
            match p.config_mut() {
                ServiceConfig::Worker(c) => c.job_queue = job_queue.clone(),
                ServiceConfig::Metadata(c) => {
                    c.database = cluster
                        .database_url
                        .clone()
                        .map(crate::schema::DatabaseUrl::new);
                }
                ServiceConfig::Auth(c) => {
                    c.database = cluster
                        .database_url
                        .clone()
                        .map(crate::schema::DatabaseUrl::new);
                }
                ServiceConfig::Upload(c) => {
                    c.database = cluster
                        .database_url
                        .clone()
                        .map(crate::schema::DatabaseUrl::new);
                }
                _ => {}
            }
            p.common_mut().check = cluster.consul_check;
            Box::new(p) as Box<dyn Plugin>
        })
        .collect();
    let seams = Seams {
        bus: Arc::new(bus),
        registry,
        blobs: blob_store(opts)?,
    };
    let kernel = Kernel::start_with(seams, identity, plugins).await?;
    let started = start_admin(opts, kernel).await?;
    tracing::info!(service = kind.name(), "up");
    shutdown.await;
    tracing::info!(service = kind.name(), "shutting down");
    started.shutdown().await;
    Ok(())
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn opts(port: Option<u16>, port_offset: u16) -> NodeOpts {
        NodeOpts {
            host: IpAddr::from([127, 0, 0, 1]),
            advertise_host: None,
            port_offset,
            port,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: PathBuf::from("data"),
            max_upload_bytes: 1 << 20,
            auth_secret_file: None,
            auth_clients_file: None,
            trusted_proxies: TrustedProxies::default(),
            sweep: SweepOpts::default(),
            http: HttpOpts::default(),
            blob_store: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            otlp_endpoint: None,
            trace_sample_ratio: None,
        }
    }

    #[test]
    fn the_s3_blob_store_option_is_checked() {
        let o = opts(None, 0);
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("GKid".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cret".to_owned()),
            _ => None,
        };
        let c = s3_config("s3://media-bucket/a/b/", &o, env).expect("valid");
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("media-bucket", "a/b")
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let bare = s3_config("s3://media", &o, env).expect("no prefix");
        assert_eq!(bare.prefix, "");
        for (url, said) in [
            ("http://x/y", "expected s3://"),
            ("s3://UPPER", "the bucket"),
            ("s3://ab", "the bucket"),
            ("s3://ok-bucket/../x", "prefix"),
        ] {
            let e = s3_config(url, &o, env).expect_err(url);
            assert!(e.contains(said), "{url}: {e}");
        }
        let e = s3_config("s3://media", &o, |_| None).expect_err("no credentials");
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
    }

    fn ports(opts: &NodeOpts, kinds: &[ServiceKind]) -> Result<Vec<u16>, KernelError> {
        opts.plugins(kinds)?;
        kinds
            .iter()
            .map(|&k| opts.listen(k).map(|a| a.port()))
            .collect()
    }

    #[test]
    fn port_overrides_the_offset_and_zero_serves_any_number_of_services() {
        let all = &ServiceKind::ALL;
        let defaults: Vec<u16> = all.iter().map(|k| k.default_port() + 5).collect();
        assert_eq!(ports(&opts(None, 5), all).unwrap(), defaults);
        assert_eq!(ports(&opts(Some(0), 5), all).unwrap(), vec![0; 9]);
        assert_eq!(
            ports(&opts(Some(4321), 5), &[ServiceKind::Cache]).unwrap(),
            [4321]
        );
        let err = ports(&opts(Some(4321), 0), all).unwrap_err().to_string();
        assert!(
            err.contains("--port 4321") && err.contains("--port 0"),
            "{err}"
        );
        let err = ports(&opts(None, 60_000), all).unwrap_err().to_string();
        assert!(err.contains("> 65535"), "{err}");
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        for bad in ["", "60", "s", "1h", "-1s", "0s", "1.5s", "90000s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_backs_off_and_gives_up_at_the_deadline() {
        use crate::rt;
        let started = rt::now();
        let mut attempts = Vec::new();
        let result: Result<(), KernelError> =
            wait_for("the thing", started + Duration::from_secs(10), || {
                attempts.push(rt::now() - started);
                async { Err::<(), _>("refused") }
            })
            .await;
        match result {
            Err(KernelError::Unreachable {
                what,
                waited,
                last_error,
            }) => {
                assert_eq!(what, "the thing");
                assert_eq!(waited, Duration::from_secs(10));
                assert_eq!(last_error, "refused");
            }
            other => panic!("{other:?}"),
        }
        // 0, then waits of 0.2, 0.4, 0.8, 1.6, 3.2 s, then the deadline.
        let ms: Vec<u128> = attempts.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 200, 600, 1400, 3000, 6200, 10_000]);
        // Reached on the third attempt.
        let mut n = 0;
        let got = wait_for("x", rt::now() + Duration::from_secs(10), || {
            n += 1;
            let ok = n == 3;
            async move { if ok { Ok(n) } else { Err("not yet") } }
        })
        .await;
        assert_eq!(got.expect("reached"), 3);
    }
}
