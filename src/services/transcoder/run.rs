//! Runs accepted transcodes: at most [`CONCURRENCY`] at once, each
//! cancellable, publishing TranscodingStarted, then Completed or Failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Engine;
use super::engine::{self, Context, Job, Reporter};
use super::error::TranscoderError;
use super::hls::Rendition;
use super::state::{Admitted, CAPACITY, Table, Transcode};
use crate::bus::EventBus;
use crate::bus::events::{self, TranscodingCompleted, TranscodingFailed, TranscodingStarted};
use crate::middleware::metrics::Metrics;
use crate::rt;

/// Transcodes running at once.
pub const CONCURRENCY: usize = 2;
/// Source of the events published.
const SOURCE: &str = "transcoder";

/// An accepted transcode on its way to the executor.
struct Queued {
    id: String,
    job_id: String,
    job: Job,
    cancel: oneshot::Receiver<()>,
}

/// State shared by the gRPC server and the executor.
pub struct Shared {
    table: Mutex<Table>,
    cancels: Mutex<BTreeMap<String, oneshot::Sender<()>>>,
    engine: Engine,
    ctx: Context,
    bus: Arc<dyn EventBus>,
    permits: Semaphore,
    queue: mpsc::Sender<Queued>,
    metrics: Metrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The shared state and the executor future that runs the transcodes
    /// (spawn it; dropping it stops every transcode, killing ffmpeg).
    /// Transcode durations are recorded in `metrics`.
    pub fn new(
        engine: Engine,
        ctx: Context,
        bus: Arc<dyn EventBus>,
        metrics: Metrics,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (queue, rx) = mpsc::channel(CAPACITY);
        let shared = Arc::new(Self {
            table: Mutex::new(Table::default()),
            cancels: Mutex::new(BTreeMap::new()),
            engine,
            ctx,
            bus,
            permits: Semaphore::new(CONCURRENCY),
            queue,
            metrics,
        });
        (shared.clone(), execute(shared, rx))
    }

    /// The transcode `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Transcode> {
        lock(&self.table).get(id).cloned()
    }

    /// Accepts `job` (or returns the live transcode of `key`).
    ///
    /// # Errors
    /// As [`Table::admit`].
    pub fn submit(&self, job: Job, key: &str) -> Result<Transcode, TranscoderError> {
        let id = rt::random_hex128();
        let admitted = lock(&self.table).admit(&id, &job.video_id, key, rt::unix_ms())?;
        let t = match admitted {
            Admitted::Existing(t) => return Ok(t),
            Admitted::New(t) => t,
        };
        let (tx, cancel) = oneshot::channel();
        lock(&self.cancels).insert(id.clone(), tx);
        let job_id = if key.is_empty() {
            id.clone()
        } else {
            key.to_owned()
        };
        let queued = Queued {
            id: id.clone(),
            job_id,
            job,
            cancel,
        };
        if self.queue.try_send(queued).is_err() {
            lock(&self.cancels).remove(&id);
            let gone = Err("the transcoder is shutting down or full".to_owned());
            lock(&self.table).finish(&id, gone, rt::unix_ms());
            return Err(TranscoderError::Busy(CAPACITY));
        }
        Ok(t)
    }

    /// Cancels the transcode `id` (its ffmpeg is killed) and publishes
    /// TranscodingFailed, so the video does not stay "transcoding".
    ///
    /// # Errors
    /// As [`Table::cancel`].
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Transcode, TranscoderError> {
        let t = lock(&self.table).cancel(id, reason, rt::unix_ms())?;
        if let Some(tx) = lock(&self.cancels).remove(id) {
            let _ = tx.send(());
        }
        let job_id = if t.key.is_empty() { &t.id } else { &t.key };
        self.failed(&t.video_id, job_id, &t.error).await;
        Ok(t)
    }

    async fn failed(&self, video_id: &str, job_id: &str, reason: &str) {
        let p = TranscodingFailed {
            video_id: video_id.to_owned(),
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.publish(&p).await;
    }

    async fn publish<P: events::Payload + Sync>(&self, payload: &P) {
        if let Err(e) = events::publish(self.bus.as_ref(), SOURCE, payload).await {
            tracing::warn!(kind = ?P::KIND, error = %e, "publishing failed");
        }
    }

    /// Runs one transcode to its end unless cancelled first.
    async fn run_one(self: Arc<Self>, q: Queued) {
        let Queued {
            id,
            job_id,
            job,
            cancel,
        } = q;
        let work = async {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = self.permits.acquire().await.ok();
            if !lock(&self.table).start(&id, rt::unix_ms()) {
                return None;
            }
            let report = Report {
                shared: &self,
                id: &id,
                video_id: &job.video_id,
                job_id: &job_id,
            };
            let started = rt::now();
            let result = engine::run(&self.engine, &self.ctx, &job, &report).await;
            self.metrics
                .transcode_finished(result.is_ok(), rt::now() - started);
            Some(result)
        };
        let cancelled = async {
            if cancel.await.is_err() {
                // The sender went without a word: never cancelled.
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            // Fixed polling order: tokio's random one would differ between
            // runs of one seed in the simulator.
            biased;
            result = work => result,
            () = cancelled => None,
        };
        lock(&self.cancels).remove(&id);
        // None: cancelled, and CancelTranscode published the failure.
        let Some(result) = result else {
            return;
        };
        let outcome = match &result {
            Ok(out) => Ok(out.renditions.clone()),
            // Users read the reason; the detail stays in this log.
            Err(failure) => Err(failure.reason.message().to_owned()),
        };
        if !lock(&self.table).finish(&id, outcome, rt::unix_ms()) {
            return;
        }
        match result {
            Ok(out) => {
                tracing::info!(video_id = %job.video_id, %id, "transcoded");
                let p = TranscodingCompleted {
                    video_id: job.video_id.clone(),
                    job_id,
                    renditions: names(&out.renditions),
                    duration_ms: out.duration_ms,
                    thumbnail_key: out.thumbnail_key,
                };
                self.publish(&p).await;
            }
            Err(failure) => {
                tracing::warn!(
                    video_id = %job.video_id,
                    %job_id,
                    %id,
                    reason = failure.reason.message(),
                    detail = %failure.detail,
                    "transcode failed"
                );
                self.failed(&job.video_id, &job_id, failure.reason.message())
                    .await;
            }
        }
    }
}

fn names(renditions: &[Rendition]) -> Vec<String> {
    renditions
        .iter()
        .map(|r| r.profile.name.to_owned())
        .collect()
}

/// Takes accepted transcodes off `rx` and drives them all in this one task,
/// so that stopping it stops every one of them.
async fn execute(shared: Arc<Shared>, mut rx: mpsc::Receiver<Queued>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            // Fixed polling order: tokio's random one would differ between
            // runs of one seed in the simulator.
            biased;
            queued = rx.recv() => match queued {
                Some(q) => running.push(shared.clone().run_one(q)),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

/// Passes an engine's news to the table and the bus.
struct Report<'a> {
    shared: &'a Shared,
    id: &'a str,
    video_id: &'a str,
    job_id: &'a str,
}

#[async_trait]
impl Reporter for Report<'_> {
    async fn started(&self, renditions: &[Rendition]) {
        lock(&self.shared.table).plan(self.id, renditions, rt::unix_ms());
        let p = TranscodingStarted {
            video_id: self.video_id.to_owned(),
            job_id: self.job_id.to_owned(),
            renditions: names(renditions),
        };
        self.shared.publish(&p).await;
    }

    fn progress(&self, percent: u32) {
        lock(&self.shared.table).progress(self.id, percent, rt::unix_ms());
    }
}
