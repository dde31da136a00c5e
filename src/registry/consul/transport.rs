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
