//! PostgreSQL as the stateful services share it when they scale out
//! (`--database-url`): a connection pool (deadpool-postgres over
//! tokio-postgres), schema migrations under an advisory lock, and how a
//! failure is classified. Not in the simulation build, as async-nats is
//! not: the simulator keeps SQLite.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::error::ErrorKind;
use crate::schema::{IDLE_IN_TRANSACTION, LOCK_WAIT, SchemaError};

/// Connections a process keeps open at most, per store.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a call waits for a free connection, or for a new one to
/// connect, before it fails as unavailable.
pub const WAIT: Duration = Duration::from_secs(5);

/// A failure to reach or use the database.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse (the message never repeats the password).
    #[error("database URL: {0}")]
    Url(String),
    /// No connection could be had in time, or the pool is closed.
    #[error("database unreachable")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database statement failed")]
    Db(#[from] tokio_postgres::Error),
}

impl PgError {
    /// How a caller should see it: unreachable, busy, a failover or a
    /// serialisation conflict are [`ErrorKind::Unavailable`] (retrying may
    /// help), a full disk [`ErrorKind::StorageFull`], anything else
    /// [`ErrorKind::Internal`].
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Url(_) => ErrorKind::Internal,
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) | Self::Db(e) => kind(e),
            Self::Pool(_) => ErrorKind::Unavailable,
        }
    }
}

/// The kind of a tokio-postgres failure (see [`PgError::kind`]).
#[must_use]
pub fn kind(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or closed.
        return ErrorKind::Unavailable;
    };
    if *code == SqlState::DISK_FULL {
        return ErrorKind::StorageFull;
    }
    let class = &code.code()[..2];
    match class {
        // connection exception, insufficient resources, operator
        // intervention (shutdown, crash recovery), transaction rollback
        // (serialisation failure, deadlock).
        "08" | "53" | "57" | "40" => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// A pool of connections to the database at `url` (a `postgres://` URL or
/// a `key=value` string, as libpq takes). Nothing connects until first
/// use: a database that is down at start is waited for by the migration.
///
/// # Errors
/// [`PgError::Url`] if `url` does not parse.
pub fn pool(url: &str) -> Result<Pool, PgError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    Ok(pool_of(config))
}

/// A pool over `config` (see [`pool`]).
#[must_use]
pub fn pool_of(mut config: tokio_postgres::Config) -> Pool {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(WAIT);
    }
    // A transaction whose process was killed or cut off mid-way (between
    // `SELECT ... FOR UPDATE` and its commit) would otherwise hold its row
    // locks until the server notices the dead connection, which over a
    // partition takes TCP's retransmissions, minutes; every other
    // instance's update of those rows would wait as long. The server rolls
    // such a transaction back after `IDLE_IN_TRANSACTION`, and a row lock
    // waited for longer than `LOCK_WAIT` fails the call as unavailable.
    // The simulator's modelled database keeps the same two limits
    // (`services::metadata::remote`; both from `crate::schema`). A URL's own `options` come first and
    // win where they set the same.
    let limits = format!(
        "-c idle_in_transaction_session_timeout={} -c lock_timeout={}",
        IDLE_IN_TRANSACTION.as_millis(),
        LOCK_WAIT.as_millis()
    );
    let options = match config.get_options() {
        Some(own) if !own.is_empty() => format!("{limits} {own}"),
        _ => limits,
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    #[allow(clippy::expect_used)]
    Pool::builder(manager)
        .max_size(MAX_CONNECTIONS)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT))
        .create_timeout(Some(WAIT))
        .recycle_timeout(Some(WAIT))
        .build()
        // Only fails when timeouts are set without a runtime: set above.
        .expect("a pool with a runtime")
}

/// Whether the database answers: a connection from `pool` runs
/// `SELECT 1`. The error names the cause (connection refused, timed out),
/// never the URL.
///
/// # Errors
/// What failed, as text for `/ready`.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let said = |e: &dyn std::error::Error| match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    let client = pool.get().await.map_err(|e| said(&e))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| said(&e))?;
    Ok(())
}

/// Makes the database behind `pool` a dependency of the process's
/// readiness, named `name` (see [`crate::readiness`]).
pub async fn depend(ready: &crate::readiness::ReadyChecks, name: &str, pool: &Pool) {
    let pool = pool.clone();
    ready
        .depend(
            name,
            std::sync::Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move { ping(&pool).await })
            }),
        )
        .await;
}

/// Key of the advisory lock migrations take (with the component's hash as
/// the second key): "SGSM".
const LOCK_KEY: i32 = 0x5347_534d;

/// Brings the schema of `component` up to date in the database: under a
/// transaction-scoped advisory lock, so instances starting together
/// migrate once, runs the steps of `steps` beyond the version recorded in
/// `streamgate_schema` and records the new version, all in one
/// transaction. Returns the version now recorded.
///
/// # Errors
/// [`SchemaError::TooNew`] for a database migrated by a newer binary;
/// [`SchemaError::Failed`] naming the failed step (nothing of it stays);
/// [`SchemaError::Version`] if the database cannot be reached.
pub async fn migrate(
    pool: &Pool,
    component: &'static str,
    steps: &[&str],
) -> Result<usize, SchemaError> {
    let version = |source: Box<dyn std::error::Error + Send + Sync>| SchemaError::Version {
        component,
        source,
    };
    let mut client = pool.get().await.map_err(|e| version(e.into()))?;
    let tx = client.transaction().await.map_err(|e| version(e.into()))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_KEY, &component],
    )
    .await
    .map_err(|e| version(e.into()))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS streamgate_schema (
             component TEXT PRIMARY KEY,
             version BIGINT NOT NULL,
             migrated_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| version(e.into()))?;
    let found: i64 = tx
        .query_opt(
            "SELECT version FROM streamgate_schema WHERE component = $1",
            &[&component],
        )
        .await
        .map_err(|e| version(e.into()))?
        .map_or(0, |row| row.get(0));
    let todo = crate::schema::plan(component, found, steps.len())?;
    if todo.is_empty() {
        return Ok(steps.len());
    }
    for i in todo {
        tx.batch_execute(steps[i])
            .await
            .map_err(|source| SchemaError::Failed {
                component,
                version: i + 1,
                source: source.into(),
            })?;
    }
    let now = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO streamgate_schema (component, version) VALUES ($1, $2)
         ON CONFLICT (component) DO UPDATE SET version = $2, migrated_at = now()",
        &[&component, &now],
    )
    .await
    .map_err(|e| version(e.into()))?;
    tx.commit().await.map_err(|e| version(e.into()))?;
    tracing::info!(component, version = steps.len(), "schema migrated");
    Ok(steps.len())
}

/// A schema of its own on the test database, so tests never see each
/// other's tables: `STREAMGATE_TEST_DATABASE_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/test` (ci/deps starts that server).
/// A test that needs it fails, never skips, when it is not there.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// The test database's URL.
    #[must_use]
    pub fn url() -> String {
        std::env::var("STREAMGATE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// A fresh, empty schema and pools whose connections use it.
    pub struct Scratch {
        /// The schema's name.
        pub schema: String,
        config: tokio_postgres::Config,
    }

    impl Scratch {
        /// Creates the schema.
        ///
        /// # Panics
        /// The test database is not reachable.
        pub async fn new() -> Self {
            let url = url();
            let schema = format!("sg_test_{}", crate::rt::random_hex128());
            let admin = pool(&url).expect("test database URL");
            admin
                .get()
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL at {url} is needed (ci/deps starts it): {e:?}")
                })
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .expect("create schema");
            let mut config: tokio_postgres::Config = url.parse().expect("url");
            config.options(format!("-c search_path={schema}"));
            Self { schema, config }
        }

        /// A new pool on the schema (each is what one instance would hold).
        #[must_use]
        pub fn pool(&self) -> Pool {
            pool_of(self.config.clone())
        }

        /// Drops the schema and everything in it.
        pub async fn drop(self) {
            let admin = pool(&url()).expect("url");
            if let Ok(client) = admin.get().await {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE things (id TEXT PRIMARY KEY)",
        "ALTER TABLE things ADD COLUMN size BIGINT NOT NULL DEFAULT 0",
    ];

    /// A process that dies holding a row lock (its connection left open,
    /// as over a partition) blocks another's update of the row only until
    /// the server rolls the idle transaction back; the URL's own options
    /// (here the scratch schema's search path) still apply.
    #[tokio::test]
    async fn an_abandoned_transaction_frees_its_row_locks() {
        let db = testing::Scratch::new().await;
        let pool = db.pool();
        let c = pool.get().await.expect("conn");
        let show = |name: &'static str| {
            let c = &c;
            async move {
                let row = c
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .expect("show");
                row.get::<_, String>(0)
            }
        };
        assert_eq!(show("idle_in_transaction_session_timeout").await, "5s");
        assert_eq!(show("lock_timeout").await, "10s");
        assert_eq!(show("search_path").await, db.schema);
        c.batch_execute("CREATE TABLE rows (id TEXT PRIMARY KEY, n BIGINT NOT NULL); INSERT INTO rows VALUES ('a', 0)")
            .await
            .expect("table");
        // The holder locks the row and is never heard from again.
        let holder = pool.get().await.expect("holder");
        holder
            .batch_execute("BEGIN; SELECT n FROM rows WHERE id = 'a' FOR UPDATE")
            .await
            .expect("lock");
        let started = crate::rt::now();
        c.execute("UPDATE rows SET n = n + 1 WHERE id = 'a'", &[])
            .await
            .expect("the update lands once the holder is rolled back");
        let waited = started.elapsed();
        assert!(
            waited >= IDLE_IN_TRANSACTION.saturating_sub(std::time::Duration::from_millis(500))
                && waited < LOCK_WAIT,
            "{waited:?}"
        );
        drop(holder);
        db.drop().await;
    }

    #[tokio::test]
    async fn migrations_run_once_under_concurrency_and_a_newer_schema_is_refused() {
        let db = testing::Scratch::new().await;
        let (a, b) = (db.pool(), db.pool());
        // Two instances starting together on the first step, then the
        // old schema holds a row.
        let (x, y) = tokio::join!(
            migrate(&a, "things", &STEPS[..1]),
            migrate(&b, "things", &STEPS[..1])
        );
        assert_eq!((x.expect("a"), y.expect("b")), (1, 1));
        let c = a.get().await.expect("conn");
        c.execute("INSERT INTO things (id) VALUES ('kept')", &[])
            .await
            .expect("insert");
        // A newer binary migrates the rest, twice at once; the row stays.
        let (x, y) = tokio::join!(migrate(&a, "things", STEPS), migrate(&b, "things", STEPS));
        assert_eq!((x.expect("a"), y.expect("b")), (2, 2));
        let row = c
            .query_one("SELECT id, size FROM things", &[])
            .await
            .expect("row");
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, i64>(1)),
            ("kept".into(), 0)
        );
        // The older binary refuses the newer schema.
        let e = migrate(&a, "things", &STEPS[..1])
            .await
            .expect_err("too new");
        assert!(
            matches!(
                e,
                SchemaError::TooNew {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{e}"
        );
        // A failing step leaves nothing: the version stays.
        let bad = [STEPS[0], STEPS[1], "ALTER TABLE nowhere ADD COLUMN x INT"];
        let e = migrate(&a, "things", &bad).await.expect_err("fails");
        assert!(matches!(e, SchemaError::Failed { version: 3, .. }), "{e}");
        assert_eq!(migrate(&a, "things", STEPS).await.expect("still 2"), 2);
        drop(c);
        db.drop().await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_and_the_url_is_not_repeated() {
        // Port 1 on loopback: nothing listens.
        let p = pool("postgres://user:hunter2@127.0.0.1:1/db").expect("parses");
        let e = PgError::from(p.get().await.expect_err("refused"));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
        let e = pool("postgres://user:hunter2@127.0.0.1:notaport/db").expect_err("bad port");
        assert!(matches!(e, PgError::Url(_)), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }
}
