//! The accounts' contract, run on every back end: SQLite (two handles on
//! one file), the simulator's modelled database node (two clients of one
//! node) and a live PostgreSQL (two pools on one schema, as two instances
//! would hold). Each case takes two `Accounts` over the same
//! data. Then what only the shared back end promises (the log-in throttle
//! across instances, through two whole servers), the schema migrations,
//! and a database that cannot be reached.

use std::time::Duration;

use super::*;
use crate::services::auth::ServiceClients;
use crate::services::auth::email;
use crate::services::auth::limit::{
    Attempt, BACKOFF, EMAIL_BURST, FREE_FAILURES, Lockout, Outcome,
};
use crate::services::auth::pg_store::{MIGRATIONS, PgStore};
use crate::services::auth::secret::Secret;
use crate::services::auth::server::{AuthServer, REUSE_GRACE_MS};
use crate::services::auth::token::Tokens;

fn user(id: &str, mail: &str) -> User {
    User {
        id: id.into(),
        email: mail.into(),
        password_hash: "$argon2id$secret-hash".into(),
        display_name: "Ada".into(),
        created_at_ms: 5,
    }
}

fn key(mail: &str) -> String {
    email::key(mail).expect("a valid email")
}

async fn emails_are_unique_by_key_across_instances(a: &Accounts, b: &Accounts) {
    a.create_user(key("Ada@Example.com"), user("u1", "Ada@Example.com"))
        .await
        .expect("create");
    let taken = b
        .create_user(key("ada@example.COM"), user("u2", "ada@example.COM"))
        .await;
    assert!(matches!(taken, Err(AuthError::EmailTaken)), "{taken:?}");
    let found = b
        .user_by_key(key("ADA@example.com"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(found, user("u1", "Ada@Example.com"));
    assert!(b.user_exists("u1".into()).await.expect("exists"));
    assert!(!b.user_exists("u2".into()).await.expect("exists"));
    assert!(
        a.user_by_key(key("bob@example.com"))
            .await
            .expect("get")
            .is_none()
    );
}

async fn two_instances_racing_for_one_email_make_one_account(a: &Accounts, b: &Accounts) {
    for round in 0..10 {
        let mail = format!("race{round}@example.com");
        let (x, y) = tokio::join!(
            a.create_user(key(&mail), user(&format!("a{round}"), &mail)),
            b.create_user(key(&mail), user(&format!("b{round}"), &mail))
        );
        let won = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {x:?} {y:?}");
        for r in [x, y] {
            assert!(matches!(r, Ok(()) | Err(AuthError::EmailTaken)), "{r:?}");
        }
        let owner = a.user_by_key(key(&mail)).await.expect("get").expect("one");
        assert!(owner.id.ends_with(&round.to_string()));
    }
}

async fn a_revocation_through_one_is_seen_by_the_other(a: &Accounts, b: &Accounts) {
    assert!(!b.is_revoked("j1".into(), None).await.expect("check"));
    assert!(a.revoke("j1".into(), 100, 10).await.expect("revoke"));
    assert!(b.is_revoked("j1".into(), None).await.expect("seen by b"));
    assert!(
        !b.revoke("j1".into(), 100, 10).await.expect("again"),
        "idempotent"
    );
    // A family's revocation ends its tokens on the other instance too.
    let family = Some(Store::family_key("f1"));
    assert!(
        !a.is_revoked("j2".into(), family.clone())
            .await
            .expect("check")
    );
    b.revoke(Store::family_key("f1"), 200, 10)
        .await
        .expect("revoke family");
    assert!(a.is_revoked("j2".into(), family).await.expect("family"));
    // Swept once expired, by either.
    assert_eq!(b.sweep(150).await.expect("sweep"), 1);
    assert!(!a.is_revoked("j1".into(), None).await.expect("gone"));
    assert!(
        a.is_revoked(Store::family_key("f1"), None)
            .await
            .expect("kept")
    );
}

fn exchange(jti: &str, now_ms: u64) -> Exchange {
    Exchange {
        jti: jti.into(),
        family: Some(Store::family_key("fam")),
        sub: "u1".into(),
        expires_at_ms: 1_000_000_000,
        now_ms,
        family_ends_ms: 2_000_000_000,
    }
}

async fn racing_exchanges_of_one_refresh_token_make_one_winner(a: &Accounts, b: &Accounts) {
    a.create_user(key("ada@example.com"), user("u1", "ada@example.com"))
        .await
        .expect("create");
    let now = 1_000;
    for round in 0..10 {
        let x = exchange(&format!("r{round}"), now);
        let (p, q) = tokio::join!(a.rotate(x.clone()), b.rotate(x));
        let mut got = [p.expect("a"), q.expect("b")];
        got.sort_by_key(|r| matches!(r, Rotation::Raced));
        // The loser saw the winner's exchange: a race, not a stolen copy.
        assert_eq!(got, [Rotation::Won, Rotation::Raced], "round {round}");
    }
    // The same token after the grace: a copy; the family ends for both.
    let late = exchange("r0", now + REUSE_GRACE_MS + 1);
    assert_eq!(
        b.rotate(late).await.expect("late"),
        Rotation::Reused { family_ended: true }
    );
    assert_eq!(
        a.rotate(exchange("fresh", now + REUSE_GRACE_MS + 2))
            .await
            .expect("family"),
        Rotation::FamilyRevoked
    );
    let mut orphan = exchange("orphan", now);
    orphan.family = None;
    orphan.sub = "gone".into();
    assert_eq!(a.rotate(orphan).await.expect("orphan"), Rotation::NoUser);
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("dir");
                    let path = dir.path().join("auth.sqlite");
                    let open = || Accounts::from(Store::open(Some(&path)).expect("open"));
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
                    let (a, b) = model_pair();
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
                    super::$case(&Accounts::from(a), &Accounts::from(b)).await;
                    db.drop().await;
                }
            )*
        }
    };
}

contract!(
    emails_are_unique_by_key_across_instances,
    two_instances_racing_for_one_email_make_one_account,
    a_revocation_through_one_is_seen_by_the_other,
    racing_exchanges_of_one_refresh_token_make_one_winner,
);

fn server(accounts: impl Into<Accounts>) -> AuthServer {
    AuthServer::new(
        accounts,
        Tokens::new(&Secret::new(vec![7u8; 32])),
        ServiceClients::default(),
    )
}

fn log_in(mail: &str, password: &str, client: &str) -> crate::proto::LogInRequest {
    crate::proto::LogInRequest {
        email: mail.into(),
        password: password.into(),
        client_address: client.into(),
    }
}

/// Two auth servers on one database: an account made through one logs in
/// through the other, failed log-ins through one lock the (email, address)
/// out on the other, the owner elsewhere is not slowed, and a token
/// revoked through one is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_accounts_lock_outs_and_revocations() {
    let db = crate::pg::testing::Scratch::new().await;
    let a = server(PgStore::open(db.pool()).await.expect("a"));
    let b = server(PgStore::open(db.pool()).await.expect("b"));
    two_servers_share(a, b).await;
    db.drop().await;
}

/// The same on the simulator's modelled database node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_the_modelled_database_share_them_too() {
    let (a, b) = model_pair();
    two_servers_share(server(a), server(b)).await;
}

/// Two instances' clients of one modelled database node.
fn model_pair() -> (Accounts, Accounts) {
    let db = crate::services::auth::remote::AccountsDb::new().expect("db");
    let open = || {
        Accounts::Remote(RemoteAccounts::new(
            "http://db",
            crate::registry::consul::transport::in_process(db.router()),
        ))
    };
    (open(), open())
}

async fn two_servers_share(a: AuthServer, b: AuthServer) {
    let (_, pair) = a
        .register(crate::proto::SignUpRequest {
            email: "eve@example.com".into(),
            password: "correct horse".into(),
            ..Default::default()
        })
        .await
        .expect("sign-up");
    let attacker = "198.51.100.7";
    for n in 0..FREE_FAILURES {
        let e = a
            .authenticate(log_in("eve@example.com", "wrong horse", attacker))
            .await
            .expect_err("wrong");
        assert!(matches!(e, AuthError::BadCredentials), "attempt {n}: {e}");
    }
    // Instance B enforces A's lock-out, even with the right password.
    let e = b
        .authenticate(log_in("EVE@example.com", "correct horse", attacker))
        .await
        .expect_err("locked out");
    assert!(
        matches!(e, AuthError::RateLimited { retry_after_ms } if (1..=1000).contains(&retry_after_ms)),
        "{e}"
    );
    // The owner, from elsewhere, is let in by either.
    b.authenticate(log_in("eve@example.com", "correct horse", "203.0.113.9"))
        .await
        .expect("owner through b");
    // Revoked through B, refused by A at its next check.
    let now = crate::rt::unix_ms();
    assert!(
        a.check(&pair.access_token, "", now)
            .await
            .expect("store")
            .is_ok()
    );
    assert!(
        b.revoke(crate::proto::RevokeTokenRequest {
            token: pair.access_token.clone(),
            token_id: String::new(),
        })
        .await
        .expect("revoke")
    );
    let seen = a.check(&pair.access_token, "", now).await.expect("store");
    assert!(
        matches!(seen, Err(crate::services::auth::token::Invalid::Revoked)),
        "{seen:?}"
    );
}

/// The shared throttle follows the in-memory one step for step: the same
/// script of attempts at the same times gets the same answers from both
/// (backoff per pair, a success clearing it, the per-email ceiling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_throttle_answers_as_the_memory_one() {
    let db = crate::pg::testing::Scratch::new().await;
    let store = PgStore::open(db.pool()).await.expect("open");
    // Two instances: the script alternates between them.
    let shared = [
        store.throttle(),
        PgStore::open(db.pool()).await.expect("b").throttle(),
    ];
    let mut memory = Lockout::default();
    let t0 = crate::rt::now();
    let base_ms: u64 = 1_700_000_000_000;
    // (ms since start, email, address, outcome if admitted)
    let mut script: Vec<(u64, &str, String, Outcome)> = Vec::new();
    let attacker = "198.51.100.7".to_owned();
    let mut t = 0;
    for i in 0..14u64 {
        script.push((t, "v@x.io", attacker.clone(), Outcome::Failure));
        t += 300 * i;
    }
    let max_ms = u64::try_from(BACKOFF.max.as_millis()).expect("ms");
    script.push((t + max_ms, "v@x.io", attacker.clone(), Outcome::Success));
    script.push((t + max_ms + 1, "v@x.io", attacker, Outcome::Failure));
    // A botnet on one email: the ceiling across addresses.
    for i in 0..(EMAIL_BURST + 20) {
        let ip = format!("10.1.{}.{}", i / 256, i % 256);
        script.push((t + 2_000_000, "w@x.io", ip, Outcome::Failure));
    }
    script.push((t + 2_030_000, "w@x.io", "10.9.9.9".into(), Outcome::Failure));
    let (mut refused, mut admitted) = (0, 0);
    for (n, (ms, mail, ip, outcome)) in script.iter().enumerate() {
        let attempt = Attempt {
            email: mail,
            client: Some(ip.parse().expect("ip")),
        };
        let throttle = &shared[n % 2];
        let want = memory.admit(attempt, t0 + Duration::from_millis(*ms));
        let got = throttle
            .admit_at(attempt, base_ms + ms)
            .await
            .expect("store");
        // The database keeps milliseconds: compare waits to the ms.
        let round = |r: Result<(), Duration>| r.map_err(|d| d.as_millis());
        assert_eq!(round(got), round(want), "step {n} at {ms} ms");
        if want.is_ok() {
            admitted += 1;
            memory.settle(attempt, *outcome);
            throttle
                .settle_now(attempt, *outcome)
                .await
                .expect("settle");
        } else {
            refused += 1;
        }
    }
    // The script exercised both answers.
    assert!(admitted > 100 && refused > 20, "{admitted} {refused}");
    db.drop().await;
}

/// Attempts racing on one pair through two instances are all counted:
/// exactly [`FREE_FAILURES`] get through before the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_attempts_through_two_instances_are_all_counted() {
    let db = crate::pg::testing::Scratch::new().await;
    let a = PgStore::open(db.pool()).await.expect("a").throttle();
    let b = PgStore::open(db.pool()).await.expect("b").throttle();
    let now = 1_700_000_000_000;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let t = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(crate::rt::spawn(async move {
            let attempt = Attempt {
                email: "v@x.io",
                client: Some("198.51.100.7".parse().expect("ip")),
            };
            t.admit_at(attempt, now).await.expect("store").is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, FREE_FAILURES);
    db.drop().await;
}

#[tokio::test]
async fn the_shared_throttle_stays_bounded() {
    let db = crate::pg::testing::Scratch::new().await;
    let t = PgStore::open(db.pool())
        .await
        .expect("open")
        .throttle()
        .with_max_rows(3);
    let now = 1_700_000_000_000u64;
    for i in 0..10u64 {
        let mail = format!("u{i}@x.io");
        let attempt = Attempt {
            email: &mail,
            client: None,
        };
        // Each pair locked out.
        for _ in 0..FREE_FAILURES {
            t.admit_at(attempt, now + i)
                .await
                .expect("store")
                .expect("admitted");
        }
    }
    assert_eq!(t.len().await.expect("len"), (10, 10));
    // Beyond the bound, the least recently used go.
    assert_eq!(t.sweep(now + 10).await.expect("sweep"), 14);
    assert_eq!(t.len().await.expect("len"), (3, 3));
    let kept = Attempt {
        email: "u9@x.io",
        client: None,
    };
    let gone = Attempt {
        email: "u0@x.io",
        client: None,
    };
    // The newest keep their lock-out; the oldest are forgotten.
    let then = now + 10;
    assert_eq!(
        t.blocked_for(kept, then).await.expect("b"),
        BACKOFF.initial - Duration::from_millis(1)
    );
    assert_eq!(t.blocked_for(gone, then).await.expect("b"), Duration::ZERO);
    // Idle past the longest wait and the refill: all forgotten.
    let later = now + 10 + 2 * u64::try_from(BACKOFF.max.as_millis()).expect("ms") + 2_000_000;
    assert_eq!(t.sweep(later).await.expect("sweep"), 6);
    assert_eq!(t.len().await.expect("len"), (0, 0));
    db.drop().await;
}

#[test]
fn a_sqlite_file_from_before_versions_migrates_with_its_data_and_a_newer_one_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("auth.sqlite");
    {
        // Version 0: only the users table, keyed the old way, with a row.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY, email_key TEXT NOT NULL UNIQUE,
                 email TEXT NOT NULL, password_hash TEXT NOT NULL,
                 display_name TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
             INSERT INTO users VALUES ('old', 'ｋｉｍ@example.com', 'ｋｉｍ@example.com', 'h', 'd', 1);",
        )
        .expect("old schema");
    }
    let mut store = Store::open(Some(&path)).expect("migrates");
    let kim = store.user_by_key(&key("kim@example.com")).expect("get");
    assert_eq!(kim.map(|u| u.id).as_deref(), Some("old"), "re-keyed, kept");
    // The tables version 0 lacked are there.
    assert!(store.revoke("j", 10, 0).expect("revoke"));
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(
        version,
        i64::try_from(crate::services::auth::store::MIGRATIONS.len()).expect("n")
    );
    conn.pragma_update(None, "user_version", 7)
        .expect("from the future");
    drop(conn);
    let e = Store::open(Some(&path)).expect_err("too new");
    assert!(
        matches!(
            e,
            AuthError::Schema(crate::schema::SchemaError::TooNew { found: 7, .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_postgres_schema_at_version_1_migrates_with_its_data() {
    let db = crate::pg::testing::Scratch::new().await;
    let pool = db.pool();
    crate::pg::migrate(&pool, "auth", &MIGRATIONS[..1])
        .await
        .expect("version 1");
    pool.get()
        .await
        .expect("conn")
        .batch_execute(&format!(
            "INSERT INTO auth_users VALUES ('old', '{}', 'kim@example.com', 'h', 'd', 1);
             INSERT INTO auth_revoked_tokens VALUES ('gone', 9999999999999);",
            key("kim@example.com")
        ))
        .await
        .expect("rows");
    let store = PgStore::open(pool.clone()).await.expect("migrates");
    let throttle = store.throttle();
    let accounts = Accounts::from(store);
    let kim = accounts
        .user_by_key(key("kim@example.com"))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kim.id, "old");
    assert!(
        accounts
            .is_revoked("gone".into(), None)
            .await
            .expect("kept")
    );
    // Version 2's tables: the shared throttle works.
    let attempt = Attempt {
        email: "kim@example.com",
        client: None,
    };
    throttle
        .admit_at(attempt, 1)
        .await
        .expect("store")
        .expect("admitted");
    // An older binary (knowing only version 1) refuses to start on it.
    let e = crate::pg::migrate(&pool, "auth", &MIGRATIONS[..1])
        .await
        .expect_err("too new");
    assert!(e.to_string().contains("newer than this binary's 1"), "{e}");
    db.drop().await;
}

/// A database that cannot be reached: sign-up, log-in, validation and
/// refresh answer UNAVAILABLE, saying which part is down and nothing of
/// the cause or the URL.
#[tokio::test]
async fn an_unreachable_database_is_unavailable_with_a_clear_message() {
    // Port 1 on loopback: nothing listens.
    let pool = crate::pg::pool("postgres://sg:hunter2@127.0.0.1:1/db").expect("parses");
    let s = server(PgStore::unmigrated(pool));
    let signed = s
        .register(crate::proto::SignUpRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
            ..Default::default()
        })
        .await
        .expect_err("down");
    let logged = s
        .authenticate(log_in("ada@example.com", "correct horse", ""))
        .await
        .expect_err("down");
    let token = Tokens::new(&Secret::new(vec![7u8; 32]))
        .issue(
            "u1",
            crate::services::auth::token::Kind::Access,
            vec![],
            Duration::from_secs(60),
            crate::rt::unix_ms(),
        )
        .expect("token")
        .token;
    let checked = s
        .check(&token, "", crate::rt::unix_ms())
        .await
        .expect_err("down");
    for e in [signed, logged, checked] {
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(
            status.message(),
            "the accounts database is unavailable; retry later"
        );
    }
}

/// Sanity of the settle path the server uses: a success through one
/// instance clears the pair for the other.
#[tokio::test]
async fn a_success_through_one_instance_clears_the_pair_on_the_other() {
    let db = crate::pg::testing::Scratch::new().await;
    let a = PgStore::open(db.pool()).await.expect("a").throttle();
    let b = PgStore::open(db.pool()).await.expect("b").throttle();
    let attempt = Attempt {
        email: "v@x.io",
        client: Some("198.51.100.7".parse().expect("ip")),
    };
    let now = 1_700_000_000_000;
    for _ in 0..FREE_FAILURES {
        a.admit_at(attempt, now)
            .await
            .expect("store")
            .expect("free");
    }
    assert_eq!(
        b.blocked_for(attempt, now).await.expect("b"),
        BACKOFF.initial
    );
    let later = now + 1_000;
    b.admit_at(attempt, later)
        .await
        .expect("store")
        .expect("after the wait");
    b.settle_now(attempt, Outcome::Success)
        .await
        .expect("settle");
    assert_eq!(
        a.blocked_for(attempt, later).await.expect("a"),
        Duration::ZERO
    );
    db.drop().await;
}
