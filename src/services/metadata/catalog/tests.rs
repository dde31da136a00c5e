//! The catalog's contract, run on both back ends: SQLite (two handles on
//! one file) and a live PostgreSQL (two pools on one schema, as two
//! instances would hold). Each case takes two catalogs over the same data.

use super::*;
use crate::services::metadata::state::Step;

fn video(id: &str, owner: &str, at: i64) -> Video {
    Video {
        id: id.into(),
        owner_id: owner.into(),
        title: "t".into(),
        content_type: "video/mp4".into(),
        size_bytes: 10,
        sha256_hex: "0".repeat(64),
        state: VideoState::Uploaded as i32,
        created_at_ms: at,
        updated_at_ms: at,
        ..Video::default()
    }
}

fn ids(videos: &[Video]) -> Vec<&str> {
    videos.iter().map(|v| v.id.as_str()).collect()
}

async fn create_get_list_delete(a: &Catalog, b: &Catalog) {
    // Ids compare as bytes on both back ends: "B" < "a" < "c".
    for (id, at) in [("a", 100), ("B", 100), ("c", 100), ("d", 200)] {
        a.create(video(id, "u1", at)).await.expect("create");
    }
    b.create(video("e", "u2", 150)).await.expect("create");
    assert!(matches!(
        b.create(video("a", "u9", 1)).await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(
        b.get("a").await.expect("get").expect("found").owner_id,
        "u1"
    );
    assert!(a.get("zz").await.expect("get").is_none());
    let page = b.list(None, None, None, 3).await.expect("list");
    assert_eq!(ids(&page), ["d", "e", "c"]);
    let last = page.last().expect("three");
    let rest = a
        .list(None, None, Some((last.created_at_ms, last.id.clone())), 10)
        .await
        .expect("list");
    assert_eq!(ids(&rest), ["a", "B"]);
    let mine = a
        .list(Some("u2".into()), None, None, 10)
        .await
        .expect("list");
    assert_eq!(ids(&mine), ["e"]);
    let ready = a
        .list(None, Some(VideoState::Ready), None, 10)
        .await
        .expect("list");
    assert!(ready.is_empty());
    assert!(a.delete("a").await.expect("delete"));
    assert!(!b.delete("a").await.expect("delete again"));
    assert!(b.get("a").await.expect("get").is_none());
}

async fn an_event_applies_once(a: &Catalog, b: &Catalog) {
    a.create(video("v", "u1", 1)).await.expect("create");
    let fill = |v: &mut Video| v.duration_ms = 2000;
    let after = a
        .apply("e1".into(), "v".into(), 5, Step::Completed, fill)
        .await
        .expect("apply");
    let after = after.expect("changed");
    assert_eq!(after.state, VideoState::Ready as i32);
    assert_eq!(after.updated_at_ms, 5);
    // The same event through the other instance: already applied.
    assert!(
        b.apply("e1".into(), "v".into(), 6, Step::Completed, fill)
            .await
            .expect("again")
            .is_none()
    );
    // A stale failure never undoes success.
    let stale = b
        .apply("e2".into(), "v".into(), 7, Step::Failed("x".into()), fill)
        .await
        .expect("stale");
    assert!(stale.is_none());
    let v = a.get("v").await.expect("get").expect("v");
    assert_eq!((v.duration_ms, v.state), (2000, VideoState::Ready as i32));
    // An unknown video: nothing to change.
    assert!(
        a.apply("e3".into(), "gone".into(), 8, Step::Started, |_| {})
            .await
            .expect("unknown")
            .is_none()
    );
}

async fn one_event_raced_by_two_instances_applies_once(a: &Catalog, b: &Catalog) {
    for round in 0..10 {
        let id = format!("v{round}");
        a.create(video(&id, "u1", 1)).await.expect("create");
        let event = format!("ev{round}");
        let (x, y) = tokio::join!(
            a.apply(event.clone(), id.clone(), 5, Step::Started, |_| {}),
            b.apply(event.clone(), id.clone(), 5, Step::Started, |_| {})
        );
        let applied = [x.expect("a"), y.expect("b")]
            .iter()
            .filter(|v| v.is_some())
            .count();
        assert_eq!(applied, 1, "round {round}");
    }
}

async fn concurrent_updates_all_land(a: &Catalog, b: &Catalog) {
    a.create(video("v", "u1", 1)).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mark = char::from(b'a' + i);
        tasks.push(crate::rt::spawn(async move {
            c.update("v", move |v| {
                v.description.push(mark);
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    for t in tasks {
        let done = t.await.expect("task").expect("update");
        assert!(matches!(done, Some(Ok(_))));
    }
    let mut marks: Vec<char> = a
        .get("v")
        .await
        .expect("get")
        .expect("v")
        .description
        .chars()
        .collect();
    marks.sort_unstable();
    assert_eq!(marks.iter().collect::<String>(), "abcdefghijklmnop");
}

async fn a_refused_update_stores_nothing(a: &Catalog, b: &Catalog) {
    a.create(video("v", "u1", 1)).await.expect("create");
    let refused = b
        .update("v", |v| {
            v.title = "changed".into();
            Err::<(), _>("no")
        })
        .await
        .expect("update");
    assert!(matches!(refused, Some(Err("no"))));
    assert_eq!(a.get("v").await.expect("get").expect("v").title, "t");
    let missing = b.update("nope", |_| Ok::<_, ()>(())).await.expect("update");
    assert!(missing.is_none());
    let (v, out) = b
        .update("v", |v| {
            v.title = "new".into();
            Ok::<_, ()>(7)
        })
        .await
        .expect("update")
        .expect("found")
        .expect("done");
    assert_eq!((v.title.as_str(), out), ("new", 7));
    assert_eq!(a.get("v").await.expect("get").expect("v").title, "new");
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("dir");
                    let path = dir.path().join("metadata.sqlite");
                    let open = || Catalog::sqlite(Store::open(Some(&path)).expect("open"));
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
                    super::$case(&Catalog::Postgres(a), &Catalog::Postgres(b)).await;
                    db.drop().await;
                }
            )*
        }
    };
}

contract!(
    create_get_list_delete,
    an_event_applies_once,
    one_event_raced_by_two_instances_applies_once,
    concurrent_updates_all_land,
    a_refused_update_stores_nothing,
);

#[test]
fn a_sqlite_file_from_before_versions_migrates_with_its_data_and_a_newer_one_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("metadata.sqlite");
    {
        // The schema as it was before versions were recorded, with a row.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(crate::services::metadata::store::MIGRATIONS[0])
            .expect("old schema");
        conn.execute(
            "INSERT INTO videos VALUES ('old', 'u1', 'kept', '', 'video/mp4', 10, '', 1, '', '[]', 5, 5, 0, '')",
            [],
        )
        .expect("row");
    }
    let store = Store::open(Some(&path)).expect("migrates");
    assert_eq!(store.get("old").expect("get").expect("kept").title, "kept");
    drop(store);
    let version: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 1);
    rusqlite::Connection::open(&path)
        .expect("open")
        .pragma_update(None, "user_version", 7)
        .expect("from the future");
    let e = Store::open(Some(&path)).expect_err("too new");
    assert!(
        matches!(
            e,
            StoreError::Schema(crate::schema::SchemaError::TooNew { found: 7, .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_postgres_schema_at_version_1_migrates_with_its_data() {
    use crate::services::metadata::pg_store::MIGRATIONS;
    let db = crate::pg::testing::Scratch::new().await;
    let pool = db.pool();
    crate::pg::migrate(&pool, "metadata", &MIGRATIONS[..1])
        .await
        .expect("version 1");
    pool.get()
        .await
        .expect("conn")
        .execute(
            "INSERT INTO videos VALUES ('old', 'u1', 'kept', '', 'video/mp4', 10, '', 1, '', '[]', 5, 5, 0, '')",
            &[],
        )
        .await
        .expect("row");
    let catalog = Catalog::Postgres(PgStore::open(pool.clone()).await.expect("migrates"));
    assert_eq!(
        catalog.get("old").await.expect("get").expect("kept").title,
        "kept"
    );
    let updated = catalog
        .update("old", |v| {
            v.title = "renamed".into();
            Ok::<_, ()>(())
        })
        .await
        .expect("update");
    assert!(matches!(updated, Some(Ok(_))));
    // An older binary (knowing only version 1) refuses to start on it.
    let e = crate::pg::migrate(&pool, "metadata", &MIGRATIONS[..1])
        .await
        .expect_err("too new");
    assert!(e.to_string().contains("newer than this binary's 1"), "{e}");
    db.drop().await;
}
