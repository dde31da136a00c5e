//! The gateway's read-through cache against real metadata and cache
//! services (plus the fixture's streaming and auth): a second GET is served
//! from the cache, even with metadata gone; PATCH and DELETE invalidate for
//! their client; Metadata* events from elsewhere invalidate; without a
//! cache, with a stopped one or a silent one, GET still answers from
//! metadata; two gateways agree on which cache instance holds a key.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode, header};

use super::router_tests::{Fixture, fixture, get, send};
use super::video_cache::{self, BUDGET, key};
use crate::bus::events::{MetadataUpdated, Payload as _};
use crate::client::{ClientPool, PoolConfig};
use crate::proto::{CacheGetRequest, CacheSetRequest, CreateVideoRequest, UpdateVideoRequest};
use crate::resilience::breaker::State;
use crate::rt;
use crate::services::ServiceKind;
use crate::services::{self, Common, RunningService, ServiceConfig};

async fn start(f: &Fixture, kind: ServiceKind) -> RunningService {
    let common = Common {
        check_interval: Duration::from_secs(3600),
        ..Common::ephemeral()
    };
    let service = services::start(&ServiceConfig::new(kind), &common, &f.runtime)
        .await
        .expect("starts");
    f.runtime
        .registry
        .register(service.info())
        .await
        .expect("register");
    service
}

/// A video titled `title` owned by the fixture's user, created in metadata
/// directly.
async fn create(f: &Fixture, title: &str) -> String {
    create_for(f, &f.user_id, title).await
}

async fn create_for(f: &Fixture, owner: &str, title: &str) -> String {
    let req = CreateVideoRequest {
        owner_id: owner.into(),
        title: title.into(),
        content_type: "video/mp4".into(),
        size_bytes: 10,
        sha256_hex: "0".repeat(64),
        ..CreateVideoRequest::default()
    };
    let mut metadata = f.runtime.pool.metadata().await.expect("metadata");
    let video = metadata.create_video(req).await.expect("created");
    video.into_inner().video.expect("a video").id
}

/// Renames a video in metadata directly, behind the gateway's back.
async fn rename(f: &Fixture, id: &str, title: &str) {
    let req = UpdateVideoRequest {
        video_id: id.into(),
        update_fields: vec!["title".into()],
        title: title.into(),
        ..UpdateVideoRequest::default()
    };
    let mut metadata = f.runtime.pool.metadata().await.expect("metadata");
    metadata.update_video(req).await.expect("updated");
}

async fn cached(f: &Fixture, id: &str) -> bool {
    let mut cache = f.runtime.pool.cache_for_key(&key(id)).await.expect("cache");
    let req = CacheGetRequest { key: key(id) };
    cache.get(req).await.expect("get").into_inner().found
}

fn title(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    json["title"].as_str().expect("a title").to_owned()
}

/// GET `/v1/videos/{id}`: its status and title (empty on an error).
async fn get_title(f: &Fixture, id: &str) -> (StatusCode, String) {
    let (status, _, body) = send(f, get(&format!("/v1/videos/{id}"), None)).await;
    let title = if status == StatusCode::OK {
        title(&body)
    } else {
        String::new()
    };
    (status, title)
}

/// Polls `check` every 10 ms for up to 2 s (far below the cache's TTL).
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let until = rt::now() + Duration::from_secs(2);
    while rt::now() < until {
        if check().await {
            return true;
        }
        rt::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_second_get_is_served_from_the_cache() {
    let f = fixture().await;
    let metadata = start(&f, ServiceKind::Metadata).await;
    let _cache = start(&f, ServiceKind::Cache).await;
    let id = create(&f, "first").await;
    let never_read = create(&f, "other").await;
    let url = format!("/v1/videos/{id}");

    let (status, _, first) = send(&f, get(&url, None)).await;
    assert_eq!(
        (status, title(&first)),
        (StatusCode::OK, "first".to_owned())
    );
    assert_eq!(f.runtime.metrics.cache_reads("miss"), 1);
    assert!(cached(&f, &id).await, "filled before the answer");

    // Changed behind the gateway's back (no invalidation consumer runs in
    // this test): the cached copy answers.
    rename(&f, &id, "second").await;
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    assert_eq!(f.runtime.metrics.cache_reads("hit"), 1);

    // With metadata gone, the cached video is still served; others are not.
    metadata.stop().await.expect("stops");
    let (status, _, again) = send(&f, get(&url, None)).await;
    assert_eq!((status, again), (StatusCode::OK, first));
    assert_eq!(f.runtime.metrics.cache_reads("hit"), 2);
    let (status, _) = get_title(&f, &never_read).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

fn patch(id: &str, title: &str) -> Request<Body> {
    Request::patch(format!("/v1/videos/{id}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({ "title": title }).to_string(),
        ))
        .expect("request")
}

#[tokio::test]
async fn patch_and_delete_invalidate_for_their_client() {
    let f = fixture().await;
    let _metadata = start(&f, ServiceKind::Metadata).await;
    let _cache = start(&f, ServiceKind::Cache).await;
    let id = create(&f, "first").await;
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    assert!(cached(&f, &id).await);

    let (status, _, body) = send(&f, patch(&id, "second")).await;
    assert_eq!((status, title(&body)), (StatusCode::OK, "second".into()));
    assert!(!cached(&f, &id).await, "invalidated before the answer");
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "second".into()));
    assert!(cached(&f, &id).await, "filled again");

    let delete = Request::delete(format!("/v1/videos/{id}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&f, delete).await.0, StatusCode::NO_CONTENT);
    assert_eq!(get_title(&f, &id).await.0, StatusCode::NOT_FOUND);
    assert_eq!(f.runtime.metrics.cache_reads("hit"), 0);
}

#[tokio::test]
async fn metadata_events_from_elsewhere_invalidate() {
    let f = fixture().await;
    let _metadata = start(&f, ServiceKind::Metadata).await;
    let _cache = start(&f, ServiceKind::Cache).await;
    let _consumers = video_cache::subscribe(&f.runtime)
        .await
        .expect("subscribed");
    let id = create(&f, "first").await;

    // An event from another publisher, metadata unchanged: the entry goes.
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    assert!(cached(&f, &id).await);
    let event = MetadataUpdated {
        video_id: id.clone(),
        fields: vec!["state".into()],
        state: "transcoding".into(),
    }
    .to_event("someone-else")
    .expect("event");
    f.runtime.bus.publish(&event).await.expect("published");
    assert!(eventually(async || !cached(&f, &id).await).await);

    // A change made in metadata directly reaches readers through its event.
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    rename(&f, &id, "second").await;
    assert!(eventually(async || get_title(&f, &id).await.1 == "second").await);

    let mut metadata = f.runtime.pool.metadata().await.expect("metadata");
    let req = crate::proto::DeleteVideoRequest {
        video_id: id.clone(),
    };
    metadata.delete_video(req).await.expect("deleted");
    assert!(eventually(async || get_title(&f, &id).await.0 == StatusCode::NOT_FOUND).await);
}

#[tokio::test]
async fn without_a_cache_gets_answer_from_metadata() {
    let f = fixture().await;
    let _metadata = start(&f, ServiceKind::Metadata).await;
    let id = create(&f, "first").await;
    for _ in 0..2 {
        assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    }
    assert_eq!(f.runtime.metrics.cache_reads("fallback"), 2);
    assert_eq!(f.runtime.metrics.cache_reads("hit"), 0);
    // The gateway's calls to metadata are on /metrics as calls made.
    let text = f.runtime.metrics.render();
    let made: f64 = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix(
                "streamgate_client_requests_total{service=\"streamgate.v1.MetadataService\",method=\"GetVideo\",code=\"Ok\"} ",
            )
        })
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    assert!(made >= 2.0, "{made} GetVideo calls counted:\n{text}");
}

#[tokio::test]
async fn a_stopped_cache_degrades_to_metadata() {
    let f = fixture().await;
    let _metadata = start(&f, ServiceKind::Metadata).await;
    let cache = start(&f, ServiceKind::Cache).await;
    let id = create(&f, "first").await;
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));

    // Stopped but still registered: calls to it are refused.
    cache.stop().await.expect("stops");
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
    assert_eq!(send(&f, patch(&id, "second")).await.0, StatusCode::OK);
    assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "second".into()));
    assert_eq!(f.runtime.metrics.cache_reads("fallback"), 2);
}

#[tokio::test]
async fn a_silent_cache_costs_its_budget_until_its_breaker_opens() {
    let f = fixture().await;
    let metadata = start(&f, ServiceKind::Metadata).await;
    // A cache instance that accepts connections and never answers.
    let silent = rt::transport::Listener::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bound");
    let mut info = metadata.info().clone();
    info.name = "cache".into();
    info.id = "cache-silent".into();
    info.port = silent.local_addr().expect("address").port();
    f.runtime.registry.register(&info).await.expect("register");
    let id = create(&f, "first").await;

    let mut slowest = Duration::ZERO;
    let mut last = Duration::ZERO;
    for _ in 0..12 {
        let started = rt::now();
        assert_eq!(get_title(&f, &id).await, (StatusCode::OK, "first".into()));
        last = rt::now() - started;
        slowest = slowest.max(last);
    }
    assert!(slowest < BUDGET + Duration::from_millis(300), "{slowest:?}");
    let endpoints = f.runtime.pool.endpoints("cache");
    assert!(
        matches!(endpoints[0].breaker_state(), State::Open { .. }),
        "{:?}",
        endpoints[0].breaker_state()
    );
    assert!(
        last < Duration::from_millis(50),
        "the open breaker answers at once: {last:?}"
    );
    assert_eq!(endpoints[0].in_flight(), 0);
    assert_eq!(f.runtime.metrics.cache_reads("fallback"), 12);
    // The opening is on /metrics, by called service and instance.
    assert_eq!(
        f.runtime.metrics.breaker_state("cache", "cache-silent"),
        Some(2)
    );
    let text = f.runtime.metrics.render();
    for line in [
        "streamgate_breaker_state{target=\"cache\",endpoint=\"cache-silent\"} 2\n",
        "streamgate_breaker_transitions_total{target=\"cache\",endpoint=\"cache-silent\",to=\"open\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    drop(silent);
}

/// Two gateways (two pools on one registry) over three cache instances:
/// what one stores, the other finds; an instance leaving takes only its
/// own keys with it.
#[tokio::test]
async fn gateways_agree_on_owners_and_a_leaving_instance_moves_only_its_keys() {
    let f = fixture().await;
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(start(&f, ServiceKind::Cache).await);
    }
    let other = ClientPool::new(
        f.runtime.registry.clone(),
        PoolConfig::new(f.runtime.keys.clone(), "api-gateway"),
    );
    let keys: Vec<String> = (0..60).map(|i| key(&format!("v{i}"))).collect();
    for k in &keys {
        let mut cache = f.runtime.pool.cache_for_key(k).await.expect("cache");
        let req = CacheSetRequest {
            key: k.clone(),
            value: k.as_bytes().to_vec(),
            ttl_ms: 60_000,
        };
        cache.set(req).await.expect("set");
    }
    let found = async |pool: &ClientPool, k: &String| {
        let mut cache = pool.cache_for_key(k).await.expect("cache");
        let req = CacheGetRequest { key: k.clone() };
        cache.get(req).await.expect("get").into_inner().found
    };
    for k in &keys {
        assert!(
            found(&other, k).await,
            "{k} not where the other gateway looks"
        );
    }
    let owners: Vec<String> = keys
        .iter()
        .map(|k| {
            f.runtime
                .pool
                .owner("cache", k.as_bytes())
                .expect("owner")
                .id
                .clone()
        })
        .collect();
    let gone = caches[0].info().id.clone();
    let moved = owners.iter().filter(|o| **o == gone).count();
    assert!(
        moved > 5 && moved < 40,
        "{moved} of 60 keys on one of three"
    );

    f.runtime
        .registry
        .deregister(&gone)
        .await
        .expect("deregistered");
    assert!(eventually(async || other.endpoints("cache").len() == 2).await);
    for (k, owner) in keys.iter().zip(&owners) {
        assert_eq!(
            found(&other, k).await,
            *owner != gone,
            "{k} (owned by {owner})"
        );
    }
}

#[tokio::test]
async fn only_the_owner_changes_or_deletes_a_video() {
    let f = fixture().await;
    let _metadata = start(&f, ServiceKind::Metadata).await;
    let delete = |id: &str| {
        Request::delete(format!("/v1/videos/{id}"))
            .body(Body::empty())
            .expect("request")
    };
    // Another user's private video is not there for this one: 404, as for
    // an id nobody has.
    let theirs = create_for(&f, "someone-else", "theirs").await;
    let (status, _, body) = send(&f, patch(&theirs, "mine now")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    assert_eq!(
        super::router_tests::error_of(&body),
        format!("no video {theirs}")
    );
    assert_eq!(send(&f, delete(&theirs)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get_title(&f, &theirs).await.0, StatusCode::NOT_FOUND);
    // A public one it may see, not change: 403.
    let public = create_for(&f, "someone-else", "public").await;
    let req = UpdateVideoRequest {
        video_id: public.clone(),
        update_fields: vec!["visibility".into()],
        visibility: crate::proto::Visibility::Public as i32,
        ..UpdateVideoRequest::default()
    };
    let mut metadata = f.runtime.pool.metadata().await.expect("metadata");
    metadata.update_video(req).await.expect("made public");
    let (status, _, body) = send(&f, patch(&public, "mine now")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    assert!(super::router_tests::error_of(&body).contains("owner"));
    assert_eq!(send(&f, delete(&public)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        get_title(&f, &public).await,
        (StatusCode::OK, "public".into())
    );

    let mine = create(&f, "mine").await;
    assert_eq!(send(&f, patch(&mine, "renamed")).await.0, StatusCode::OK);
    assert_eq!(send(&f, delete(&mine)).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        send(&f, delete("nosuchvideo")).await.0,
        StatusCode::NOT_FOUND
    );
}
