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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message, stream};
use futures::StreamExt as _;

use super::Filter;
use crate::rt;
use crate::services::worker::error::WorkerError;
use crate::services::worker::queue::{Job, JobState, Refused};

/// The durable consumer every worker pulls from.
const CONSUMER: &str = "workers";
/// Messages looked at per [`JetStreamStore::lease_next`], at most.
const SCAN: usize = 32;
/// Compare-and-set rounds of one change before giving up.
const CAS_ROUNDS: usize = 16;
/// Most records [`JetStreamStore::list`] reads.
pub const MAX_LIST_RECORDS: u64 = 100_000;
/// Longest wait for one request to the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one message while listing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the queue lives.
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
    msg: Message,
}

struct Inner {
    js: jetstream::Context,
    kv: kv::Store,
    queue: stream::Stream,
    consumer: consumer::PullConsumer,
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
fn nak_until(at_ms: u64, now_ms: u64) -> AckKind {
    match at_ms.saturating_sub(now_ms) {
        0 => AckKind::Nak(None),
        ms => AckKind::Nak(Some(Duration::from_millis(ms))),
    }
}

/// The answer to a message of `job` when this process does not run it now:
/// removed once the job ended, else given back until the job may run next
/// (its lease or its backoff ends).
fn not_now(job: &Job, now_ms: u64) -> AckKind {
    match job.state {
        JobState::Succeeded | JobState::DeadLetter | JobState::Cancelled => AckKind::Ack,
        // Leased by a live worker (whose ack wait may have run out first).
        JobState::Leased => nak_until(job.lease_until_ms, now_ms),
        JobState::Queued | JobState::Failed => nak_until(job.not_before_ms, now_ms),
    }
}

/// What a dispatch publication came to.
enum Dispatch {
    /// Queued.
    Queued,
    /// The job's message is already queued.
    AlreadyQueued,
    /// The work queue holds `max_active` messages.
    Full,
}

impl JetStreamStore {
    /// Connects, and creates the bucket, the work queue and its consumer
    /// where they are missing (existing ones keep their settings).
    ///
    /// # Errors
    /// The server is unreachable or refuses to create them.
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
        let js = jetstream::new(client);
        let bucket = crate::nats_kv::Bucket {
            name: &opts.name,
            description: "StreamGate worker jobs",
            history: 1,
            max_age: Duration::ZERO,
            timeout: REQUEST_TIMEOUT,
        };
        let kv = crate::nats_kv::bind_or_create(&js, &bucket)
            .await
            .map_err(|e| unavailable("jobs bucket", e))?;
        let max_active = i64::try_from(opts.max_active).unwrap_or(i64::MAX);
        let queue = js
            .get_or_create_stream(stream::Config {
                name: format!("{}_queue", opts.name),
                description: Some(
                    "StreamGate worker dispatch (one message per unfinished job)".to_owned(),
                ),
                subjects: vec![format!("{}.dispatch.*", opts.name)],
                retention: stream::RetentionPolicy::WorkQueue,
                max_messages: max_active,
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| unavailable("create the work queue", e))?;
        let consumer = queue
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    description: Some("StreamGate workers".to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: opts.lease,
                    deliver_policy: DeliverPolicy::All,
                    max_deliver: -1,
                    // Delayed jobs wait unacknowledged: allow all of them.
                    max_ack_pending: max_active,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| unavailable("create the work queue's consumer", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                kv,
                queue,
                consumer,
                subject: format!("{}.dispatch.", opts.name),
                held: Mutex::new(HashMap::new()),
                closed: tokio::sync::RwLock::new(false),
            }),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(id, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `record` over `revision`: false when another writer was first.
    async fn save(&self, record: &Record, revision: u64) -> Result<bool, WorkerError> {
        let id = record.job.id.as_str();
        match self.inner.kv.update(id, encode(record)?, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(unavailable(&format!("write job {id}"), e)),
        }
    }

    async fn dispatch(&self, id: &str) -> Result<Dispatch, WorkerError> {
        let subject = format!("{}{id}", self.inner.subject);
        let ack = match self.inner.js.publish(subject, bytes::Bytes::new()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(Dispatch::Queued),
            // The server's words (JSStreamStoreFailedF); there is no code
            // that tells the two limits apart.
            Err(e) if e.to_string().contains("maximum messages per subject") => {
                Ok(Dispatch::AlreadyQueued)
            }
            Err(e) if e.to_string().contains("maximum messages") => Ok(Dispatch::Full),
            Err(e) => Err(unavailable(&format!("queue job {id}"), e)),
        }
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
        let created = match self.inner.kv.create(id.as_str(), encode(&record)?).await {
            Ok(revision) => revision,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
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
            }
            Err(e) => return Err(unavailable(&format!("create job {id}"), e)),
        };
        record.seq = created;
        let mut revision = created;
        match self
            .inner
            .kv
            .update(id.as_str(), encode(&record)?, created)
            .await
        {
            Ok(r) => revision = r,
            Err(e) => {
                // Only its place in the list suffers.
                tracing::warn!(job_id = %id, error = %e, "job not numbered");
                record.seq = 0;
            }
        }
        let refused = match self.dispatch(&id).await {
            Ok(Dispatch::Queued | Dispatch::AlreadyQueued) => return Ok((record.job, false)),
            Ok(Dispatch::Full) => WorkerError::Full(max_active),
            Err(e) => e,
        };
        // Not queued: take the record back, so it is not left waiting for a
        // message that never comes.
        if let Err(e) = self
            .inner
            .kv
            .delete_expect_revision(id.as_str(), Some(revision))
            .await
        {
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
                if let Err(e) = self.inner.queue.purge().filter(subject).await {
                    tracing::warn!(job_id = %job.id, error = %e, "ended job's message not removed");
                }
            }
            return;
        };
        let kind = match job.state {
            JobState::Leased => AckKind::Progress,
            _ => not_now(job, rt::unix_ms()),
        };
        let keep = matches!(kind, AckKind::Progress);
        // The end of a job is confirmed by the server: its place in the
        // queue is free when this returns.
        let settled = if matches!(kind, AckKind::Ack) {
            held.msg.double_ack().await
        } else {
            held.msg.ack_with(kind).await
        };
        if let Err(e) = settled {
            tracing::warn!(job_id = %job.id, error = %e, "job message not settled");
        }
        if keep {
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
        if let Some(h) = taken
            && let Err(e) = h.msg.double_ack().await
        {
            tracing::warn!(job_id = %job.id, error = %e, "job message not removed");
        }
    }

    async fn next_message(&self) -> Result<Option<Message>, WorkerError> {
        let mut batch = self
            .inner
            .consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .map_err(|e| unavailable("fetch jobs", e))?;
        match batch.next().await {
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => Err(unavailable("fetch jobs", e)),
            None => Ok(None),
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
            let Some(msg) = self.next_message().await? else {
                break;
            };
            let Some(id) = msg.subject.as_str().strip_prefix(&self.inner.subject) else {
                // Not ours: never delivered again.
                let _ = msg.ack_with(AckKind::Term).await;
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
        msg: Message,
        now_ms: u64,
        lease_ms: u64,
        expired: &mut Vec<Job>,
    ) -> Result<Option<Job>, WorkerError> {
        for _ in 0..CAS_ROUNDS {
            let loaded = match self.load(id).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    return Err(e);
                }
            };
            let Some((mut record, revision)) = loaded else {
                // No record (taken back after a refused dispatch): drop it.
                let _ = msg.ack().await;
                return Ok(None);
            };
            let lost = record.job.expire(now_ms).then(|| record.job.clone());
            let attempt = record.job.lease(now_ms, lease_ms).ok();
            if lost.is_none() && attempt.is_none() {
                let _ = msg.ack_with(not_now(&record.job, now_ms)).await;
                return Ok(None);
            }
            match self.save(&record, revision).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    return Err(e);
                }
            }
            expired.extend(lost);
            let Some(attempt) = attempt else {
                // The lost attempt was the last: dead-lettered.
                let _ = msg.ack().await;
                return Ok(None);
            };
            self.held().insert(id.to_owned(), Held { attempt, msg });
            return Ok(Some(record.job));
        }
        let _ = msg.ack_with(AckKind::Nak(None)).await;
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
            let (kind, taken_back) = self.give_back(&id, h.attempt, now_ms).await;
            let Some(kind) = kind else {
                // Not ours any more, or the server is away: the ack wait
                // brings it back.
                continue;
            };
            // Confirmed by the server: the process is about to go.
            if let Err(e) = h.msg.double_ack_with(kind).await {
                tracing::warn!(job_id = %id, error = %e, "released job's message not settled");
            }
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
    ) -> (Option<AckKind>, Option<Job>) {
        for _ in 0..CAS_ROUNDS {
            let Ok(loaded) = self.load(id).await else {
                return (None, None);
            };
            let Some((mut record, revision)) = loaded else {
                return (Some(AckKind::Ack), None);
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

    /// Every record, in bucket order.
    async fn records(&self) -> Result<Vec<Record>, WorkerError> {
        let kv = &self.inner.kv;
        let consumer = kv
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{}>", kv.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..pull::OrderedConfig::default()
            })
            .await
            .map_err(|e| unavailable("list jobs", e))?;
        let pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let records = self.read_records(consumer, pending).await;
        // The server would drop it after 30 s idle; list calls can be many.
        if let Err(e) = kv.stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "list consumer not deleted");
        }
        records
    }

    async fn read_records(
        &self,
        consumer: consumer::Consumer<pull::OrderedConfig>,
        pending: u64,
    ) -> Result<Vec<Record>, WorkerError> {
        let kv = &self.inner.kv;
        if pending > MAX_LIST_RECORDS {
            return Err(WorkerError::TooManyRecords(pending));
        }
        let mut records = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("list jobs", e))?;
        let mut left = pending;
        while left > 0 {
            let msg = match rt::timeout(READ_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(unavailable("list jobs", e)),
                Ok(None) => break,
                Err(_) => return Err(unavailable("list jobs", "timed out")),
            };
            left = msg.info().map_or(0, |i| i.pending);
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if deleted {
                continue;
            }
            let key = msg.subject.as_str().strip_prefix(&kv.prefix).unwrap_or("");
            records.push(decode(key, &msg.payload)?);
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
