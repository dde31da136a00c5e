//! The transcoder service with the model engine: idempotency, a retry after
//! a failure starts a new run, cancel, events, outputs written master last.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::engine::{Context, Job};
use super::run::Shared;
use super::state::{Phase, Transcode};
use super::{Engine, TranscoderError};
use crate::blob::BlobStore;
use crate::blob::memory::MemoryBlobStore;
use crate::bus::events::{Payload as _, TranscodingCompleted, TranscodingFailed};
use crate::bus::memory::MemoryBus;
use crate::bus::{Event, EventBus, EventType, handler};
use crate::rt;
use crate::services::media;

struct Fixture {
    shared: Arc<Shared>,
    blobs: Arc<MemoryBlobStore>,
    events: mpsc::UnboundedReceiver<Event>,
    _executor: rt::JoinHandle<()>,
    _subs: Vec<crate::bus::Subscription>,
}

async fn fixture(failure_rate: f64) -> Fixture {
    let bus = Arc::new(MemoryBus::new());
    let (tx, events) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for kind in [
        EventType::TranscodingStarted,
        EventType::TranscodingCompleted,
        EventType::TranscodingFailed,
    ] {
        let tx = tx.clone();
        let h = handler(move |e| {
            let tx = tx.clone();
            async move { tx.send(e).map_err(|e| e.to_string().into()) }
        });
        subs.push(bus.subscribe(kind.subject(), None, h).await.unwrap());
    }
    let blobs = Arc::new(MemoryBlobStore::new());
    let engine = Engine::Model {
        duration: Duration::from_millis(50),
        failure_rate,
    };
    let ctx = Context {
        blobs: blobs.clone(),
        work_root: std::env::temp_dir(),
    };
    let (shared, executor) = Shared::new(
        engine,
        ctx,
        bus,
        crate::middleware::metrics::Metrics::default(),
    );
    Fixture {
        shared,
        blobs,
        events,
        _executor: rt::spawn(executor),
        _subs: subs,
    }
}

fn job(video_id: &str) -> Job {
    Job {
        video_id: video_id.into(),
        source_key: media::original_key(video_id),
        profiles: None,
    }
}

async fn until_done(shared: &Shared, id: &str) -> Transcode {
    for _ in 0..200 {
        let t = shared.get(id).expect("known");
        if t.phase.is_terminal() {
            return t;
        }
        rt::sleep(Duration::from_millis(10)).await;
    }
    panic!("transcode {id} never finished");
}

async fn next_event(f: &mut Fixture) -> Event {
    rt::timeout(Duration::from_secs(5), f.events.recv())
        .await
        .expect("an event in time")
        .expect("open")
}

#[tokio::test]
async fn a_transcode_completes_and_a_repeat_returns_it() {
    let mut f = fixture(0.0).await;
    f.blobs
        .put(&media::original_key("v1"), "x".into())
        .await
        .unwrap();
    let t = f.shared.submit(job("v1"), "transcode-v1").unwrap();
    assert_eq!(t.phase, Phase::Pending);
    let again = f.shared.submit(job("v1"), "transcode-v1").unwrap();
    assert_eq!(again.id, t.id, "idempotent");
    let done = until_done(&f.shared, &t.id).await;
    assert_eq!((done.phase, done.progress), (Phase::Succeeded, 100));
    assert_eq!(done.renditions.len(), 3);
    assert_eq!(next_event(&mut f).await.kind, EventType::TranscodingStarted);
    let completed = TranscodingCompleted::from_event(&next_event(&mut f).await).unwrap();
    assert_eq!(completed.job_id, "transcode-v1");
    assert_eq!(completed.renditions, ["240p", "480p", "720p"]);
    assert_eq!(completed.duration_ms, 10_000);
    for key in [
        media::master_key("v1"),
        media::playlist_key("v1", "480p"),
        media::segment_key("v1", "720p", "seg_00000.ts"),
    ] {
        assert!(f.blobs.size(&key).await.is_ok(), "{key}");
    }
    assert_eq!(f.shared.submit(job("v1"), "transcode-v1").unwrap().id, t.id);
}

#[tokio::test]
async fn every_failure_is_published_and_a_retry_starts_a_new_run() {
    let mut f = fixture(1.0).await;
    // A missing source fails too, with a reason (the public one: the
    // detail, which names the blob key, is only logged).
    let t = f.shared.submit(job("v2"), "transcode-v2").unwrap();
    let failed = until_done(&f.shared, &t.id).await;
    assert_eq!(failed.phase, Phase::Failed);
    assert_eq!(failed.error, "the original could not be read", "{failed:?}");
    let event = TranscodingFailed::from_event(&next_event(&mut f).await).unwrap();
    assert_eq!(event.job_id, "transcode-v2");
    assert_eq!(event.reason, failed.error);

    f.blobs
        .put(&media::original_key("v2"), "x".into())
        .await
        .unwrap();
    let retry = f.shared.submit(job("v2"), "transcode-v2").unwrap();
    assert_ne!(retry.id, t.id, "a failed run is not returned again");
    let failed = until_done(&f.shared, &retry.id).await;
    assert_eq!(failed.error, "transcoding failed", "{failed:?}");
    assert_eq!(next_event(&mut f).await.kind, EventType::TranscodingStarted);
    assert_eq!(next_event(&mut f).await.kind, EventType::TranscodingFailed);
    assert!(matches!(
        f.shared.submit(job("other"), "transcode-v2"),
        Err(TranscoderError::KeyReused(_))
    ));
}

#[tokio::test]
async fn cancel_stops_a_run_and_reports_it_failed() {
    let mut f = fixture(0.0).await;
    f.blobs
        .put(&media::original_key("v3"), "x".into())
        .await
        .unwrap();
    let t = f.shared.submit(job("v3"), "").unwrap();
    let cancelled = f.shared.cancel(&t.id, "changed my mind").await.unwrap();
    assert_eq!(cancelled.phase, Phase::Cancelled);
    let event = TranscodingFailed::from_event(&next_event(&mut f).await).unwrap();
    assert_eq!(
        event.job_id, t.id,
        "without a key the job id is the transcode id"
    );
    assert_eq!(event.reason, "cancelled: changed my mind");
    rt::sleep(Duration::from_millis(150)).await;
    assert_eq!(f.shared.get(&t.id).unwrap().phase, Phase::Cancelled);
    assert!(f.blobs.size(&media::master_key("v3")).await.is_err());
    assert!(matches!(
        f.shared.cancel(&t.id, "").await,
        Err(TranscoderError::Finished(..))
    ));
}
