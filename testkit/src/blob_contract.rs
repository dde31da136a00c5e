//! The blob store contract: what every [`BlobStore`] back end must do
//! (memory, the file system, S3-compatible object storage). Each rule
//! panics with its name when broken. `space` is a key prefix of the
//! store's own for this run (e.g. `t1234`): every key written lies under
//! it, so runs never see each other's blobs in a shared bucket.

use bytes::Bytes;
use futures::TryStreamExt as _;
use streamgate::blob::{BlobError, BlobStore, MAX_READ};

/// Runs every rule against `store`, under `space`.
///
/// # Panics
/// A rule is broken.
pub async fn run(store: &dyn BlobStore, space: &str) {
    visible_only_after_commit(store, space, false).await;
    visible_only_after_commit(store, space, true).await;
    an_abandoned_write_leaves_nothing(store, space).await;
    an_abandoned_write_for_a_key_keeps_its_blob(store, space).await;
    reads_are_ranged_and_bounded(store, space).await;
    listings_page_in_key_order(store, space).await;
    delete_removes_a_tree(store, space).await;
    compose_joins_parts_and_keeps_them(store, space).await;
    bad_keys_are_refused(store).await;
}

async fn compose_joins_parts_and_keeps_them(store: &dyn BlobStore, space: &str) {
    let rule = "compose_joins_parts_and_keeps_them";
    let parts: Vec<String> = (0..3).map(|i| format!("{space}/parts/p{i}")).collect();
    let bodies = [vec![1u8; 3 << 20], b"middle".to_vec(), vec![3u8; 1 << 20]];
    for (key, body) in parts.iter().zip(&bodies) {
        store
            .put(key, Bytes::from(body.clone()))
            .await
            .expect("put a part");
    }
    let joined = format!("{space}/joined/all");
    store.compose(&parts, &joined).await.expect("compose");
    let want: Vec<u8> = bodies.concat();
    assert_eq!(
        read_all(store, &joined).await,
        want,
        "{rule}: the parts' bytes in order"
    );
    let one = format!("{space}/joined/one");
    store
        .compose(&parts[1..2], &one)
        .await
        .expect("compose one");
    assert_eq!(read_all(store, &one).await, b"middle", "{rule}: one part");
    // Replaced under its key, as a commit.
    store
        .compose(&parts[..1], &one)
        .await
        .expect("compose again");
    assert_eq!(
        read_all(store, &one).await,
        bodies[0],
        "{rule}: a compose replaces what was there"
    );
    for (key, body) in parts.iter().zip(&bodies) {
        assert_eq!(&read_all(store, key).await, body, "{rule}: the parts stay");
    }
    // A missing part: NotFound naming it, nothing written.
    let missing = format!("{space}/parts/none");
    let target = format!("{space}/joined/never");
    for list in [
        vec![parts[0].clone(), missing.clone()],
        vec![missing.clone()],
    ] {
        match store.compose(&list, &target).await {
            Err(BlobError::NotFound(k)) => assert_eq!(k, missing, "{rule}: names the part"),
            other => panic!("{rule}: a missing part: {other:?}"),
        }
        assert!(
            matches!(store.size(&target).await, Err(BlobError::NotFound(_))),
            "{rule}: nothing stored when a part is missing"
        );
    }
    assert!(
        store.compose(&parts, "../escape").await.is_err(),
        "{rule}: the key is checked"
    );
    store
        .delete(&format!("{space}/parts"))
        .await
        .expect("clean");
    store
        .delete(&format!("{space}/joined"))
        .await
        .expect("clean");
}

/// The whole blob under `key`.
async fn read_all(store: &dyn BlobStore, key: &str) -> Vec<u8> {
    let size = store.size(key).await.expect("size");
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let data = store
            .read(key, out.len() as u64, MAX_READ)
            .await
            .expect("read");
        assert!(!data.is_empty(), "a read inside the blob returned nothing");
        out.extend_from_slice(&data);
    }
    out
}

/// `for_key`: the writer from [`BlobStore::create_for`] the key, else
/// from [`BlobStore::create`].
async fn visible_only_after_commit(store: &dyn BlobStore, space: &str, for_key: bool) {
    let dir = if for_key { "in-place" } else { "originals" };
    let key = format!("{space}/{dir}/v1");
    let mut w = if for_key {
        store.create_for(&key).await.expect("create_for")
    } else {
        store.create().await.expect("create")
    };
    // More than one 5 MiB part of S3's multipart upload.
    let chunk = vec![7u8; 1 << 20];
    for i in 0..6 {
        if i % 2 == 0 {
            w.write(&chunk).await.expect("write");
        } else {
            w.write_bytes(Bytes::from(chunk.clone()))
                .await
                .expect("write_bytes");
        }
    }
    w.write(b"tail").await.expect("write");
    assert!(
        matches!(store.size(&key).await, Err(BlobError::NotFound(_))),
        "visible_only_after_commit: nothing under the key before the commit"
    );
    w.commit(&key).await.expect("commit");
    assert_eq!(
        store.size(&key).await.expect("size"),
        6 * (1 << 20) + 4,
        "visible_only_after_commit: the whole blob after the commit"
    );
    let end = store
        .read(&key, 6 * (1 << 20), 100)
        .await
        .expect("read the tail");
    assert_eq!(&end[..], b"tail", "visible_only_after_commit: bytes kept");
    // A second commit under the key replaces it.
    store
        .put(&key, Bytes::from_static(b"replaced"))
        .await
        .expect("put");
    assert_eq!(
        store.size(&key).await.expect("size"),
        8,
        "visible_only_after_commit: put replaces"
    );
    // Nothing of the staging shows in the key's listing.
    let listed = store
        .list(&format!("{space}/{dir}"), None, 100)
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
        [key.as_str()],
        "visible_only_after_commit: one blob listed"
    );
}

async fn an_abandoned_write_leaves_nothing(store: &dyn BlobStore, space: &str) {
    let before = store.list(space, None, 1000).await.expect("list");
    let mut w = store.create().await.expect("create");
    w.write(&vec![1u8; 6 << 20]).await.expect("write");
    drop(w);
    let after = store.list(space, None, 1000).await.expect("list");
    assert_eq!(before, after, "an_abandoned_write_leaves_nothing");
}

async fn an_abandoned_write_for_a_key_keeps_its_blob(store: &dyn BlobStore, space: &str) {
    let key = format!("{space}/kept/v1");
    store
        .put(&key, Bytes::from_static(b"before"))
        .await
        .expect("put");
    let mut w = store.create_for(&key).await.expect("create_for");
    w.write(&vec![1u8; 6 << 20]).await.expect("write");
    assert_eq!(
        read_all(store, &key).await,
        b"before",
        "an_abandoned_write_for_a_key_keeps_its_blob: the old blob while writing"
    );
    drop(w);
    assert_eq!(
        read_all(store, &key).await,
        b"before",
        "an_abandoned_write_for_a_key_keeps_its_blob: the old blob after"
    );
    let listed = store
        .list(&format!("{space}/kept"), None, 100)
        .await
        .expect("list");
    assert_eq!(
        listed.len(),
        1,
        "an_abandoned_write_for_a_key_keeps_its_blob: one blob listed"
    );
}

async fn reads_are_ranged_and_bounded(store: &dyn BlobStore, space: &str) {
    let key = format!("{space}/hls/v2/seg0.ts");
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    store
        .put(&key, Bytes::from(data.clone()))
        .await
        .expect("put");
    let mid = store.read(&key, 100, 50).await.expect("read");
    assert_eq!(&mid[..], &data[100..150], "reads: a range");
    let (pieces, size) = store
        .read_stream(&key, 100, 850)
        .await
        .expect("read_stream");
    let pieces: Vec<Bytes> = pieces.try_collect().await.expect("the pieces");
    assert_eq!(size, 1000, "reads: a streamed read's size");
    assert_eq!(pieces.concat(), &data[100..950], "reads: a streamed range");
    let (pieces, _) = store.read_stream(&key, 990, 50).await.expect("read_stream");
    let pieces: Vec<Bytes> = pieces.try_collect().await.expect("the pieces");
    assert_eq!(
        pieces.concat(),
        &data[990..],
        "reads: a streamed range, fewer at the end"
    );
    assert!(
        matches!(
            store.read_stream(&key, 1000, 10).await,
            Err(BlobError::OutOfRange { size: 1000, .. })
        ),
        "reads: a streamed read at the end is out of range"
    );
    assert!(
        matches!(
            store.read_stream(&format!("{space}/hls/none"), 0, 10).await,
            Err(BlobError::NotFound(_))
        ),
        "reads: a streamed read of nothing is not found"
    );
    let short = store.read(&key, 990, 50).await.expect("read at the end");
    assert_eq!(&short[..], &data[990..], "reads: fewer at the end");
    assert!(
        matches!(
            store.read(&key, 1000, 10).await,
            Err(BlobError::OutOfRange { size: 1000, .. })
        ),
        "reads: at the end is out of range"
    );
    assert!(
        matches!(
            store.read(&key, 5000, 10).await,
            Err(BlobError::OutOfRange { .. })
        ),
        "reads: past the end is out of range"
    );
    assert!(
        matches!(
            store.read(&format!("{space}/hls/v2/none.ts"), 0, 10).await,
            Err(BlobError::NotFound(_))
        ),
        "reads: a missing blob is not found"
    );
    // The same reads with the size (one request where the backend can).
    let (mid, size) = store.read_sized(&key, 100, 50).await.expect("read_sized");
    assert_eq!(
        (&mid[..], size),
        (&data[100..150], 1000),
        "read_sized: a range and the size"
    );
    let (short, size) = store
        .read_sized(&key, 990, 50)
        .await
        .expect("read_sized at the end");
    assert_eq!(
        (&short[..], size),
        (&data[990..], 1000),
        "read_sized: fewer at the end"
    );
    assert!(
        matches!(
            store.read_sized(&key, 1000, 10).await,
            Err(BlobError::OutOfRange { size: 1000, .. })
        ),
        "read_sized: at the end is out of range"
    );
    assert!(
        matches!(
            store
                .read_sized(&format!("{space}/hls/v2/none.ts"), 0, 10)
                .await,
            Err(BlobError::NotFound(_))
        ),
        "read_sized: a missing blob is not found"
    );
    let empty = format!("{space}/thumbs/empty.jpg");
    store.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(
        store.read(&empty, 0, 10).await.expect("empty").is_empty(),
        "reads: an empty blob reads empty"
    );
    let (nothing, size) = store.read_sized(&empty, 0, 10).await.expect("empty");
    assert!(nothing.is_empty() && size == 0, "read_sized: an empty blob");
    let big = format!("{space}/originals/big");
    store
        .put(&big, Bytes::from(vec![3u8; MAX_READ + 10]))
        .await
        .expect("put big");
    assert_eq!(
        store
            .read(&big, 0, MAX_READ * 2)
            .await
            .expect("read big")
            .len(),
        MAX_READ,
        "reads: at most MAX_READ at once"
    );
}

async fn listings_page_in_key_order(store: &dyn BlobStore, space: &str) {
    let root = format!("{space}/list");
    let mut keys: Vec<String> = (0..7).map(|i| format!("{root}/k{i}")).collect();
    keys.push(format!("{root}/B"));
    keys.push(format!("{root}/sub/a"));
    for k in &keys {
        store.put(k, Bytes::from_static(b"x")).await.expect("put");
    }
    // Byte order, as S3 lists: "B" < "k0" < ... < "sub/a".
    keys.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(&root, after.as_deref(), 3).await.expect("list");
        assert!(page.len() <= 3, "listings: a page holds at most the limit");
        seen.extend(page.iter().map(|b| b.key.clone()));
        for b in &page {
            assert_eq!(b.size, 1, "listings: sizes");
            assert!(b.last_modified_ms > 0, "listings: commit times");
        }
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|b| b.key.clone());
    }
    assert_eq!(seen, keys, "listings: every blob once, in key order");
}

async fn delete_removes_a_tree(store: &dyn BlobStore, space: &str) {
    let tree = format!("{space}/hls/v3");
    for f in ["index.m3u8", "480p/index.m3u8", "480p/seg0.ts"] {
        store
            .put(&format!("{tree}/{f}"), Bytes::from_static(b"x"))
            .await
            .expect("put");
    }
    let single = format!("{space}/thumbs/v3.jpg");
    store
        .put(&single, Bytes::from_static(b"jpg"))
        .await
        .expect("put");
    assert!(
        store.delete(&tree).await.expect("delete tree"),
        "delete: a tree"
    );
    assert!(
        store.list(&tree, None, 10).await.expect("list").is_empty(),
        "delete: nothing left under the tree"
    );
    assert!(
        store.delete(&single).await.expect("delete one"),
        "delete: one"
    );
    assert!(
        !store.delete(&single).await.expect("delete again"),
        "delete: again is false"
    );
    assert!(
        matches!(store.size(&single).await, Err(BlobError::NotFound(_))),
        "delete: gone"
    );
}

async fn bad_keys_are_refused(store: &dyn BlobStore) {
    for key in ["", "../etc/passwd", "a//b", "a/./b", "a b", "/abs"] {
        assert!(
            matches!(
                store.put(key, Bytes::from_static(b"x")).await,
                Err(BlobError::BadKey(..))
            ),
            "bad keys: {key:?} refused"
        );
        assert!(
            matches!(store.create_for(key).await, Err(BlobError::BadKey(..))),
            "bad keys: a writer for {key:?} refused"
        );
    }
}
