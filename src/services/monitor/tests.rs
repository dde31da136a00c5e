//! The monitor on real tokio and sockets, probing two nodes that share a
//! registry: both serving, then one stopped (an alert fires after the
//! damping, published on the bus), then back (the alert resolves).
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::{Config, domain};
use crate::bus::events::{AlertResolved, AlertTriggered, MetadataCreated, Payload as _};
use crate::bus::memory::MemoryBus;
use crate::bus::{Event, EventBus, EventType, Subscription, handler};
use crate::client::PoolConfig;
use crate::kernel::{Kernel, Plugin, Seams};
use crate::middleware::auth::Keyring;
use crate::proto::monitor_service_client::MonitorServiceClient;
use crate::proto::{
    self, AcknowledgeAlertRequest, CacheGetRequest, GetStatusRequest, GetStatusResponse,
    ListAlertsRequest, WatchAlertsRequest,
};
use crate::registry::memory::MemoryRegistry;
use crate::rt::{self, transport};
use crate::services::{Common, Domain, ServiceConfig};
use crate::services::{ServiceKind, ServicePlugin};

const INTERVAL: Duration = Duration::from_millis(100);

async fn node(registry: Arc<MemoryRegistry>, bus: Arc<MemoryBus>, kind: ServiceKind) -> Kernel {
    let plugin = ServicePlugin::new(Common::ephemeral(), ServiceConfig::new(kind));
    let plugins = vec![Box::new(plugin) as Box<dyn Plugin>];
    let pool = PoolConfig::new(Keyring::generate("test"), "test");
    Kernel::start_with(Seams::new(bus, registry), pool, plugins)
        .await
        .expect("node starts")
}

/// The monitor's domain served on its own port without the server layers
/// (so a plain channel can call it); stopped on drop.
struct Served {
    addr: SocketAddr,
    domain: Domain,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        for task in self.domain.background.tasks.drain(..) {
            task.abort();
        }
    }
}

async fn serve_monitor(on: &Kernel, config: Config) -> Served {
    let common = Common::ephemeral();
    let mut domain = domain(&config, &common, on.runtime())
        .await
        .expect("monitor");
    let listener = transport::Listener::bind(common.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let routes = std::mem::take(&mut domain.routes);
    rt::spawn(transport::serve(
        listener,
        routes,
        tower::layer::util::Identity::new(),
        async move {
            let _ = rx.await;
        },
    ));
    Served {
        addr,
        domain,
        stop: Some(tx),
    }
}

async fn listen(bus: &MemoryBus) -> (Vec<Subscription>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for kind in [EventType::AlertTriggered, EventType::AlertResolved] {
        let tx = tx.clone();
        let h = handler(move |e| {
            let tx = tx.clone();
            async move { tx.send(e).map_err(|e| e.to_string().into()) }
        });
        subs.push(bus.subscribe(kind.subject(), None, h).await.unwrap());
    }
    (subs, rx)
}

type Client = MonitorServiceClient<transport::Channel>;

async fn status(client: &mut Client) -> GetStatusResponse {
    client
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

fn health_of(s: &GetStatusResponse, name: &str) -> Option<proto::ServiceHealth> {
    s.services
        .iter()
        .find(|x| x.name == name)
        .and_then(|x| proto::ServiceHealth::try_from(x.health).ok())
}

/// Polls the status until `ok` holds, for at most 5 s.
async fn status_until(
    client: &mut Client,
    ok: impl Fn(&GetStatusResponse) -> bool,
) -> GetStatusResponse {
    let until = rt::now() + Duration::from_secs(5);
    loop {
        let s = status(client).await;
        if ok(&s) {
            return s;
        }
        assert!(rt::now() < until, "status never got there: {s:?}");
        rt::sleep(INTERVAL / 2).await;
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    rt::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an alert event within 5 s")
        .expect("bus open")
}

#[tokio::test]
async fn a_stopped_service_fires_an_alert_after_damping_and_resolves_when_back() {
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(MemoryBus::new());
    let (_subs, mut events) = listen(&bus).await;
    let cache = node(registry.clone(), bus.clone(), ServiceKind::Cache).await;
    // Its own bus: stopping a node closes its bus.
    let metadata = node(
        registry.clone(),
        Arc::new(MemoryBus::new()),
        ServiceKind::Metadata,
    )
    .await;
    let config = Config {
        services: vec!["cache".into(), "metadata".into()],
        probe_interval: INTERVAL,
        probe_timeout: INTERVAL,
        ..Config::default()
    };
    let damping = config.damping;
    let monitor = serve_monitor(&cache, config).await;
    let mut client = MonitorServiceClient::new(transport::channel(monitor.addr));

    // A call through the monitor node's pool gives it a breaker to show.
    let mut c = cache.pool().cache().await.expect("cache client");
    let _ = c.get(CacheGetRequest { key: "k".into() }).await;
    let created = MetadataCreated {
        video_id: "v1".into(),
        owner_id: "anonymous".into(),
        title: "t".into(),
    };
    bus.publish(&created.to_event("metadata").unwrap())
        .await
        .unwrap();

    let serving = |s: &GetStatusResponse| {
        health_of(s, "cache") == Some(proto::ServiceHealth::Serving)
            && health_of(s, "metadata") == Some(proto::ServiceHealth::Serving)
    };
    let s = status_until(&mut client, serving).await;
    assert_eq!(s.overall, proto::ServiceHealth::Serving as i32);
    assert_eq!(s.firing_alerts, 0);
    let cache_status = &s.services[0];
    assert_eq!(cache_status.breakers.len(), 1, "{s:?}");
    assert_eq!(
        cache_status.breakers[0].state,
        proto::BreakerState::Closed as i32
    );
    assert!(cache_status.last_seen_at_ms > 0);
    let rates = &s.services[1].event_rates;
    assert_eq!(
        (
            rates.len(),
            rates[0].event_type.as_str(),
            rates[0].count_last_minute
        ),
        (1, "metadata_created", 1),
        "{s:?}"
    );

    let watch = WatchAlertsRequest {
        service_name: "metadata".into(),
        ..WatchAlertsRequest::default()
    };
    let mut watched = client.watch_alerts(watch).await.unwrap().into_inner();

    // Stop metadata: NOT_SERVING and deregistered at once.
    let stopped_at = rt::now();
    metadata.shutdown().await;
    let fired = next_event(&mut events).await;
    let waited = rt::now() - stopped_at;
    let fired = AlertTriggered::from_event(&fired).expect("AlertTriggered first");
    assert_eq!(
        (fired.service_name.as_str(), fired.severity.as_str()),
        ("metadata", "critical")
    );
    assert_eq!(fired.summary, "metadata is not serving");
    // A round that started just before the stop may see the first bad
    // answer: allow a fifth of an interval.
    let damped = INTERVAL * (damping.trigger_after - 1) - INTERVAL / 5;
    assert!(
        waited >= damped,
        "fired after {waited:?}, before {damped:?} of damping"
    );
    let s = status(&mut client).await;
    assert_eq!(
        health_of(&s, "metadata"),
        Some(proto::ServiceHealth::NotServing)
    );
    assert_eq!(
        (s.overall, s.firing_alerts),
        (proto::ServiceHealth::NotServing as i32, 1)
    );
    let live = rt::timeout(Duration::from_secs(5), watched.next())
        .await
        .expect("a watched change")
        .expect("stream open")
        .expect("an alert");
    assert_eq!(
        (live.id.as_str(), live.state),
        (fired.alert_id.as_str(), proto::AlertState::Firing as i32)
    );
    let listed = client
        .list_alerts(ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.alerts.len(), 1);
    assert_eq!(listed.alerts[0].id, fired.alert_id);

    // Back on a new node: the alert resolves after M healthy probes.
    let back_at = rt::now();
    let metadata = node(
        registry.clone(),
        Arc::new(MemoryBus::new()),
        ServiceKind::Metadata,
    )
    .await;
    let resolved = next_event(&mut events).await;
    let waited = rt::now() - back_at;
    let resolved = AlertResolved::from_event(&resolved).expect("then AlertResolved");
    assert_eq!(resolved.alert_id, fired.alert_id);
    let damped = INTERVAL * (damping.resolve_after - 1) - INTERVAL / 5;
    assert!(
        waited >= damped,
        "resolved after {waited:?}, before {damped:?} of damping"
    );
    let s = status(&mut client).await;
    assert!(serving(&s), "{s:?}");
    assert_eq!(s.firing_alerts, 0);
    let live = watched.next().await.unwrap().unwrap();
    assert_eq!(live.state, proto::AlertState::Resolved as i32);

    let ack = AcknowledgeAlertRequest {
        alert_id: fired.alert_id.clone(),
        acknowledged_by: "oncall".into(),
        note: "metadata restarted".into(),
    };
    let acked = client.acknowledge_alert(ack).await.unwrap().into_inner();
    assert!(acked.alert.is_some_and(|a| a.acknowledged));
    assert!(
        rt::timeout(INTERVAL * 5, events.recv()).await.is_err(),
        "no further alert event"
    );

    drop(monitor);
    metadata.shutdown().await;
    cache.shutdown().await;
}
