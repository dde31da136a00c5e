//! The upload and metadata services on real sockets: a streamed upload is
//! stored whole with its hash, recorded as an UPLOADED video and announced;
//! bad or broken uploads get clear errors and leave nothing stored; a
//! deleted video's blobs go.
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use streamgate::blob::BlobStore;
use streamgate::blob::fs::FsBlobStore;
use streamgate::bus::events::{FileUploaded, Payload};
use streamgate::bus::memory::MemoryBus;
use streamgate::bus::{EventBus, EventType, handler};
use streamgate::client::PoolConfig;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::proto::upload_chunk::Payload as Chunk;
use streamgate::proto::{
    DeleteVideoRequest, GetVideoRequest, ListVideosRequest, UploadChunk, UploadMetadata,
    UploadResponse, VideoState,
};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::services::upload::server::{ANONYMOUS, USER_ID_HEADER};
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};

struct Node {
    kernel: Kernel,
    bus: Arc<MemoryBus>,
    blobs: Arc<FsBlobStore>,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(max_upload_bytes: u64) -> Node {
    let dir = std::env::temp_dir().join(format!("sg-upload-{}", rt::random_hex128()));
    let blobs = Arc::new(FsBlobStore::open(&dir).expect("blob store"));
    let bus = Arc::new(MemoryBus::new());
    let plugins = [ServiceKind::Upload, ServiceKind::Metadata]
        .into_iter()
        .map(|kind| {
            let common = Common {
                data_dir: Some(dir.clone()),
                ..Common::ephemeral()
            };
            let mut config = ServiceConfig::new(kind);
            match &mut config {
                ServiceConfig::Upload(c) => c.max_upload_bytes = max_upload_bytes,
                ServiceConfig::Metadata(c) => c.max_upload_bytes = max_upload_bytes,
                _ => {}
            }
            Box::new(ServicePlugin::new(common, config)) as Box<dyn Plugin>
        })
        .collect();
    let seams = Seams {
        bus: bus.clone(),
        registry: Arc::new(MemoryRegistry::new()),
        blobs: blobs.clone(),
    };
    let pool = PoolConfig::new(Keyring::generate("test"), "api-gateway");
    let kernel = Kernel::start_with(seams, pool, plugins)
        .await
        .expect("kernel");
    Node {
        kernel,
        bus,
        blobs,
        dir,
    }
}

fn meta(name: &str, size: u64) -> UploadChunk {
    UploadChunk {
        payload: Some(Chunk::Metadata(UploadMetadata {
            file_name: name.into(),
            content_type: "video/mp4".into(),
            size_bytes: size,
            ..UploadMetadata::default()
        })),
    }
}

fn data(bytes: &[u8]) -> Vec<UploadChunk> {
    bytes
        .chunks(1 << 20)
        .map(|c| UploadChunk {
            payload: Some(Chunk::Data(bytes::Bytes::copy_from_slice(c))),
        })
        .collect()
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| u8::try_from(i % 251).expect("small"))
        .collect()
}

async fn upload(node: &Node, chunks: Vec<UploadChunk>) -> Result<UploadResponse, tonic::Status> {
    let mut client = node.kernel.pool().upload().await.expect("client");
    Ok(client
        .upload(futures::stream::iter(chunks))
        .await?
        .into_inner())
}

/// Files left in the store: (committed blobs, temporary files).
fn files(node: &Node) -> (usize, usize) {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    (count(&node.dir.join("blobs")), count(&node.dir.join("tmp")))
}

async fn videos(node: &Node) -> usize {
    let mut metadata = node.kernel.pool().metadata().await.expect("client");
    let req = ListVideosRequest::default();
    metadata
        .list_videos(req)
        .await
        .expect("list")
        .into_inner()
        .videos
        .len()
}

#[tokio::test]
async fn an_upload_is_stored_recorded_and_announced() {
    let node = start(64 << 20).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _sub = node
        .bus
        .subscribe(
            EventType::FileUploaded.subject(),
            None,
            handler(move |e| {
                let s = s.clone();
                async move {
                    s.lock().expect("seen").push(FileUploaded::from_event(&e)?);
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe");
    let body = bytes(3 * (1 << 20) + 17);
    let mut chunks = vec![meta("clip.mp4", body.len() as u64)];
    chunks.extend(data(&body));
    let done = upload(&node, chunks).await.expect("upload");
    let sha = Sha256::digest(&body);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done.size_bytes, body.len() as u64);
    assert_eq!(done.sha256_hex, hex);
    let stored = node
        .blobs
        .read(&done.blob_key, 0, 16 << 20)
        .await
        .expect("read");
    assert_eq!(&stored[..], &body[..]);

    let mut metadata = node.kernel.pool().metadata().await.expect("client");
    let req = GetVideoRequest {
        video_id: done.video_id.clone(),
    };
    let video = metadata
        .get_video(req)
        .await
        .expect("get")
        .into_inner()
        .video
        .expect("video");
    assert_eq!(video.state, VideoState::Uploaded as i32);
    assert_eq!(video.title, "clip.mp4");
    assert_eq!(video.sha256_hex, hex);
    for _ in 0..100 {
        if !seen.lock().expect("seen").is_empty() {
            break;
        }
        rt::sleep(Duration::from_millis(10)).await;
    }
    let events = seen.lock().expect("seen").clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].video_id, done.video_id);
    assert_eq!(events[0].size_bytes, body.len() as u64);

    // Deleting the video removes its blobs.
    let req = DeleteVideoRequest {
        video_id: done.video_id.clone(),
    };
    metadata.delete_video(req).await.expect("delete");
    for _ in 0..100 {
        if files(&node).0 == 0 {
            break;
        }
        rt::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(files(&node), (0, 0));
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let node = start(2 << 20).await;
    let body = bytes(3 << 20);
    let cases: Vec<(&str, Vec<UploadChunk>, tonic::Code)> = vec![
        (
            "over the limit, undeclared",
            [vec![meta("a.mp4", 0)], data(&body)].concat(),
            tonic::Code::ResourceExhausted,
        ),
        (
            "over the limit, declared",
            [vec![meta("a.mp4", 3 << 20)], data(&body)].concat(),
            tonic::Code::ResourceExhausted,
        ),
        (
            "truncated",
            [vec![meta("a.mp4", 1 << 20)], data(&body[..1000])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (
            "longer than declared",
            [vec![meta("a.mp4", 10)], data(&body[..1000])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (
            "path in the name",
            [vec![meta("../a.mp4", 0)], data(&body[..10])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (
            "absolute name",
            [vec![meta("/etc/passwd", 0)], data(&body[..10])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (
            "NUL in the name",
            [vec![meta("a\0.mp4", 0)], data(&body[..10])].concat(),
            tonic::Code::InvalidArgument,
        ),
        (
            "no metadata",
            data(&body[..10]),
            tonic::Code::InvalidArgument,
        ),
        (
            "no data",
            vec![meta("a.mp4", 0)],
            tonic::Code::InvalidArgument,
        ),
        (
            "empty chunk",
            vec![
                meta("a.mp4", 0),
                UploadChunk {
                    payload: Some(Chunk::Data(bytes::Bytes::new())),
                },
            ],
            tonic::Code::InvalidArgument,
        ),
        (
            "metadata twice",
            vec![meta("a.mp4", 0), meta("a.mp4", 0)],
            tonic::Code::InvalidArgument,
        ),
    ];
    for (what, chunks, code) in cases {
        let err = upload(&node, chunks).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what}");
    }
    let mut wrong_type = meta("a.png", 0);
    if let Some(Chunk::Metadata(m)) = &mut wrong_type.payload {
        m.content_type = "image/png".into();
    }
    let err = upload(&node, [vec![wrong_type], data(&body[..10])].concat())
        .await
        .expect_err("wrong type");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A client that goes away mid-stream.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(meta("a.mp4", 0)).expect("send");
    for c in data(&body[..1 << 20]) {
        tx.unbounded_send(c).expect("send");
    }
    let mut client = node.kernel.pool().upload().await.expect("client");
    let call = rt::spawn(async move { client.upload(rx).await });
    rt::sleep(Duration::from_millis(200)).await;
    call.abort();
    drop(tx);
    rt::sleep(Duration::from_millis(200)).await;

    assert_eq!(
        files(&node),
        (0, 0),
        "nothing stored, no temporary file left"
    );
    assert_eq!(videos(&node).await, 0);
}

#[tokio::test]
async fn a_retried_upload_with_the_same_key_is_stored_once() {
    let node = start(2 << 20).await;
    let mut first = meta("a.mp4", 0);
    if let Some(Chunk::Metadata(m)) = &mut first.payload {
        m.idempotency_key = "k-1".into();
    }
    let once = upload(&node, vec![first.clone(), data(b"abc").remove(0)])
        .await
        .expect("upload");
    let twice = upload(&node, vec![first, data(b"abc").remove(0)])
        .await
        .expect("upload again");
    assert!(!once.deduplicated);
    assert!(twice.deduplicated);
    assert_eq!(once.video_id, twice.video_id);
    assert_eq!(videos(&node).await, 1);
}

#[tokio::test]
async fn the_uploader_named_by_the_gateway_owns_the_video() {
    let node = start(1 << 20).await;
    let owner_of = |user: Option<&'static str>| {
        let node = &node;
        async move {
            let mut chunks = vec![meta("clip.mp4", 10)];
            chunks.extend(data(&bytes(10)));
            let mut req = tonic::Request::new(futures::stream::iter(chunks));
            if let Some(u) = user {
                req.metadata_mut()
                    .insert(USER_ID_HEADER, u.parse().expect("header"));
            }
            let mut client = node.kernel.pool().upload().await.expect("client");
            let done = client.upload(req).await.expect("upload").into_inner();
            let mut metadata = node.kernel.pool().metadata().await.expect("client");
            let req = GetVideoRequest {
                video_id: done.video_id,
            };
            let video = metadata.get_video(req).await.expect("get").into_inner();
            video.video.expect("video").owner_id
        }
    };
    assert_eq!(owner_of(Some("user_1")).await, "user_1");
    assert_eq!(owner_of(None).await, ANONYMOUS);
    // Not an id: ignored, not trusted.
    assert_eq!(owner_of(Some("../admin")).await, ANONYMOUS);
}
