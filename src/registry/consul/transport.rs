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
}

#[cfg(not(madsim))]
pub use hyper_impl::HyperTransport;

#[cfg(not(madsim))]
mod hyper_impl {
    use async_trait::async_trait;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    use super::HttpTransport;

    /// Production transport: hyper-util's pooled HTTP/1 client (plain HTTP,
    /// as Consul agents listen on localhost).
    #[derive(Debug, Clone)]
    pub struct HyperTransport {
        client: Client<HttpConnector, Full<Bytes>>,
    }

    impl HyperTransport {
        /// A client with hyper-util's default pool.
        #[must_use]
        pub fn new() -> Self {
            Self {
                client: Client::builder(TokioExecutor::new()).build_http(),
            }
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

    use super::HttpTransport;
    use crate::rt::transport;

    /// The simulator's transport: the request over madsim's network to the
    /// node named by the URL's `ip:port` (a simulated agent serving the
    /// same HTTP API).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct SimTransport;

    /// The simulated transport's own deadline; the caller's (shorter)
    /// timeout is what normally ends a call.
    const CALL_LIMIT: Duration = Duration::from_secs(11 * 60);

    #[async_trait]
    impl HttpTransport for SimTransport {
        async fn send(
            &self,
            req: http::Request<Bytes>,
            body_limit: usize,
        ) -> Result<http::Response<Bytes>, String> {
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
            let res = transport::channel(addr)
                .oneshot(req)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = res.into_parts();
            let bytes = Limited::new(body, body_limit)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, bytes))
        }
    }
}
