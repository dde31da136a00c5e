//! What `streamgate-cli` keeps between runs, in one JSON file under the
//! user's config dir (`~/.config/streamgate/cli.json` on Linux), readable
//! by its owner only (0600, in a 0700 dir): the server, the signed-in
//! user's token pair, and the uploads under way (for `upload --resume`).
//! Written whole to a temporary file and renamed, so a crash never leaves
//! half a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The largest config file read (it holds a few tokens and upload URLs).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most uploads under way remembered; the oldest go first.
pub const MAX_UPLOADS: usize = 100;

/// The signed-in user.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The account's email.
    pub email: String,
    /// The account's id.
    pub user_id: String,
    /// The access token.
    pub access_token: String,
    /// When it expires (ms since the epoch).
    pub access_expires_at_ms: u64,
    /// The refresh token (spent and replaced on each refresh).
    pub refresh_token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("email", &self.email)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// An upload begun and not finished: where to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The upload's URL (`<server>/v1/uploads/<id>`).
    pub url: String,
    /// The file's size when it began.
    pub size: u64,
    /// The file's modification time then (ns since the epoch): a changed
    /// file is not resumed.
    pub modified_ns: u128,
    /// When the upload began (ms since the epoch), to forget the oldest.
    pub started_ms: u64,
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stored {
    /// The server logged in to.
    pub server: Option<String>,
    /// The signed-in user.
    pub session: Option<Session>,
    /// Uploads under way, by the file's absolute path.
    pub uploads: BTreeMap<String, Pending>,
}

/// The config file and what it holds.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// Its contents.
    pub data: Stored,
}

/// The default file: `<config dir>/streamgate/cli.json`.
///
/// # Errors
/// The platform has no config dir (no `$HOME`).
pub fn default_path() -> anyhow::Result<PathBuf> {
    let dir = dirs::config_dir()
        .context("no config directory (set $HOME or $XDG_CONFIG_HOME, or pass --config)")?;
    Ok(dir.join("streamgate").join("cli.json"))
}

impl Store {
    /// Reads `path`; a missing file is an empty store.
    ///
    /// # Errors
    /// The file cannot be read, is too large or is not a config file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let data = match std::fs::File::open(path) {
            Ok(file) => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
                    &mut text,
                )
                .with_context(|| format!("reading {}", path.display()))?;
                if text.len() as u64 > MAX_FILE_BYTES {
                    bail!("{}: larger than {MAX_FILE_BYTES} bytes", path.display());
                }
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a streamgate-cli config", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: path.to_owned(),
            data,
        })
    }

    /// Where it is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes it (0600; its dir is made 0700 if missing), atomically.
    ///
    /// # Errors
    /// The file or its directory cannot be written.
    pub fn save(&mut self) -> anyhow::Result<()> {
        while self.data.uploads.len() > MAX_UPLOADS {
            let oldest = self
                .data
                .uploads
                .iter()
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.data.uploads.remove(&k);
            }
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_vec_pretty(&self.data)?;
        let name = self
            .path
            .file_name()
            .map_or_else(|| "cli.json".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(&text)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        // A file made before, by hand or another tool, is narrowed too.
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_owner_only_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub").join("cli.json");
        let mut store = Store::open(&path).expect("missing is empty");
        assert_eq!(store.data, Stored::default());
        store.data.server = Some("http://h:1".into());
        store.data.session = Some(Session {
            email: "a@example.com".into(),
            access_token: "secret".into(),
            ..Session::default()
        });
        store.save().expect("saved");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let again = Store::open(&path).expect("read");
        assert_eq!(again.data, store.data);
        assert!(
            !format!("{:?}", again.data.session).contains("secret"),
            "Debug never shows a token"
        );
    }

    #[test]
    fn a_bad_file_is_an_error_not_a_panic_and_uploads_are_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cli.json");
        std::fs::write(&path, "not json").expect("write");
        let err = Store::open(&path).expect_err("refused");
        assert!(
            err.to_string().contains("not a streamgate-cli config"),
            "{err}"
        );

        std::fs::write(&path, "{}").expect("write");
        let mut store = Store::open(&path).expect("empty object");
        for i in 0..(MAX_UPLOADS as u64 + 5) {
            store.data.uploads.insert(
                format!("/f{i}"),
                Pending {
                    url: String::new(),
                    size: 1,
                    modified_ns: 0,
                    started_ms: i,
                },
            );
        }
        store.save().expect("saved");
        assert_eq!(store.data.uploads.len(), MAX_UPLOADS);
        assert!(!store.data.uploads.contains_key("/f0"), "the oldest went");
        assert!(store.data.uploads.contains_key("/f104"));
    }
}
