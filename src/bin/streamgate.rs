//! `streamgate monolith`: every service in one process on embedded defaults;
//! `streamgate service <name>`: one service (microservices mode). `--help` lists
//! every option and its environment variable.

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    cli::main()
}

#[cfg(not(madsim))]
mod cli {
    use clap::{Parser, Subcommand};
    use streamgate::kernel::{Mode, ServiceKind};
    use streamgate::node::{self, ClusterOpts, NodeOpts};

    #[derive(Parser)]
    #[command(version, about = "StreamGate video platform back end")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Run all nine services in one process (in-memory bus and registry).
        Monolith(NodeOpts),
        /// Run one service (microservices mode: NATS bus, networked registry).
        Service {
            /// Which service.
            #[arg(value_enum)]
            kind: ServiceKind,
            #[command(flatten)]
            node: NodeOpts,
            #[command(flatten)]
            cluster: ClusterOpts,
        },
    }

    #[tokio::main]
    pub async fn main() -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .init();
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        };
        match Cli::parse().command {
            Command::Monolith(opts) => {
                node::run(Mode::Monolith, &opts, &ServiceKind::ALL, shutdown).await?
            }
            Command::Service {
                kind,
                node,
                cluster,
            } => node::run_service(kind, &node, &cluster, shutdown).await?,
        }
        Ok(())
    }
}
