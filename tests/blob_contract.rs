//! The blob store contract (`testkit/src/blob_contract.rs`) on every back
//! end: memory, the file system, and S3-compatible object storage for real:
//! Garage, the S3 server ci/garage starts, whose endpoint and credentials
//! it writes to `$STREAMGATE_TEST_S3_ENV` (default
//! `/var/cache/streamgate/garage/s3.env`). The S3 store's own logic
//! (staging, copy, listing offsets) also runs over `object_store`'s
//! in-memory back end, which needs no server but speaks no HTTP.
#![cfg(not(madsim))]

use std::sync::Arc;

use streamgate::blob::BlobStore;
use streamgate::blob::fs::FsBlobStore;
use streamgate::blob::memory::MemoryBlobStore;
use streamgate::blob::s3::S3BlobStore;
use streamgate::rt;
use streamgate_testkit::blob_contract;

fn space() -> String {
    format!("t{:016x}", rt::random_u64())
}

#[tokio::test]
async fn memory() {
    blob_contract::run(&MemoryBlobStore::new(), &space()).await;
}

#[tokio::test]
async fn file_system() {
    let dir = tempfile::tempdir().expect("dir");
    let store = FsBlobStore::open(dir.path()).expect("open");
    blob_contract::run(&store, &space()).await;
}

#[tokio::test]
async fn s3_logic_over_object_stores_memory() {
    let store = S3BlobStore::over(Arc::new(object_store::memory::InMemory::new()), "prefix");
    blob_contract::run(&store, &space()).await;
}

#[tokio::test]
async fn s3_on_garage() {
    let config = streamgate_testkit::s3::garage(&space());
    let store = S3BlobStore::new(&config).expect("store");
    blob_contract::run(&store, &space()).await;
    // A wrong secret is an unavailable store, and says nothing of the key.
    let mut wrong = config.clone();
    wrong.secret_access_key = "0".repeat(64);
    let e = S3BlobStore::new(&wrong)
        .expect("store")
        .size("a/b")
        .await
        .expect_err("refused");
    assert_eq!(
        streamgate::error::Classify::kind(&e),
        streamgate::error::ErrorKind::Unavailable,
        "{e:?}"
    );
    assert_eq!(e.to_string(), "blob store unavailable");
}
