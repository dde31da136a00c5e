//! A scratch directory for tests that need real files.

use std::path::Path;

/// A fresh directory under the system temp dir, removed (with all in it)
/// on drop.
#[derive(Debug)]
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// Creates `<temp dir>/sg-<name>-<random>`.
    ///
    /// # Panics
    /// If the directory can't be created (a test can't go on without it).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sg-{name}-"))
            .tempdir()
            .expect("a scratch directory");
        Self(dir)
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}
