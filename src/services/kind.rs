//! The nine services and their default ports.

use std::fmt;

/// One of StreamGate's nine services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServiceKind {
    /// HTTP front door.
    ApiGateway,
    /// Receives uploads.
    Upload,
    /// Runs ffmpeg.
    Transcoder,
    /// Serves originals and HLS.
    Streaming,
    /// Video records.
    Metadata,
    /// TTL cache.
    Cache,
    /// Users and tokens.
    Auth,
    /// Job queue.
    Worker,
    /// Health and alerts.
    Monitor,
}

impl ServiceKind {
    /// All nine, in start-up order (dependencies first, the gateway last).
    pub const ALL: [ServiceKind; 9] = [
        Self::Auth,
        Self::Cache,
        Self::Metadata,
        Self::Upload,
        Self::Transcoder,
        Self::Worker,
        Self::Streaming,
        Self::Monitor,
        Self::ApiGateway,
    ];

    /// The registry name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiGateway => "api-gateway",
            Self::Upload => "upload",
            Self::Transcoder => "transcoder",
            Self::Streaming => "streaming",
            Self::Metadata => "metadata",
            Self::Cache => "cache",
            Self::Auth => "auth",
            Self::Worker => "worker",
            Self::Monitor => "monitor",
        }
    }

    /// What it does, in a few words (for `--help`).
    #[must_use]
    pub fn summary(self) -> &'static str {
        match self {
            Self::ApiGateway => "the HTTP API: accounts, uploads, playback",
            Self::Upload => "receives uploads into the blob store",
            Self::Transcoder => "turns originals into HLS renditions with ffmpeg",
            Self::Streaming => "serves byte ranges of originals and HLS from the blob store",
            Self::Metadata => "the video catalog and its state machine",
            Self::Cache => "a TTL, byte-bounded cache",
            Self::Auth => "accounts, access and refresh tokens, service tokens",
            Self::Worker => "the job queue that drives transcoding",
            Self::Monitor => "health of every service, alerts",
        }
    }

    /// Its port when `--port-offset` is 0.
    #[must_use]
    pub fn default_port(self) -> u16 {
        match self {
            Self::ApiGateway => 9090,
            Self::Upload => 9091,
            Self::Transcoder => 9092,
            Self::Streaming => 9093,
            Self::Metadata => 9005,
            Self::Cache => 9006,
            Self::Auth => 9007,
            Self::Worker => 9008,
            Self::Monitor => 9009,
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nine_distinct_names_and_ports() {
        let names: HashSet<_> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let ports: HashSet<_> = ServiceKind::ALL.iter().map(|k| k.default_port()).collect();
        assert_eq!((names.len(), ports.len()), (9, 9));
        assert_eq!(ServiceKind::ApiGateway.default_port(), 9090);
        assert_eq!(ServiceKind::Metadata.default_port(), 9005);
    }
}
