//! `worker`: one StreamGate service in its own process (microservices mode).
//! `worker --help` lists every option and its environment variable.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::service_main(streamgate::services::ServiceKind::Worker)
}

#[cfg(madsim)]
fn main() {}
