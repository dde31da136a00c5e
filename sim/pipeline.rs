//! The video pipeline in the simulator: upload, metadata, worker, two
//! transcoders (the timed model, failing now and then), streaming and the
//! broker, each on its own node and started through the same `start()` as
//! in production. A client uploads videos while one transcoder crashes (and
//! stays down) and streaming restarts. Safety: every acknowledged upload is in the catalog exactly
//! once. Liveness: within a bound after the last fault each one is final
//! (ready, or failed with a reason after its job dead-lettered), and a
//! ready one's HLS master is served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use rand::Rng as _;
use streamgate::blob::memory::MemoryBlobStore;
use streamgate::bus::events::{MetadataUpdated, Payload};
use streamgate::bus::{EventBus, EventType, handler};
use streamgate::client::ClientPool;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::proto::upload_chunk::Payload as Chunk;
use streamgate::proto::{
    GetJobRequest, GetPlaylistRequest, GetVideoRequest, JobState, ListVideosRequest, UploadChunk,
    UploadMetadata, VideoState,
};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::services::media;
use streamgate::services::transcoder::Engine;
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};

use crate::broker::{SimBus, broker_node};
use crate::trace::{announce, note};

const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 7, 1)), 4222);
/// Videos the client uploads.
const UPLOADS: usize = 6;
/// How long after the last fault every video must be final.
const LIVENESS_BOUND: Duration = Duration::from_secs(120);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 7, last))
}

/// A node running `kind` on the shared registry and blob store, with the
/// broker as its bus; restarted nodes start it again.
fn service_node(
    name: &str,
    last: u8,
    kind: ServiceKind,
    registry: &Arc<MemoryRegistry>,
    blobs: &MemoryBlobStore,
) -> madsim::task::NodeId {
    let (registry, blobs) = (registry.clone(), blobs.clone());
    Handle::current()
        .create_node()
        .name(name)
        .ip(ip(last))
        .init(move || {
            let (registry, blobs) = (registry.clone(), blobs.clone());
            async move {
                let common = Common {
                    check_interval: Duration::from_secs(1),
                    ..Common::new(kind, ip(last))
                };
                let mut config = ServiceConfig::new(kind);
                if let ServiceConfig::Transcoder(c) = &mut config {
                    c.engine = Engine::Model {
                        duration: Duration::from_secs(3),
                        failure_rate: 0.2,
                    };
                }
                let plugins: Vec<Box<dyn Plugin>> =
                    vec![Box::new(ServicePlugin::new(common, config))];
                let seams = Seams {
                    bus: Arc::new(SimBus::new(BROKER)),
                    registry,
                    blobs: Arc::new(blobs),
                };
                let _kernel = Kernel::start_with(seams, crate::common::pool(kind.name()), plugins)
                    .await
                    .expect("kernel starts");
                std::future::pending::<()>().await;
            }
        })
        .build()
        .id()
}

async fn upload_one(pool: &ClientPool, n: usize, size: usize) -> Result<String, tonic::Status> {
    let mut upload = pool
        .upload()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let meta = UploadChunk {
        payload: Some(Chunk::Metadata(UploadMetadata {
            file_name: format!("clip-{n}.mp4"),
            content_type: "video/mp4".into(),
            size_bytes: size as u64,
            ..UploadMetadata::default()
        })),
    };
    let data = vec![u8::try_from(n % 251).expect("small"); size];
    let chunks: Vec<UploadChunk> = std::iter::once(meta)
        .chain(data.chunks(64 << 10).map(|c| UploadChunk {
            payload: Some(Chunk::Data(bytes::Bytes::copy_from_slice(c))),
        }))
        .collect();
    let mut req = tonic::Request::new(futures::stream::iter(chunks));
    req.set_timeout(Duration::from_secs(10));
    Ok(upload.upload(req).await?.into_inner().video_id)
}

/// The final state of `video_id`, once it has one.
async fn final_state(pool: &ClientPool, video_id: &str) -> Option<(VideoState, String)> {
    let mut metadata = pool.metadata().await.ok()?;
    let req = GetVideoRequest {
        video_id: video_id.to_owned(),
    };
    let video = metadata.get_video(req).await.ok()?.into_inner().video?;
    let state = VideoState::try_from(video.state).ok()?;
    match state {
        VideoState::Ready => Some((state, String::new())),
        VideoState::Failed => {
            // Failed is final only once the job has given up.
            let mut worker = pool.worker().await.ok()?;
            let req = GetJobRequest {
                job_id: media::transcode_job_id(video_id),
            };
            let job = worker.get_job(req).await.ok()?.into_inner().job?;
            (job.state == JobState::DeadLetter as i32).then_some((state, video.failure_reason))
        }
        _ => None,
    }
}

#[madsim::test]
async fn every_acknowledged_upload_ends_final_exactly_once() {
    let _progress = announce("every_acknowledged_upload_ends_final_exactly_once");
    let handle = Handle::current();
    broker_node(BROKER);
    let registry = Arc::new(MemoryRegistry::new());
    let blobs = MemoryBlobStore::new();
    let nodes = [
        ("metadata-0", 10, ServiceKind::Metadata),
        ("upload-0", 11, ServiceKind::Upload),
        ("worker-0", 12, ServiceKind::Worker),
        ("transcoder-0", 13, ServiceKind::Transcoder),
        ("transcoder-1", 14, ServiceKind::Transcoder),
        ("streaming-0", 15, ServiceKind::Streaming),
    ];
    let ids: Vec<_> = nodes
        .iter()
        .map(|(name, last, kind)| service_node(name, *last, *kind, &registry, &blobs))
        .collect();
    let (victim, bounced) = (ids[3], ids[5]);
    let client = handle.create_node().name("client").ip(ip(2)).build();
    client
        .spawn(async move {
            let start = rt::now();
            rt::sleep(Duration::from_secs(1)).await;
            let bus = SimBus::new(BROKER);
            let _timeline = bus
                .subscribe(
                    EventType::MetadataUpdated.subject(),
                    None,
                    handler(move |e| async move {
                        let p = MetadataUpdated::from_event(&e)?;
                        note(
                            start,
                            format_args!("video {}: {}", &p.video_id[..8], p.state),
                        );
                        Ok(())
                    }),
                )
                .await
                .expect("subscribe");
            let pool = ClientPool::new(registry, crate::common::pool("api-gateway"));

            let crash_at = Duration::from_millis(rt::rng().gen_range(2_000..6_000));
            let mut acked = Vec::new();
            let mut crashed = false;
            for n in 0..UPLOADS {
                if !crashed && rt::now() - start >= crash_at {
                    Handle::current().kill(victim);
                    Handle::current().kill(bounced);
                    note(start, "transcoder-0 and streaming-0 crashed");
                    crashed = true;
                }
                let size = rt::rng().gen_range(1_000..200_000);
                match upload_one(&pool, n, size).await {
                    Ok(id) => {
                        note(
                            start,
                            format_args!("upload {n} acknowledged: video {}", &id[..8]),
                        );
                        acked.push(id);
                    }
                    Err(e) => note(start, format_args!("upload {n} refused: {}", e.code())),
                }
                rt::sleep(Duration::from_millis(rt::rng().gen_range(100..1_500))).await;
            }
            if !crashed {
                Handle::current().kill(victim);
                Handle::current().kill(bounced);
                note(start, "transcoder-0 and streaming-0 crashed");
            }
            rt::sleep(Duration::from_secs(2)).await;
            // transcoder-0 stays down (transcoder-1 carries on); streaming
            // restarts. (Restarting a transcoder makes a seed's second run
            // in one process diverge: see the issue notes.)
            Handle::current().restart(bounced);
            note(start, "streaming-0 restarted");
            let healed = rt::now();
            assert!(
                acked.len() >= UPLOADS - 1,
                "uploads were acknowledged: {acked:?}"
            );

            let mut pending: Vec<String> = acked.clone();
            while !pending.is_empty() {
                assert!(
                    rt::now() - healed < LIVENESS_BOUND,
                    "not final {LIVENESS_BOUND:?} after the last fault: {pending:?}"
                );
                let mut still = Vec::new();
                for id in pending {
                    match final_state(&pool, &id).await {
                        Some((VideoState::Ready, _)) => {
                            let mut streaming = pool.streaming().await.expect("streaming");
                            let req = GetPlaylistRequest {
                                video_id: id.clone(),
                                rendition: String::new(),
                            };
                            let master = streaming.get_playlist(req).await.expect("master");
                            assert!(master.into_inner().content.starts_with("#EXTM3U"));
                        }
                        Some((_, reason)) => {
                            assert!(!reason.is_empty(), "a failed video says why");
                            note(
                                start,
                                format_args!("video {} failed for good: {reason}", &id[..8]),
                            );
                        }
                        None => still.push(id),
                    }
                }
                pending = still;
                rt::sleep(Duration::from_millis(500)).await;
            }
            note(
                start,
                format_args!(
                    "all {} final {:?} after healing",
                    acked.len(),
                    rt::now() - healed
                ),
            );

            let mut metadata = pool.metadata().await.expect("metadata");
            let req = ListVideosRequest {
                page_size: 100,
                ..ListVideosRequest::default()
            };
            let listed = metadata
                .list_videos(req)
                .await
                .expect("list")
                .into_inner()
                .videos;
            let mut listed: Vec<String> = listed.into_iter().map(|v| v.id).collect();
            listed.sort();
            acked.sort();
            assert_eq!(
                listed, acked,
                "each acknowledged upload is in the catalog exactly once"
            );
        })
        .await
        .expect("scenario");
}

/// An upload whose sender goes quiet after its first chunk: the upload
/// service cuts it after its idle limit (60 s of simulated time, though
/// the call's deadline is hours) and nothing of it is stored.
#[madsim::test]
async fn a_stalled_upload_is_cut_and_leaves_nothing() {
    use streamgate::proto::{ListUploadsRequest, ListVideosRequest};
    use streamgate::services::upload::UPLOAD_IDLE_TIMEOUT;

    let _progress = announce("a_stalled_upload_is_cut_and_leaves_nothing");
    let handle = Handle::current();
    broker_node(BROKER);
    let registry = Arc::new(MemoryRegistry::new());
    let blobs = MemoryBlobStore::new();
    service_node("metadata-0", 10, ServiceKind::Metadata, &registry, &blobs);
    service_node("upload-0", 11, ServiceKind::Upload, &registry, &blobs);
    let client = handle.create_node().name("client").ip(ip(2)).build();
    client
        .spawn(async move {
            rt::sleep(Duration::from_secs(1)).await;
            let pool = ClientPool::new(registry, crate::common::pool("api-gateway"));
            let mut upload = pool.upload().await.expect("upload client");
            let meta = UploadChunk {
                payload: Some(Chunk::Metadata(UploadMetadata {
                    file_name: "stalled.mp4".into(),
                    content_type: "video/mp4".into(),
                    ..UploadMetadata::default()
                })),
            };
            let first = UploadChunk {
                payload: Some(Chunk::Data(bytes::Bytes::from_static(b"the first bytes"))),
            };
            let stalled = futures::StreamExt::chain(
                futures::stream::iter([meta, first]),
                futures::stream::pending(),
            );
            let mut req = tonic::Request::new(stalled);
            req.set_timeout(Duration::from_secs(2 * 3600));
            let started = rt::now();
            let err = upload
                .upload(req)
                .await
                .expect_err("a stalled upload fails");
            let took = rt::now() - started;
            assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
            assert!(
                took >= UPLOAD_IDLE_TIMEOUT && took < UPLOAD_IDLE_TIMEOUT + Duration::from_secs(5),
                "cut after {took:?}"
            );
            let uploads = upload
                .list_uploads(ListUploadsRequest::default())
                .await
                .expect("list uploads")
                .into_inner();
            assert!(uploads.uploads.is_empty(), "{uploads:?}");
            let videos = pool
                .metadata()
                .await
                .expect("metadata client")
                .list_videos(ListVideosRequest::default())
                .await
                .expect("list videos")
                .into_inner();
            assert!(videos.videos.is_empty(), "{videos:?}");
        })
        .await
        .expect("client");
}
