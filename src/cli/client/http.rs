//! The API as `streamgate-cli` calls it: reqwest (rustls), the bearer
//! token of the config file (refreshed when it is about to expire, or
//! once after a 401) or of `STREAMGATE_TOKEN`, and the API's JSON errors
//! turned into messages.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use super::store::{Session, Store};
use crate::rt;

/// The largest JSON answer read.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// How long a plain API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A token this close to its expiry is refreshed first.
const REFRESH_MARGIN_MS: u64 = 30_000;

/// Where the token comes from.
#[derive(Debug)]
pub enum Credential {
    /// None: the command runs unauthenticated (sign-up, log-in).
    None,
    /// `STREAMGATE_TOKEN`, used as it is.
    Fixed(String),
    /// The config file's session, refreshed as needed.
    Stored,
}

/// A failed API call: the status and the API's message.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: {status}: {message}")]
pub struct ApiFailure {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The status.
    pub status: StatusCode,
    /// The `error` of the JSON body, or the body's start.
    pub message: String,
}

/// The API at one server.
#[derive(Debug)]
pub struct Api {
    /// The server's base URL, without a trailing `/`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The token's source.
    pub credential: Credential,
    /// The config file.
    pub store: Store,
}

/// The server's base URL: a scheme, a host, no trailing `/`.
///
/// # Errors
/// It is not an `http` or `https` URL.
pub fn base_url(raw: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(raw).with_context(|| format!("--server {raw:?}: not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--server {raw:?}: expected http://host[:port] or https://...");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--server {raw:?}: no query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

impl Api {
    /// The API at `base` with `credential`, keeping state in `store`.
    ///
    /// # Errors
    /// The TLS setup failed.
    pub fn new(base: String, credential: Credential, store: Store) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("streamgate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("an HTTP client")?;
        Ok(Self {
            base,
            http,
            credential,
            store,
        })
    }

    /// The absolute URL of `path` (a path of this server, or a URL).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// The signed-in session, or why there is none.
    fn session(&self) -> anyhow::Result<&Session> {
        self.store.data.session.as_ref().ok_or_else(|| {
            anyhow!(
                "not logged in: run `streamgate-cli login` (or set STREAMGATE_TOKEN); config {}",
                self.store.path().display()
            )
        })
    }

    /// The bearer token to send, refreshed first when it is about to
    /// expire (`force`: refreshed anyway, after a 401).
    async fn token(&mut self, force: bool) -> anyhow::Result<Option<String>> {
        match &self.credential {
            Credential::None => Ok(None),
            Credential::Fixed(t) => Ok(Some(t.clone())),
            Credential::Stored => {
                let session = self.session()?;
                let stale =
                    session.access_expires_at_ms <= rt::unix_ms().saturating_add(REFRESH_MARGIN_MS);
                if (force || stale) && !session.refresh_token.is_empty() {
                    self.refresh().await?;
                }
                Ok(Some(self.session()?.access_token.clone()))
            }
        }
    }

    /// Trades the refresh token for a new pair and saves it.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let refresh_token = self.session()?.refresh_token.clone();
        let res = self
            .http
            .post(self.url("/v1/auth/refresh"))
            .timeout(CALL_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({ "refresh_token": refresh_token }).to_string())
            .send()
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        let pair = json_of(Method::POST, "/v1/auth/refresh", res)
            .await
            .context("the session ended: log in again")?;
        let session = self.store.data.session.as_mut().context("not logged in")?;
        session.access_token = str_field(&pair, "access_token")?;
        session.refresh_token = str_field(&pair, "refresh_token")?;
        session.access_expires_at_ms = pair["access_expires_at_ms"].as_u64().unwrap_or(0);
        self.store.save()
    }

    /// Sends what `build` makes (with the bearer token), retried once with
    /// a refreshed token after a 401 when the token is the config file's.
    ///
    /// # Errors
    /// No answer came (the error says from where).
    pub async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let mut forced = false;
        loop {
            let mut req = build(&self.http);
            if let Some(token) = self.token(forced).await? {
                req = req.bearer_auth(token);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("reaching {}", self.base))?;
            let retry = res.status() == StatusCode::UNAUTHORIZED
                && !forced
                && matches!(self.credential, Credential::Stored)
                && self
                    .store
                    .data
                    .session
                    .as_ref()
                    .is_some_and(|s| !s.refresh_token.is_empty());
            if !retry {
                return Ok(res);
            }
            forced = true;
        }
    }

    /// `method path` with an optional JSON body; the JSON answer (`Null`
    /// for none).
    ///
    /// # Errors
    /// No answer, or an error status ([`ApiFailure`]).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(path);
        let res = self
            .send(|http| {
                let req = http.request(method.clone(), &url).timeout(CALL_TIMEOUT);
                match body {
                    Some(b) => req
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(b.to_string()),
                    None => req,
                }
            })
            .await?;
        json_of(method, path, res).await
    }
}

/// The JSON of a successful answer (`Null` when it has no body), or an
/// [`ApiFailure`] with the API's message.
///
/// # Errors
/// An error status, a body too large or not JSON.
pub async fn json_of(method: Method, path: &str, res: Response) -> anyhow::Result<Value> {
    let status = res.status();
    let body = read_limited(res, MAX_ANSWER_BYTES).await?;
    if !status.is_success() {
        return Err(failure(method, path, status, &body).into());
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{method} {path}: the answer is not JSON"))
}

/// The failure of an answer with `status` and `body`.
#[must_use]
pub fn failure(method: Method, path: &str, status: StatusCode, body: &[u8]) -> ApiFailure {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| crate::text::prefix(&String::from_utf8_lossy(body), 200).to_owned());
    ApiFailure {
        method,
        path: path.to_owned(),
        status,
        message,
    }
}

/// The body of `res`, at most `max` bytes.
///
/// # Errors
/// The body failed, or is larger.
pub async fn read_limited(mut res: Response, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await.context("reading the answer")? {
        if out.len() + chunk.len() > max {
            bail!("the answer is larger than {max} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A string field of an answer.
///
/// # Errors
/// It is missing.
pub fn str_field(v: &Value, name: &str) -> anyhow::Result<String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the answer has no {name}: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked_and_trimmed() {
        assert_eq!(
            base_url("http://127.0.0.1:9090/").expect("ok"),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            base_url("https://sg.example.com/api/").expect("ok"),
            "https://sg.example.com/api"
        );
        for bad in ["127.0.0.1:9090", "ftp://h", "http://h/?x=1", "", "http://"] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_carry_the_apis_message() {
        let f = failure(
            Method::GET,
            "/v1/videos/x",
            StatusCode::NOT_FOUND,
            br#"{"error":"no video x"}"#,
        );
        assert_eq!(f.to_string(), "GET /v1/videos/x: 404 Not Found: no video x");
        let raw = failure(Method::GET, "/", StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(raw.message, "<html>");
    }
}
