//! `upload`: one StreamGate service in its own process (microservices mode).
//! `upload --help` lists every option and its environment variable.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::service_main(streamgate::services::ServiceKind::Upload)
}

#[cfg(madsim)]
fn main() {}
