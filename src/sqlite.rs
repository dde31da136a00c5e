//! SQLite as every stateful service opens it (metadata, upload, auth,
//! worker): a file in write-ahead-log mode, or in memory; an acknowledged
//! commit is on disk (`synchronous = FULL` fsyncs the log at every commit,
//! so a power loss keeps it); rusqlite's default busy timeout (5 s).

use std::path::Path;

use rusqlite::Connection;

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
    conn.pragma_update(None, "synchronous", if flushed { "FULL" } else { "OFF" })?;
    #[cfg(madsim)]
    durability::opened(path, flushed);
    Ok(conn)
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
