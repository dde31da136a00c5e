//! The cost of checking a signed playback URL's grant, against the check
//! every service call already pays (the HMAC service token), in one run:
//! interleaved rounds, median ns per check and the paired ratio.
//!
//! `taskset -c 0 cargo bench --bench playback_grant` (`-- --quick`: one
//! short round). The target is under 2 µs per check.
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
mod support;

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    use std::hint::black_box;
    use std::time::Duration;

    use streamgate::middleware::auth::{self, Key, Keyring};
    use streamgate::rt;
    use streamgate::services::gateway::grant::{Grants, Scope};

    let opts = support::opts();
    let rounds = support::Rounds::new(opts, 9, 2, Duration::from_millis(300));
    let keys = Keyring::new(Key::new("bench", &[7; 32])?);
    let grants = Grants::new(&keys);
    let grant = grants.mint(
        "f3a9c0de12345678f3a9c0de12345678",
        Scope::Owner,
        u64::MAX - 1,
    );
    let token = auth::mint(&keys.current, "api-gateway", u64::MAX - 1);
    let runtime = support::current_thread()?;
    let results = runtime.block_on(rounds.interleaved(2, async |path, _| {
        let end = rt::now() + rounds.round;
        let started = rt::now();
        let mut checks = 0u64;
        while rt::now() < end {
            for _ in 0..256 {
                let ok = if path == 0 {
                    grants.verify(black_box(&grant), black_box(1)).is_ok()
                } else {
                    auth::verify(&keys, black_box(token.as_bytes()), black_box(1)).is_ok()
                };
                assert!(ok, "the check refused a valid credential");
            }
            checks += 256;
        }
        let took = rt::now() - started;
        Ok(took.as_secs_f64() * 1e9 / checks as f64)
    }))?;
    let (grant_ns, token_ns) = (&results[0], &results[1]);
    println!(
        "playback grant check: {:.0} ns (median of {} rounds, range {:.0}-{:.0})",
        support::median(grant_ns),
        grant_ns.len(),
        grant_ns.iter().copied().fold(f64::MAX, f64::min),
        grant_ns.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "service token check (baseline): {:.0} ns",
        support::median(token_ns)
    );
    println!(
        "grant / service token: {}",
        support::paired_ratio(grant_ns, token_ns)
    );
    Ok(())
}

/// Nothing to measure inside the simulator.
#[cfg(madsim)]
fn main() {}
