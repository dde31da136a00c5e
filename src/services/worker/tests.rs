//! The worker with a model transcoder on real tokio and sockets: uploads
//! become one job each, a restart on the same data dir resumes the queue,
//! failing transcodes retry and dead-letter, watches end at the end.
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::blob::BlobStore;
use crate::blob::memory::MemoryBlobStore;
use crate::bus::events::{FileUploaded, JobFailed, Payload as _, publish};
use crate::bus::memory::MemoryBus;
use crate::bus::{Event, EventBus, EventType, Subscription, handler};
use crate::client::{PoolChannel, PoolConfig};
use crate::kernel::{Kernel, Plugin, Seams};
use crate::middleware::auth::Keyring;
use crate::proto::worker_service_client::WorkerServiceClient;
use crate::proto::{
    self, CancelJobRequest, GetJobRequest, ListJobsRequest, SubmitJobRequest, WatchJobRequest,
};
use crate::registry::memory::MemoryRegistry;
use crate::rt;
use crate::services::transcoder::Engine;
use crate::services::{Common, ServiceConfig, media};
use crate::services::{ServiceKind, ServicePlugin};

/// The NATS server the tests use: `NATS_URL`, else the local default (CI
/// starts one there).
fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("a scratch directory")
}

fn opts(kind: ServiceKind, data_dir: Option<PathBuf>, failure_rate: f64) -> ServicePlugin {
    slow_opts(kind, data_dir, failure_rate, Duration::from_millis(100))
}

fn slow_opts(
    kind: ServiceKind,
    data_dir: Option<PathBuf>,
    failure_rate: f64,
    duration: Duration,
) -> ServicePlugin {
    let common = Common {
        data_dir,
        ..Common::ephemeral()
    };
    let mut plugin = ServicePlugin::new(common, ServiceConfig::new(kind));
    if let ServiceConfig::Transcoder(c) = plugin.config_mut() {
        c.engine = Engine::Model {
            duration,
            failure_rate,
        };
    }
    plugin
}

async fn node(
    bus: Arc<MemoryBus>,
    blobs: Arc<MemoryBlobStore>,
    services: Vec<ServicePlugin>,
) -> Kernel {
    let plugins = services
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Plugin>)
        .collect();
    let seams = Seams {
        bus,
        registry: Arc::new(MemoryRegistry::new()),
        blobs,
    };
    let pool = PoolConfig::new(Keyring::generate("test"), "test");
    Kernel::start_with(seams, pool, plugins)
        .await
        .expect("node starts")
}

async fn listen(
    bus: &MemoryBus,
    kinds: &[EventType],
) -> (Vec<Subscription>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for kind in kinds {
        let tx = tx.clone();
        let h = handler(move |e| {
            let tx = tx.clone();
            async move { tx.send(e).map_err(|e| e.to_string().into()) }
        });
        subs.push(bus.subscribe(kind.subject(), None, h).await.unwrap());
    }
    (subs, rx)
}

fn uploaded(video_id: &str) -> FileUploaded {
    FileUploaded {
        video_id: video_id.into(),
        blob_key: media::original_key(video_id),
        size_bytes: 1,
        content_type: "video/mp4".into(),
        sha256_hex: "00".repeat(32),
    }
}

async fn job(client: &mut WorkerServiceClient<PoolChannel>, id: &str) -> proto::Job {
    let req = GetJobRequest { job_id: id.into() };
    client.get_job(req).await.unwrap().into_inner().job.unwrap()
}

/// Where the worker under test keeps its jobs.
enum Queue {
    /// SQLite in a scratch data dir.
    Sqlite(tempfile::TempDir),
    /// A JetStream queue of its own on `NATS_URL`.
    JetStream(String),
}

impl Queue {
    fn jetstream() -> Self {
        Self::JetStream(format!("sgtest_worker_{:012x}", rt::random_u64() >> 16))
    }

    /// The worker's options, keeping its jobs here.
    fn worker(&self) -> ServicePlugin {
        match self {
            Self::Sqlite(dir) => opts(ServiceKind::Worker, Some(dir.path().to_path_buf()), 0.0),
            Self::JetStream(name) => {
                let mut plugin = opts(ServiceKind::Worker, None, 0.0);
                if let ServiceConfig::Worker(c) = plugin.config_mut() {
                    c.job_queue = super::JobQueue::JetStream {
                        url: nats_url(),
                        name: name.clone(),
                        auth: crate::nats_auth::NatsAuth::default(),
                    };
                }
                plugin
            }
        }
    }

    async fn remove(self) {
        if let Self::JetStream(name) = self {
            let client = async_nats::connect(nats_url()).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            js.delete_stream(format!("{name}_queue"))
                .await
                .expect("delete the queue");
            js.delete_key_value(name.as_str())
                .await
                .expect("delete the bucket");
        }
    }
}

#[tokio::test]
async fn uploads_become_jobs_and_a_restart_resumes_the_queue() {
    restart_resumes_the_queue(Queue::Sqlite(scratch())).await;
}

/// As above, with the jobs on a NATS server (`NATS_URL`; CI runs one).
#[tokio::test]
async fn on_jetstream_uploads_become_jobs_and_a_restart_resumes_the_queue() {
    restart_resumes_the_queue(Queue::jetstream()).await;
}

async fn restart_resumes_the_queue(queue: Queue) {
    let blobs = Arc::new(MemoryBlobStore::new());
    for v in ["v0", "v1", "v2"] {
        blobs
            .put(&media::original_key(v), "x".into())
            .await
            .unwrap();
    }

    // Without a transcoder nothing can finish; stop while jobs wait.
    let bus = Arc::new(MemoryBus::new());
    let (_subs, mut events) = listen(&bus, &[EventType::JobSubmitted]).await;
    let first = node(bus.clone(), blobs.clone(), vec![queue.worker()]).await;
    for v in ["v0", "v1", "v0"] {
        publish(bus.as_ref(), "upload", &uploaded(v)).await.unwrap();
    }
    let mut client = first.pool().worker().await.unwrap();
    let req = SubmitJobRequest {
        kind: media::TRANSCODE_JOB.into(),
        payload_json: super::transcode::payload_json("v2", &media::original_key("v2")),
        max_attempts: 0,
        idempotency_key: media::transcode_job_id("v2"),
        delay_ms: 1_000,
    };
    let submitted = client.submit_job(req.clone()).await.unwrap().into_inner();
    assert!(!submitted.deduplicated);
    assert_eq!(submitted.job.unwrap().max_attempts, 5);
    assert!(
        client
            .submit_job(req)
            .await
            .unwrap()
            .into_inner()
            .deduplicated
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let e = rt::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        ids.push(e.data["job_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["transcode-v0", "transcode-v1", "transcode-v2"]);
    first.shutdown().await;
    assert!(
        events.try_recv().is_err(),
        "a redelivered upload makes no second job"
    );

    // Same data dir, now with a transcoder (and the catalog a job reports
    // to; these videos are not in it, which ends the report): every job
    // runs to the end.
    let bus = Arc::new(MemoryBus::new());
    let (_subs, mut events) = listen(&bus, &[EventType::JobCompleted]).await;
    let second = node(
        bus.clone(),
        blobs.clone(),
        vec![
            opts(ServiceKind::Metadata, None, 0.0),
            opts(ServiceKind::Transcoder, None, 0.0),
            queue.worker(),
        ],
    )
    .await;
    let mut client = second.pool().worker().await.unwrap();
    let mut completed = Vec::new();
    let until = rt::now() + Duration::from_secs(30);
    while completed.len() < 3 {
        let leased = ListJobsRequest {
            state: proto::JobState::Leased.into(),
            ..ListJobsRequest::default()
        };
        let running = client
            .list_jobs(leased)
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len();
        assert!(running <= super::CONCURRENCY, "{running} jobs run at once");
        match rt::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Some(e)) => completed.push(e),
            Ok(None) => panic!("bus closed"),
            Err(_) => {}
        }
        assert!(
            completed.len() == 3 || rt::now() < until,
            "jobs did not finish"
        );
    }
    for v in ["v0", "v1", "v2"] {
        let j = job(&mut client, &media::transcode_job_id(v)).await;
        assert_eq!(j.state, proto::JobState::Succeeded as i32, "{j:?}");
        assert_eq!(j.progress_percent, 100);
        assert!(blobs.size(&media::master_key(v)).await.is_ok());
    }
    let all = client
        .list_jobs(ListJobsRequest {
            page_size: 2,
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 2);
    let rest = ListJobsRequest {
        page_token: all.next_page_token,
        ..ListJobsRequest::default()
    };
    let rest = client.list_jobs(rest).await.unwrap().into_inner();
    assert_eq!(rest.jobs.len(), 1);
    assert!(rest.next_page_token.is_empty());
    // The uploads' events are handled concurrently, so submission order is
    // not publish order: check the pages are newest first and cover each
    // job once. (JetStream lists by submission number; two submissions at
    // once may read the clock in the other order, so only SQLite, which
    // evens creation times out, is checked by them.)
    let pages: Vec<_> = all.jobs.iter().chain(&rest.jobs).collect();
    if matches!(queue, Queue::Sqlite(_)) {
        assert!(
            pages
                .windows(2)
                .all(|w| w[0].created_at_ms >= w[1].created_at_ms),
            "newest first"
        );
    }
    let mut ids: Vec<&str> = pages.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["transcode-v0", "transcode-v1", "transcode-v2"]);
    second.shutdown().await;
    queue.remove().await;
}

#[tokio::test]
async fn a_failing_transcode_retries_then_dead_letters_and_the_watch_ends() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put(&media::original_key("bad"), "x".into())
        .await
        .unwrap();
    let bus = Arc::new(MemoryBus::new());
    let (_subs, mut events) =
        listen(&bus, &[EventType::JobFailed, EventType::TranscodingFailed]).await;
    let kernel = node(
        bus.clone(),
        blobs,
        vec![
            opts(ServiceKind::Transcoder, None, 1.0),
            opts(ServiceKind::Worker, None, 1.0),
        ],
    )
    .await;
    let mut client = kernel.pool().worker().await.unwrap();
    let bad = |kind: &str, payload: &str, max_attempts: u32| SubmitJobRequest {
        kind: kind.into(),
        payload_json: payload.into(),
        max_attempts,
        ..SubmitJobRequest::default()
    };
    let good_payload = super::transcode::payload_json("bad", &media::original_key("bad"));
    for req in [
        bad("thumbnail", &good_payload, 0),
        bad("Transcode", &good_payload, 0),
        bad("transcode", "[1]", 0),
        bad("transcode", "{}", 0),
        bad("transcode", &good_payload, 101),
    ] {
        let err = client.submit_job(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    let missing = client
        .get_job(GetJobRequest {
            job_id: "nope".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let req = bad("transcode", &good_payload, 2);
    let id = client
        .submit_job(req)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let mut watch = client
        .watch_job(WatchJobRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut updates = Vec::new();
    while let Some(update) = rt::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the watch moves")
        .unwrap()
    {
        updates.push(update);
    }
    let last = updates.last().unwrap();
    assert!(last.terminal);
    assert_eq!(last.state, proto::JobState::DeadLetter as i32);
    assert_eq!(last.attempts, 2);
    // The transcoder's reason, not its detail ("model: simulated ...").
    assert_eq!(last.message, "transcoding failed", "{last:?}");
    assert!(updates.iter().filter(|u| u.terminal).count() == 1);
    assert!(
        updates
            .iter()
            .any(|u| u.state == proto::JobState::Failed as i32)
    );

    let mut failed = Vec::new();
    let mut transcoding_failed = 0;
    while failed.len() < 2 || transcoding_failed < 2 {
        let e = rt::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        match e.kind {
            EventType::JobFailed => failed.push(JobFailed::from_event(&e).unwrap()),
            _ => transcoding_failed += 1,
        }
    }
    assert_eq!(
        failed
            .iter()
            .map(|f| (f.attempts, f.dead_letter))
            .collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );
    let cancel = CancelJobRequest {
        job_id: id,
        reason: String::new(),
    };
    let err = client.cancel_job(cancel).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    kernel.shutdown().await;
}

/// How a running job gets cancelled.
enum Cancel {
    /// CancelJob.
    Call,
    /// Its video is deleted (MetadataDeleted).
    VideoDeleted,
}

#[tokio::test]
async fn cancelling_a_running_job_cancels_its_transcode() {
    cancel_a_running_transcode(Cancel::Call).await;
}

/// A deleted video's transcode is of no use: its job is cancelled, and
/// with it the transcode.
#[tokio::test]
async fn deleting_a_video_cancels_its_running_transcode() {
    cancel_a_running_transcode(Cancel::VideoDeleted).await;
}

async fn cancel_a_running_transcode(by: Cancel) {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put(&media::original_key("v9"), "x".into())
        .await
        .unwrap();
    let bus = Arc::new(MemoryBus::new());
    let (_subs, mut events) = listen(&bus, &[EventType::TranscodingFailed]).await;
    let slow = Duration::from_secs(30);
    let kernel = node(
        bus.clone(),
        blobs.clone(),
        vec![
            slow_opts(ServiceKind::Transcoder, None, 0.0, slow),
            opts(ServiceKind::Worker, None, 0.0),
        ],
    )
    .await;
    publish(bus.as_ref(), "upload", &uploaded("v9"))
        .await
        .unwrap();
    let mut client = kernel.pool().worker().await.unwrap();
    let id = media::transcode_job_id("v9");
    let until = rt::now() + Duration::from_secs(10);
    loop {
        let found = client.get_job(GetJobRequest { job_id: id.clone() }).await;
        if let Ok(j) = found
            && j.into_inner().job.unwrap().state == proto::JobState::Leased as i32
        {
            break;
        }
        assert!(rt::now() < until, "the job was never leased");
        rt::sleep(Duration::from_millis(50)).await;
    }
    let (j, why) = match by {
        Cancel::Call => {
            let cancel = CancelJobRequest {
                job_id: id.clone(),
                reason: "user asked".into(),
            };
            let j = client.cancel_job(cancel).await.unwrap().into_inner().job;
            (j.unwrap(), "cancelled: user asked")
        }
        Cancel::VideoDeleted => {
            let deleted = crate::bus::events::MetadataDeleted {
                video_id: "v9".into(),
            };
            publish(bus.as_ref(), "metadata", &deleted).await.unwrap();
            let j = loop {
                let j = job(&mut client, &id).await;
                if j.state != proto::JobState::Leased as i32 {
                    break j;
                }
                assert!(rt::now() < until, "the job was not cancelled");
                rt::sleep(Duration::from_millis(50)).await;
            };
            (j, "cancelled: the video was deleted")
        }
    };
    assert_eq!(j.state, proto::JobState::Cancelled as i32);
    assert_eq!(j.last_error, why);
    let e = rt::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    let failed = crate::bus::events::TranscodingFailed::from_event(&e).unwrap();
    assert_eq!(
        (failed.job_id.as_str(), failed.reason.as_str()),
        (id.as_str(), "cancelled: job cancelled")
    );
    assert!(blobs.size(&media::master_key("v9")).await.is_err());
    kernel.shutdown().await;
}

#[tokio::test]
async fn the_leases_of_a_crashed_process_come_back_at_open() {
    let dir = scratch();
    let path = dir.path().join(super::DB_FILE);
    let (store, _) = super::store::Store::open(Some(path.clone()), 0)
        .await
        .unwrap();
    let job = super::queue::Job::new(
        "j".into(),
        "transcode".into(),
        "{}".into(),
        3,
        String::new(),
        0,
        0,
    );
    store.submit(job, 10).await.unwrap();
    let (leased, _) = store.lease_next(1, 1_000_000).await.unwrap();
    assert_eq!(leased.unwrap().attempts, 1);
    drop(store);
    // A new process: the old lease is taken back at once, its attempt counted.
    let (store, recovered) = super::store::Store::open(Some(path), 2).await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].state, super::queue::JobState::Queued);
    let (again, _) = store.lease_next(3, 1_000).await.unwrap();
    assert_eq!(again.unwrap().attempts, 2);
}
