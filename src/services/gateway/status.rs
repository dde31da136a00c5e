//! `GET /v1/status`: the platform's health as the monitor sees it (each
//! service's health, this node's breakers towards it, its event rates) and
//! the number of alerts firing, as JSON; `GET /v1/alerts`: the alerts
//! themselves (firing ones, or all with `?include_resolved=true`).

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde_json::{Value, json};

use super::Api;
use super::error::ApiError;
use super::query::Query;
use super::videos::enum_name;
use crate::proto::{
    Alert, AlertSeverity, AlertState, BreakerState, GetStatusRequest, GetStatusResponse,
    ListAlertsRequest, ServiceHealth,
};

/// Most alerts `GET /v1/alerts` answers (the monitor's largest page).
pub const MAX_ALERTS: u32 = 100;

fn health_name(raw: i32) -> String {
    ServiceHealth::try_from(raw).map_or("unspecified".to_owned(), |h| {
        enum_name(h.as_str_name(), "SERVICE_HEALTH_")
    })
}

fn breaker_name(raw: i32) -> String {
    BreakerState::try_from(raw).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "BREAKER_STATE_")
    })
}

/// The status as the API shows it.
#[must_use]
pub fn status_json(s: &GetStatusResponse) -> Value {
    let services: Vec<Value> = s
        .services
        .iter()
        .map(|svc| {
            json!({
                "name": svc.name,
                "health": health_name(svc.health),
                "last_seen_at_ms": svc.last_seen_at_ms,
                "breakers": svc.breakers.iter().map(|b| json!({
                    "target": b.target,
                    "state": breaker_name(b.state),
                    "consecutive_failures": b.consecutive_failures,
                    "opened_at_ms": b.opened_at_ms,
                })).collect::<Vec<_>>(),
                "event_rates": svc.event_rates.iter().map(|r| json!({
                    "event_type": r.event_type,
                    "count_last_minute": r.count_last_minute,
                    "per_second": r.per_second,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "overall": health_name(s.overall),
        "firing_alerts": s.firing_alerts,
        "generated_at_ms": s.generated_at_ms,
        "services": services,
    })
}

/// An alert as the API shows it.
#[must_use]
pub fn alert_json(a: &Alert) -> Value {
    let severity = AlertSeverity::try_from(a.severity).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "ALERT_SEVERITY_")
    });
    let state = AlertState::try_from(a.state).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "ALERT_STATE_")
    });
    json!({
        "id": a.id,
        "service": a.service_name,
        "severity": severity,
        "state": state,
        "title": a.title,
        "detail": a.detail,
        "raised_at_ms": a.raised_at_ms,
        "resolved_at_ms": a.resolved_at_ms,
        "acknowledged": a.acknowledged,
    })
}

/// `GET /v1/alerts?include_resolved=`: the newest [`MAX_ALERTS`] alerts,
/// firing ones only unless `include_resolved=true`.
pub async fn alerts(State(api): State<Api>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let query = Query::parse(uri.query())?;
    let include_resolved = match query.get("include_resolved") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "include_resolved: expected true or false",
            ));
        }
    };
    let res = api
        .runtime
        .pool
        .monitor()
        .await?
        .list_alerts(ListAlertsRequest {
            page_size: MAX_ALERTS,
            include_resolved,
            ..ListAlertsRequest::default()
        })
        .await?
        .into_inner();
    let alerts: Vec<Value> = res.alerts.iter().map(alert_json).collect();
    Ok(Json(json!({ "alerts": alerts })))
}

/// `GET /v1/status`
pub async fn status(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let res = api
        .runtime
        .pool
        .monitor()
        .await?
        .get_status(GetStatusRequest {})
        .await?;
    Ok(Json(status_json(res.get_ref())))
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::kernel::{Kernel, Plugin};
    use crate::proto::{BreakerStatus, EventRate, ServiceStatus};
    use crate::registry::memory::MemoryRegistry;
    use crate::rt;
    use crate::services::{Common, ServiceConfig};
    use crate::services::{ServiceKind, ServicePlugin};

    async fn alerts_of(api: &Api, uri: &'static str) -> Result<Json<Value>, ApiError> {
        alerts(State(api.clone()), Uri::from_static(uri)).await
    }

    #[test]
    fn alerts_render_lower_case() {
        let a = Alert {
            id: "a1".into(),
            severity: AlertSeverity::Critical.into(),
            state: AlertState::Firing.into(),
            service_name: "upload".into(),
            title: "upload is not serving".into(),
            ..Alert::default()
        };
        let j = alert_json(&a);
        assert_eq!(
            (&j["severity"], &j["state"], &j["service"]),
            (&json!("critical"), &json!("firing"), &json!("upload"))
        );
    }

    #[test]
    fn renders_services_breakers_rates_and_alerts() {
        let s = GetStatusResponse {
            overall: ServiceHealth::Degraded.into(),
            services: vec![ServiceStatus {
                name: "cache".into(),
                health: ServiceHealth::NotServing.into(),
                breakers: vec![BreakerStatus {
                    target: "cache-1".into(),
                    state: BreakerState::HalfOpen.into(),
                    consecutive_failures: 0,
                    opened_at_ms: 0,
                }],
                event_rates: vec![EventRate {
                    event_type: "file_uploaded".into(),
                    count_last_minute: 3,
                    per_second: 0.05,
                }],
                last_seen_at_ms: 7,
                version: String::new(),
            }],
            firing_alerts: 1,
            generated_at_ms: 9,
        };
        let j = status_json(&s);
        assert_eq!(j["overall"], "degraded");
        assert_eq!(j["firing_alerts"], 1);
        assert_eq!(j["services"][0]["health"], "not_serving");
        assert_eq!(j["services"][0]["breakers"][0]["state"], "half_open");
        assert_eq!(j["services"][0]["event_rates"][0]["count_last_minute"], 3);
        let unknown = GetStatusResponse {
            overall: 42,
            ..GetStatusResponse::default()
        };
        assert_eq!(status_json(&unknown)["overall"], "unspecified");
    }

    /// The handler against a node running the monitor (default config,
    /// as `ServicePlugin` starts it) and the cache.
    #[tokio::test]
    async fn the_handler_reads_the_monitor() {
        let plugins = [ServiceKind::Cache, ServiceKind::Monitor]
            .into_iter()
            .map(|kind| {
                let plugin = ServicePlugin::new(Common::ephemeral(), ServiceConfig::new(kind));
                Box::new(plugin) as Box<dyn Plugin>
            })
            .collect();
        let bus = Arc::new(MemoryBus::new());
        let kernel = Kernel::start(bus, Arc::new(MemoryRegistry::new()), plugins)
            .await
            .expect("node starts");
        let api = crate::services::gateway::api(
            kernel.runtime().clone(),
            &crate::services::gateway::Config::default(),
            false,
        );
        // The first round may run before the services registered; the
        // next comes one interval later.
        let until = rt::now() + crate::services::monitor::PROBE_INTERVAL * 3;
        let body = loop {
            let Json(body) = status(State(api.clone())).await.expect("status");
            let cache = body["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "cache"))
                .cloned();
            if cache.is_some_and(|c| c["health"] == "serving") || rt::now() > until {
                break body;
            }
            rt::sleep(Duration::from_millis(100)).await;
        };
        let names: Vec<&str> = body["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(names.len(), 9, "{body}");
        let health = |name: &str| {
            body["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == name))
                .map(|s| s["health"].clone())
        };
        assert_eq!(health("cache"), Some("serving".into()), "{body}");
        assert_eq!(health("monitor"), Some("serving".into()), "{body}");
        assert_eq!(health("upload"), Some("not_serving".into()), "{body}");
        assert_eq!(body["overall"], "not_serving");
        let Json(alerts) = alerts(State(api.clone()), Uri::from_static("/v1/alerts"))
            .await
            .expect("alerts");
        assert!(alerts["alerts"].is_array(), "{alerts}");
        let bad = alerts_of(&api, "/v1/alerts?include_resolved=yes").await;
        assert_eq!(
            bad.expect_err("refused").status,
            http::StatusCode::BAD_REQUEST
        );
        kernel.shutdown().await;
        let gone = status(State(api)).await.expect_err("no monitor left");
        assert_eq!(gone.status, http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
