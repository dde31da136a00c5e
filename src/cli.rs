//! The process edge the binaries share (`streamgate` and the nine
//! per-service ones): options from flags, environment variables and a
//! config file, logging, signals, then [`node::run`] or [`node::run_service`].
//! With `src/bin/`, the only code that reads the arguments and environment.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::kernel::Mode;
use crate::node::{self, ClusterOpts, NodeOpts};
use crate::services::ServiceKind;

pub mod certs;
pub mod client;
pub mod config;
pub mod log;

pub use config::{ConfigError, Layered};
pub use log::{LogFormat, LogOpts};

/// The environment variable naming the config file (as `--config` does).
pub const CONFIG_ENV: &str = "STREAMGATE_CONFIG";

/// Options every binary has besides the node and cluster ones.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Configuration and logging")]
pub struct CommonOpts {
    /// A TOML file of options, keys named as the long options
    /// (`port-offset = 1000`, `data-dir = "/srv/streamgate"`); flags and
    /// environment variables override it. Unknown keys are errors.
    #[arg(long, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the options in effect as a config file, each with where it came
    /// from (flag, env, file, default), and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub log: LogOpts,
}

/// The options of one service's binary (microservices mode).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(version)]
pub struct ServiceCli {
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub common: CommonOpts,
}

impl ServiceCli {
    /// The command of `kind`'s binary, named after it.
    #[must_use]
    pub fn command_for(kind: ServiceKind) -> clap::Command {
        Self::command()
            .name(kind.name())
            .bin_name(kind.name())
            .about(format!(
                "StreamGate's {} service ({}) in its own process: microservices mode, \
                 on the NATS bus with a networked registry",
                kind.name(),
                kind.summary()
            ))
            .after_help(PRECEDENCE_HELP)
    }
}

const PRECEDENCE_HELP: &str = "Each option is taken from, first to last: its flag, its environment \
variable, the --config file (keys are the long option names), its default. \
SIGTERM or Ctrl-C stops gracefully: NOT_SERVING, deregistered, calls in flight drained.";

/// `streamgate`: the monolith, or one service.
#[derive(Debug, Parser)]
#[command(version, about = "StreamGate video platform back end", after_help = PRECEDENCE_HELP)]
pub struct StreamgateCli {
    #[command(subcommand)]
    pub command: StreamgateCommand,
}

/// What `streamgate` runs.
#[derive(Debug, Subcommand)]
pub enum StreamgateCommand {
    /// Run all nine services in one process (in-memory bus and registry).
    Monolith {
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        common: CommonOpts,
    },
    /// Run one service (microservices mode: NATS bus, networked registry);
    /// the same as the service's own binary.
    Service {
        /// Which service.
        #[arg(value_enum)]
        kind: ServiceKind,
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        cluster: Box<ClusterOpts>,
        #[command(flatten)]
        common: CommonOpts,
    },
    /// Make a development CA and per-service certificates for mutual TLS
    /// between services (`--tls-ca`, `--tls-cert`, `--tls-key`).
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
}

/// The main of `kind`'s binary.
#[must_use]
pub fn service_main(kind: ServiceKind) -> ExitCode {
    let Some((layered, cli)) = parse::<ServiceCli>(ServiceCli::command_for(kind), |m| {
        ServiceCli::from_arg_matches(m)
    }) else {
        return ExitCode::from(2);
    };
    let common = cli.common.clone();
    start(&layered, &common, kind.name(), |shutdown| async move {
        node::run_service(kind, &cli.node, &cli.cluster, shutdown).await
    })
}

/// The main of `streamgate`.
#[must_use]
pub fn streamgate_main() -> ExitCode {
    let Some((layered, cli)) = parse::<StreamgateCli>(StreamgateCli::command(), |m| {
        StreamgateCli::from_arg_matches(m)
    }) else {
        return ExitCode::from(2);
    };
    match cli.command {
        StreamgateCommand::Monolith { node, common } => {
            start(&layered, &common, "monolith", |shutdown| async move {
                node::run(Mode::Monolith, &node, &ServiceKind::ALL, shutdown).await
            })
        }
        StreamgateCommand::Service {
            kind,
            node,
            cluster,
            common,
        } => start(&layered, &common, kind.name(), |shutdown| async move {
            node::run_service(kind, &node, &cluster, shutdown).await
        }),
        StreamgateCommand::Certs { command } => match certs::run(&command) {
            Ok(written) => {
                let mut out = std::io::stdout().lock();
                for path in written {
                    let _ = writeln!(out, "wrote {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Parses the process's arguments under its environment and config file;
/// clap's errors, help and version exit here, a bad config file is printed.
fn parse<T>(
    cmd: clap::Command,
    from: impl FnOnce(&ArgMatches) -> Result<T, clap::Error>,
) -> Option<(Layered, T)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    match config::parse(cmd, args, std::env::var_os(CONFIG_ENV)) {
        Ok(layered) => {
            let parsed = from(&layered.matches).unwrap_or_else(|e| e.exit());
            Some((layered, parsed))
        }
        Err(config::ParseError::Clap(e)) => e.exit(),
        Err(config::ParseError::Config(e)) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// Prints the options (`--print-config`), or sets up logging and runs
/// `body` on a tokio runtime until SIGTERM or Ctrl-C.
fn start<F, Fut>(layered: &Layered, common: &CommonOpts, service: &'static str, body: F) -> ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::kernel::KernelError>>,
{
    if common.print_config {
        let mut out = std::io::stdout().lock();
        return match out.write_all(layered.render().as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    if let Err(e) = log::init(&common.log, service) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(file) = &layered.file {
        let keys: Vec<&str> = layered.from_file.iter().map(String::as_str).collect();
        tracing::info!(file = %file.display(), options = ?keys, "options from the config file");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "no tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body(Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ crate::kernel::KernelError::Unreachable { .. }) => {
            // As for bad options: the process cannot run as configured.
            tracing::error!(error = %e, "gave up waiting at start");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %crate::error::Chain(&e), "stopped on an error");
            // Refused options or configuration are a usage error, as when
            // the flags or the config file do not parse.
            if e.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested");
}
