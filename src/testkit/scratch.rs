//! A scratch directory for tests that need real files.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed (with all in it)
/// on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `<temp dir>/sg-<name>-<random>`.
    ///
    /// # Panics
    /// If the directory can't be created (a test can't go on without it).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sg-{name}-{}", crate::rt::random_hex128()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
