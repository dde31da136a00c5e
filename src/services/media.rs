//! Conventions the pipeline's services share: id rules, where each blob of
//! a video lives, the rendition profiles, and the transcode job of a video.

/// Longest id (video, upload, job, session).
pub const MAX_ID_LEN: usize = 64;

/// True for 1..=64 chars of `[A-Za-z0-9_-]` (ids of videos, uploads, jobs).
#[must_use]
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// `Ok` for a valid id, else a message naming `field`.
///
/// # Errors
/// A message for an INVALID_ARGUMENT status.
pub fn check_id(field: &str, s: &str) -> Result<(), String> {
    if is_id(s) {
        Ok(())
    } else {
        Err(format!("{field}: expected 1..=64 chars of [A-Za-z0-9_-]"))
    }
}

/// True for a rendition name: 1..=32 bytes of `[A-Za-z0-9_-]`.
#[must_use]
pub fn is_rendition(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && is_id(s)
}

/// True for an HLS segment file name: 1..=255 bytes of `[A-Za-z0-9_.-]`,
/// not `.` or `..`.
#[must_use]
pub fn is_segment_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Blob key of a video's original.
#[must_use]
pub fn original_key(video_id: &str) -> String {
    format!("originals/{video_id}")
}

/// Blob key prefix of a video's HLS tree.
#[must_use]
pub fn hls_prefix(video_id: &str) -> String {
    format!("hls/{video_id}")
}

/// Blob key of a video's HLS master playlist (written last: its presence
/// means every rendition is complete).
#[must_use]
pub fn master_key(video_id: &str) -> String {
    format!("hls/{video_id}/master.m3u8")
}

/// Blob key of a rendition's media playlist.
#[must_use]
pub fn playlist_key(video_id: &str, rendition: &str) -> String {
    format!("hls/{video_id}/{rendition}/index.m3u8")
}

/// Blob key of one segment of a rendition.
#[must_use]
pub fn segment_key(video_id: &str, rendition: &str, segment: &str) -> String {
    format!("hls/{video_id}/{rendition}/{segment}")
}

/// Blob key of a video's thumbnail (JPEG).
#[must_use]
pub fn thumbnail_key(video_id: &str) -> String {
    format!("thumbs/{video_id}.jpg")
}

/// The blob keys (and trees) that belong to a video.
#[must_use]
pub fn video_blobs(video_id: &str) -> [String; 3] {
    [
        original_key(video_id),
        hls_prefix(video_id),
        thumbnail_key(video_id),
    ]
}

/// Id (and idempotency key) of the transcode job of a video: one per
/// video. Ids too long for the prefix are replaced by their SHA-256, so
/// two long ids never share a job.
#[must_use]
pub fn transcode_job_id(video_id: &str) -> String {
    use sha2::Digest as _;
    const PREFIX: &str = "transcode-";
    if PREFIX.len() + video_id.len() <= MAX_ID_LEN {
        format!("{PREFIX}{video_id}")
    } else {
        let digest = hex(&sha2::Sha256::digest(video_id.as_bytes()));
        format!("{PREFIX}{}", &digest[..MAX_ID_LEN - PREFIX.len()])
    }
}

/// Job kind that transcodes a video.
pub const TRANSCODE_JOB: &str = "transcode";

/// One output profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Rendition name.
    pub name: &'static str,
    /// Width in pixels (16:9).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Audio bitrate, kbit/s.
    pub audio_kbps: u32,
}

/// The renditions produced, ascending by height.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "240p",
        width: 426,
        height: 240,
        video_kbps: 400,
        audio_kbps: 64,
    },
    Profile {
        name: "480p",
        width: 854,
        height: 480,
        video_kbps: 1200,
        audio_kbps: 96,
    },
    Profile {
        name: "720p",
        width: 1280,
        height: 720,
        video_kbps: 2800,
        audio_kbps: 128,
    },
];

/// The profile named `name`.
#[must_use]
pub fn profile(name: &str) -> Option<Profile> {
    PROFILES.iter().copied().find(|p| p.name == name)
}

/// Profiles for a source `source_height` pixels high: those not above it;
/// a source smaller than every profile gets the smallest (scaled to the
/// source height, never up).
#[must_use]
pub fn profiles_for(source_height: u32) -> Vec<Profile> {
    let fit: Vec<Profile> = PROFILES
        .iter()
        .copied()
        .filter(|p| p.height <= source_height)
        .collect();
    if fit.is_empty() {
        vec![PROFILES[0]]
    } else {
        fit
    }
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert!(is_id("abc_DEF-123"));
        for bad in ["", "a/b", "..", "a b", "a\0", &"x".repeat(65)] {
            assert!(!is_id(bad), "{bad:?}");
        }
        for key in video_blobs("v1") {
            crate::blob::check_key(&key).expect("a valid key");
        }
        crate::blob::check_key(&segment_key("v1", "480p", "seg_00001.ts")).expect("key");
        assert!(is_id(&transcode_job_id(&"v".repeat(64))));
        assert_ne!(
            transcode_job_id(&format!("{}a", "v".repeat(60))),
            transcode_job_id(&format!("{}b", "v".repeat(60)))
        );
    }

    #[test]
    fn renditions_never_exceed_the_source() {
        assert_eq!(profiles_for(1080).len(), 3);
        assert_eq!(
            profiles_for(480).iter().map(|p| p.name).collect::<Vec<_>>(),
            ["240p", "480p"]
        );
        assert_eq!(profiles_for(100), vec![PROFILES[0]]);
        assert_eq!(hex(&[0, 171, 255]), "00abff");
    }
}
