//! `transcoder`: one StreamGate service in its own process (microservices mode).
//! `transcoder --help` lists every option and its environment variable.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::service_main(streamgate::services::ServiceKind::Transcoder)
}

#[cfg(madsim)]
fn main() {}
