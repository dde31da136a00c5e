//! Consul's JSON shapes and string formats, and how a [`ServiceInfo`] maps to them.
//! Pure functions: no I/O, so the encoding is unit-tested on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::{CheckKind, HealthCheck, RegistryError, ServiceInfo};

/// Reserved `Meta` key carrying the instance's [`HealthCheck`] through
/// discovery (Consul's health endpoint does not return check definitions).
pub const CHECK_META_KEY: &str = "streamgate_check";
/// Real Consul raises `DeregisterCriticalServiceAfter` below this to this
/// (agent docs, "DeregisterCriticalServiceAfter ... minimum timeout is 1 minute").
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Check given to foreign registrations (no [`CHECK_META_KEY`]) on discovery.
pub const FOREIGN_CHECK_TTL: Duration = Duration::from_secs(10);
/// Consul's limits on `Meta` (services docs: 64 pairs, keys 128, values 512).
const META_PAIRS_MAX: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;

/// Body of `PUT /v1/agent/service/register`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterBody {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub check: CheckBody,
}

/// The embedded `Check` of a registration.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckBody {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    /// Real Consul starts checks critical unless told otherwise.
    pub status: &'static str,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `host:port` of a gRPC health check.
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Plain-text gRPC (the services serve no TLS).
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "Option::is_none")]
    pub grpc_use_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub deregister_critical_service_after: String,
}

/// One element of `GET /v1/health/service/:name`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    #[serde(default)]
    pub node: Option<NodeEntry>,
    pub service: ServiceEntry,
    /// The node's checks and the service's (Consul returns both).
    #[serde(default)]
    pub checks: Option<Vec<CheckEntry>>,
}

/// One check of a health entry (only its status matters here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckEntry {
    #[serde(default)]
    pub status: String,
}

impl HealthEntry {
    /// Whether discovery hands the instance out: no check critical (or
    /// anything else Consul may report, such as `maintenance`), warnings
    /// included, as the registry contract says. Consul's `?passing` would
    /// drop warnings too, hence the filtering here.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.checks
            .iter()
            .flatten()
            .all(|c| c.status == "passing" || c.status == "warning")
    }
}

/// The `Node` of a health entry (only what the mapping needs).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeEntry {
    #[serde(default)]
    pub address: String,
}

/// The `Service` of a health entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

/// Consul's id of a service's embedded check.
#[must_use]
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// Formats `d` as a Go duration string Consul parses ("2s", "1500ms").
/// Sub-millisecond parts round up, so a positive duration never becomes 0.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (one path segment).
#[must_use]
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn nanos(d: Duration, what: &str) -> Result<u64, RegistryError> {
    u64::try_from(d.as_nanos()).map_err(|_| RegistryError::Invalid(format!("{what} too long")))
}

/// Encodes `check` as the [`CHECK_META_KEY`] value:
/// `v1;ttl;<interval ns>;<timeout ns>;<deregister ns>`, `v1;http;...;<url>`
/// or `v1;grpc;...;<host:port>`.
///
/// # Errors
/// [`RegistryError::Invalid`] when it does not fit Consul's 512-character value.
pub fn encode_check(check: &HealthCheck) -> Result<String, RegistryError> {
    let (kind, url) = match &check.kind {
        CheckKind::Ttl => ("ttl", ""),
        CheckKind::Http { url } => ("http", url.as_str()),
        CheckKind::Grpc { target } => ("grpc", target.as_str()),
    };
    let mut s = format!(
        "v1;{kind};{};{};{}",
        nanos(check.interval, "interval")?,
        nanos(check.timeout, "timeout")?,
        nanos(check.deregister_critical_after, "deregister_critical_after")?
    );
    if !url.is_empty() {
        s.push(';');
        s.push_str(url);
    }
    if s.len() > META_VALUE_MAX {
        return Err(RegistryError::Invalid(
            "check URL too long for Consul Meta".into(),
        ));
    }
    Ok(s)
}

/// Decodes [`encode_check`]'s output; `None` if it is not one.
#[must_use]
pub fn decode_check(s: &str) -> Option<HealthCheck> {
    let mut parts = s.splitn(6, ';');
    if parts.next()? != "v1" {
        return None;
    }
    let kind = parts.next()?;
    let mut dur = || parts.next()?.parse().ok().map(Duration::from_nanos);
    let (interval, timeout, deregister_critical_after) = (dur()?, dur()?, dur()?);
    // An HTTP or gRPC check names what it probes: [`encode_check`] never
    // writes an empty one, so a record with one was not written by it.
    let kind = match (kind, parts.next()) {
        ("ttl", None) => CheckKind::Ttl,
        (_, Some("")) => return None,
        ("http", Some(url)) => CheckKind::Http {
            url: url.to_owned(),
        },
        ("grpc", Some(target)) => CheckKind::Grpc {
            target: target.to_owned(),
        },
        _ => return None,
    };
    Some(HealthCheck {
        kind,
        interval,
        timeout,
        deregister_critical_after,
    })
}

/// The register body for `info` (already [`crate::registry::validate`]d).
///
/// # Errors
/// [`RegistryError::Invalid`] for metadata Consul would refuse, or that
/// uses the reserved key.
pub fn register_body(info: &ServiceInfo) -> Result<RegisterBody, RegistryError> {
    if info.metadata.len() >= META_PAIRS_MAX {
        return Err(RegistryError::Invalid(format!(
            "at most {} metadata entries (Consul allows {META_PAIRS_MAX}, one is reserved)",
            META_PAIRS_MAX - 1
        )));
    }
    for (k, v) in &info.metadata {
        let key_ok = !k.is_empty()
            && k.len() <= META_KEY_MAX
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && !k.starts_with("consul-")
            && k != CHECK_META_KEY;
        if !key_ok {
            return Err(RegistryError::Invalid(format!("metadata key {k:?}")));
        }
        if v.len() > META_VALUE_MAX {
            return Err(RegistryError::Invalid(format!(
                "metadata value of {k:?} too long"
            )));
        }
    }
    let mut meta = info.metadata.clone();
    meta.insert(CHECK_META_KEY.to_owned(), encode_check(&info.check)?);
    let c = &info.check;
    let probe = || {
        (
            Some(format_duration(c.interval)),
            Some(format_duration(c.timeout)),
        )
    };
    let (ttl, http, grpc, (interval, timeout)) = match &c.kind {
        // Consul's TTL is the whole window; ours is interval + grace.
        CheckKind::Ttl => (
            Some(format_duration(c.ttl_expiry())),
            None,
            None,
            (None, None),
        ),
        CheckKind::Http { url } => (None, Some(url.clone()), None, probe()),
        CheckKind::Grpc { target } => (None, None, Some(target.clone()), probe()),
    };
    Ok(RegisterBody {
        id: info.id.clone(),
        name: info.name.clone(),
        address: info.address.clone(),
        port: info.port,
        tags: info.tags.clone(),
        meta,
        check: CheckBody {
            check_id: check_id(&info.id),
            name: format!("{} health", info.name),
            status: "passing",
            ttl,
            http,
            grpc_use_tls: grpc.as_ref().map(|_| false),
            grpc,
            interval,
            timeout,
            deregister_critical_service_after: format_duration(
                c.deregister_critical_after.max(MIN_DEREGISTER_AFTER),
            ),
        },
    })
}

/// Maps one health entry back to the [`ServiceInfo`] that registered it.
#[must_use]
pub fn service_info(entry: HealthEntry) -> ServiceInfo {
    let s = entry.service;
    let mut metadata = s.meta.unwrap_or_default();
    let check = metadata
        .remove(CHECK_META_KEY)
        .and_then(|v| decode_check(&v))
        .unwrap_or_else(|| HealthCheck::ttl(FOREIGN_CHECK_TTL));
    // Consul: an empty service address means "the node's address".
    let address = if s.address.is_empty() {
        entry.node.map(|n| n.address).unwrap_or_default()
    } else {
        s.address
    };
    ServiceInfo {
        id: s.id,
        name: s.service,
        address,
        port: s.port,
        tags: s.tags.unwrap_or_default(),
        metadata,
        check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_go_strings() {
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ms");
    }

    #[test]
    fn checks_round_trip_through_meta() {
        let ttl = HealthCheck::ttl(Duration::from_millis(1234));
        assert_eq!(decode_check(&encode_check(&ttl).unwrap()), Some(ttl));
        let http = HealthCheck {
            kind: CheckKind::Http {
                url: "http://h:1/health;x".into(),
            },
            ..HealthCheck::ttl(Duration::from_secs(3))
        };
        assert_eq!(decode_check(&encode_check(&http).unwrap()), Some(http));
        let grpc = HealthCheck::grpc("10.0.0.5:9006".into(), Duration::from_secs(2));
        assert_eq!(decode_check(&encode_check(&grpc).unwrap()), Some(grpc));
        assert_eq!(decode_check("v1;ttl;1;2"), None);
        // Found by the fuzz target consul_check: an empty URL decoded, and
        // encoded back to a record that does not.
        assert_eq!(decode_check("v1;http;20000000;10;0;"), None);
        assert_eq!(decode_check("v1;grpc;1;2;3;"), None);
        assert_eq!(decode_check("garbage"), None);
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("service:a b/c"), "service%3Aa%20b%2Fc");
    }
}
