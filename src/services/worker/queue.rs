//! A job and its state machine, without I/O: lease, renew, succeed, fail
//! (retry or dead-letter), expire, cancel. Time comes in as Unix ms.

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting (also between retries, after a lease was lost).
    Queued,
    /// A runner holds it.
    Leased,
    /// Done (terminal).
    Succeeded,
    /// The last attempt failed; retried once `not_before` passes.
    Failed,
    /// Out of attempts, or failed for good (terminal).
    DeadLetter,
    /// Cancelled (terminal).
    Cancelled,
}

/// The state machine's edges: every change of state a job can make.
pub const EDGES: [(JobState, JobState); 9] = {
    use JobState::{Cancelled, DeadLetter, Failed, Leased, Queued, Succeeded};
    [
        (Queued, Leased),
        (Queued, Cancelled),
        (Failed, Leased),
        (Failed, Cancelled),
        (Leased, Succeeded),
        (Leased, Failed),
        (Leased, DeadLetter),
        (Leased, Queued),
        (Leased, Cancelled),
    ]
};

impl JobState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Leased,
        Self::Succeeded,
        Self::Failed,
        Self::DeadLetter,
        Self::Cancelled,
    ];

    /// No further change happens.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::DeadLetter | Self::Cancelled)
    }

    /// Its name in the store.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::DeadLetter => "dead_letter",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `s` in the store.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not queued, or not yet due.
    #[error("the job is not eligible to run")]
    NotEligible,
    /// The job already ended.
    #[error("the job already ended ({0:?})")]
    Terminal(JobState),
    /// The caller's lease is gone (expired and taken, or the job was cancelled).
    #[error("the lease is no longer held")]
    StaleLease,
}

/// Longest `last_error` kept, bytes.
pub const MAX_ERROR_BYTES: usize = 1024;

/// A job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Its kind (e.g. `transcode`).
    pub kind: String,
    /// Its payload, a JSON object.
    pub payload_json: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts started, 0..=max_attempts.
    pub attempts: u32,
    /// Attempts allowed, >= 1.
    pub max_attempts: u32,
    /// Error of the latest failed attempt (or the cancel reason).
    pub last_error: String,
    /// Submission time.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// Progress of the current attempt, 0..=100.
    pub progress: u32,
    /// The submitter's idempotency key (may be empty).
    pub idempotency_key: String,
    /// Not run before this time.
    pub not_before_ms: u64,
    /// While leased, the lease ends at this time.
    pub lease_until_ms: u64,
    /// The W3C `traceparent` of the span that submitted it (empty: none):
    /// each attempt continues that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace: String,
}

impl Job {
    /// A queued job, eligible `delay_ms` after `now_ms`.
    #[must_use]
    pub fn new(
        id: String,
        kind: String,
        payload_json: String,
        max_attempts: u32,
        idempotency_key: String,
        now_ms: u64,
        delay_ms: u64,
    ) -> Self {
        let job = Self {
            id,
            kind,
            payload_json,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: max_attempts.max(1),
            last_error: String::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            progress: 0,
            idempotency_key,
            not_before_ms: now_ms.saturating_add(delay_ms),
            lease_until_ms: 0,
            trace: String::new(),
        };
        job.check_invariants();
        job
    }

    /// Whether a runner may lease it now.
    #[must_use]
    pub fn is_eligible(&self, now_ms: u64) -> bool {
        matches!(self.state, JobState::Queued | JobState::Failed)
            && self.not_before_ms <= now_ms
            && self.attempts < self.max_attempts
    }

    /// Whether its lease ran out (its runner is presumed dead).
    #[must_use]
    pub fn lease_expired(&self, now_ms: u64) -> bool {
        self.state == JobState::Leased && self.lease_until_ms <= now_ms
    }

    /// Starts an attempt held until `now_ms + lease_ms`; returns the
    /// attempt number, the token its runner presents later.
    ///
    /// # Errors
    /// [`Refused::NotEligible`].
    pub fn lease(&mut self, now_ms: u64, lease_ms: u64) -> Result<u32, Refused> {
        if !self.is_eligible(now_ms) {
            return Err(Refused::NotEligible);
        }
        let before = self.before();
        self.attempts += 1;
        self.state = JobState::Leased;
        self.lease_until_ms = now_ms.saturating_add(lease_ms);
        self.progress = 0;
        self.updated_ms = now_ms;
        self.check_transition(before);
        Ok(self.attempts)
    }

    fn check_lease(&self, attempt: u32) -> Result<(), Refused> {
        if self.state.is_terminal() {
            return Err(Refused::Terminal(self.state));
        }
        if self.state != JobState::Leased || self.attempts != attempt {
            return Err(Refused::StaleLease);
        }
        Ok(())
    }

    /// Extends the lease of `attempt` and records its progress.
    ///
    /// # Errors
    /// The lease is no longer held, or the job ended (cancelled).
    pub fn renew(
        &mut self,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
        progress: u32,
    ) -> Result<(), Refused> {
        self.check_lease(attempt)?;
        let before = self.before();
        self.lease_until_ms = now_ms.saturating_add(lease_ms);
        let progress = progress.min(100);
        if progress != self.progress {
            self.progress = progress;
            self.updated_ms = now_ms;
        }
        self.check_transition(before);
        Ok(())
    }

    /// Ends `attempt` successfully.
    ///
    /// # Errors
    /// The lease is no longer held, or the job ended (cancelled).
    pub fn succeed(&mut self, attempt: u32, now_ms: u64) -> Result<(), Refused> {
        self.check_lease(attempt)?;
        let before = self.before();
        self.state = JobState::Succeeded;
        self.progress = 100;
        self.lease_until_ms = 0;
        self.updated_ms = now_ms;
        self.check_transition(before);
        Ok(())
    }

    /// Ends `attempt` with `error`: retried after `retry_in_ms`, or
    /// dead-lettered when out of attempts or `permanent`. Returns whether
    /// it was dead-lettered.
    ///
    /// # Errors
    /// The lease is no longer held, or the job ended (cancelled).
    pub fn fail(
        &mut self,
        attempt: u32,
        now_ms: u64,
        error: &str,
        retry_in_ms: u64,
        permanent: bool,
    ) -> Result<bool, Refused> {
        self.check_lease(attempt)?;
        let before = self.before();
        let dead = self.attempt_failed(now_ms, error, retry_in_ms, permanent);
        self.check_transition(before);
        Ok(dead)
    }

    fn attempt_failed(
        &mut self,
        now_ms: u64,
        error: &str,
        retry_in_ms: u64,
        permanent: bool,
    ) -> bool {
        let dead = permanent || self.attempts >= self.max_attempts;
        self.state = if dead {
            JobState::DeadLetter
        } else {
            JobState::Failed
        };
        self.last_error = truncate(error, MAX_ERROR_BYTES);
        self.not_before_ms = now_ms.saturating_add(retry_in_ms);
        self.lease_until_ms = 0;
        self.updated_ms = now_ms;
        dead
    }

    /// A lease that ran out counts as a failed attempt: the job is queued
    /// again at once, or dead-lettered when out of attempts. Returns
    /// whether anything changed.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        if !self.lease_expired(now_ms) {
            return false;
        }
        self.requeue(now_ms, "lease expired (the worker stopped or stalled)");
        true
    }

    /// Takes back a lease of a process that is gone (the store was
    /// reopened), whatever its time. Returns whether anything changed.
    pub fn recover(&mut self, now_ms: u64) -> bool {
        if self.state != JobState::Leased {
            return false;
        }
        self.requeue(now_ms, "the worker restarted during the attempt");
        true
    }

    fn requeue(&mut self, now_ms: u64, why: &str) {
        let before = self.before();
        if !self.attempt_failed(now_ms, why, 0, false) {
            self.state = JobState::Queued;
        }
        self.check_transition(before);
    }

    /// Cancels an unfinished job, keeping `reason` as its last error.
    ///
    /// # Errors
    /// [`Refused::Terminal`] if it already ended.
    pub fn cancel(&mut self, now_ms: u64, reason: &str) -> Result<(), Refused> {
        if self.state.is_terminal() {
            return Err(Refused::Terminal(self.state));
        }
        let before = self.before();
        self.state = JobState::Cancelled;
        self.last_error = if reason.is_empty() {
            "cancelled".to_owned()
        } else {
            truncate(&format!("cancelled: {reason}"), MAX_ERROR_BYTES)
        };
        self.lease_until_ms = 0;
        self.updated_ms = now_ms;
        self.check_transition(before);
        Ok(())
    }

    fn before(&self) -> Before {
        Before {
            state: self.state,
            attempts: self.attempts,
        }
    }

    /// Asserts (debug builds: the proptest and every simulated run) that a
    /// transition from `before` took an edge of the state machine and left
    /// the job consistent.
    fn check_transition(&self, before: Before) {
        let (from, to) = (before.state, self.state);
        if from != to {
            crate::rt::coverage::hit_fmt(format_args!("job: {} -> {}", from.as_str(), to.as_str()));
        }
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            !from.is_terminal(),
            "job invariant: a terminal state never changes ({from:?} -> {to:?})"
        );
        assert!(
            from == to || EDGES.contains(&(from, to)),
            "job invariant: only the state machine's edges are taken ({from:?} -> {to:?})"
        );
        let started = u32::from(from != JobState::Leased && to == JobState::Leased);
        assert_eq!(
            self.attempts,
            before.attempts + started,
            "job invariant: an attempt is counted once, when its lease starts"
        );
        self.check_invariants();
    }

    /// Asserts (debug builds) what holds of every job between transitions.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        if let Err(broken) = self.consistency() {
            panic!("job invariant: {broken} ({:?})", self.state);
        }
    }

    /// Whether the job holds what every job holds between transitions (a
    /// record read from outside, e.g. a JetStream KV entry, is checked with
    /// it before it is used).
    ///
    /// # Errors
    /// The first invariant it breaks.
    pub fn consistency(&self) -> Result<(), &'static str> {
        use JobState::{Cancelled, DeadLetter, Failed, Leased, Queued, Succeeded};
        if self.attempts > self.max_attempts {
            return Err("attempts never exceed max attempts");
        }
        if self.progress > 100 || self.last_error.len() > MAX_ERROR_BYTES {
            return Err("progress and the error stay within their limits");
        }
        if (self.state == Leased) != (self.lease_until_ms != 0) {
            return Err("a job has a lease expiry exactly while it is leased");
        }
        match self.state {
            Leased if self.attempts < 1 => {
                Err("a leased job has a lease holder (its attempt, >= 1)")
            }
            Queued | Failed if self.attempts >= self.max_attempts => {
                Err("a job waiting to run has attempts left")
            }
            Succeeded if self.progress != 100 => Err("a succeeded job is at 100 %"),
            Leased | Queued | Failed | Succeeded | DeadLetter | Cancelled => Ok(()),
        }
    }
}

/// What a transition is checked against: the job as it was.
#[derive(Debug, Clone, Copy)]
struct Before {
    state: JobState,
    attempts: u32,
}

/// `s` cut to at most `max` bytes on a char boundary.
#[must_use]
pub fn truncate(s: &str, max: usize) -> String {
    crate::text::prefix(s, max).to_owned()
}

#[cfg(test)]
mod tests;
