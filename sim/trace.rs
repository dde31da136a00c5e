//! A run's trace: timestamped lines printed as they happen, so two runs of
//! the same seed can be compared line by line.

use std::time::Duration;

/// Prints `line` with the simulated time since the run began.
pub fn note(start: std::time::Instant, line: impl std::fmt::Display) {
    let at: Duration = streamgate::rt::now() - start;
    println!("[{:>10.3}s] {line}", at.as_secs_f64());
}

/// Prints the seed and how to replay it.
pub fn announce(test: &str) {
    let seed = madsim::runtime::Handle::current().seed();
    println!("sim {test}: seed {seed} (replay: MADSIM_TEST_SEED={seed} cargo test --features sim)");
}
