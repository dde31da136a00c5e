//! A crashed node's disk. madsim's kill drops the node's tasks, so its
//! SQLite connections close cleanly (a checkpoint, the log removed): not
//! what a crash leaves. So a crash takes a [`Snapshot`] of the node's data
//! dir at the moment of the kill and puts it back just before the restart,
//! which then recovers SQLite's write-ahead log as after a real crash.
//!
//! A crash that also loses unflushed writes (a power loss) keeps of the log
//! only what reached the disk: with `synchronous = FULL` SQLite fsyncs the
//! log at every commit, so every acknowledged commit survives and only an
//! unfinished transaction's frames go; without it, nothing of the log was
//! flushed, and it keeps only a prefix of its commits (the
//! `unsynced-commits` injected bug shows the checkers notice). Left out: the
//! pages a checkpoint wrote into the database file without an fsync (the
//! services' databases stay far below SQLite's 1,000-page auto-checkpoint in
//! a run), and the blob store, which in the swarm is shared object storage
//! (durable once a write is acknowledged).

use std::path::{Path, PathBuf};

use rand::Rng as _;
use rand::rngs::StdRng;

/// SQLite's write-ahead log header and frame header sizes.
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// The files of a data dir as they were at a crash.
#[derive(Debug, Default)]
pub struct Snapshot {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Snapshot {
    /// Reads every file of `dir` (none if it does not exist yet).
    pub fn take(dir: &Path) -> Self {
        let mut files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if let Ok(bytes) = std::fs::read(&path) {
                    files.push((path, bytes));
                }
            }
        }
        Self { files }
    }

    /// Drops what a power loss would have lost, and says what went.
    pub fn lose_unflushed(&mut self, rng: &mut StdRng) -> String {
        let mut lost = Vec::new();
        // The shared-memory index lives in the page cache; SQLite rebuilds
        // it from the log.
        self.files
            .retain(|(p, _)| !p.to_string_lossy().ends_with("-shm"));
        for (path, bytes) in &mut self.files {
            let name = path.to_string_lossy().into_owned();
            let Some(db) = name.strip_suffix("-wal") else {
                continue;
            };
            let flushed = streamgate::sqlite::durability::commits_flushed(Path::new(db));
            let commits = commit_ends(bytes);
            let keep = match flushed {
                // Every commit was fsynced: only an unfinished transaction's
                // frames can go.
                Some(true) | None => commits.last().copied().unwrap_or(0),
                Some(false) => {
                    let k = rng.gen_range(0..=commits.len());
                    if k < commits.len() {
                        let file = Path::new(db).file_name().unwrap_or_default();
                        lost.push(format!(
                            "{} of {} commits to {}",
                            commits.len() - k,
                            commits.len(),
                            file.to_string_lossy()
                        ));
                    }
                    k.checked_sub(1).map_or(0, |i| commits[i])
                }
            };
            bytes.truncate(keep);
        }
        if lost.is_empty() {
            String::new()
        } else {
            format!(" (lost {})", lost.join(", "))
        }
    }

    /// Puts the files back as they were (what the node wrote since is
    /// gone); files created since are removed.
    pub fn restore(&self, dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !self.files.iter().any(|(p, _)| *p == path) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for (path, bytes) in &self.files {
            std::fs::write(path, bytes).expect("restore a crashed node's file");
        }
    }
}

/// Where each committed transaction of a write-ahead log ends (byte
/// offsets), in order, up to the first frame of an older generation.
fn commit_ends(wal: &[u8]) -> Vec<usize> {
    let be = |at: usize| {
        wal.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(page), Some(salt1), Some(salt2)) = (be(8), be(16), be(20)) else {
        return Vec::new();
    };
    let frame = FRAME_HEADER + page as usize;
    let mut ends = Vec::new();
    let mut at = WAL_HEADER;
    while at + frame <= wal.len() {
        if be(at + 8) != Some(salt1) || be(at + 12) != Some(salt2) {
            break;
        }
        if be(at + 4).is_some_and(|size| size != 0) {
            ends.push(at + frame);
        }
        at += frame;
    }
    ends
}
