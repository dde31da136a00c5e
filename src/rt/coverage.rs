//! Which properties a simulated run exercised: how often each checker ran,
//! each fault kind struck, each buggify point fired and each job or
//! breaker transition happened. A checker that never runs proves nothing;
//! across many seeds this makes such a gap visible (the swarm prints the
//! report at the end of a many-seed run; `ci/sim-bench` prints it too).
//!
//! Counting happens only in the simulator: outside it [`hit`] and
//! [`hit_fmt`] do nothing, and `hit_fmt`'s arguments are never formatted.
//! Each seed counts on its own thread (madsim runs a seed on one thread);
//! [`end_seed`] adds the seed's counts to the process's totals, so runs
//! of several seeds in parallel (`MADSIM_TEST_JOBS`) add up too.

/// Counts one occurrence of property `name` (`"<kind>: <what>"`, e.g.
/// `"fault: Crash"`) in the current seed.
#[inline]
pub fn hit(name: &str) {
    #[cfg(madsim)]
    imp::hit(name);
    #[cfg(not(madsim))]
    let _ = name;
}

/// Counts `n` occurrences of property `name` at once.
#[inline]
pub fn hits(name: &str, n: u64) {
    #[cfg(madsim)]
    imp::hits(name, n);
    #[cfg(not(madsim))]
    let _ = (name, n);
}

/// [`hit`] with a name formatted only in the simulator.
#[inline]
pub fn hit_fmt(name: std::fmt::Arguments<'_>) {
    #[cfg(madsim)]
    imp::hit(&name.to_string());
    #[cfg(not(madsim))]
    let _ = name;
}

#[cfg(madsim)]
pub use imp::{Property, begin_seed, end_seed, known, report};

#[cfg(madsim)]
mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    thread_local! {
        /// The current seed's counts.
        static SEED: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// One property over the seeds ended so far.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Property {
        /// Occurrences in all.
        pub hits: u64,
        /// Seeds in which it occurred at least once.
        pub seeds: u64,
    }

    /// The process's totals: seeds ended, and every property known or hit.
    static TOTALS: Mutex<(u64, BTreeMap<String, Property>)> = Mutex::new((0, BTreeMap::new()));

    fn totals() -> std::sync::MutexGuard<'static, (u64, BTreeMap<String, Property>)> {
        TOTALS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn hit(name: &str) {
        hits(name, 1);
    }

    pub(super) fn hits(name: &str, n: u64) {
        SEED.with(|s| {
            let mut s = s.borrow_mut();
            match s.get_mut(name) {
                Some(count) => *count += n,
                None => {
                    s.insert(name.to_owned(), n);
                }
            }
        });
    }

    /// Names properties that must appear in the report even when no seed
    /// exercised them (those are the point of the report).
    pub fn known<S: AsRef<str>>(names: impl IntoIterator<Item = S>) {
        let mut t = totals();
        for name in names {
            t.1.entry(name.as_ref().to_owned()).or_default();
        }
    }

    /// Starts a seed: forgets what this thread counted before (another
    /// test's run on the same thread).
    pub fn begin_seed() {
        SEED.with(|s| s.borrow_mut().clear());
    }

    /// Ends the current seed: adds its counts to the totals and clears
    /// them. Returns how many seeds have ended in this process.
    pub fn end_seed() -> u64 {
        let seed = SEED.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let mut t = totals();
        t.0 += 1;
        for (name, n) in seed {
            let p = t.1.entry(name).or_default();
            p.hits += n;
            p.seeds += u64::from(n > 0);
        }
        t.0
    }

    /// The totals: seeds ended, and each property by name.
    #[must_use]
    pub fn report() -> (u64, BTreeMap<String, Property>) {
        totals().clone()
    }
}
