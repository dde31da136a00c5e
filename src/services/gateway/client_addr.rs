//! The end user's IP address, for the auth service's lock-out: the peer of
//! the HTTP connection, or, when that peer is a trusted proxy
//! (`--trusted-proxies`), the address the proxies recorded in
//! `X-Forwarded-For`. Without trusted proxies the header is ignored: anyone
//! can write it.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use http::HeaderMap;
use http::request::Parts;
use ipnet::IpNet;

use crate::rt::transport;

/// Most `X-Forwarded-For` entries looked at (the header is from outside).
pub const MAX_FORWARDED_HOPS: usize = 32;

/// Parses `--trusted-proxies`: comma-separated IP addresses or CIDR
/// networks (`10.0.0.0/8`, `::1`); empty for none.
///
/// # Errors
/// The entry that is neither.
pub fn parse_trusted_proxies(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{e:?} is not an IP address or CIDR network"))
        })
        .collect()
}

fn trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|n| n.contains(&ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The client's address given the connection's `peer` and the request's
/// `headers`: the peer unless it is a trusted proxy; then, walking
/// `X-Forwarded-For` from the right (the nearest hop first), the first
/// address that is not a trusted proxy (or the leftmost, if all are). An
/// entry that does not parse ends the walk at the last trusted hop: the
/// proxies wrote what is right of it, anyone could have written the rest.
#[must_use]
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted(proxies, peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = canonical(ip);
        if !trusted(proxies, client) {
            break;
        }
    }
    Some(client)
}

/// The trusted proxies of a router, shared by its handlers.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub std::sync::Arc<[IpNet]>);

/// Extracts the client's address ([`client_ip`]); `None` when the
/// transport does not know the peer (in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// As the auth protocol's `client_address`: text, or empty if unknown.
    #[must_use]
    pub fn to_field(self) -> String {
        self.0.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    TrustedProxies: axum::extract::FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let proxies = <TrustedProxies as axum::extract::FromRef<S>>::from_ref(state);
        let peer = transport::peer_addr(&parts.extensions).map(|a| a.ip());
        Ok(Self(client_ip(peer, &parts.headers, &proxies.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_trusted() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            client_ip(Some(ip("198.51.100.7")), &h, &[]),
            Some(ip("198.51.100.7"))
        );
        let proxies = parse_trusted_proxies("10.0.0.0/8").expect("parse");
        assert_eq!(
            client_ip(Some(ip("198.51.100.7")), &h, &proxies),
            Some(ip("198.51.100.7")),
            "a peer outside the list cannot pick its address"
        );
        assert_eq!(
            client_ip(Some(ip("10.1.2.3")), &h, &proxies),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(client_ip(None, &h, &proxies), None);
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop() {
        let proxies = parse_trusted_proxies("10.0.0.1, 10.0.0.2,::1").expect("parse");
        // The client forged "1.1.1.1"; the proxies appended what they saw.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &h, &proxies),
            Some(ip("203.0.113.9"))
        );
        // Garbage right of the client: the last trusted hop is the answer.
        let h = xff(&["203.0.113.9, garbage, 10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &h, &proxies),
            Some(ip("10.0.0.2"))
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(Some(ip("::ffff:10.0.0.1")), &HeaderMap::new(), &proxies),
            Some(ip("10.0.0.1"))
        );
        // Only trusted hops: the leftmost.
        let h = xff(&["10.0.0.2"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &h, &proxies),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn the_option_parses_addresses_and_networks() {
        assert_eq!(
            parse_trusted_proxies("").expect("empty"),
            Vec::<IpNet>::new()
        );
        assert_eq!(
            parse_trusted_proxies("127.0.0.1,fd00::/8")
                .expect("two")
                .len(),
            2
        );
        let e = parse_trusted_proxies("10.0.0.0/8,proxy.local").expect_err("a name");
        assert!(e.contains("proxy.local"), "{e}");
    }
}
