//! The property report across seeds (`streamgate::rt::coverage`): for the
//! seeds a process ran, how often each checker ran, each fault kind struck,
//! each buggify point fired and each job and breaker transition happened,
//! with the ones never exercised marked. Printed once the last seed of the
//! run ends (`MADSIM_TEST_NUM`, 1 unless set); `ci/sim-bench` adds up the
//! reports of its one-seed processes.

use std::fmt::Write as _;

use streamgate::rt::coverage::{self, Property};
use streamgate::rt::faults::Point;
use streamgate::services::worker::queue::EDGES;

use super::check::{BREAKER_CHECK, RETRY_CHECK, TRANSITIONS};
use super::faults;

/// Re-registration after the registry came back empty.
pub const REGISTRATION: &str = "checker: re-registration (every registry comeback)";
/// One transcode job per video.
pub const ONE_JOB: &str = "checker: one job per video (every JobSubmitted)";
/// One success per job, with two workers racing for leases.
pub const ONE_SUCCESS: &str = "checker: one success per job (every JobCompleted)";
/// The auditor: every answer as the model predicts.
pub const AUDITOR: &str = "checker: auditor (every clear answer)";
/// Answers the auditor could not judge (5xx, 429, none).
pub const UNCLEAR: &str = "checker: auditor (unclear answers)";
/// The user is never refused for load it did not cause.
pub const NOT_REFUSED: &str = "checker: user never refused for others' load (every answer)";
/// Liveness: every acknowledged video settled after healing.
pub const SETTLED: &str = "checker: liveness (every video settled)";
/// No blob outside the settled catalog.
pub const ORPHANS: &str = "checker: no orphaned blob (every run)";
/// The call policy: the intruder's calls refused.
pub const POLICY: &str = "checker: call policy (every intruder call refused)";
/// Mutual TLS: the intruder's calls without a valid certificate refused
/// in the handshake.
pub const CERTIFICATES: &str =
    "checker: certificates (every intruder call without a valid one refused in the handshake)";

/// The shared database never records one event applied twice.
pub const ONE_APPLICATION: &str =
    "checker: one application per event (every run on the shared database)";

/// Every property the report lists, exercised or not.
fn known() -> Vec<String> {
    let mut names: Vec<String> = [
        REGISTRATION,
        ONE_JOB,
        ONE_SUCCESS,
        AUDITOR,
        UNCLEAR,
        NOT_REFUSED,
        SETTLED,
        ORPHANS,
        POLICY,
        CERTIFICATES,
        ONE_APPLICATION,
        streamgate::services::metadata::remote::LOCK_WAITED,
        streamgate::services::metadata::remote::IDLED_OUT,
        streamgate::services::metadata::remote::LOST_IN_CRASH,
        super::certs::RENEWED,
        BREAKER_CHECK,
        RETRY_CHECK,
        streamgate::sqlite::STALE_ROLLBACK,
        streamgate::services::worker::store::jetstream::TAKEN_OVER,
        streamgate::services::worker::store::jetstream::HELD_ELSEWHERE,
        streamgate::services::worker::store::jetstream::CAS_LOST,
        streamgate::registry::nats_kv::WATCH_CUT,
        streamgate::registry::nats_kv::HEARTBEAT_CAS_REFUSED,
    ]
    .into_iter()
    .chain(TRANSITIONS)
    .chain(Point::ALL.map(Point::name))
    .map(str::to_owned)
    .collect();
    names.extend(faults::ALL.iter().map(|f| faults::name(*f)));
    names.extend(
        EDGES
            .iter()
            .map(|(from, to)| format!("job: {} -> {}", from.as_str(), to.as_str())),
    );
    names
}

/// Ends this seed's counting; after the run's last seed, prints the report.
pub fn end_seed() {
    coverage::known(known());
    let ended = coverage::end_seed();
    let expected = std::env::var("MADSIM_TEST_NUM")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    if ended == expected {
        let (seeds, properties) = coverage::report();
        print!("{}", render(seeds, &properties));
    }
}

/// The report: one line per property, `property <hits> <seeds>/<of> <name>`
/// (a fixed shape `ci/sim-bench` adds up), those never exercised last.
fn render(seeds: u64, properties: &std::collections::BTreeMap<String, Property>) -> String {
    let mut out = format!("property coverage over {seeds} seeds (hits, seeds that saw it):\n");
    let (hit, never): (Vec<_>, Vec<_>) = properties.iter().partition(|(_, p)| p.hits > 0);
    for (name, p) in &hit {
        let _ = writeln!(out, "property {:>9} {:>5}/{seeds} {name}", p.hits, p.seeds);
    }
    for (name, _) in &never {
        let _ = writeln!(
            out,
            "property {:>9} {:>5}/{seeds} {name}  NEVER EXERCISED",
            0, 0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lists_what_was_never_exercised_last() {
        let mut p = std::collections::BTreeMap::new();
        p.insert("fault: Crash".to_owned(), Property { hits: 3, seeds: 2 });
        p.insert("fault: Clog".to_owned(), Property::default());
        let out = render(2, &p);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with("2/2 fault: Crash"), "{out}");
        assert!(lines[2].ends_with("fault: Clog  NEVER EXERCISED"), "{out}");
    }
}
