//! The job table on NATS JetStream, shared by workers on any host
//! (microservices mode).
//!
//! - **Records:** one key per job in the key-value bucket `<name>` (JSON of
//!   the [`Job`] and its sequence number, history 1). Every change loads the
//!   record, applies a [`queue`](crate::services::worker::queue) transition
//!   and writes it back with compare-and-set on its revision, so racing
//!   workers never both win (the loser runs the transition again on the
//!   newer record). Submission creates the key, which deduplicates by id
//!   (the idempotency key, when there is one).
//! - **Dispatch:** the work-queue stream `<name>_queue` holds one message,
//!   `<name>.dispatch.<job id>`, per unfinished job (at most one per subject:
//!   `discard_new_per_subject`), and at most `max_active` in all: JetStream
//!   itself refuses the submission past that. One durable pull consumer,
//!   `workers`, shared by every worker, hands each message to one worker at a
//!   time. A worker that leases the job keeps the message unacknowledged
//!   while it runs: renewals extend its ack wait (AckWait is the lease), the
//!   end of the job acknowledges it (removing it), a retry gives it back
//!   with a delay (NAK with delay is the backoff). A message whose job is not
//!   due yet (delayed, or leased by a live worker) goes back with the delay
//!   left. A worker that dies holding messages gets nothing more done: its
//!   messages come back after the ack wait, and whoever receives one finds
//!   the lease expired, counts the lost attempt and leases the job again.
//! - **Dead letter:** the attempts counted in the record decide it, as with
//!   SQLite; the consumer's `max_deliver` stays unlimited, because the
//!   delays above are deliveries too.
//! - The record is the truth and the message only a prompt to look at it:
//!   a message for a finished or unknown job is acknowledged and dropped;
//!   a submission that finds its job already stored and unfinished publishes
//!   its message again (refused while one exists), which repairs a job whose
//!   message was lost between the two writes.
//!
//! The server sits behind two seams, so the simulator runs this code on a
//! modelled server: the records' bucket ([`Bucket`], the registry's) and
//! the work queue ([`queue::WorkQueue`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;

use super::Filter;
use crate::registry::nats_kv::bucket::{Bucket, KvError, Op};
use crate::rt;
use crate::services::worker::error::WorkerError;
use crate::services::worker::queue::{Job, JobState, Refused};
use queue::{Delivery, Published, Settle, WorkQueue};

pub mod http;
#[cfg(not(madsim))]
pub mod nats;
pub mod queue;

/// Messages looked at per [`JetStreamStore::lease_next`], at most.
const SCAN: usize = 32;
/// Compare-and-set rounds of one change before giving up.
const CAS_ROUNDS: usize = 16;
/// The property counted (in the simulator's report) when a delivery finds
/// its job's lease ran out and takes the job over: a worker lost its job's
/// message, and two may run one attempt.
pub const TAKEN_OVER: &str = "jetstream: a lease that ran out taken over";
/// The property counted when a delivery finds its job leased by a live
/// holder and gives it back.
pub const HELD_ELSEWHERE: &str = "jetstream: a delivery of a job leased elsewhere given back";
/// The property counted when a job record's compare-and-set loses to
/// another writer (the other worker, or this one's own write that the
/// server applied while its answer was lost): the caller reads it again.
pub const CAS_LOST: &str = "jetstream: a job record's compare-and-set lost to another write";
/// Most records [`JetStreamStore::list`] reads.
pub const MAX_LIST_RECORDS: u64 = 100_000;
/// Longest wait for one request to the server.
#[cfg(not(madsim))]
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one message while listing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the queue lives.
#[cfg(not(madsim))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// Names the records' bucket (`<name>`), the work queue
    /// (`<name>_queue`) and its subjects (`<name>.dispatch.<job id>`).
    pub name: String,
    /// Most unfinished jobs (the work queue's message limit), set when the
    /// stream is created.
    pub max_active: u64,
    /// The consumer's ack wait, set when it is created: how long a worker
    /// that stopped renewing keeps its jobs.
    pub lease: Duration,
    /// TLS and credentials.
    pub auth: crate::nats_auth::NatsAuth,
}

/// A job record as stored: the job and its submission number.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The bucket revision that created it: later submissions have larger
    /// ones (0 if numbering it failed; it then lists as the oldest).
    seq: u64,
    #[serde(flatten)]
    job: Job,
}

/// A delivered message this process holds while it runs the job.
struct Held {
    attempt: u32,
    msg: Delivery,
}

struct Inner {
    kv: Arc<dyn Bucket>,
    queue: Arc<dyn WorkQueue>,
    /// `<name>.dispatch.`
    subject: String,
    held: Mutex<HashMap<String, Held>>,
    /// Set by [`JetStreamStore::release`]: no more leases. Leases in
    /// flight hold it for reading, so `release` waits for them.
    closed: tokio::sync::RwLock<bool>,
}

/// The job table on JetStream; clones share one connection.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("subject", &self.inner.subject)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl Into<super::super::error::Cause>) -> WorkerError {
    WorkerError::unavailable(format!("nats: {what}"), e)
}

fn encode(record: &Record) -> Result<bytes::Bytes, WorkerError> {
    serde_json::to_vec(record)
        .map(bytes::Bytes::from)
        .map_err(|source| WorkerError::Record {
            key: record.job.id.clone(),
            source: source.into(),
        })
}

fn decode(key: &str, value: &[u8]) -> Result<Record, WorkerError> {
    let unreadable = |source: super::super::error::Cause| WorkerError::Record {
        key: key.to_owned(),
        source,
    };
    let record: Record = serde_json::from_slice(value).map_err(|e| unreadable(e.into()))?;
    // Anyone with access to the bucket can write it: a record that breaks
    // the job's invariants is refused like malformed JSON, never acted on.
    record
        .job
        .consistency()
        .map_err(|broken| unreadable(format!("inconsistent job: {broken}").into()))?;
    Ok(record)
}

/// Decodes a job record as stored in the bucket (the value of key `key`):
/// its submission number and the job. The fuzz target `job_record` feeds
/// it arbitrary bytes.
///
/// # Errors
/// [`WorkerError::Record`] for malformed JSON or a job that breaks the
/// job's invariants ([`Job::consistency`]).
pub fn decode_record(key: &str, value: &[u8]) -> Result<(u64, Job), WorkerError> {
    decode(key, value).map(|r| (r.seq, r.job))
}

/// Encodes a job record as stored in the bucket ([`decode_record`]'s inverse).
///
/// # Errors
/// [`WorkerError::Record`] if it does not encode.
pub fn encode_record(seq: u64, job: &Job) -> Result<bytes::Bytes, WorkerError> {
    encode(&Record {
        seq,
        job: job.clone(),
    })
}

/// A NAK that has the message delivered again at `at_ms`. A due time
/// already passed is a plain NAK: nats-server 2.9 does not redeliver a NAK
/// with a zero delay until the ack wait ends.
fn nak_until(at_ms: u64, now_ms: u64) -> Settle {
    match at_ms.saturating_sub(now_ms) {
        0 => Settle::Nak(None),
        ms => Settle::Nak(Some(ms)),
    }
}

/// The answer to a message of `job` when this process does not run it now:
/// removed once the job ended, else given back until the job may run next
/// (its lease or its backoff ends).
fn not_now(job: &Job, now_ms: u64) -> Settle {
    match job.state {
        JobState::Succeeded | JobState::DeadLetter | JobState::Cancelled => Settle::Ack,
        // Leased by a live worker (whose ack wait may have run out first).
        JobState::Leased => nak_until(job.lease_until_ms, now_ms),
        JobState::Queued | JobState::Failed => nak_until(job.not_before_ms, now_ms),
    }
}

impl JetStreamStore {
    /// Connects, and creates the bucket, the work queue and its consumer
    /// where they are missing (existing ones keep their settings).
    ///
    /// # Errors
    /// The server is unreachable or refuses to create them.
    #[cfg(not(madsim))]
    pub async fn connect(opts: &Options) -> Result<Self, WorkerError> {
        let connect = async_nats::ConnectOptions::new().name("streamgate-worker-jobs");
        let client = opts
            .auth
            .apply(connect)
            .await
            .map_err(|e| unavailable("NATS options", e))?
            .connect(opts.url.as_str())
            .await
            .map_err(|e| unavailable(&format!("connect to {}", opts.url), e))?;
        let js = async_nats::jetstream::new(client.clone());
        let settings = crate::nats_kv::Bucket {
            name: &opts.name,
            description: "StreamGate worker jobs",
            history: 1,
            max_age: Duration::ZERO,
            timeout: REQUEST_TIMEOUT,
        };
        let kv = crate::registry::nats_kv::NatsBucket::bind(client.clone(), &settings)
            .await
            .map_err(|e| unavailable("jobs bucket", e))?;
        let queue = nats::NatsQueue::bind(
            client,
            &js,
            &opts.name,
            opts.max_active,
            opts.lease,
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| unavailable("work queue", e))?;
        Ok(Self::on(&opts.name, Arc::new(kv), Arc::new(queue)))
    }

    /// The store on a bucket and a work queue (`<name>.dispatch.*`) already
    /// set up: the simulator's modelled server.
    #[must_use]
    pub fn on(name: &str, kv: Arc<dyn Bucket>, queue: Arc<dyn WorkQueue>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kv,
                queue,
                subject: format!("{name}.dispatch."),
                held: Mutex::new(HashMap::new()),
                closed: tokio::sync::RwLock::new(false),
            }),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles `msg`, logging a failure (the ack wait covers a lost one).
    async fn settle_msg(&self, id: &str, msg: &Delivery, how: Settle, confirm: bool) {
        if let Err(e) = self.inner.queue.settle(msg, how, confirm).await {
            tracing::warn!(job_id = %id, error = %e, "job message not settled");
        }
    }

    /// The record of `id` and its revision.
    async fn load(&self, id: &str) -> Result<Option<(Record, u64)>, WorkerError> {
        let entry = self
            .inner
            .kv
            .entry(id)
            .await
            .map_err(|e| unavailable(&format!("read job {id}"), e))?;
        match entry {
            Some(e) if e.op == Op::Put => Ok(Some((decode(id, &e.value)?, e.revision))),
            _ => Ok(None),
        }
    }

    /// Writes `record` over `revision`: false when another writer was first.
    async fn save(&self, record: &Record, revision: u64) -> Result<bool, WorkerError> {
        let id = record.job.id.as_str();
        match self.inner.kv.update(id, encode(record)?, revision).await {
            Ok(_) => Ok(true),
            Err(KvError::WrongRevision) => {
                rt::coverage::hit(CAS_LOST);
                Ok(false)
            }
            Err(e) => Err(unavailable(&format!("write job {id}"), e)),
        }
    }

    /// Creates the key `id` (also over a delete marker, as a KV create
    /// does): its revision, or `None` if it holds a value.
    async fn create(&self, id: &str, value: Bytes) -> Result<Option<u64>, WorkerError> {
        let failed = |e: KvError| unavailable(&format!("create job {id}"), e);
        match self.inner.kv.update(id, value.clone(), 0).await {
            Ok(revision) => return Ok(Some(revision)),
            Err(KvError::WrongRevision) => {}
            Err(e) => return Err(failed(e)),
        }
        match self.inner.kv.entry(id).await.map_err(failed)? {
            Some(e) if e.op != Op::Put => match self.inner.kv.update(id, value, e.revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(KvError::WrongRevision) => Ok(None),
                Err(e) => Err(failed(e)),
            },
            _ => Ok(None),
        }
    }

    async fn dispatch(&self, id: &str) -> Result<Published, WorkerError> {
        let subject = format!("{}{id}", self.inner.subject);
        self.inner
            .queue
            .publish(&subject)
            .await
            .map_err(|e| unavailable(&format!("queue job {id}"), e))
    }

    /// Stores `job` and queues it, or returns the job already stored under
    /// its id (true: deduplicated; an unfinished one is queued again if its
    /// message was lost).
    ///
    /// # Errors
    /// [`WorkerError::Full`] when the work queue holds `max_active` jobs
    /// (the limit the stream was created with); the server failed.
    pub async fn submit(&self, job: Job, max_active: u64) -> Result<(Job, bool), WorkerError> {
        let id = job.id.clone();
        let mut record = Record { seq: 0, job };
        let Some(created) = self.create(&id, encode(&record)?).await? else {
            let Some((existing, _)) = self.load(&id).await? else {
                return Err(WorkerError::Unavailable {
                    source: None,
                    what: format!("job {id} was removed while submitted again; try again"),
                });
            };
            if !existing.job.state.is_terminal() {
                self.dispatch(&id).await?;
            }
            return Ok((existing.job, true));
        };
        record.seq = created;
        let mut revision = created;
        match self.inner.kv.update(&id, encode(&record)?, created).await {
            Ok(r) => revision = r,
            Err(e) => {
                // Only its place in the list suffers.
                tracing::warn!(job_id = %id, error = %e, "job not numbered");
                record.seq = 0;
            }
        }
        let refused = match self.dispatch(&id).await {
            Ok(Published::Queued | Published::AlreadyQueued) => return Ok((record.job, false)),
            Ok(Published::Full) => WorkerError::Full(max_active),
            Err(e) => e,
        };
        // Not queued: take the record back, so it is not left waiting for a
        // message that never comes.
        if let Err(e) = self.inner.kv.delete(&id, Some(revision)).await {
            tracing::warn!(job_id = %id, error = %e, "unqueued job record not removed");
        }
        Err(refused)
    }

    /// The job `id`.
    ///
    /// # Errors
    /// The server failed; the record is unreadable.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, WorkerError> {
        Ok(self.load(id).await?.map(|(r, _)| r.job))
    }

    /// Applies `f` to the job `id` and saves the result (again on the newer
    /// record when another writer was first); then settles the message this
    /// process holds for it.
    ///
    /// # Errors
    /// Unknown job; `f` refused; the server failed.
    pub async fn update<T: Send + 'static>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Job) -> Result<T, Refused> + Send + 'static,
    ) -> Result<(Job, T), WorkerError> {
        for _ in 0..CAS_ROUNDS {
            let (mut record, revision) = self
                .load(id)
                .await?
                .ok_or_else(|| WorkerError::NotFound(id.to_owned()))?;
            match f(&mut record.job) {
                Err(refused) => {
                    self.settle_refused(&record.job, refused).await;
                    return Err(WorkerError::Refused(id.to_owned(), refused));
                }
                Ok(out) => {
                    if self.save(&record, revision).await? {
                        self.settle(&record.job).await;
                        return Ok((record.job, out));
                    }
                }
            }
        }
        Err(WorkerError::Unavailable {
            source: None,
            what: format!("job {id} changed {CAS_ROUNDS} times while being updated; try again"),
        })
    }

    /// After `job` was saved: renewals extend the message's ack wait, a
    /// retry gives it back with its backoff, the end removes it (also when
    /// another process holds it, or none: a cancelled job frees its place
    /// at once).
    async fn settle(&self, job: &Job) {
        let held = self.held().remove(&job.id);
        let Some(held) = held else {
            if job.state.is_terminal() {
                let subject = format!("{}{}", self.inner.subject, job.id);
                if let Err(e) = self.inner.queue.purge(&subject).await {
                    tracing::warn!(job_id = %job.id, error = %e, "ended job's message not removed");
                }
            }
            return;
        };
        let how = match job.state {
            JobState::Leased => Settle::Progress,
            _ => not_now(job, rt::unix_ms()),
        };
        // The end of a job is confirmed by the server: its place in the
        // queue is free when this returns.
        let confirm = how == Settle::Ack;
        self.settle_msg(&job.id, &held.msg, how, confirm).await;
        if how == Settle::Progress {
            self.held().insert(job.id.clone(), held);
        }
    }

    /// After a refused change: a finished job's message is removed; a lease
    /// that moved on means the delivery this process holds is stale.
    async fn settle_refused(&self, job: &Job, refused: Refused) {
        let taken = {
            let mut held = self.held();
            let current = held
                .get(&job.id)
                .is_some_and(|h| job.state == JobState::Leased && h.attempt == job.attempts);
            match refused {
                Refused::Terminal(_) => held.remove(&job.id),
                Refused::StaleLease if !current => {
                    held.remove(&job.id);
                    None
                }
                Refused::StaleLease | Refused::NotEligible => None,
            }
        };
        if let Some(h) = taken {
            self.settle_msg(&job.id, &h.msg, Settle::Ack, true).await;
        }
    }

    /// Leases the first due job among the messages delivered, after taking
    /// back expired leases it meets. Returns the leased job, if any, and the
    /// jobs whose leases expired.
    ///
    /// # Errors
    /// The server failed.
    pub async fn lease_next(
        &self,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<(Option<Job>, Vec<Job>), WorkerError> {
        // Runs to its end even when the caller is dropped (the runner is
        // aborted when the worker stops): a message in hand is then held,
        // and `release` gives it back, where a message dropped half-way
        // would wait out the ack wait.
        let this = self.clone();
        rt::spawn(async move { this.lease_next_held(now_ms, lease_ms).await }).await?
    }

    async fn lease_next_held(
        &self,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<(Option<Job>, Vec<Job>), WorkerError> {
        let closed = self.inner.closed.read().await;
        if *closed {
            return Ok((None, Vec::new()));
        }
        let mut expired = Vec::new();
        for _ in 0..SCAN {
            let msg = self
                .inner
                .queue
                .fetch()
                .await
                .map_err(|e| unavailable("fetch jobs", e))?;
            let Some(msg) = msg else {
                break;
            };
            let Some(id) = msg.subject.strip_prefix(&self.inner.subject) else {
                // Not ours: never delivered again.
                self.settle_msg(&msg.subject, &msg, Settle::Term, false)
                    .await;
                continue;
            };
            let id = id.to_owned();
            if let Some(job) = self.take(&id, msg, now_ms, lease_ms, &mut expired).await? {
                return Ok((Some(job), expired));
            }
        }
        Ok((None, expired))
    }

    /// Looks at the job `id` of a delivered message: leases it if due, or
    /// gives the message back for as long as the job is not.
    async fn take(
        &self,
        id: &str,
        msg: Delivery,
        now_ms: u64,
        lease_ms: u64,
        expired: &mut Vec<Job>,
    ) -> Result<Option<Job>, WorkerError> {
        for _ in 0..CAS_ROUNDS {
            let loaded = match self.load(id).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    self.settle_msg(id, &msg, Settle::Nak(None), false).await;
                    return Err(e);
                }
            };
            let Some((mut record, revision)) = loaded else {
                // No record (taken back after a refused dispatch): drop it.
                self.settle_msg(id, &msg, Settle::Ack, false).await;
                return Ok(None);
            };
            let lost = record.job.expire(now_ms).then(|| record.job.clone());
            if lost.is_some() {
                rt::coverage::hit(TAKEN_OVER);
            }
            let attempt = record.job.lease(now_ms, lease_ms).ok();
            if lost.is_none() && attempt.is_none() {
                if record.job.state == JobState::Leased {
                    rt::coverage::hit(HELD_ELSEWHERE);
                }
                self.settle_msg(id, &msg, not_now(&record.job, now_ms), false)
                    .await;
                return Ok(None);
            }
            match self.save(&record, revision).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.settle_msg(id, &msg, Settle::Nak(None), false).await;
                    return Err(e);
                }
            }
            expired.extend(lost);
            let Some(attempt) = attempt else {
                // The lost attempt was the last: dead-lettered.
                self.settle_msg(id, &msg, Settle::Ack, false).await;
                return Ok(None);
            };
            if rt::faults::injected(rt::faults::Bug::JetStreamAckOnLease) {
                self.settle_msg(id, &msg, Settle::Ack, false).await;
            } else {
                self.held().insert(id.to_owned(), Held { attempt, msg });
            }
            return Ok(Some(record.job));
        }
        self.settle_msg(id, &msg, Settle::Nak(None), false).await;
        Ok(None)
    }

    /// Gives back every job this process holds (it is stopping), after
    /// the leases in flight end; no more are taken. Each lease is taken back
    /// as a lost attempt, as SQLite does when its file is reopened, and the
    /// message goes back at once; a job that already ended (its last write
    /// landed, its acknowledgement did not) has its message removed.
    /// Returns the jobs taken back.
    pub async fn release(&self, now_ms: u64) -> Vec<Job> {
        *self.inner.closed.write().await = true;
        let held: Vec<(String, Held)> = self.held().drain().collect();
        let mut released = Vec::new();
        for (id, h) in held {
            let (how, taken_back) = self.give_back(&id, h.attempt, now_ms).await;
            let Some(how) = how else {
                // Not ours any more, or the server is away: the ack wait
                // brings it back.
                continue;
            };
            // Confirmed by the server: the process is about to go.
            self.settle_msg(&id, &h.msg, how, true).await;
            released.extend(taken_back);
        }
        released
    }

    /// What to do with the message of `attempt` of `id`, and the job if its
    /// lease was taken back.
    async fn give_back(
        &self,
        id: &str,
        attempt: u32,
        now_ms: u64,
    ) -> (Option<Settle>, Option<Job>) {
        for _ in 0..CAS_ROUNDS {
            let Ok(loaded) = self.load(id).await else {
                return (None, None);
            };
            let Some((mut record, revision)) = loaded else {
                return (Some(Settle::Ack), None);
            };
            match record.job.state {
                JobState::Leased if record.job.attempts == attempt => {}
                JobState::Leased => return (None, None),
                _ => return (Some(not_now(&record.job, now_ms)), None),
            }
            record.job.recover(now_ms);
            match self.save(&record, revision).await {
                Ok(true) => return (Some(not_now(&record.job, now_ms)), Some(record.job)),
                Ok(false) => {}
                Err(_) => return (None, None),
            }
        }
        (None, None)
    }

    /// Every record, in bucket order: the listing of a watch of the whole
    /// bucket (the latest entry of each key), which is then dropped.
    async fn records(&self) -> Result<Vec<Record>, WorkerError> {
        let watch = rt::timeout(READ_TIMEOUT, self.inner.kv.watch(">"))
            .await
            .map_err(|_| unavailable("list jobs", "timed out"))?
            .map_err(|e| unavailable("list jobs", e))?;
        if watch.pending > MAX_LIST_RECORDS {
            return Err(WorkerError::TooManyRecords(watch.pending));
        }
        let mut records = Vec::with_capacity(usize::try_from(watch.pending).unwrap_or(0));
        let mut entries = watch.entries;
        let mut left = watch.pending;
        while left > 0 {
            let delivered = match rt::timeout(READ_TIMEOUT, entries.next()).await {
                Ok(Some(Ok(delivered))) => delivered,
                Ok(Some(Err(e))) => return Err(unavailable("list jobs", e)),
                Ok(None) => break,
                Err(_) => return Err(unavailable("list jobs", "timed out")),
            };
            left = delivered.pending;
            let entry = delivered.entry;
            if entry.op == Op::Put {
                records.push(decode(&entry.key, &entry.value)?);
            }
        }
        Ok(records)
    }

    /// Up to `limit` jobs matching `filter`, newest first, and the sequence
    /// number to continue before when there are more. Reads every record
    /// (at most [`MAX_LIST_RECORDS`]).
    ///
    /// # Errors
    /// The server failed; more records than a list reads.
    pub async fn list(
        &self,
        filter: Filter,
        limit: u32,
    ) -> Result<(Vec<Job>, Option<i64>), WorkerError> {
        let seq = |r: &Record| i64::try_from(r.seq).unwrap_or(i64::MAX);
        let mut records: Vec<Record> = self
            .records()
            .await?
            .into_iter()
            .filter(|r| filter.matches(seq(r), &r.job))
            .collect();
        records.sort_unstable_by(|a, b| b.seq.cmp(&a.seq).then_with(|| b.job.id.cmp(&a.job.id)));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = (records.len() > limit)
            .then(|| records.get(limit.saturating_sub(1)).map(seq))
            .flatten();
        records.truncate(limit);
        Ok((records.into_iter().map(|r| r.job).collect(), next))
    }
}
