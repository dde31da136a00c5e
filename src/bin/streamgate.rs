//! `streamgate monolith`: every service in one process on embedded defaults.

use clap::{Parser, Subcommand};
use streamgate::kernel::{Mode, ServiceKind};
use streamgate::node::{self, NodeOpts};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Monolith(opts) = Cli::parse().command;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    };
    node::run(Mode::Monolith, &opts, &ServiceKind::ALL, shutdown).await?;
    Ok(())
}
