//! The catalog's contract, run on every back end: SQLite (two handles on
//! one file), the simulator's modelled database node (two clients of one
//! node, `remote`) and a live PostgreSQL (two pools on one schema, as two
//! instances would hold). Each case takes two catalogs over the same data.

use super::*;
use crate::proto::VideoState;
use crate::registry::consul::HttpTransport;
use crate::services::metadata::remote::CatalogDb;
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
    let page = b.list(Filter::default(), None, 3).await.expect("list");
    assert_eq!(ids(&page), ["d", "e", "c"]);
    let last = page.last().expect("three");
    let rest = a
        .list(
            Filter::default(),
            Some((last.created_at_ms, last.id.clone())),
            10,
        )
        .await
        .expect("list");
    assert_eq!(ids(&rest), ["a", "B"]);
    let mine = a
        .list(
            Filter {
                owner: Some("u2".into()),
                ..Filter::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(ids(&mine), ["e"]);
    let ready = a
        .list(
            Filter {
                state: Some(VideoState::Ready),
                ..Filter::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert!(ready.is_empty());
    assert!(a.delete("a").await.expect("delete"));
    assert!(!b.delete("a").await.expect("delete again"));
    assert!(b.get("a").await.expect("get").is_none());
}

/// Every page of `filter`, `size` at a time, following the cursor.
async fn pages(c: &Catalog, filter: &Filter, size: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = c.list(filter.clone(), after, size).await.expect("list");
        after = page.last().map(|v| (v.created_at_ms, v.id.clone()));
        let full = page.len() == size as usize;
        if !page.is_empty() {
            out.push(page.iter().map(|v| v.id.clone()).collect());
        }
        if !full {
            return out;
        }
    }
}

async fn a_viewer_lists_their_own_and_public_videos_page_by_page(a: &Catalog, b: &Catalog) {
    use crate::proto::Visibility::{Private, Public, Unlisted, Unspecified};
    // Newest first: u1's and u2's videos of every visibility, interleaved,
    // two of them at the same time (the id breaks the tie).
    let rows = [
        ("p1", "u1", 10, Private),
        ("q1", "u2", 20, Public),
        ("r1", "u2", 30, Unlisted),
        ("s1", "u2", 40, Private),
        ("t1", "u2", 50, Unspecified),
        ("u1a", "u1", 60, Unlisted),
        ("v1", "u2", 70, Public),
        ("w1", "u2", 70, Public),
        ("x1", "u1", 80, Public),
    ];
    for (id, owner, at, vis) in rows {
        let mut v = video(id, owner, at);
        v.visibility = vis as i32;
        a.create(v).await.expect("create");
    }
    let viewer = |owner: Option<&str>| Filter {
        owner: owner.map(str::to_owned),
        viewer: Some("u1".into()),
        ..Filter::default()
    };
    let flat = |p: Vec<Vec<String>>| p.concat();
    // u1 sees their own (any visibility) and u2's public ones; never u2's
    // private, unlisted or unspecified (old, private) ones.
    let seen = flat(pages(b, &viewer(None), 2).await);
    assert_eq!(seen, ["x1", "w1", "v1", "u1a", "q1", "p1"]);
    // Every page size gives the same sequence, pages full but the last.
    for size in [1, 3, 5, 100] {
        let p = pages(a, &viewer(None), size).await;
        assert!(p[..p.len() - 1].iter().all(|x| x.len() == size as usize));
        assert_eq!(flat(p), seen, "page size {size}");
    }
    // owner=me: only u1's own.
    assert_eq!(
        flat(pages(b, &viewer(Some("u1")), 2).await),
        ["x1", "u1a", "p1"]
    );
    // Another owner: only their public ones.
    assert_eq!(
        flat(pages(b, &viewer(Some("u2")), 1).await),
        ["w1", "v1", "q1"]
    );
    // Visibility survives reading back and an update.
    let stored = b.get("r1").await.expect("get").expect("r1");
    assert_eq!(stored.visibility, Unlisted as i32);
    b.update("r1", |v| {
        v.visibility = Public as i32;
        Ok::<_, ()>(())
    })
    .await
    .expect("update")
    .expect("found")
    .expect("done");
    assert_eq!(
        flat(pages(a, &viewer(Some("u2")), 10).await),
        ["w1", "v1", "r1", "q1"]
    );
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
    assert_eq!((after.updated_at_ms, after.ready_at_ms), (5, 5));
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
    assert_eq!(v.ready_at_ms, 5);
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

/// A transport handing each request to `db`'s routes in this process.
fn in_process(db: &std::sync::Arc<CatalogDb>) -> std::sync::Arc<dyn HttpTransport> {
    crate::registry::consul::transport::in_process(db.router())
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

        mod model {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // Two instances' clients of one modelled database node.
                    let db = CatalogDb::new().expect("db");
                    let open = || Catalog::Remote(RemoteCatalog::new("http://db", in_process(&db)));
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
    a_viewer_lists_their_own_and_public_videos_page_by_page,
    an_event_applies_once,
    one_event_raced_by_two_instances_applies_once,
    concurrent_updates_all_land,
    a_refused_update_stores_nothing,
);

/// The model's own rules, beyond the contract: a transaction whose
/// client went away is rolled back when it idles out, and a restart of the
/// node ends every open one.
#[tokio::test(start_paused = true)]
async fn the_modelled_database_rolls_back_an_abandoned_transaction() {
    use crate::services::metadata::remote::{IDLE_IN_TRANSACTION, Request};
    let db = CatalogDb::new().expect("db");
    let a = RemoteCatalog::new("http://db", in_process(&db));
    let b = Catalog::Remote(a.clone());
    b.create(video("v", "u1", 1)).await.expect("create");
    // A client locks the row and is never heard from again.
    let lock = |id: &str| Request::Lock { id: id.into() };
    let call = |req: Request| {
        let t = in_process(&db);
        async move {
            let body = serde_json::to_vec(&req).expect("json");
            let res = t
                .send(
                    http::Request::post(format!(
                        "http://db{}",
                        crate::services::metadata::remote::PATH
                    ))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(bytes::Bytes::from(body))
                    .expect("request"),
                    1 << 20,
                )
                .await
                .expect("sent");
            (res.status(), res.into_body())
        }
    };
    let (status, _) = call(lock("v")).await;
    assert_eq!(status, http::StatusCode::OK);
    // An update waits for it, then lands once it idles out.
    let started = crate::rt::now();
    b.update("v", |v| {
        v.title = "second".into();
        Ok::<_, ()>(())
    })
    .await
    .expect("update")
    .expect("found")
    .expect("done");
    let waited = crate::rt::now() - started;
    assert!(
        waited >= IDLE_IN_TRANSACTION && waited < IDLE_IN_TRANSACTION * 2,
        "{waited:?}"
    );
    // The abandoned transaction's write, arriving late, is refused.
    let (status, body) = call(Request::Commit {
        txn: 1,
        video: Some(crate::services::metadata::remote::Row(video("v", "u1", 1))),
    })
    .await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert_eq!(b.get("v").await.expect("get").expect("v").title, "second");
    // An apply abandoned mid-way leaves the event unrecorded ...
    let (status, _) = call(Request::ApplyLock {
        event_id: "e1".into(),
        id: "v".into(),
        now_ms: 5,
    })
    .await;
    assert_eq!(status, http::StatusCode::OK);
    // ... and a restart of the node frees its lock at once.
    db.restarted();
    let started = crate::rt::now();
    let applied = b
        .apply("e1".into(), "v".into(), 6, Step::Started, |_| {})
        .await
        .expect("apply");
    assert!(crate::rt::now() - started < IDLE_IN_TRANSACTION);
    assert_eq!(
        applied.expect("applied").state,
        VideoState::Transcoding as i32
    );
}

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
        conn.execute(
            "INSERT INTO videos VALUES ('done', 'u1', 'ready', '', 'video/mp4', 10, '', 3, '', '[]', 5, 9, 0, '')",
            [],
        )
        .expect("row");
    }
    let store = Store::open(Some(&path)).expect("migrates");
    let old = store.get("old").expect("get").expect("kept");
    assert_eq!(old.title, "kept");
    // From before visibility: unspecified, which reads as private.
    assert_eq!(old.visibility, crate::proto::Visibility::Unspecified as i32);
    drop(store);
    let version: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 2);
    // A ready video of before: ready since its last update.
    let done = Store::open(Some(&path))
        .expect("reopen")
        .get("done")
        .expect("get")
        .expect("done");
    assert_eq!((done.ready_at_ms, done.updated_at_ms), (9, 9));
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

#[tokio::test]
async fn a_postgres_schema_at_version_2_gains_visibility_and_ready_times() {
    use crate::proto::Visibility;
    use crate::services::metadata::pg_store::MIGRATIONS;
    let db = crate::pg::testing::Scratch::new().await;
    let pool = db.pool();
    crate::pg::migrate(&pool, "metadata", &MIGRATIONS[..2])
        .await
        .expect("version 2");
    let conn = pool.get().await.expect("conn");
    for row in [
        "('old', 'u1', 'kept', '', 'video/mp4', 10, '', 1, '', '[]', 5, 5, 0, '', 0)",
        "('done', 'u1', 'ready', '', 'video/mp4', 10, '', 3, '', '[]', 5, 9, 0, '', 4)",
    ] {
        conn.execute(&format!("INSERT INTO videos VALUES {row}"), &[])
            .await
            .expect("row");
    }
    drop(conn);
    let catalog = Catalog::Postgres(PgStore::open(pool.clone()).await.expect("migrates"));
    let old = catalog.get("old").await.expect("get").expect("old");
    assert_eq!(
        (old.visibility, old.ready_at_ms),
        (Visibility::Unspecified as i32, 0)
    );
    let done = catalog.get("done").await.expect("get").expect("done");
    assert_eq!((done.ready_at_ms, done.updated_at_ms), (9, 9));
    // Old rows, unspecified, are never listed to another user.
    let seen = catalog
        .list(
            Filter {
                viewer: Some("u2".into()),
                ..Filter::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert!(seen.is_empty(), "{seen:?}");
    db.drop().await;
}
