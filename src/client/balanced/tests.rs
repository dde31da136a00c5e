//! Balanced against real sockets: a port nobody listens on (calls are
//! refused at once) and a listener that never answers (calls hang).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;

use super::*;
use crate::proto::CacheGetRequest;
use crate::proto::cache_service_client::CacheServiceClient;
use crate::rt::transport::Listener;

/// An address whose port was just freed: connections are refused.
async fn refusing() -> SocketAddr {
    let listener = Listener::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bound");
    listener.local_addr().expect("address")
}

fn get(timeout: Option<Duration>) -> tonic::Request<CacheGetRequest> {
    let mut req = tonic::Request::new(CacheGetRequest { key: "k".into() });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

#[tokio::test]
async fn keyed_calls_go_to_the_owner_and_fail_fast_when_it_is_open() {
    let balanced = Balanced::new("cache", Hooks::default());
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push((format!("cache-{i}"), refusing().await));
    }
    balanced.update(instances, BreakerConfig::default());
    let key = b"video:v1:abc";
    let owner = balanced.owner(key).expect("an owner");
    let ids: Vec<String> = balanced.endpoints().iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids[rendezvous::owner(key, &ids).expect("some")], owner.id);

    let mut client = CacheServiceClient::new(balanced.for_key(key));
    // The default breaker trips after 10 failures in its window: all ten
    // went to the owner, none elsewhere.
    for _ in 0..10 {
        let status = client.get(get(None)).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable);
    }
    for e in balanced.endpoints() {
        let open = matches!(e.breaker_state(), State::Open { .. });
        assert_eq!(open, e.id == owner.id, "{}: {:?}", e.id, e.breaker_state());
    }
    let status = client.get(get(None)).await.expect_err("open");
    assert!(status.message().contains(&owner.id), "{status:?}");
    assert!(status.message().contains("circuit breaker"), "{status:?}");

    // Unkeyed calls still find the other instances.
    let mut any = CacheServiceClient::new(balanced.clone());
    let status = any.get(get(None)).await.expect_err("refused");
    assert!(!status.message().contains("circuit breaker"), "{status:?}");
}

#[tokio::test]
async fn a_silent_instance_fails_by_the_deadline_and_a_dropped_call_leaks_nothing() {
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = Listener::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bound");
    let balanced = Balanced::new("cache", Hooks::default());
    let addr = silent.local_addr().expect("address");
    balanced.update(
        [("cache-silent".to_owned(), addr)],
        BreakerConfig::default(),
    );
    let endpoint = balanced.endpoints().pop().expect("one");
    let mut client = CacheServiceClient::new(balanced.clone());

    let started = rt::now();
    let status = client
        .get(get(Some(Duration::from_millis(100))))
        .await
        .expect_err("silent");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(rt::now() - started < Duration::from_secs(1));
    assert_eq!(endpoint.in_flight(), 0);

    // A caller that gives up drops the call: it leaves the count and the
    // breaker as they were.
    let gave_up = rt::timeout(Duration::from_millis(100), client.get(get(None))).await;
    assert!(gave_up.is_err());
    assert_eq!(endpoint.in_flight(), 0);
    assert_eq!(endpoint.breaker_state(), State::Closed);
}

#[tokio::test]
async fn calls_share_one_copy_of_the_channel() {
    let balanced = Balanced::new("cache", Hooks::default());
    balanced.update(
        [("cache-0".to_owned(), refusing().await)],
        BreakerConfig::default(),
    );
    let endpoint = balanced.endpoints().pop().expect("one");
    assert_eq!(endpoint.spares().len(), 0, "no call yet");
    let mut client = CacheServiceClient::new(balanced.clone());
    for _ in 0..3 {
        client.get(get(None)).await.expect_err("refused");
    }
    // Eight at once (fewer than the ten failures that open the breaker):
    // each gives its copy back once the channel has its request.
    let calls = (0..8).map(|_| {
        let mut client = CacheServiceClient::new(balanced.clone());
        async move { client.get(get(None)).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.expect_err("refused").code(), Code::Unavailable);
    }
    assert_eq!(endpoint.spares().len(), 1, "one copy served every call");
    assert_eq!(endpoint.in_flight(), 0);
}
