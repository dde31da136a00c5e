//! HLS text the transcoder writes or reads: the master playlist, the model's
//! media playlists, `#EXTINF` sums, and ffmpeg's `-progress` lines.

use std::fmt::Write as _;

use crate::services::media::Profile;

/// One rendition as produced: its profile and the actual frame size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendition {
    /// The profile it was made with.
    pub profile: Profile,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
}

impl Rendition {
    /// `profile` scaled from a `src_width` x `src_height` source: never
    /// above the source height, width keeping the aspect ratio, both even
    /// (as ffmpeg's `scale=-2:H` computes them).
    #[must_use]
    pub fn scaled(profile: Profile, src_width: u32, src_height: u32) -> Self {
        let height = even(profile.height.min(src_height).max(2));
        let width = if src_width == 0 || src_height == 0 {
            profile.width
        } else {
            let w = (u64::from(height) * u64::from(src_width) + u64::from(src_height))
                / (2 * u64::from(src_height))
                * 2;
            u32::try_from(w).unwrap_or(profile.width).max(2)
        };
        Self {
            profile,
            width,
            height,
        }
    }

    /// The rendition's peak bandwidth for the master playlist, bit/s.
    #[must_use]
    pub fn bandwidth(&self) -> u64 {
        (u64::from(self.profile.video_kbps) + u64::from(self.profile.audio_kbps)) * 1000
    }
}

fn even(n: u32) -> u32 {
    n & !1
}

/// The master playlist over `renditions` (each at `<name>/index.m3u8`).
#[must_use]
pub fn master_playlist(renditions: &[Rendition]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    for r in renditions {
        let _ = writeln!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},RESOLUTION={}x{}\n{}/index.m3u8",
            r.bandwidth(),
            r.width,
            r.height,
            r.profile.name
        );
    }
    out
}

/// A VOD media playlist of `segments` (name, seconds).
#[must_use]
pub fn media_playlist(segments: &[(&str, f64)]) -> String {
    let target = segments
        .iter()
        .map(|(_, secs)| secs.ceil())
        .fold(1.0_f64, f64::max);
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target:.0}\n\
         #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    );
    for (name, secs) in segments {
        let _ = writeln!(out, "#EXTINF:{secs:.6},\n{name}");
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The sum of the `#EXTINF` durations of a media playlist, in seconds.
#[must_use]
pub fn total_seconds(playlist: &str) -> f64 {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .sum()
}

/// The segment file names a media playlist refers to, in order.
#[must_use]
pub fn segment_names(playlist: &str) -> Vec<&str> {
    playlist
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The encoded position, in microseconds, of an ffmpeg `-progress` line
/// (`out_time_us=`; `out_time_ms=` is microseconds too, despite its name).
#[must_use]
pub fn progress_us(line: &str) -> Option<u64> {
    let value = line
        .strip_prefix("out_time_us=")
        .or_else(|| line.strip_prefix("out_time_ms="))?;
    value.trim().parse().ok()
}

/// Percent done of a file of `duration_ms` at position `us` (0..=100).
#[must_use]
pub fn percent(us: u64, duration_ms: u64) -> u32 {
    if duration_ms == 0 {
        return 0;
    }
    let pct = (us / 1000).saturating_mul(100) / duration_ms;
    u32::try_from(pct.min(100)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::media::{PROFILES, profile};

    #[test]
    fn master_lists_every_rendition_with_bandwidth_and_size() {
        let r = Rendition::scaled(PROFILES[0], 320, 240);
        assert_eq!((r.width, r.height), (320, 240));
        let text = master_playlist(&[r]);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n\
             #EXT-X-STREAM-INF:BANDWIDTH=464000,RESOLUTION=320x240\n240p/index.m3u8\n"
        );
    }

    #[test]
    fn scaling_keeps_aspect_and_evenness() {
        let hd = Rendition::scaled(profile("480p").unwrap(), 1920, 1080);
        assert_eq!((hd.width, hd.height), (854, 480));
        let small = Rendition::scaled(PROFILES[0], 177, 101);
        assert_eq!((small.width, small.height), (176, 100));
        assert_eq!(Rendition::scaled(PROFILES[0], 0, 0).height, 2);
    }

    #[test]
    fn playlists_and_progress_parse() {
        let p = media_playlist(&[("seg_00000.ts", 4.0), ("seg_00001.ts", 1.5)]);
        assert!((total_seconds(&p) - 5.5).abs() < 1e-9);
        assert_eq!(segment_names(&p), ["seg_00000.ts", "seg_00001.ts"]);
        assert!(p.contains("#EXT-X-TARGETDURATION:4\n"));
        assert_eq!(progress_us("out_time_us=1500000"), Some(1_500_000));
        assert_eq!(progress_us("out_time_ms=20"), Some(20));
        assert_eq!(progress_us("out_time=00:00:01.5"), None);
        assert_eq!(progress_us("out_time_us=N/A"), None);
        assert_eq!(percent(1_000_000, 2000), 50);
        assert_eq!(percent(u64::MAX, 2000), 100);
        assert_eq!(percent(5, 0), 0);
    }
}
