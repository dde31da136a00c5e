//! The Consul agent model's pure state machine: services, checks, the
//! raft-like index and the reaper, all driven by an explicit `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use streamgate::rt::Instant;

/// Health of a check, as Consul names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// "passing"
    Passing,
    /// "warning"
    Warning,
    /// "critical"
    Critical,
}

impl Status {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// The `Check` of a register request (agent/service/register docs).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckReq {
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    #[serde(rename = "TTL")]
    ttl: Option<String>,
    #[serde(rename = "HTTP")]
    http: Option<String>,
    #[serde(rename = "GRPC")]
    grpc: Option<String>,
    #[serde(rename = "GRPCUseTLS")]
    grpc_use_tls: Option<bool>,
    interval: Option<String>,
    timeout: Option<String>,
    deregister_critical_service_after: Option<String>,
}

/// A register request body (agent/service/register docs).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterReq {
    #[serde(rename = "ID")]
    id: Option<String>,
    name: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    tags: Option<Vec<String>>,
    meta: Option<BTreeMap<String, String>>,
    check: Option<CheckReq>,
}

/// The type of a check, as `/v1/health` reports it in `Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckType {
    /// Fed by `check/pass|warn|fail` within its TTL.
    Ttl,
    /// The agent GETs a URL (not probed by the model).
    Http,
    /// The agent asks a gRPC health service (not probed by the model).
    Grpc,
}

impl CheckType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone)]
struct Check {
    id: String,
    name: String,
    kind: CheckType,
    /// The gRPC target or HTTP URL probed; empty for TTL checks.
    target: String,
    ttl: Option<Duration>,
    status: Status,
    ttl_deadline: Option<Instant>,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
    check: Option<Check>,
}

/// A refused request: HTTP status and Consul's plain-text message.
pub type Refusal = (u16, String);

/// The agent's data, advanced lazily to each request's `now`.
#[derive(Debug)]
pub struct AgentState {
    index: u64,
    epoch: Instant,
    reap_interval: Duration,
    deregister_min: Duration,
    services: BTreeMap<String, Service>,
    name_index: BTreeMap<String, u64>,
}

/// Parses a Go duration string ("10s", "100ms", "1m", "1h2m3.5s", "0").
#[must_use]
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos_per;
        rest = &rest[unit_len..];
    }
    // Go's limit is ~292 years; anything near is nonsense for an agent.
    (total.is_finite() && total < 1e18).then(|| Duration::from_nanos(total as u64))
}

fn duration_field(field: &str, v: Option<&String>) -> Result<Option<Duration>, Refusal> {
    v.map(|s| {
        parse_duration(s).ok_or_else(|| {
            (
                400,
                format!("Request decode failed: {field}: time: invalid duration {s:?}"),
            )
        })
    })
    .transpose()
}

impl AgentState {
    /// An empty agent whose reaper runs every `reap_interval` from `now`
    /// and raises deregister-after timeouts to `deregister_min`.
    #[must_use]
    pub fn new(now: Instant, reap_interval: Duration, deregister_min: Duration) -> Self {
        Self {
            index: 1,
            epoch: now,
            reap_interval: reap_interval.max(Duration::from_millis(1)),
            deregister_min,
            services: BTreeMap::new(),
            name_index: BTreeMap::new(),
        }
    }

    /// The raft-like index: increases on every change (resets on [`Self::wipe`]).
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The index of the last change to service `name` (0 if never seen).
    #[must_use]
    pub fn name_index(&self, name: &str) -> u64 {
        self.name_index.get(name).copied().unwrap_or(0)
    }

    fn bump(&mut self, name: &str) {
        self.index += 1;
        self.name_index.insert(name.to_owned(), self.index);
    }

    fn reaper_tick_at_or_before(&self, now: Instant) -> Instant {
        let ri = self.reap_interval.as_nanos();
        let n = now.saturating_duration_since(self.epoch).as_nanos() / ri;
        self.epoch + Duration::from_nanos(u64::try_from(n * ri).unwrap_or(u64::MAX))
    }

    fn reaper_tick_at_or_after(&self, t: Instant) -> Instant {
        let ri = self.reap_interval.as_nanos();
        let n = t
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(ri);
        self.epoch + Duration::from_nanos(u64::try_from(n * ri).unwrap_or(u64::MAX))
    }

    fn removal_time(&self, c: &Check) -> Option<Instant> {
        let after = c.deregister_after?.max(self.deregister_min);
        Some(c.critical_since? + after)
    }

    /// Applies TTL expiry (a TTL check without a pass turns critical, check
    /// docs "TTL") and the reaper's ticks up to `now` (services critical for
    /// `DeregisterCriticalServiceAfter` are removed at the next tick).
    pub fn advance(&mut self, now: Instant) {
        let mut changed = Vec::new();
        for s in self.services.values_mut() {
            if let Some(c) = &mut s.check
                && let Some(deadline) = c.ttl_deadline
                && c.status != Status::Critical
                && now >= deadline
            {
                c.status = Status::Critical;
                c.critical_since = Some(deadline);
                changed.push(s.name.clone());
            }
        }
        let tick = self.reaper_tick_at_or_before(now);
        let reaped: Vec<String> = self
            .services
            .values()
            .filter(|s| {
                s.check
                    .as_ref()
                    .and_then(|c| self.removal_time(c))
                    .is_some_and(|t| t <= tick)
            })
            .map(|s| s.id.clone())
            .collect();
        for id in reaped {
            if let Some(s) = self.services.remove(&id) {
                changed.push(s.name);
            }
        }
        for name in changed {
            self.bump(&name);
        }
    }

    /// The next instant at which [`Self::advance`] would change something.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .values()
            .filter_map(|s| s.check.as_ref())
            .filter_map(|c| match c.status {
                Status::Critical => self
                    .removal_time(c)
                    .map(|t| self.reaper_tick_at_or_after(t)),
                _ => c.ttl_deadline,
            })
            .min()
    }

    /// `PUT /v1/agent/service/register` with JSON `body`.
    ///
    /// # Errors
    /// 400 with Consul's message for a body Consul refuses.
    pub fn register(&mut self, body: &[u8], now: Instant) -> Result<(), Refusal> {
        let req: RegisterReq = serde_json::from_slice(body)
            .map_err(|e| (400, format!("Request decode failed: {e}")))?;
        let name = req
            .name
            .filter(|n| !n.is_empty())
            .ok_or((400, "Missing service name".to_owned()))?;
        let id = req
            .id
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| name.clone());
        let check = req.check.map(|c| Self::check(c, &id, now)).transpose()?;
        self.index += 1;
        let create_index = self
            .services
            .get(&id)
            .map_or(self.index, |s| s.create_index);
        let service = Service {
            id: id.clone(),
            name: name.clone(),
            address: req.address.unwrap_or_default(),
            port: req.port.unwrap_or(0),
            tags: req.tags.unwrap_or_default(),
            meta: req.meta.unwrap_or_default(),
            create_index,
            modify_index: self.index,
            check,
        };
        if let Some(old) = self.services.insert(id, service)
            && old.name != name
        {
            self.name_index.insert(old.name, self.index);
        }
        self.name_index.insert(name, self.index);
        Ok(())
    }

    fn check(c: CheckReq, service_id: &str, now: Instant) -> Result<Check, Refusal> {
        let ttl = duration_field("TTL", c.ttl.as_ref())?;
        let interval = duration_field("Interval", c.interval.as_ref())?;
        duration_field("Timeout", c.timeout.as_ref())?;
        let deregister_after = duration_field(
            "DeregisterCriticalServiceAfter",
            c.deregister_critical_service_after.as_ref(),
        )?
        .filter(|d| !d.is_zero());
        // Checks docs: exactly one kind; TTL > 0, or an Interval for the
        // probed kinds (HTTP, GRPC).
        let (kind, target) = match (ttl, &c.http, &c.grpc, interval) {
            (Some(t), None, None, _) if !t.is_zero() => (CheckType::Ttl, String::new()),
            (None, Some(url), None, Some(i)) if !i.is_zero() => (CheckType::Http, url.clone()),
            (None, None, Some(target), Some(i)) if !i.is_zero() && !target.is_empty() => {
                (CheckType::Grpc, target.clone())
            }
            _ => {
                return Err((
                    400,
                    "Invalid check: TTL must be > 0 for TTL checks; HTTP and GRPC checks need an Interval"
                        .to_owned(),
                ));
            }
        };
        if c.grpc_use_tls.is_some() && kind != CheckType::Grpc {
            return Err((400, "Invalid check: GRPCUseTLS without GRPC".to_owned()));
        }
        // Check docs: checks start critical unless `Status` says otherwise.
        let status = match &c.status {
            None => Status::Critical,
            Some(s) => Status::parse(s).ok_or((400, format!("Invalid check status: {s:?}")))?,
        };
        Ok(Check {
            id: c
                .check_id
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("service:{service_id}")),
            name: c
                .name
                .unwrap_or_else(|| format!("Service '{service_id}' check")),
            kind,
            target,
            ttl,
            status,
            ttl_deadline: ttl.filter(|_| status != Status::Critical).map(|t| now + t),
            critical_since: (status == Status::Critical).then_some(now),
            deregister_after,
        })
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    ///
    /// # Errors
    /// 404 "Unknown service ID" as newer agents answer.
    pub fn deregister(&mut self, id: &str) -> Result<(), Refusal> {
        let s = self
            .services
            .remove(id)
            .ok_or_else(|| (404, format!("Unknown service ID {id:?}")))?;
        self.bump(&s.name);
        Ok(())
    }

    /// `PUT /v1/agent/check/pass/:check_id`: resets the TTL, passing again.
    ///
    /// # Errors
    /// 404 "Unknown check ID"; 500 for a check without a TTL (as Consul).
    pub fn pass(&mut self, check_id: &str, now: Instant) -> Result<(), Refusal> {
        self.update(check_id, Status::Passing, now)
    }

    /// `PUT /v1/agent/check/{pass,warn,fail}/:check_id` (agent/check docs,
    /// "TTL Check Pass/Warn/Fail"): sets a TTL check's status and resets
    /// its TTL.
    ///
    /// # Errors
    /// 404 "Unknown check ID"; 500 for a check without a TTL (as Consul).
    pub fn update(&mut self, check_id: &str, status: Status, now: Instant) -> Result<(), Refusal> {
        let (name, was) = {
            let s = self
                .services
                .values_mut()
                .find(|s| s.check.as_ref().is_some_and(|c| c.id == check_id))
                .ok_or_else(|| (404, format!("Unknown check ID {check_id:?}")))?;
            let Some(c) = s.check.as_mut() else {
                return Err((404, format!("Unknown check ID {check_id:?}")));
            };
            let Some(ttl) = c.ttl else {
                return Err((
                    500,
                    format!("CheckID {check_id:?} does not have associated TTL"),
                ));
            };
            let was = c.status;
            c.status = status;
            c.ttl_deadline = Some(now + ttl);
            c.critical_since = match (status, c.critical_since) {
                (Status::Critical, None) => Some(now),
                (Status::Critical, since) => since,
                _ => None,
            };
            (s.name.clone(), was)
        };
        // An unchanged status is not a catalog change (no index bump).
        if was != status {
            self.bump(&name);
        }
        Ok(())
    }

    /// Sets the status of check `check_id` of any kind, as the result of a
    /// probe the model does not run (an HTTP check answering 429 turns
    /// warning); TTL checks keep their TTL. False for an unknown check.
    pub fn set_status(&mut self, check_id: &str, status: Status, now: Instant) -> bool {
        let Some(s) = self
            .services
            .values_mut()
            .find(|s| s.check.as_ref().is_some_and(|c| c.id == check_id))
        else {
            return false;
        };
        let Some(c) = s.check.as_mut() else {
            return false;
        };
        if c.status == status {
            return true;
        }
        c.status = status;
        c.critical_since = (status == Status::Critical).then_some(now);
        let name = s.name.clone();
        self.bump(&name);
        true
    }

    /// `GET /v1/agent/service/:service_id` (agent/service docs, "Get
    /// Service Configuration"): the service's definition.
    ///
    /// # Errors
    /// 404 for an unknown service id.
    pub fn service(&self, id: &str) -> Result<Value, Refusal> {
        let s = self
            .services
            .get(id)
            .ok_or_else(|| (404, format!("unknown service ID: {id}")))?;
        Ok(
            json!({"ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta,
            "Port": s.port, "Address": s.address, "ContentHash": format!("{:016x}", s.modify_index),
            "Datacenter": "dc1"}),
        )
    }

    /// The type and target of check `check_id`, if registered.
    #[must_use]
    pub fn check_kind(&self, check_id: &str) -> Option<(CheckType, String)> {
        self.services
            .values()
            .filter_map(|s| s.check.as_ref())
            .find(|c| c.id == check_id)
            .map(|c| (c.kind, c.target.clone()))
    }

    /// The `/v1/health/service/:name` entries for `name` on `node`, all or
    /// only those whose every check passes (`?passing`).
    #[must_use]
    pub fn health(&self, name: &str, passing_only: bool, node: &str) -> Vec<Value> {
        let serf = json!({"Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "ServiceID": "", "ServiceName": "", "Output": "Agent alive and reachable"});
        self.services
            .values()
            .filter(|s| s.name == name)
            .filter(|s| {
                !passing_only || s.check.as_ref().is_none_or(|c| c.status == Status::Passing)
            })
            .map(|s| {
                let mut checks = vec![serf.clone()];
                if let Some(c) = &s.check {
                    checks.push(json!({"Node": node, "CheckID": c.id, "Name": c.name,
                        "Status": c.status.as_str(), "ServiceID": s.id, "ServiceName": s.name,
                        "Output": "", "Type": c.kind.as_str()}));
                }
                json!({
                    "Node": {"ID": "00000000-0000-0000-0000-000000000001", "Node": node,
                        "Address": "127.0.0.1", "Datacenter": "dc1"},
                    "Service": {"ID": s.id, "Service": s.name, "Tags": s.tags,
                        "Address": s.address, "Meta": s.meta, "Port": s.port,
                        "CreateIndex": s.create_index, "ModifyIndex": s.modify_index},
                    "Checks": checks,
                })
            })
            .collect()
    }

    /// Loses every service, as an agent restarted without its data; the
    /// index falls back to 1 so callers' reset logic is exercised.
    pub fn wipe(&mut self) {
        self.services.clear();
        self.name_index.clear();
        self.index = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate::rt;

    #[test]
    fn parses_go_durations() {
        let p = |s| parse_duration(s);
        assert_eq!(p("10s"), Some(Duration::from_secs(10)));
        assert_eq!(p("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(p("1m"), Some(Duration::from_secs(60)));
        assert_eq!(p("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(p("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "1x", "1e400h"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn ttl_expiry_then_reaper_removes_after_the_minimum() {
        let t0 = rt::now();
        let mut s = AgentState::new(t0, Duration::from_secs(30), Duration::from_secs(60));
        let body = br#"{"ID":"a","Name":"svc","Port":1,"Check":{"TTL":"2s","Status":"passing","DeregisterCriticalServiceAfter":"1s"}}"#;
        s.register(body, t0).unwrap();
        assert_eq!(s.health("svc", true, "n").len(), 1);
        s.advance(t0 + Duration::from_secs(2));
        assert!(s.health("svc", true, "n").is_empty(), "critical after TTL");
        assert_eq!(s.health("svc", false, "n").len(), 1);
        // Critical since 2s; deregister raised to 60s -> 62s; next tick at 90s.
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(90)));
        s.advance(t0 + Duration::from_secs(89));
        assert_eq!(s.health("svc", false, "n").len(), 1);
        s.advance(t0 + Duration::from_secs(90));
        assert!(s.health("svc", false, "n").is_empty(), "reaped at the tick");
        assert_eq!(s.pass("service:a", t0).unwrap_err().0, 404);
    }

    #[test]
    fn checks_start_critical_without_status() {
        let t0 = rt::now();
        let mut s = AgentState::new(t0, Duration::from_secs(30), Duration::from_secs(60));
        s.register(br#"{"Name":"svc","Check":{"TTL":"5s"}}"#, t0)
            .unwrap();
        assert!(s.health("svc", true, "n").is_empty());
        let before = s.index();
        s.pass("service:svc", t0).unwrap();
        assert!(s.index() > before);
        assert_eq!(s.health("svc", true, "n").len(), 1);
        assert_eq!(s.register(b"{}", t0).unwrap_err().0, 400);
        assert_eq!(s.register(b"nope", t0).unwrap_err().0, 400);
    }

    #[test]
    fn probed_checks_are_accepted_and_refuse_ttl_updates() {
        let t0 = rt::now();
        let mut s = AgentState::new(t0, Duration::from_secs(30), Duration::from_secs(60));
        let grpc = br#"{"ID":"g","Name":"svc","Port":1,"Check":{"GRPC":"10.0.0.1:1","GRPCUseTLS":false,"Interval":"2s","Timeout":"1s","Status":"passing"}}"#;
        s.register(grpc, t0).unwrap();
        assert_eq!(
            s.check_kind("service:g"),
            Some((CheckType::Grpc, "10.0.0.1:1".to_owned()))
        );
        let http = br#"{"ID":"h","Name":"svc","Port":2,"Check":{"HTTP":"http://10.0.0.1:2/health","Interval":"2s","Status":"passing"}}"#;
        s.register(http, t0).unwrap();
        // Not probed: they keep their status, well past any TTL.
        s.advance(t0 + Duration::from_secs(600));
        assert_eq!(s.health("svc", true, "n").len(), 2);
        assert_eq!(s.health("svc", true, "n")[0]["Checks"][1]["Type"], "grpc");
        // No TTL: a heartbeat is a 500, as Consul answers.
        assert_eq!(s.pass("service:g", t0).unwrap_err().0, 500);
        assert_eq!(s.pass("service:nope", t0).unwrap_err().0, 404);
        // Without an Interval a probed check is refused.
        let bad = br#"{"ID":"b","Name":"svc","Check":{"GRPC":"10.0.0.1:1"}}"#;
        assert_eq!(s.register(bad, t0).unwrap_err().0, 400);
        // A warning is not passing.
        assert!(s.set_status("service:h", Status::Warning, t0));
        assert_eq!(s.health("svc", true, "n").len(), 1);
        assert_eq!(s.health("svc", false, "n").len(), 2);
        assert_eq!(s.service("g").unwrap()["Port"], 1);
        assert_eq!(s.service("nope").unwrap_err().0, 404);
    }
}
