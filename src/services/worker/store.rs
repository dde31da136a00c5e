//! The job table, in one of two places:
//! - [`SqliteStore`]: a SQLite file under the data dir (in memory without
//!   one). The monolith's, and for workers on one host: instances that share
//!   the data dir share the file.
//! - [`jetstream::JetStreamStore`]: records in a NATS key-value bucket,
//!   dispatch through a JetStream work queue. Microservices mode: workers on
//!   any host share the jobs.
//!
//! Both apply the same [`queue`](super::queue) transitions, so a job behaves
//! the same in either.

use super::error::WorkerError;
use super::queue::{Job, JobState, Refused};

pub mod jetstream;
mod sqlite;

pub use sqlite::SqliteStore;

/// Which jobs [`Store::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only jobs submitted before the job with this sequence number.
    pub before_seq: Option<i64>,
}

impl Filter {
    /// Whether `job`, numbered `seq`, is listed.
    #[must_use]
    pub fn matches(&self, seq: i64, job: &Job) -> bool {
        self.state.is_none_or(|s| s == job.state)
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.before_seq.is_none_or(|before| seq < before)
    }
}

/// The job table.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(SqliteStore),
    /// NATS JetStream.
    JetStream(jetstream::JetStreamStore),
}

impl Store {
    /// A SQLite table at `path` (in memory for `None`); see
    /// [`SqliteStore::open`].
    ///
    /// # Errors
    /// The database cannot be opened or set up.
    pub async fn open(
        path: Option<std::path::PathBuf>,
        now_ms: u64,
    ) -> Result<(Self, Vec<Job>), WorkerError> {
        let (store, recovered) = SqliteStore::open(path, now_ms).await?;
        Ok((Self::Sqlite(store), recovered))
    }

    /// Stores `job`, or returns the job already stored under its
    /// idempotency key or id (true: deduplicated).
    ///
    /// # Errors
    /// [`WorkerError::Full`] with `max_active` unfinished jobs; store failures.
    pub async fn submit(&self, job: Job, max_active: u64) -> Result<(Job, bool), WorkerError> {
        match self {
            Self::Sqlite(s) => s.submit(job, max_active).await,
            Self::JetStream(s) => s.submit(job, max_active).await,
        }
    }

    /// The job `id`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, WorkerError> {
        match self {
            Self::Sqlite(s) => s.get(id).await,
            Self::JetStream(s) => s.get(id).await,
        }
    }

    /// Applies `f` to the job `id` and saves the result (`f` may run more
    /// than once, each time on the latest job, when writers race).
    ///
    /// # Errors
    /// Unknown job; `f` refused (nothing is saved then); store failures.
    pub async fn update<T: Send + 'static>(
        &self,
        id: &str,
        f: impl FnMut(&mut Job) -> Result<T, Refused> + Send + 'static,
    ) -> Result<(Job, T), WorkerError> {
        match self {
            Self::Sqlite(s) => s.update(id, f).await,
            Self::JetStream(s) => s.update(id, f).await,
        }
    }

    /// Leases the next eligible job, after taking back expired leases.
    /// Returns the leased job, if any, and the jobs whose leases expired.
    ///
    /// # Errors
    /// Store failures.
    pub async fn lease_next(
        &self,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<(Option<Job>, Vec<Job>), WorkerError> {
        match self {
            Self::Sqlite(s) => s.lease_next(now_ms, lease_ms).await,
            Self::JetStream(s) => s.lease_next(now_ms, lease_ms).await,
        }
    }

    /// Gives back the jobs this process holds, as it stops: JetStream takes
    /// their leases back at once (returned); SQLite does when its file is
    /// opened again (nothing here).
    pub async fn release(&self, now_ms: u64) -> Vec<Job> {
        match self {
            Self::Sqlite(_) => {
                let _ = now_ms;
                Vec::new()
            }
            Self::JetStream(s) => s.release(now_ms).await,
        }
    }

    /// Up to `limit` jobs matching `filter`, newest first, and the sequence
    /// number to continue before when there are more.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list(
        &self,
        filter: Filter,
        limit: u32,
    ) -> Result<(Vec<Job>, Option<i64>), WorkerError> {
        match self {
            Self::Sqlite(s) => s.list(filter, limit).await,
            Self::JetStream(s) => s.list(filter, limit).await,
        }
    }
}
