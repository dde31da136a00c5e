//! `streamgate monolith`: every service in one process on embedded defaults;
//! `streamgate service <name>`: one service (microservices mode), as its own
//! binary (`src/bin/<name>.rs`) does. `--help` lists every option and its
//! environment variable; `--config` reads them from a TOML file.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    streamgate::cli::streamgate_main()
}

#[cfg(madsim)]
fn main() {}
