//! `auth`: one StreamGate service in its own process (microservices mode).
//! `auth --help` lists every option and its environment variable.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::service_main(streamgate::services::ServiceKind::Auth)
}

#[cfg(madsim)]
fn main() {}
