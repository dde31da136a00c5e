//! Stalled and slow clients: one client node that keeps more requests open
//! on every gateway than its API budget takes, each sending part of its body and then
//! going quiet, or trickling it a byte every 2 s, as the outside probe of
//! issue 23 did. The user's auditor then requires that the user is never
//! refused for load it did not cause (see `workload::refused_for_load`).
//!
//! What the simulator cannot model: madsim's TCP never blocks a writer, so
//! a client that does not read its downloads holds nothing on the server
//! here; unread downloads are tested on real sockets (`tests/edge.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Limited, StreamBody};
use rand::Rng as _;
use streamgate::rt::{self, transport};
use tower::ServiceExt as _;

use super::timeline::{Kind, Timeline};

/// Requests each gateway is kept busy with: more than the API requests in
/// flight a gateway takes in all (64 in the swarm, a quarter of the
/// default: `cluster::GATEWAY_LIMITS`), so without per-client budgets the
/// user would be refused; with them, 16 are held and the rest refused.
pub const PER_GATEWAY: usize = super::cluster::GATEWAY_LIMITS.api_in_flight * 5 / 4;
/// The `Content-Length` every stalled request announces.
const ANNOUNCED_BYTES: usize = 200;
/// The `grpc-timeout` the requests ask of the simulated transport, which
/// bounds every call by it: a real client meets no such bound, so ask for
/// more than the run lasts.
const CALL_LIMIT: Duration = Duration::from_secs(600);
/// The answer body read at most.
const BODY_LIMIT: usize = 4 << 10;

/// How a request's body stalls.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// The first bytes, then nothing.
    Partial,
    /// A byte every 2 s (it would take 6 minutes).
    Trickle,
}

/// What the stalled client saw, for the timeline.
#[derive(Debug, Default)]
struct Tally {
    /// Cut by the body deadline (408).
    timed_out: u32,
    /// Refused for being over this client's share (429) or the server's (503).
    refused: u32,
    /// Other answers, or none.
    other: u32,
}

/// The body: the first bytes of a login, then silence or a trickle; never
/// the announced length.
fn body(stall: Stall) -> tonic::body::Body {
    let first = Bytes::from_static(br#"{"email":"x@example.com","#);
    let head = futures::stream::once(async move {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(first))
    });
    let rest = match stall {
        Stall::Partial => futures::stream::pending().boxed(),
        Stall::Trickle => futures::stream::unfold((), |()| async {
            rt::sleep(Duration::from_secs(2)).await;
            Some((Ok(http_body::Frame::data(Bytes::from_static(b" "))), ()))
        })
        .boxed(),
    };
    tonic::body::Body::new(StreamBody::new(head.chain(rest)))
}

/// One stalled `POST /v1/auth/login`: its status, or why none came.
async fn stalled_request(gateway: SocketAddr, stall: Stall) -> Result<StatusCode, String> {
    let mut req = http::Request::new(body(stall));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = "/v1/auth/login".parse().expect("a path");
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, ANNOUNCED_BYTES.into());
    h.insert(
        streamgate::grpc_timeout::HEADER,
        streamgate::grpc_timeout::encode(CALL_LIMIT),
    );
    let res = transport::channel(gateway)
        .oneshot(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    // Read the answer whole, as a client would before its next request.
    let _ = Limited::new(res.into_body(), BODY_LIMIT).collect().await;
    Ok(status)
}

/// Keeps [`PER_GATEWAY`] stalled requests open on each gateway until
/// `until` (timeline time): each answered one is sent again at once; a
/// refused one after 3-8 s, a few times what its `Retry-After` asks (which
/// keeps the simulation's cost bounded; a real attacker would not wait).
pub async fn run(gateways: Vec<SocketAddr>, tl: Timeline, until: Duration) {
    tl.print(
        "stalled",
        Kind::Fault,
        format_args!(
            "{PER_GATEWAY} stalled requests held open on each of {} gateways",
            gateways.len()
        ),
    );
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for gateway in gateways {
        for i in 0..PER_GATEWAY {
            let stall = if i % 4 == 0 {
                Stall::Trickle
            } else {
                Stall::Partial
            };
            let (tl, tally) = (tl.clone(), tally.clone());
            tasks.push(rt::spawn(async move {
                while tl.elapsed() < until {
                    let answer = stalled_request(gateway, stall).await;
                    let pause = {
                        let mut t = tally.lock().expect("tally");
                        match answer {
                            Ok(StatusCode::REQUEST_TIMEOUT) => {
                                t.timed_out += 1;
                                None
                            }
                            Ok(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                                t.refused += 1;
                                Some(rt::rng().gen_range(3_000..8_000))
                            }
                            _ => {
                                t.other += 1;
                                Some(rt::rng().gen_range(500..2_000))
                            }
                        }
                    };
                    if let Some(ms) = pause {
                        rt::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }));
        }
    }
    rt::sleep(until.saturating_sub(tl.elapsed())).await;
    for task in tasks {
        task.abort();
    }
    let t = tally.lock().expect("tally");
    tl.print(
        "stalled",
        Kind::Heal,
        format_args!(
            "stalled client stopped: {} cut by the body deadline (408), {} refused (429/503), {} other",
            t.timed_out, t.refused, t.other
        ),
    );
}
