//! Tests of [`super::StreamingServer`], called directly (no network).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use tonic::{Code, Request};

use super::*;
use crate::blob::memory::MemoryBlobStore;
use crate::bus::{BusError, Event, EventType, Handler, Subscription};
use crate::services::streaming::{CHUNK_BYTES, MAX_THUMBNAIL_BYTES};

/// Records what is published; fails every publish when `fail` is set.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    fail: bool,
}

#[async_trait]
impl EventBus for Recorder {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        if self.fail {
            return Err(BusError::Closed);
        }
        self.events.lock().expect("lock").push(event.clone());
        Ok(())
    }
    async fn subscribe(
        &self,
        _subject: &str,
        _queue_group: Option<&str>,
        _handler: Handler,
    ) -> Result<Subscription, BusError> {
        Err(BusError::Closed)
    }
    async fn close(&self) {}
}

fn server(blobs: Arc<dyn BlobStore>) -> (StreamingServer, Arc<Recorder>) {
    let bus = Arc::new(Recorder::default());
    (StreamingServer::new(blobs, bus.clone(), 8), bus)
}

fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

async fn read(
    s: &StreamingServer,
    id: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<DataChunk>, Status> {
    let stream = s
        .read_range(Request::new(ReadRangeRequest {
            video_id: id.into(),
            offset,
            length,
        }))
        .await?
        .into_inner();
    stream.collect::<Vec<_>>().await.into_iter().collect()
}

/// Checks chunk framing and returns the bytes.
fn joined(chunks: &[DataChunk], total: u64, first: u64) -> Vec<u8> {
    let mut at = first;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.offset, at);
        assert_eq!(c.total_size_bytes, total);
        assert!(c.data.len() <= CHUNK_BYTES);
        assert_eq!(c.last, i + 1 == chunks.len());
        at += c.data.len() as u64;
    }
    chunks.iter().flat_map(|c| c.data.clone()).collect()
}

async fn ranges_are_served(blobs: Arc<dyn BlobStore>) {
    let size = 2 * CHUNK_BYTES + 12_345;
    let file = pattern(size);
    blobs.put("originals/v1", file.clone()).await.expect("put");
    blobs
        .put("originals/empty", Bytes::new())
        .await
        .expect("put");
    let (s, _) = server(blobs);
    let all = read(&s, "v1", 0, 0).await.expect("all");
    assert_eq!(all.len(), 3);
    assert_eq!(joined(&all, size as u64, 0), file[..]);

    let mid = read(&s, "v1", 1000, CHUNK_BYTES as u64 + 1)
        .await
        .expect("mid");
    assert_eq!(mid.len(), 2);
    assert_eq!(
        joined(&mid, size as u64, 1000),
        file[1000..1000 + CHUNK_BYTES + 1]
    );

    let tail = read(&s, "v1", size as u64 - 10, 1 << 40)
        .await
        .expect("tail");
    assert_eq!(
        joined(&tail, size as u64, size as u64 - 10),
        file[size - 10..]
    );

    let empty = read(&s, "empty", 0, 0).await.expect("empty file");
    assert_eq!(empty.len(), 1);
    assert!(empty[0].last && empty[0].data.is_empty() && empty[0].total_size_bytes == 0);

    let code = |r: Result<Vec<DataChunk>, Status>| r.expect_err("an error").code();
    assert_eq!(code(read(&s, "v1", size as u64, 0).await), Code::OutOfRange);
    assert_eq!(code(read(&s, "empty", 1, 0).await), Code::OutOfRange);
    assert_eq!(code(read(&s, "nope", 0, 0).await), Code::NotFound);
    assert_eq!(code(read(&s, "../x", 0, 0).await), Code::InvalidArgument);
    assert_eq!(code(read(&s, "", 0, 0).await), Code::InvalidArgument);
}

#[tokio::test]
async fn ranges_from_memory() {
    ranges_are_served(Arc::new(MemoryBlobStore::new())).await;
}

#[cfg(not(madsim))]
#[tokio::test]
async fn ranges_from_local_files() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = crate::blob::fs::FsBlobStore::open(dir.path()).expect("store");
    ranges_are_served(Arc::new(store)).await;
}

async fn locate(s: &StreamingServer, id: &str) -> Result<LocatedFile, Status> {
    s.locate_original(Request::new(LocateOriginalRequest {
        video_id: id.into(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// A memory store keeps no files: no path, so the caller uses ReadRange.
#[tokio::test]
async fn originals_in_memory_have_no_place() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs.put("originals/v1", pattern(10)).await.expect("put");
    let (s, _) = server(blobs);
    assert_eq!(
        locate(&s, "v1").await.expect("located"),
        LocatedFile::default()
    );
    assert_eq!(
        locate(&s, "nope").await.expect_err("unknown").code(),
        Code::NotFound
    );
    assert_eq!(
        locate(&s, "../x").await.expect_err("bad id").code(),
        Code::InvalidArgument
    );
}

async fn locate_segment(
    s: &StreamingServer,
    id: &str,
    rendition: &str,
    name: &str,
) -> Result<LocatedFile, Status> {
    s.locate_segment(Request::new(GetSegmentRequest {
        video_id: id.into(),
        rendition: rendition.into(),
        segment_name: name.into(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// LocateSegment answers what GetSegment would: no video, not ready, no
/// such segment, bad names; a segment found in a file has its place.
#[tokio::test]
async fn segments_are_located_as_get_segment_finds_them() {
    let blobs = Arc::new(MemoryBlobStore::new());
    let (s, _) = server(blobs.clone());
    let code = |r: Result<LocatedFile, Status>| r.expect_err("an error").code();
    assert_eq!(
        code(locate_segment(&s, "v1", "480p", "seg_1.ts").await),
        Code::NotFound
    );
    blobs.put("originals/v1", pattern(10)).await.expect("put");
    assert_eq!(
        code(locate_segment(&s, "v1", "480p", "seg_1.ts").await),
        Code::FailedPrecondition
    );
    blobs
        .put(&media::master_key("v1"), pattern(3))
        .await
        .expect("put");
    assert_eq!(
        code(locate_segment(&s, "v1", "480p", "seg_1.ts").await),
        Code::NotFound
    );
    for (rendition, name) in [("4/0p", "seg_1.ts"), ("480p", ".."), ("480p", "")] {
        assert_eq!(
            code(locate_segment(&s, "v1", rendition, name).await),
            Code::InvalidArgument,
            "{rendition} {name}"
        );
    }
    let key = media::segment_key("v1", "480p", "seg_1.ts");
    blobs.put(&key, pattern(2)).await.expect("put");
    assert_eq!(
        locate_segment(&s, "v1", "480p", "seg_1.ts")
            .await
            .expect("found"),
        LocatedFile::default(),
        "a memory store keeps no files"
    );
}

/// A file store: the file's absolute path and identity.
#[cfg(not(madsim))]
#[tokio::test]
async fn originals_in_files_are_located_by_path_and_identity() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = crate::blob::fs::FsBlobStore::open(dir.path()).expect("store");
    store.put("originals/v1", pattern(10)).await.expect("put");
    let (s, _) = server(Arc::new(store));
    let found = locate(&s, "v1").await.expect("located");
    let path = std::path::Path::new(&found.path);
    assert!(path.is_absolute(), "{found:?}");
    assert_eq!(std::fs::read(path).expect("the file"), pattern(10));
    let id = crate::blob::local::FileId::of(&std::fs::metadata(path).expect("meta"));
    assert_eq!(
        (
            found.size_bytes,
            found.device,
            found.inode,
            found.modified_ns
        ),
        (10, id.device, id.inode, id.modified_ns)
    );
    assert_eq!(
        locate(&s, "nope").await.expect_err("unknown").code(),
        Code::NotFound
    );
    let key = media::segment_key("v1", "480p", "seg_1.ts");
    s.blobs.put(&key, pattern(4)).await.expect("put");
    let segment = locate_segment(&s, "v1", "480p", "seg_1.ts")
        .await
        .expect("located");
    assert!(segment.path.ends_with("seg_1.ts"), "{segment:?}");
    assert_eq!(segment.size_bytes, 4);
}

#[tokio::test]
async fn chunks_are_read_lazily() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put("originals/v1", pattern(3 * CHUNK_BYTES))
        .await
        .expect("put");
    let (s, _) = server(blobs.clone());
    let mut stream = s
        .read_range(Request::new(ReadRangeRequest {
            video_id: "v1".into(),
            offset: 0,
            length: 0,
        }))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.next().await.expect("a chunk").expect("ok");
    assert_eq!(first.data.len(), CHUNK_BYTES);
    // Replaced underneath: the next read sees the new, shorter blob; what
    // it has passes on, then the stream fails where its bytes run out.
    blobs
        .put("originals/v1", pattern(CHUNK_BYTES + 10))
        .await
        .expect("replace");
    let mut at = CHUNK_BYTES as u64;
    let short = loop {
        match stream.next().await.expect("a chunk or the failure") {
            Ok(chunk) => {
                assert_eq!(chunk.offset, at, "in order");
                at += chunk.data.len() as u64;
                assert!(at <= CHUNK_BYTES as u64 + 10, "no more than there is");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(short.code(), Code::Internal);
    assert!(
        stream.next().await.is_none(),
        "the stream ends after an error"
    );
}

async fn get_playlist(s: &StreamingServer, id: &str, rendition: &str) -> Result<String, Status> {
    let res = s
        .get_playlist(Request::new(GetPlaylistRequest {
            video_id: id.into(),
            rendition: rendition.into(),
        }))
        .await?
        .into_inner();
    assert_eq!(res.content_type, PLAYLIST_TYPE);
    Ok(res.content)
}

/// A store whose master playlist of `v1` is written just after the first
/// read of it misses: the transcode finishing between the streaming
/// service's read and its check of what is there.
#[derive(Debug)]
struct MasterLandsLate {
    inner: MemoryBlobStore,
    landed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl BlobStore for MasterLandsLate {
    async fn create(&self) -> Result<Box<dyn crate::blob::BlobWriter>, BlobError> {
        self.inner.create().await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        self.inner.put(key, data).await
    }
    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        self.inner.size(key).await
    }
    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        let read = self.inner.read(key, offset, len).await;
        if key == media::master_key("v1")
            && !self.landed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.inner
                .put(key, Bytes::from_static(b"#EXTM3U\n"))
                .await?;
        }
        read
    }
    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::blob::BlobMeta>, BlobError> {
        self.inner.list(prefix, after, limit).await
    }
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}

#[tokio::test]
async fn a_master_written_while_it_was_asked_for_is_served() {
    let inner = MemoryBlobStore::new();
    inner
        .put("originals/v1", Bytes::from_static(b"mp4"))
        .await
        .expect("put");
    let (s, _) = server(Arc::new(MasterLandsLate {
        inner,
        landed: false.into(),
    }));
    assert_eq!(
        get_playlist(&s, "v1", "").await.expect("served"),
        "#EXTM3U\n"
    );
}

#[tokio::test]
async fn playlists_need_a_ready_video() {
    let blobs = Arc::new(MemoryBlobStore::new());
    let (s, _) = server(blobs.clone());
    let code = |r: Result<String, Status>| r.expect_err("an error").code();
    assert_eq!(code(get_playlist(&s, "v1", "").await), Code::NotFound);
    blobs
        .put("originals/v1", Bytes::from_static(b"mp4"))
        .await
        .expect("put");
    assert_eq!(
        code(get_playlist(&s, "v1", "").await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(get_playlist(&s, "v1", "480p").await),
        Code::FailedPrecondition
    );
    blobs
        .put(
            &media::master_key("v1"),
            Bytes::from_static(b"#EXTM3U\n480p/index.m3u8\n"),
        )
        .await
        .expect("put");
    blobs
        .put(
            &media::playlist_key("v1", "480p"),
            Bytes::from_static(b"#EXTM3U\nseg_0.ts\n"),
        )
        .await
        .expect("put");
    assert!(
        get_playlist(&s, "v1", "")
            .await
            .expect("master")
            .contains("480p/")
    );
    assert!(
        get_playlist(&s, "v1", "480p")
            .await
            .expect("media")
            .contains("seg_0")
    );
    assert_eq!(code(get_playlist(&s, "v1", "1080p").await), Code::NotFound);
    assert_eq!(
        code(get_playlist(&s, "v1", "a/b").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(get_playlist(&s, "v1", &"x".repeat(33)).await),
        Code::InvalidArgument
    );

    blobs
        .put(
            &media::playlist_key("v1", "big"),
            pattern(MAX_PLAYLIST_BYTES + 1),
        )
        .await
        .expect("put");
    assert_eq!(code(get_playlist(&s, "v1", "big").await), Code::Internal);
    blobs
        .put(
            &media::playlist_key("v1", "bin"),
            Bytes::from_static(&[0xff, 0xfe]),
        )
        .await
        .expect("put");
    assert_eq!(code(get_playlist(&s, "v1", "bin").await), Code::Internal);
}

#[tokio::test]
async fn segments_carry_their_content_type() {
    let blobs = Arc::new(MemoryBlobStore::new());
    let (s, _) = server(blobs.clone());
    blobs
        .put(&media::master_key("v1"), Bytes::from_static(b"#EXTM3U\n"))
        .await
        .expect("put");
    for (name, ty) in [
        ("seg_1.ts", "video/mp2t"),
        ("seg_1.m4s", "video/mp4"),
        ("init.mp4", "video/mp4"),
        ("blob.bin", "application/octet-stream"),
    ] {
        blobs
            .put(
                &media::segment_key("v1", "480p", name),
                Bytes::from_static(b"data"),
            )
            .await
            .expect("put");
        let res = s
            .get_segment(Request::new(GetSegmentRequest {
                video_id: "v1".into(),
                rendition: "480p".into(),
                segment_name: name.into(),
            }))
            .await
            .expect("segment")
            .into_inner();
        assert_eq!(
            (&res.data[..], res.content_type.as_str()),
            (&b"data"[..], ty)
        );
    }
    for (rendition, name, want) in [
        ("480p", "missing.ts", Code::NotFound),
        ("480p", "..", Code::InvalidArgument),
        ("480p", "a/b.ts", Code::InvalidArgument),
        ("", "seg_1.ts", Code::InvalidArgument),
    ] {
        let err = s
            .get_segment(Request::new(GetSegmentRequest {
                video_id: "v1".into(),
                rendition: rendition.into(),
                segment_name: name.into(),
            }))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), want, "{rendition}/{name}");
    }
}

#[tokio::test]
async fn thumbnails_are_served_once_the_video_is_ready() {
    let blobs = Arc::new(MemoryBlobStore::new());
    let (s, _) = server(blobs.clone());
    let thumb = |id: &str| {
        s.get_thumbnail(Request::new(GetThumbnailRequest {
            video_id: id.into(),
        }))
    };
    assert_eq!(thumb("v1").await.expect_err("none").code(), Code::NotFound);
    assert_eq!(
        thumb("../x").await.expect_err("bad id").code(),
        Code::InvalidArgument
    );
    blobs
        .put(&media::original_key("v1"), Bytes::from_static(b"video"))
        .await
        .expect("put");
    assert_eq!(
        thumb("v1").await.expect_err("not ready").code(),
        Code::FailedPrecondition
    );
    let jpeg = Bytes::from_static(b"\xff\xd8\xff\xe0 a jpeg");
    blobs
        .put(&media::thumbnail_key("v1"), jpeg.clone())
        .await
        .expect("put");
    let res = thumb("v1").await.expect("thumbnail").into_inner();
    assert_eq!((res.data, res.content_type.as_str()), (jpeg, "image/jpeg"));
    let huge = Bytes::from(vec![0u8; MAX_THUMBNAIL_BYTES + 1]);
    blobs
        .put(&media::thumbnail_key("v1"), huge)
        .await
        .expect("put");
    assert_eq!(
        thumb("v1").await.expect_err("too large").code(),
        Code::Internal
    );
}

async fn start(s: &StreamingServer, id: &str) -> Result<StartSessionResponse, Status> {
    let req = StartSessionRequest {
        video_id: id.into(),
        rendition: "480p".into(),
        ..Default::default()
    };
    Ok(s.start_session(Request::new(req)).await?.into_inner())
}

async fn stop(s: &StreamingServer, id: &str) -> Result<StopSessionResponse, Status> {
    let req = StopSessionRequest {
        session_id: id.into(),
        bytes_served: 42,
        watched_ms: 0,
    };
    Ok(s.stop_session(Request::new(req)).await?.into_inner())
}

#[tokio::test]
async fn sessions_publish_events_and_stop_idempotently() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put("originals/v1", Bytes::from_static(b"mp4"))
        .await
        .expect("put");
    let (s, bus) = server(blobs);
    let started = start(&s, "v1").await.expect("start");
    assert_eq!(started.session_id.len(), 32);
    assert!(started.started_at_ms > 0);
    let first = stop(&s, &started.session_id).await.expect("stop");
    let again = stop(&s, &started.session_id).await.expect("stop again");
    assert_eq!(first, again);
    assert!(first.stopped_at_ms >= started.started_at_ms);

    let events = bus.events.lock().expect("lock").clone();
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventType::StreamingStarted, EventType::StreamingStopped]
    );
    let stopped = StreamingStopped::from_event(&events[1]).expect("payload");
    assert_eq!(
        (stopped.video_id.as_str(), stopped.bytes_served),
        ("v1", 42)
    );
    assert_eq!(stopped.session_id, started.session_id);
    let begun = StreamingStarted::from_event(&events[0]).expect("payload");
    assert_eq!(begun.rendition, "480p");

    fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
        r.expect_err("refused").code()
    }
    assert_eq!(code(start(&s, "nope").await), Code::NotFound);
    assert_eq!(code(start(&s, "a b").await), Code::InvalidArgument);
    assert_eq!(code(stop(&s, "unknown").await), Code::NotFound);
    assert_eq!(code(stop(&s, "").await), Code::InvalidArgument);
    for _ in 0..8 {
        start(&s, "v1").await.expect("room");
    }
    assert_eq!(code(start(&s, "v1").await), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_failed_publish_is_not_fatal() {
    let blobs = Arc::new(MemoryBlobStore::new());
    blobs
        .put("originals/v1", Bytes::from_static(b"mp4"))
        .await
        .expect("put");
    let bus = Arc::new(Recorder {
        fail: true,
        ..Recorder::default()
    });
    let s = StreamingServer::new(blobs, bus, 8);
    let started = start(&s, "v1").await.expect("start despite the bus");
    stop(&s, &started.session_id)
        .await
        .expect("stop despite the bus");
}
