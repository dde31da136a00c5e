//! The simulated broker node and its client: subjects and queue groups (an
//! in-memory bus on the broker node), reached over madsim's network, with
//! core NATS's at-most-once semantics: a subscriber that is disconnected
//! misses what is published meanwhile, and reconnects on its own.
//!
//! Wire: `POST /bus/publish` with the JSON envelope; `POST /bus/subscribe`
//! with `subject` and `group` headers answers a never-ending body of
//! newline-delimited envelopes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use streamgate::bus::memory::MemoryBus;
use streamgate::bus::{
    BusError, Event, EventBus, Handler, Subscription, check_subscription, dispatch, handler,
};
use streamgate::rt::{self, transport};
use tokio::sync::mpsc::Sender;
use tower::{Service, ServiceExt};

/// How long a subscription stream stays open before the client renews it.
const STREAM_LIFETIME: Duration = Duration::from_secs(60);
/// Deadline of one publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates the broker node (named `broker`) at `addr`; it serves again
/// after a restart.
pub fn broker_node(addr: SocketAddr) -> madsim::task::NodeId {
    madsim::runtime::Handle::current()
        .create_node()
        .name("broker")
        .ip(addr.ip())
        .init(move || serve_broker(addr))
        .build()
        .id()
}

/// The streams of each queue group's members, by subject and group: where
/// a redelivery may go.
type Members = Arc<std::sync::Mutex<HashMap<(String, String), Vec<Sender<Bytes>>>>>;

/// Runs the broker on this node until it is killed.
pub async fn serve_broker(addr: SocketAddr) {
    let bus = Arc::new(MemoryBus::new());
    let members = Members::default();
    let router = axum::Router::new()
        .route("/bus/publish", post(publish))
        .route("/bus/subscribe", post(subscribe))
        .with_state((bus, members));
    crate::common::serve_http(addr, router, "the broker").await;
}

/// A member of `subject`'s queue `group` other than the one delivering
/// (any of them, itself included, as JetStream redelivers to whichever
/// consumer pulls next): where a duplicate goes.
fn redelivery_to(members: &Members, key: &(String, String), own: &Sender<Bytes>) -> Sender<Bytes> {
    use rand::seq::SliceRandom as _;
    let mut all = members
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(list) = all.get_mut(key) else {
        return own.clone();
    };
    list.retain(|tx| !tx.is_closed());
    list.choose(&mut rt::rng())
        .cloned()
        .unwrap_or_else(|| own.clone())
}

async fn publish(
    State((bus, _)): State<(Arc<MemoryBus>, Members)>,
    body: Bytes,
) -> (StatusCode, String) {
    match Event::decode(&body) {
        Ok(event) => match bus.publish(&event).await {
            Ok(()) => (StatusCode::OK, String::new()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn subscribe(
    State((bus, members)): State<(Arc<MemoryBus>, Members)>,
    headers: HeaderMap,
) -> axum::response::Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(subject), group) = (header("subject"), header("group")) else {
        return (StatusCode::BAD_REQUEST, "subject header missing").into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let key = group.clone().map(|g| (subject.clone(), g));
    if let Some(key) = &key {
        members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .push(tx.clone());
    }
    let forward = handler(move |event: Event| {
        let (tx, key, members) = (tx.clone(), key.clone(), members.clone());
        async move {
            let mut line = event.encode()?;
            line.push(b'\n');
            let line = Bytes::from(line);
            // buggify: delivered twice, as a redelivery after a lost ack
            // would be: in a queue group, to any of its members (so two
            // instances may handle one event at once).
            if rt::faults::buggify(rt::faults::Point::EventDuplicated, 0.03) {
                let to = match &key {
                    Some(key) => redelivery_to(&members, key, &tx),
                    None => tx.clone(),
                };
                let _ = to.send(line.clone()).await;
            }
            // buggify: held back a while, so that later events overtake it
            // (as after a redelivery, or from two publishers).
            if rt::faults::buggify(rt::faults::Point::EventDelayed, 0.03) {
                let hold = Duration::from_millis(rt::faults::buggify_range(10, 2_000));
                rt::spawn(async move {
                    rt::sleep(hold).await;
                    let _ = tx.send(line).await;
                });
                return Ok(());
            }
            tx.send(line).await.map_err(|_| "subscriber gone".into())
        }
    });
    let sub = match bus.subscribe(&subject, group.as_deref(), forward).await {
        Ok(sub) => sub,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // The subscription lives as long as the response body.
    let stream = futures::stream::unfold((rx, sub), |(mut rx, sub)| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(line), (rx, sub)))
    });
    axum::response::Response::new(axum::body::Body::from_stream(stream))
}

/// The client side: an [`EventBus`] talking to a broker node.
pub struct SimBus {
    broker: SocketAddr,
    closed: Arc<AtomicBool>,
    /// How many times subscriptions had to reconnect.
    pub reconnects: Arc<AtomicU64>,
}

impl SimBus {
    /// A client of the broker at `broker`.
    pub fn new(broker: SocketAddr) -> Self {
        Self {
            broker,
            closed: Arc::default(),
            reconnects: Arc::default(),
        }
    }
}

fn request(path: &str, timeout: Duration, body: Bytes) -> http::Request<tonic::body::Body> {
    let mut req = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(body)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = path.parse().expect("static path");
    req.headers_mut()
        .insert("grpc-timeout", streamgate::grpc_timeout::encode(timeout));
    req
}

#[async_trait]
impl EventBus for SimBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let req = request(
            "/bus/publish",
            PUBLISH_TIMEOUT,
            Bytes::from(event.encode()?),
        );
        let res = transport::channel(self.broker)
            .oneshot(req)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(BusError::Unavailable(format!(
                "broker answered {}",
                res.status()
            )))
        }
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        check_subscription(subject, queue_group)?;
        let (broker, reconnects) = (self.broker, self.reconnects.clone());
        let (subject, group) = (subject.to_owned(), queue_group.map(str::to_owned));
        let task = rt::spawn(async move {
            let mut failures = 0u32;
            loop {
                match follow(broker, &subject, group.as_deref(), &handler).await {
                    Ok(()) => failures = 0,
                    Err(_) => failures = failures.saturating_add(1),
                }
                reconnects.fetch_add(1, Ordering::Relaxed);
                let step = Duration::from_millis(50).saturating_mul(1 << failures.min(5));
                let jitter = rt::random_u64() % 50;
                rt::sleep(step + Duration::from_millis(jitter)).await;
            }
        });
        // Subscribing is asynchronous, as with NATS: give it a moment to reach the broker.
        rt::sleep(Duration::from_millis(20)).await;
        Ok(Subscription::new(task))
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// One subscription stream, until it ends or fails.
async fn follow(
    broker: SocketAddr,
    subject: &str,
    group: Option<&str>,
    handler: &Handler,
) -> Result<(), String> {
    let mut req = request("/bus/subscribe", STREAM_LIFETIME, Bytes::new());
    req.headers_mut()
        .insert("subject", subject.parse().map_err(|_| "bad subject")?);
    if let Some(group) = group {
        req.headers_mut()
            .insert("group", group.parse().map_err(|_| "bad group")?);
    }
    let mut channel = transport::channel(broker);
    let res = channel
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(req)
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("broker answered {}", res.status()));
    }
    let mut body = res.into_body().into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            match Event::decode(&line[..end]) {
                Ok(event) => {
                    dispatch(handler, event).await;
                }
                Err(e) => tracing::warn!(error = %e, "malformed event from the broker"),
            }
        }
        if buf.len() > streamgate::bus::MAX_EVENT_BYTES {
            return Err("event line too long".into());
        }
    }
    Ok(())
}
