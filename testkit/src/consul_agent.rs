//! A model of a Consul agent's HTTP API (the endpoints the Consul registry
//! uses), as an axum router over a pure state machine timed by `rt::now()`.
//!
//! Behaviour and the Consul documentation each line follows:
//! - register/deregister/check pass, warn and fail, and a service's
//!   definition: agent/service and agent/check API docs (unknown ids
//!   answer 404; updating a check without TTL answers 500);
//! - TTL, HTTP and GRPC checks (checks docs: an Interval for the probed
//!   kinds, `GRPCUseTLS`), each reported with its `Type`;
//! - checks start critical unless `Status` is given (checks docs, "Initial health check status");
//! - a TTL check without a pass turns critical after its TTL (checks docs, "TTL");
//! - `DeregisterCriticalServiceAfter` is raised to at least 1 minute and applied
//!   by a reaper every 30 s (checks docs; agent `check_reap_interval`), both configurable here;
//! - `GET /v1/health/service/:name` with `?passing`, blocking on `index`/`wait`
//!   (default 5 min, max 10 min) and `X-Consul-Index` >= 1 (blocking queries docs);
//!   Consul's `wait / 16` jitter is left out to keep tests exact;
//! - ACLs (ACL docs): an unknown token answers 403 "ACL not found"; no token is
//!   the anonymous token: writes answer 403 "Permission denied", health reads
//!   are filtered to nothing with `X-Consul-Results-Filtered-By-ACLs: true`;
//!   `/v1/status/leader` needs no token (status endpoints are not ACL-protected);
//! - [`ConsulAgent::wipe`]: an agent restarted without its data (index resets lower;
//!   a query whose index is above the agent's answers at once, as Consul's
//!   abandoned state store wakes blocked queries).
//!
//! HTTP and GRPC checks are not probed: they keep their initial `Status`
//! until [`ConsulAgent::set_status`] says otherwise (what a probe would
//! find). Faults on demand: check updates answering an error (Consul's 500
//! when it cannot persist the check's state), or never answering (a hung
//! agent).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use streamgate::rt::watch;

use streamgate::rt;

mod state;

pub use state::{AgentState, CheckType, Refusal, Status, parse_duration};

/// Consul's default blocking `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's maximum blocking `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Most register bodies kept by [`ConsulAgent::register_bodies`].
const RECORDED_MAX: usize = 1024;

/// How the modelled agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// ACL token required for access; `None` disables ACLs.
    pub acl_token: Option<String>,
    /// How often the reaper removes long-critical services (Consul: 30 s).
    pub reap_interval: Duration,
    /// Floor of `DeregisterCriticalServiceAfter` (Consul: 1 min).
    pub deregister_min: Duration,
    /// The node name reported in health entries.
    pub node: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            acl_token: None,
            reap_interval: Duration::from_secs(30),
            deregister_min: Duration::from_secs(60),
            node: "agent-model".to_owned(),
        }
    }
}

/// A modelled Consul agent; serve [`ConsulAgent::router`].
#[derive(Debug)]
pub struct ConsulAgent {
    config: AgentConfig,
    state: Mutex<AgentState>,
    changes: watch::Sender<u64>,
    register_bodies: Mutex<Vec<serde_json::Value>>,
    faults: Mutex<Faults>,
    check_updates: std::sync::atomic::AtomicU64,
    /// Health queries: [non-blocking, blocking].
    health_queries: [std::sync::atomic::AtomicU64; 2],
}

/// Faults of check updates (`check/pass|warn|fail`) on demand.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    /// Answer this HTTP status instead (e.g. 500).
    status: Option<u16>,
    /// Never answer.
    hang: bool,
}

enum Access {
    Allowed,
    Anonymous,
}

impl ConsulAgent {
    /// A fresh agent with no services.
    #[must_use]
    pub fn new(config: AgentConfig) -> Arc<Self> {
        let state = AgentState::new(rt::now(), config.reap_interval, config.deregister_min);
        Arc::new(Self {
            config,
            state: Mutex::new(state),
            changes: watch::Sender::new(1),
            register_bodies: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            check_updates: std::sync::atomic::AtomicU64::new(0),
            health_queries: Default::default(),
        })
    }

    /// The HTTP API: register, deregister, a service's definition, check
    /// pass/warn/fail, health service, status leader.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/agent/service/{id}", get(service))
            .route("/v1/agent/check/pass/{check_id}", put(pass))
            .route("/v1/agent/check/warn/{check_id}", put(warn))
            .route("/v1/agent/check/fail/{check_id}", put(fail))
            .route("/v1/health/service/{name}", get(health))
            .route("/v1/status/leader", get(leader))
            .with_state(self.clone())
    }

    /// Sets check `check_id`'s status as a probe would (see
    /// [`AgentState::set_status`]); false for an unknown check.
    pub fn set_status(&self, check_id: &str, status: Status) -> bool {
        let now = rt::now();
        self.with_state(|s| s.set_status(check_id, status, now))
    }

    /// The type and target of check `check_id`, if registered.
    #[must_use]
    pub fn check_kind(&self, check_id: &str) -> Option<(CheckType, String)> {
        self.with_state(|s| s.check_kind(check_id))
    }

    /// From now on, check updates answer `status` (e.g. 500, as Consul does
    /// when it cannot persist a check's state); `None` restores them.
    pub fn fail_check_updates(&self, status: Option<u16>) {
        lock(&self.faults).status = status;
    }

    /// From now on, check updates never answer (a hung agent), or answer again.
    pub fn hang_check_updates(&self, hang: bool) {
        lock(&self.faults).hang = hang;
    }

    /// `GET /v1/health/service` queries received so far: (non-blocking,
    /// blocking on an `index`).
    #[must_use]
    pub fn health_queries(&self) -> (u64, u64) {
        let [plain, blocking] = &self.health_queries;
        (
            plain.load(std::sync::atomic::Ordering::SeqCst),
            blocking.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    /// Check updates received (answered or not).
    #[must_use]
    pub fn check_updates(&self) -> u64 {
        self.check_updates.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Simulates the agent losing its data: every service gone, index reset.
    pub fn wipe(&self) {
        self.with_state(AgentState::wipe);
    }

    /// The current index.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.with_state(|s| s.index())
    }

    /// The JSON bodies of every register request received (oldest first).
    #[must_use]
    pub fn register_bodies(&self) -> Vec<serde_json::Value> {
        lock(&self.register_bodies).clone()
    }

    /// Runs `f` on the state advanced to now; wakes blocked queries if the index moved.
    fn with_state<T>(&self, f: impl FnOnce(&mut AgentState) -> T) -> T {
        let (out, before, after) = {
            let mut s = lock(&self.state);
            let before = s.index();
            s.advance(rt::now());
            let out = f(&mut s);
            (out, before, s.index())
        };
        if after != before {
            self.changes.send_replace(after);
        }
        out
    }

    fn access(&self, headers: &HeaderMap) -> Result<Access, Refusal> {
        let Some(required) = &self.config.acl_token else {
            return Ok(Access::Allowed);
        };
        match headers.get("x-consul-token") {
            None => Ok(Access::Anonymous),
            Some(t) if t.as_bytes() == required.as_bytes() => Ok(Access::Allowed),
            Some(_) => Err((403, "ACL not found".to_owned())),
        }
    }

    fn write_access(&self, headers: &HeaderMap, what: &str) -> Result<(), Refusal> {
        match self.access(headers)? {
            Access::Allowed => Ok(()),
            Access::Anonymous => Err((
                403,
                format!("Permission denied: anonymous token lacks permission '{what}'"),
            )),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn refuse((code, msg): Refusal) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, msg).into_response()
}

fn done(result: Result<(), Refusal>) -> Response {
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => refuse(r),
    }
}

async fn register(
    State(agent): State<Arc<ConsulAgent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = agent.write_access(&headers, "service:write") {
        return refuse(r);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        let mut recorded = lock(&agent.register_bodies);
        if recorded.len() < RECORDED_MAX {
            recorded.push(v);
        }
    }
    let now = rt::now();
    done(agent.with_state(|s| s.register(&body, now)))
}

async fn deregister(
    State(agent): State<Arc<ConsulAgent>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = agent.write_access(&headers, "service:write") {
        return refuse(r);
    }
    done(agent.with_state(|s| s.deregister(&id)))
}

async fn update(agent: &ConsulAgent, check_id: &str, headers: &HeaderMap, to: Status) -> Response {
    agent
        .check_updates
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Err(r) = agent.write_access(headers, "service:write") {
        return refuse(r);
    }
    let faults = *lock(&agent.faults);
    if faults.hang {
        std::future::pending::<()>().await;
    }
    if let Some(code) = faults.status {
        return refuse((code, "failed to persist check state".to_owned()));
    }
    let now = rt::now();
    done(agent.with_state(|s| s.update(check_id, to, now)))
}

async fn pass(
    State(agent): State<Arc<ConsulAgent>>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    update(&agent, &check_id, &headers, Status::Passing).await
}

async fn warn(
    State(agent): State<Arc<ConsulAgent>>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    update(&agent, &check_id, &headers, Status::Warning).await
}

async fn fail(
    State(agent): State<Arc<ConsulAgent>>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    update(&agent, &check_id, &headers, Status::Critical).await
}

async fn service(
    State(agent): State<Arc<ConsulAgent>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    // agent/service docs: reading a definition needs service:read, which
    // the anonymous token lacks.
    if let Err(r) = agent.write_access(&headers, "service:read") {
        return refuse(r);
    }
    match agent.with_state(|s| s.service(&id)) {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => refuse(r),
    }
}

async fn leader() -> Response {
    axum::Json("127.0.0.1:8300").into_response()
}

/// Query parameters of a health request.
struct HealthQuery {
    passing: bool,
    index: u64,
    wait: Duration,
}

fn health_query(raw: Option<&str>) -> Result<HealthQuery, Refusal> {
    let mut q = HealthQuery {
        passing: false,
        index: 0,
        wait: DEFAULT_WAIT,
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "passing" => q.passing = !matches!(v, "0" | "false" | "f" | "F" | "FALSE" | "False"),
            "index" => {
                q.index = v
                    .parse()
                    .map_err(|_| (400, format!("Invalid index: {v:?}")))?;
            }
            "wait" => {
                q.wait = parse_duration(v)
                    .ok_or_else(|| (400, format!("Invalid wait time: {v:?}")))?
                    .min(MAX_WAIT);
            }
            _ => {}
        }
    }
    Ok(q)
}

async fn health(
    State(agent): State<Arc<ConsulAgent>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let access = match agent.access(&headers) {
        Ok(a) => a,
        Err(r) => return refuse(r),
    };
    let q = match health_query(raw.as_deref()) {
        Ok(q) => q,
        Err(r) => return refuse(r),
    };
    agent.health_queries[usize::from(q.index != 0)]
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let deadline = rt::now() + q.wait;
    loop {
        let mut changes = agent.changes.subscribe();
        let now = rt::now();
        let (index, name_index, entries, next) = agent.with_state(|s| {
            let entries = s.health(&name, q.passing, &agent.config.node);
            (s.index(), s.name_index(&name), entries, s.next_deadline())
        });
        let fresh = q.index == 0 || name_index > q.index || index < q.index;
        if fresh || now >= deadline {
            let mut headers = HeaderMap::new();
            headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
            let entries = match access {
                Access::Allowed => entries,
                Access::Anonymous => {
                    if !entries.is_empty() {
                        headers.insert(
                            "x-consul-results-filtered-by-acls",
                            HeaderValue::from_static("true"),
                        );
                    }
                    Vec::new()
                }
            };
            return (headers, axum::Json(entries)).into_response();
        }
        let until = next.map_or(deadline, |n| n.min(deadline));
        let _ = rt::timeout_at(until, changes.changed()).await;
    }
}

/// A [`SetStatus`](crate::registry_contract::SetStatus) for the Consul
/// agent at `base` (this model or a real one): `PUT
/// /v1/agent/check/{pass,warn,fail}/service:<id>` through `transport`,
/// with the ACL `token` if any. Panics on a refusal (a test helper).
#[must_use]
pub fn set_status_over_http(
    base: String,
    token: Option<String>,
    transport: Arc<dyn streamgate::registry::consul::HttpTransport>,
) -> crate::registry_contract::SetStatus {
    use streamgate::registry::HealthStatus;
    Arc::new(move |id: String, status: HealthStatus| {
        let verb = match status {
            HealthStatus::Passing => "pass",
            HealthStatus::Warning => "warn",
            HealthStatus::Critical => "fail",
        };
        let check = streamgate::registry::consul::check_id(&id).replace(':', "%3A");
        let mut req = http::Request::put(format!("{base}/v1/agent/check/{verb}/{check}"));
        if let Some(t) = &token {
            req = req.header("x-consul-token", t.as_str());
        }
        let req = req.body(Bytes::new()).expect("a valid request");
        let transport = transport.clone();
        Box::pin(async move {
            let resp = transport
                .send(req, 1 << 20)
                .await
                .expect("the agent answers");
            assert!(
                resp.status().is_success(),
                "check/{verb} of {id}: HTTP {}",
                resp.status()
            );
        })
    })
}
