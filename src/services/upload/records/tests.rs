//! The records' contract, run on every back end: SQLite (two handles on
//! one file), the simulator's modelled database node (two clients of one
//! node) and a live PostgreSQL (two pools on one schema, as two instances
//! would hold). Each case takes two handles on the same data.

use super::*;

fn upload(id: &str, video: &str, owner: &str, at: i64) -> UploadInfo {
    UploadInfo {
        upload_id: id.into(),
        video_id: video.into(),
        owner_id: owner.into(),
        file_name: "clip.mp4".into(),
        content_type: "video/mp4".into(),
        size_bytes: 1 << 40,
        sha256_hex: "0".repeat(64),
        blob_key: format!("originals/{video}"),
        created_at_ms: at,
    }
}

fn ids(uploads: &[UploadInfo]) -> Vec<&str> {
    uploads.iter().map(|u| u.upload_id.as_str()).collect()
}

async fn insert_get_list_delete(a: &Records, b: &Records) {
    for (id, at) in [("a", 100), ("B", 100), ("c", 100), ("d", 200)] {
        a.insert(upload(id, &format!("v{id}"), "u1", at), None)
            .await
            .expect("insert");
    }
    b.insert(upload("e", "ve", "u2", 150), None)
        .await
        .expect("insert");
    assert!(a.insert(upload("a", "vx", "u1", 1), None).await.is_err());
    let got = b.get("d").await.expect("get").expect("found");
    assert_eq!(got, upload("d", "vd", "u1", 200));
    assert!(b.get("zz").await.expect("get").is_none());
    let page = b.list("u1".into(), None, 2).await.expect("list");
    assert_eq!(ids(&page), ["d", "c"]);
    let last = page.last().expect("two");
    let rest = a
        .list(
            "u1".into(),
            Some((last.created_at_ms, last.upload_id.clone())),
            10,
        )
        .await
        .expect("list");
    // Ids compare as bytes on both back ends: "B" < "a".
    assert_eq!(ids(&rest), ["a", "B"]);
    assert!(a.delete("a").await.expect("delete"));
    assert!(!b.delete("a").await.expect("again"));
    assert_eq!(b.delete_video("vB").await.expect("by video"), 1);
    assert!(a.get("B").await.expect("get").is_none());
}

async fn an_idempotency_key_is_unique_per_owner_across_instances(a: &Records, b: &Records) {
    a.insert(upload("x1", "v1", "u1", 1), Some("k".into()))
        .await
        .expect("first");
    // The same key from the same owner through the other instance: refused.
    assert!(
        b.insert(upload("x2", "v2", "u1", 2), Some("k".into()))
            .await
            .is_err()
    );
    // Another owner may use it.
    b.insert(upload("x3", "v3", "u2", 3), Some("k".into()))
        .await
        .expect("other owner");
    let found = b.by_key("u1", "k").await.expect("by key").expect("found");
    assert_eq!(found.upload_id, "x1");
    assert!(a.by_key("u1", "nope").await.expect("by key").is_none());
    // Uploads without a key never collide.
    a.insert(upload("y1", "w1", "u1", 4), None)
        .await
        .expect("no key");
    b.insert(upload("y2", "w2", "u1", 5), None)
        .await
        .expect("no key");
}

async fn a_race_for_one_key_leaves_one_record(a: &Records, b: &Records) {
    for round in 0..10 {
        let key = format!("k{round}");
        let (x, y) = tokio::join!(
            a.insert(
                upload(&format!("a{round}"), "va", "u1", 1),
                Some(key.clone())
            ),
            b.insert(
                upload(&format!("b{round}"), "vb", "u1", 1),
                Some(key.clone())
            )
        );
        assert_eq!(
            u8::from(x.is_ok()) + u8::from(y.is_ok()),
            1,
            "round {round}"
        );
        assert!(a.by_key("u1", &key).await.expect("by key").is_some());
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("dir");
                    let path = dir.path().join("upload.sqlite");
                    let open = || Records::sqlite(Store::open(Some(&path)).expect("open"));
                    let (a, b) = (open(), open());
                    super::$case(&a, &b).await;
                }
            )*
        }

        mod model {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // Two instances' clients of one modelled database node.
                    let db = crate::services::upload::remote::RecordsDb::new().expect("db");
                    let open = || {
                        Records::Remote(RemoteRecords::new(
                            "http://db",
                            crate::registry::consul::transport::in_process(db.router()),
                        ))
                    };
                    let (a, b) = (open(), open());
                    super::$case(&a, &b).await;
                }
            )*
        }

        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::pg::testing::Scratch::new().await;
                    // Two instances starting together: one migrates.
                    let (a, b) = tokio::join!(PgStore::open(db.pool()), PgStore::open(db.pool()));
                    let (a, b) = (a.expect("open a"), b.expect("open b"));
                    super::$case(&Records::Postgres(a), &Records::Postgres(b)).await;
                    db.drop().await;
                }
            )*
        }
    };
}

contract!(
    insert_get_list_delete,
    an_idempotency_key_is_unique_per_owner_across_instances,
    a_race_for_one_key_leaves_one_record,
);

#[test]
fn a_sqlite_file_from_before_versions_migrates_with_its_data() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("upload.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(crate::services::upload::store::MIGRATIONS[0])
            .expect("old schema");
        conn.execute(
            "INSERT INTO uploads VALUES ('old', 'v', 'u1', 'f', 'video/mp4', 1, '', 'originals/v', 5, 'k')",
            [],
        )
        .expect("row");
    }
    let store = Store::open(Some(&path)).expect("migrates");
    assert_eq!(
        store
            .by_key("u1", "k")
            .expect("by key")
            .expect("kept")
            .upload_id,
        "old"
    );
}
