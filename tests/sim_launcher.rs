//! `cargo test --features sim` enters the simulator through this test.
//!
//! madsim needs `--cfg madsim` for the whole dependency graph, which a Cargo
//! feature cannot switch on; so this test, built normally, re-runs cargo on
//! the `sim` test target with that cfg in its own target dir. It picks a
//! random seed unless `MADSIM_TEST_SEED` is set, prints it, and passes the
//! environment through (`MADSIM_TEST_NUM`, `MADSIM_TEST_CHECK_DETERMINISM`, ...).
#![cfg(not(madsim))]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Command;

/// The `--config` that turns madsim on for every crate of the build.
const MADSIM_CFG: &str = "target.'cfg(all())'.rustflags=['--cfg','madsim']";

#[test]
fn simulation_suite() {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest_dir.join("target"), PathBuf::from)
        .join("sim");
    let seed = std::env::var("MADSIM_TEST_SEED")
        .unwrap_or_else(|_| (streamgate::rt::random_u64() % 1_000_000_000).to_string());
    // The nested build uses this test's own profile: a release run
    // replays with --release too.
    let release = cfg!(not(debug_assertions));
    let replay = format!(
        "MADSIM_TEST_SEED={seed} cargo test{} --features sim",
        if release { " --release" } else { "" }
    );
    println!("simulation seed {seed}: replay with {replay}");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&manifest_dir)
        .args([
            "test",
            "--features",
            "sim",
            "--test",
            "sim",
            "--config",
            MADSIM_CFG,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Cargo's own options go before the `--` that starts the test binary's.
    // A release run keeps the debug assertions: they are the invariants
    // every simulated run checks (ARCHITECTURE.md, "Invariants").
    if release {
        cmd.args([
            "--release",
            "--config",
            "profile.release.debug-assertions=true",
        ]);
    }
    cmd.args(["--", "--nocapture", "--test-threads=1"])
        // RUSTFLAGS in the environment would override the --config above.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("MADSIM_TEST_SEED", &seed);
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "simulation failed; replay with {replay}");
}
