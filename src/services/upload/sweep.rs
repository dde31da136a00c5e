//! The orphan sweep: the safety net under the upload commit and under
//! MetadataDeleted. A blob no video record names (the original of an upload
//! that crashed between its blob and its record, the files of a deleted
//! video whose MetadataDeleted was lost, a transcode's output written after
//! its video was deleted) is removed once it is older than a grace period.
//!
//! Upload runs it because upload owns a video's blobs from end to end: it
//! writes the original, and it already removes every blob of a deleted video
//! (on MetadataDeleted); the sweep is that consumer's retry for lost events,
//! as the worker's sweep is FileUploaded's. Safe with uploads in progress: a
//! blob this instance is committing is never touched (its id is in
//! [`Committing`] from before the blob exists until its record is written
//! or the upload undone, and is looked up before the catalog is), and a blob
//! younger than the grace period is never touched, which covers the commits
//! of other instances sharing the blob store as long as the grace outlasts a
//! commit ([`COMMIT_TIMEOUT`]). Several instances may sweep at once:
//! removing is idempotent.
//!
//! [`COMMIT_TIMEOUT`]: super::server::COMMIT_TIMEOUT

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::records::Records;
use crate::blob::{BlobError, BlobStore, MAX_LIST};
use crate::client::{ClientPool, PoolError};
use crate::middleware::metrics::Metrics;
use crate::proto::GetVideoRequest;
use crate::rt;
use crate::services::media;

/// Time between sweeps by default.
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Age a blob without a record reaches before it is removed, by default.
pub const GRACE: Duration = Duration::from_secs(3600);
/// Longest interval, and the shortest (tests run sweeps quickly).
pub const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(24 * 3600));
/// Longest grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most blobs listed in one sweep; a larger store is covered over several
/// sweeps (each resumes where the one before stopped).
pub const MAX_LISTED: usize = 100_000;
/// Most catalog look-ups in one sweep.
pub const MAX_LOOKUPS: usize = 10_000;
/// Wait before trying again when a sweep could not finish (the catalog
/// was unreachable), at most the interval.
const RETRY: Duration = Duration::from_secs(5);

/// Where a video's blobs live, in the order a sweep visits them.
const PREFIXES: [&str; 3] = ["originals", "hls", "thumbs"];

/// The sweep's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Time between sweeps (the first runs at start).
    pub interval: Duration,
    /// Age a blob without a record must reach before it is removed.
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: INTERVAL,
            grace: GRACE,
        }
    }
}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    /// An interval or grace out of its range.
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = INTERVAL_RANGE;
        if self.interval < lo || self.interval > hi {
            return Err(format!(
                "orphan sweep interval: {lo:?}..={hi:?}, got {:?}",
                self.interval
            ));
        }
        if self.grace > MAX_GRACE {
            return Err(format!(
                "orphan sweep grace: at most {MAX_GRACE:?}, got {:?}",
                self.grace
            ));
        }
        Ok(())
    }
}

/// The videos whose upload this instance is committing: from before their
/// blob exists until their record is written or the upload undone.
#[derive(Debug, Clone, Default)]
pub struct Committing(Arc<Mutex<BTreeSet<String>>>);

impl Committing {
    /// Marks `video_id` as being committed until the guard drops.
    #[must_use]
    pub fn begin(&self, video_id: &str) -> CommitGuard {
        self.with(|ids| ids.insert(video_id.to_owned()));
        CommitGuard {
            ids: self.clone(),
            video_id: video_id.to_owned(),
        }
    }

    /// Whether `video_id` is being committed.
    #[must_use]
    pub fn contains(&self, video_id: &str) -> bool {
        self.with(|ids| ids.contains(video_id))
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeSet<String>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A commit in progress; see [`Committing::begin`].
#[derive(Debug)]
pub struct CommitGuard {
    ids: Committing,
    video_id: String,
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        self.ids.with(|ids| ids.remove(&self.video_id));
    }
}

/// A sweep stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The blob store failed.
    #[error("listing or removing blobs failed")]
    Blob(#[from] BlobError),
    /// No metadata instance could be reached.
    #[error("metadata: {0}")]
    NoMetadata(#[from] PoolError),
    /// The catalog did not answer whether a video exists.
    #[error("metadata: {}", .0.message())]
    Metadata(tonic::Status),
    /// Removing upload records failed.
    #[error("upload records failed")]
    Records(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Blobs listed.
    pub listed: usize,
    /// Blobs (an original, an HLS tree, a thumbnail) removed.
    pub removed: usize,
    /// Whether it went through every blob (else the next one resumes).
    pub finished: bool,
}

/// Where the next sweep starts: a prefix of [`PREFIXES`] and the last key
/// done in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    prefix: usize,
    after: Option<String>,
}

/// Everything a sweep works with.
#[derive(Clone)]
pub struct Sweeper {
    /// The settings.
    pub config: Config,
    /// The blob store swept.
    pub blobs: Arc<dyn BlobStore>,
    /// Reaches the catalog.
    pub pool: ClientPool,
    /// The upload records (those of a removed original go too).
    pub records: Records,
    /// This instance's commits in progress.
    pub committing: Committing,
    /// Counts what was removed.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The video a blob belongs to and what the blob is: `originals/<id>`,
/// `hls/<id>/...` (the whole tree), `thumbs/<id>.jpg`; `None` for keys no
/// service writes (they are left alone).
#[must_use]
pub fn video_of(key: &str) -> Option<(&str, Kind)> {
    let mut parts = key.splitn(3, '/');
    let (id, kind) = match (parts.next()?, parts.next()?, parts.next()) {
        ("originals", id, None) => (id, Kind::Original),
        ("hls", id, Some(_)) => (id, Kind::Hls),
        ("thumbs", file, None) => (file.strip_suffix(".jpg")?, Kind::Thumbnail),
        _ => return None,
    };
    media::is_id(id).then_some((id, kind))
}

/// What an orphan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An uploaded original.
    Original,
    /// A video's HLS tree (playlists and segments).
    Hls,
    /// A video's thumbnail.
    Thumbnail,
}

impl Kind {
    /// The metric label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Hls => "hls",
            Self::Thumbnail => "thumbnail",
        }
    }
}

impl Sweeper {
    /// Whether the catalog has video `id`.
    async fn exists(&self, id: &str) -> Result<bool, SweepError> {
        let mut metadata = self.pool.metadata().await?;
        let req = GetVideoRequest {
            video_id: id.to_owned(),
        };
        match metadata.get_video(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(SweepError::Metadata(s)),
        }
    }

    /// Removes the orphan `kind` of video `id`; whether anything was there.
    async fn remove(&self, id: &str, kind: Kind) -> Result<bool, SweepError> {
        let removed = match kind {
            Kind::Original => {
                let removed = self.blobs.delete(&media::original_key(id)).await?;
                self.records
                    .delete_video(id)
                    .await
                    .map_err(|e| SweepError::Records(e.into()))?;
                removed
            }
            Kind::Hls => self.blobs.delete(&media::hls_prefix(id)).await?,
            Kind::Thumbnail => self.blobs.delete(&media::thumbnail_key(id)).await?,
        };
        if removed {
            self.metrics.orphan_removed(kind.label());
            tracing::info!(video = id, kind = kind.label(), "orphaned blob removed");
        }
        Ok(removed)
    }

    /// One sweep from `cursor`, which it moves on (back to the start once
    /// every blob was seen). Blobs younger than the grace period, or of a
    /// video this instance is committing, or of a video the catalog has,
    /// stay. Stops at the first failure (the catalog unreachable, say):
    /// nothing is removed on a doubt, and the next sweep resumes there.
    ///
    /// # Errors
    /// The blob store, the catalog or the records failed.
    pub async fn once(&self, cursor: &mut Cursor) -> Result<Swept, SweepError> {
        let grace_ms = u64::try_from(self.config.grace.as_millis()).unwrap_or(u64::MAX);
        let cutoff_ms = rt::unix_ms().saturating_sub(grace_ms);
        let mut swept = Swept::default();
        let mut lookups = 0;
        // The verdict on the last video looked up: an HLS tree's keys come
        // one after another.
        let mut last: Option<(String, bool)> = None;
        while let Some(prefix) = PREFIXES.get(cursor.prefix) {
            let page = self
                .blobs
                .list(prefix, cursor.after.as_deref(), MAX_LIST)
                .await?;
            for blob in &page {
                swept.listed += 1;
                if let Some((id, kind)) =
                    video_of(&blob.key).filter(|_| blob.last_modified_ms <= cutoff_ms)
                {
                    let orphan = match &last {
                        Some((seen, orphan)) if seen == id => *orphan,
                        _ => {
                            if lookups == MAX_LOOKUPS {
                                return Ok(swept);
                            }
                            lookups += 1;
                            // This instance's own commits first: one that
                            // ends after this check has its record by then.
                            let orphan = !self.committing.contains(id) && !self.exists(id).await?;
                            last = Some((id.to_owned(), orphan));
                            orphan
                        }
                    };
                    if orphan && self.remove(id, kind).await? {
                        swept.removed += 1;
                    }
                }
                cursor.after = Some(blob.key.clone());
            }
            if page.len() < MAX_LIST {
                *cursor = Cursor {
                    prefix: cursor.prefix + 1,
                    after: None,
                };
            }
            if swept.listed >= MAX_LISTED {
                return Ok(swept);
            }
        }
        *cursor = Cursor::default();
        swept.finished = true;
        self.metrics.orphan_sweep_finished();
        Ok(swept)
    }

    /// Sweeps at start and then every interval, until aborted; a sweep
    /// that could not finish is tried again sooner.
    pub async fn run(self) {
        let mut cursor = Cursor::default();
        loop {
            let wait = match self.once(&mut cursor).await {
                Ok(swept) => {
                    if swept.removed > 0 {
                        tracing::info!(
                            listed = swept.listed,
                            removed = swept.removed,
                            "orphan sweep removed blobs without a record"
                        );
                    } else {
                        tracing::debug!(listed = swept.listed, "orphan sweep: nothing to remove");
                    }
                    self.config.interval
                }
                Err(e) => {
                    tracing::debug!(error = %crate::error::Chain(&e), "orphan sweep stopped; trying again");
                    RETRY.min(self.config.interval)
                }
            };
            rt::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_video_and_what_they_are() {
        assert_eq!(video_of("originals/v1"), Some(("v1", Kind::Original)));
        assert_eq!(
            video_of("hls/v1/480p/seg_00001.ts"),
            Some(("v1", Kind::Hls))
        );
        assert_eq!(video_of("hls/v1/master.m3u8"), Some(("v1", Kind::Hls)));
        assert_eq!(video_of("thumbs/v1.jpg"), Some(("v1", Kind::Thumbnail)));
        for other in [
            "thumbs/v1.png",
            "originals/v1/x",
            "hls/v1",
            "other/v1",
            "originals/v.1",
            "thumbs/.jpg",
        ] {
            assert_eq!(video_of(other), None, "{other}");
        }
    }

    #[test]
    fn settings_have_bounds() {
        assert!(Config::default().validate().is_ok());
        let zero = Config {
            interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
        let long = Config {
            grace: MAX_GRACE + Duration::from_secs(1),
            ..Config::default()
        };
        assert!(long.validate().is_err());
        let now = Config {
            grace: Duration::ZERO,
            ..Config::default()
        };
        assert!(now.validate().is_ok(), "a grace of 0 suits one instance");
    }

    #[test]
    fn a_commit_is_marked_until_its_guard_drops() {
        let committing = Committing::default();
        let guard = committing.begin("v1");
        assert!(committing.contains("v1"));
        assert!(!committing.contains("v2"));
        drop(guard);
        assert!(!committing.contains("v1"));
    }
}
