//! SQLite as every stateful service opens it (metadata, upload, auth,
//! worker): a file in write-ahead-log mode, or in memory; an acknowledged
//! commit is on disk (`synchronous = FULL` fsyncs the log at every commit,
//! so a power loss keeps it); rusqlite's default busy timeout (5 s).

use std::path::Path;

use rusqlite::Connection;

use crate::error::ErrorKind;
use crate::schema::SchemaError;

/// Opens (creating) the database at `path`, or one in memory for `None`.
///
/// # Errors
/// SQLite cannot open the file or set its journal mode.
pub fn open(path: Option<&Path>) -> rusqlite::Result<Connection> {
    let Some(path) = path else {
        return Connection::open_in_memory();
    };
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The injected bug (simulation only) skips the fsync at commit.
    let flushed = !crate::rt::faults::injected(crate::rt::faults::Bug::UnsyncedCommits);
    // Under the simulator no fsync reaches the host's disk either way: a
    // crash there is modelled (`sim/swarm/disk.rs`) from what `durability`
    // records of each database, not from what the host kept (the process
    // never loses its page cache), so a real fsync at every commit would be
    // wall time for nothing: about a twentieth of a swarm seed's. The log
    // SQLite writes is the same with or without it.
    let synchronous = if flushed && !cfg!(madsim) {
        "FULL"
    } else {
        "OFF"
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    #[cfg(madsim)]
    {
        durability::opened(path, flushed);
        obey_disk_faults(&conn)?;
    }
    Ok(conn)
}

/// Makes the connection fail as SQLite on a faulty disk would, while the
/// simulation puts a fault on this node's disk (`rt::faults::DiskFault`):
/// on a full disk every commit is refused (rolled back: nothing of it
/// stays), on a failing one every statement is interrupted. SQLite's own
/// errors on a real disk are `SQLITE_FULL` and `SQLITE_IOERR`; [`kind`]
/// classifies these the same (a full disk, unavailable).
#[cfg(madsim)]
fn obey_disk_faults(conn: &Connection) -> rusqlite::Result<()> {
    use crate::rt::faults::{DiskFault, disk_fault_of};
    let node = madsim::plugin::node();
    conn.commit_hook(Some(move || disk_fault_of(node) == Some(DiskFault::Full)))?;
    // Every few virtual machine steps: each statement takes dozens.
    conn.progress_handler(
        4,
        Some(move || disk_fault_of(node) == Some(DiskFault::Failing)),
    )
}

/// The simulator's property report's name for a [`settle`] that rolled
/// a stale transaction back.
pub const STALE_ROLLBACK: &str = "sqlite: a transaction a failure left open rolled back";

/// Rolls back a transaction that an earlier failure left open. When a
/// statement inside a transaction fails on a bad disk (an I/O error, an
/// interrupt) and the rollback on the way out fails too, the connection
/// stays in that transaction. Every later `BEGIN` would then fail ("cannot
/// start a transaction within a transaction") long after the disk healed;
/// worse, every later autocommit statement would run *inside* it,
/// uncommitted, and vanish at the next rollback: an acknowledged delete
/// or insert undone seconds later. So every store call starts here
/// ([`with`], [`transaction`]).
///
/// # Errors
/// SQLite cannot roll back (the disk is still failing): the call fails
/// rather than write into the stale transaction.
pub fn settle(conn: &Connection) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        tracing::warn!("rolling back a transaction an earlier failure left open");
        crate::rt::coverage::hit(STALE_ROLLBACK);
        conn.execute_batch("ROLLBACK")?;
    }
    Ok(())
}

/// Starts a transaction of `behavior` on a [`settle`]d connection.
///
/// # Errors
/// SQLite cannot roll back the stale transaction, or cannot begin.
pub fn transaction(
    conn: &mut Connection,
    behavior: rusqlite::TransactionBehavior,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    settle(conn)?;
    conn.transaction_with_behavior(behavior)
}

/// A store over one SQLite connection, which [`with`] [`settle`]s before
/// each call.
pub trait Db {
    /// The store's connection.
    fn conn(&self) -> &Connection;
}

impl Db for Connection {
    fn conn(&self) -> &Connection {
        self
    }
}

/// Runs `f` on the store behind `shared` off the async workers (SQLite
/// calls block), on a [`settle`]d connection; a poisoned lock is taken as
/// it is (every store call is one transaction, so a panic left nothing
/// half-done).
///
/// # Errors
/// What `f` returns; SQLite cannot roll back a stale transaction; the
/// task's failure if it panicked.
pub async fn with<S, T, E>(
    shared: &std::sync::Arc<std::sync::Mutex<S>>,
    f: impl FnOnce(&mut S) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    S: Db + Send + 'static,
    T: Send + 'static,
    E: From<crate::rt::JoinError> + From<rusqlite::Error> + Send + 'static,
{
    let shared = shared.clone();
    crate::rt::blocking(move || {
        let mut store = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        settle(store.conn())?;
        f(&mut store)
    })
    .await?
}

/// Brings the schema of `component` up to date: runs the migrations in
/// `steps` not yet recorded in the file's `user_version` (a file made
/// before versions were recorded is at 0: its first step must accept the
/// tables as they are), in one `IMMEDIATE` transaction, so processes
/// sharing the file migrate once. Returns the version now recorded.
///
/// # Errors
/// [`SchemaError::TooNew`] for a file written by a newer binary;
/// [`SchemaError::Failed`] naming the step that failed (nothing of it
/// stays).
pub fn migrate(
    conn: &mut Connection,
    component: &'static str,
    steps: &[&str],
) -> Result<usize, SchemaError> {
    let version = |source: rusqlite::Error| SchemaError::Version {
        component,
        source: source.into(),
    };
    let tx = transaction(conn, rusqlite::TransactionBehavior::Immediate).map_err(version)?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(version)?;
    let todo = crate::schema::plan(component, found, steps.len())?;
    if todo.is_empty() {
        return Ok(steps.len());
    }
    for i in todo {
        tx.execute_batch(steps[i])
            .map_err(|source| SchemaError::Failed {
                component,
                version: i + 1,
                source: source.into(),
            })?;
    }
    tx.pragma_update(
        None,
        "user_version",
        i64::try_from(steps.len()).unwrap_or(i64::MAX),
    )
    .map_err(version)?;
    tx.commit().map_err(version)?;
    tracing::info!(component, version = steps.len(), "schema migrated");
    Ok(steps.len())
}

/// The kind of a SQLite failure: a full disk is
/// [`ErrorKind::StorageFull`], an I/O error, a busy or locked database or an
/// interrupted statement is [`ErrorKind::Unavailable`] (retrying may help),
/// anything else (a bug, a corrupt file) [`ErrorKind::Internal`].
#[must_use]
pub fn kind(e: &rusqlite::Error) -> ErrorKind {
    use rusqlite::ErrorCode;
    let rusqlite::Error::SqliteFailure(failure, _) = e else {
        return ErrorKind::Internal;
    };
    match failure.code {
        ErrorCode::DiskFull => ErrorKind::StorageFull,
        // A commit hook refused the commit: only the simulator's full disk
        // installs one (see `faults`).
        ErrorCode::ConstraintViolation
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_COMMITHOOK =>
        {
            ErrorKind::StorageFull
        }
        ErrorCode::SystemIoFailure
        | ErrorCode::CannotOpen
        | ErrorCode::DatabaseBusy
        | ErrorCode::DatabaseLocked
        | ErrorCode::OperationInterrupted
        | ErrorCode::ReadOnly => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// What the simulator's disk model needs to know: whether the last
/// connection opened on a database fsyncs its log at every commit.
#[cfg(madsim)]
pub mod durability {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static OPENED: Mutex<BTreeMap<PathBuf, bool>> = Mutex::new(BTreeMap::new());

    pub(super) fn opened(path: &Path, flushed: bool) {
        OPENED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_owned(), flushed);
    }

    /// Whether every commit to the database at `path` reached the disk when
    /// it was acknowledged (`None`: never opened in this process).
    #[must_use]
    pub fn commits_flushed(path: &Path) -> Option<bool> {
        OPENED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn a_transaction_left_open_by_a_failure_is_rolled_back_first() {
        let mut conn = open(None).expect("in memory");
        conn.execute_batch("CREATE TABLE t (x); BEGIN; INSERT INTO t VALUES (1);")
            .expect("a transaction left open");
        assert!(conn.transaction().is_err(), "a plain BEGIN fails");
        let tx = transaction(&mut conn, rusqlite::TransactionBehavior::Immediate)
            .expect("begins after a rollback");
        tx.execute("INSERT INTO t VALUES (2)", []).expect("insert");
        tx.commit().expect("commit");
        let rows: Vec<i64> = conn
            .prepare("SELECT x FROM t")
            .expect("query")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("values");
        assert_eq!(rows, [2], "the abandoned insert is gone");
    }

    /// What a store call through [`with`] can fail with.
    #[derive(Debug)]
    enum Error {
        Sqlite(#[allow(dead_code)] rusqlite::Error),
        Join,
    }

    impl From<rusqlite::Error> for Error {
        fn from(e: rusqlite::Error) -> Self {
            Self::Sqlite(e)
        }
    }

    impl From<crate::rt::JoinError> for Error {
        fn from(_: crate::rt::JoinError) -> Self {
            Self::Join
        }
    }

    /// A write that is not a transaction of its own (`conn.execute`), made
    /// through [`with`] after a failure left a transaction open, is
    /// committed, not swallowed by the stale transaction and rolled back
    /// by the next [`transaction`].
    #[tokio::test]
    async fn a_write_through_with_after_a_transaction_left_open_is_kept() {
        let conn = open(None).expect("in memory");
        conn.execute_batch("CREATE TABLE t (x); BEGIN; INSERT INTO t VALUES (1);")
            .expect("a transaction left open");
        let shared = std::sync::Arc::new(std::sync::Mutex::new(conn));
        let inserted = with(&shared, |c: &mut Connection| {
            Ok::<_, Error>(c.execute("INSERT INTO t VALUES (2)", [])?)
        })
        .await
        .expect("insert");
        assert_eq!(inserted, 1);
        let rows: Vec<i64> = with(&shared, |c: &mut Connection| {
            let tx = transaction(c, rusqlite::TransactionBehavior::Immediate)?;
            let rows = tx
                .prepare("SELECT x FROM t")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.commit()?;
            Ok::<_, Error>(rows)
        })
        .await
        .expect("read");
        assert_eq!(
            rows,
            [2],
            "the acknowledged insert stays; the abandoned one is gone"
        );
    }

    #[test]
    fn failures_are_classified_by_what_a_caller_can_do() {
        assert_eq!(kind(&failure(ffi::SQLITE_FULL)), ErrorKind::StorageFull);
        assert_eq!(
            kind(&failure(ffi::SQLITE_IOERR_WRITE)),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(&failure(ffi::SQLITE_IOERR_FSYNC)),
            ErrorKind::Unavailable
        );
        assert_eq!(kind(&failure(ffi::SQLITE_BUSY)), ErrorKind::Unavailable);
        assert_eq!(
            kind(&failure(ffi::SQLITE_CONSTRAINT_UNIQUE)),
            ErrorKind::Internal
        );
        assert_eq!(kind(&failure(ffi::SQLITE_CORRUPT)), ErrorKind::Internal);
        assert_eq!(kind(&rusqlite::Error::InvalidQuery), ErrorKind::Internal);
    }

    /// The two ways the simulator's disk refuses work (`faults`), as SQLite
    /// reports them.
    #[test]
    fn a_refused_commit_is_a_full_disk_and_an_interrupt_is_unavailable() {
        let conn = open(None).expect("in memory");
        conn.execute_batch("CREATE TABLE t (x)").expect("table");
        conn.commit_hook(Some(|| true)).expect("hook");
        let refused = conn
            .execute("INSERT INTO t VALUES (1)", [])
            .expect_err("refused");
        assert_eq!(kind(&refused), ErrorKind::StorageFull, "{refused}");
        conn.commit_hook(None::<fn() -> bool>).expect("unhooked");
        conn.progress_handler(1, Some(|| true)).expect("handler");
        let stopped = conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
        let stopped = stopped.expect_err("interrupted");
        assert_eq!(kind(&stopped), ErrorKind::Unavailable, "{stopped}");
        conn.progress_handler(1, None::<fn() -> bool>)
            .expect("no handler");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("healed");
        assert_eq!(rows, 0, "the refused commit left nothing");
    }
}
