//! The HTTP seam under [`super::ConsulRegistry`]: one request in, one
//! size-limited response out; hyper in production, anything in simulation.

use async_trait::async_trait;
use bytes::Bytes;

/// Sends one HTTP request to the Consul agent and reads the whole answer.
#[async_trait]
pub trait HttpTransport: Send + Sync + 'static {
    /// Sends `req`; the response body must be refused (an `Err`) once it
    /// exceeds `body_limit` bytes. Timeouts are the caller's business.
    ///
    /// # Errors
    /// A description of the transport failure (connect, I/O, body too large).
    async fn send(
        &self,
        req: http::Request<Bytes>,
        body_limit: usize,
    ) -> Result<http::Response<Bytes>, String>;

    /// Sends `req` and hands the response body over as it arrives (a
    /// watch). Only transports that need it implement it: the default
    /// refuses.
    ///
    /// # Errors
    /// A description of the transport failure, or that it cannot stream.
    async fn stream(&self, req: http::Request<Bytes>) -> Result<Streamed, String> {
        drop(req);
        Err("this transport does not stream responses".to_owned())
    }
}

/// A JSON call that did not get a 200 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PostError {
    /// The answer's status, if one came.
    pub status: Option<http::StatusCode>,
    /// What went wrong: the transport's failure, or the status and the
    /// answer's text.
    pub message: String,
}

/// Posts `req` as JSON to `url` and reads the JSON answer of a 200: the
/// one-call protocol of the simulator's modelled servers. Any other
/// status is a [`PostError`] naming it with the answer's text.
///
/// # Errors
/// The transport failed, the status was not 200, or the answer does not
/// parse.
pub async fn post_json<T, Req, Ans>(
    transport: &T,
    url: &str,
    req: &Req,
    body_limit: usize,
) -> Result<Ans, PostError>
where
    T: HttpTransport + ?Sized,
    Req: serde::Serialize + Sync,
    Ans: serde::de::DeserializeOwned,
{
    let fail = |message: String| PostError {
        status: None,
        message,
    };
    let body = serde_json::to_vec(req).map_err(|e| fail(e.to_string()))?;
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .map_err(|e| fail(e.to_string()))?;
    let res = transport.send(req, body_limit).await.map_err(fail)?;
    if res.status() != http::StatusCode::OK {
        return Err(PostError {
            status: Some(res.status()),
            message: format!("{}: {}", res.status(), String::from_utf8_lossy(res.body())),
        });
    }
    serde_json::from_slice(res.body()).map_err(|e| fail(format!("bad answer: {e}")))
}

/// A modelled server's answer to one call, as [`post_json`] reads it:
/// `answer` as JSON with status 200, or its failure as 503 with
/// `{"error": "..."}`.
pub fn json_answer<A, E>(answer: Result<A, E>) -> axum::response::Response
where
    A: serde::Serialize,
    E: std::fmt::Display,
{
    use axum::response::IntoResponse as _;
    match answer {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

impl PostError {
    /// A failure with no answer: `message` says why.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            status: None,
            message: message.into(),
        }
    }
}

/// A client of one of the simulator's modelled servers (the database and
/// object-store nodes): each call posts JSON to one URL ([`post_json`])
/// and waits at most 15 s for the answer.
#[derive(Clone)]
pub struct ModelClient {
    url: String,
    transport: std::sync::Arc<dyn HttpTransport>,
    body_limit: usize,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ModelClient {
    /// Longest a call waits for its answer.
    pub const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

    /// Calls to `base` (`http://ip:port`) + `path`, reading answers of at
    /// most `body_limit` bytes.
    #[must_use]
    pub fn new(
        base: &str,
        path: &str,
        transport: std::sync::Arc<dyn HttpTransport>,
        body_limit: usize,
    ) -> Self {
        Self {
            url: format!("{base}{path}"),
            transport,
            body_limit,
        }
    }

    /// Posts `req`, reads the answer.
    ///
    /// # Errors
    /// As [`post_json`]; or no answer within [`Self::CALL_LIMIT`].
    pub async fn call<Req, Ans>(&self, req: &Req) -> Result<Ans, PostError>
    where
        Req: serde::Serialize + Sync,
        Ans: serde::de::DeserializeOwned,
    {
        let call = post_json(&*self.transport, &self.url, req, self.body_limit);
        crate::rt::timeout(Self::CALL_LIMIT, call)
            .await
            .map_err(|_| PostError::new("timed out"))?
    }
}

/// A response whose body arrives in pieces: its status, then the pieces
/// (an `Err` ends it).
pub struct Streamed {
    /// The status.
    pub status: http::StatusCode,
    /// The body's pieces.
    pub body: futures::stream::BoxStream<'static, Result<Bytes, String>>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[cfg(not(madsim))]
pub use hyper_impl::{ConsulTls, HyperTransport};

#[cfg(not(madsim))]
mod hyper_impl {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full, Limited};
    use hyper_rustls::HttpsConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    use super::HttpTransport;

    /// TLS towards the Consul agent (an `https://` address): the CA
    /// certificates its certificate must chain to (`None`: the system's),
    /// and a client certificate for an agent with `verify_incoming`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct ConsulTls {
        /// CA certificates (PEM).
        pub ca: Option<PathBuf>,
        /// A client certificate chain (PEM).
        pub cert: Option<PathBuf>,
        /// Its key (PEM).
        pub key: Option<PathBuf>,
    }

    fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        crate::rt::mtls::read_certs("certificate file", path).map_err(|e| e.0)
    }

    impl ConsulTls {
        fn client_config(&self) -> Result<rustls::ClientConfig, String> {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca {
                Some(ca) => {
                    for cert in certs(ca)? {
                        roots
                            .add(cert)
                            .map_err(|e| format!("{}: {e}", ca.display()))?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                }
            }
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration: {e}"))?
                .with_root_certificates(roots);
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let key = PrivateKeyDer::from_pem_file(key)
                        .map_err(|e| format!("{}: {e}", key.display()))?;
                    builder
                        .with_client_auth_cert(certs(cert)?, key)
                        .map_err(|e| format!("{}: {e}", cert.display()))
                }
                (None, None) => Ok(builder.with_no_client_auth()),
                _ => Err("--consul-cert and --consul-key go together".to_owned()),
            }
        }
    }

    /// Production transport: hyper-util's pooled HTTP/1 client, over TLS
    /// (rustls) for an `https://` address, plain for `http://`.
    #[derive(Debug, Clone)]
    pub struct HyperTransport {
        client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    }

    impl HyperTransport {
        /// A client with hyper-util's default pool, trusting the system's
        /// CA certificates for `https://`.
        ///
        /// # Panics
        /// Never: the default TLS settings always build.
        #[must_use]
        pub fn new() -> Self {
            Self::with_tls(&ConsulTls::default()).expect("the default TLS settings build")
        }

        /// A client with `tls` for `https://` addresses.
        ///
        /// # Errors
        /// A file that does not load, named.
        pub fn with_tls(tls: &ConsulTls) -> Result<Self, String> {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.client_config()?)
                .https_or_http()
                .enable_http1()
                .build();
            Ok(Self {
                client: Client::builder(TokioExecutor::new()).build(connector),
            })
        }
    }

    impl Default for HyperTransport {
        fn default() -> Self {
            Self::new()
        }
    }

    #[async_trait]
    impl HttpTransport for HyperTransport {
        async fn send(
            &self,
            req: http::Request<Bytes>,
            body_limit: usize,
        ) -> Result<http::Response<Bytes>, String> {
            let resp = self
                .client
                .request(req.map(Full::new))
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, body_limit)
                .collect()
                .await
                .map_err(|e| format!("reading the response body: {e}"))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        }
    }
}

#[cfg(madsim)]
pub use sim_impl::SimTransport;

#[cfg(madsim)]
mod sim_impl {
    use std::net::SocketAddr;
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full, Limited};
    use tower::ServiceExt as _;

    use super::{HttpTransport, Streamed};
    use crate::rt::transport;

    /// The simulator's transport: the request over madsim's network to the
    /// node named by the URL's `ip:port` (a simulated agent serving the
    /// same HTTP API).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct SimTransport;

    /// The simulated transport's own deadline; the caller's (shorter)
    /// timeout is what normally ends a call.
    const CALL_LIMIT: Duration = Duration::from_secs(11 * 60);

    /// The request over madsim's network to the node its URL names; the
    /// answer with its body unread.
    async fn call(req: http::Request<Bytes>) -> Result<http::Response<tonic::body::Body>, String> {
        let addr: SocketAddr = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| format!("{}: not an ip:port URL", req.uri()))?;
        let (mut parts, body) = req.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("bad path: {e}"))?;
        parts.headers.insert(
            crate::grpc_timeout::HEADER,
            crate::grpc_timeout::encode(CALL_LIMIT),
        );
        let req = http::Request::from_parts(parts, tonic::body::Body::new(Full::new(body)));
        transport::channel(addr)
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())
    }

    #[async_trait]
    impl HttpTransport for SimTransport {
        async fn send(
            &self,
            req: http::Request<Bytes>,
            body_limit: usize,
        ) -> Result<http::Response<Bytes>, String> {
            let res = call(req).await?;
            let (parts, body) = res.into_parts();
            let bytes = Limited::new(body, body_limit)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, bytes))
        }

        async fn stream(&self, req: http::Request<Bytes>) -> Result<Streamed, String> {
            use futures::TryStreamExt as _;
            let res = call(req).await?;
            let status = res.status();
            let body = res
                .into_body()
                .into_data_stream()
                .map_err(|e| format!("reading the answer: {e}"));
            Ok(Streamed {
                status,
                body: Box::pin(body),
            })
        }
    }
}

/// A transport handing each request to `router` in this process: the
/// modelled servers' contract tests, without sockets.
#[cfg(all(test, not(madsim)))]
pub(crate) fn in_process(router: axum::Router) -> std::sync::Arc<dyn HttpTransport> {
    struct InProcess(axum::Router);
    #[async_trait]
    impl HttpTransport for InProcess {
        async fn send(
            &self,
            req: http::Request<Bytes>,
            limit: usize,
        ) -> Result<http::Response<Bytes>, String> {
            use tower::ServiceExt as _;
            let res = self
                .0
                .clone()
                .oneshot(req.map(axum::body::Body::from))
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = res.into_parts();
            let body = axum::body::to_bytes(body, limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok(http::Response::from_parts(parts, body))
        }
    }
    std::sync::Arc::new(InProcess(router))
}
