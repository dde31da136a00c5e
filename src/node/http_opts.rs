//! The public HTTP edge's options (`--http-*`): what one client may hold of
//! the gateway, in connections, requests in flight and time. Read by the
//! api-gateway only; every other service ignores them.

use std::path::PathBuf;
use std::time::Duration;

use crate::rt::transport::{EdgeLimits, EdgeTls};
use crate::services::gateway::cors;
use crate::services::gateway::limit::RequestLimits;
use crate::services::gateway::rate::{Rate, Rates};

/// A count option: at least 1.
fn count() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=1_000_000)
}

/// A duration option in milliseconds: at least 1 ms, at most a day.
fn millis() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=86_400_000)
}

#[allow(clippy::cast_possible_truncation)] // the parsers bound them to 1_000_000
fn usize_of(n: u64) -> usize {
    n as usize
}

/// How much of the gateway one client may hold (api-gateway only).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Public HTTP edge (api-gateway)")]
pub struct HttpOpts {
    /// Connections open at once, in all; past it an idle connection (the
    /// oldest) is closed to make room, or, when none is idle, the new one is
    /// answered 503 (a JSON body) and closed.
    #[arg(long, env = "STREAMGATE_HTTP_MAX_CONNECTIONS", default_value_t = EdgeLimits::MAX_CONNECTIONS as u64, value_parser = count())]
    pub http_max_connections: u64,
    /// Connections open at once from one client address (an IPv6 client: its
    /// /64); past it a new one is answered 429 and closed.
    #[arg(long, env = "STREAMGATE_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = EdgeLimits::MAX_CONNECTIONS_PER_CLIENT as u64, value_parser = count())]
    pub http_max_connections_per_client: u64,
    /// Longest time from the first byte of a request head to its last, in
    /// ms; then the connection is closed.
    #[arg(long, env = "STREAMGATE_HTTP_HEADER_TIMEOUT_MS", default_value_t = EdgeLimits::HEADER_TIMEOUT.as_millis() as u64, value_parser = millis())]
    pub http_header_timeout_ms: u64,
    /// How long a connection with no request in flight stays open, in ms.
    #[arg(long, env = "STREAMGATE_HTTP_IDLE_TIMEOUT_MS", default_value_t = EdgeLimits::IDLE_TIMEOUT.as_millis() as u64, value_parser = millis())]
    pub http_idle_timeout_ms: u64,
    /// How long a response may wait for the client to take bytes, in ms;
    /// then the connection is cut (a client that stops reading).
    #[arg(long, env = "STREAMGATE_HTTP_SEND_TIMEOUT_MS", default_value_t = EdgeLimits::SEND_TIMEOUT.as_millis() as u64, value_parser = millis())]
    pub http_send_timeout_ms: u64,
    /// How long a request body may take to arrive whole, in ms; then 408
    /// (uploads instead: 60 s without a byte).
    #[arg(long, env = "STREAMGATE_HTTP_BODY_TIMEOUT_MS", default_value_t = RequestLimits::BODY_TIMEOUT.as_millis() as u64, value_parser = millis())]
    pub http_body_timeout_ms: u64,
    /// API requests (all but media) in flight at once, in all; past it 503.
    #[arg(long, env = "STREAMGATE_HTTP_API_IN_FLIGHT", default_value_t = RequestLimits::API_IN_FLIGHT as u64, value_parser = count())]
    pub http_api_in_flight: u64,
    /// Media requests (originals, HLS, thumbnails) in flight at once, in
    /// all; past it 503.
    #[arg(long, env = "STREAMGATE_HTTP_MEDIA_IN_FLIGHT", default_value_t = RequestLimits::MEDIA_IN_FLIGHT as u64, value_parser = count())]
    pub http_media_in_flight: u64,
    /// API requests in flight from one client address; past it 429.
    #[arg(long, env = "STREAMGATE_HTTP_CLIENT_API_IN_FLIGHT", default_value_t = RequestLimits::CLIENT_API_IN_FLIGHT as u64, value_parser = count())]
    pub http_client_api_in_flight: u64,
    /// Media requests in flight from one client address; past it 429.
    #[arg(long, env = "STREAMGATE_HTTP_CLIENT_MEDIA_IN_FLIGHT", default_value_t = RequestLimits::CLIENT_MEDIA_IN_FLIGHT as u64, value_parser = count())]
    pub http_client_media_in_flight: u64,
    /// API requests in flight for one account; past it 429.
    #[arg(long, env = "STREAMGATE_HTTP_ACCOUNT_API_IN_FLIGHT", default_value_t = RequestLimits::ACCOUNT_API_IN_FLIGHT as u64, value_parser = count())]
    pub http_account_api_in_flight: u64,
    /// Media requests in flight for one account; past it 429.
    #[arg(long, env = "STREAMGATE_HTTP_ACCOUNT_MEDIA_IN_FLIGHT", default_value_t = RequestLimits::ACCOUNT_MEDIA_IN_FLIGHT as u64, value_parser = count())]
    pub http_account_media_in_flight: u64,
    /// TLS on the public port: the certificate chain (PEM, leaf first).
    /// Read again when it changes (a renewal needs no restart). Without it
    /// the port speaks plain HTTP (behind a TLS-terminating proxy, say).
    #[arg(long, env = "STREAMGATE_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key of `--http-tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STREAMGATE_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Origins whose web pages may call the API (CORS): comma-separated
    /// `https://host[:port]`, or `*` for any; empty (the default): none.
    #[arg(long, env = "STREAMGATE_HTTP_CORS_ORIGINS", default_value = "", value_parser = cors::parse)]
    pub http_cors_origins: cors::Origins,
    /// Sign-ups per client address: `N/s`, `N/min`, `N/h` or
    /// `N/<seconds>s` (N at once at most, then one each period/N); past it
    /// 429 with Retry-After.
    #[arg(long, env = "STREAMGATE_HTTP_SIGNUP_RATE", default_value_t = Rates::SIGNUP)]
    pub http_signup_rate: Rate,
    /// Log-ins per client address (the auth service also locks out an
    /// email and address after failed attempts).
    #[arg(long, env = "STREAMGATE_HTTP_LOGIN_RATE", default_value_t = Rates::LOGIN)]
    pub http_login_rate: Rate,
    /// Token refreshes per client address.
    #[arg(long, env = "STREAMGATE_HTTP_REFRESH_RATE", default_value_t = Rates::REFRESH)]
    pub http_refresh_rate: Rate,
    /// Uploads started (one-shot and tus creations) per account.
    #[arg(long, env = "STREAMGATE_HTTP_UPLOAD_RATE", default_value_t = Rates::UPLOAD)]
    pub http_upload_rate: Rate,
    /// Playback URLs made (`POST /v1/videos/{id}/playback`) per account.
    #[arg(long, env = "STREAMGATE_HTTP_PLAYBACK_RATE", default_value_t = Rates::PLAYBACK)]
    pub http_playback_rate: Rate,
    /// The streaming service's media port (read by streaming): signed
    /// playback URLs served from its own file store, originals and
    /// segments by sendfile(2), so that no gateway relays the bytes; plain
    /// HTTP/1.1 under the limits above. Off unless given.
    #[arg(long, env = "STREAMGATE_MEDIA_LISTEN")]
    pub media_listen: Option<std::net::SocketAddr>,
    /// Where players reach the media port (read by the gateway): signed
    /// playback URLs point there, e.g. `https://media.example.com`;
    /// without it they are paths on the gateway.
    #[arg(long, env = "STREAMGATE_MEDIA_URL", value_parser = media_url)]
    pub media_url: Option<String>,
}

/// A `--media-url`: an `http` or `https` URL with a host, no query or
/// fragment; kept without a trailing `/`.
fn media_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("expected an http:// or https:// URL".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL names no host".to_owned());
    }
    if s.contains(['?', '#']) {
        return Err("a query or fragment would end up inside every playback URL".to_owned());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

impl Default for HttpOpts {
    /// The options' defaults: the limits' own.
    fn default() -> Self {
        Self::from_limits(
            EdgeLimits::default(),
            RequestLimits::default(),
            Rates::default(),
        )
    }
}

impl HttpOpts {
    /// The options that give `edge`, `requests` and `rates`.
    #[must_use]
    pub fn from_limits(edge: EdgeLimits, requests: RequestLimits, rates: Rates) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            http_max_connections: edge.max_connections as u64,
            http_max_connections_per_client: edge.max_connections_per_client as u64,
            http_header_timeout_ms: millis(edge.header_timeout),
            http_idle_timeout_ms: millis(edge.idle_timeout),
            http_send_timeout_ms: millis(edge.send_timeout),
            http_body_timeout_ms: millis(requests.body_timeout),
            http_api_in_flight: requests.api_in_flight as u64,
            http_media_in_flight: requests.media_in_flight as u64,
            http_client_api_in_flight: requests.client_api_in_flight as u64,
            http_client_media_in_flight: requests.client_media_in_flight as u64,
            http_account_api_in_flight: requests.account_api_in_flight as u64,
            http_account_media_in_flight: requests.account_media_in_flight as u64,
            http_tls_cert: None,
            http_tls_key: None,
            http_cors_origins: cors::Origins::None,
            http_signup_rate: rates.signup,
            http_login_rate: rates.login,
            http_refresh_rate: rates.refresh,
            http_upload_rate: rates.upload,
            http_playback_rate: rates.playback,
            media_listen: None,
            media_url: None,
        }
    }

    /// The rates of the edge's costly actions.
    #[must_use]
    pub fn rates(&self) -> Rates {
        Rates {
            signup: self.http_signup_rate,
            login: self.http_login_rate,
            refresh: self.http_refresh_rate,
            upload: self.http_upload_rate,
            playback: self.http_playback_rate,
        }
    }

    /// The gateway's settings of the public edge these options give (the
    /// streaming service's media port keeps them too).
    #[must_use]
    pub fn gateway(
        &self,
        max_upload_bytes: u64,
        trusted_proxies: &[ipnet::IpNet],
    ) -> crate::services::gateway::Config {
        crate::services::gateway::Config {
            max_upload_bytes,
            trusted_proxies: trusted_proxies.to_vec(),
            limits: self.requests(),
            edge: self.edge(),
            tls: self.tls(),
            cors: self.http_cors_origins.clone(),
            rates: self.rates(),
            media_url: self.media_url.clone(),
            ..crate::services::gateway::Config::default()
        }
    }

    /// TLS on the public port, when both files are named.
    #[must_use]
    pub fn tls(&self) -> Option<EdgeTls> {
        Some(EdgeTls {
            cert: self.http_tls_cert.clone()?,
            key: self.http_tls_key.clone()?,
        })
    }

    /// The edge server's limits.
    #[must_use]
    pub fn edge(&self) -> EdgeLimits {
        EdgeLimits {
            max_connections: usize_of(self.http_max_connections),
            max_connections_per_client: usize_of(self.http_max_connections_per_client),
            header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
            send_timeout: Duration::from_millis(self.http_send_timeout_ms),
        }
    }

    /// The router's limits.
    #[must_use]
    pub fn requests(&self) -> RequestLimits {
        RequestLimits {
            api_in_flight: usize_of(self.http_api_in_flight),
            media_in_flight: usize_of(self.http_media_in_flight),
            client_api_in_flight: usize_of(self.http_client_api_in_flight),
            client_media_in_flight: usize_of(self.http_client_media_in_flight),
            account_api_in_flight: usize_of(self.http_account_api_in_flight),
            account_media_in_flight: usize_of(self.http_account_media_in_flight),
            body_timeout: Duration::from_millis(self.http_body_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        http: HttpOpts,
    }

    #[test]
    fn the_defaults_are_the_limits_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(cli.http.edge(), EdgeLimits::default());
        assert_eq!(cli.http.requests(), RequestLimits::default());
        assert_eq!(cli.http.rates(), Rates::default());
        assert_eq!(cli.http, HttpOpts::default());
    }

    #[test]
    fn options_set_the_limits_and_zero_is_refused() {
        let cli = Cli::try_parse_from([
            "x",
            "--http-send-timeout-ms",
            "1500",
            "--http-account-media-in-flight",
            "3",
            "--http-signup-rate",
            "5/min",
        ])
        .expect("valid");
        assert_eq!(
            cli.http.rates().signup,
            Rate::new(5, Duration::from_secs(60))
        );
        assert!(Cli::try_parse_from(["x", "--http-login-rate", "0/min"]).is_err());
        assert_eq!(cli.http.edge().send_timeout, Duration::from_millis(1500));
        assert_eq!(cli.http.requests().account_media_in_flight, 3);
        for zero in ["--http-max-connections", "--http-body-timeout-ms"] {
            assert!(Cli::try_parse_from(["x", zero, "0"]).is_err(), "{zero} 0");
        }
    }
}
