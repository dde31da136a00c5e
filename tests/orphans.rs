//! Nothing orphaned after a crash (issue #23, item 3): a crash at every
//! step of the upload commit (ARCHITECTURE.md, "The upload commit order"),
//! repeated, leaves no blob without a record once the restarted upload
//! service has swept once, and every acknowledged upload intact.
//!
//! In process: the blob store and the bus are wrapped so that a chosen step
//! never returns; once the uploads reach it, the whole runtime is dropped
//! (its tasks and in-memory state go, its files stay as written), and the
//! services start again on the same data dir. The real-process version
//! (kill -9 of the monolith binary) is `kill_9_during_uploads_leaves_no_orphan`.
#![cfg(not(madsim))]
// The real-process test reports what the kills left (run with --nocapture).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use streamgate::blob::fs::FsBlobStore;
use streamgate::blob::{BlobError, BlobMeta, BlobStore, BlobWriter};
use streamgate::bus::memory::MemoryBus;
use streamgate::bus::{BusError, Event, EventBus, EventType, Handler, Subscription};
use streamgate::client::PoolConfig;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::proto::upload_chunk::Payload as Chunk;
use streamgate::proto::{
    GetUploadRequest, GetVideoRequest, ListVideosRequest, UploadChunk, UploadMetadata,
};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::services::upload::sweep;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use streamgate_testkit::scratch::Scratch;

/// Where in the upload commit the crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Step 1: the first chunk is in the temporary file.
    Streaming,
    /// Step 2 done: the original is committed, no video names it.
    BlobCommitted,
    /// Step 3 done: the video is recorded (its MetadataCreated never goes
    /// out, so CreateVideo never answers), no upload record.
    VideoRecorded,
    /// Step 4 done: the upload is recorded; FileUploaded never goes out.
    UploadRecorded,
}

const STEPS: [Step; 4] = [
    Step::Streaming,
    Step::BlobCommitted,
    Step::VideoRecorded,
    Step::UploadRecorded,
];

/// Uploads stopped at a step, once it is armed.
#[derive(Debug, Default)]
struct Stall {
    armed: Mutex<Option<Step>>,
    reached: AtomicUsize,
    released: AtomicBool,
}

impl Stall {
    /// Returns only once released if `at` is the armed step.
    async fn at(&self, at: Step) {
        if *self.armed.lock().expect("stall") == Some(at) {
            self.reached.fetch_add(1, Ordering::SeqCst);
            while !self.released.load(Ordering::SeqCst) {
                rt::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Waits until `n` uploads have reached the armed step.
    async fn reached(&self, n: usize, context: &str) {
        let deadline = rt::now() + Duration::from_secs(20);
        while self.reached.load(Ordering::SeqCst) < n {
            assert!(
                rt::now() < deadline,
                "{context}: the uploads never reached the step"
            );
            rt::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Debug)]
struct StallingBlobs {
    inner: Arc<FsBlobStore>,
    stall: Arc<Stall>,
}

#[async_trait]
impl BlobStore for StallingBlobs {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(StallingWriter {
            inner: self.inner.create().await?,
            stall: self.stall.clone(),
        }))
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        self.inner.put(key, data).await
    }
    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        self.inner.size(key).await
    }
    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        self.inner.read(key, offset, len).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.delete(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        self.inner.list(prefix, after, limit).await
    }
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.local_path(key)
    }
}

struct StallingWriter {
    inner: Box<dyn BlobWriter>,
    stall: Arc<Stall>,
}

#[async_trait]
impl BlobWriter for StallingWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.inner.write(chunk).await?;
        self.stall.at(Step::Streaming).await;
        Ok(())
    }
    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError> {
        let stall = self.stall.clone();
        self.inner.commit(key).await?;
        stall.at(Step::BlobCommitted).await;
        Ok(())
    }
}

struct StallingBus {
    inner: MemoryBus,
    stall: Arc<Stall>,
}

#[async_trait]
impl EventBus for StallingBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        match event.kind {
            EventType::MetadataCreated => self.stall.at(Step::VideoRecorded).await,
            EventType::FileUploaded => self.stall.at(Step::UploadRecorded).await,
            _ => {}
        }
        self.inner.publish(event).await
    }
    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        self.inner.subscribe(subject, queue_group, handler).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

/// Upload and metadata on `dir`, sweeping as `sweep` says; the blob store
/// and bus stall where `stall` is armed.
async fn start(dir: &Path, sweep: sweep::Config, stall: &Arc<Stall>) -> Kernel {
    let blobs = Arc::new(FsBlobStore::open(dir).expect("blob store"));
    let plugins = [ServiceKind::Metadata, ServiceKind::Upload]
        .into_iter()
        .map(|kind| {
            let common = Common {
                data_dir: Some(dir.to_owned()),
                ..Common::ephemeral()
            };
            let mut config = ServiceConfig::new(kind);
            if let ServiceConfig::Upload(c) = &mut config {
                c.sweep = sweep;
            }
            Box::new(ServicePlugin::new(common, config)) as Box<dyn Plugin>
        })
        .collect();
    let seams = Seams {
        bus: Arc::new(StallingBus {
            inner: MemoryBus::new(),
            stall: stall.clone(),
        }),
        registry: Arc::new(MemoryRegistry::new()),
        blobs: Arc::new(StallingBlobs {
            inner: blobs,
            stall: stall.clone(),
        }),
    };
    let pool = PoolConfig::new(Keyring::generate("test"), "api-gateway");
    Kernel::start_with(seams, pool, plugins)
        .await
        .expect("kernel")
}

/// `len` bytes that differ from upload to upload.
fn body(n: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 31 + n * 7) % 251).expect("small"))
        .collect()
}

/// An acknowledged upload: its ids and bytes' hash.
#[derive(Debug, Clone)]
struct Acked {
    upload_id: String,
    size: u64,
    sha: String,
}

async fn upload(kernel: &Kernel, bytes: Vec<u8>) -> Result<(String, Acked), tonic::Status> {
    let mut chunks = vec![UploadChunk {
        payload: Some(Chunk::Metadata(UploadMetadata {
            file_name: "clip.mp4".into(),
            content_type: "video/mp4".into(),
            size_bytes: bytes.len() as u64,
            ..UploadMetadata::default()
        })),
    }];
    chunks.extend(bytes.chunks(256 << 10).map(|c| UploadChunk {
        payload: Some(Chunk::Data(Bytes::copy_from_slice(c))),
    }));
    let mut client = kernel.pool().upload().await.expect("upload client");
    let done = client
        .upload(futures::stream::iter(chunks))
        .await?
        .into_inner();
    let acked = Acked {
        upload_id: done.upload_id,
        size: bytes.len() as u64,
        sha: hex(&Sha256::digest(&bytes)),
    };
    Ok((done.video_id, acked))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir`, as paths relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under the root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The video a blob file (relative to `blobs/`) belongs to.
fn video_of(blob: &str) -> String {
    sweep::video_of(blob)
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("{blob}: no blob the services write"))
}

/// Waits for `sweeps` finished sweeps of the upload service in `kernel`.
async fn swept(kernel: &Kernel, sweeps: u64) {
    let metrics = &kernel.runtime().metrics;
    let deadline = rt::now() + Duration::from_secs(20);
    while metrics.orphan_sweeps() < sweeps {
        assert!(rt::now() < deadline, "no {sweeps} sweeps within 20 s");
        rt::sleep(Duration::from_millis(20)).await;
    }
}

/// What the data dir must hold after a sweep: every blob belongs to a
/// video the catalog has, every acknowledged upload is there byte for
/// byte, nothing is left in `tmp/`; returns the catalog's size.
async fn check(
    kernel: &Kernel,
    dir: &Path,
    acked: &BTreeMap<String, Acked>,
    context: &str,
) -> usize {
    let mut metadata = kernel.pool().metadata().await.expect("metadata client");
    for blob in files(&dir.join("blobs")) {
        let id = video_of(&blob);
        let found = metadata
            .get_video(GetVideoRequest {
                video_id: id.clone(),
            })
            .await;
        assert!(
            found.is_ok(),
            "{context}: blobs/{blob} has no video record ({found:?})"
        );
    }
    assert_eq!(
        files(&dir.join("tmp")),
        Vec::<String>::new(),
        "{context}: tmp/"
    );
    let blobs = FsBlobStore::open(dir).expect("the blob store");
    let mut upload = kernel.pool().upload().await.expect("upload client");
    for (video_id, a) in acked {
        metadata
            .get_video(GetVideoRequest {
                video_id: video_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{context}: acknowledged video {video_id} lost: {e}"));
        upload
            .get_upload(GetUploadRequest {
                upload_id: a.upload_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{context}: upload record of {video_id} lost: {e}"));
        let key = format!("originals/{video_id}");
        let mut sha = Sha256::new();
        let mut offset = 0;
        while offset < a.size {
            let part = blobs
                .read(&key, offset, 1 << 20)
                .await
                .unwrap_or_else(|e| panic!("{context}: original of {video_id}: {e}"));
            sha.update(&part);
            offset += part.len() as u64;
        }
        assert_eq!(offset, a.size, "{context}: {video_id}'s size");
        assert_eq!(hex(&sha.finalize()), a.sha, "{context}: {video_id}'s bytes");
    }
    let listed = metadata
        .list_videos(ListVideosRequest {
            page_size: 100,
            ..ListVideosRequest::default()
        })
        .await
        .expect("list")
        .into_inner();
    listed.videos.len()
}

/// A runtime of its own for one life of the services: dropping it is the
/// crash.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Uploads stalled at each step per round.
const STALLED: usize = 2;
/// Uploads acknowledged before each crash, and after each restart.
const ACKED: usize = 3;
/// Rounds of each step.
const ROUNDS: usize = 2;

#[test]
fn a_crash_at_every_step_of_the_commit_leaves_no_orphan_after_one_sweep() {
    let data = Scratch::new("orphans");
    let dir = data.path().to_owned();
    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    let mut n = 0;
    let mut unanswered = 0;
    for round in 0..ROUNDS {
        for step in STEPS {
            let context = format!("{step:?}, round {}", round + 1);
            // Life one: some uploads acknowledged, then some stopped at the
            // step, then the crash.
            let stall = Arc::new(Stall::default());
            let life = runtime();
            let idle = sweep::Config {
                interval: Duration::from_secs(3600),
                grace: Duration::from_secs(3600),
            };
            let kernel = life.block_on(async {
                let kernel = start(&dir, idle, &stall).await;
                let uploads = (0..ACKED).map(|i| upload(&kernel, body(n + i, 300_000 + i)));
                for done in futures::future::join_all(uploads).await {
                    let (id, a) = done.expect("an upload before the crash");
                    acked.insert(id, a);
                }
                *stall.armed.lock().expect("stall") = Some(step);
                for i in 0..STALLED {
                    let client = kernel.pool().clone();
                    let bytes = body(n + ACKED + i, 700_000);
                    rt::spawn(async move {
                        let mut upload = client.upload().await.expect("client");
                        let mut chunks = vec![UploadChunk {
                            payload: Some(Chunk::Metadata(UploadMetadata {
                                file_name: "stalled.mp4".into(),
                                content_type: "video/mp4".into(),
                                ..UploadMetadata::default()
                            })),
                        }];
                        chunks.extend(bytes.chunks(256 << 10).map(|c| UploadChunk {
                            payload: Some(Chunk::Data(Bytes::copy_from_slice(c))),
                        }));
                        let _ = upload.upload(futures::stream::iter(chunks)).await;
                    });
                }
                stall.reached(STALLED, &context).await;
                kernel
            });
            n += ACKED + STALLED;
            drop(life);
            drop(kernel);
            if matches!(step, Step::VideoRecorded | Step::UploadRecorded) {
                // Recorded: listed, and its original kept (a client with no
                // answer may find it there).
                unanswered += STALLED;
            }

            // Life two: the services again on the same files, sweeping
            // often with no grace, uploads going on meanwhile.
            let life = runtime();
            life.block_on(async {
                let fast = sweep::Config {
                    interval: Duration::from_millis(50),
                    grace: Duration::ZERO,
                };
                let kernel = start(&dir, fast, &Arc::default()).await;
                swept(&kernel, 1).await;
                let removed = kernel.runtime().metrics.orphans_removed("original");
                let want = if step == Step::BlobCommitted {
                    STALLED
                } else {
                    0
                };
                assert_eq!(removed, want as u64, "{context}: originals swept");
                // Uploads committing while the sweep runs (no grace) stay.
                let uploads = (0..ACKED).map(|i| upload(&kernel, body(n + i, 200_000 + i)));
                for done in futures::future::join_all(uploads).await {
                    let (id, a) = done.expect("an upload after the restart");
                    acked.insert(id, a);
                }
                n += ACKED;
                let after = kernel.runtime().metrics.orphan_sweeps() + 2;
                swept(&kernel, after).await;
                let listed = check(&kernel, &dir, &acked, &context).await;
                assert_eq!(listed, acked.len() + unanswered, "{context}: the catalog");
                kernel.shutdown().await;
            });
        }
    }
}

/// A sweep never removes a blob whose record is being written, even with
/// no grace at all: the instance's own commits are marked from before the
/// blob exists until the record is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_being_committed_outlives_sweeps_without_grace() {
    let data = Scratch::new("orphans-committing");
    let dir = data.path().to_owned();
    let stall = Arc::new(Stall::default());
    *stall.armed.lock().expect("stall") = Some(Step::BlobCommitted);
    let fast = sweep::Config {
        interval: Duration::from_millis(20),
        grace: Duration::ZERO,
    };
    let kernel = start(&dir, fast, &stall).await;
    let pending = {
        let kernel_pool = kernel.pool().clone();
        let bytes = body(1, 500_000);
        rt::spawn(async move {
            let mut chunks = vec![UploadChunk {
                payload: Some(Chunk::Metadata(UploadMetadata {
                    file_name: "slow.mp4".into(),
                    content_type: "video/mp4".into(),
                    ..UploadMetadata::default()
                })),
            }];
            chunks.extend(bytes.chunks(256 << 10).map(|c| UploadChunk {
                payload: Some(Chunk::Data(Bytes::copy_from_slice(c))),
            }));
            let mut upload = kernel_pool.upload().await.expect("client");
            upload
                .upload(futures::stream::iter(chunks))
                .await
                .map(|r| (r.into_inner(), bytes))
        })
    };
    stall.reached(1, "committing").await;
    let during = kernel.runtime().metrics.orphan_sweeps() + 3;
    swept(&kernel, during).await;
    assert_eq!(
        files(&dir.join("blobs")).len(),
        1,
        "the committed original stays"
    );
    stall.released.store(true, Ordering::SeqCst);
    let (done, bytes) = pending.await.expect("the task").expect("the upload");
    let acked = BTreeMap::from([(
        done.video_id.clone(),
        Acked {
            upload_id: done.upload_id,
            size: bytes.len() as u64,
            sha: hex(&Sha256::digest(&bytes)),
        },
    )]);
    let after = kernel.runtime().metrics.orphan_sweeps() + 2;
    swept(&kernel, after).await;
    assert_eq!(check(&kernel, &dir, &acked, "committing").await, 1);
    assert_eq!(kernel.runtime().metrics.orphans_removed("original"), 0);
    kernel.shutdown().await;
}

#[path = "shared/monolith.rs"]
mod monolith;

/// Kill rounds of the real-process test.
const KILL_ROUNDS: usize = 4;
/// Uploads going on at once when the kill comes.
const CONCURRENT: usize = 6;

/// kill -9 of the monolith binary at random moments during concurrent
/// uploads, a few rounds; then a restart with a one-second sweep and no
/// grace: no blob without a record remains, nothing is left in `tmp/`, and
/// every upload that got its 201 is still there, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_leaves_no_orphan() {
    use rand::Rng as _;
    use streamgate_testkit::process::Signal;

    let scratch = Scratch::new("orphans-kill");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unanswered = 0;
    for round in 0..KILL_ROUNDS {
        let node = Arc::new(monolith::start(scratch.path(), &data, &secret, &[]).await);
        let token = node.user("ada@example.com").await;
        let mut uploads = Vec::new();
        for worker in 0..CONCURRENT {
            let (node, token) = (node.clone(), token.clone());
            uploads.push(rt::spawn(async move {
                let mut done = Vec::new();
                for i in 0.. {
                    let bytes = body(round * 1000 + worker * 100 + i, 1_000_000 + i * 4096);
                    let sha = hex(&Sha256::digest(&bytes));
                    match node.upload(&token, bytes).await {
                        Some(reply) if reply.status == 201 => {
                            let id = reply.json()["video_id"].as_str().expect("an id").to_owned();
                            done.push((id, Some(sha)));
                        }
                        // Refused or unanswered: the kill came.
                        _ => {
                            done.push((String::new(), None));
                            return done;
                        }
                    }
                }
                done
            }));
        }
        let delay = rt::rng().gen_range(200..1500);
        rt::sleep(Duration::from_millis(delay)).await;
        node.process.signal(Signal::KILL);
        for task in uploads {
            for (id, sha) in task.await.expect("the upload task") {
                match sha {
                    Some(sha) => {
                        acked.insert(id, sha);
                    }
                    None => unanswered += 1,
                }
            }
        }
        let mut node = Arc::into_inner(node).expect("the tasks are done");
        node.process.exited(Duration::from_secs(10)).await;
    }
    println!(
        "{KILL_ROUNDS} kills: {} uploads acknowledged, {unanswered} cut",
        acked.len()
    );
    assert!(!acked.is_empty(), "uploads got through before the kills");
    let orphans_before = files(&data.join("blobs"))
        .iter()
        .filter(|b| b.starts_with("originals/"))
        .filter(|b| !acked.contains_key(&video_of(b)))
        .count();

    let node = monolith::start(
        scratch.path(),
        &data,
        &secret,
        &[
            "--orphan-sweep-interval-secs",
            "1",
            "--orphan-sweep-grace-secs",
            "0",
        ],
    )
    .await;
    let token = node.user("ada@example.com").await;
    let deadline = rt::now() + Duration::from_secs(20);
    while node.metric("streamgate_orphan_sweeps_total").await < 1.0 {
        assert!(rt::now() < deadline, "no sweep within 20 s");
        rt::sleep(Duration::from_millis(100)).await;
    }
    let removed = node.metric("streamgate_orphans_removed_total").await;
    println!(
        "originals of unacknowledged uploads before the sweep: {orphans_before}; orphans removed: {removed}"
    );
    for blob in files(&data.join("blobs")) {
        let id = video_of(&blob);
        let reply = node
            .send(
                "GET",
                &format!("/v1/videos/{id}"),
                &token,
                "text/plain",
                Bytes::new(),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "blobs/{blob} has no video record: {:?}",
            reply.json()
        );
    }
    assert_eq!(
        files(&data.join("tmp")),
        Vec::<String>::new(),
        "tmp/ after the restart"
    );
    for (id, sha) in &acked {
        let reply = node
            .send(
                "GET",
                &format!("/v1/videos/{id}/original"),
                &token,
                "text/plain",
                Bytes::new(),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "acknowledged upload {id} lost: {:?}",
            reply.json()
        );
        assert_eq!(&hex(&Sha256::digest(&reply.body)), sha, "{id}'s bytes");
    }
}
