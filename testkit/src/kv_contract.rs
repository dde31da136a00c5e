//! The key-value bucket contract: what the NATS KV registry relies on of
//! its bucket ([`Bucket`]), run against the real NATS server (in
//! `tests/nats_kv_registry.rs`) and against the simulator's modelled node
//! ([`crate::kv_node`], in `sim/`), so the model cannot drift from the server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use streamgate::registry::nats_kv::bucket::{Bucket, Delivered, KvError, Op, Watch};
use streamgate::rt;

/// Makes the server lose the bucket (deleted, or the server's data gone).
pub type Lose = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs every case on `bucket`, which must be empty and keep one value per
/// key (history 1).
pub async fn run_all(bucket: Arc<dyn Bucket>, lose: Lose) {
    writes_get_shared_increasing_revisions(&*bucket).await;
    conditional_writes_check_the_last_revision(&*bucket).await;
    deletes_leave_a_marker(&*bucket).await;
    filters_select_keys_by_token(&*bucket).await;
    watches_list_then_follow(&*bucket).await;
    a_lost_bucket_fails_until_ensured(&*bucket, &lose).await;
}

fn value(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Revisions are one sequence across keys, and an entry carries the
/// server's time of the write.
pub async fn writes_get_shared_increasing_revisions(bucket: &dyn Bucket) {
    let status = bucket.status().await.expect("status");
    assert_eq!(status.history, 1, "the contract runs on history 1");
    assert_eq!(
        bucket.ensure().await,
        Ok(false),
        "an existing bucket is kept"
    );
    assert_eq!(
        bucket.entry("rev.none").await,
        Ok(None),
        "a key never written"
    );
    let before = rt::unix_ms();
    let a = bucket.put("rev.a", value("1")).await.expect("put a");
    let b = bucket.put("rev.b", value("2")).await.expect("put b");
    let a2 = bucket.put("rev.a", value("3")).await.expect("put a again");
    assert!(
        a < b && b < a2,
        "revisions {a} {b} {a2} increase across keys"
    );
    let entry = bucket.entry("rev.a").await.expect("get").expect("present");
    assert_eq!(
        (
            entry.key.as_str(),
            entry.value.as_ref(),
            entry.revision,
            entry.op
        ),
        ("rev.a", b"3".as_slice(), a2, Op::Put)
    );
    let after = rt::unix_ms();
    assert!(
        entry.written_unix_ms + 5_000 >= before && entry.written_unix_ms <= after + 5_000,
        "written at {} between {before} and {after}",
        entry.written_unix_ms
    );
}

/// `update` and a conditional delete succeed only at the key's last
/// revision; 0 stands for a key without messages.
pub async fn conditional_writes_check_the_last_revision(bucket: &dyn Bucket) {
    let first = bucket
        .update("cas.a", value("new"), 0)
        .await
        .expect("0 creates a key never written");
    assert_eq!(
        bucket.update("cas.a", value("again"), 0).await,
        Err(KvError::WrongRevision),
        "0 on an existing key"
    );
    let second = bucket
        .update("cas.a", value("next"), first)
        .await
        .expect("the last revision");
    assert!(second > first);
    assert_eq!(
        bucket.update("cas.a", value("stale"), first).await,
        Err(KvError::WrongRevision),
        "a stale revision"
    );
    assert_eq!(
        bucket.delete("cas.a", Some(first)).await,
        Err(KvError::WrongRevision),
        "a delete at a stale revision"
    );
    let entry = bucket.entry("cas.a").await.expect("get").expect("present");
    assert_eq!(
        (entry.value.as_ref(), entry.revision),
        (b"next".as_slice(), second)
    );
    bucket
        .delete("cas.a", Some(second))
        .await
        .expect("a delete at the last revision");
}

/// A delete leaves a marker: the key's latest entry, still listed, and
/// the revision a conditional write must name to write it again.
pub async fn deletes_leave_a_marker(bucket: &dyn Bucket) {
    bucket.put("del.a", value("x")).await.expect("put");
    bucket.delete("del.a", None).await.expect("delete");
    let marker = bucket.entry("del.a").await.expect("get").expect("a marker");
    assert_eq!(marker.op, Op::Delete, "{marker:?}");
    assert!(marker.value.is_empty(), "{marker:?}");
    let keys = bucket.keys("del.*").await.expect("keys");
    assert_eq!(
        keys,
        vec!["del.a".to_owned()],
        "a deleted key is still listed"
    );
    assert_eq!(
        bucket.update("del.a", value("y"), 0).await,
        Err(KvError::WrongRevision),
        "a marker is a message: 0 no longer matches"
    );
    bucket
        .update("del.a", value("y"), marker.revision)
        .await
        .expect("written again at the marker's revision");
}

/// `name.*` and `*.id` select by whole tokens.
pub async fn filters_select_keys_by_token(bucket: &dyn Bucket) {
    for key in ["flt.k1", "flt.k2", "fltx.k1", "other.k1", "flt.k1/b"] {
        bucket.put(key, value(key)).await.expect("put");
    }
    let mut keys = bucket.keys("flt.*").await.expect("keys");
    keys.sort();
    assert_eq!(keys, ["flt.k1", "flt.k1/b", "flt.k2"]);
    let mut keys = bucket.keys("*.k1").await.expect("keys");
    keys.sort();
    assert_eq!(keys, ["flt.k1", "fltx.k1", "other.k1"]);
    assert_eq!(bucket.keys("none.*").await, Ok(Vec::new()));
}

async fn next(watch: &mut Watch) -> Delivered {
    rt::timeout(Duration::from_secs(10), watch.entries.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the watch goes on")
        .expect("a delivery, not an error")
}

/// A watch lists the latest entry of each key under its filter (counting
/// down `pending`), then delivers later writes under it, deletes included.
pub async fn watches_list_then_follow(bucket: &dyn Bucket) {
    bucket.put("w.a", value("old")).await.expect("put");
    let a = bucket.put("w.a", value("a")).await.expect("put");
    bucket.put("w.b", value("b")).await.expect("put");
    bucket.put("wx.c", value("c")).await.expect("put");
    let mut watch = bucket.watch("w.*").await.expect("watch");
    assert_eq!(watch.pending, 2, "one entry per key under the filter");
    let first = next(&mut watch).await;
    assert_eq!(
        (
            first.entry.key.as_str(),
            first.entry.revision,
            first.pending
        ),
        ("w.a", a, 1)
    );
    let second = next(&mut watch).await;
    assert_eq!((second.entry.key.as_str(), second.pending), ("w.b", 0));
    bucket.put("wx.c", value("outside")).await.expect("put");
    let c = bucket.put("w.c", value("c")).await.expect("put");
    let third = next(&mut watch).await;
    assert_eq!((third.entry.key.as_str(), third.entry.revision), ("w.c", c));
    assert_eq!(third.entry.value.as_ref(), b"c");
    bucket.delete("w.a", None).await.expect("delete");
    let fourth = next(&mut watch).await;
    assert_eq!(
        (fourth.entry.key.as_str(), fourth.entry.op),
        ("w.a", Op::Delete)
    );
    let empty = bucket.watch("none.*").await.expect("watch");
    assert_eq!(empty.pending, 0);
}

/// Once the bucket is lost, calls fail until `ensure` makes it again
/// (empty); later writes work.
pub async fn a_lost_bucket_fails_until_ensured(bucket: &dyn Bucket, lose: &Lose) {
    bucket.put("lost.a", value("a")).await.expect("put");
    lose().await;
    let failed = rt::timeout(Duration::from_secs(10), bucket.put("lost.b", value("b"))).await;
    assert!(
        !matches!(failed, Ok(Ok(_))),
        "a write to a lost bucket must fail, not {failed:?}"
    );
    assert_eq!(bucket.ensure().await, Ok(true), "ensure makes it again");
    assert_eq!(bucket.ensure().await, Ok(false), "once");
    assert_eq!(
        bucket.entry("lost.a").await,
        Ok(None),
        "the data went with it"
    );
    bucket
        .put("lost.c", value("c"))
        .await
        .expect("a write after");
    assert_eq!(bucket.keys("lost.*").await, Ok(vec!["lost.c".to_owned()]));
}
