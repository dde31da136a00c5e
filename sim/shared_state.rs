//! The shared database and object-store nodes the swarm's stateful
//! services use on half its seeds, each on a node of its own and reached
//! over madsim's network: the modelled database
//! (`streamgate::services::metadata::remote`, with the upload records and
//! the accounts beside it) and the object store
//! (`streamgate_testkit::object_node`). Checked here: the object store
//! meets the blob contract that the file system, memory and a real S3
//! server meet; an upload in progress dies with the node and leaves
//! nothing; a writer cut off while it holds a row lock holds it only until
//! its transaction idles out; the node's crash ends open transactions and
//! keeps commits. (The catalog, records and accounts contracts run on the
//! model beside SQLite and PostgreSQL in the unit tests.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use streamgate::blob::BlobStore;
use streamgate::blob::memory::MemoryBlobStore;
use streamgate::proto::{Video, VideoState};
use streamgate::registry::consul::{SimTransport, post_json};
use streamgate::rt;
use streamgate::services::metadata::catalog::Catalog;
use streamgate::services::metadata::remote::{
    CatalogDb, IDLE_IN_TRANSACTION, PATH, RemoteCatalog, Request,
};
use streamgate_testkit::object_node::{ObjectNode, RemoteBlobs};

use crate::trace::announce;

const OBJECTS: ([u8; 4], u16) = ([10, 0, 6, 1], 9000);
const DATABASE: ([u8; 4], u16) = ([10, 0, 6, 2], 5432);

fn node(name: &str, ip: [u8; 4]) -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name(name)
        .ip(ip.into())
        .build()
}

fn start_objects() -> (Arc<ObjectNode>, madsim::task::NodeId) {
    let state = ObjectNode::new(Arc::new(MemoryBlobStore::new()));
    let served = state.clone();
    let addr = SocketAddr::from(OBJECTS);
    let id = Handle::current()
        .create_node()
        .name("objects")
        .ip(addr.ip())
        .init(move || {
            let served = served.clone();
            async move {
                served.restarted();
                crate::common::serve_http(addr, served.router(), "the object store").await;
            }
        })
        .build()
        .id();
    (state, id)
}

fn blobs() -> RemoteBlobs {
    RemoteBlobs::new(
        &format!("http://{}", SocketAddr::from(OBJECTS)),
        Arc::new(SimTransport),
    )
}

#[madsim::test]
async fn the_object_node_meets_the_blob_contract() {
    let _progress = announce("the_object_node_meets_the_blob_contract");
    start_objects();
    node("client", [10, 0, 6, 9])
        .spawn(async {
            rt::sleep(Duration::from_millis(50)).await;
            streamgate_testkit::blob_contract::run(&blobs(), "t1").await;
        })
        .await
        .expect("contract");
}

#[madsim::test]
async fn an_upload_in_progress_dies_with_the_object_node_and_leaves_nothing() {
    let _progress = announce("an_upload_in_progress_dies_with_the_object_node_and_leaves_nothing");
    let (state, id) = start_objects();
    node("client", [10, 0, 6, 9])
        .spawn(async move {
            rt::sleep(Duration::from_millis(50)).await;
            let store = blobs();
            let mut w = store.create().await.expect("create");
            w.write(&vec![7u8; streamgate_testkit::object_node::PART + 10])
                .await
                .expect("a part sent");
            assert_eq!(state.uploads_in_progress(), 1);
            Handle::current().kill(id);
            rt::sleep(Duration::from_millis(200)).await;
            Handle::current().restart(id);
            rt::sleep(Duration::from_millis(200)).await;
            let e = w.commit("t2/clip").await.expect_err("the upload was lost");
            assert_eq!(
                streamgate::error::Classify::kind(&e),
                streamgate::error::ErrorKind::Unavailable,
                "{e}"
            );
            assert!(matches!(
                store.size("t2/clip").await,
                Err(streamgate::blob::BlobError::NotFound(_))
            ));
            // What was stored before the crash is there after it.
            store
                .put("t2/kept", Bytes::from_static(b"k"))
                .await
                .expect("put");
            Handle::current().kill(id);
            Handle::current().restart(id);
            rt::sleep(Duration::from_millis(200)).await;
            assert_eq!(store.size("t2/kept").await.expect("kept"), 1);
            assert_eq!(state.uploads_in_progress(), 0);
        })
        .await
        .expect("scenario");
}

fn video(id: &str) -> Video {
    Video {
        id: id.into(),
        owner_id: "u1".into(),
        title: "t".into(),
        state: VideoState::Uploaded as i32,
        created_at_ms: 1,
        ..Video::default()
    }
}

#[madsim::test]
async fn a_cut_off_writer_holds_its_row_lock_until_it_idles_out_and_commits_outlive_a_crash() {
    let _progress = announce(
        "a_cut_off_writer_holds_its_row_lock_until_it_idles_out_and_commits_outlive_a_crash",
    );
    let db = CatalogDb::new().expect("db");
    let served = db.clone();
    let addr = SocketAddr::from(DATABASE);
    let db_node = Handle::current()
        .create_node()
        .name("database")
        .ip(addr.ip())
        .init(move || {
            let served = served.clone();
            async move {
                served.restarted();
                crate::common::serve_http(addr, served.router(), "the database").await;
            }
        })
        .build()
        .id();
    let base = format!("http://{addr}");
    let catalog = |base: &str| Catalog::Remote(RemoteCatalog::new(base, Arc::new(SimTransport)));
    // Instance A locks the row, then is cut off before it writes.
    let a = node("metadata-a", [10, 0, 6, 3]);
    let a_id = a.id();
    let url = format!("{base}{PATH}");
    a.spawn(async move {
        rt::sleep(Duration::from_millis(50)).await;
        let c = catalog(&base);
        c.create(video("v")).await.expect("create");
        let locked: streamgate::services::metadata::remote::Answer = post_json(
            &SimTransport,
            &url,
            &Request::Lock { id: "v".into() },
            1 << 20,
        )
        .await
        .expect("locked");
        assert!(matches!(
            locked,
            streamgate::services::metadata::remote::Answer::Locked(Some(_))
        ));
        NetSim::current().clog_node(a_id);
    })
    .await
    .expect("instance a");
    let base = format!("http://{addr}");
    node("metadata-b", [10, 0, 6, 4])
        .spawn(async move {
            let c = catalog(&base);
            let started = rt::now();
            let (v, ()) = c
                .update("v", |v| {
                    v.title = "b's".into();
                    Ok::<_, ()>(())
                })
                .await
                .expect("update")
                .expect("found")
                .expect("done");
            let waited = rt::now() - started;
            assert!(
                waited >= IDLE_IN_TRANSACTION && waited < IDLE_IN_TRANSACTION * 2,
                "{waited:?}"
            );
            assert_eq!(v.title, "b's");
            // A crash of the node keeps what was committed.
            Handle::current().kill(db_node);
            assert!(c.get("v").await.is_err(), "the node is down");
            Handle::current().restart(db_node);
            rt::sleep(Duration::from_millis(100)).await;
            assert_eq!(c.get("v").await.expect("get").expect("v").title, "b's");
        })
        .await
        .expect("instance b");
    assert!(db.applied_twice().is_empty());
}
