//! A run's trace: timestamped lines printed as they happen, so two runs of
//! the same seed can be compared line by line; and, over many seeds
//! (`MADSIM_TEST_NUM`), a progress bar per scenario.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

/// Prints `line` with the simulated time since the run began.
pub fn note(start: std::time::Instant, line: impl std::fmt::Display) {
    if quiet() {
        return;
    }
    let at: Duration = streamgate::rt::now() - start;
    println!("[{:>10.3}s] {line}", at.as_secs_f64());
}

/// How many runs this process makes of each scenario: `MADSIM_TEST_NUM`
/// seeds, each twice under `MADSIM_TEST_CHECK_DETERMINISM`.
fn runs() -> u64 {
    let seeds = std::env::var("MADSIM_TEST_NUM")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1u64);
    if std::env::var_os("MADSIM_TEST_CHECK_DETERMINISM").is_some() {
        seeds * 2
    } else {
        seeds
    }
}

/// Whether the runs' lines are left out: many seeds on a terminal, where
/// the progress bar shows instead (a failing seed is printed with its
/// replay command, and replaying it alone prints its trace).
/// `SIM_VERBOSE=1` prints them anyway.
pub fn quiet() -> bool {
    static QUIET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *QUIET.get_or_init(|| {
        runs() > 1 && std::io::stderr().is_terminal() && std::env::var_os("SIM_VERBOSE").is_none()
    })
}

/// Prints the seed and how to replay it; the guard counts the run done
/// when the scenario returns (not when it panics).
#[must_use = "the guard marks the run done when dropped"]
pub fn announce(test: &'static str) -> Progress {
    let seed = madsim::runtime::Handle::current().seed();
    if !quiet() {
        println!(
            "sim {test}: seed {seed} (replay: MADSIM_TEST_SEED={seed} cargo test --features sim)"
        );
    }
    Progress(test)
}

/// See [`announce`].
pub struct Progress(&'static str);

/// Runs finished so far, per scenario.
static DONE: Mutex<BTreeMap<&str, u64>> = Mutex::new(BTreeMap::new());

impl Drop for Progress {
    fn drop(&mut self) {
        let total = runs();
        if std::thread::panicking() || total <= 1 {
            return;
        }
        let done = {
            let mut all = DONE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = all.entry(self.0).or_default();
            *n += 1;
            *n
        };
        let mut err = std::io::stderr().lock();
        if err.is_terminal() {
            const WIDTH: u64 = 30;
            let filled = (done * WIDTH / total) as usize;
            let _ = write!(
                err,
                "\r{:<60} [{}{}] {done}/{total}",
                self.0,
                "#".repeat(filled),
                ".".repeat(WIDTH as usize - filled)
            );
            if done == total {
                let _ = writeln!(err);
            }
        } else if done == total || done * 10 / total != (done - 1) * 10 / total {
            let _ = writeln!(err, "{}: {done}/{total} runs passed", self.0);
        }
    }
}
