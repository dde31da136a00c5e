//! `streamgate-cli`: the command-line client of a StreamGate server (sign
//! up, log in, upload with tus, list, watch, play, status); see
//! `streamgate-cli --help` and `streamgate::cli::client`.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::client::main()
}

#[cfg(madsim)]
fn main() {}
