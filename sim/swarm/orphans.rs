//! The liveness phase's storage check: once the catalog has settled, no
//! blob may stay without a record. Every original, HLS tree and thumbnail
//! in the shared blob store must belong to a video the catalog lists; one
//! that does not (an upload that crashed between its blob and its record, a
//! deleted video whose MetadataDeleted was lost, a transcode that finished
//! after its video was deleted) must be gone within the sweep's grace and [`ORPHAN_SLACK`]: the
//! upload service's orphan sweep removes it.

use std::collections::BTreeSet;
use std::time::Duration;

use streamgate::blob::memory::MemoryBlobStore;
use streamgate::blob::{BlobStore as _, MAX_LIST};
use streamgate::rt;

use super::timeline::{Kind, Timeline};

/// How long after the catalog settled an orphan may remain beyond the
/// sweep's grace: its interval (`cluster::orphan_sweep`, 5 s), a transcode
/// still running for a deleted video, and slack (with the 20 s grace of
/// one upload instance: 60 s).
pub const ORPHAN_SLACK: Duration = Duration::from_secs(40);

/// The blob prefixes that hold a video's files.
const PREFIXES: [&str; 3] = ["originals", "hls", "thumbs"];

/// The video a blob key belongs to: `originals/<id>`, `hls/<id>/...`,
/// `thumbs/<id>.jpg`.
fn video_of(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    match (parts.next()?, parts.next()?) {
        ("originals" | "hls", id) => Some(id),
        ("thumbs", file) => file.strip_suffix(".jpg"),
        _ => None,
    }
}

/// Every blob key whose video is not in `catalog`.
async fn orphans(blobs: &MemoryBlobStore, catalog: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in PREFIXES {
        let mut after: Option<String> = None;
        loop {
            let page = blobs
                .list(prefix, after.as_deref(), MAX_LIST)
                .await
                .expect("the memory store lists");
            for blob in &page {
                if !video_of(&blob.key).is_some_and(|id| catalog.contains(id)) {
                    found.push(blob.key.clone());
                }
            }
            if page.len() < MAX_LIST {
                break;
            }
            after = page.last().map(|b| b.key.clone());
        }
    }
    found
}

/// Waits until no blob outside `catalog` (every video id the settled
/// catalog lists) remains; a violation if one is still there
/// the sweep's `grace` plus [`ORPHAN_SLACK`] after the call.
pub async fn check(
    blobs: &MemoryBlobStore,
    catalog: &BTreeSet<String>,
    grace: Duration,
    tl: &Timeline,
) {
    let start = tl.elapsed();
    let bound = grace + ORPHAN_SLACK;
    loop {
        let left = orphans(blobs, catalog).await;
        if left.is_empty() {
            streamgate::rt::coverage::hit(super::coverage::ORPHANS);
            tl.print(
                "swarm",
                Kind::Check,
                format_args!(
                    "no blob without a record ({:?} after settling)",
                    tl.elapsed() - start
                ),
            );
            return;
        }
        if tl.elapsed() - start > bound {
            tl.violated(
                "swarm",
                format_args!(
                    "{} blobs without a record {bound:?} after settling: {:?}",
                    left.len(),
                    &left[..left.len().min(8)]
                ),
            );
        }
        rt::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys_name_their_video() {
        assert_eq!(video_of("originals/v1"), Some("v1"));
        assert_eq!(video_of("hls/v1/480p/seg_00001.ts"), Some("v1"));
        assert_eq!(video_of("thumbs/v1.jpg"), Some("v1"));
        assert_eq!(video_of("thumbs/v1.png"), None);
        assert_eq!(video_of("other/v1"), None);
    }
}
