//! Disks that fill up and fail: a full disk under the blob store and
//! SQLite is a clear 507 (RESOURCE_EXHAUSTED over gRPC) with nothing half
//! stored and every acknowledged upload kept, and everything works again
//! once space returns; a disk that fails writes (EIO) is a 503.
//!
//! The full disk is real: a size-limited tmpfs mounted for the test (this
//! machine and CI run as root; the test fails, never skips, when it cannot
//! mount, and unmounts after). A real EIO needs a device-mapper `error`
//! target or a faulty loop device, which this machine's kernel does not
//! offer (no device-mapper), so the failing disk is a blob store that fails
//! its writes with the system's EIO.
#![cfg(not(madsim))]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use streamgate::blob::fs::FsBlobStore;
use streamgate::blob::{BlobError, BlobMeta, BlobStore, BlobWriter};
use streamgate::bus::memory::MemoryBus;
use streamgate::client::PoolConfig;
use streamgate::error::{ErrorKind, STORAGE_FULL_MESSAGE};
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::proto::Video;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::services::metadata::MetadataError;
use streamgate::services::metadata::store::Store;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

/// A tmpfs of `size` mounted at `dir` for the test; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("the mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Fills the file system with `filler` until no byte more fits.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler");
        let chunk = vec![0x5a; 64 << 10];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Whatever a partial chunk left too.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .expect("under")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The monolith on an 16 MiB tmpfs: an upload on the full disk is a 507
/// with a JSON body and leaves nothing; the upload before it stays; once
/// the filler goes, uploads succeed again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_keeps_what_it_had_and_recovers() {
    let scratch = Scratch::new("disk-full");
    let disk = Tmpfs::mount(&scratch.path().join("disk"), "16m");
    let data = disk.dir.join("data");
    let secret = monolith::secret(scratch.path());
    let node = monolith::start(scratch.path(), &data, &secret, &[]).await;
    let token = node.user("ada@example.com").await;
    let first = bytes(1, 1 << 20);
    let reply = node.upload(&token, first.clone()).await.expect("an answer");
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    let first_id = reply.json()["video_id"].as_str().expect("an id").to_owned();
    let stored = files(&data.join("blobs"));

    let filler = disk.fill();
    for size in [1 << 20, 10] {
        let reply = node
            .upload(&token, bytes(2, size))
            .await
            .expect("an answer");
        assert_eq!(
            (reply.status, reply.json()),
            (507, serde_json::json!({"error": STORAGE_FULL_MESSAGE})),
            "an upload of {size} bytes on a full disk"
        );
        assert_eq!(
            files(&data.join("tmp")),
            Vec::<String>::new(),
            "nothing half stored"
        );
        assert_eq!(files(&data.join("blobs")), stored, "no new blob, none lost");
    }
    let listed = node
        .send("GET", "/v1/videos", &token, "text/plain", Bytes::new())
        .await;
    assert_eq!(listed.status, 200, "reads go on: {:?}", listed.json());
    assert_eq!(listed.json()["videos"].as_array().map(Vec::len), Some(1));

    std::fs::remove_file(filler).expect("space comes back");
    let second = bytes(3, 1 << 20);
    let reply = node
        .upload(&token, second.clone())
        .await
        .expect("an answer");
    assert_eq!(
        reply.status,
        201,
        "after space came back: {:?}",
        reply.json()
    );
    let second_id = reply.json()["video_id"].as_str().expect("an id").to_owned();
    for (id, body) in [(first_id, first), (second_id, second)] {
        let original = node
            .send(
                "GET",
                &format!("/v1/videos/{id}/original"),
                &token,
                "text/plain",
                Bytes::new(),
            )
            .await;
        assert_eq!(original.status, 200);
        assert_eq!(
            Sha256::digest(&original.body),
            Sha256::digest(&body),
            "{id}"
        );
    }
    drop(node);
}

/// SQLite on a full disk (a 2 MiB tmpfs): the catalog's write fails as a
/// full disk (RESOURCE_EXHAUSTED, the public message only), what was
/// committed before stays, and writes succeed again once space returns.
#[test]
fn sqlite_on_a_full_disk_is_storage_full_and_recovers() {
    let scratch = Scratch::new("disk-sqlite");
    let disk = Tmpfs::mount(&scratch.path().join("disk"), "2m");
    let mut store = Store::open(Some(&disk.dir.join("metadata.sqlite"))).expect("the catalog");
    let video = |n: usize| Video {
        id: format!("v{n}"),
        owner_id: "u1".into(),
        title: format!("video {n}"),
        description: "d".repeat(4000),
        content_type: "video/mp4".into(),
        ..Video::default()
    };
    let filler = disk.fill();
    let mut committed = 0;
    let full = loop {
        match store.create(&video(committed)) {
            Ok(()) => committed += 1,
            Err(e) => break e,
        }
        assert!(committed < 10_000, "the disk never filled");
    };
    let status = tonic::Status::from(MetadataError::from(full));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(ErrorKind::of_status(&status), ErrorKind::StorageFull);
    assert_eq!(status.message(), STORAGE_FULL_MESSAGE);
    for n in 0..committed {
        assert!(
            store.get(&format!("v{n}")).expect("a read").is_some(),
            "v{n} kept"
        );
    }
    std::fs::remove_file(filler).expect("space comes back");
    store
        .create(&video(committed))
        .expect("a write once space came back");
    assert!(
        store
            .get(&format!("v{committed}"))
            .expect("a read")
            .is_some()
    );
}

/// A blob store on a disk whose writes fail with EIO while `failing`.
#[derive(Debug)]
struct FailingDisk {
    inner: FsBlobStore,
    failing: Arc<AtomicBool>,
}

fn eio() -> BlobError {
    BlobError::Io(std::io::Error::from_raw_os_error(5))
}

#[async_trait]
impl BlobStore for FailingDisk {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(FailingWriter {
            inner: self.inner.create().await?,
            failing: self.failing.clone(),
        }))
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(eio());
        }
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

struct FailingWriter {
    inner: Box<dyn BlobWriter>,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl BlobWriter for FailingWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.inner.write(chunk).await?;
        // After the first bytes reached the temporary file.
        if self.failing.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }
    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError> {
        self.inner.commit(key).await
    }
}

/// Auth, metadata, upload and the gateway in process, on a blob store that
/// fails writes with EIO when told: a 503 with a JSON body, nothing left;
/// then, healed, a 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_failing_writes_answers_503_and_leaves_nothing() {
    let data = Scratch::new("disk-eio");
    let dir = data.path().to_owned();
    let failing = Arc::new(AtomicBool::new(false));
    let blobs = FailingDisk {
        inner: FsBlobStore::open(&dir).expect("the blob store"),
        failing: failing.clone(),
    };
    let plugins = [
        ServiceKind::Auth,
        ServiceKind::Metadata,
        ServiceKind::Upload,
        ServiceKind::ApiGateway,
    ]
    .into_iter()
    .map(|kind| {
        let common = Common {
            data_dir: Some(dir.clone()),
            ..Common::ephemeral()
        };
        Box::new(ServicePlugin::new(common, ServiceConfig::new(kind))) as Box<dyn Plugin>
    })
    .collect();
    let seams = Seams {
        bus: Arc::new(MemoryBus::new()),
        registry: Arc::new(MemoryRegistry::new()),
        blobs: Arc::new(blobs),
    };
    let pool = PoolConfig::new(Keyring::generate("test"), "monolith");
    let kernel = Kernel::start_with(seams, pool, plugins)
        .await
        .expect("kernel");
    let info = kernel
        .registrations()
        .iter()
        .find(|i| i.name == ServiceKind::ApiGateway.name())
        .expect("the gateway");
    let gateway = SocketAddr::new(info.address.parse().expect("an address"), info.port);
    let api = monolith::Api::new(gateway);
    let token = api.user("ada@example.com").await;

    failing.store(true, Ordering::SeqCst);
    let reply = api
        .upload(&token, bytes(1, 3 << 20))
        .await
        .expect("an answer");
    assert_eq!(
        (reply.status, reply.json()),
        (503, serde_json::json!({"error": "blob store I/O failed"}))
    );
    assert_eq!(
        files(&dir.join("tmp")),
        Vec::<String>::new(),
        "nothing half stored"
    );
    assert_eq!(files(&dir.join("blobs")), Vec::<String>::new());

    failing.store(false, Ordering::SeqCst);
    let body = bytes(2, 3 << 20);
    let reply = api.upload(&token, body.clone()).await.expect("an answer");
    assert_eq!(reply.status, 201, "healed: {:?}", reply.json());
    let id = reply.json()["video_id"].as_str().expect("an id").to_owned();
    let stored = std::fs::read(dir.join("blobs/originals").join(&id)).expect("the original");
    assert_eq!(stored, body);
    kernel.shutdown().await;
}
