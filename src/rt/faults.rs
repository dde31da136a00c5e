//! Fault hooks for the simulator, compiled to nothing outside it.
//!
//! - [`buggify`]: a rare path forced on now and then (a dropped ack, a
//!   duplicated or reordered event, a call with a far too short deadline), when the simulation run switched it on (its seed
//!   decides). Always `false` outside the simulator.
//! - [`injected`]: a deliberate bug, switched on for a whole simulation run
//!   by `STREAMGATE_INJECT_BUG=<name>`, to prove the simulation's checkers
//!   catch it (see `sim/swarm.rs`). Always `false` outside the simulator, so
//!   production builds cannot carry one.
//! - [`disk_fault`]: the fault the simulation put on the current node's disk
//!   (full, failing, slow), which its SQLite files (`crate::sqlite`), its
//!   blocking work ([`super::blocking`]) and the simulator's blob store
//!   wrapper obey. Always `None` outside the simulator.

/// The bugs the simulation can inject, each caught by one checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The circuit breaker forgets a failed half-open probe (stays half-open
    /// instead of reopening). Caught by the breaker checker.
    BreakerForgetsProbeFailures,
    /// Retries ignore the retry budget. Caught by the budget checker.
    RetryWithoutBudget,
    /// A registration the registry lost is never renewed. Caught by the
    /// registration checker.
    NoReregistration,
    /// The worker's FileUploaded handler submits a new job for every
    /// delivery instead of one per video. Caught by the one-job-per-video
    /// checker.
    NonIdempotentHandler,
    /// SQLite commits are acknowledged before they reach the disk
    /// (`synchronous = OFF`). Caught when a crash loses the node's unflushed
    /// writes: an acknowledged video, user or job is gone after the restart.
    UnsyncedCommits,
    /// Servers skip the call policy (every verified caller may call every
    /// method). Caught by the intruder's checker: a call outside the policy
    /// succeeds.
    PolicySkipped,
    /// The NATS KV registry's heartbeat takes a refused compare-and-set at
    /// the revision it last wrote for success (as if someone else had
    /// refreshed the entry), so a registration lost with its bucket is
    /// never renewed. Caught by the registration checker on the seeds that
    /// run the NATS KV registry.
    KvHeartbeatTrustsItsCache,
    /// The JetStream job store acknowledges a job's message as soon as it
    /// leases the job (at-most-once), instead of holding it until the job
    /// ends: a job whose attempt fails (its retry waits for the message to
    /// come back) or whose worker dies is left with no message to bring it
    /// back, and its video never settles. Caught by the liveness check on
    /// the seeds that run JetStream.
    JetStreamAckOnLease,
    /// Servers under mutual TLS accept a client's certificate without
    /// verifying it (any CA, expired or not). Caught by the intruder's
    /// certificate checker on the seeds that run mutual TLS: a call with a
    /// certificate of another CA reaches a service.
    PeerUnverified,
    /// The shared database's read-modify-writes take no row lock (as
    /// `SELECT` without `FOR UPDATE` would): two instances updating one
    /// video, or applying one event, both read the old row and the later
    /// write wins. Caught on the seeds whose metadata instances share the
    /// modelled database: by the one-application-per-event checker, or by
    /// the auditor (a lost rename, a state moved back).
    RowLockSkipped,
}

impl Bug {
    /// Every bug, in order.
    pub const ALL: [Self; 10] = [
        Self::BreakerForgetsProbeFailures,
        Self::RetryWithoutBudget,
        Self::NoReregistration,
        Self::NonIdempotentHandler,
        Self::UnsyncedCommits,
        Self::PolicySkipped,
        Self::KvHeartbeatTrustsItsCache,
        Self::JetStreamAckOnLease,
        Self::PeerUnverified,
        Self::RowLockSkipped,
    ];

    /// The name `STREAMGATE_INJECT_BUG` takes.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::BreakerForgetsProbeFailures => "breaker-forgets-probe-failures",
            Self::RetryWithoutBudget => "retry-without-budget",
            Self::NoReregistration => "no-reregistration",
            Self::NonIdempotentHandler => "non-idempotent-handler",
            Self::UnsyncedCommits => "unsynced-commits",
            Self::PolicySkipped => "policy-skipped",
            Self::KvHeartbeatTrustsItsCache => "kv-heartbeat-trusts-its-cache",
            Self::JetStreamAckOnLease => "jetstream-ack-on-lease",
            Self::PeerUnverified => "peer-unverified",
            Self::RowLockSkipped => "row-lock-skipped",
        }
    }
}

/// Whether this simulation run injects `bug` (never outside the simulator).
#[must_use]
#[inline]
pub fn injected(bug: Bug) -> bool {
    #[cfg(madsim)]
    {
        static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        CHOSEN
            .get_or_init(|| std::env::var("STREAMGATE_INJECT_BUG").ok())
            .as_deref()
            == Some(bug.name())
    }
    #[cfg(not(madsim))]
    {
        let _ = bug;
        false
    }
}

/// The places that [`buggify`]; each firing is counted as a property of
/// the run ([`super::coverage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A call gets a deadline far too short for it (`middleware::timeout`).
    ShortDeadline,
    /// A finished job's ack is lost (`worker::runner`).
    AckDropped,
    /// The simulator's broker delivers an event twice.
    EventDuplicated,
    /// The simulator's broker holds an event back, so later ones overtake it.
    EventDelayed,
}

impl Point {
    /// Every point.
    pub const ALL: [Self; 4] = [
        Self::ShortDeadline,
        Self::AckDropped,
        Self::EventDuplicated,
        Self::EventDelayed,
    ];

    /// Its name in the property report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ShortDeadline => "buggify: short deadline",
            Self::AckDropped => "buggify: job ack dropped",
            Self::EventDuplicated => "buggify: event delivered twice",
            Self::EventDelayed => "buggify: event held back",
        }
    }
}

/// True with probability `p` at `point` when the simulation run switched
/// buggify on with [`set_buggify`] (never outside the simulator).
/// StreamGate's own switch, not madsim's: madsim's also slows 10 % of all
/// connects and sends by seconds, a fault the simulation draws separately.
#[must_use]
#[inline]
pub fn buggify(point: Point, p: f64) -> bool {
    #[cfg(madsim)]
    {
        use rand::Rng as _;
        let fired = BUGGIFY.with(std::cell::Cell::get) && super::rng().gen_bool(p.clamp(0.0, 1.0));
        if fired {
            super::coverage::hit(point.name());
        }
        fired
    }
    #[cfg(not(madsim))]
    {
        let _ = (point, p);
        false
    }
}

/// A number in `lo..hi` drawn from the simulation's seed (for a buggify
/// point's parameters); `lo` outside the simulator.
#[must_use]
pub fn buggify_range(lo: u64, hi: u64) -> u64 {
    #[cfg(madsim)]
    {
        use rand::Rng as _;
        if lo < hi {
            super::rng().gen_range(lo..hi)
        } else {
            lo
        }
    }
    #[cfg(not(madsim))]
    {
        let _ = hi;
        lo
    }
}

#[cfg(madsim)]
thread_local! {
    /// A simulation runs on one thread, so the switch is per thread.
    static BUGGIFY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Switches [`buggify`] on or off for this simulation run.
#[cfg(madsim)]
pub fn set_buggify(on: bool) {
    BUGGIFY.with(|b| b.set(on));
}

/// A fault on a node's disk (simulation only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// No space: writes fail (SQLite refuses every commit; the blob store
    /// answers ENOSPC), reads and deletes work.
    Full,
    /// Every operation fails (SQLite statements are interrupted; the blob
    /// store answers EIO).
    Failing,
    /// Every operation takes this much longer.
    Slow(std::time::Duration),
}

#[cfg(madsim)]
thread_local! {
    /// The faults on the run's nodes (a simulation runs on one thread).
    static DISKS: std::cell::RefCell<std::collections::BTreeMap<madsim::task::NodeId, DiskFault>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// Puts `fault` on the disk of `node`, or heals it (`None`).
#[cfg(madsim)]
pub fn set_disk_fault(node: madsim::task::NodeId, fault: Option<DiskFault>) {
    DISKS.with(|d| match fault {
        Some(f) => d.borrow_mut().insert(node, f),
        None => d.borrow_mut().remove(&node),
    });
}

/// Heals every disk: a new run starts with none faulty (runs of several
/// seeds share the thread).
#[cfg(madsim)]
pub fn clear_disk_faults() {
    DISKS.with(|d| d.borrow_mut().clear());
}

/// The fault on the disk of `node`, if any.
#[cfg(madsim)]
#[must_use]
pub fn disk_fault_of(node: madsim::task::NodeId) -> Option<DiskFault> {
    DISKS.with(|d| d.borrow().get(&node).copied())
}

/// The fault on the current node's disk, if any (never outside the
/// simulator).
#[must_use]
#[inline]
pub fn disk_fault() -> Option<DiskFault> {
    #[cfg(madsim)]
    {
        if DISKS.with(|d| d.borrow().is_empty()) {
            return None;
        }
        disk_fault_of(madsim::plugin::node())
    }
    #[cfg(not(madsim))]
    {
        None
    }
}
