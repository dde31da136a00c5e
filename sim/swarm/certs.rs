//! The cluster's certificates on the seeds that run mutual TLS
//! ([`super::faults::IdentityKind::Mtls`]): a CA model that issues every
//! service node a certificate valid for [`VALIDITY`], and a renewer (what
//! cert-manager or an operator's cron does) that issues each node a new
//! one every [`RENEW`], as rewriting its files does in production. The
//! run's safety and liveness phases outlast several lifetimes, so a node
//! whose renewals were lost (or a transport that kept using the first
//! certificate) fails its calls once the first expires, and the liveness
//! check fails. A restarted node keeps its identity: the files outlive the
//! process. The certificates the simulated transport checks are modelled
//! (`streamgate::rt::transport::SimCert`), the handshake is not run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use streamgate::rt::transport::{Mtls, SimCert};
use streamgate::rt::{self, coverage};

use super::timeline::{Kind, Timeline};

/// The cluster CA: every node trusts it alone.
pub const CA: &str = "streamgate-cluster-ca";
/// A CA no node trusts (the intruder's).
pub const ROGUE_CA: &str = "rogue-ca";
/// How long a certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(30);
/// How often every node gets a new one: a third of its life, so a renewal
/// lost (the renewer's node is never faulted, but a slow one would be)
/// still leaves a margin, as cert-manager renews at two thirds.
const RENEW: Duration = Duration::from_secs(10);
/// The property report's name for a round of renewals.
pub const RENEWED: &str = "certificates: every node's renewed";

/// A certificate authority: issues certificates with serials of its own.
#[derive(Debug, Clone)]
pub struct Ca {
    name: &'static str,
    serial: Arc<AtomicU64>,
}

impl Ca {
    /// The CA named `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            serial: Arc::default(),
        }
    }

    /// A certificate naming `service`, valid for `validity` from
    /// `from_ms` (Unix ms, the simulated wall clock).
    pub fn issue(&self, service: &str, from_ms: u64, validity: Duration) -> SimCert {
        let ms = u64::try_from(validity.as_millis()).unwrap_or(u64::MAX);
        SimCert {
            service: service.to_owned(),
            issuer: self.name.to_owned(),
            serial: self.serial.fetch_add(1, Ordering::Relaxed) + 1,
            not_before_ms: from_ms,
            not_after_ms: from_ms.saturating_add(ms),
        }
    }

    /// An identity for `service` from now, trusting the cluster CA.
    pub fn identity(&self, service: &str) -> Mtls {
        Mtls::simulated(
            self.issue(service, rt::unix_ms(), VALIDITY),
            vec![CA.to_owned()],
        )
        .expect("service names are valid")
    }
}

/// Issues every identity in `nodes` (lane, identity) a new certificate of
/// `ca` every [`RENEW`], for ever.
pub async fn renew(ca: Ca, nodes: Vec<(String, Mtls)>, tl: Timeline) {
    loop {
        rt::sleep(RENEW).await;
        for (lane, identity) in &nodes {
            let cert = ca.issue(identity.service(), rt::unix_ms(), VALIDITY);
            if let Err(e) = identity.rotate(cert, vec![CA.to_owned()]) {
                tl.violated(lane, format_args!("a renewed certificate was refused: {e}"));
            }
        }
        coverage::hit(RENEWED);
        tl.record(
            "certs",
            Kind::State,
            format_args!("{} certificates renewed", nodes.len()),
        );
    }
}
