//! The job table in SQLite (a file under the data dir, or in memory), the
//! monolith's and the default for one host: every change is a transaction that loads a job, applies a [`queue`] transition
//! and saves it. The file belongs to one worker process. Transactions take
//! the write lock when they begin (IMMEDIATE): a deferred one that reads and
//! then writes fails at once with "database is locked" when another
//! connection wrote in between (a restarted worker while the old one's last
//! write finishes), where an immediate one waits out the busy timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, TransactionBehavior, params};

use super::Filter;
use crate::rt;
use crate::services::worker::error::WorkerError;
use crate::services::worker::queue::{Job, JobState, Refused};

/// The table's versions, in order (`user_version` counts them; a file from
/// before versions were recorded has the first one's tables, which its
/// `IF NOT EXISTS` accepts).
const MIGRATIONS: &[&str] = &[
    SCHEMA,
    // The submitting span's `traceparent`, which attempts continue.
    "ALTER TABLE jobs ADD COLUMN trace TEXT NOT NULL DEFAULT ''",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    progress INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    not_before_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs(idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
";

const COLUMNS: &str = "seq, id, kind, payload_json, state, attempts, max_attempts, last_error, \
    created_ms, updated_ms, progress, idempotency_key, not_before_ms, lease_until_ms, trace";

/// The job table; clones share one connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn small(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn big(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A job and its sequence number (submission order).
fn read(row: &Row<'_>) -> rusqlite::Result<(i64, Job)> {
    let state: String = row.get(4)?;
    let state = JobState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown job state {state:?}").into(),
        )
    })?;
    let job = Job {
        id: row.get(1)?,
        kind: row.get(2)?,
        payload_json: row.get(3)?,
        state,
        attempts: small(row.get(5)?),
        max_attempts: small(row.get(6)?),
        last_error: row.get(7)?,
        created_ms: big(row.get(8)?),
        updated_ms: big(row.get(9)?),
        progress: small(row.get(10)?),
        idempotency_key: row.get(11)?,
        not_before_ms: big(row.get(12)?),
        lease_until_ms: big(row.get(13)?),
        trace: row.get(14)?,
    };
    Ok((row.get(0)?, job))
}

fn find(tx: &Transaction<'_>, column: &str, value: &str) -> rusqlite::Result<Option<Job>> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE {column} = ?1");
    tx.query_row(&sql, [value], read)
        .optional()
        .map(|found| found.map(|(_, job)| job))
}

fn save(tx: &Transaction<'_>, job: &Job) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = ?2, attempts = ?3, last_error = ?4, updated_ms = ?5, \
         progress = ?6, not_before_ms = ?7, lease_until_ms = ?8 WHERE id = ?1",
        params![
            job.id,
            job.state.as_str(),
            job.attempts,
            job.last_error,
            db(job.updated_ms),
            job.progress,
            db(job.not_before_ms),
            db(job.lease_until_ms),
        ],
    )?;
    Ok(())
}

/// The jobs `f` changes among those matching `sql_where`, saved.
fn change_all(
    tx: &Transaction<'_>,
    sql_where: &str,
    param: impl rusqlite::Params,
    mut f: impl FnMut(&mut Job) -> bool,
) -> rusqlite::Result<Vec<Job>> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE {sql_where} ORDER BY seq");
    let jobs: Vec<Job> = tx
        .prepare(&sql)?
        .query_map(param, read)?
        .map(|r| r.map(|(_, job)| job))
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = Vec::new();
    for mut job in jobs {
        if f(&mut job) {
            save(tx, &job)?;
            changed.push(job);
        }
    }
    Ok(changed)
}

impl SqliteStore {
    /// Opens the table at `path` (in memory for `None`) and takes back the
    /// leases of the process that had it before; returns those jobs (now
    /// queued again, or dead-lettered when out of attempts).
    ///
    /// # Errors
    /// The database cannot be opened or set up.
    pub async fn open(path: Option<PathBuf>, now_ms: u64) -> Result<(Self, Vec<Job>), WorkerError> {
        let conn = rt::blocking(move || -> Result<Connection, WorkerError> {
            if let Some(dir) = path.as_deref().and_then(Path::parent) {
                std::fs::create_dir_all(dir).map_err(|source| WorkerError::Dir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            let mut conn = crate::sqlite::open(path.as_deref())?;
            crate::sqlite::migrate(&mut conn, "worker", MIGRATIONS)?;
            Ok(conn)
        })
        .await??;
        let store = Self {
            conn: Arc::new(Mutex::new(conn)),
        };
        let recovered = store
            .with(move |conn| {
                let tx = crate::sqlite::transaction(conn, TransactionBehavior::Immediate)?;
                let jobs = change_all(&tx, "state = 'leased'", [], |j| j.recover(now_ms))?;
                tx.commit()?;
                Ok(jobs)
            })
            .await?;
        Ok((store, recovered))
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, WorkerError> + Send + 'static,
    ) -> Result<T, WorkerError> {
        crate::sqlite::with(&self.conn, f).await
    }

    /// Stores `job`, or returns the job already stored under its
    /// idempotency key or id (true: deduplicated).
    ///
    /// # Errors
    /// [`WorkerError::Full`] with `max_active` unfinished jobs; store failures.
    pub async fn submit(&self, mut job: Job, max_active: u64) -> Result<(Job, bool), WorkerError> {
        self.with(move |conn| {
            let tx = crate::sqlite::transaction(conn, TransactionBehavior::Immediate)?;
            let existing = match job.idempotency_key.as_str() {
                "" => None,
                key => find(&tx, "idempotency_key", key)?,
            };
            if let Some(existing) = existing.or(find(&tx, "id", &job.id)?) {
                return Ok((existing, true));
            }
            let active: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'leased', 'failed')",
                [],
                |r| r.get(0),
            )?;
            if big(active) >= max_active {
                return Err(WorkerError::Full(max_active));
            }
            // Creation times follow submission order: two submissions that
            // read the clock in one order may commit in the other, and a
            // clock may step back; the list is newest first by both.
            let latest: Option<i64> = tx
                .query_row(
                    "SELECT created_ms FROM jobs ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(latest) = latest.and_then(|ms| u64::try_from(ms).ok()) {
                job.created_ms = job.created_ms.max(latest);
                job.updated_ms = job.updated_ms.max(job.created_ms);
            }
            tx.execute(
                "INSERT INTO jobs (id, kind, payload_json, state, attempts, max_attempts, \
                 last_error, created_ms, updated_ms, progress, idempotency_key, not_before_ms, \
                 lease_until_ms, trace) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    job.id,
                    job.kind,
                    job.payload_json,
                    job.state.as_str(),
                    job.attempts,
                    job.max_attempts,
                    job.last_error,
                    db(job.created_ms),
                    db(job.updated_ms),
                    job.progress,
                    job.idempotency_key,
                    db(job.not_before_ms),
                    db(job.lease_until_ms),
                    job.trace,
                ],
            )?;
            tx.commit()?;
            Ok((job, false))
        })
        .await
    }

    /// The job `id`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, WorkerError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let tx = crate::sqlite::transaction(conn, TransactionBehavior::Immediate)?;
            Ok(find(&tx, "id", &id)?)
        })
        .await
    }

    /// Applies `f` to the job `id` and saves the result.
    ///
    /// # Errors
    /// Unknown job; `f` refused (nothing is saved then); store failures.
    pub async fn update<T: Send + 'static>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Job) -> Result<T, Refused> + Send + 'static,
    ) -> Result<(Job, T), WorkerError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let tx = crate::sqlite::transaction(conn, TransactionBehavior::Immediate)?;
            let mut job = find(&tx, "id", &id)?.ok_or_else(|| WorkerError::NotFound(id.clone()))?;
            let out = f(&mut job).map_err(|r| WorkerError::Refused(id, r))?;
            save(&tx, &job)?;
            tx.commit()?;
            Ok((job, out))
        })
        .await
    }

    /// Leases the oldest eligible job, after taking back expired leases.
    /// Returns the leased job, if any, and the jobs whose leases expired.
    ///
    /// # Errors
    /// Store failures.
    pub async fn lease_next(
        &self,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<(Option<Job>, Vec<Job>), WorkerError> {
        self.with(move |conn| {
            let tx = crate::sqlite::transaction(conn, TransactionBehavior::Immediate)?;
            let expired = change_all(
                &tx,
                "state = 'leased' AND lease_until_ms <= ?1",
                [db(now_ms)],
                |j| j.expire(now_ms),
            )?;
            let next = tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'failed') \
                         AND not_before_ms <= ?1 AND attempts < max_attempts ORDER BY seq LIMIT 1"
                    ),
                    [db(now_ms)],
                    read,
                )
                .optional()?;
            let mut leased = None;
            if let Some((_, mut job)) = next
                && job.lease(now_ms, lease_ms).is_ok()
            {
                save(&tx, &job)?;
                leased = Some(job);
            }
            tx.commit()?;
            Ok((leased, expired))
        })
        .await
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
        self.with(move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                 AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR seq < ?3) \
                 ORDER BY seq DESC LIMIT ?4"
            );
            let rows: Vec<(i64, Job)> = conn
                .prepare(&sql)?
                .query_map(
                    params![
                        filter.state.map(JobState::as_str),
                        filter.kind,
                        filter.before_seq,
                        i64::from(limit) + 1,
                    ],
                    read,
                )?
                .collect::<rusqlite::Result<_>>()?;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let more = rows.len() > limit;
            let page: Vec<(i64, Job)> = rows.into_iter().take(limit).collect();
            let next = if more {
                page.last().map(|(seq, _)| *seq)
            } else {
                None
            };
            Ok((page.into_iter().map(|(_, job)| job).collect(), next))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, key: &str, now: u64) -> Job {
        Job::new(
            id.into(),
            "transcode".into(),
            "{}".into(),
            2,
            key.into(),
            now,
            0,
        )
    }

    #[tokio::test]
    async fn a_table_from_before_versions_gains_the_trace_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        {
            // The table as the first release made it: no version, no trace.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO jobs ({}) VALUES ('old', 'transcode', '{{}}', 'queued', 0, 2, '', \
                     1, 1, 0, '', 0, 0)",
                    COLUMNS
                        .trim_start_matches("seq, ")
                        .trim_end_matches(", trace")
                ),
                [],
            )
            .unwrap();
        }
        let (store, _) = SqliteStore::open(Some(path.clone()), 5).await.unwrap();
        let old = store.get("old").await.unwrap().expect("kept");
        assert_eq!((old.state, old.trace.as_str()), (JobState::Queued, ""));
        let mut traced = job("new", "", 6);
        traced.trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into();
        store.submit(traced.clone(), 10).await.unwrap();
        drop(store);
        let (again, _) = SqliteStore::open(Some(path), 7).await.unwrap();
        assert_eq!(
            again.get("new").await.unwrap().expect("stored").trace,
            traced.trace
        );
    }

    #[tokio::test]
    async fn submit_deduplicates_and_leases_go_oldest_first() {
        let (store, recovered) = SqliteStore::open(None, 0).await.unwrap();
        assert!(recovered.is_empty());
        let (a, dup) = store.submit(job("a", "ka", 1), 10).await.unwrap();
        assert!(!dup);
        let (again, dup) = store.submit(job("zz", "ka", 2), 10).await.unwrap();
        assert!(dup);
        assert_eq!(again, a);
        store.submit(job("b", "", 2), 10).await.unwrap();
        assert_eq!(
            store.submit(job("c", "", 3), 2).await,
            Err(WorkerError::Full(2))
        );

        let (leased, _) = store.lease_next(10, 100).await.unwrap();
        let leased = leased.unwrap();
        assert_eq!((leased.id.as_str(), leased.attempts), ("a", 1));
        let (b, _) = store.lease_next(10, 100).await.unwrap();
        assert_eq!(b.unwrap().id, "b");
        assert_eq!(store.lease_next(10, 100).await.unwrap(), (None, vec![]));

        // a's lease runs out: it comes back with its attempt counted.
        let (again, expired) = store.lease_next(110, 100).await.unwrap();
        assert_eq!(expired.len(), 2);
        let again = again.unwrap();
        assert_eq!((again.id.as_str(), again.attempts), ("a", 2));
        let (_, ()) = store.update("a", |j| j.succeed(2, 120)).await.unwrap();
        assert!(matches!(
            store.update("a", |j| j.cancel(130, "")).await,
            Err(WorkerError::Refused(
                _,
                Refused::Terminal(JobState::Succeeded)
            ))
        ));
        assert!(matches!(
            store.update("nope", |j| j.cancel(130, "")).await,
            Err(WorkerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn creation_times_follow_submission_order() {
        let (store, _) = SqliteStore::open(None, 0).await.unwrap();
        store.submit(job("late", "", 100), 100).await.unwrap();
        // Read the clock earlier, committed later (or the clock stepped back).
        let (early, _) = store.submit(job("early", "", 50), 100).await.unwrap();
        assert_eq!(early.created_ms, 100);
        let (page, _) = store.list(Filter::default(), 10).await.unwrap();
        let got: Vec<_> = page.iter().map(|j| (j.id.as_str(), j.created_ms)).collect();
        assert_eq!(got, [("early", 100), ("late", 100)]);
    }
}
