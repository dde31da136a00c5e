//! Fuzz body for the services' gRPC handlers: the input is a sequence of
//! frames `[method][len: u16 LE][request bytes]`; each decodes as that
//! method's request and is handled in-process by one server (in-memory
//! stores) that keeps its state across the frames. Any answer is fine
//! except a panic, or a status that blames the server (INTERNAL, UNKNOWN)
//! or carries no message: bad input must get a clear, typed refusal.

use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message;
use tonic::{Request, Response, Status};

use crate::blob::memory::MemoryBlobStore;
use crate::bus::memory::MemoryBus;
use crate::client::{ClientPool, PoolConfig};
use crate::middleware::auth::Keyring;
use crate::proto::metadata_service_server::MetadataService;
use crate::proto::upload_service_server::UploadService;
use crate::proto::{
    CreateVideoRequest, DeleteUploadRequest, DeleteVideoRequest, GetUploadRequest, GetVideoRequest,
    ListUploadsRequest, ListVideosRequest, UpdateVideoRequest,
};
use crate::registry::memory::MemoryRegistry;
use crate::services::metadata::MetadataServer;
use crate::services::upload::UploadServer;

/// Most frames handled per input.
pub const MAX_FRAMES: usize = 64;

/// The servers under test, fresh per input.
struct Servers {
    metadata: MetadataServer,
    upload: UploadServer,
}

fn servers() -> Servers {
    let bus = Arc::new(MemoryBus::new());
    let store = crate::services::metadata::store::Store::open(None).expect("in-memory SQLite");
    let records = crate::services::upload::store::Store::open(None).expect("in-memory SQLite");
    let pool = ClientPool::new(
        Arc::new(MemoryRegistry::new()),
        PoolConfig::new(Keyring::generate("fuzz"), "fuzz"),
    );
    Servers {
        metadata: MetadataServer::new(Arc::new(Mutex::new(store)), bus.clone(), 1 << 30),
        upload: UploadServer::new(
            Arc::new(Mutex::new(records)),
            Arc::new(MemoryBlobStore::new()),
            bus,
            pool,
            1 << 30,
        ),
    }
}

/// Asserts what must hold for any answer.
fn judge<T>(method: &str, answer: Result<Response<T>, Status>) {
    if let Err(status) = answer {
        assert!(
            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
            "{method}: the server blamed itself: {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "{method}: a status without a message"
        );
    }
}

async fn run<M: Message + Default, T, F: Future<Output = Result<Response<T>, Status>>>(
    method: &str,
    bytes: &[u8],
    call: impl FnOnce(Request<M>) -> F,
) {
    if let Ok(req) = M::decode(bytes) {
        judge(method, call(Request::new(req)).await);
    }
}

async fn handle(s: &Servers, method: u8, bytes: &[u8]) {
    let (m, u) = (&s.metadata, &s.upload);
    match method % 8 {
        0 => run::<CreateVideoRequest, _, _>("CreateVideo", bytes, |r| m.create_video(r)).await,
        1 => run::<GetVideoRequest, _, _>("GetVideo", bytes, |r| m.get_video(r)).await,
        2 => run::<UpdateVideoRequest, _, _>("UpdateVideo", bytes, |r| m.update_video(r)).await,
        3 => run::<DeleteVideoRequest, _, _>("DeleteVideo", bytes, |r| m.delete_video(r)).await,
        4 => run::<ListVideosRequest, _, _>("ListVideos", bytes, |r| m.list_videos(r)).await,
        5 => run::<GetUploadRequest, _, _>("GetUpload", bytes, |r| u.get_upload(r)).await,
        6 => run::<DeleteUploadRequest, _, _>("DeleteUpload", bytes, |r| u.delete_upload(r)).await,
        _ => run::<ListUploadsRequest, _, _>("ListUploads", bytes, |r| u.list_uploads(r)).await,
    }
}

/// Splits `data` into frames and handles each.
pub fn grpc_requests(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let s = servers();
    runtime.block_on(async {
        // A valid video to aim updates and reads at.
        let seed = CreateVideoRequest {
            video_id: "v1".into(),
            owner_id: "u1".into(),
            title: "t".into(),
            content_type: "video/mp4".into(),
            size_bytes: 1,
            sha256_hex: "0".repeat(64),
            ..CreateVideoRequest::default()
        };
        judge("seed", s.metadata.create_video(Request::new(seed)).await);
        let mut rest = data;
        for _ in 0..MAX_FRAMES {
            let [method, a, b, tail @ ..] = rest else {
                break;
            };
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            let (frame, next) = tail.split_at(len);
            handle(&s, *method, frame).await;
            rest = next;
        }
    });
}
