//! worker (9008): a durable job queue (SQLite on one host, NATS JetStream
//! across hosts) with leases, retries with backoff and a dead-letter state;
//! turns each upload into a transcode job, and cancels the job of a video
//! deleted before its transcode ended.

use std::sync::Arc;

use tonic::service::Routes;

use crate::bus::events::{FileUploaded, MetadataDeleted, Payload as _};
use crate::bus::{BusError, EventType, handler};
use crate::kernel::{KernelError, Runtime};
use crate::proto::worker_service_server::WorkerServiceServer;
use crate::rt;
use crate::rt::faults::Bug;
use crate::services::{Background, Common, Domain, media};

pub mod catalog;
pub mod error;
pub mod gauges;
pub mod jobs;
pub mod queue;
pub mod runner;
pub mod server;
pub mod store;
pub mod sweep;
pub mod transcode;

pub use error::WorkerError;
pub use jobs::Jobs;
pub use server::WorkerServer;

/// Jobs run at once by default.
pub const CONCURRENCY: usize = 2;
/// Name of the job table's file in the data dir.
pub const DB_FILE: &str = "worker.sqlite";
/// Queue group of the upload consumers: each upload goes to one worker.
pub const QUEUE_GROUP: &str = "worker";

/// Where the worker keeps its jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JobQueue {
    /// SQLite, [`DB_FILE`] under the data dir (in memory without one):
    /// shared by the workers that share the data dir.
    #[default]
    Sqlite,
    /// NATS JetStream: shared by every worker on the server.
    #[cfg(not(madsim))]
    JetStream {
        /// NATS server URL(s), comma-separated.
        url: String,
        /// Names the bucket, the work queue and its subjects.
        name: String,
        /// TLS and credentials.
        auth: crate::nats_auth::NatsAuth,
    },
    /// The simulator's modelled NATS server at `url` (`http://ip:port`),
    /// serving the records' bucket and the work queue `<name>.dispatch.*`
    /// (`streamgate_testkit::{kv_node, queue_node}`): the same store code
    /// as [`JobQueue::JetStream`] over its seams.
    #[cfg(madsim)]
    JetStream {
        /// The node's URL.
        url: String,
        /// Names the work queue's subjects.
        name: String,
    },
}

/// The worker's own settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Where it keeps its jobs.
    pub job_queue: JobQueue,
    /// How it runs them.
    pub jobs: jobs::Config,
}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    /// A concurrency, lease, poll or limit of zero.
    pub fn validate(&self) -> Result<(), String> {
        self.jobs.validate()
    }
}

/// A job store shared with other workers (JetStream): readiness follows
/// the server. Leases held by a previous run come back when they run out,
/// so none are taken back here.
async fn shared_store(store: store::Store, runtime: &Runtime) -> (store::Store, Vec<queue::Job>) {
    let probed = store.clone();
    runtime
        .ready
        .depend(
            "job queue",
            crate::readiness::probe(move || {
                let store = probed.clone();
                // A job id nobody uses: any answer will do.
                async move { store.get("readiness-probe").await.map(drop) }
            }),
        )
        .await;
    (store, Vec::new())
}

/// The service's routes and background work.
///
/// # Errors
/// Its store cannot be opened, or the bus refuses the subscription.
pub async fn domain(
    config: &Config,
    common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let (job_queue, config) = (&config.job_queue, config.jobs.clone());
    let fail = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        KernelError::start("worker", what, e)
    };
    let (store, recovered) = match job_queue {
        JobQueue::Sqlite => {
            let path = common.data_dir.as_ref().map(|d| d.join(DB_FILE));
            store::Store::open(path, rt::unix_ms())
                .await
                .map_err(|e| fail("its database", e.into()))?
        }
        #[cfg(not(madsim))]
        JobQueue::JetStream { url, name, auth } => {
            let js = store::jetstream::Options {
                url: url.clone(),
                name: name.clone(),
                max_active: config.max_active,
                lease: config.lease,
                auth: auth.clone(),
            };
            let store = store::jetstream::JetStreamStore::connect(&js)
                .await
                .map_err(|e| fail("the job store", e.into()))?;
            shared_store(store::Store::JetStream(store), runtime).await
        }
        #[cfg(madsim)]
        JobQueue::JetStream { url, name } => {
            use crate::registry::consul::SimTransport;
            let store = store::jetstream::JetStreamStore::on(
                name,
                Arc::new(crate::registry::nats_kv::http::HttpBucket::new(
                    url.clone(),
                    SimTransport,
                )),
                Arc::new(store::jetstream::http::HttpQueue::new(
                    url.clone(),
                    SimTransport,
                )),
            );
            shared_store(store::Store::JetStream(store), runtime).await
        }
    };
    if !recovered.is_empty() {
        tracing::warn!(
            jobs = recovered.len(),
            "took back the leases of a previous run"
        );
    }
    let jobs = Arc::new(
        Jobs::new(store, runtime.bus.clone(), config).with_metrics(runtime.metrics.clone()),
    );
    jobs.lost(recovered).await;

    let consumer = jobs.clone();
    let on_upload = handler(move |event| {
        let jobs = consumer.clone();
        async move {
            let p = FileUploaded::from_event(&event)?;
            let submit = jobs::Submit {
                kind: media::TRANSCODE_JOB.to_owned(),
                payload_json: transcode::payload_json(&p.video_id, &p.blob_key),
                max_attempts: 0,
                idempotency_key: if rt::faults::injected(Bug::NonIdempotentHandler) {
                    rt::random_hex128()
                } else {
                    media::transcode_job_id(&p.video_id)
                },
                delay_ms: 0,
            };
            jobs.submit(submit).await?;
            Ok(())
        }
    });
    let subscription = runtime
        .bus
        .subscribe(
            EventType::FileUploaded.subject(),
            Some(QUEUE_GROUP),
            on_upload,
        )
        .await
        .map_err(|e| fail("the event bus", e.into()))?;
    let cancelling = jobs.clone();
    let on_delete = handler(move |event| {
        let jobs = cancelling.clone();
        async move {
            let video_id = MetadataDeleted::from_event(&event)?.video_id;
            if !media::is_id(&video_id) {
                return Err(BusError::Malformed("video_id is not an id".into()).into());
            }
            let id = media::transcode_job_id(&video_id);
            match jobs.cancel(&id, "the video was deleted").await {
                Ok(_) => tracing::info!(job_id = %id, "job of a deleted video cancelled"),
                // No job (yet, or under another id), or it has ended.
                Err(WorkerError::NotFound(_) | WorkerError::Refused(..)) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
    });
    let deletions = runtime
        .bus
        .subscribe(
            EventType::MetadataDeleted.subject(),
            Some(QUEUE_GROUP),
            on_delete,
        )
        .await
        .map_err(|e| fail("the event bus", e.into()))?;
    let runner = rt::spawn(runner::run(jobs.clone(), runtime.pool.clone()));
    let sweeper = rt::spawn(sweep::run(runtime.pool.clone()));
    let gauges = rt::spawn(gauges::run(jobs.store.clone(), runtime.metrics.clone()));

    let releasing = jobs.clone();
    let release: crate::services::host::StopStep = Box::new(move || {
        Box::pin(async move {
            let released = releasing.store.release(rt::unix_ms()).await;
            if !released.is_empty() {
                tracing::info!(jobs = released.len(), "gave back the jobs in progress");
            }
            releasing.lost(released).await;
        })
    });
    let svc = WorkerServiceServer::new(WorkerServer::new(jobs));
    Ok(Domain {
        routes: Routes::new(svc),
        grpc_names: vec![<WorkerServiceServer<WorkerServer> as tonic::server::NamedService>::NAME],
        background: Background {
            subscriptions: vec![subscription, deletions],
            tasks: vec![runner, sweeper, gauges],
            on_stop: vec![release],
        },
        ..Domain::default()
    })
}

#[cfg(test)]
mod tests;
