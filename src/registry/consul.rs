//! Consul backend: the [`Registry`] contract over a Consul agent's HTTP API.
//! Every answer is size- and time-limited; anything unexpected is `Unavailable`.
//!
//! Discovery (`/v1/health/service`) does not return check definitions, so
//! the instance's [`crate::registry::HealthCheck`] travels in `Meta` under
//! [`CHECK_META_KEY`] and is stripped again on the way out; instances
//! registered by other tools get `HealthCheck::ttl(FOREIGN_CHECK_TTL)`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use super::{Registry, RegistryError, ServiceInfo, WatchResult, validate};
use crate::rt;

pub(crate) mod transport;
mod wire;

#[cfg(madsim)]
pub use transport::SimTransport;
#[cfg(not(madsim))]
pub use transport::{ConsulTls, HyperTransport};
pub use transport::{HttpTransport, ModelClient, PostError, Streamed, json_answer, post_json};
pub use wire::{
    CHECK_META_KEY, FOREIGN_CHECK_TTL, MIN_DEREGISTER_AFTER, check_id, decode_check, encode_check,
    format_duration,
};

/// Largest response body read from the agent.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Longest blocking query Consul serves (`wait` is capped there).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Header carrying the blocking-query index.
pub const INDEX_HEADER: &str = "x-consul-index";
/// Header carrying the ACL token.
pub const TOKEN_HEADER: &str = "x-consul-token";
/// Header Consul sets when ACLs hid part of a read's result.
pub const FILTERED_HEADER: &str = "x-consul-results-filtered-by-acls";

/// Parses the body of `GET /v1/health/service/:name` into the instances
/// discovery hands out: those with no critical check (passing or warning).
///
/// # Errors
/// [`RegistryError::Unavailable`] for malformed JSON (never a panic).
pub fn parse_health(body: &[u8]) -> Result<Vec<ServiceInfo>, RegistryError> {
    let entries: Vec<wire::HealthEntry> = serde_json::from_slice(body).map_err(|e| {
        RegistryError::Unavailable(format!("consul health/service: malformed JSON: {e}"))
    })?;
    Ok(entries
        .into_iter()
        .filter(wire::HealthEntry::healthy)
        .map(wire::service_info)
        .collect())
}

/// Where and how to reach the agent.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// Base URL of the agent's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`, if any.
    pub token: Option<String>,
    /// TLS for an `https://` address (production transport only).
    #[cfg(not(madsim))]
    pub tls: ConsulTls,
    /// Time limit of a non-blocking request, and the margin added to a
    /// blocking query's `wait` (plus Consul's `wait / 16` jitter).
    pub request_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            #[cfg(not(madsim))]
            tls: ConsulTls::default(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`Registry`] backed by a Consul agent.
pub struct ConsulRegistry {
    base: String,
    token: Option<http::HeaderValue>,
    request_timeout: Duration,
    transport: Box<dyn HttpTransport>,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// A registry talking to the agent at `config.address` through `transport`.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for an unusable address or token.
    pub fn new(
        config: &ConsulConfig,
        transport: impl HttpTransport,
    ) -> Result<Self, RegistryError> {
        let base = config.address.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| RegistryError::Invalid(format!("consul address {base:?}: {e}")))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(RegistryError::Invalid(format!(
                "consul address {base:?}: needs scheme and host"
            )));
        }
        let token = config
            .token
            .as_deref()
            .map(http::HeaderValue::from_str)
            .transpose()
            .map_err(|_| RegistryError::Invalid("consul token is not a valid header".into()))?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(Self {
            base,
            token,
            request_timeout: config.request_timeout,
            transport: Box::new(transport),
        })
    }

    /// A registry over hyper (the production transport).
    ///
    /// # Errors
    /// As [`ConsulRegistry::new`].
    #[cfg(not(madsim))]
    pub fn connect(config: &ConsulConfig) -> Result<Self, RegistryError> {
        let transport = HyperTransport::with_tls(&config.tls)
            .map_err(|e| RegistryError::Invalid(format!("consul TLS: {e}")))?;
        Self::new(config, transport)
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response<Bytes>, RegistryError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header(TOKEN_HEADER, token.clone());
        }
        if !body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(body)
            .map_err(|e| RegistryError::Unavailable(format!("building request: {e}")))?;
        let resp = rt::timeout(timeout, self.transport.send(req, MAX_BODY_BYTES))
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!(
                    "consul {path_and_query}: no answer in {timeout:?}"
                ))
            })?
            .map_err(|e| RegistryError::Unavailable(format!("consul {path_and_query}: {e}")))?;
        if resp.body().len() > MAX_BODY_BYTES {
            return Err(RegistryError::Unavailable(format!(
                "consul {path_and_query}: body over {MAX_BODY_BYTES} bytes"
            )));
        }
        Ok(resp)
    }
}

/// An `Unavailable` naming what failed, the status and the start of the body.
fn unexpected(what: &str, resp: &Response<Bytes>) -> RegistryError {
    let body = String::from_utf8_lossy(&resp.body()[..resp.body().len().min(200)]);
    let hint = if resp.status() == StatusCode::FORBIDDEN {
        " (ACL: check the X-Consul-Token)"
    } else {
        ""
    };
    RegistryError::Unavailable(format!(
        "consul {what}: HTTP {}{hint}: {}",
        resp.status(),
        body.trim()
    ))
}

/// Ids a registration could have (what [`validate`] admits), so requests for
/// others need not reach the agent.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= super::MAX_ID_LEN
}

#[async_trait]
impl Registry for ConsulRegistry {
    async fn register(&self, info: &ServiceInfo) -> Result<(), RegistryError> {
        validate(info)?;
        let body = serde_json::to_vec(&wire::register_body(info)?)
            .map_err(|e| RegistryError::Invalid(format!("encoding registration: {e}")))?;
        let resp = self
            .call(
                Method::PUT,
                "/v1/agent/service/register",
                body.into(),
                self.request_timeout,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::BAD_REQUEST => Err(RegistryError::Invalid(format!(
                "consul refused the registration: {}",
                String::from_utf8_lossy(resp.body()).trim()
            ))),
            _ => Err(unexpected("register", &resp)),
        }
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        if !plausible_id(id) {
            return Ok(());
        }
        let path = format!("/v1/agent/service/deregister/{}", wire::encode_segment(id));
        let resp = self
            .call(Method::PUT, &path, Bytes::new(), self.request_timeout)
            .await?;
        match resp.status() {
            // Newer agents answer 404 for unknown ids; the contract says that is fine.
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(unexpected("deregister", &resp)),
        }
    }

    async fn heartbeat(&self, id: &str) -> Result<(), RegistryError> {
        if !plausible_id(id) {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        let path = format!(
            "/v1/agent/check/pass/{}",
            wire::encode_segment(&check_id(id))
        );
        let resp = self
            .call(Method::PUT, &path, Bytes::new(), self.request_timeout)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            // "Unknown check ID": the agent lost the registration.
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound(id.to_owned())),
            // A check that is no TTL check, or an agent that could not
            // persist the update: the registration is there, the heartbeat
            // failed. (Agents before 1.x also answered 500 for unknown
            // checks: the kernel confirms the registration after repeated
            // failures, see [`Registry::confirm`].)
            _ => Err(unexpected("heartbeat", &resp)),
        }
    }

    async fn confirm(&self, id: &str) -> Result<(), RegistryError> {
        if !plausible_id(id) {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        let path = format!("/v1/agent/service/{}", wire::encode_segment(id));
        let resp = self
            .call(Method::GET, &path, Bytes::new(), self.request_timeout)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound(id.to_owned())),
            _ => Err(unexpected("agent/service", &resp)),
        }
    }

    async fn watch(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<WatchResult, RegistryError> {
        let wait = wait.min(MAX_WAIT);
        // The full list, not `?passing`: Consul's `passing` drops warning
        // instances too, and the contract hands them out (see
        // [`parse_health`]).
        let mut path = format!("/v1/health/service/{}", wire::encode_segment(name));
        // Without `index` (or with wait 0) the query does not block; Consul
        // would read a missing `wait` as its 5-minute default.
        let timeout = if index == 0 || wait.is_zero() {
            self.request_timeout
        } else {
            path.push_str(&format!("?index={index}&wait={}", format_duration(wait)));
            wait + wait / 16 + self.request_timeout
        };
        let resp = self.call(Method::GET, &path, Bytes::new(), timeout).await?;
        if !resp.status().is_success() {
            return Err(unexpected("health/service", &resp));
        }
        if resp
            .headers()
            .get(FILTERED_HEADER)
            .is_some_and(|v| v == "true")
        {
            return Err(RegistryError::Unavailable(format!(
                "consul health/service: results of {name:?} hidden by ACLs (token lacks service:read)"
            )));
        }
        let new_index = resp
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                RegistryError::Unavailable("consul health/service: no valid X-Consul-Index".into())
            })?;
        let instances = parse_health(resp.body())?
            .into_iter()
            .filter(|i| i.name == name)
            .collect();
        // Consul: keep the index >= 1. A smaller index than requested (the
        // agent restarted) is returned as is: the caller's loop resets.
        Ok(WatchResult {
            index: new_index.max(1),
            instances,
        })
    }

    async fn health(&self) -> Result<(), RegistryError> {
        let resp = self
            .call(
                Method::GET,
                "/v1/status/leader",
                Bytes::new(),
                self.request_timeout,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(unexpected("status/leader", &resp));
        }
        match serde_json::from_slice::<String>(resp.body()) {
            Ok(leader) if !leader.is_empty() => Ok(()),
            Ok(_) => Err(RegistryError::Unavailable("consul: no leader".into())),
            Err(e) => Err(RegistryError::Unavailable(format!(
                "consul status/leader: malformed JSON: {e}"
            ))),
        }
    }
}
